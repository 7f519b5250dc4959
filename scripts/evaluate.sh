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
Beam, length penalty and batch size come from the recipe (EVAL_BEAM, EVAL_LENPEN, EVAL_BATCH_SIZE).
Writes RUN_DIR/eval/SUBSET.generate.txt (fairseq-generate output), SUBSET.hyp.detok.TGT and
SUBSET.results.json, each under a temporary name first. Uses a GPU (fp16) when one is visible.

Environment: PYTHON (interpreter), CONFIG_DIR (recipes, default configs/).
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

run_field() { "$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$run_dir/run.json" "$1"; }
load_recipe "$(run_field recipe)"
data_dir=$(run_field data_dir)
subset=${subset:-$EVAL_SUBSET}
[[ "$subset" == test || "$subset" == valid ]] || die "--subset must be test or valid, got '$subset'"

eval_dir="$run_dir/eval"
mkdir -p "$eval_dir"
if [[ -n "$checkpoint" ]]; then
  [[ -f "$checkpoint" ]] || die "--checkpoint $checkpoint: no such file"
  checkpoint_label="$checkpoint"
else
  average_last=${average_last:-$EVAL_AVERAGE_LAST}
  checkpoint="$run_dir/checkpoints/checkpoint_avg_last$average_last.pt"
  echo "[evaluate] averaging the last $average_last epoch checkpoints of $run_dir" >&2
  "$PYTHON" "$REPO_ROOT/scripts/average_checkpoints.py" --inputs "$run_dir/checkpoints" \
    --num-epoch-checkpoints "$average_last" --output "$checkpoint"
  checkpoint_label="average of the last $average_last epoch checkpoints"
fi

# --required-batch-size-multiple 1: with fairseq's default 8, batch_by_size silently drops the
# remainder (500 test sentences -> 496 translated), and BLEU would be on part of the test set.
hardware_args=(--cpu)
[[ $(visible_gpus) -gt 0 ]] && hardware_args=(--fp16)
generate_output="$eval_dir/$subset.generate.txt"
echo "[evaluate] fairseq-generate on $subset: beam $EVAL_BEAM, lenpen $EVAL_LENPEN, $checkpoint_label" >&2
"$PYTHON" -m fairseq_cli.generate "$data_dir/bin" --user-dir "$USER_DIR" \
  --source-lang "$SRC_LANG" --target-lang "$TGT_LANG" --gen-subset "$subset" \
  --path "$checkpoint" --beam "$EVAL_BEAM" --lenpen "$EVAL_LENPEN" --batch-size "$EVAL_BATCH_SIZE" \
  --required-batch-size-multiple 1 --post-process sentencepiece "${hardware_args[@]}" "${extra[@]}" > "$generate_output.tmp"
mv "$generate_output.tmp" "$generate_output"

compound_args=()
[[ "${EVAL_COMPOUND_SPLIT:-0}" == 1 ]] && compound_args=(--compound-split)
results="$eval_dir/$subset.results.json"
"$PYTHON" "$REPO_ROOT/scripts/score_translations.py" --generate-output "$generate_output" \
  --data-dir "$data_dir" --subset "$subset" --tgt-lang "$TGT_LANG" "${compound_args[@]}" \
  --output "$results" --hypotheses-output "$eval_dir/$subset.hyp.detok.$TGT_LANG" \
  --extra recipe="$RECIPE" loss="$(run_field loss)" seed="$(run_field seed)" subset="$subset" \
  checkpoint="$checkpoint_label" beam="$EVAL_BEAM" lenpen="$EVAL_LENPEN" paper_metric="$PAPER_METRIC"

"$PYTHON" - "$results" "$run_dir" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"[evaluate] {sys.argv[2]} ({r['recipe']}, {r['loss']}, seed {r['seed']}), {r['subset']}: "
      f"{r['sentences']} sentences, beam {r['beam']}, {r['checkpoint']}")
print(f"  tokenised BLEU (fairseq; the paper's metric for IWSLT): {r['tokenized_bleu']}")
print(f"  detokenised sacreBLEU: {r['sacrebleu']}  ({r['sacrebleu_signature']})")
if r["compound_split_bleu"] is not None:
    print(f"  compound-split BLEU (WMT En-De convention): {r['compound_split_bleu']}")
print(f"  results: {sys.argv[1]}")
PY
