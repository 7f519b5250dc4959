"""IWSLT14 German-English TED talks as in fairseq's prepare-iwslt14.sh, with SentencePiece."""
from pathlib import Path

from data_prep.recipes.iwslt import prepare_iwslt
from data_prep.registry import CORPORA, IWSLT14_SETS

NAME = "iwslt14-de-en"
HELP = "IWSLT14 German-English TED talks (fairseq's recipe, SentencePiece)"
DESCRIPTION = ("IWSLT14 de-en as in fairseq's prepare-iwslt14.sh: XML stripped, Moses-tokenised, lower-cased, "
               "training pairs cleaned (1..175 tokens, ratio 1.5), valid = every 23rd cleaned training pair, "
               "test = TED.dev2010 + TEDX.dev2012 + TED.tst2010-2012; then a joint SentencePiece model and "
               "fairseq-preprocess --joined-dictionary.")
DEFAULTS = {"src": "de", "tgt": "en", "vocab_size": 10000, "lowercase": True, "moses": True}
OUT_DIR = Path("data/iwslt14.de-en")
CLEANING = {"min_tokens": 1, "max_tokens": 175, "max_ratio": 1.5}
ARCHIVES = CORPORA[NAME]


def add_arguments(parser) -> None:
    pass


def run(args) -> Path:
    # fairseq's prepare-iwslt14.sh: valid is every 23rd cleaned training pair, test is five TED sets.
    return prepare_iwslt(args, corpus_name=NAME, pair="de-en", prefix="IWSLT14", archive_key="iwslt14",
                         drop_containing=("<url>", "<talkid>", "<keywords>"), valid_every=23, valid_sets=(),
                         test_sets=IWSLT14_SETS, apostrophe_in_tests=True)
