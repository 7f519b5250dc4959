"""Building an output directory: one joint SentencePiece model, the encoded text, fairseq-preprocess
binaries with a joined dictionary and prepare.json, for any corpus a recipe has read. The output is
written into `.OUT.partial-HOST-PID` beside OUT and renamed into place when complete; a run skips the
work when OUT was built from the same inputs and settings (the fingerprint). One run at a time holds
OUT (the lock file .OUT.lock); a kill at any moment leaves a complete OUT, old or new, at once or
after the next run's start."""
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Optional

from data_prep.locking import HOST, exclusive_lock
from data_prep.settings import Settings
from data_prep.textfiles import DataPrepError, write_lines
from data_prep.tools import SPLITS, encode_lines, run_fairseq_preprocess, train_sentencepiece

LOG = logging.getLogger("data_prep")
# Output sub-directories: raw references, text as SentencePiece saw it, pieces, fairseq binaries.
RAW_DIR, TOK_DIR, PIECES_DIR, BIN_DIR = "raw", "tok", "spm", "bin"
# fairseq's --required-batch-size-multiple default.
BATCH_MULTIPLE = 8
# What a build writes at the top of OUT (the manifest in prepare.json lists each file; outputs
# of older versions, which have none, are checked against these names).
LAYOUT = ("prepare.json", "spm.model", "spm.vocab", RAW_DIR, TOK_DIR, PIECES_DIR, BIN_DIR, "logs")


def make_fingerprint(corpus_name: str, settings: Settings, inputs: dict) -> str:
    """Identifies a build: the same inputs (by content) and settings give the same output."""
    # --workers changes speed, not output, so it does not force a rebuild.
    relevant = {key: value for key, value in settings.as_dict().items() if key != "workers"}
    payload = json.dumps({"corpus": corpus_name, "settings": relevant,
                          "inputs": {name: info.get("sha256") for name, info in inputs.items()}}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def _record(out_dir: Path) -> Optional[dict]:
    try:
        return json.loads((out_dir / "prepare.json").read_text())
    except (OSError, ValueError):
        return None


def fingerprint_to_build(out_dir: Path, corpus_name: str, settings: Settings, inputs: dict,
                         force: bool) -> Optional[str]:
    """The fingerprint of the build to make, or None when `out_dir` already holds it (unless `force`);
    refuses an `out_dir` whose replacement would delete something data_prep did not write."""
    fingerprint = make_fingerprint(corpus_name, settings, inputs)
    record = _record(out_dir)
    if not force and isinstance(record, dict) and record.get("fingerprint") == fingerprint:
        LOG.info("%s is up to date with these inputs and settings; nothing to do (--force rebuilds)", out_dir)
        return None
    check_out_dir(out_dir)
    return fingerprint


def check_out_dir(out_dir: Path) -> None:
    """Refuses to replace a directory holding anything this tool did not write (it would be deleted)."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise DataPrepError(f"--out-dir {out_dir} is a file; remove it or choose another directory")
    record = _record(out_dir)
    if not (out_dir / "prepare.json").is_file():
        if any(out_dir.iterdir()):
            raise DataPrepError(f"--out-dir {out_dir} exists and was not written by data_prep; "
                                "remove it or choose another directory")
        return
    manifest = record.get("outputs") if isinstance(record, dict) else None
    if manifest is not None and not (isinstance(manifest, list) and all(isinstance(name, str) for name in manifest)):
        raise DataPrepError(f"{out_dir / 'prepare.json'}: \"outputs\" is not a list of file names; data_prep "
                            "cannot tell which files it wrote: move the directory away or choose another")
    written = set(manifest) | {"prepare.json"} if manifest is not None else None
    folders = {str(parent) for name in (written or ()) for parent in Path(name).parents}
    for path in sorted(out_dir.rglob("*")):
        name = path.relative_to(out_dir)
        known = (str(name) in written or (path.is_dir() and str(name) in folders)) if written is not None \
            else name.parts[0] in LAYOUT
        if not known:
            raise DataPrepError(f"--out-dir {out_dir} holds {name}, which data_prep did not write; move it "
                                "elsewhere first (a rebuild replaces the whole directory)")


def real_out_dir(out_dir: Path) -> Path:
    """The directory a build replaces: --out-dir itself, or where it points when it is a symbolic link
    (the link stays and the output lands on the link target's file system). Refuses the current
    directory and its ancestors: replacing them would pull the directory from under the user."""
    path = Path(os.path.abspath(out_dir))
    target = path.resolve() if path.is_symlink() else path
    here = Path.cwd().resolve()
    if target == Path(target.anchor) or target.resolve() == here or target.resolve() in here.parents:
        raise DataPrepError(f"--out-dir {out_dir} is the current directory or above it; a build replaces its "
                            "--out-dir whole: name a directory of its own (e.g. data/corpus)")
    return target


def _leftovers(out_dir: Path):
    """(path, kind, host) of the temporary directories runs made for `out_dir` (kind "partial" or "old";
    host None for those of versions that did not record it)."""
    pattern = re.compile(rf"\.{re.escape(out_dir.name)}\.(partial|old)-(?:(.+)-)?(\d+)")
    if not out_dir.parent.is_dir():
        return []
    found = ((path, pattern.fullmatch(path.name)) for path in sorted(out_dir.parent.iterdir()))
    return [(path, match.group(1), match.group(2)) for path, match in found if match]


def _remove(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def claim_out_dir(out_dir: Path):
    """Holds `out_dir` for this run (a second run is refused, naming host and PID of the first), after
    finishing what killed runs left: a complete `out_dir` moved aside just before a kill is put back,
    and their temporary directories are deleted, except those another host made (it may still be
    writing them, on a file system whose locks it does not share)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(out_dir.with_name(f".{out_dir.name}.lock"), what=f"--out-dir {out_dir}"):
        leftovers = _leftovers(out_dir)
        if not out_dir.exists() and not out_dir.is_symlink():
            # A kill between the two renames of _replace_dir: the complete old build is put back.
            for path, kind, host in leftovers:
                if kind == "old":
                    path.rename(out_dir)
                    LOG.warning("restored %s from %s, left by a run killed while replacing it", out_dir, path)
                    break
        for path, kind, host in _leftovers(out_dir):
            if host not in (None, HOST):
                LOG.warning("leaving %s: made on host %s, which may still be writing it (delete it yourself "
                            "when no data prep runs there)", path, host)
                continue
            LOG.info("removing %s, left by a run that was killed", path)
            _remove(path)
        yield


def _require_batches(splits: dict) -> None:
    """fairseq batches sentences in multiples of BATCH_MULTIPLE and drops the rest: a training split
    smaller than that gives fairseq-train no batch at all ("The dataset is empty")."""
    if len(splits["train"]) < BATCH_MULTIPLE:
        raise DataPrepError(f"the train split has {len(splits['train'])} sentence pairs; fairseq-train needs at "
                            f"least {BATCH_MULTIPLE} (its batches hold a multiple of {BATCH_MULTIPLE})")
    if len(splits["valid"]) < BATCH_MULTIPLE:
        LOG.warning("the valid split has %d sentence pairs, fewer than fairseq's batch multiple %d: fairseq-train "
                    "needs --required-batch-size-multiple %d or less to validate on it", len(splits["valid"]),
                    BATCH_MULTIPLE, len(splits["valid"]))


def _require_training_text(corpus) -> None:
    for lines, name in ((corpus.model_src, corpus.names[0]), (corpus.model_tgt, corpus.names[1])):
        if not any(line.strip() for line in lines):
            raise DataPrepError(f"{name}: every line is blank; SentencePiece has no text to learn from")


def build_dataset(out_dir: Path, corpus_name: str, splits: dict, settings: Settings, inputs: dict,
                  fingerprint: str, notes: Optional[dict] = None) -> Path:
    """Writes the whole output (see the module docstring) into a temporary directory beside
    `out_dir` and renames it into place only when complete; a failure leaves no partial output."""
    for split in SPLITS:
        if len(splits[split]) == 0:
            raise DataPrepError(f"empty corpus: the {split} split has no sentence pairs")
    _require_batches(splits)
    _require_training_text(splits["train"])
    started = time.time()
    LOG.info("building %s (%s) with %s; pairs: %s", out_dir, corpus_name, settings.as_dict(),
             ", ".join(f"{split} {len(corpus)}" for split, corpus in splits.items()))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = out_dir.with_name(f".{out_dir.name}.partial-{HOST}-{os.getpid()}")
    _remove(work)
    try:
        (work / "logs").mkdir(parents=True)
        # tok/ holds the text SentencePiece sees whenever that differs from the raw text.
        pretokenised = any(part.text_src is not None for part in splits.values())

        def write_text(split, corpus):
            write_lines(work / RAW_DIR / f"{split}.{settings.src}", corpus.raw_src)
            write_lines(work / RAW_DIR / f"{split}.{settings.tgt}", corpus.raw_tgt)
            if pretokenised:
                write_lines(work / TOK_DIR / f"{split}.{settings.src}", corpus.model_src)
                write_lines(work / TOK_DIR / f"{split}.{settings.tgt}", corpus.model_tgt)
        for split, corpus in splits.items():
            write_text(split, corpus)
        text_dir = work / (TOK_DIR if pretokenised else RAW_DIR)
        processor = train_sentencepiece([text_dir / f"train.{settings.src}", text_dir / f"train.{settings.tgt}"],
                                        work / "spm", settings, work / "logs" / "sentencepiece.log",
                                        sentences=2 * len(splits["train"]))
        pieces = {split: [encode_lines(processor, lines, settings.workers, f"encode {split}.{lang}")
                          for lang, lines in ((settings.src, corpus.model_src), (settings.tgt, corpus.model_tgt))]
                  for split, corpus in splits.items()}
        for split in SPLITS:
            kept = _fitting_pairs(split, splits[split], pieces[split], settings.max_positions)
            if len(kept) < len(splits[split]):
                splits[split] = splits[split].select(kept)
                pieces[split] = [[side[i] for i in kept] for side in pieces[split]]
                write_text(split, splits[split])
        _require_batches(splits)
        for split in SPLITS:
            for lang, lines in zip((settings.src, settings.tgt), pieces[split]):
                write_lines(work / PIECES_DIR / f"{split}.{lang}", lines)
        preprocess_command = run_fairseq_preprocess(work / PIECES_DIR, work / BIN_DIR, settings,
                                                    work / "logs" / "preprocess.log")
        dictionary_size = sum(1 for _ in open(work / BIN_DIR / f"dict.{settings.src}.txt", encoding="utf-8"))
        record = {
            "corpus": corpus_name,
            "command": _command_line(),
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seconds": round(time.time() - started, 1),
            "settings": settings.as_dict(),
            "inputs": inputs,
            "lines": {split: len(corpus) for split, corpus in splits.items()},
            "references": {
                "raw": f"{RAW_DIR}/test.{settings.tgt}",
                "tokenised": f"{TOK_DIR}/test.{settings.tgt}" if settings.moses or settings.lowercase else None,
                "model_text": f"{TOK_DIR}/test.{settings.tgt}" if pretokenised else None,
                # What a decoded hypothesis (spm decode) still needs before scoring against "raw".
                "postprocess": (["moses-detokenise"] if settings.moses else [])
                               + (["compare-lowercased"] if settings.lowercase else []),
            },
            "sentencepiece": {"model_type": settings.model_type, "requested_vocab_size": settings.vocab_size,
                              "vocab_size": processor.get_piece_size()},
            "fairseq": {"preprocess": [arg.replace(str(work), str(out_dir)) for arg in preprocess_command[1:]],
                        "dictionary_size": dictionary_size},
            "versions": _versions(),
            "fingerprint": fingerprint,
            **(notes or {}),
            # Every file of the build: a rebuild refuses to delete anything else found in OUT.
            "outputs": sorted(str(path.relative_to(work)) for path in work.rglob("*") if path.is_file()),
        }
        write_lines(work / "prepare.json", [json.dumps(record, indent=2, ensure_ascii=False)])
        _replace_dir(work, out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    LOG.info("wrote %s (%s pairs; vocabulary of %d pieces) in %.0f s", out_dir,
             ", ".join(f"{split} {len(corpus)}" for split, corpus in splits.items()),
             record["sentencepiece"]["vocab_size"], time.time() - started)
    return out_dir


def _fitting_pairs(split: str, corpus, pieces, max_positions: int) -> list:
    """Indices of the pairs whose sides fit the model with their end-of-sentence token. fairseq-train
    stops at a longer pair; training and validation pairs are left out (as fairseq's
    --skip-invalid-size-inputs-valid-test would), a test sentence is an error (every one is scored)."""
    kept = []
    for index, (source, target) in enumerate(zip(*pieces)):
        longest = max(len(source.split()), len(target.split()))
        if longest + 1 <= max_positions:
            kept.append(index)
        elif split == "test":
            raise DataPrepError(f"{corpus.names[0]} / {corpus.names[1]}: test pair {index + 1} has {longest} "
                                f"SentencePiece tokens, more than --max-positions {max_positions} allows "
                                f"({max_positions - 1} and the end of sentence); shorten or split it")
    dropped = len(corpus) - len(kept)
    if dropped:
        LOG.warning("%s: left out %d of %d pairs longer than --max-positions %d allows", split, dropped,
                    len(corpus), max_positions)
    if not kept:
        raise DataPrepError(f"the {split} split has no pair that fits --max-positions {max_positions}")
    return kept


def _replace_dir(new: Path, target: Path) -> None:
    """Two renames: a kill between them leaves the complete old build as .TARGET.old-HOST-PID, which
    the next run for `target` puts back (claim_out_dir)."""
    old = target.with_name(f".{target.name}.old-{HOST}-{os.getpid()}")
    if target.exists():
        target.rename(old)
    new.rename(target)
    _remove(old)


def _command_line():
    """How the user ran it: the shell entry point (which supplies the subcommand) or the module."""
    script = os.environ.get("DATA_PREP_SCRIPT")
    return [script, *sys.argv[2:]] if script else [sys.argv[0], *sys.argv[1:]]


def _versions():
    from importlib.metadata import PackageNotFoundError, version
    found = {"python": sys.version.split()[0]}
    for package in ("sentencepiece", "sacremoses", "fairseq-fixed", "fairseq"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            pass
    return found
