"""Building an output directory: one joint SentencePiece model, the encoded text, fairseq-preprocess
binaries with a joined dictionary and prepare.json, for any corpus a recipe has read. The output is
written into `.OUT.partial-PID` beside OUT and renamed into place when complete; a run skips the work
when OUT was built from the same inputs and settings (the fingerprint)."""
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

from data_prep.processes import pid_alive
from data_prep.settings import Settings
from data_prep.textfiles import DataPrepError, write_lines
from data_prep.tools import SPLITS, encode_lines, run_fairseq_preprocess, train_sentencepiece

LOG = logging.getLogger("data_prep")
# Output sub-directories: raw references, text as SentencePiece saw it, pieces, fairseq binaries.
RAW_DIR, TOK_DIR, PIECES_DIR, BIN_DIR = "raw", "tok", "spm", "bin"
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
    written = set(manifest) | {"prepare.json"} if isinstance(manifest, list) else None
    folders = {str(parent) for name in (written or ()) for parent in Path(name).parents}
    for path in sorted(out_dir.rglob("*")):
        name = path.relative_to(out_dir)
        known = (str(name) in written or (path.is_dir() and str(name) in folders)) if written is not None \
            else name.parts[0] in LAYOUT
        if not known:
            raise DataPrepError(f"--out-dir {out_dir} holds {name}, which data_prep did not write; move it "
                                "elsewhere first (a rebuild replaces the whole directory)")


def remove_stale_work_dirs(out_dir: Path) -> None:
    """Deletes the temporary directories of earlier runs for `out_dir` whose process is gone (killed,
    or the machine went down); those of a run still going are left alone."""
    pattern = re.compile(rf"\.{re.escape(out_dir.name)}\.(partial|old)-(\d+)")
    if not out_dir.parent.is_dir():
        return
    for path in out_dir.parent.iterdir():
        found = pattern.fullmatch(path.name)
        if not found:
            continue
        if pid_alive(int(found.group(2))):
            LOG.info("leaving %s: its run (PID %s) is still going", path, found.group(2))
            continue
        LOG.info("removing %s, left by a run that was killed", path)
        shutil.rmtree(path, ignore_errors=True)


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
    _require_training_text(splits["train"])
    started = time.time()
    LOG.info("building %s (%s) with %s; pairs: %s", out_dir, corpus_name, settings.as_dict(),
             ", ".join(f"{split} {len(corpus)}" for split, corpus in splits.items()))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    try:
        (work / "logs").mkdir(parents=True)
        # tok/ holds the text SentencePiece sees whenever that differs from the raw text.
        pretokenised = any(part.text_src is not None for part in splits.values())
        for split, corpus in splits.items():
            write_lines(work / RAW_DIR / f"{split}.{settings.src}", corpus.raw_src)
            write_lines(work / RAW_DIR / f"{split}.{settings.tgt}", corpus.raw_tgt)
            if pretokenised:
                write_lines(work / TOK_DIR / f"{split}.{settings.src}", corpus.model_src)
                write_lines(work / TOK_DIR / f"{split}.{settings.tgt}", corpus.model_tgt)
        text_dir = work / (TOK_DIR if pretokenised else RAW_DIR)
        processor = train_sentencepiece([text_dir / f"train.{settings.src}", text_dir / f"train.{settings.tgt}"],
                                        work / "spm", settings, work / "logs" / "sentencepiece.log")
        for split, corpus in splits.items():
            for lang, lines in ((settings.src, corpus.model_src), (settings.tgt, corpus.model_tgt)):
                write_lines(work / PIECES_DIR / f"{split}.{lang}",
                            encode_lines(processor, lines, settings.workers, f"encode {split}.{lang}"))
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
        (work / "prepare.json").write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
        _replace_dir(work, out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    LOG.info("wrote %s (%s) in %.0f s", out_dir,
             ", ".join(f"{split} {len(corpus)}" for split, corpus in splits.items()), time.time() - started)
    return out_dir


def _replace_dir(new: Path, target: Path) -> None:
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        target.rename(old)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)


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
