#!/usr/bin/env bash
# Installs everything the project needs into the active virtual environment, or into .venv.
# Idempotent: a second run checks what is present and installs nothing.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: scripts/install.sh [-h]

Installs the project into the active virtual environment, or creates VENV (default .venv).
A torch already importable there is kept (for example a CUDA build you installed first).

Environment:
  VENV           virtual environment to create/use when none is active (default: .venv)
  PYTHON         interpreter used to create it (default: python3.11, else python3)
  TORCH_SPEC     torch requirement when torch is missing. Default: with nvidia-smi present,
                 'torch>=2.6' (PyPI's CUDA build); without, 'torch==2.13.0+cpu' (a CPU build)
  TORCH_CPU_INDEX  index tried for the CPU build when pip's configured sources lack it
                 (default: https://download.pytorch.org/whl/cpu)
  FAIRSEQ_SPEC   fairseq distribution (default: fairseq-fixed==0.12.3.1)
USAGE
}
[[ "${1:-}" == "-h" || "${1:-}" == "--help" ]] && { usage; exit 0; }

cd "$(dirname "$0")/.."
repo=$PWD
VENV=${VENV:-.venv}
FAIRSEQ_SPEC=${FAIRSEQ_SPEC:-fairseq-fixed==0.12.3.1}
TORCH_CPU_INDEX=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}

if [[ -n "${VIRTUAL_ENV:-}" ]]; then
  py="$VIRTUAL_ENV/bin/python"
else
  if [[ ! -x "$VENV/bin/python" ]]; then
    base=${PYTHON:-$(command -v python3.11 || command -v python3)}
    echo "[install] creating $VENV with $base"
    "$base" -m venv "$VENV"
  fi
  py="$VENV/bin/python"
fi
py="$(cd "$(dirname "$py")" && pwd)/$(basename "$py")"  # absolute: some checks below run from /
pip=("$py" -m pip --disable-pip-version-check)

have() { "$py" - "$@" <<'PY'
import importlib.util, sys
sys.exit(0 if all(importlib.util.find_spec(m) for m in sys.argv[1:]) else 1)
PY
}

# True when every requirement (lines of a requirements file, or arguments) is installed at a matching
# version; checked locally so that a second install does not ask any package index.
satisfied() { "$py" - "$@" <<'PY' 2>/dev/null
import importlib.metadata as metadata, pathlib, sys
from packaging.requirements import Requirement
lines = []
for arg in sys.argv[1:]:
    lines += pathlib.Path(arg).read_text().splitlines() if arg.endswith(".txt") else [arg]
for line in lines:
    line = line.split("#")[0].strip()
    if not line:
        continue
    req = Requirement(line)
    try:
        version = metadata.version(req.name)
    except metadata.PackageNotFoundError:
        sys.exit(1)
    if req.specifier and not req.specifier.contains(version, prereleases=True):
        sys.exit(1)
PY
}

if have torch; then
  echo "[install] keeping torch $("$py" -c 'import torch; print(torch.__version__)')"
else
  if [[ -z "${TORCH_SPEC:-}" ]]; then
    if command -v nvidia-smi >/dev/null 2>&1; then TORCH_SPEC='torch>=2.6'; else TORCH_SPEC='torch==2.13.0+cpu'; fi
  fi
  echo "[install] installing $TORCH_SPEC"
  # The CPU build is not on PyPI; try pip's configured sources first, then PyTorch's CPU index.
  "${pip[@]}" install -q "$TORCH_SPEC" \
    || "${pip[@]}" install -q --timeout 30 --retries 1 --extra-index-url "$TORCH_CPU_INDEX" "$TORCH_SPEC"
fi

# The core, then every extra: fairseq's runtime needs (its own metadata would pull torchaudio and old
# pins, hence --no-deps below), the Hugging Face integration and the test tools.
requirement_files=(requirements.txt requirements-fairseq.txt requirements-huggingface.txt requirements-test.txt)
if satisfied "${requirement_files[@]}"; then
  echo "[install] ${requirement_files[*]} already satisfied"
else
  requirement_args=()
  for file in "${requirement_files[@]}"; do requirement_args+=(-r "$file"); done
  "${pip[@]}" install -q "${requirement_args[@]}"
fi

if satisfied "$FAIRSEQ_SPEC"; then
  echo "[install] keeping $FAIRSEQ_SPEC"
else
  echo "[install] building $FAIRSEQ_SPEC (C++/Cython extensions, a few minutes)"
  "${pip[@]}" install -q --no-deps --no-build-isolation "$FAIRSEQ_SPEC"
fi

# The project itself, editable: `import encouraging_loss` and `--user-dir "$(python -m fairseq_plugins)"`
# work from any directory, and edits in this checkout take effect without reinstalling.
if (cd / && "$py" -c 'import sys, pathlib, encouraging_loss
sys.exit(pathlib.Path(encouraging_loss.__file__).resolve().parent != (pathlib.Path(sys.argv[1]) / "encouraging_loss").resolve())' "$repo") 2>/dev/null; then
  echo "[install] keeping the editable install of this checkout"
else
  echo "[install] installing this checkout (editable)"
  "${pip[@]}" install -q --no-deps --no-build-isolation -e .
fi

(cd / && "$py" -c 'import torch, fairseq, fairseq_plugins, transformers; print(f"[install] ok: torch {torch.__version__}, fairseq {fairseq.__version__}, transformers {transformers.__version__}")') 2>&1 | grep '^\[install\]'
