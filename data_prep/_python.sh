# Sourced by the data_prep entry points: picks the interpreter (override with PYTHON=...) and makes
# the repository importable, so the scripts work from any directory without installing anything.
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -n "${VIRTUAL_ENV:-}" && -x "$VIRTUAL_ENV/bin/python" ]]; then
        PYTHON="$VIRTUAL_ENV/bin/python"
    elif [[ -x "$repo_root/.venv/bin/python" ]]; then
        PYTHON="$repo_root/.venv/bin/python"
    else
        PYTHON="python3"
    fi
fi
export PYTHONPATH="$repo_root${PYTHONPATH:+:$PYTHONPATH}"
