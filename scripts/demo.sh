#!/usr/bin/env bash
# The embedded demo: synthetic corpus -> data_prep -> train baseline and encouraging loss -> evaluate
# -> compare, on CPU, in a few minutes. `make demo` runs it after installing.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: scripts/demo.sh [-h]

Generates a deterministic synthetic parallel corpus (scripts/make_demo_corpus.py), prepares it
(data_prep/prepare_custom.sh: SentencePiece + fairseq-preprocess), trains the demo recipe
(configs/demo.sh) with the baseline and with the encouraging loss, evaluates both and writes the
comparison table and plot. Prints both BLEU scores and where the table and plot are.

Environment (defaults in brackets):
  DEMO_DIR         output root [runs/demo]: corpus/, data/, runs/, comparison.{md,json,png}
  DEMO_SEED        corpus and training seed [1]
  DEMO_TRAIN_SIZE, DEMO_VALID_SIZE, DEMO_TEST_SIZE   corpus sizes in sentence pairs [20000, 300, 500]
  DEMO_VOCAB_SIZE  SentencePiece vocabulary [600]
  DEMO_MAX_EPOCH, DEMO_MAX_UPDATE, DEMO_MAX_TOKENS, DEMO_LR, DEMO_WARMUP, DEMO_DIM, DEMO_LAYERS, DEMO_AVERAGE_LAST, DEMO_BEAM
                   training/evaluation knobs, see configs/demo.sh
  DEMO_THREADS_PER_RUN  torch threads of each of the two side-by-side runs [1]
  PYTHON           interpreter
A finished step is not redone: delete DEMO_DIR to start over.
USAGE
}
[[ "${1:-}" == "-h" || "${1:-}" == "--help" ]] && { usage; exit 0; }
[[ $# -eq 0 ]] || { echo "error: scripts/demo.sh takes no arguments (got '$1'); see -h" >&2; exit 2; }

source "$(dirname "${BASH_SOURCE[0]}")/recipe_lib.sh"
demo_dir=${DEMO_DIR:-runs/demo}
seed=${DEMO_SEED:-1}
export DATA_DIR="$demo_dir/data"
load_recipe demo
started=$(date +%s)
step() { echo "[demo] $(( $(date +%s) - started )) s: $*" >&2; }

step "generating the synthetic corpus in $demo_dir/corpus"
"$PYTHON" "$REPO_ROOT/scripts/make_demo_corpus.py" --out-dir "$demo_dir/corpus" --seed "$seed" \
  --train-size "${DEMO_TRAIN_SIZE:-20000}" --valid-size "${DEMO_VALID_SIZE:-300}" --test-size "${DEMO_TEST_SIZE:-500}"

vocab_size=${DEMO_VOCAB_SIZE:-600}
step "preparing it (joint SentencePiece BPE $vocab_size, fairseq-preprocess) into $DATA_DIR"
# data_prep skips the work when its inputs and settings are unchanged.
PYTHON="$PYTHON" "$REPO_ROOT/data_prep/prepare_custom.sh" --src-lang "$SRC_LANG" --tgt-lang "$TGT_LANG" \
  --train-prefix "$demo_dir/corpus/train" --valid-prefix "$demo_dir/corpus/valid" \
  --test-prefix "$demo_dir/corpus/test" --out-dir "$DATA_DIR" --workers "${DEMO_WORKERS:-2}" \
  --vocab-size "$vocab_size" --model-type bpe

# Two single-threaded runs side by side use 2 cores better than one after the other with 2 threads
# each: the demo's matrices are too small for intra-op threading to pay off.
threads=${DEMO_THREADS_PER_RUN:-1}
step "training and evaluating baseline and encouraging loss side by side ($threads thread(s) each, seed $seed)"
pids=()
for loss in baseline encouraging; do
  run_dir="$demo_dir/runs/$RECIPE/$loss/seed$seed"
  mkdir -p "$run_dir"
  flag=(); [[ $loss == baseline ]] && flag=(--baseline)
  echo "[demo] $loss: progress in $run_dir/train.log" >&2
  (
    export OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads
    if [[ ! -f "$run_dir/eval/$EVAL_SUBSET.results.json" ]]; then
      # Only fairseq's periodic JSON lines reach the terminal; everything is in train.log.
      LOG_INTERVAL=${LOG_INTERVAL:-50} "$REPO_ROOT/scripts/train.sh" "$RECIPE" "${flag[@]}" --seed "$seed" \
        --run-dir "$run_dir" --data-dir "$DATA_DIR" 2>&1 | grep --line-buffered -E '\| (train_inner|valid|train) \||WARNING|^\[train\]' \
        | sed -u "s/^/[$loss] /" || true
      [[ -f "$run_dir/checkpoints/checkpoint_last.pt" ]] && grep -q "done training" "$run_dir/train.log" \
        || { echo "[demo] $loss: training failed; last lines of $run_dir/train.log:" >&2; tail -n 20 "$run_dir/train.log" >&2; exit 1; }
      "$REPO_ROOT/scripts/evaluate.sh" "$run_dir" > "$run_dir/evaluate.log" 2>&1 \
        || { echo "[demo] $loss: evaluation failed; see $run_dir/evaluate.log:" >&2; tail -n 20 "$run_dir/evaluate.log" >&2; exit 1; }
    fi
  ) &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
[[ $status == 0 ]] || die "a demo run failed (see above)"

step "comparing"
"$REPO_ROOT/scripts/compare.sh" demo --seeds "$seed" --runs-dir "$demo_dir/runs" --out-dir "$demo_dir" > "$demo_dir/compare.log" 2>&1 \
  || { tail -n 20 "$demo_dir/compare.log" >&2; die "comparison failed (log: $demo_dir/compare.log)"; }
cat "$demo_dir/compare.log"

"$PYTHON" - "$demo_dir" "$(( $(date +%s) - started ))" <<'PY'
import json, os, sys
out_dir, seconds = sys.argv[1], int(sys.argv[2])
summary = json.load(open(os.path.join(out_dir, "comparison.json")))
print(f"\n[demo] finished in {seconds // 60} min {seconds % 60} s")
for run in sorted(summary["runs"], key=lambda r: r["loss"]):
    r = run["results"]
    print(f"[demo] {run['loss']:>11}: tokenised BLEU {r['tokenized_bleu']:.2f}, sacreBLEU {r['sacrebleu']:.2f}")
print(f"[demo] table: {os.path.join(out_dir, 'comparison.md')}")
print(f"[demo] plot:  {os.path.join(out_dir, 'comparison.png')}")
PY
