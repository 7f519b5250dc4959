"""custom: any parallel corpus given as PREFIX.SRC / PREFIX.TGT text files, one sentence per line."""
from pathlib import Path

from data_prep.build import build_dataset, fingerprint_to_build
from data_prep.settings import Settings
from data_prep.text import add_model_text, pair_lines, text_steps
from data_prep.textfiles import file_digests, read_lines, require_file

NAME = "custom"
HELP = "any parallel corpus given as PREFIX.SRC / PREFIX.TGT text files"
DESCRIPTION = ("Prepares a parallel corpus from raw text files PREFIX.SRC / PREFIX.TGT (one sentence per line) "
               "for train, valid and test. Writes OUT/spm.model, OUT/spm.vocab, OUT/raw/ (the text as given: "
               "sacreBLEU references), OUT/tok/ (with --moses/--lowercase), OUT/spm/ (SentencePiece pieces), "
               "OUT/bin/ (fairseq-preprocess, joined dictionary) and OUT/prepare.json.")
DEFAULTS = {"src": None, "tgt": None}  # no default languages: both flags are required
OUT_DIR = None                         # required
CLEANING = None                        # the text is taken as given
ARCHIVES = ()


def add_arguments(parser) -> None:
    parser.add_argument("--train-prefix", required=True, help="training text is PREFIX.SRC and PREFIX.TGT")
    parser.add_argument("--valid-prefix", required=True, help="validation text prefix")
    parser.add_argument("--test-prefix", required=True, help="test text prefix")


def run(args) -> Path:
    settings = Settings.from_args(args)
    prefixes = {"train": args.train_prefix, "valid": args.valid_prefix, "test": args.test_prefix}
    inputs = {}
    for split, prefix in prefixes.items():
        for lang in (settings.src, settings.tgt):
            path = Path(f"{prefix}.{lang}")
            require_file(path)
            inputs[f"{split}.{lang}"] = {"path": str(path.resolve()), "bytes": path.stat().st_size,
                                         **file_digests(path)}
    fingerprint = fingerprint_to_build(args.out_dir, NAME, settings, inputs, args.force)
    if fingerprint is None:
        return args.out_dir
    splits = {}
    for split, prefix in prefixes.items():
        source, target = Path(f"{prefix}.{settings.src}"), Path(f"{prefix}.{settings.tgt}")
        corpus = pair_lines(read_lines(source), read_lines(target), source, target)
        splits[split] = add_model_text(corpus, settings, text_steps(settings), split)
    return build_dataset(args.out_dir, NAME, splits, settings, inputs, fingerprint)
