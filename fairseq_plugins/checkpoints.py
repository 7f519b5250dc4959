"""fairseq checkpoints under torch >= 2.6, whose ``torch.load`` defaults to ``weights_only=True``.

fairseq calls ``torch.load`` without ``weights_only``; its checkpoints then fail to load because
their pickles name a few classes outside torch's allowlist. Instead of turning the protection off,
we allowlist exactly those classes (found with ``torch.serialization.get_unsafe_globals_in_checkpoint``
on checkpoints written by fairseq-train) and turn every load failure into one error naming the file.

Two more checks on every load: the config values that fairseq passes to ``eval()``
(``config_literals``), before fairseq reads the config; and the CRC-32 of every record in the
archive (torch does not verify them, so flipped bytes inside a tensor would load silently),
computed while torch reads the file and reported before the loaded state is returned.
"""
import argparse
import mmap
import os
import pickle
import shutil
import struct
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from fairseq import checkpoint_utils
from fairseq.file_io import PathManager

from .config_literals import refuse_code_in_config
from .errors import CheckpointLoadError

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


def load_checkpoint_to_cpu(path, arg_overrides=None, load_on_all_ranks=False):
    """fairseq's ``load_checkpoint_to_cpu``, after the archive's CRCs and the config were checked,
    with every failure reported as a ``CheckpointLoadError``."""
    try:
        local_path = PathManager.get_local_path(path)
        with ThreadPoolExecutor(max_workers=1) as pool:
            # zlib.crc32 releases the GIL: the CRCs are checked while torch reads the same pages
            crc_check = pool.submit(verify_archive, local_path, path)
            try:
                refuse_code_in_config(_load_lazily(local_path), path)
                state = _fairseq_load_checkpoint_to_cpu(path, arg_overrides, load_on_all_ranks)
            except Exception:
                crc_check.result()  # flipped bytes explain a failure better than what they broke
                raise
            crc_check.result()
            return state
    except CheckpointLoadError:
        raise
    except pickle.UnpicklingError as error:
        raise CheckpointLoadError(
            f"refusing to load checkpoint {path}: its pickle asks for something fairseq checkpoints "
            f"never contain, so loading it could run code ({_first_line(error)})") from error
    except FileNotFoundError:
        raise
    except (EOFError, OSError, zipfile.BadZipFile, struct.error) as error:  # torch's zip reader raises OSError
        raise CheckpointLoadError(f"checkpoint {path} is truncated or corrupt ({error})") from error
    except RuntimeError as error:
        if "zip archive" not in str(error) and "PytorchStreamReader" not in str(error):
            raise
        raise CheckpointLoadError(f"checkpoint {path} is truncated or corrupt ({_first_line(error)})") from error


def _load_lazily(local_path):
    """The checkpoint's objects with its tensors left on disk (mmap): the config costs a pickle read."""
    try:
        return torch.load(local_path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as error:
        if "mmap" not in str(error):  # the legacy (torch < 1.6) format cannot be mapped
            raise
        return torch.load(local_path, map_location="cpu", weights_only=True)


_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature ... file name length, extra field length


def verify_archive(local_path, path=None):
    """Raises ``CheckpointLoadError`` when a record of the checkpoint's zip archive does not match
    the CRC-32 the archive stores for it. Reads the file once through mmap (no copy); records
    written without a CRC (torch's ``compute_crc32`` off: stored as 0) and the legacy non-zip
    format have nothing to check."""
    path = path or local_path
    if not zipfile.is_zipfile(local_path):
        return
    with open(local_path, "rb") as handle, zipfile.ZipFile(handle) as archive:
        if os.fstat(handle.fileno()).st_size == 0:
            return
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data, memoryview(data) as view:
            for record in archive.infolist():
                if record.CRC == 0 and record.file_size > 0:
                    continue
                signature, name_length, extra_length = _LOCAL_HEADER.unpack_from(view, record.header_offset)
                start = record.header_offset + _LOCAL_HEADER.size + name_length + extra_length
                body = view[start:start + record.compress_size]
                if signature != b"PK\x03\x04" or record.compress_type != zipfile.ZIP_STORED \
                        or len(body) != record.compress_size:
                    actual = zlib.crc32(archive.read(record))  # unusual layout: let zipfile find the data
                else:
                    actual = zlib.crc32(body)
                body.release()
                if actual != record.CRC:
                    raise CheckpointLoadError(
                        f"checkpoint {path} is corrupt: record {record.filename} does not match its "
                        f"CRC-32 (stored {record.CRC:08x}, computed {actual:08x})")


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
