# Sourced by train.sh, evaluate.sh, compare.sh and demo.sh: the interpreter, the repository on
# PYTHONPATH (the Python helpers run as modules: python -m scripts.NAME), loading a recipe from
# configs/ with a one-line error for an unknown name, the visible GPUs and the batch split.
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

# The number of CUDA devices torch sees (0 without a GPU or with a CPU build of torch). VISIBLE_GPUS=N
# replaces the probe (tests, and previewing a GPU machine's command with --dry-run on another machine).
visible_gpus() {
  if [[ -n "${VISIBLE_GPUS:-}" ]]; then
    [[ "$VISIBLE_GPUS" =~ ^(0|[1-9][0-9]*)$ ]] || die "VISIBLE_GPUS must be a non-negative integer, got '$VISIBLE_GPUS'"
    echo "$VISIBLE_GPUS"
    return
  fi
  "$PYTHON" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0
}

# split_batch TOKENS_PER_UPDATE MAX_TOKENS MIN_MAX_TOKENS WORKERS: prints "MAX_TOKENS_PER_GPU UPDATE_FREQ"
# with max-tokens x update-freq x workers = TOKENS_PER_UPDATE exactly and the per-GPU batch between
# MIN_MAX_TOKENS and MAX_TOKENS (the fewest accumulation steps, so the largest batch that fits);
# fails (status 1, prints nothing) when no such split exists.
split_batch() {
  local total=$1 max=$2 min=$3 workers=$4 per_worker update_freq
  (( workers > 0 && total % workers == 0 )) || return 1
  per_worker=$(( total / workers ))
  for (( update_freq = (per_worker + max - 1) / max; per_worker / update_freq >= min; update_freq++ )); do
    if (( per_worker % update_freq == 0 )); then echo "$(( per_worker / update_freq )) $update_freq"; return 0; fi
  done
  return 1
}

# The worker counts (up to 64) for which split_batch succeeds, space-separated.
splittable_worker_counts() {
  local workers counts=()
  for (( workers = 1; workers <= 64; workers++ )); do
    split_batch "$1" "$2" "$3" "$workers" > /dev/null && counts+=("$workers")
  done
  echo "${counts[*]:-none}"
}

# hold_lock FILE WHAT: an exclusive flock(2) on FILE for the rest of this shell and of every process it
# starts (they inherit the descriptor: fairseq-train holds it as long as it runs, even if this shell
# is killed), or a one-line refusal naming the holder's host and PID, which the holder writes into
# FILE. The kernel releases the lock when the last holder exits, however it ends, so a lock is never
# stale and nothing decides staleness from a PID (a PID means nothing across PID namespaces or hosts;
# on NFS, Linux maps flock to the server's byte-range locks, which hold across hosts).
hold_lock() {
  local file=$1 what=$2 holder
  command -v flock > /dev/null || die "flock (util-linux) is needed to keep two runs out of $what"
  { exec {LOCK_FD}<> "$file"; } 2> /dev/null || die "cannot open the lock file $file (is the directory writable?)"
  if ! flock --nonblock "$LOCK_FD"; then
    IFS= read -r holder < "$file" || true
    die "$what is in use by another run (${holder:-which has not recorded its host and PID yet}); wait for it to end, or use another directory"
  fi
  # A holder that deleted the file after we opened it leaves us locking a file nobody else will open.
  [[ "$file" -ef "/dev/fd/$LOCK_FD" ]] || die "$file was removed while this run started; start it again"
  printf 'host %s, PID %s\n' "$(hostname)" "$$" > "$file"
}
