#!/usr/bin/env bash
# Prepares any parallel corpus given as PREFIX.SRC / PREFIX.TGT raw text files:
#   data_prep/prepare_custom.sh --src-lang SRC --tgt-lang TGT --train-prefix P --valid-prefix P \
#       --test-prefix P --out-dir D [--vocab-size 8000] [--model-type bpe|unigram] [--lowercase] \
#       [--moses] [--workers N]
# -h lists every option. The logic is in data_prep/ (python -m data_prep, subcommand "custom").
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_python.sh"
DATA_PREP_SCRIPT="$0" exec "$PYTHON" -m data_prep custom "$@"
