#!/usr/bin/env bash
# Trains one run of a recipe (configs/RECIPE.sh): the encouraging loss, or with --baseline the
# label-smoothed cross-entropy baseline (encouraging_ls with rho 0, which logs the same diagnostics).
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: scripts/train.sh RECIPE [--baseline] [--seed N] [--run-dir D] [--data-dir D] [--dry-run] [-- extra fairseq-train args]

Trains RECIPE (a file configs/RECIPE.sh) with the encouraging loss, or the baseline with --baseline.
  --baseline     label-smoothed cross-entropy (encouraging_ls --bonus-rho 0) instead of the encouraging loss
  --seed N       random seed (default 1)
  --run-dir D    where checkpoints, logs and TensorBoard events go
                 (default: $RUNS_DIR/RECIPE/{baseline,encouraging}/seedN)
  --data-dir D   prepared corpus (data_prep output; default: the recipe's DATA_DIR)
  --dry-run      print the fairseq-train command this would run, and nothing else
  -- ARGS        passed to fairseq-train last, so they override the recipe (e.g. -- --max-update 100)

Hardware: all visible GPUs with --fp16 (fairseq's own data parallel, one process per GPU). Multi-node:
start this script on every node under torchrun, which sets RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT:
  torchrun --nnodes 2 --nproc-per-node 8 --node-rank R --master-addr HOST --master-port 29500 \
      --no-python scripts/train.sh RECIPE
Without a GPU it trains on CPU in float32 and says so (FP16=1 trains in half precision on CPU too:
slow, but it rehearses the GPU recipe's fp16 path). The recipe's UPDATE_FREQ is for one GPU and is
divided by the number of workers, so the tokens per update stay the same.
The run directory gets command.sh (the exact command), run.json (settings), train.log (JSON log
lines) and tensorboard/. Re-running the same command resumes from checkpoints/checkpoint_last.pt.

Environment: RUNS_DIR (default runs), PYTHON (interpreter), FP16 (auto|0|1, default auto: on with GPUs),
NUM_GPUS (GPUs to train on, default all that torch sees), CONFIG_DIR (recipes, default configs/),
LOG_INTERVAL (updates between log lines, default 100).
USAGE
}

source "$(dirname "${BASH_SOURCE[0]}")/recipe_lib.sh"

recipe="" baseline=0 seed=1 run_dir="" data_dir="" dry_run=0 extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --baseline) baseline=1; shift ;;
    --seed) [[ $# -ge 2 && "$2" =~ ^[0-9]+$ ]] || die "--seed needs a non-negative integer"; seed=$2; shift 2 ;;
    --run-dir) [[ $# -ge 2 ]] || die "--run-dir needs a directory"; run_dir=$2; shift 2 ;;
    --data-dir) [[ $# -ge 2 ]] || die "--data-dir needs a directory"; data_dir=$2; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    --) shift; extra=("$@"); break ;;
    -*) die "unknown option '$1' (see scripts/train.sh -h)" ;;
    *) [[ -z "$recipe" ]] || die "one recipe at a time (got '$recipe' and '$1')"; recipe=$1; shift ;;
  esac
done
[[ -n "$recipe" ]] || { usage >&2; die "missing RECIPE (known: $(known_recipes))"; }
load_recipe "$recipe"

data_dir=${data_dir:-$DATA_DIR}
[[ -f "$data_dir/bin/dict.$SRC_LANG.txt" ]] || die "no prepared corpus in $data_dir (missing bin/dict.$SRC_LANG.txt); make it with: $PREPARE_COMMAND"
data_dir=$(cd "$data_dir" && pwd)
if [[ $baseline == 1 ]]; then loss=baseline; loss_args=("${BASELINE_ARGS[@]}"); else loss=encouraging; loss_args=("${ENCOURAGING_ARGS[@]}"); fi
run_dir=${run_dir:-${RUNS_DIR:-runs}/$RECIPE/$loss/seed$seed}
if [[ $dry_run == 0 ]]; then
  mkdir -p "$run_dir"
  run_dir=$(cd "$run_dir" && pwd)
elif [[ $run_dir != /* ]]; then
  run_dir=$PWD/$run_dir
fi

# Hardware: torchrun workers (WORLD_SIZE set) or fairseq's own spawn over the GPUs, else CPU.
gpus=${NUM_GPUS:-$(visible_gpus)}
[[ "$gpus" =~ ^[0-9]+$ ]] || die "NUM_GPUS must be a non-negative integer, got '$gpus'"
fp16=${FP16:-auto}
[[ "$fp16" =~ ^(auto|0|1)$ ]] || die "FP16 must be auto, 0 or 1, got '$fp16'"
[[ $fp16 == 1 || ( $fp16 == auto && $gpus -gt 0 ) ]] && fp16=1 || fp16=0
hardware_args=()
if [[ -n "${WORLD_SIZE:-}" ]]; then
  workers=$WORLD_SIZE
  echo "[train] torchrun worker: rank ${RANK:-?} of $WORLD_SIZE (local rank ${LOCAL_RANK:-?}, master ${MASTER_ADDR:-?}:${MASTER_PORT:-?})" >&2
elif [[ $gpus -gt 0 ]]; then
  workers=$gpus
  hardware_args+=(--distributed-world-size "$gpus")
else
  workers=1
fi
if [[ $gpus == 0 ]]; then
  hardware_args+=(--cpu)
  if [[ $fp16 == 1 ]]; then
    # fairseq's flattened fp32 master copy is CUDA-only
    hardware_args+=(--fp16-no-flatten-grads)
    echo "[train] WARNING: no GPU visible; training on CPU in half precision (FP16=1): slow, for rehearsing the fp16 path." >&2
  else
    echo "[train] WARNING: no GPU visible; training on CPU in float32 (no --fp16). Only the demo recipe is practical on CPU." >&2
  fi
fi
if [[ $fp16 == 1 ]]; then hardware_args+=(--fp16); fi
update_freq=$(( (UPDATE_FREQ + workers - 1) / workers ))
(( UPDATE_FREQ % workers == 0 )) || echo "[train] note: UPDATE_FREQ $UPDATE_FREQ is not a multiple of $workers workers; using $update_freq" >&2

command=(
  "$PYTHON" -m fairseq_cli.train "$data_dir/bin"
  --user-dir "$USER_DIR" --source-lang "$SRC_LANG" --target-lang "$TGT_LANG"
  "${TRAIN_ARGS[@]}" "${loss_args[@]}"
  --update-freq "$update_freq" --seed "$seed" "${hardware_args[@]}"
  --save-dir "$run_dir/checkpoints" --tensorboard-logdir "$run_dir/tensorboard"
  --log-format json --log-interval "${LOG_INTERVAL:-100}"
  "${extra[@]}"
)
if [[ $dry_run == 1 ]]; then printf '%q ' "${command[@]}"; echo; exit 0; fi

# Only the first worker records the run (every torchrun worker runs this script).
if [[ "${RANK:-0}" == 0 ]]; then
  { echo "#!/usr/bin/env bash"; echo "# $(date -u +%FT%TZ) on $(hostname): recipe $RECIPE, $loss, seed $seed"
    echo "cd $(printf %q "$PWD") && PYTHONPATH=$(printf %q "$PYTHONPATH") \\"; printf ' %q' "${command[@]}"; echo; } > "$run_dir/command.sh.tmp"
  mv "$run_dir/command.sh.tmp" "$run_dir/command.sh"
  commit=$(git -C "$REPO_ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
  fp16_used=false; [[ $fp16 == 1 ]] && fp16_used=true
  "$PYTHON" "$REPO_ROOT/scripts/write_json.py" "$run_dir/run.json" recipe="$RECIPE" description="$RECIPE_DESCRIPTION" \
    loss="$loss" seed="$seed" data_dir="$data_dir" src_lang="$SRC_LANG" tgt_lang="$TGT_LANG" workers="$workers" \
    gpus_visible="$gpus" update_freq="$update_freq" fp16="$fp16_used" git_commit="$commit" \
    started_utc="$(date -u +%FT%TZ)"
  echo "[train] $RECIPE ($RECIPE_DESCRIPTION): $loss, seed $seed, $workers worker(s), update-freq $update_freq -> $run_dir" >&2
fi

"${command[@]}" 2>&1 | tee -a "$run_dir/train.log"
