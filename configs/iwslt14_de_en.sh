# IWSLT14 German->English: the paper's main translation experiment (Zhao et al., AAAI 2022).
# Sourced by scripts/train.sh, evaluate.sh and compare.sh; every recipe defines the same names.
RECIPE_DESCRIPTION="IWSLT14 De-En, transformer_iwslt_de_en, unshared embeddings, 20k updates (paper setup)"
SRC_LANG=de
TGT_LANG=en
# Made by data_prep/prepare_iwslt14_de_en.sh (DATA_DIR/bin binarised, DATA_DIR/raw references).
DATA_DIR=${DATA_DIR:-data/iwslt14.de-en}
# Lower-cased, Moses-tokenised like fairseq's prepare-iwslt14.sh (10k joint BPE there; BPE 10k here).
# How DATA_DIR is made (shown when it is missing).
PREPARE_COMMAND="data_prep/prepare_iwslt14_de_en.sh --out-dir $DATA_DIR"

# Shared by both losses (the batch is set below, not here).
TRAIN_ARGS=(
  --task translation_encouraging --diagnostics-interval 10
  # Validation BLEU each epoch picks checkpoint_best.pt, as the paper's runs did.
  --eval-bleu --eval-bleu-args '{"beam": 5, "max_len_a": 1.2, "max_len_b": 10}'
  --eval-bleu-remove-bpe sentencepiece --eval-bleu-detok moses
  --best-checkpoint-metric bleu --maximize-best-checkpoint-metric
  --arch transformer_iwslt_de_en
  --optimizer adam --adam-betas '(0.9, 0.98)'
  --lr 1e-3 --lr-scheduler inverse_sqrt --warmup-updates 4000
  --dropout 0.4 --weight-decay 1e-4
  --max-update 20000
  --label-smoothing 0.1
  --keep-last-epochs 10
)
# The batch: TOKENS_PER_UPDATE tokens per optimiser update whatever the hardware. train.sh splits it
# exactly into --max-tokens (at most MAX_TOKENS, what one GPU holds) x --update-freq x workers, going
# below MAX_TOKENS per GPU when that keeps the product exact but never below MIN_MAX_TOKENS (fairseq
# refuses a batch shorter than the longest sentence), and refuses a worker count it cannot split into.
# The paper: 4096 tokens x update-freq 4 on one GPU.
TOKENS_PER_UPDATE=16384
MAX_TOKENS=4096
MIN_MAX_TOKENS=1024
# The baseline is encouraging_ls with rho 0: exactly label_smoothed_cross_entropy, and it logs the
# same target-probability diagnostics, so the two runs' curves can be compared.
BASELINE_ARGS=(--criterion encouraging_ls --bonus-rho 0)
ENCOURAGING_ARGS=(--criterion encouraging_ls --bonus-rho 1 --el-label-smoothing 0.1 --log-end 0.5)

# Evaluation (scripts/evaluate.sh): average the last EVAL_AVERAGE_LAST epoch checkpoints, beam search.
EVAL_AVERAGE_LAST=10
EVAL_BEAM=5
EVAL_LENPEN=1.0
EVAL_BATCH_SIZE=128
EVAL_SUBSET=test
# Which BLEU the paper's numbers are: fairseq's BLEU on the tokenised, lower-cased text.
PAPER_METRIC=tokenized_bleu
EVAL_COMPOUND_SPLIT=0

# The paper's results (BLEU, mean +- std over 5 seeds).
PAPER_BASELINE="35.09 +- 0.07"
PAPER_ENCOURAGING="35.50 +- 0.11"
