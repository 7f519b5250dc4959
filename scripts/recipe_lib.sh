# Sourced by train.sh, evaluate.sh, compare.sh and demo.sh: the interpreter, the repository on
# PYTHONPATH, and loading a recipe from configs/ with a one-line error for an unknown name.
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONFIG_DIR=${CONFIG_DIR:-$REPO_ROOT/configs}
source "$REPO_ROOT/data_prep/_python.sh"  # PYTHON and PYTHONPATH, one rule for every script
# Log lines must reach train.log as they happen, not when a pipe buffer fills.
export PYTHONUNBUFFERED=1
USER_DIR="$REPO_ROOT/fairseq_plugins"

die() { echo "error: $*" >&2; exit 2; }

known_recipes() {
  local file names=()
  for file in "$CONFIG_DIR"/*.sh; do [[ -e "$file" ]] && names+=("$(basename "$file" .sh)"); done
  echo "${names[*]}"
}

# load_recipe NAME: defines the recipe's variables (see configs/*.sh) in the calling shell.
load_recipe() {
  local name=$1
  if [[ ! "$name" =~ ^[A-Za-z0-9_]+$ || ! -f "$CONFIG_DIR/$name.sh" ]]; then
    die "unknown recipe '$name' (known: $(known_recipes); recipes live in $CONFIG_DIR)"
  fi
  # shellcheck source=/dev/null
  source "$CONFIG_DIR/$name.sh"
  RECIPE=$name
}

# The number of CUDA devices torch sees (0 without a GPU or with a CPU build of torch).
visible_gpus() { "$PYTHON" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0; }
