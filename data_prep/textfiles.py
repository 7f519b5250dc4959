"""Reading and writing the corpora's text files, and file digests. Every line data_prep reads goes
through `decode_lines`, so text is split into lines one way: at "\\n" only (a "\\r" right before it is
part of a Windows line end)."""
import contextlib
import hashlib
import logging
import re
import unicodedata
from pathlib import Path

LOG = logging.getLogger("data_prep")


class DataPrepError(Exception):
    """A problem with the user's input or settings; reported as one line without a traceback."""


# Characters that str.splitlines(), text-mode file reading and so the scoring tools take as line breaks,
# and NUL, which C tools take as the end of a string. Inside a line they would shift every later line
# of one side against the other only after the whole test set has been translated.
LINE_BREAKING = "\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029\x00"
_LINE_BREAKING_TABLE = {ord(char): " " for char in LINE_BREAKING}
# Any of them except the "\r" of a "\r\n" line end: one search over the whole text finds clean input fast.
_LINE_BREAKING_INSIDE = re.compile("[" + LINE_BREAKING.replace("\r", "") + "]|\r(?!\n|$)")


def character_name(char: str) -> str:
    return f"U+{ord(char):04X} ({unicodedata.name(char, 'control character')})"


def decode_lines(data: bytes, name: str, replace_line_breaking: bool = False) -> list:
    """The lines of UTF-8 `data`, without their end-of-line; `name` identifies it in errors.
    A LINE_BREAKING character inside a line is an error naming the line, or, with
    `replace_line_breaking` (for archives, which the user cannot edit), replaced by a space."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line_number = data.count(b"\n", 0, error.start) + 1
        raise DataPrepError(f"{name}: line {line_number}: invalid UTF-8 ({error.reason})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    # Files written on Windows: the carriage return is not part of the sentence.
    lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    if _LINE_BREAKING_INSIDE.search(text) is None:
        return lines
    replaced = []
    for number, line in enumerate(lines, 1):
        cleaned = line.translate(_LINE_BREAKING_TABLE)
        if cleaned == line:
            continue
        if not replace_line_breaking:
            char = next(char for char in line if char in LINE_BREAKING)
            raise DataPrepError(f"{name}: line {number}: contains {character_name(char)}, which other tools "
                                "read as a line break; remove or replace it (e.g. with a space)")
        lines[number - 1] = cleaned
        replaced.append(number)
    if replaced:
        LOG.warning("%s: line-breaking characters replaced by spaces on %d lines (first: line %d)",
                    name, len(replaced), replaced[0])
    return lines


def require_file(path: Path) -> None:
    """Refuses, in one line, an input that is missing or not a regular file (reading a FIFO would wait
    for a writer forever)."""
    if path.is_file():
        return
    if path.is_dir():
        raise DataPrepError(f"input {path} is a directory, not a text file")
    if path.exists():
        raise DataPrepError(f"input {path} is not a regular file (a FIFO, socket or device); give a text file")
    raise DataPrepError(f"missing input file: {path}")


def read_lines(path: Path) -> list:
    require_file(path)
    return decode_lines(path.read_bytes(), str(path))


@contextlib.contextmanager
def naming(path):
    """An OSError of a write to an open file (disk full, file too large) names no file: this one names `path`."""
    try:
        yield
    except OSError as error:
        if error.filename is None:
            raise OSError(error.errno, error.strerror, str(path)) from None
        raise


def write_lines(path: Path, lines) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with naming(path), open(path, "w", encoding="utf-8", newline="\n") as handle:
        for line in lines:
            handle.write(line)
            handle.write("\n")


def write_bytes(path: Path, data: bytes) -> None:
    with naming(path), open(path, "wb") as handle:
        handle.write(data)


def file_digests(path: Path, algorithms=("sha256",)) -> dict:
    """{algorithm: hex digest} of the file, all in one pass over it."""
    digests = {algorithm: hashlib.new(algorithm) for algorithm in algorithms}
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            for digest in digests.values():
                digest.update(block)
    return {algorithm: digest.hexdigest() for algorithm, digest in digests.items()}
