"""The parallel-text type and what happens to text before SentencePiece: the named text steps
(Moses normalisation and tokenisation, lower-casing, ...) in a worker pool for large inputs, and the
pair filters of fairseq's recipes (Moses' clean-corpus-n, every n-th pair held out)."""
import logging
import multiprocessing
import re
from dataclasses import dataclass
from typing import Optional

from tqdm import tqdm

from data_prep.processes import die_with_parent
from data_prep.textfiles import DataPrepError

LOG = logging.getLogger("data_prep")
# Below this many lines a worker pool costs more than it saves.
MIN_LINES_FOR_POOL = 20000


@dataclass
class ParallelText:
    """Aligned sentence pairs. `raw_*` is the untokenised text (the sacreBLEU references);
    `text_*` is what SentencePiece sees (tokenised and/or lower-cased), None when it equals raw."""
    raw_src: list
    raw_tgt: list
    text_src: Optional[list] = None
    text_tgt: Optional[list] = None
    names: tuple = ("source", "target")  # where each side came from, for messages

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
        return ParallelText(pick(self.raw_src), pick(self.raw_tgt), pick(self.text_src), pick(self.text_tgt),
                            self.names)

    @staticmethod
    def concatenate(parts) -> "ParallelText":
        parts = list(parts)
        pretokenised = any(part.text_src is not None for part in parts)

        def join(attribute):
            return [line for part in parts for line in getattr(part, attribute)]
        return ParallelText(join("raw_src"), join("raw_tgt"),
                            join("model_src") if pretokenised else None,
                            join("model_tgt") if pretokenised else None,
                            tuple(" + ".join(part.names[side] for part in parts) for side in (0, 1)))


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
    die_with_parent()  # a killed data prep must not leave its pool behind
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


def pair_lines(source: list, target: list, source_name, target_name) -> ParallelText:
    if len(source) != len(target):
        raise DataPrepError(f"line counts differ: {source_name} has {len(source)} lines, "
                            f"{target_name} has {len(target)}")
    if not source:
        raise DataPrepError(f"empty corpus: {source_name} and {target_name} have no lines")
    return ParallelText(source, target, names=(str(source_name), str(target_name)))

