"""Corpus preparation for the NMT experiments: one joint SentencePiece model, SentencePiece-encoded
text, fairseq-preprocess binaries with a joined dictionary, and the untokenised references for
detokenised sacreBLEU. Every corpus goes through the same build; the shell scripts in data_prep/ are
thin entry points to the subcommands below (`python -m data_prep -h`)."""
import argparse
import logging
import os
import signal
import sys
from pathlib import Path

from data_prep.build import claim_out_dir, real_out_dir
from data_prep.recipes import RECIPES
from data_prep.settings import MODEL_TYPES, Cleaning, default
from data_prep.textfiles import DataPrepError


def add_settings_arguments(parser, overrides: dict, out_dir) -> None:
    """The options every corpus has; defaults from settings.Settings unless the recipe overrides them."""
    def value(name):
        return default(name, overrides)

    def on_off(name):
        return "on" if value(name) else "off"
    for flag, name, what in (("--src-lang", "src", "source language suffix"),
                             ("--tgt-lang", "tgt", "target language suffix")):
        parser.add_argument(flag, dest=name, default=value(name), required=value(name) is None,
                            help=what + (f" (default {value(name)})" if value(name) else ""))
    parser.add_argument("--out-dir", type=Path, default=out_dir, required=out_dir is None,
                        help="output directory" + (f" (default {out_dir})" if out_dir else ""))
    parser.add_argument("--vocab-size", type=int, default=value("vocab_size"),
                        help=f"joint SentencePiece vocabulary size (default {value('vocab_size')}; "
                             "smaller corpora get the largest size they support)")
    parser.add_argument("--model-type", choices=MODEL_TYPES, default=value("model_type"),
                        help=f"SentencePiece model type (default {value('model_type')})")
    parser.add_argument("--lowercase", action=argparse.BooleanOptionalAction, default=value("lowercase"),
                        help=f"lower-case before SentencePiece (default {on_off('lowercase')})")
    parser.add_argument("--moses", action=argparse.BooleanOptionalAction, default=value("moses"),
                        help=f"Moses-tokenise (sacremoses) before SentencePiece (default {on_off('moses')})")
    parser.add_argument("--workers", type=int, default=value("workers"),
                        help="processes/threads for tokenising, SentencePiece and fairseq-preprocess "
                             "(default: CPU count, at most 8)")
    parser.add_argument("--character-coverage", type=float, default=value("character_coverage"),
                        help=f"SentencePiece character coverage (default {value('character_coverage')}; "
                             "~0.9995 for CJK)")
    parser.add_argument("--spm-sentences", type=int, default=value("spm_sentences"),
                        help=f"at most this many sentences (sampled) train SentencePiece "
                             f"(default {value('spm_sentences')})")
    parser.add_argument("--seed", type=int, default=value("seed"),
                        help=f"SentencePiece sampling seed (default {value('seed')})")
    parser.add_argument("--max-positions", type=int, default=value("max_positions"),
                        help="the model's longest sentence in tokens, end-of-sentence included: longer "
                             "training/validation pairs are left out (counted in the log), a longer test "
                             f"sentence is an error (default {value('max_positions')}, fairseq's transformers)")
    parser.add_argument("--force", action="store_true",
                        help="rebuild even when --out-dir was already built from the same inputs and settings")


def add_archive_arguments(parser, archives, cleaning: dict) -> None:
    """The options of a public corpus: where its archives are, and the training-pair cleaning."""
    parser.add_argument("--raw-dir", type=Path, default=Path("data/downloads"),
                        help="where the downloaded archives are kept; put archives you already have here to "
                             "run offline (default data/downloads)")
    parser.add_argument("--offline", action="store_true",
                        help="never download: fail naming the archive when it is not in --raw-dir")
    parser.add_argument("--no-verify", dest="verify", action="store_false",
                        help="accept archives whose digest differs from the published one (your own copy "
                             "or mirror); the members are still checked")
    for archive in archives:
        parser.add_argument(f"--{archive.key}-url", default=archive.url,
                            help=f"download URL; the archive is --raw-dir/<its file name> (default {archive.url})")
    limits = Cleaning(**cleaning)
    parser.add_argument("--min-tokens", type=int, default=limits.min_tokens,
                        help=f"training-pair cleaning: fewest tokens per side (default {limits.min_tokens})")
    parser.add_argument("--max-tokens", type=int, default=limits.max_tokens,
                        help=f"training-pair cleaning: most tokens per side (default {limits.max_tokens})")
    parser.add_argument("--max-ratio", type=float, default=limits.max_ratio,
                        help=f"training-pair cleaning: longest/shortest side token ratio (default {limits.max_ratio})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data_prep", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # The shell entry points set this so that usage text names the script the user ran.
    script = os.environ.get("DATA_PREP_SCRIPT")
    for recipe in RECIPES:
        command = commands.add_parser(recipe.NAME, help=recipe.HELP, description=recipe.DESCRIPTION,
                                      **({"prog": script} if script else {}))
        recipe.add_arguments(command)
        add_settings_arguments(command, recipe.DEFAULTS, recipe.OUT_DIR)
        if recipe.ARCHIVES:
            add_archive_arguments(command, recipe.ARCHIVES, recipe.CLEANING)
        command.set_defaults(handler=recipe.run)
    return parser


def _exit_on_signal(signum, frame):
    # SystemExit unwinds the build, which removes its temporary directory and ends its children.
    sys.exit(128 + signum)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    args = build_parser().parse_args(argv)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _exit_on_signal)
    given = args.out_dir
    try:
        args.out_dir = real_out_dir(given)
        with claim_out_dir(args.out_dir):
            args.handler(args)
    except DataPrepError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # permission denied, disk full, read-only file system, ...: the build removed its output
        print(f"error: {describe_os_error(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the build removed its temporary directory and ended its children
        print("error: interrupted", file=sys.stderr)
        return 130
    print(given)
    return 0


def describe_os_error(error: OSError) -> str:
    """One line naming the path(s) and the reason, as the system words it."""
    paths = " -> ".join(str(name) for name in (error.filename, error.filename2) if name is not None)
    reason = error.strerror or str(error)
    return f"{paths}: {reason}" if paths else reason
