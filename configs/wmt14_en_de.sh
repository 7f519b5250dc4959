# WMT14 English->German: not in the paper; the standard Transformer-base recipe (Vaswani et al. 2017,
# fairseq's "scaling NMT" settings) so that the encouraging loss can be tried at scale.
# Sourced by scripts/train.sh, evaluate.sh and compare.sh; every recipe defines the same names.
RECIPE_DESCRIPTION="WMT14 En-De, transformer base (shared 32k BPE), 100k updates of ~32k tokens"
SRC_LANG=en
TGT_LANG=de
# Made by data_prep/prepare_wmt14_en_de.sh.
DATA_DIR=${DATA_DIR:-data/wmt14.en-de}
# Cased raw text, joint SentencePiece BPE 32k (newstest2013 valid, newstest2014 test).
# How DATA_DIR is made (shown when it is missing).
PREPARE_COMMAND="data_prep/prepare_wmt14_en_de.sh --out-dir $DATA_DIR --workers 16"

# For transformer big: --arch transformer_vaswani_wmt_en_de_big --dropout 0.3 --lr 5e-4 and MAX_TOKENS=3584 below
TRAIN_ARGS=(
  --task translation_encouraging --diagnostics-interval 10
  # Validation BLEU each epoch picks checkpoint_best.pt, as the paper's runs did.
  --eval-bleu --eval-bleu-args '{"beam": 5, "max_len_a": 1.2, "max_len_b": 10}'
  --eval-bleu-remove-bpe sentencepiece --eval-bleu-detok space
  --best-checkpoint-metric bleu --maximize-best-checkpoint-metric
  --arch transformer_wmt_en_de --share-all-embeddings
  --optimizer adam --adam-betas '(0.9, 0.98)'
  --lr 7e-4 --lr-scheduler inverse_sqrt --warmup-updates 4000 --warmup-init-lr 1e-07
  --dropout 0.1 --weight-decay 0.0
  --max-update 100000
  --label-smoothing 0.1
  --keep-last-epochs 5 --save-interval-updates 5000 --keep-interval-updates 5
)
# The batch: TOKENS_PER_UPDATE tokens per optimiser update whatever the hardware. train.sh splits it
# exactly into --max-tokens (at most MAX_TOKENS, what one GPU holds) x --update-freq x workers, going
# below MAX_TOKENS per GPU when that keeps the product exact but never below MIN_MAX_TOKENS (fairseq
# refuses a batch shorter than the longest sentence), and refuses a worker count it cannot split into.
# 8 x 4096 tokens per update on one GPU (fairseq's "scaling NMT" batch is ~25k-32k tokens).
TOKENS_PER_UPDATE=32768
MAX_TOKENS=4096
MIN_MAX_TOKENS=1024
BASELINE_ARGS=(--criterion encouraging_ls --bonus-rho 0)
ENCOURAGING_ARGS=(--criterion encouraging_ls --bonus-rho 1 --el-label-smoothing 0.1 --log-end 0.5)

EVAL_AVERAGE_LAST=5
EVAL_BEAM=4
EVAL_LENPEN=0.6
EVAL_BATCH_SIZE=128
EVAL_SUBSET=test
# WMT En-De is conventionally reported as compound-split tokenised BLEU; sacreBLEU is printed too.
PAPER_METRIC=compound_split_bleu
EVAL_COMPOUND_SPLIT=1

# Not part of the paper: no reference numbers.
PAPER_BASELINE=""
PAPER_ENCOURAGING=""
