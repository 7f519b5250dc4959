"""Architectures of the user-dir (fairseq's import_models also imports every module here, but
skips the whole user-dir when it was imported before, as ``import fairseq_plugins`` does)."""
from . import transformer_iwslt_fr_en_2x2  # noqa: F401
