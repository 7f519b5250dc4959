"""fairseq user-dir: ``--user-dir fairseq_plugins`` registers the ``encouraging_ls`` criterion, the
``translation_encouraging`` task and its architectures, and makes fairseq checkpoints load under
torch's ``weights_only=True``."""
from . import checkpoints, criterions, distributed_cpu  # noqa: F401  (tasks/ and models/ are imported by fairseq itself)
