# The embedded demo (make demo): a synthetic toy language pair (scripts/make_demo_corpus.py) and a
# small Transformer (2+2 layers of width 64), sized to train baseline and encouraging loss well past
# BLEU 20 on a 2-core CPU in a few minutes. Every knob can be overridden from the environment (DEMO_*), so tests can shrink it.
# Sourced by scripts/train.sh, evaluate.sh and compare.sh; every recipe defines the same names.
RECIPE_DESCRIPTION="synthetic SOV-agglutinative -> SVO-with-agreement toy pair, tiny pre-norm Transformer (CPU demo)"
SRC_LANG=src
TGT_LANG=tgt
DATA_DIR=${DATA_DIR:-runs/demo/data}
# How DATA_DIR is made (shown when it is missing).
PREPARE_COMMAND="scripts/demo.sh (generates the synthetic corpus and prepares it into $DATA_DIR)"

TRAIN_ARGS=(
  --task translation_encouraging --diagnostics-interval 5
  --arch transformer --share-all-embeddings
  --encoder-layers "${DEMO_LAYERS:-2}" --decoder-layers "${DEMO_LAYERS:-2}"
  --encoder-embed-dim "${DEMO_DIM:-64}" --decoder-embed-dim "${DEMO_DIM:-64}"
  --encoder-ffn-embed-dim $(( 4 * ${DEMO_DIM:-64} )) --decoder-ffn-embed-dim $(( 4 * ${DEMO_DIM:-64} ))
  --encoder-attention-heads 4 --decoder-attention-heads 4
  --encoder-normalize-before --decoder-normalize-before
  --optimizer adam --adam-betas '(0.9, 0.98)'
  --lr "${DEMO_LR:-4e-3}" --lr-scheduler inverse_sqrt --warmup-updates "${DEMO_WARMUP:-100}"
  --dropout 0.1 --weight-decay 0.0
  # Whole epochs, so that the last epoch checkpoint is the final model (0 = no update limit).
  --max-epoch "${DEMO_MAX_EPOCH:-3}" --max-update "${DEMO_MAX_UPDATE:-0}"
  --label-smoothing 0.1
  --keep-last-epochs "${DEMO_AVERAGE_LAST:-1}"
  --num-workers 0
)
# The batch (see configs/iwslt14_de_en.sh): 2048 tokens per update, split exactly over any workers.
TOKENS_PER_UPDATE=${DEMO_MAX_TOKENS:-2048}
MAX_TOKENS=${DEMO_MAX_TOKENS:-2048}
MIN_MAX_TOKENS=128
BASELINE_ARGS=(--criterion encouraging_ls --bonus-rho 0)
# The paper's settings; scripts/demo.sh adds a linear warm-in of the bonus (docs/demo-findings.md says why).
ENCOURAGING_ARGS=(--criterion encouraging_ls --bonus-rho 1 --el-label-smoothing 0.1 --log-end 0.5)

# 1: the last epoch as is (the model still improves fast at the end, averaging would hold it back).
EVAL_AVERAGE_LAST=${DEMO_AVERAGE_LAST:-1}
EVAL_BEAM=${DEMO_BEAM:-5}
EVAL_LENPEN=1.0
EVAL_BATCH_SIZE=128
EVAL_SUBSET=test
PAPER_METRIC=tokenized_bleu
EVAL_COMPOUND_SPLIT=0

# The paper has no numbers for a synthetic corpus.
PAPER_BASELINE=""
PAPER_ENCOURAGING=""
