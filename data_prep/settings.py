"""The settings of one build. The field defaults below are the only copy of the defaults: the command
line takes its defaults (and the numbers in its help) from them, and a recipe overrides some of them
in its own DEFAULTS."""
import dataclasses
import os
import re
from dataclasses import dataclass, field

from data_prep.textfiles import DataPrepError


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


@dataclass
class Settings:
    src: str
    tgt: str
    vocab_size: int = 8000
    model_type: str = "bpe"
    lowercase: bool = False
    moses: bool = False
    workers: int = field(default_factory=default_workers)
    character_coverage: float = 1.0
    spm_sentences: int = 2_000_000
    seed: int = 1
    # fairseq's transformer default (max_source_positions / max_target_positions): a sentence must
    # fit with its end-of-sentence token.
    max_positions: int = 1024
    extra: dict = field(default_factory=dict)  # recipe-specific settings (cleaning, test sets, ...)

    def validate(self) -> "Settings":
        if not re.fullmatch(r"[A-Za-z0-9_-]+", self.src) or not re.fullmatch(r"[A-Za-z0-9_-]+", self.tgt):
            raise DataPrepError("--src-lang/--tgt-lang must be file suffixes like 'de' "
                                f"(got {self.src!r}, {self.tgt!r})")
        if self.src == self.tgt:
            raise DataPrepError(f"--src-lang and --tgt-lang must differ (both are {self.src!r})")
        if not 8 <= self.vocab_size <= MAX_VOCAB_SIZE:
            raise DataPrepError(f"--vocab-size must be between 8 and {MAX_VOCAB_SIZE} (got {self.vocab_size})")
        if self.model_type not in MODEL_TYPES:
            raise DataPrepError(f"--model-type must be bpe or unigram (got {self.model_type!r})")
        if not 1 <= self.workers <= MAX_WORKERS:
            raise DataPrepError(f"--workers must be between 1 and {MAX_WORKERS} (got {self.workers})")
        if not 0.9 <= self.character_coverage <= 1.0:
            raise DataPrepError(f"--character-coverage must be in [0.9, 1] (got {self.character_coverage})")
        if self.spm_sentences <= 100:  # SentencePiece refuses a sample of 100 sentences or fewer
            raise DataPrepError(f"--spm-sentences must be more than 100 (got {self.spm_sentences})")
        if not 0 <= self.seed < 2 ** 32:
            raise DataPrepError(f"--seed must be between 0 and {2 ** 32 - 1} (got {self.seed})")
        if self.max_positions < 2:
            raise DataPrepError(f"--max-positions must be at least 2 (got {self.max_positions})")
        return self

    def as_dict(self):
        return {key: value for key, value in self.__dict__.items() if key != "extra"} | self.extra

    @classmethod
    def from_args(cls, args, **extra) -> "Settings":
        """From parsed arguments whose destinations are the field names (see cli.add_settings_arguments)."""
        values = {item.name: getattr(args, item.name) for item in dataclasses.fields(cls) if item.name != "extra"}
        return cls(**values, extra=extra).validate()


MODEL_TYPES = ("bpe", "unigram")
# SentencePiece allocates for the vocabulary asked for (10^9 pieces take seconds even on a tiny text);
# NMT vocabularies stay far below this.
MAX_VOCAB_SIZE = 1_000_000
# Processes for tokenising and threads for SentencePiece and fairseq-preprocess.
MAX_WORKERS = 1024


def default(name: str, overrides: dict):
    """The default of Settings field `name`, unless a recipe's `overrides` set it."""
    if name in overrides:
        return overrides[name]
    item = next(item for item in dataclasses.fields(Settings) if item.name == name)
    return item.default_factory() if item.default_factory is not dataclasses.MISSING else item.default


@dataclass(frozen=True)
class Cleaning:
    """Moses' clean-corpus-n.perl limits for training pairs."""
    min_tokens: int = 1
    max_tokens: int = 250
    max_ratio: float = 1.5

    def validate(self) -> "Cleaning":
        if not 1 <= self.min_tokens <= self.max_tokens:
            raise DataPrepError(f"need 1 <= --min-tokens <= --max-tokens (got {self.min_tokens}, {self.max_tokens})")
        if self.max_ratio < 1:
            raise DataPrepError(f"--max-ratio must be at least 1 (got {self.max_ratio})")
        return self

    def as_tuple(self) -> tuple:
        return (self.min_tokens, self.max_tokens, self.max_ratio)
