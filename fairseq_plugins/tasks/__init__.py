"""Tasks of the user-dir (fairseq's import_tasks also imports every module here, but skips the
whole user-dir when it was imported before, as ``import fairseq_plugins`` does)."""
from . import translation_encouraging  # noqa: F401
