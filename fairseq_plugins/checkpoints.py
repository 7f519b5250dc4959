"""fairseq checkpoints under torch >= 2.6, whose ``torch.load`` defaults to ``weights_only=True``.

fairseq calls ``torch.load`` without ``weights_only``; its checkpoints then fail to load because
their pickles name a few classes outside torch's allowlist. Instead of turning the protection off,
we allowlist exactly those classes (found with ``torch.serialization.get_unsafe_globals_in_checkpoint``
on checkpoints written by fairseq-train) and turn every load failure into one error naming the file.
"""
import argparse
import os
import pickle
import shutil
import zipfile

import numpy as np
import torch
from fairseq import checkpoint_utils
from fairseq.file_io import PathManager

# What fairseq checkpoints hold beyond tensors and builtins: the command-line args; numpy scalars
# where a best-metric value (a BLEU, say) was a numpy float; and numpy arrays, which the translation
# task's --eval-bleu meters keep in the saved metrics state. Array elements are unpickled by the
# same restricted unpickler, so none of these can run code.
FAIRSEQ_CHECKPOINT_GLOBALS = [
    argparse.Namespace,
    np.dtype,
    np.ndarray,
    np._core.multiarray._reconstruct,
    np._core.multiarray.scalar,
    *(type(np.dtype(name)) for name in ("float64", "float32", "float16", "int64", "int32", "bool")),
]


class CheckpointLoadError(RuntimeError):
    """A checkpoint could not be loaded; the message names the file and why."""


def load_checkpoint_to_cpu(path, arg_overrides=None, load_on_all_ranks=False):
    """fairseq's ``load_checkpoint_to_cpu`` with every failure reported as a ``CheckpointLoadError``."""
    try:
        return _fairseq_load_checkpoint_to_cpu(path, arg_overrides, load_on_all_ranks)
    except pickle.UnpicklingError as error:
        raise CheckpointLoadError(
            f"refusing to load checkpoint {path}: its pickle asks for something fairseq checkpoints "
            f"never contain, so loading it could run code ({_first_line(error)})") from error
    except FileNotFoundError:
        raise
    except (EOFError, OSError, zipfile.BadZipFile) as error:  # torch's zip reader raises OSError
        raise CheckpointLoadError(f"checkpoint {path} is truncated or corrupt ({error})") from error
    except RuntimeError as error:
        if "zip archive" not in str(error) and "PytorchStreamReader" not in str(error):
            raise
        raise CheckpointLoadError(f"checkpoint {path} is truncated or corrupt ({_first_line(error)})") from error


def _first_line(error):
    lines = [line.strip() for line in str(error).splitlines() if "GLOBAL" in line or "Unsupported" in line]
    return lines[0] if lines else str(error).splitlines()[0]


def copy_atomically(src_path, dst_path, overwrite=False):
    """fairseq writes a checkpoint once (atomically) and *copies* it to checkpoint_last.pt / _best.pt;
    a run killed during that copy would leave a half-written checkpoint_last.pt. Copy, then rename."""
    if "://" in str(dst_path):  # remote storage: keep fairseq's own behaviour
        return _fairseq_copy(src_path, dst_path, overwrite)
    if not overwrite and os.path.exists(dst_path):
        return False
    partial = f"{dst_path}.partial"
    shutil.copyfile(src_path, partial)
    os.replace(partial, dst_path)
    return True


torch.serialization.add_safe_globals(FAIRSEQ_CHECKPOINT_GLOBALS)
if PathManager.copy is not copy_atomically:
    _fairseq_copy = PathManager.copy
    PathManager.copy = staticmethod(copy_atomically)
if getattr(checkpoint_utils.load_checkpoint_to_cpu, "__module__", "") != __name__:
    _fairseq_load_checkpoint_to_cpu = checkpoint_utils.load_checkpoint_to_cpu
    checkpoint_utils.load_checkpoint_to_cpu = load_checkpoint_to_cpu
