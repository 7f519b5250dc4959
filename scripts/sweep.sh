#!/usr/bin/env bash
# A sweep over encouraging-loss settings for one recipe: every arm x every seed trained, evaluated and
# compared by one command that resumes what is done (logic in scripts/sweep.py).
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: scripts/sweep.sh RECIPE --arms ARM... [--seeds 1-3] [--jobs N] [--runs-dir D | --arms-dir D] [--out-dir D] [--data-dir D] [-- extra fairseq-train args]

  --arms ARM...  `baseline` and encouraging-loss settings such as le=0.75 or rho=0.5,schedule=linear,warmup=300
                 (keys and naming: python -m scripts.sweep -h); every pair of arms is compared
  --seeds S      1-3 (default) or 1,3,5
  --jobs N       runs trained side by side (default $SWEEP_JOBS or 1), each with
                 $SWEEP_THREADS_PER_RUN (default 1) torch threads
  --runs-dir D   runs go to D/RECIPE/ARM/seedN (default $RUNS_DIR or runs)
  --arms-dir D   runs go to D/ARM/seedN instead
  --out-dir D    comparison.{md,json,png} (default: the folder holding the arms)
  --data-dir D   prepared corpus (default: the recipe's DATA_DIR)
  -- ARGS        passed to every fairseq-train (before the arm's own settings)
Finished runs are skipped and interrupted ones resume: run the same command again after a failure.

Environment: RUNS_DIR, PYTHON, CONFIG_DIR, SWEEP_JOBS, SWEEP_THREADS_PER_RUN, SWEEP_TRAIN and
SWEEP_EVALUATE (the scripts run per arm; default scripts/train.sh and scripts/evaluate.sh).
USAGE
}

source "$(dirname "${BASH_SOURCE[0]}")/recipe_lib.sh"
[[ "${1:-}" == -h || "${1:-}" == --help ]] && { usage; exit 0; }
[[ $# -gt 0 && "$1" != -* ]] || { usage >&2; die "missing RECIPE (known: $(known_recipes)); it comes first"; }
recipe=$1; shift
load_recipe "$recipe"
exec "$PYTHON" -m scripts.sweep --recipe "$RECIPE" --subset "$EVAL_SUBSET" \
  --paper-metric "$PAPER_METRIC" --paper-baseline "$PAPER_BASELINE" --paper-encouraging "$PAPER_ENCOURAGING" "$@"
