#!/usr/bin/env bash
# Evaluates one training run: averages its last checkpoints, translates the test set with beam
# search and reports fairseq's tokenised BLEU, detokenised sacreBLEU (and compound-split BLEU for
# WMT En-De), labelled, into RUN_DIR/eval/.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: scripts/evaluate.sh RUN_DIR [--average-last N] [--checkpoint FILE] [--subset test|valid] [-- extra fairseq-generate args]

RUN_DIR is a directory made by scripts/train.sh (its run.json names the recipe and the data).
  --average-last N   average the last N epoch checkpoints (default: the recipe's EVAL_AVERAGE_LAST)
  --checkpoint FILE  evaluate this checkpoint instead of an average (e.g. RUN_DIR/checkpoints/checkpoint_best.pt)
  --subset S         test (default: the recipe's EVAL_SUBSET) or valid
  -- ARGS           passed to fairseq-generate last (e.g. -- --max-len-b 50)
Beam, length penalty and batch size come from the recipe (EVAL_BEAM, EVAL_LENPEN, EVAL_BATCH_SIZE).
Uses a GPU (fp16) when one is visible, else the CPU.

Writes, each under a temporary name renamed when complete (a failed or interrupted run leaves none
behind; the next run removes those of a killed one, and no other file):
  RUN_DIR/checkpoints/checkpoint_avg_lastN.pt  the averaged checkpoint (not with --checkpoint)
  RUN_DIR/eval/SUBSET.generate.txt             fairseq-generate's output (S-/T-/H-/D-/P- lines)
  RUN_DIR/eval/SUBSET.hyp.detok.TGT            the hypotheses, detokenised as sacreBLEU scored them
  RUN_DIR/eval/SUBSET.results.json             the scores and settings (scripts/score_translations.py)
and prints the scores: tokenised BLEU (fairseq's scorer: the paper's IWSLT metric), detokenised
sacreBLEU with its signature, and compound-split BLEU for recipes with EVAL_COMPOUND_SPLIT=1.
One evaluation of a run directory at a time: a second is refused in one line naming the host and PID
of the first (the lock is RUN_DIR/.evaluate.lock, released by the kernel when that run ends). Ctrl-C
stops it without a traceback, leaving the outputs of the last complete run.

Environment: PYTHON (interpreter), CONFIG_DIR (recipes, default configs/), VISIBLE_GPUS (replaces
torch's GPU count).
USAGE
}

source "$(dirname "${BASH_SOURCE[0]}")/recipe_lib.sh"

run_dir="" average_last="" checkpoint="" subset="" extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --average-last) [[ $# -ge 2 && "$2" =~ ^[1-9][0-9]*$ ]] || die "--average-last needs a positive integer"; average_last=$2; shift 2 ;;
    --checkpoint) [[ $# -ge 2 ]] || die "--checkpoint needs a file"; checkpoint=$2; shift 2 ;;
    --subset) [[ $# -ge 2 ]] || die "--subset needs test or valid"; subset=$2; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    -*) die "unknown option '$1' (see scripts/evaluate.sh -h)" ;;
    *) [[ -z "$run_dir" ]] || die "one run directory at a time (got '$run_dir' and '$1')"; run_dir=$1; shift ;;
  esac
done
[[ -n "$run_dir" ]] || { usage >&2; die "missing RUN_DIR"; }
[[ -f "$run_dir/run.json" ]] || die "$run_dir/run.json not found: RUN_DIR must be a directory made by scripts/train.sh"
run_dir=$(cd "$run_dir" && pwd)

# run.json is read once; a damaged one is a one-line error naming it (from scripts.run_json).
run_fields=$("$PYTHON" -m scripts.run_json read "$run_dir/run.json" recipe data_dir loss seed) || exit 2
{ IFS= read -r run_recipe; IFS= read -r data_dir; IFS= read -r run_loss; IFS= read -r run_seed; } <<< "$run_fields"
load_recipe "$run_recipe"
subset=${subset:-$EVAL_SUBSET}
[[ "$subset" == test || "$subset" == valid ]] || die "--subset must be test or valid, got '$subset'"
[[ -f "$data_dir/bin/dict.$TGT_LANG.txt" ]] || die "$run_dir/run.json: its data_dir $data_dir has no prepared corpus (missing bin/dict.$TGT_LANG.txt)"
if [[ -n "$checkpoint" ]]; then
  [[ -f "$checkpoint" ]] || die "--checkpoint $checkpoint: no such file"
  checkpoint_label="$checkpoint"
fi

visible=$(visible_gpus)

eval_dir="$run_dir/eval"
# One evaluation per run directory at a time: two would write the same outputs and temporaries.
hold_lock "$run_dir/.evaluate.lock" "$run_dir (an evaluation)"
mkdir -p "$eval_dir"
# remove_temporaries [PID]: the temporary files this tool's steps write beside each output it makes
# (.NAME.PID.partial from this script, .NAME.HOST.RANDOM.PID.partial from scripts/atomic_io.py, this
# host only), of any PID, or of PID only. While this evaluation holds the lock no other one is writing
# them, so those of another PID are a killed evaluation's; nothing else is touched.
this_host=$(hostname)
remove_temporaries() {
  local leftover pid
  for leftover in "$eval_dir"/.*.partial "$run_dir/checkpoints"/.checkpoint_avg_last*.partial; do
    [[ -f "$leftover" && "${leftover##*/}" =~ ^\.((test|valid)\.(generate\.txt|results\.json|hyp\.detok\."$TGT_LANG")|checkpoint_avg_last[0-9]+\.pt)\.([^/]+\.[0-9a-f]{8}\.)?([0-9]+)\.partial$ ]] || continue
    [[ -z "${BASH_REMATCH[4]}" || "${BASH_REMATCH[4]}" == "$this_host".????????. ]] || continue
    pid=${BASH_REMATCH[5]}
    if [[ -z "${1:-}" || "$pid" == "$1" ]]; then rm -f -- "$leftover"; fi
  done
}
remove_temporaries
generate_output="$eval_dir/$subset.generate.txt"
generate_partial="$eval_dir/.$subset.generate.txt.$$.partial"
trap 'rm -f -- "$generate_partial"' EXIT

# Each step runs in the background, where bash starts it with SIGINT ignored, so Ctrl-C does not
# make Python print a KeyboardInterrupt traceback; the shell stops the step (SIGTERM), removes its
# temporaries and exits 130.
step_pid=""
run_step() { "$@" & step_pid=$!; wait "$step_pid"; }
on_interrupt() {
  trap - INT TERM
  if [[ -n "$step_pid" ]]; then
    kill -TERM "$step_pid" 2> /dev/null || true
    wait "$step_pid" 2> /dev/null || true
    remove_temporaries "$step_pid"
  fi
  echo "[evaluate] interrupted; no output was left half-written" >&2
  exit 130
}
trap on_interrupt INT TERM

if [[ -z "$checkpoint" ]]; then
  average_last=${average_last:-$EVAL_AVERAGE_LAST}
  checkpoint="$run_dir/checkpoints/checkpoint_avg_last$average_last.pt"
  echo "[evaluate] averaging the last $average_last epoch checkpoints of $run_dir" >&2
  run_step "$PYTHON" -m scripts.average_checkpoints --inputs "$run_dir/checkpoints" \
    --num-epoch-checkpoints "$average_last" --output "$checkpoint"
  checkpoint_label="average of the last $average_last epoch checkpoints"
fi

# --required-batch-size-multiple 1: with fairseq's default 8, batch_by_size silently drops the
# remainder (500 test sentences -> 496 translated), and BLEU would be on part of the test set.
hardware_args=(--cpu)
(( visible > 0 )) && hardware_args=(--fp16)
echo "[evaluate] fairseq-generate on $subset: beam $EVAL_BEAM, lenpen $EVAL_LENPEN, $checkpoint_label" >&2
run_step "$PYTHON" -m fairseq_cli.generate "$data_dir/bin" --user-dir "$USER_DIR" \
  --source-lang "$SRC_LANG" --target-lang "$TGT_LANG" --gen-subset "$subset" \
  --path "$checkpoint" --beam "$EVAL_BEAM" --lenpen "$EVAL_LENPEN" --batch-size "$EVAL_BATCH_SIZE" \
  --required-batch-size-multiple 1 --post-process sentencepiece "${hardware_args[@]}" "${extra[@]}" > "$generate_partial"
mv -- "$generate_partial" "$generate_output"

compound_args=()
[[ "${EVAL_COMPOUND_SPLIT:-0}" == 1 ]] && compound_args=(--compound-split)
results="$eval_dir/$subset.results.json"
run_step "$PYTHON" -m scripts.score_translations --generate-output "$generate_output" \
  --data-dir "$data_dir" --subset "$subset" --tgt-lang "$TGT_LANG" "${compound_args[@]}" \
  --output "$results" --hypotheses-output "$eval_dir/$subset.hyp.detok.$TGT_LANG" --print-summary \
  --extra recipe="$RECIPE" loss="$run_loss" seed="$run_seed" subset="$subset" run_dir="$run_dir" \
  checkpoint="$checkpoint_label" beam="$EVAL_BEAM" lenpen="$EVAL_LENPEN" paper_metric="$PAPER_METRIC"
