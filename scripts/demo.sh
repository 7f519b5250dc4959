#!/usr/bin/env bash
# The embedded demo: synthetic corpus -> data_prep -> baseline and encouraging loss over 3 seeds each
# (scripts/sweep.sh: train, evaluate, compare with the paired test), on CPU. `make demo` runs it.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: scripts/demo.sh [-h]

Generates a deterministic synthetic parallel corpus (scripts/make_demo_corpus.py), prepares it
(data_prep/prepare_custom.sh: SentencePiece + fairseq-preprocess), trains the demo recipe
(configs/demo.sh) with the baseline and with the encouraging loss over several seeds, evaluates
every run and compares the arms (scripts/sweep.sh -> compare.py): mean +- std over seeds and
sacreBLEU's paired bootstrap test. Prints each arm's BLEU, the test in words, and where the table
(comparison.md), the JSON (comparison.json) and the plot are.

Environment (defaults in brackets):
  DEMO_DIR         output root [runs/demo]: corpus/, data/, one folder per arm (ARM/seedN), comparison.{md,json,png}
  DEMO_SEEDS       training seeds, a range or list [1-3]
  DEMO_ARMS        the arms, as scripts/sweep.sh --arms takes them ["baseline schedule=linear,warmup=500"]
  DEMO_JOBS        runs side by side [2]
  DEMO_CORPUS_SEED seed of the synthetic corpus [1]
  DEMO_TRAIN_SIZE, DEMO_VALID_SIZE, DEMO_TEST_SIZE   corpus sizes in sentence pairs [20000, 300, 500]
  DEMO_VOCAB_SIZE  SentencePiece vocabulary [600]
  DEMO_MAX_EPOCH, DEMO_MAX_UPDATE, DEMO_MAX_TOKENS, DEMO_LR, DEMO_WARMUP, DEMO_DIM, DEMO_LAYERS, DEMO_AVERAGE_LAST, DEMO_BEAM
                   training/evaluation knobs, see configs/demo.sh
  DEMO_THREADS_PER_RUN  torch threads of each side-by-side run [1]
  PYTHON           interpreter
A finished step or run is not redone: delete DEMO_DIR to start over.
USAGE
}
[[ "${1:-}" == "-h" || "${1:-}" == "--help" ]] && { usage; exit 0; }
[[ $# -eq 0 ]] || { echo "error: scripts/demo.sh takes no arguments (got '$1'); see -h" >&2; exit 2; }

source "$(dirname "${BASH_SOURCE[0]}")/recipe_lib.sh"
demo_dir=${DEMO_DIR:-runs/demo}
corpus_seed=${DEMO_CORPUS_SEED:-1}
seeds=${DEMO_SEEDS:-1-3}
jobs=${DEMO_JOBS:-2}
# The arms: the baseline and the encouraging loss with the settings docs/demo-findings.md chose.
arms=${DEMO_ARMS:-baseline schedule=linear,warmup=500}
export DATA_DIR="$demo_dir/data"
load_recipe demo
started=$(date +%s)
step() { echo "[demo] $(( $(date +%s) - started )) s: $*" >&2; }

step "generating the synthetic corpus in $demo_dir/corpus"
"$PYTHON" -m scripts.make_demo_corpus --out-dir "$demo_dir/corpus" --seed "$corpus_seed" \
  --train-size "${DEMO_TRAIN_SIZE:-20000}" --valid-size "${DEMO_VALID_SIZE:-300}" --test-size "${DEMO_TEST_SIZE:-500}"

vocab_size=${DEMO_VOCAB_SIZE:-600}
step "preparing it (joint SentencePiece BPE $vocab_size, fairseq-preprocess) into $DATA_DIR"
# data_prep skips the work when its inputs and settings are unchanged.
PYTHON="$PYTHON" "$REPO_ROOT/data_prep/prepare_custom.sh" --src-lang "$SRC_LANG" --tgt-lang "$TGT_LANG" \
  --train-prefix "$demo_dir/corpus/train" --valid-prefix "$demo_dir/corpus/valid" \
  --test-prefix "$demo_dir/corpus/test" --out-dir "$DATA_DIR" --workers "${DEMO_WORKERS:-2}" \
  --vocab-size "$vocab_size" --model-type bpe

# Single-threaded runs side by side use 2 cores better than one after the other with 2 threads
# each: the demo's matrices are too small for intra-op threading to pay off.
step "training, evaluating and comparing $(wc -w <<< "$arms") arms x seeds $seeds, $jobs runs side by side (scripts/sweep.sh)"
# shellcheck disable=SC2086  # the arm list is split on purpose
SWEEP_THREADS_PER_RUN=${DEMO_THREADS_PER_RUN:-1} LOG_INTERVAL=${LOG_INTERVAL:-50} \
  "$REPO_ROOT/scripts/sweep.sh" demo --arms $arms --seeds "$seeds" --jobs "$jobs" \
  --arms-dir "$demo_dir" --out-dir "$demo_dir" --data-dir "$DATA_DIR" > "$demo_dir/compare.log" \
  || { tail -n 20 "$demo_dir/compare.log" >&2; die "the demo's sweep failed (log: $demo_dir/compare.log; run logs in $demo_dir/ARM/seedN)"; }

"$PYTHON" - "$demo_dir" "$(( $(date +%s) - started ))" <<'PY'
import json, os, sys
out_dir, seconds = sys.argv[1], int(sys.argv[2])
summary = json.load(open(os.path.join(out_dir, "comparison.json")))
print(f"\n[demo] finished in {seconds // 60} min {seconds % 60} s")
for arm in summary["arms"]:
    parts = []
    for metric, label in (("tokenized_bleu", "tokenised BLEU"), ("sacrebleu", "sacreBLEU")):
        entry = summary["metrics"][metric][arm]
        spread = f" +- {entry['std']:.2f}" if entry["std"] is not None else ""
        parts.append(f"{label} {entry['mean']:.2f}{spread}")
    values = ", ".join(f"{v:.2f}" for v in summary["metrics"]["tokenized_bleu"][arm]["values"])
    print(f"[demo] {arm:>16}: {', '.join(parts)} (mean +- std over {len(summary['metrics']['tokenized_bleu'][arm]['values'])} seeds: {values})")
for test in summary["significance"]:
    print(f"[demo] paired bootstrap, seeds pooled: {test['in_words']}")
print(f"[demo] table: {os.path.join(out_dir, 'comparison.md')}")
print(f"[demo] plot:  {os.path.join(out_dir, 'comparison.png')}")
PY
