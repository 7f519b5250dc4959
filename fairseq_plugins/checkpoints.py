"""fairseq checkpoints under torch >= 2.6, whose ``torch.load`` defaults to ``weights_only=True``.

fairseq calls ``torch.load`` without ``weights_only``; its checkpoints then fail to load because
their pickles name a few classes outside torch's allowlist. Instead of turning the protection off,
we allowlist exactly those classes (found with ``torch.serialization.get_unsafe_globals_in_checkpoint``
on checkpoints written by fairseq-train) and turn every load failure into one error naming the file.

More checks on every load, each failing in one line naming the file: only a regular file is read
(a FIFO would hang, a link to /dev/zero read without end), and it must start like a torch
checkpoint; the config values that fairseq passes to ``eval()`` (``config_literals``) and the
structure and model sizes of the state (``checkpoint_contents``), before fairseq reads the config;
and the CRC-32 of every record in the archive (torch does not verify them, so flipped bytes inside a
tensor would load silently; a record name stored twice is refused too), computed while torch reads
the file and reported before the loaded state is returned.

The file is opened once and every reader goes through that open file (``/proc/self/fd/N``), so a
checkpoint replaced or deleted while it loads (fairseq rotating ``--keep-last-epochs``) is read
whole, as it was when opened: ``open_checkpoint`` and ``load_open_checkpoint`` let a caller hold
several files open before reading any (``scripts/average_checkpoints.py``).
"""
import argparse
import contextlib
import mmap
import os
import pickle
import re
import shutil
import stat
import struct
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from fairseq import checkpoint_utils
from fairseq.file_io import PathManager
from fairseq.models import BaseFairseqModel

from .checkpoint_contents import explain_mismatch, refuse_odd_structure, refuse_unbuildable_model
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
    """fairseq's ``load_checkpoint_to_cpu``, after the file, the archive's CRCs, the config and the
    model sizes were checked, with every failure reported as a ``CheckpointLoadError``."""
    with open_checkpoint(PathManager.get_local_path(path), path) as handle:
        return load_open_checkpoint(handle, path, arg_overrides, load_on_all_ranks)


# Pickle opcodes that name or call an object: a weights_only refusal of one of these is what a
# hostile pickle looks like; any other refused opcode is a damaged file.
_CODE_OPCODES = {ord(op) for op in "cRbio\x81\x92\x93\x82\x83\x84PQ"}


@contextlib.contextmanager
def open_checkpoint(local_path, path=None):
    """The checkpoint at ``local_path`` opened for reading (a file object), once it is known to be a
    regular file that starts like a torch checkpoint; ``CheckpointLoadError`` naming ``path`` if not.
    ``FileNotFoundError`` when there is no such file."""
    path = path or local_path
    try:
        # O_NONBLOCK: opening a FIFO would otherwise wait for a writer forever
        descriptor = os.open(local_path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as error:
        raise CheckpointLoadError(f"cannot open checkpoint {path}: {error.strerror or error}") from None
    status = os.fstat(descriptor)
    if not stat.S_ISREG(status.st_mode):
        os.close(descriptor)
        raise CheckpointLoadError(f"checkpoint {path} is not a regular file ({_file_kind(status.st_mode)}); "
                                  "only regular files are read as checkpoints")
    with open(descriptor, "rb", closefd=True) as handle:
        os.set_blocking(descriptor, True)
        head = os.pread(descriptor, 4, 0)
        if head != b"PK\x03\x04" and head[:1] != b"\x80":  # a zip archive, or torch's legacy pickle
            raise CheckpointLoadError(
                f"checkpoint {path} is not a torch checkpoint: its {status.st_size} byte(s) start with neither "
                "a zip header nor a pickle protocol mark (truncated, or another kind of file)")
        yield handle


def _file_kind(mode):
    kinds = [(stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")]
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def _reopenable(handle):
    """A path that opens the same file as ``handle`` even after it was renamed over or deleted."""
    fd_path = f"/proc/self/fd/{handle.fileno()}"
    return fd_path if os.path.exists(fd_path) else handle.name


def load_open_checkpoint(handle, path, arg_overrides=None, load_on_all_ranks=False):
    """``load_checkpoint_to_cpu`` of a file opened by ``open_checkpoint``; ``path`` names it in errors."""
    global _last_loaded
    local_path = _reopenable(handle)
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            # zlib.crc32 releases the GIL: the CRCs are checked while torch reads the same pages
            crc_check = pool.submit(verify_archive, local_path, path)
            try:
                state = _load_lazily(local_path)
                refuse_odd_structure(state, path)
                refuse_code_in_config(state, path)
                refuse_unbuildable_model(state, path)
                del state
                state = _read_with_fairseq(local_path, path, arg_overrides, load_on_all_ranks)
            except Exception:
                crc_check.result()  # flipped bytes explain a failure better than what they broke
                raise
            crc_check.result()
            _last_loaded = path
            return state
    except CheckpointLoadError:
        raise
    except pickle.UnpicklingError as error:
        if not _names_code(error):
            raise CheckpointLoadError(f"checkpoint {path} is truncated or corrupt (its pickle is damaged: "
                                      f"{_first_line(error)})") from error
        raise CheckpointLoadError(
            f"refusing to load checkpoint {path}: its pickle asks for something fairseq checkpoints "
            f"never contain, so loading it could run code ({_first_line(error)})") from error
    except (EOFError, OSError, zipfile.BadZipFile, struct.error) as error:  # torch's zip reader raises OSError
        raise CheckpointLoadError(f"checkpoint {path} is truncated or corrupt "
                                  f"({str(error).replace(local_path, str(path))})") from error
    except RuntimeError as error:
        if "zip archive" not in str(error) and "PytorchStreamReader" not in str(error):
            raise
        raise CheckpointLoadError(f"checkpoint {path} is truncated or corrupt ({_first_line(error)})") from error


def _read_with_fairseq(local_path, path, arg_overrides, load_on_all_ranks):
    """fairseq's own loader (which upgrades old states and makes the config an OmegaConf object). The
    state passed the structural checks, so what fails in there is a content fairseq cannot read."""
    try:
        return _fairseq_load_checkpoint_to_cpu(local_path, arg_overrides, load_on_all_ranks)
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as error:
        raise CheckpointLoadError(f"checkpoint {path} holds a state fairseq cannot read "
                                  f"({type(error).__name__}: {_first_line(error)})") from error


def _names_code(error):
    text = str(error)
    if "Unsupported global" in text or "GLOBAL" in text or "reduce" in text.lower():
        return True
    operand = re.search(r"Unsupported operand (\d+)", text)
    return operand is None or int(operand.group(1)) in _CODE_OPCODES


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
        names = [record.filename for record in archive.infolist()]
        if len(set(names)) != len(names):
            twice = next(name for name in names if names.count(name) > 1)
            raise CheckpointLoadError(f"checkpoint {path} is corrupt: its archive stores record {twice} more than "
                                      "once (readers would disagree on which one is the checkpoint)")
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


_last_loaded = None  # the checkpoint whose weights a model is about to receive, for its error message


def load_state_dict_explained(model, state_dict, strict=True, model_cfg=None, args=None):
    """fairseq's ``BaseFairseqModel.load_state_dict``; weights that do not fit the model (another
    vocabulary, another architecture) are one ``CheckpointLoadError`` saying how they differ."""
    try:
        return _fairseq_load_state_dict(model, state_dict, strict=strict, model_cfg=model_cfg, args=args)
    except RuntimeError as error:
        reason = explain_mismatch(model, state_dict) if isinstance(state_dict, dict) else None
        if reason is None:
            raise
        raise CheckpointLoadError(f"checkpoint {_last_loaded or '(unknown file)'} {reason}") from error


torch.serialization.add_safe_globals(FAIRSEQ_CHECKPOINT_GLOBALS)
if PathManager.copy is not copy_atomically:
    _fairseq_copy = PathManager.copy
    PathManager.copy = staticmethod(copy_atomically)
if getattr(checkpoint_utils.load_checkpoint_to_cpu, "__module__", "") != __name__:
    _fairseq_load_checkpoint_to_cpu = checkpoint_utils.load_checkpoint_to_cpu
    checkpoint_utils.load_checkpoint_to_cpu = load_checkpoint_to_cpu
if BaseFairseqModel.load_state_dict is not load_state_dict_explained:
    _fairseq_load_state_dict = BaseFairseqModel.load_state_dict
    BaseFairseqModel.load_state_dict = load_state_dict_explained
