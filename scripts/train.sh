#!/usr/bin/env bash
# Trains one run of a recipe (configs/RECIPE.sh): the encouraging loss, or with --baseline the
# label-smoothed cross-entropy baseline (encouraging_ls with rho 0, which logs the same diagnostics).
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: scripts/train.sh RECIPE [--baseline] [--seed N] [--run-dir D] [--data-dir D]
                         [--tokens-per-update N] [--max-tokens N] [--dry-run] [-- extra fairseq-train args]

Trains RECIPE (a file configs/RECIPE.sh) with the encouraging loss, or the baseline with --baseline.
  --baseline     label-smoothed cross-entropy (encouraging_ls --bonus-rho 0) instead of the encouraging loss
  --seed N       random seed (default 1)
  --run-dir D    where checkpoints, logs and TensorBoard events go
                 (default: $RUNS_DIR/RECIPE/{baseline,encouraging}/seedN)
  --data-dir D   prepared corpus (data_prep output; default: the recipe's DATA_DIR)
  --tokens-per-update N  tokens per optimiser update (default: the recipe's TOKENS_PER_UPDATE)
  --max-tokens N         the largest batch one GPU takes (default: the recipe's MAX_TOKENS)
  --dry-run      print the fairseq-train command this would run and write nothing; a missing corpus
                 or too few GPUs is said on stderr instead of refused
  -- ARGS        passed to fairseq-train last, so they override the recipe (e.g. -- --max-update 100)

Hardware: all visible GPUs with --fp16 (fairseq's own data parallel, one process per GPU). Multi-node:
start this script on every node under torchrun, which sets RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT:
  torchrun --nnodes 2 --nproc-per-node 8 --node-rank R --master-addr HOST --master-port 29500 \
      --no-python scripts/train.sh RECIPE
Without a GPU it trains on CPU in float32 and says so (FP16=1 trains in half precision on CPU too:
slow, but it rehearses the GPU recipe's fp16 path).
Batch: --max-tokens x --update-freq x workers equals the recipe's TOKENS_PER_UPDATE exactly on any
hardware; the per-GPU batch is at most MAX_TOKENS and at least MIN_MAX_TOKENS (lowered below MAX_TOKENS
only when that keeps the product exact). A worker count that cannot split it is refused, naming the
counts that can.
The run directory gets command.sh (the exact command), run.json (settings), train.log (JSON log
lines and errors; errors also go to stderr) and tensorboard/. Re-running the same command resumes
from checkpoints/checkpoint_last.pt. One training per run directory: a second is refused in one line
naming the host and PID of the first (the lock, RUN_DIR/.train.lock, is released by the kernel when
that run ends, however it ends). A run that fails before its first checkpoint removes what it wrote.

Environment: RUNS_DIR (default runs), PYTHON (interpreter), FP16 (auto|0|1, default auto: on with GPUs),
NUM_GPUS (GPUs to train on, default all that torch sees; more than it sees is refused),
VISIBLE_GPUS (replaces torch's GPU count: for tests, and for previewing with --dry-run a GPU
machine's command elsewhere), CONFIG_DIR (recipes, default configs/), LOG_INTERVAL (updates between
log lines, default 100). Under torchrun: WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT.
USAGE
}

source "$(dirname "${BASH_SOURCE[0]}")/recipe_lib.sh"

recipe="" baseline=0 seed=1 run_dir="" data_dir="" dry_run=0 tokens_per_update="" max_tokens="" extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --baseline) baseline=1; shift ;;
    --seed) [[ $# -ge 2 && "$2" =~ ^[0-9]+$ ]] || die "--seed needs a non-negative integer"; seed=$2; shift 2 ;;
    --run-dir) [[ $# -ge 2 && -n "$2" ]] || die "--run-dir needs a directory"; run_dir=$2; shift 2 ;;
    --data-dir) [[ $# -ge 2 && -n "$2" ]] || die "--data-dir needs a directory"; data_dir=$2; shift 2 ;;
    --tokens-per-update) [[ $# -ge 2 && "$2" =~ ^[1-9][0-9]*$ ]] || die "--tokens-per-update needs a positive integer"; tokens_per_update=$2; shift 2 ;;
    --max-tokens) [[ $# -ge 2 && "$2" =~ ^[1-9][0-9]*$ ]] || die "--max-tokens needs a positive integer"; max_tokens=$2; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    --) shift; extra=("$@"); break ;;
    -*) die "unknown option '$1' (see scripts/train.sh -h)" ;;
    *) [[ -z "$recipe" ]] || die "one recipe at a time (got '$recipe' and '$1')"; recipe=$1; shift ;;
  esac
done
[[ -n "$recipe" ]] || { usage >&2; die "missing RECIPE (known: $(known_recipes))"; }
load_recipe "$recipe"

# Everything is validated before anything is created: a refused run leaves no trace.
note() { echo "[train] $*" >&2; }
[[ -z "${NUM_GPUS:-}" || "$NUM_GPUS" =~ ^(0|[1-9][0-9]*)$ ]] || die "NUM_GPUS must be a non-negative integer, got '$NUM_GPUS'"
fp16=${FP16:-auto}
[[ "$fp16" =~ ^(auto|0|1)$ ]] || die "FP16 must be auto, 0 or 1, got '$fp16'"
if [[ -n "${WORLD_SIZE:-}" ]]; then
  [[ "$WORLD_SIZE" =~ ^[1-9][0-9]*$ ]] || die "WORLD_SIZE (set by torchrun) must be a positive integer, got '$WORLD_SIZE'"
  [[ "${RANK:-0}" =~ ^(0|[1-9][0-9]*)$ ]] && (( ${RANK:-0} < WORLD_SIZE )) || die "RANK (set by torchrun) must be 0..$(( WORLD_SIZE - 1 )), got '${RANK:-}'"
fi
tokens_per_update=${tokens_per_update:-$TOKENS_PER_UPDATE}
max_tokens=${max_tokens:-$MAX_TOKENS}
for name in TOKENS_PER_UPDATE MAX_TOKENS MIN_MAX_TOKENS; do
  [[ "${!name}" =~ ^[1-9][0-9]*$ ]] || die "$CONFIG_DIR/$RECIPE.sh: $name must be a positive integer, got '${!name}'"
done
(( MIN_MAX_TOKENS <= max_tokens )) || die "--max-tokens $max_tokens is below the recipe's MIN_MAX_TOKENS $MIN_MAX_TOKENS"

visible=$(visible_gpus)
gpus=${NUM_GPUS:-$visible}
if (( gpus > visible )); then
  message="NUM_GPUS=$gpus but torch sees $visible GPU(s) (CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset})"
  [[ $dry_run == 1 ]] || die "$message; set NUM_GPUS=$visible or fewer"
  note "note: $message: a real run would refuse"
fi
[[ $fp16 == 1 || ( $fp16 == auto && $gpus -gt 0 ) ]] && fp16=1 || fp16=0

# Workers: torchrun's (WORLD_SIZE, one process per GPU, any number of nodes), else fairseq's own
# spawn over the GPUs, else one CPU process.
hardware_args=()
if [[ -n "${WORLD_SIZE:-}" ]]; then
  workers=$WORLD_SIZE
elif [[ $gpus -gt 0 ]]; then
  workers=$gpus
  hardware_args+=(--distributed-world-size "$gpus")
else
  workers=1
fi
split=$(split_batch "$tokens_per_update" "$max_tokens" "$MIN_MAX_TOKENS" "$workers") \
  || die "$RECIPE: $tokens_per_update tokens per update do not split exactly over $workers workers into per-GPU batches of $MIN_MAX_TOKENS..$max_tokens tokens; worker counts that do: $(splittable_worker_counts "$tokens_per_update" "$max_tokens" "$MIN_MAX_TOKENS")"
read -r gpu_max_tokens update_freq <<< "$split"
for word in "${extra[@]}"; do
  if [[ "$word" == --max-tokens || "$word" == --update-freq || "$word" == --max-tokens=* || "$word" == --update-freq=* ]]; then
    note "note: '$word' after -- overrides the batch split: tokens per update are no longer $tokens_per_update (use --tokens-per-update / --max-tokens instead)"
  fi
done
[[ -z "${WORLD_SIZE:-}" ]] || note "torchrun worker: rank ${RANK:-0} of $WORLD_SIZE (local rank ${LOCAL_RANK:-?}, master ${MASTER_ADDR:-?}:${MASTER_PORT:-?})"

data_dir=${data_dir:-$DATA_DIR}
if [[ ! -f "$data_dir/bin/dict.$SRC_LANG.txt" ]]; then
  message="no prepared corpus in $data_dir (missing bin/dict.$SRC_LANG.txt); make it with: $PREPARE_COMMAND"
  [[ $dry_run == 1 ]] || die "$message"
  note "note: $message"
fi
absolute() { if [[ -d "$1" ]]; then (cd "$1" && pwd); elif [[ "$1" == /* ]]; then echo "$1"; else echo "$PWD/$1"; fi; }
data_dir=$(absolute "$data_dir")
if [[ $baseline == 1 ]]; then loss=baseline; loss_args=("${BASELINE_ARGS[@]}"); else loss=encouraging; loss_args=("${ENCOURAGING_ARGS[@]}"); fi
run_dir=$(absolute "${run_dir:-${RUNS_DIR:-runs}/$RECIPE/$loss/seed$seed}")
# run.json records both paths for scripts/evaluate.sh, which reads one value a line.
[[ "$data_dir" != *$'\n'* ]] || die "--data-dir $(printf %q "$data_dir") contains a newline, which run.json cannot record; rename the directory"
[[ "$run_dir" != *$'\n'* ]] || die "--run-dir $(printf %q "$run_dir") contains a newline, which scripts/evaluate.sh cannot take; choose another"

if [[ $gpus == 0 ]]; then
  hardware_args+=(--cpu)
  if [[ $fp16 == 1 ]]; then
    # fairseq's flattened fp32 master copy is CUDA-only
    hardware_args+=(--fp16-no-flatten-grads)
    note "WARNING: no GPU visible; training on CPU in half precision (FP16=1): slow, for rehearsing the fp16 path."
  else
    note "WARNING: no GPU visible; training on CPU in float32 (no --fp16). Only the demo recipe is practical on CPU."
  fi
fi
if [[ $fp16 == 1 ]]; then hardware_args+=(--fp16); fi

command=(
  "$PYTHON" -m fairseq_cli.train "$data_dir/bin"
  --user-dir "$USER_DIR" --source-lang "$SRC_LANG" --target-lang "$TGT_LANG"
  "${TRAIN_ARGS[@]}" "${loss_args[@]}"
  --max-tokens "$gpu_max_tokens" --update-freq "$update_freq" --seed "$seed" "${hardware_args[@]}"
  --save-dir "$run_dir/checkpoints" --tensorboard-logdir "$run_dir/tensorboard"
  --log-format json --log-interval "${LOG_INTERVAL:-100}"
  "${extra[@]}"
)
if [[ $dry_run == 1 ]]; then printf '%q ' "${command[@]}"; echo; exit 0; fi

existed=0; [[ -d "$run_dir" ]] && existed=1
mkdir -p "$run_dir"
# One training per run directory: a second one would share fairseq's checkpointN.pt.tmp and
# checkpoint_last.pt.partial and mix two runs' checkpoints. Only the first torchrun worker takes the
# lock (every worker of the run starts this script).
if [[ "${RANK:-0}" == 0 ]]; then
  hold_lock "$run_dir/.train.lock" "$run_dir (a training run)"
fi
had_checkpoints=0
compgen -G "$run_dir/checkpoints/*.pt" > /dev/null && had_checkpoints=1
# Only the first worker records the run (every torchrun worker runs this script).
if [[ "${RANK:-0}" == 0 ]]; then
  { echo "#!/usr/bin/env bash"; echo "# $(date -u +%FT%TZ) on $(hostname): recipe $RECIPE, $loss, seed $seed"
    echo "cd $(printf %q "$PWD") && PYTHONPATH=$(printf %q "$PYTHONPATH") \\"; printf ' %q' "${command[@]}"; echo; } \
    | "$PYTHON" -m scripts.atomic_io "$run_dir/command.sh"
  commit=$(git -C "$REPO_ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
  fp16_used=false; [[ $fp16 == 1 ]] && fp16_used=true
  "$PYTHON" -m scripts.run_json write "$run_dir/run.json" recipe="$RECIPE" description="$RECIPE_DESCRIPTION" \
    loss="$loss" seed="$seed" data_dir="$data_dir" src_lang="$SRC_LANG" tgt_lang="$TGT_LANG" workers="$workers" \
    gpus_visible="$visible" gpus="$gpus" tokens_per_update="$tokens_per_update" max_tokens="$gpu_max_tokens" \
    update_freq="$update_freq" fp16="$fp16_used" git_commit="$commit" started_utc="$(date -u +%FT%TZ)"
  note "$RECIPE ($RECIPE_DESCRIPTION): $loss, seed $seed, $workers worker(s) x max-tokens $gpu_max_tokens x update-freq $update_freq = $tokens_per_update tokens per update -> $run_dir"
fi

# fairseq's log lines (stdout) and its errors (stderr) both go to train.log, each to where it came from.
set +e
{ "${command[@]}" 2>&1 1>&3 3>&- | tee -a "$run_dir/train.log" >&2; } 3>&1 | tee -a "$run_dir/train.log"
status=$?
set -e
if (( status != 0 )) && [[ $had_checkpoints == 0 && "${RANK:-0}" == 0 ]] \
    && ! compgen -G "$run_dir/checkpoints/*.pt" > /dev/null; then
  # A run that failed before its first checkpoint leaves nothing behind: its error is on stderr, and
  # its run.json would make the directory look like a run to evaluate.
  rm -rf -- "$run_dir/command.sh" "$run_dir/run.json" "$run_dir/train.log" "$run_dir/tensorboard" "$run_dir/checkpoints"
  if [[ $existed == 0 ]]; then rm -f -- "$run_dir/.train.lock"; rmdir -- "$run_dir" 2> /dev/null || true; fi
  note "training failed before its first checkpoint; removed what it had written to $run_dir"
fi
exit "$status"
