# IWSLT17 French->English: the paper's second translation experiment (Zhao et al., AAAI 2022).
# Sourced by scripts/train.sh, evaluate.sh and compare.sh; every recipe defines the same names.
RECIPE_DESCRIPTION="IWSLT17 Fr-En, transformer_iwslt_de_en with 2+2 layers, shared embeddings, 100k updates (paper setup)"
SRC_LANG=fr
TGT_LANG=en
# Made by data_prep/prepare_iwslt17_fr_en.sh.
DATA_DIR=${DATA_DIR:-data/iwslt17.fr-en}
# Cased, SentencePiece 16k (the paper's iwslt17.tokenized.cased.fr-en.spm_bpe16k).
# How DATA_DIR is made (shown when it is missing).
PREPARE_COMMAND="data_prep/prepare_iwslt17_fr_en.sh --out-dir $DATA_DIR"

TRAIN_ARGS=(
  --task translation_encouraging --diagnostics-interval 10
  # Validation BLEU each epoch picks checkpoint_best.pt, as the paper's runs did.
  --eval-bleu --eval-bleu-args '{"beam": 5, "max_len_a": 1.2, "max_len_b": 10}'
  --eval-bleu-remove-bpe sentencepiece --eval-bleu-detok space
  --best-checkpoint-metric bleu --maximize-best-checkpoint-metric
  --arch transformer_iwslt_fr_en_2x2 --share-all-embeddings
  --optimizer adam --adam-betas '(0.9, 0.98)'
  --lr 5e-4 --lr-scheduler inverse_sqrt --warmup-updates 4000
  --dropout 0.3 --weight-decay 1e-3
  --max-update 100000
  --label-smoothing 0.1
  --keep-last-epochs 10
)
# The batch: TOKENS_PER_UPDATE tokens per optimiser update whatever the hardware. train.sh splits it
# exactly into --max-tokens (at most MAX_TOKENS, what one GPU holds) x --update-freq x workers, going
# below MAX_TOKENS per GPU when that keeps the product exact but never below MIN_MAX_TOKENS (fairseq
# refuses a batch shorter than the longest sentence), and refuses a worker count it cannot split into.
# The paper: 4096 tokens per update (one GPU, no accumulation).
TOKENS_PER_UPDATE=4096
MAX_TOKENS=4096
MIN_MAX_TOKENS=1024
BASELINE_ARGS=(--criterion encouraging_ls --bonus-rho 0)
ENCOURAGING_ARGS=(--criterion encouraging_ls --bonus-rho 1 --el-label-smoothing 0.1 --log-end 0.5)

EVAL_AVERAGE_LAST=10
EVAL_BEAM=5
EVAL_LENPEN=1.0
EVAL_BATCH_SIZE=128
EVAL_SUBSET=test
# fairseq's BLEU on the SentencePiece-decoded (cased, untokenised) text, as the paper's generate.py ran.
PAPER_METRIC=tokenized_bleu
EVAL_COMPOUND_SPLIT=0

PAPER_BASELINE="37.10 +- 0.06"
PAPER_ENCOURAGING="37.73 +- 0.17"
