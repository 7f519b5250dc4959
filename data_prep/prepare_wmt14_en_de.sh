#!/usr/bin/env bash
# WMT14 English-German (europarl v7 + commoncrawl + news-commentary v12; valid newstest2013, test
# newstest2014), joint SentencePiece BPE 32k:
#   data_prep/prepare_wmt14_en_de.sh [--raw-dir data/downloads] [--out-dir data/wmt14.en-de] [--offline] ...
# Put the five archives into --raw-dir to run offline. -h lists every option.
# The logic is in data_prep/ (python -m data_prep, subcommand "wmt14-en-de").
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_python.sh"
DATA_PREP_SCRIPT="$0" exec "$PYTHON" -m data_prep wmt14-en-de "$@"
