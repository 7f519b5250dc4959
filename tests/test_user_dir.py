"""``import fairseq_plugins`` is the whole user-dir: fairseq's import_user_module skips a module that
is already imported, so the import itself must register criterion, task and architecture."""
import os
import subprocess
import sys

from conftest import REPO

PROBE = """
import sys
import fairseq_plugins
from fairseq.criterions import CRITERION_REGISTRY
from fairseq.models import ARCH_MODEL_REGISTRY
from fairseq.tasks import TASK_REGISTRY
print("encouraging_ls" in CRITERION_REGISTRY, "translation_encouraging" in TASK_REGISTRY,
      "transformer_iwslt_fr_en_2x2" in ARCH_MODEL_REGISTRY, sys.excepthook.__module__)
"""


def test_import_registers_criterion_task_and_architecture(tmp_path):
    # from another directory: the package comes from PYTHONPATH (or the editable install), not the cwd
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["True", "True", "True", "fairseq_plugins.errors"]
