"""``transformer_iwslt_fr_en_2x2``: the paper's IWSLT17 Fr-En model, which fairseq does not name.

transformer_iwslt_de_en sizes (512 embeddings, 1024 FFN, 4 heads) with 2 encoder and 2 decoder
layers and all embeddings shared (source, target and output projection: needs a joined dictionary,
``fairseq-preprocess --joined-dictionary``).
"""
from fairseq.models import register_model_architecture
from fairseq.models.transformer.transformer_legacy import transformer_iwslt_de_en


@register_model_architecture("transformer", "transformer_iwslt_fr_en_2x2")
def transformer_iwslt_fr_en_2x2(args):
    args.encoder_layers = getattr(args, "encoder_layers", 2)
    args.decoder_layers = getattr(args, "decoder_layers", 2)
    args.share_all_embeddings = getattr(args, "share_all_embeddings", True)
    transformer_iwslt_de_en(args)
