"""What every public-corpus recipe does before reading its text: settings from the command line,
the archives fetched and checked, and whether the output is already up to date."""
from collections import namedtuple

from data_prep.archives import fetch_archives
from data_prep.build import fingerprint_to_build
from data_prep.settings import Cleaning, Settings
from data_prep.textfiles import DataPrepError

Start = namedtuple("Start", "settings paths inputs fingerprint")


def start(args, corpus_name: str, pair: str, archives, **extra) -> Start:
    """`fingerprint` is None when --out-dir already holds this build (nothing to do)."""
    cleaning = Cleaning(args.min_tokens, args.max_tokens, args.max_ratio).validate()
    settings = Settings.from_args(args, cleaning=cleaning.as_tuple(), **extra)
    if sorted((settings.src, settings.tgt)) != sorted(pair.split("-")):
        raise DataPrepError(f"--src-lang/--tgt-lang must be the two languages of {pair} "
                            f"(got {settings.src}, {settings.tgt})")
    paths, inputs = fetch_archives(args, archives)
    return Start(settings, paths, inputs, fingerprint_to_build(args.out_dir, corpus_name, settings, inputs,
                                                               args.force))
