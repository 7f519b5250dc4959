#!/usr/bin/env python3
"""Averages the parameters of the last N fairseq checkpoints of a run into one checkpoint.

Loading goes through fairseq_plugins.checkpoints, so every checkpoint is read with
torch.load(weights_only=True) and an unreadable one is reported by name. The average is accumulated
in float64 and stored in each parameter's own dtype; everything else (config, dictionaries' args)
comes from the newest checkpoint. The output is written under a temporary name and renamed; a
failure to write it (permission, read-only or full disk, a directory in the way) is one line naming
it, and leaves no partial file.

While a training rotates its checkpoints (--keep-last-epochs), the set averaged is consistent: every
checkpoint is opened before any is read, and an open file stays readable after training deletes it.
One that vanishes between the listing and its opening makes the directory be listed again; if that
keeps happening, one line names the file that vanished.

  average_checkpoints.py --inputs RUN/checkpoints --num-epoch-checkpoints 10 --output RUN/checkpoint_avg.pt
  average_checkpoints.py --inputs a.pt b.pt c.pt --output avg.pt
"""
import argparse
import collections
import contextlib
import logging
import os
import re
import sys

import torch
from omegaconf import OmegaConf

from fairseq_plugins.checkpoints import CheckpointLoadError, load_open_checkpoint, open_checkpoint
from scripts.atomic_io import atomic_open

LOG = logging.getLogger("average_checkpoints")
LISTING_ATTEMPTS = 5
EPOCH_CHECKPOINT = re.compile(r"^checkpoint(\d+)\.pt$")
UPDATE_CHECKPOINT = re.compile(r"^checkpoint_\d+_(\d+)\.pt$")


class AveragingError(Exception):
    """Bad input: reported as one line."""


def last_checkpoints(directory, count, pattern):
    """The `count` checkpoints in `directory` whose name matches `pattern`, highest number first."""
    if not os.path.isdir(directory):
        raise AveragingError(f"--inputs {directory} is not a directory")
    numbered = sorted(((int(match.group(1)), name) for name in os.listdir(directory)
                       if (match := pattern.match(name))), reverse=True)
    if not numbered:
        raise AveragingError(f"no checkpoints named like {pattern.pattern} in {directory}")
    if len(numbered) < count:
        LOG.warning("asked for the last %d checkpoints but %s has only %d; averaging those",
                    count, directory, len(numbered))
    return [os.path.join(directory, name) for _, name in numbered[:count]]


def open_all(stack, paths):
    """Opens every checkpoint of `paths` (kept open by `stack`) before any is read."""
    return [stack.enter_context(open_checkpoint(path)) for path in paths]


def open_last_checkpoints(stack, directory, count, pattern):
    """(paths, open files) of the last `count` checkpoints of `directory`, listed again when one of them
    vanished before it could be opened (a training deleting old ones)."""
    for _ in range(LISTING_ATTEMPTS):
        paths = last_checkpoints(directory, count, pattern)
        attempt = contextlib.ExitStack()
        try:
            handles = open_all(attempt, paths)
        except FileNotFoundError as error:
            attempt.close()
            vanished = error.filename
            continue
        stack.enter_context(attempt)
        return paths, handles
    raise AveragingError(f"{vanished} vanished before it could be opened, {LISTING_ATTEMPTS} listings in a row: "
                         f"is a training deleting the checkpoints of {directory} faster than they are listed?")


def average_states(paths, handles):
    """The newest state (paths[0]) with its model parameters replaced by the mean over `paths`, read
    from `handles` (the same files, open)."""
    sums, newest, dtypes = collections.OrderedDict(), None, {}
    for path, handle in zip(paths, handles):
        state = load_open_checkpoint(handle, path)
        model = state["model"]
        if newest is None:
            newest = state
            dtypes = {key: value.dtype for key, value in model.items()}
        elif set(model) != set(sums):
            missing = sorted(set(sums) ^ set(model))[:3]
            raise AveragingError(f"{path} has different parameters from {paths[0]} (e.g. {', '.join(missing)})")
        for key, value in model.items():
            if not torch.is_floating_point(value):
                sums.setdefault(key, value)  # integer buffers (e.g. version counters): keep the newest
                continue
            if key in sums and sums[key].shape != value.shape:
                raise AveragingError(f"{path}: parameter {key} has shape {tuple(value.shape)}, "
                                     f"but {tuple(sums[key].shape)} in {paths[0]}")
            sums[key] = sums[key] + value.double() if key in sums else value.double().clone()
    averaged = collections.OrderedDict(
        (key, (value / len(paths)).to(dtypes[key]) if torch.is_floating_point(value) else value)
        for key, value in sums.items())
    newest["model"] = averaged
    # fairseq's loader turns the config into an OmegaConf object; store it as fairseq itself does
    # (plain containers), or the averaged file would not load under weights_only=True.
    if OmegaConf.is_config(newest.get("cfg")):
        newest["cfg"] = OmegaConf.to_container(newest["cfg"], resolve=True, enum_to_str=True)
    # The optimizer state belongs to the newest weights only; an averaged model must not resume with it.
    newest["last_optimizer_state"] = None
    return newest


def write_checkpoint(path, state):
    """torch.save to `path` atomically; a failure is an AveragingError naming `path`, with no partial file."""
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with atomic_open(path, "wb") as handle:
            torch.save(state, handle)
    except (OSError, RuntimeError) as error:
        # torch's zip writer reports a failed write as a RuntimeError raised while handling the OSError
        cause = error if isinstance(error, OSError) else error.__context__
        if not isinstance(cause, OSError):
            raise
        raise AveragingError(f"cannot write {path}: {cause.strerror or cause}") from None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--inputs", nargs="+", required=True,
                        help="checkpoint files, or one run's checkpoint directory with --num-*-checkpoints")
    parser.add_argument("--output", required=True, help="averaged checkpoint to write")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--num-epoch-checkpoints", type=int, help="average the last N checkpointE.pt")
    group.add_argument("--num-update-checkpoints", type=int, help="average the last N checkpoint_E_U.pt")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", level=logging.INFO)
    try:
        if os.path.isdir(args.output):
            raise AveragingError(f"--output {args.output} is a directory; give the file to write")
        with contextlib.ExitStack() as stack:
            count = args.num_epoch_checkpoints if args.num_epoch_checkpoints is not None else args.num_update_checkpoints
            if count is not None:
                if len(args.inputs) != 1:
                    raise AveragingError("--num-*-checkpoints needs exactly one --inputs directory")
                if count < 1:
                    raise AveragingError(f"--num-*-checkpoints must be at least 1, got {count}")
                pattern = EPOCH_CHECKPOINT if args.num_epoch_checkpoints else UPDATE_CHECKPOINT
                paths, handles = open_last_checkpoints(stack, args.inputs[0], count, pattern)
            else:
                paths = args.inputs
                try:
                    handles = open_all(stack, paths)
                except FileNotFoundError as error:
                    raise AveragingError(f"--inputs {error.filename}: no such checkpoint file") from None
            LOG.info("averaging %d checkpoints: %s", len(paths), ", ".join(os.path.basename(p) for p in paths))
            state = average_states(paths, handles)
        write_checkpoint(args.output, state)
        LOG.info("wrote %s", args.output)
    except (AveragingError, CheckpointLoadError) as error:
        print(f"error: average_checkpoints.py: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
