#!/usr/bin/env bash
# IWSLT14 German-English as in fairseq's prepare-iwslt14.sh, with a joint SentencePiece BPE (10k):
#   data_prep/prepare_iwslt14_de_en.sh [--raw-dir data/downloads] [--out-dir data/iwslt14.de-en] [--offline] ...
# Put de-en.tgz into --raw-dir to run offline. -h lists every option.
# The logic is in data_prep/ (python -m data_prep, subcommand "iwslt14-de-en").
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_python.sh"
DATA_PREP_SCRIPT="$0" exec "$PYTHON" -m data_prep iwslt14-de-en "$@"
