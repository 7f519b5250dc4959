#!/usr/bin/env bash
# Baseline vs encouraging loss for one recipe over several seeds: trains and evaluates what is
# missing (with --train), then writes the comparison table and plot (logic in scripts/compare.py).
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: scripts/compare.sh RECIPE [--seeds 1-5] [--train] [--runs-dir D] [--out-dir D] [--data-dir D] [-- extra fairseq-train args]

Collects the runs RUNS_DIR/RECIPE/{baseline,encouraging}/seedN for the given seeds and compares them.
  --seeds S      seeds as a range or list: 1-5, 1,3,5 (default 1-5)
  --train        train (scripts/train.sh) runs that have no final checkpoint and evaluate
                 (scripts/evaluate.sh) runs without results; without it, only missing evaluations run
  --runs-dir D   root of the run directories (default: $RUNS_DIR or runs)
  --out-dir D    where comparison.md, comparison.json and comparison.png go (default: RUNS_DIR/RECIPE)
  --data-dir D   prepared corpus for training (default: the recipe's DATA_DIR)
  -- ARGS        passed to every fairseq-train (e.g. -- --max-update 100)

Environment: RUNS_DIR, PYTHON, CONFIG_DIR; train.sh's and evaluate.sh's variables apply too.
USAGE
}

source "$(dirname "${BASH_SOURCE[0]}")/recipe_lib.sh"
scripts="$REPO_ROOT/scripts"

recipe="" seeds_spec=1-5 train=0 runs_dir=${RUNS_DIR:-runs} out_dir="" data_args=() extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --seeds) [[ $# -ge 2 ]] || die "--seeds needs a range like 1-5 or a list like 1,3,5"; seeds_spec=$2; shift 2 ;;
    --train) train=1; shift ;;
    --runs-dir) [[ $# -ge 2 ]] || die "--runs-dir needs a directory"; runs_dir=$2; shift 2 ;;
    --out-dir) [[ $# -ge 2 ]] || die "--out-dir needs a directory"; out_dir=$2; shift 2 ;;
    --data-dir) [[ $# -ge 2 ]] || die "--data-dir needs a directory"; data_args=(--data-dir "$2"); shift 2 ;;
    --) shift; extra=("$@"); break ;;
    -*) die "unknown option '$1' (see scripts/compare.sh -h)" ;;
    *) [[ -z "$recipe" ]] || die "one recipe at a time (got '$recipe' and '$1')"; recipe=$1; shift ;;
  esac
done
[[ -n "$recipe" ]] || { usage >&2; die "missing RECIPE (known: $(known_recipes))"; }
load_recipe "$recipe"

seeds=()
if [[ "$seeds_spec" =~ ^([0-9]+)-([0-9]+)$ ]]; then
  (( BASH_REMATCH[1] <= BASH_REMATCH[2] )) || die "--seeds $seeds_spec: the range is empty"
  seeds=($(seq "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}"))
elif [[ "$seeds_spec" =~ ^[0-9]+(,[0-9]+)*$ ]]; then
  IFS=, read -r -a seeds <<< "$seeds_spec"
else
  die "--seeds $seeds_spec: expected a range like 1-5 or a list like 1,3,5"
fi
out_dir=${out_dir:-$runs_dir/$RECIPE}

run_dirs=()
for loss in baseline encouraging; do
  for seed in "${seeds[@]}"; do
    run_dir="$runs_dir/$RECIPE/$loss/seed$seed"
    run_dirs+=("$run_dir")
    [[ -f "$run_dir/eval/$EVAL_SUBSET.results.json" ]] && { echo "[compare] $run_dir: already evaluated" >&2; continue; }
    if [[ ! -f "$run_dir/run.json" || ! -f "$run_dir/checkpoints/checkpoint_last.pt" ]]; then
      [[ $train == 1 ]] || die "$run_dir has no trained run; add --train to train it (or point --runs-dir at your runs)"
    fi
    if [[ $train == 1 ]]; then
      baseline_flag=(); [[ $loss == baseline ]] && baseline_flag=(--baseline)
      # train.sh resumes from checkpoint_last.pt, so an interrupted comparison picks up where it stopped.
      RUNS_DIR="$runs_dir" "$scripts/train.sh" "$RECIPE" "${baseline_flag[@]}" --seed "$seed" \
        --run-dir "$run_dir" "${data_args[@]}" -- "${extra[@]}"
    fi
    "$scripts/evaluate.sh" "$run_dir"
  done
done

"$PYTHON" -m scripts.compare --recipe "$RECIPE" --runs "${run_dirs[@]}" --out-dir "$out_dir" \
  --subset "$EVAL_SUBSET" --paper-baseline "$PAPER_BASELINE" --paper-encouraging "$PAPER_ENCOURAGING" \
  --paper-metric "$PAPER_METRIC"
