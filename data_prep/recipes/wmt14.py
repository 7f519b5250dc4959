"""WMT14 English-German with the archives of fairseq's prepare-wmt14en2de.sh, SentencePiece 32k."""
from pathlib import Path

from data_prep.archives import read_archive_members
from data_prep.build import build_dataset
from data_prep.recipes.common import start
from data_prep.recipes.iwslt import iwslt_xml_lines
from data_prep.registry import CORPORA
from data_prep.text import ParallelText, add_model_text, clean_by_length, pair_lines, text_steps

NAME = "wmt14-en-de"
HELP = "WMT14 English-German (europarl v7, commoncrawl, news-commentary v12; SentencePiece 32k)"
DESCRIPTION = ("WMT14 en-de with the archives of fairseq's prepare-wmt14en2de.sh: train = europarl v7 + "
               "commoncrawl + news-commentary v12 (Moses punctuation normalisation, non-printing characters "
               "removed, pairs cleaned to 1..250 words, ratio 1.5), valid = newstest2013, test = "
               "newstest2014 (full, from the sgm files); joint SentencePiece on cased raw text.")
DEFAULTS = {"src": "en", "tgt": "de", "vocab_size": 32000}
OUT_DIR = Path("data/wmt14.en-de")
CLEANING = {"min_tokens": 1, "max_tokens": 250, "max_ratio": 1.5}
ARCHIVES = CORPORA[NAME]


def add_arguments(parser) -> None:
    pass


def run(args) -> Path:
    settings, paths, inputs, fingerprint = start(args, NAME, "en-de", ARCHIVES)
    if fingerprint is None:
        return args.out_dir
    src, tgt = settings.src, settings.tgt

    def read_pair(archive, source_member, target_member, extract=lambda lines: lines):
        texts = read_archive_members(paths[archive.key], (source_member, target_member))
        return pair_lines(extract(texts[source_member]), extract(texts[target_member]),
                          f"{paths[archive.key]}:{source_member}", f"{paths[archive.key]}:{target_member}")

    europarl, commoncrawl, news_commentary, dev, test_archive = ARCHIVES
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
    # The sgm files hold one <seg id="N"> per line, like IWSLT's xml files.
    test = read_pair(test_archive, *(f"test-full/newstest2014-deen-{kind}.{lang}.sgm"
                                     for kind, lang in (("src", src), ("ref", tgt))), extract=iwslt_xml_lines)
    test = add_model_text(test, settings, test_steps, "test")
    notes = {"splits": {"train": train_counts, "valid": [{"name": "newstest2013", "lines": len(valid)}],
                        "test": [{"name": "newstest2014 (full)", "lines": len(test)}]},
             "text_steps": {"train": list(steps), "valid": list(steps), "test": list(test_steps)}}
    return build_dataset(args.out_dir, NAME, {"train": train, "valid": valid, "test": test},
                         settings, inputs, fingerprint, notes)
