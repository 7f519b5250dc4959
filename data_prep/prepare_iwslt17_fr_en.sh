#!/usr/bin/env bash
# IWSLT17 French-English (cased, joint SentencePiece BPE 16k; valid TED.dev2010, test TED.tst2010-2015):
#   data_prep/prepare_iwslt17_fr_en.sh [--raw-dir data/downloads] [--out-dir data/iwslt17.fr-en] [--offline] ...
# Put fr-en.zip (the Hugging Face mirror's) or fr-en.tgz (WIT3's) into --raw-dir to run offline. -h lists every option.
# The logic is in data_prep/ (python -m data_prep, subcommand "iwslt17-fr-en").
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_python.sh"
DATA_PREP_SCRIPT="$0" exec "$PYTHON" -m data_prep iwslt17-fr-en "$@"
