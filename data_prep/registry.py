"""The public corpora data_prep knows, in the manner of sacreBLEU's dataset registry: for each corpus
its archives, each with its download URL, the members the recipe reads and the digest published for
the file. A downloaded or user-supplied archive whose digest differs is refused in one line naming
the file and both digests; an archive without a published digest is marked unpinned (its computed
sha256 is logged and recorded in prepare.json).

Where the digests come from (none is computed here):
  * WMT13/WMT17 training archives: sha256 and size in Hugging Face datasets' wmt14/wmt17
    dataset_infos.json and TensorFlow Datasets' url_checksums/wmt17_translate.txt (same values).
  * WMT17 dev.tgz and WMT14 test-full.tgz: md5 in sacreBLEU's dataset registry (wmt17/dev, wmt14/full);
    no sha256 is published for them.
  * IWSLT17 fr-en.tgz (WIT3's name): sha256 that Hugging Face datasets' iwslt2017 dataset_infos.json
    pins for the fr-en.tgz its repository served (revision ebd7c60d) before it switched to a zip.
Unpinned: IWSLT14 de-en.tgz (fairseq's mirror) and the Hugging Face mirror's IWSLT17 fr-en.zip:
no published checksum exists for them."""
from data_prep.archives import Archive

IWSLT14_SETS = ("TED.dev2010", "TEDX.dev2012", "TED.tst2010", "TED.tst2011", "TED.tst2012")
IWSLT17_VALID = ("TED.dev2010",)
IWSLT17_TESTS = ("TED.tst2010", "TED.tst2011", "TED.tst2012", "TED.tst2013", "TED.tst2014", "TED.tst2015")


def iwslt_members(pair: str, prefix: str, sets) -> tuple:
    """The members of an IWSLT archive that a recipe reads: train.tags per language, and the .xml
    files of the named dev/test sets."""
    languages = pair.split("-")
    return tuple([f"{pair}/train.tags.{pair}.{lang}" for lang in languages]
                 + [f"{pair}/{prefix}.{name}.{pair}.{lang}.xml" for name in sets for lang in languages])


CORPORA = {
    "iwslt14-de-en": (
        Archive("iwslt14", "http://dl.fbaipublicfiles.com/fairseq/data/iwslt14/de-en.tgz",
                iwslt_members("de-en", "IWSLT14", IWSLT14_SETS)),
    ),
    # WIT3's own archive (wit3.fbk.eu/archive/2017-01-trnted/texts/fr/en/fr-en.tgz) answers 404 since 2021
    # (fairseq issue #3623); the Hugging Face IWSLT/iwslt2017 dataset keeps the release, same files, as a zip.
    "iwslt17-fr-en": (
        Archive("iwslt17", "https://huggingface.co/datasets/IWSLT/iwslt2017/resolve/main/"
                           "data/2017-01-trnted/texts/fr/en/fr-en.zip",
                iwslt_members("fr-en", "IWSLT17", IWSLT17_VALID + IWSLT17_TESTS),
                digests={"fr-en.tgz": "sha256:a40ca3b9a0064bd1fd582df4ced260dd3e7ff9f6f7bf863f139f74b7a5cabd78"},
                also_named=("fr-en.tgz",)),  # WIT3's name, for users who have that copy
    ),
    # The archives and members of fairseq's prepare-wmt14en2de.sh.
    "wmt14-en-de": (
        Archive("europarl", "http://statmt.org/wmt13/training-parallel-europarl-v7.tgz",
                ("training/europarl-v7.de-en.de", "training/europarl-v7.de-en.en"),
                digests={"training-parallel-europarl-v7.tgz":
                         "sha256:0224c7c710c8a063dfd893b0cc0830202d61f4c75c17eb8e31836103d27d96e7"}),
        Archive("commoncrawl", "http://statmt.org/wmt13/training-parallel-commoncrawl.tgz",
                ("commoncrawl.de-en.de", "commoncrawl.de-en.en"),
                digests={"training-parallel-commoncrawl.tgz":
                         "sha256:c7a74e2ea01ac6c920123108627e35278d4ccb5701e15428ffa34de86fa3a9e5"}),
        Archive("news-commentary", "http://data.statmt.org/wmt17/translation-task/training-parallel-nc-v12.tgz",
                ("training/news-commentary-v12.de-en.de", "training/news-commentary-v12.de-en.en"),
                digests={"training-parallel-nc-v12.tgz":
                         "sha256:2b45f30ef1d550d302fd17dd3a5cbe19134ccc4c2cf50c2dae534aee600101a2"}),
        Archive("dev", "http://data.statmt.org/wmt17/translation-task/dev.tgz",
                ("dev/newstest2013.de", "dev/newstest2013.en"),
                digests={"dev.tgz": "md5:9b1aa63c1cf49dccdd20b962fe313989"}),
        Archive("test", "http://statmt.org/wmt14/test-full.tgz",
                ("test-full/newstest2014-deen-src.de.sgm", "test-full/newstest2014-deen-ref.de.sgm",
                 "test-full/newstest2014-deen-src.en.sgm", "test-full/newstest2014-deen-ref.en.sgm"),
                digests={"test-full.tgz": "md5:a8cd784e006feb32ac6f3d9ec7eb389a"}),
    ),
}


def archives(corpus: str) -> dict:
    """{key: Archive} of a registered corpus."""
    return {archive.key: archive for archive in CORPORA[corpus]}
