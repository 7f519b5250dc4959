"""Corpus preparation for the NMT experiments: one joint SentencePiece model, SentencePiece-encoded
text, fairseq-preprocess binaries with a joined dictionary, and the untokenised references for
detokenised sacreBLEU. Every corpus goes through the same `build_dataset`; the shell scripts in this
folder are thin entry points to the subcommands below (`python -m data_prep.prepare -h`)."""
import argparse
import hashlib
import json
import logging
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from tqdm import tqdm

LOG = logging.getLogger("data_prep")
SPLITS = ("train", "valid", "test")
# Output sub-directories: raw references, text as SentencePiece saw it, pieces, fairseq binaries.
RAW_DIR, TOK_DIR, PIECES_DIR, BIN_DIR = "raw", "tok", "spm", "bin"
# Below this many lines a worker pool costs more than it saves.
MIN_LINES_FOR_POOL = 20000


class DataPrepError(Exception):
    """A problem with the user's input or settings; reported as one line without a traceback."""


# ----------------------------------------------------------------------------------------------
# Reading text

def decode_lines(data: bytes, name: str) -> list:
    """Splits UTF-8 `data` into lines (without their end-of-line); `name` identifies it in errors."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line_number = data.count(b"\n", 0, error.start) + 1
        raise DataPrepError(f"{name}: line {line_number}: invalid UTF-8 ({error.reason})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    # Files written on Windows: the carriage return is not part of the sentence.
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def read_lines(path: Path) -> list:
    if not path.is_file():
        raise DataPrepError(f"missing input file: {path}")
    return decode_lines(path.read_bytes(), str(path))


def write_lines(path: Path, lines) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        for line in lines:
            handle.write(line)
            handle.write("\n")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------
# Parallel text and the transformations applied before SentencePiece

@dataclass
class ParallelText:
    """Aligned sentence pairs. `raw_*` is the untokenised text (the sacreBLEU references);
    `text_*` is what SentencePiece sees (tokenised and/or lower-cased), None when it equals raw."""
    raw_src: list
    raw_tgt: list
    text_src: Optional[list] = None
    text_tgt: Optional[list] = None

    def __post_init__(self):
        if len(self.raw_src) != len(self.raw_tgt):
            raise DataPrepError(f"source has {len(self.raw_src)} lines but target has {len(self.raw_tgt)}")

    def __len__(self):
        return len(self.raw_src)

    @property
    def model_src(self):
        return self.raw_src if self.text_src is None else self.text_src

    @property
    def model_tgt(self):
        return self.raw_tgt if self.text_tgt is None else self.text_tgt

    def select(self, indices) -> "ParallelText":
        indices = list(indices)

        def pick(lines):
            return None if lines is None else [lines[i] for i in indices]
        return ParallelText(pick(self.raw_src), pick(self.raw_tgt), pick(self.text_src), pick(self.text_tgt))

    @staticmethod
    def concatenate(parts) -> "ParallelText":
        parts = list(parts)
        pretokenised = any(part.text_src is not None for part in parts)

        def join(attribute):
            return [line for part in parts for line in getattr(part, attribute)]
        return ParallelText(join("raw_src"), join("raw_tgt"),
                            join("model_src") if pretokenised else None,
                            join("model_tgt") if pretokenised else None)


# The text transformations applied before SentencePiece, by name (recorded in prepare.json).
# Moses tokenisation comes before lower-casing: its rules for abbreviations ("Mr.") depend on case.
TEXT_STEPS = ("apostrophe", "normalize-punctuation", "remove-non-printing", "moses", "lowercase")
_line_function = None


def _make_line_function(steps, lang):
    functions = []
    for step in steps:
        if step == "apostrophe":  # fairseq's IWSLT/WMT recipes map the typographic apostrophe in test sets
            functions.append(lambda line: line.replace("\u2019", "'"))
        elif step == "normalize-punctuation":
            from sacremoses import MosesPunctNormalizer
            functions.append(MosesPunctNormalizer(lang=lang).normalize)
        elif step == "remove-non-printing":  # as Moses' remove-non-printing-char.perl
            import regex
            control = regex.compile(r"\p{C}")
            functions.append(lambda line: control.sub(" ", line))
        elif step == "moses":
            from sacremoses import MosesTokenizer
            tokenizer = MosesTokenizer(lang=lang)
            # escape=False: SentencePiece handles any character, and "&amp;" would leak into the output.
            functions.append(lambda line: tokenizer.tokenize(line, escape=False, return_str=True))
        elif step == "lowercase":
            functions.append(str.lower)
        else:
            raise ValueError(f"unknown text step {step!r} (known: {', '.join(TEXT_STEPS)})")

    def apply(line):
        for function in functions:
            line = function(line)
        return line
    return apply


def _init_worker(steps, lang):
    global _line_function
    _line_function = _make_line_function(steps, lang)


def _apply_line_function(line):
    return _line_function(line)


def model_text(lines: list, lang: str, steps, workers: int, desc: str) -> Optional[list]:
    """`lines` after the named TEXT_STEPS (None when there are none: the model sees the raw text),
    with a progress bar, in a worker pool for large inputs."""
    steps = tuple(steps)
    if not steps:
        return None
    desc = f"{desc}: {'+'.join(steps)}"
    if workers > 1 and len(lines) >= MIN_LINES_FOR_POOL:
        with multiprocessing.get_context("fork").Pool(workers, _init_worker, (steps, lang)) as pool:
            return list(tqdm(pool.imap(_apply_line_function, lines, chunksize=2000), total=len(lines),
                             desc=desc, unit="line", mininterval=2))
    function = _make_line_function(steps, lang)
    return [function(line) for line in tqdm(lines, desc=desc, unit="line", mininterval=2)]


def text_steps(settings, *extra_first) -> tuple:
    """The steps for a split: corpus-specific ones first, then --moses and --lowercase."""
    return (*extra_first, *(["moses"] if settings.moses else []), *(["lowercase"] if settings.lowercase else []))


def add_model_text(corpus: ParallelText, settings, steps, desc: str) -> ParallelText:
    corpus.text_src = model_text(corpus.raw_src, settings.src, steps, settings.workers, f"{desc}.{settings.src}")
    corpus.text_tgt = model_text(corpus.raw_tgt, settings.tgt, steps, settings.workers, f"{desc}.{settings.tgt}")
    return corpus


_SPACES = re.compile(r"\s+")


def clean_by_length(corpus: ParallelText, min_tokens: int, max_tokens: int, max_ratio: float,
                    max_word_chars: int = 1000) -> ParallelText:
    """Moses' clean-corpus-n.perl on the model text: whitespace squeezed, then a pair is kept only if
    both sides have min..max tokens, neither is more than max_ratio times longer than the other,
    and no token is longer than max_word_chars. ('|' is kept: tokenizer.perl escapes it, so the
    original never sees one.) Model text is replaced by its squeezed form; raw text is untouched."""
    kept, text_src, text_tgt = [], [], []
    for index, (source, target) in enumerate(zip(corpus.model_src, corpus.model_tgt)):
        source = _SPACES.sub(" ", source).strip()
        target = _SPACES.sub(" ", target).strip()
        if not source or not target:
            continue
        source_words, target_words = source.split(" "), target.split(" ")
        source_count, target_count = len(source_words), len(target_words)
        if not (min_tokens <= source_count <= max_tokens and min_tokens <= target_count <= max_tokens):
            continue
        if source_count / target_count > max_ratio or target_count / source_count > max_ratio:
            continue
        if max(map(len, source_words)) > max_word_chars or max(map(len, target_words)) > max_word_chars:
            continue
        kept.append(index)
        text_src.append(source)
        text_tgt.append(target)
    cleaned = corpus.select(kept)
    if corpus.text_src is not None:
        cleaned.text_src, cleaned.text_tgt = text_src, text_tgt
    LOG.info("length cleaning (%d..%d tokens, ratio %g): kept %d of %d pairs",
             min_tokens, max_tokens, max_ratio, len(kept), len(corpus))
    return cleaned


def every_nth(corpus: ParallelText, n: int):
    """(the rest, every n-th pair counting from 1): awk 'NR % n == 0' as in fairseq's IWSLT recipe."""
    held_out = set(range(n - 1, len(corpus), n))
    return (corpus.select(i for i in range(len(corpus)) if i not in held_out),
            corpus.select(sorted(held_out)))


# ----------------------------------------------------------------------------------------------
# Building the output directory

@dataclass
class Settings:
    src: str
    tgt: str
    vocab_size: int = 8000
    model_type: str = "bpe"
    lowercase: bool = False
    moses: bool = False
    workers: int = 1
    character_coverage: float = 1.0
    spm_sentences: int = 2_000_000
    seed: int = 1
    extra: dict = field(default_factory=dict)

    def validate(self):
        if not re.fullmatch(r"[A-Za-z0-9_-]+", self.src) or not re.fullmatch(r"[A-Za-z0-9_-]+", self.tgt):
            raise DataPrepError(f"--src-lang/--tgt-lang must be file suffixes like 'de' (got {self.src!r}, {self.tgt!r})")
        if self.src == self.tgt:
            raise DataPrepError(f"--src-lang and --tgt-lang must differ (both are {self.src!r})")
        if self.vocab_size < 8:
            raise DataPrepError(f"--vocab-size must be at least 8 (got {self.vocab_size})")
        if self.model_type not in ("bpe", "unigram"):
            raise DataPrepError(f"--model-type must be bpe or unigram (got {self.model_type!r})")
        if self.workers < 1:
            raise DataPrepError(f"--workers must be at least 1 (got {self.workers})")
        if not 0.9 <= self.character_coverage <= 1.0:
            raise DataPrepError(f"--character-coverage must be in [0.9, 1] (got {self.character_coverage})")

    def as_dict(self):
        return {key: value for key, value in self.__dict__.items() if key != "extra"} | self.extra


def check_out_dir(out_dir: Path) -> None:
    """Refuses to replace a directory this tool did not write (it would be deleted at the end)."""
    if out_dir.exists() and not (out_dir / "prepare.json").is_file():
        if not out_dir.is_dir() or any(out_dir.iterdir()):
            raise DataPrepError(f"--out-dir {out_dir} exists and was not written by data_prep; "
                                "remove it or choose another directory")


def up_to_date(out_dir: Path, fingerprint: str) -> bool:
    try:
        return json.loads((out_dir / "prepare.json").read_text())["fingerprint"] == fingerprint
    except (OSError, ValueError, KeyError):
        return False


def make_fingerprint(corpus_name: str, settings: Settings, inputs: dict) -> str:
    """Identifies a build: the same inputs (by content) and settings give the same output."""
    # --workers changes speed, not output, so it does not force a rebuild.
    relevant = {key: value for key, value in settings.as_dict().items() if key != "workers"}
    payload = json.dumps({"corpus": corpus_name, "settings": relevant,
                          "inputs": {name: info.get("sha256") for name, info in inputs.items()}}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def train_sentencepiece(text_files, prefix: Path, settings: Settings, log_path: Path):
    import sentencepiece as spm
    LOG.info("training SentencePiece %s, vocab %d, on %s", settings.model_type, settings.vocab_size,
             ", ".join(str(path) for path in text_files))
    spm.set_random_generator_seed(settings.seed)
    with open(log_path, "w") as log:
        spm.SentencePieceTrainer.train(
            input=[str(path) for path in text_files], model_prefix=str(prefix),
            vocab_size=settings.vocab_size, model_type=settings.model_type,
            character_coverage=settings.character_coverage,
            input_sentence_size=settings.spm_sentences, shuffle_input_sentence=True,
            # Small corpora cannot fill a large vocabulary; take what they support instead of failing.
            hard_vocab_limit=False,
            num_threads=settings.workers, logstream=log)
    return spm.SentencePieceProcessor(model_file=str(prefix) + ".model")


def encode_lines(processor, lines: list, workers: int, desc: str) -> list:
    pieces, chunk = [], 10000
    with tqdm(total=len(lines), desc=desc, unit="line", mininterval=2) as progress:
        for start in range(0, len(lines), chunk):
            batch = lines[start:start + chunk]
            pieces.extend(" ".join(sentence) for sentence in
                          processor.encode(batch, out_type=str, num_threads=workers))
            progress.update(len(batch))
    return pieces


def run_fairseq_preprocess(pieces_dir: Path, bin_dir: Path, settings: Settings, log_path: Path) -> list:
    command = [sys.executable, "-m", "fairseq_cli.preprocess",
               "--source-lang", settings.src, "--target-lang", settings.tgt,
               *[arg for split in SPLITS for arg in (f"--{split}pref", str(pieces_dir / split))],
               "--destdir", str(bin_dir), "--joined-dictionary", "--workers", str(settings.workers)]
    LOG.info("running %s", " ".join(command))
    with open(log_path, "w") as log:
        finished = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
    if finished.returncode != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        raise DataPrepError(f"fairseq-preprocess failed ({finished.returncode}): {tail[0]} (log: {log_path})")
    return command


def build_dataset(out_dir: Path, corpus_name: str, splits: dict, settings: Settings, inputs: dict,
                  fingerprint: str, notes: Optional[dict] = None) -> Path:
    """Writes the whole output (see the module docstring) into a temporary directory beside
    `out_dir` and renames it into place only when complete; a failure leaves no partial output."""
    for split in SPLITS:
        if len(splits[split]) == 0:
            raise DataPrepError(f"empty corpus: the {split} split has no sentence pairs")
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


# ----------------------------------------------------------------------------------------------
# custom: any parallel corpus given as PREFIX.SRC / PREFIX.TGT text files

def pair_lines(source: list, target: list, source_name, target_name) -> ParallelText:
    if len(source) != len(target):
        raise DataPrepError(f"line counts differ: {source_name} has {len(source)} lines, "
                            f"{target_name} has {len(target)}")
    if not source:
        raise DataPrepError(f"empty corpus: {source_name} and {target_name} have no lines")
    return ParallelText(source, target)


def read_parallel(prefix: str, src: str, tgt: str) -> ParallelText:
    source_path, target_path = Path(f"{prefix}.{src}"), Path(f"{prefix}.{tgt}")
    return pair_lines(read_lines(source_path), read_lines(target_path), source_path, target_path)


def command_custom(args) -> Path:
    settings = settings_from_args(args)
    prefixes = {"train": args.train_prefix, "valid": args.valid_prefix, "test": args.test_prefix}
    inputs = {}
    for split, prefix in prefixes.items():
        for lang in (settings.src, settings.tgt):
            path = Path(f"{prefix}.{lang}")
            if not path.is_file():
                raise DataPrepError(f"missing input file: {path}")
            inputs[f"{split}.{lang}"] = {"path": str(path.resolve()), "bytes": path.stat().st_size,
                                         "sha256": file_sha256(path)}
    fingerprint = make_fingerprint("custom", settings, inputs)
    if not args.force and up_to_date(args.out_dir, fingerprint):
        LOG.info("%s is up to date with these inputs and settings; nothing to do (--force rebuilds)", args.out_dir)
        return args.out_dir
    check_out_dir(args.out_dir)
    splits = {}
    for split, prefix in prefixes.items():
        splits[split] = add_model_text(read_parallel(prefix, settings.src, settings.tgt), settings,
                                       text_steps(settings), split)
    return build_dataset(args.out_dir, "custom", splits, settings, inputs, fingerprint)


# ----------------------------------------------------------------------------------------------
# Archives: downloaded once into --raw-dir, verified, read member by member without extracting

@dataclass
class Archive:
    key: str        # names the --KEY-url flag
    url: str
    members: tuple  # paths inside the archive that the recipe reads
    also_named: tuple = ()  # other file names of the same archive (another mirror's), accepted in --raw-dir

    def local_name(self, url=None) -> str:
        return Path(urllib.parse.urlparse(url or self.url).path).name


def _open_archive(path: Path):
    if path.name.endswith(".zip"):
        import zipfile
        return zipfile.ZipFile(path)
    return tarfile.open(path, "r:*")


def archive_members(path: Path) -> set:
    with _open_archive(path) as archive:
        names = archive.namelist() if hasattr(archive, "namelist") else archive.getnames()
    return {name.removeprefix("./") for name in names}


def verify_archive(path: Path, members) -> Optional[str]:
    """None when `path` opens and holds every member, else why not."""
    try:
        present = archive_members(path)
    except Exception as error:  # any damage: truncated gzip, not a tar, ...
        return f"cannot be opened ({type(error).__name__}: {error})"
    missing = [member for member in members if member not in present]
    return f"lacks {', '.join(missing)}" if missing else None


def download(url: str, destination: Path) -> None:
    partial = destination.with_name(destination.name + ".part")
    LOG.info("downloading %s to %s", url, destination)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=destination.name) as progress:
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
                    progress.update(len(block))
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise DataPrepError(f"download of {url} failed ({error}); put {destination.name} into "
                            f"{destination.parent} yourself and run again") from None
    partial.rename(destination)


def ensure_archive(raw_dir: Path, archive: Archive, url: str, offline: bool) -> Path:
    """The archive in raw_dir, downloaded first unless present; verified either way."""
    path = raw_dir / archive.local_name(url)
    present = [candidate for candidate in (path, *(raw_dir / name for name in archive.also_named))
               if candidate.is_file()]
    if present:
        path = present[0]
        LOG.info("using %s (already present; download skipped)", path)
    elif offline:
        raise DataPrepError(f"missing archive: {path} (--offline; download it from {url})")
    else:
        raw_dir.mkdir(parents=True, exist_ok=True)
        download(url, path)
    problem = verify_archive(path, archive.members)
    if problem:
        raise DataPrepError(f"archive {path} {problem}; delete it to download it again, or replace it")
    return path


def read_archive_members(path: Path, members) -> dict:
    """{member: lines} for the wanted members, in one pass over the archive."""
    wanted, found = set(members), {}
    with _open_archive(path) as archive:
        if hasattr(archive, "namelist"):
            entries = ((name, lambda name=name: archive.read(name)) for name in archive.namelist())
        else:
            entries = ((info.name, lambda info=info: archive.extractfile(info).read())
                       for info in archive if info.isfile())
        for name, read in entries:
            name = name.removeprefix("./")
            if name in wanted:
                LOG.info("reading %s:%s", path.name, name)
                found[name] = decode_lines(read(), f"{path}:{name}")
                if len(found) == len(wanted):
                    break
    return found


def fetch_archives(args, archives) -> tuple:
    """({key: path}, inputs for prepare.json) for the corpus' archives, downloading what is missing."""
    paths, inputs = {}, {}
    for archive in archives:
        url = getattr(args, f"{archive.key.replace('-', '_')}_url")
        path = ensure_archive(args.raw_dir, archive, url, args.offline)
        paths[archive.key] = path
        inputs[archive.key] = {"path": str(path.resolve()), "url": url, "bytes": path.stat().st_size,
                               "sha256": file_sha256(path)}
    return paths, inputs


# ----------------------------------------------------------------------------------------------
# IWSLT TED talks (de-en.tgz of IWSLT14, fr-en.zip/.tgz of IWSLT17): train.tags.* and *.xml files

_SEG = re.compile(r'<seg id="[0-9]*">\s*(.*?)\s*</seg>')


def iwslt_train_lines(lines, drop_containing) -> list:
    """The talks' text in a train.tags file: metadata lines dropped, <title>/<description> tags
    stripped (their text is kept as a sentence, as in fairseq's recipes)."""
    kept = []
    for line in lines:
        if any(marker in line for marker in drop_containing):
            continue
        for tag in ("title", "description"):
            line = line.replace(f"<{tag}>", "").replace(f"</{tag}>", "")
        kept.append(line.strip())
    return kept


def iwslt_xml_lines(lines) -> list:
    """The <seg id="N"> contents of an IWSLT dev/test .xml file, in file order."""
    return [_SEG.sub(r"\1", line).strip() for line in lines if "<seg id" in line]


def iwslt_sets(texts, folder, prefix, sets, src, tgt, pair):
    """ParallelText per named dev/test set (e.g. TED.tst2010) and its line count, in the given order."""
    parts, counts = [], []
    for name in sets:
        source_member = f"{folder}/{prefix}.{name}.{pair}.{src}.xml"
        target_member = f"{folder}/{prefix}.{name}.{pair}.{tgt}.xml"
        part = pair_lines(iwslt_xml_lines(texts[source_member]), iwslt_xml_lines(texts[target_member]),
                          source_member, target_member)
        parts.append(part)
        counts.append({"name": f"{prefix}.{name}", "lines": len(part)})
    return parts, counts


def iwslt_members(pair, prefix, sets):
    folder = pair
    languages = pair.split("-")
    return tuple([f"{folder}/train.tags.{pair}.{lang}" for lang in languages]
                 + [f"{folder}/{prefix}.{name}.{pair}.{lang}.xml" for name in sets for lang in languages])


def check_direction(settings, pair):
    if sorted((settings.src, settings.tgt)) != sorted(pair.split("-")):
        raise DataPrepError(f"--src-lang/--tgt-lang must be the two languages of {pair} "
                            f"(got {settings.src}, {settings.tgt})")


def prepare_iwslt(args, *, corpus_name, pair, prefix, archive_key, default_url, drop_containing, valid_every, valid_sets,
                  test_sets, apostrophe_in_tests, also_named=()) -> Path:
    settings = settings_from_args(args, cleaning=cleaning_from_args(args), valid_sets=valid_sets,
                                  test_sets=test_sets)
    check_direction(settings, pair)
    archive = Archive(archive_key, default_url, iwslt_members(pair, prefix, [*valid_sets, *test_sets]), also_named)
    paths, inputs = fetch_archives(args, [archive])
    fingerprint = make_fingerprint(corpus_name, settings, inputs)
    if not args.force and up_to_date(args.out_dir, fingerprint):
        LOG.info("%s is up to date with these inputs and settings; nothing to do (--force rebuilds)", args.out_dir)
        return args.out_dir
    check_out_dir(args.out_dir)
    texts = read_archive_members(paths[archive_key], archive.members)
    src, tgt = settings.src, settings.tgt
    train_src, train_tgt = (f"{pair}/train.tags.{pair}.{lang}" for lang in (src, tgt))
    train = pair_lines(iwslt_train_lines(texts[train_src], drop_containing),
                       iwslt_train_lines(texts[train_tgt], drop_containing),
                       f"{paths[archive_key]}:{train_src}", f"{paths[archive_key]}:{train_tgt}")
    train_steps = text_steps(settings)
    test_steps = text_steps(settings, *(["apostrophe"] if apostrophe_in_tests else []))
    train = add_model_text(train, settings, train_steps, "train")
    train = clean_by_length(train, *settings.extra["cleaning"])
    if valid_every:
        train, valid = every_nth(train, valid_every)
        valid_counts = [{"name": f"every {valid_every}th cleaned training pair", "lines": len(valid)}]
    else:
        valid_parts, valid_counts = iwslt_sets(texts, pair, prefix, valid_sets, src, tgt, pair)
        valid = add_model_text(ParallelText.concatenate(valid_parts), settings, test_steps, "valid")
    test_parts, test_counts = iwslt_sets(texts, pair, prefix, test_sets, src, tgt, pair)
    test = add_model_text(ParallelText.concatenate(test_parts), settings, test_steps, "test")
    notes = {"splits": {"valid": valid_counts, "test": test_counts},
             "text_steps": {"train": list(train_steps), "valid": list(train_steps if valid_every else test_steps),
                            "test": list(test_steps)}}
    return build_dataset(args.out_dir, corpus_name, {"train": train, "valid": valid, "test": test},
                         settings, inputs, fingerprint, notes)


IWSLT14_URL = "http://dl.fbaipublicfiles.com/fairseq/data/iwslt14/de-en.tgz"
# WIT3's own archive (wit3.fbk.eu/archive/2017-01-trnted/texts/fr/en/fr-en.tgz) answers 404 since 2021
# (fairseq issue #3623); the Hugging Face IWSLT/iwslt2017 dataset keeps the release, same files, as a zip.
IWSLT17_URL = "https://huggingface.co/datasets/IWSLT/iwslt2017/resolve/main/data/2017-01-trnted/texts/fr/en/fr-en.zip"
IWSLT17_OTHER_NAMES = ("fr-en.tgz",)  # WIT3's name, for users who have that copy
IWSLT14_TESTS = ("TED.dev2010", "TEDX.dev2012", "TED.tst2010", "TED.tst2011", "TED.tst2012")
IWSLT17_VALID = ("TED.dev2010",)
IWSLT17_TESTS = ("TED.tst2010", "TED.tst2011", "TED.tst2012", "TED.tst2013", "TED.tst2014", "TED.tst2015")


def command_iwslt14(args) -> Path:
    # fairseq's prepare-iwslt14.sh: valid is every 23rd cleaned training pair, test is five TED sets.
    return prepare_iwslt(args, corpus_name="iwslt14-de-en", pair="de-en", prefix="IWSLT14", archive_key="iwslt14",
                         default_url=IWSLT14_URL,
                         drop_containing=("<url>", "<talkid>", "<keywords>"), valid_every=23, valid_sets=(),
                         test_sets=IWSLT14_TESTS, apostrophe_in_tests=True)


def command_iwslt17(args) -> Path:
    # Metadata lines as in fairseq's prepare-iwslt17-multilingual.sh (the 2017 release has more kinds).
    return prepare_iwslt(args, corpus_name="iwslt17-fr-en", pair="fr-en", prefix="IWSLT17", archive_key="iwslt17",
                         default_url=IWSLT17_URL,
                         drop_containing=("<url>", "<talkid>", "<keywords>", "<speaker>", "<reviewer",
                                          "<translator", "<doc", "</doc>"),
                         valid_every=0, valid_sets=tuple(args.valid_sets), test_sets=tuple(args.test_sets),
                         apostrophe_in_tests=False, also_named=IWSLT17_OTHER_NAMES)


# ----------------------------------------------------------------------------------------------
# WMT14 English-German: the archives and members of fairseq's prepare-wmt14en2de.sh

WMT14_ARCHIVES = (
    Archive("europarl", "http://statmt.org/wmt13/training-parallel-europarl-v7.tgz",
            ("training/europarl-v7.de-en.de", "training/europarl-v7.de-en.en")),
    Archive("commoncrawl", "http://statmt.org/wmt13/training-parallel-commoncrawl.tgz",
            ("commoncrawl.de-en.de", "commoncrawl.de-en.en")),
    Archive("news-commentary", "http://data.statmt.org/wmt17/translation-task/training-parallel-nc-v12.tgz",
            ("training/news-commentary-v12.de-en.de", "training/news-commentary-v12.de-en.en")),
    Archive("dev", "http://data.statmt.org/wmt17/translation-task/dev.tgz",
            ("dev/newstest2013.de", "dev/newstest2013.en")),
    Archive("test", "http://statmt.org/wmt14/test-full.tgz",
            ("test-full/newstest2014-deen-src.de.sgm", "test-full/newstest2014-deen-ref.de.sgm",
             "test-full/newstest2014-deen-src.en.sgm", "test-full/newstest2014-deen-ref.en.sgm")),
)


def command_wmt14(args) -> Path:
    settings = settings_from_args(args, cleaning=cleaning_from_args(args))
    check_direction(settings, "en-de")
    src, tgt = settings.src, settings.tgt
    paths, inputs = fetch_archives(args, WMT14_ARCHIVES)
    fingerprint = make_fingerprint("wmt14-en-de", settings, inputs)
    if not args.force and up_to_date(args.out_dir, fingerprint):
        LOG.info("%s is up to date with these inputs and settings; nothing to do (--force rebuilds)", args.out_dir)
        return args.out_dir
    check_out_dir(args.out_dir)

    def read_pair(archive, source_member, target_member):
        texts = read_archive_members(paths[archive.key], (source_member, target_member))
        return pair_lines(texts[source_member], texts[target_member], f"{paths[archive.key]}:{source_member}",
                          f"{paths[archive.key]}:{target_member}")

    europarl, commoncrawl, news_commentary, dev, test_archive = WMT14_ARCHIVES
    train_parts, train_counts = [], []
    for archive in (europarl, commoncrawl, news_commentary):
        stem = archive.members[0].rsplit(".", 1)[0]
        part = read_pair(archive, f"{stem}.{src}", f"{stem}.{tgt}")
        train_parts.append(part)
        train_counts.append({"name": stem, "lines": len(part)})
    # SentencePiece reads raw text, so only Moses' normalisation is applied (tokenising only with --moses).
    steps = text_steps(settings, "normalize-punctuation", "remove-non-printing")
    test_steps = text_steps(settings, "apostrophe", "normalize-punctuation", "remove-non-printing")
    train = add_model_text(ParallelText.concatenate(train_parts), settings, steps, "train")
    train = clean_by_length(train, *settings.extra["cleaning"])
    valid = add_model_text(read_pair(dev, f"dev/newstest2013.{src}", f"dev/newstest2013.{tgt}"),
                           settings, steps, "valid")
    source_member, target_member = (f"test-full/newstest2014-deen-{kind}.{lang}.sgm"
                                    for kind, lang in (("src", src), ("ref", tgt)))
    test_texts = read_archive_members(paths[test_archive.key], (source_member, target_member))
    test = pair_lines(iwslt_xml_lines(test_texts[source_member]), iwslt_xml_lines(test_texts[target_member]),
                      f"{paths[test_archive.key]}:{source_member}", f"{paths[test_archive.key]}:{target_member}")
    test = add_model_text(test, settings, test_steps, "test")
    notes = {"splits": {"train": train_counts, "valid": [{"name": "newstest2013", "lines": len(valid)}],
                        "test": [{"name": "newstest2014 (full)", "lines": len(test)}]},
             "text_steps": {"train": list(steps), "valid": list(steps), "test": list(test_steps)}}
    return build_dataset(args.out_dir, "wmt14-en-de", {"train": train, "valid": valid, "test": test},
                         settings, inputs, fingerprint, notes)


# ----------------------------------------------------------------------------------------------
# Command line

def settings_from_args(args, **extra) -> Settings:
    settings = Settings(src=args.src_lang, tgt=args.tgt_lang, vocab_size=args.vocab_size,
                        model_type=args.model_type, lowercase=args.lowercase, moses=args.moses,
                        workers=args.workers, character_coverage=args.character_coverage,
                        spm_sentences=args.spm_sentences, seed=args.seed, extra=extra)
    settings.validate()
    return settings


def cleaning_from_args(args) -> tuple:
    if not 1 <= args.min_tokens <= args.max_tokens:
        raise DataPrepError(f"need 1 <= --min-tokens <= --max-tokens (got {args.min_tokens}, {args.max_tokens})")
    if args.max_ratio < 1:
        raise DataPrepError(f"--max-ratio must be at least 1 (got {args.max_ratio})")
    return (args.min_tokens, args.max_tokens, args.max_ratio)


def add_corpus_arguments(parser, archives, *, min_tokens, max_tokens, max_ratio):
    parser.add_argument("--raw-dir", type=Path, default=Path("data/downloads"),
                        help="where the downloaded archives are kept; put archives you already have here to "
                             "run offline (default data/downloads)")
    parser.add_argument("--offline", action="store_true",
                        help="never download: fail naming the archive when it is not in --raw-dir")
    for archive in archives:
        parser.add_argument(f"--{archive.key}-url", default=archive.url,
                            help=f"download URL; the archive is --raw-dir/<its file name> (default {archive.url})")
    parser.add_argument("--min-tokens", type=int, default=min_tokens,
                        help=f"training-pair cleaning: fewest tokens per side (default {min_tokens})")
    parser.add_argument("--max-tokens", type=int, default=max_tokens,
                        help=f"training-pair cleaning: most tokens per side (default {max_tokens})")
    parser.add_argument("--max-ratio", type=float, default=max_ratio,
                        help=f"training-pair cleaning: longest/shortest side token ratio (default {max_ratio})")


def add_common_arguments(parser, *, src, tgt, vocab_size, lowercase=False, moses=False, out_dir=None):
    parser.add_argument("--src-lang", default=src, required=src is None, help="source language suffix"
                        + (f" (default {src})" if src else ""))
    parser.add_argument("--tgt-lang", default=tgt, required=tgt is None, help="target language suffix"
                        + (f" (default {tgt})" if tgt else ""))
    parser.add_argument("--out-dir", type=Path, default=out_dir, required=out_dir is None,
                        help="output directory" + (f" (default {out_dir})" if out_dir else ""))
    parser.add_argument("--vocab-size", type=int, default=vocab_size,
                        help=f"joint SentencePiece vocabulary size (default {vocab_size}; "
                             "smaller corpora get the largest size they support)")
    parser.add_argument("--model-type", choices=("bpe", "unigram"), default="bpe",
                        help="SentencePiece model type (default bpe)")
    parser.add_argument("--lowercase", action=argparse.BooleanOptionalAction, default=lowercase,
                        help=f"lower-case before SentencePiece (default {'on' if lowercase else 'off'})")
    parser.add_argument("--moses", action=argparse.BooleanOptionalAction, default=moses,
                        help="Moses-tokenise (sacremoses) before SentencePiece "
                             f"(default {'on' if moses else 'off'})")
    parser.add_argument("--workers", type=int, default=max(1, min(8, os.cpu_count() or 1)),
                        help="processes/threads for tokenising, SentencePiece and fairseq-preprocess "
                             "(default: CPU count, at most 8)")
    parser.add_argument("--character-coverage", type=float, default=1.0,
                        help="SentencePiece character coverage (default 1.0; ~0.9995 for CJK)")
    parser.add_argument("--spm-sentences", type=int, default=2_000_000,
                        help="at most this many sentences (sampled) train SentencePiece (default 2000000)")
    parser.add_argument("--seed", type=int, default=1, help="SentencePiece sampling seed (default 1)")
    parser.add_argument("--force", action="store_true",
                        help="rebuild even when --out-dir was already built from the same inputs and settings")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data_prep.prepare", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # The shell entry points set this so that usage text names the script the user ran.
    script = os.environ.get("DATA_PREP_SCRIPT")

    def add_command(name, **kwargs):
        return commands.add_parser(name, **({"prog": script} if script else {}), **kwargs)

    custom = add_command(
        "custom", help="any parallel corpus given as PREFIX.SRC / PREFIX.TGT text files",
        description="Prepares a parallel corpus from raw text files PREFIX.SRC / PREFIX.TGT (one sentence "
                    "per line) for train, valid and test. Writes OUT/spm.model, OUT/spm.vocab, "
                    "OUT/raw/ (the text as given: sacreBLEU references), OUT/tok/ (with --moses/--lowercase), "
                    "OUT/spm/ (SentencePiece pieces), OUT/bin/ (fairseq-preprocess, joined dictionary) "
                    "and OUT/prepare.json.")
    custom.add_argument("--train-prefix", required=True, help="training text is PREFIX.SRC and PREFIX.TGT")
    custom.add_argument("--valid-prefix", required=True, help="validation text prefix")
    custom.add_argument("--test-prefix", required=True, help="test text prefix")
    add_common_arguments(custom, src=None, tgt=None, vocab_size=8000)
    custom.set_defaults(handler=command_custom)

    iwslt14 = add_command(
        "iwslt14-de-en", help="IWSLT14 German-English TED talks (fairseq's recipe, SentencePiece)",
        description="IWSLT14 de-en as in fairseq's prepare-iwslt14.sh: XML stripped, Moses-tokenised, "
                    "lower-cased, training pairs cleaned (1..175 tokens, ratio 1.5), valid = every 23rd "
                    "cleaned training pair, test = TED.dev2010 + TEDX.dev2012 + TED.tst2010-2012; then a joint "
                    "SentencePiece model and fairseq-preprocess --joined-dictionary.")
    add_common_arguments(iwslt14, src="de", tgt="en", vocab_size=10000, lowercase=True, moses=True,
                         out_dir=Path("data/iwslt14.de-en"))
    add_corpus_arguments(iwslt14, [Archive("iwslt14", IWSLT14_URL, ())], min_tokens=1, max_tokens=175,
                         max_ratio=1.5)
    iwslt14.set_defaults(handler=command_iwslt14)

    iwslt17 = add_command(
        "iwslt17-fr-en", help="IWSLT17 French-English TED talks (cased, SentencePiece 16k)",
        description="IWSLT17 fr-en: XML stripped, cased raw text (no Moses unless --moses), training pairs "
                    "with 1..250 words kept, valid = TED.dev2010, test = TED.tst2010-2015 concatenated in "
                    "order (prepare.json lists each set's line count); joint SentencePiece, fairseq-preprocess.")
    add_common_arguments(iwslt17, src="fr", tgt="en", vocab_size=16000, out_dir=Path("data/iwslt17.fr-en"))
    add_corpus_arguments(iwslt17, [Archive("iwslt17", IWSLT17_URL, ())], min_tokens=1, max_tokens=250,
                         max_ratio=9.0)
    iwslt17.add_argument("--valid-sets", nargs="+", default=list(IWSLT17_VALID),
                         help=f"dev/test sets (IWSLT17.<SET>.fr-en.*.xml) forming valid (default {' '.join(IWSLT17_VALID)})")
    iwslt17.add_argument("--test-sets", nargs="+", default=list(IWSLT17_TESTS),
                         help=f"sets forming test, concatenated in this order (default {' '.join(IWSLT17_TESTS)})")
    iwslt17.set_defaults(handler=command_iwslt17)

    wmt14 = add_command(
        "wmt14-en-de", help="WMT14 English-German (europarl v7, commoncrawl, news-commentary v12; SentencePiece 32k)",
        description="WMT14 en-de with the archives of fairseq's prepare-wmt14en2de.sh: train = europarl v7 + "
                    "commoncrawl + news-commentary v12 (Moses punctuation normalisation, non-printing characters "
                    "removed, pairs cleaned to 1..250 words, ratio 1.5), valid = newstest2013, test = "
                    "newstest2014 (full, from the sgm files); joint SentencePiece on cased raw text.")
    add_common_arguments(wmt14, src="en", tgt="de", vocab_size=32000, out_dir=Path("data/wmt14.en-de"))
    add_corpus_arguments(wmt14, WMT14_ARCHIVES, min_tokens=1, max_tokens=250, max_ratio=1.5)
    wmt14.set_defaults(handler=command_wmt14)
    return parser


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    args = build_parser().parse_args(argv)
    try:
        out_dir = args.handler(args)
    except DataPrepError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
