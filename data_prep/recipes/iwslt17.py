"""IWSLT17 French-English TED talks: cased raw text, chosen dev/test sets, SentencePiece 16k."""
from pathlib import Path

from data_prep.recipes.iwslt import prepare_iwslt
from data_prep.registry import CORPORA, IWSLT17_TESTS, IWSLT17_VALID

NAME = "iwslt17-fr-en"
HELP = "IWSLT17 French-English TED talks (cased, SentencePiece 16k)"
DESCRIPTION = ("IWSLT17 fr-en: XML stripped, cased raw text (no Moses unless --moses), training pairs with "
               "1..250 words kept, valid = TED.dev2010, test = TED.tst2010-2015 concatenated in order "
               "(prepare.json lists each set's line count); joint SentencePiece, fairseq-preprocess.")
DEFAULTS = {"src": "fr", "tgt": "en", "vocab_size": 16000}
OUT_DIR = Path("data/iwslt17.fr-en")
CLEANING = {"min_tokens": 1, "max_tokens": 250, "max_ratio": 9.0}
ARCHIVES = CORPORA[NAME]


def add_arguments(parser) -> None:
    parser.add_argument("--valid-sets", nargs="+", default=list(IWSLT17_VALID),
                        help="dev/test sets (IWSLT17.<SET>.fr-en.*.xml) forming valid "
                             f"(default {' '.join(IWSLT17_VALID)})")
    parser.add_argument("--test-sets", nargs="+", default=list(IWSLT17_TESTS),
                        help=f"sets forming test, concatenated in this order (default {' '.join(IWSLT17_TESTS)})")


def run(args) -> Path:
    # Metadata lines as in fairseq's prepare-iwslt17-multilingual.sh (the 2017 release has more kinds).
    return prepare_iwslt(args, corpus_name=NAME, pair="fr-en", prefix="IWSLT17", archive_key="iwslt17",
                         drop_containing=("<url>", "<talkid>", "<keywords>", "<speaker>", "<reviewer",
                                          "<translator", "<doc", "</doc>"),
                         valid_every=0, valid_sets=tuple(args.valid_sets), test_sets=tuple(args.test_sets),
                         apostrophe_in_tests=False)
