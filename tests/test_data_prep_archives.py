"""data_prep's public-corpus recipes run offline on archives laid out like the real IWSLT/WMT
downloads, the archive checks (members, digests) and the IWSLT/WMT text extraction; outputs checked
against expectations computed here independently."""
import io
import json
import tarfile
import zipfile

import pytest

from data_prep import registry
from data_prep.archives import ensure_archive, read_archive_members, verify_archive
from data_prep.recipes.iwslt import iwslt_train_lines, iwslt_xml_lines
from data_prep.textfiles import DataPrepError
from tests.data_prep_fixtures import (IWSLT14_SETS, IWSLT17_TEST_SETS, IWSLT17_VALID_SETS, assert_fairseq_bin,
                                      assert_sentencepiece_consistent, iwslt_meta_pairs, leftovers,
                                      make_iwslt14_archive, make_iwslt17_archive, make_tgz, make_wmt14_archives,
                                      moses_like, read, run_script, talk_pairs)


@pytest.fixture(scope="module")
def iwslt14_archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("iwslt14")
    archive, pairs, sets = make_iwslt14_archive(root)
    return root, archive, pairs, sets


@pytest.mark.slow
def test_iwslt14_offline_layout_cleaning_split_and_test_order(iwslt14_archive, tmp_path):
    root, archive, pairs, sets = iwslt14_archive
    raw_dir, out = tmp_path / "downloads", tmp_path / "iwslt14"
    # A file:// URL exercises the download path without any network.
    run_script("prepare_iwslt14_de_en.sh", "--raw-dir", raw_dir, "--out-dir", out, "--vocab-size", "120",
               "--workers", "1", "--iwslt14-url", archive.as_uri())
    assert (raw_dir / "de-en.tgz").read_bytes() == archive.read_bytes()

    kept = [(de, en) for de, en, keep in pairs if keep]
    assert len(kept) < len(pairs)  # the fixture does exercise the cleaning
    expected_valid = kept[22::23]
    expected_train = [pair for i, pair in enumerate(kept) if (i + 1) % 23 != 0]
    assert read(out / "raw" / "valid.de") == [de for de, _ in expected_valid]
    assert read(out / "raw" / "valid.en") == [en for _, en in expected_valid]
    assert read(out / "raw" / "train.de") == [de for de, _ in expected_train]
    assert read(out / "raw" / "train.en") == [en for _, en in expected_train]
    assert read(out / "tok" / "train.en") == [moses_like(en, "en").lower() for _, en in expected_train]
    assert read(out / "tok" / "train.de") == [moses_like(de, "de").lower() for de, _ in expected_train]
    assert not any("<" in line for line in read(out / "raw" / "train.de") + read(out / "raw" / "test.en"))

    # test = dev2010, TEDX.dev2012, tst2010, tst2011, tst2012; raw keeps ’, tok maps it to '.
    expected_test_en = [line for name in IWSLT14_SETS for line in sets[name][1]]
    expected_test_de = [line for name in IWSLT14_SETS for line in sets[name][0]]
    assert read(out / "raw" / "test.en") == expected_test_en
    assert read(out / "raw" / "test.de") == expected_test_de
    assert read(out / "tok" / "test.en") == [moses_like(line, "en").lower() for line in expected_test_en]
    assert read(out / "tok" / "test.en")[0] == "it 's sentence 0 of ted dev2010 ."

    assert_sentencepiece_consistent(out, "tok", "de", "en", splits=("train",))
    assert_fairseq_bin(out / "bin", "de", "en", {"train": len(expected_train), "valid": len(expected_valid),
                                                "test": len(expected_test_en)})
    record = json.loads((out / "prepare.json").read_text())
    assert record["corpus"] == "iwslt14-de-en" and record["settings"]["lowercase"] is True
    assert record["inputs"]["iwslt14"]["checksum"] == "unpinned"  # no published digest for de-en.tgz
    assert [s["name"] for s in record["splits"]["test"]] == [f"IWSLT14.{n}" for n in IWSLT14_SETS]
    assert [s["lines"] for s in record["splits"]["test"]] == [2, 3, 4, 5, 6]
    assert record["text_steps"]["test"] == ["apostrophe", "moses", "lowercase"]
    assert leftovers(tmp_path) == []




def test_iwslt17_takes_the_mirrors_zip_or_wit3s_tgz(tmp_path):
    """The default download is the Hugging Face mirror's fr-en.zip; WIT3's fr-en.tgz, which some
    users still have, is accepted in --raw-dir under its own name."""
    archive = registry.archives("iwslt17-fr-en")["iwslt17"]
    url = archive.url
    assert url.endswith("/2017-01-trnted/texts/fr/en/fr-en.zip") and archive.also_named == ("fr-en.tgz",)
    member = "fr-en/train.tags.fr-en.fr"
    with pytest.raises(DataPrepError, match=f"missing archive: {tmp_path / 'fr-en.zip'} .*--offline"):
        ensure_archive(tmp_path, archive, url, offline=True)
    tgz = make_tgz(tmp_path / "fr-en.tgz", {member: ["Bonjour ."]})
    assert ensure_archive(tmp_path, archive, url, offline=True) == tgz
    zipped = make_tgz(tmp_path / "fr-en.zip", {member: ["Bonjour ."]})
    assert ensure_archive(tmp_path, archive, url, offline=True) == zipped


@pytest.mark.slow
def test_iwslt17_cased_sets_and_existing_archive_is_not_downloaded(tmp_path):
    pairs = [(de, en, True) for de, en, _ in talk_pairs(40, seed=3)]
    archive, sets = make_iwslt17_archive(tmp_path / "downloads" / "fr-en.zip", pairs)
    out = tmp_path / "iwslt17"
    # The archive (the default mirror's zip) is present, so the URL must never be tried.
    run_script("prepare_iwslt17_fr_en.sh", "--raw-dir", archive.parent, "--out-dir", out, "--vocab-size", "120",
               "--workers", "1", "--offline", "--max-tokens", "175")
    expected = [(fr, en) for fr, en, _ in iwslt_meta_pairs(2, pairs) if fr.strip() and len(fr.split()) <= 175]
    assert read(out / "raw" / "train.fr") == [fr for fr, _ in expected]
    assert read(out / "raw" / "train.en") == [en for _, en in expected]
    assert not any("<" in line for line in read(out / "raw" / "train.fr"))
    assert read(out / "raw" / "valid.en") == sets["TED.dev2010"][1]
    assert read(out / "raw" / "test.en") == [line for name in IWSLT17_TEST_SETS for line in sets[name][1]]
    assert read(out / "raw" / "test.fr") == [line for name in IWSLT17_TEST_SETS for line in sets[name][0]]
    assert not (out / "tok").exists()  # cased raw text goes straight to SentencePiece
    processor = assert_sentencepiece_consistent(out, "raw", "fr", "en", splits=("train",))
    assert any(piece != piece.lower() for piece in (processor.id_to_piece(i) for i in range(len(processor))))
    assert_fairseq_bin(out / "bin", "fr", "en", {"train": len(expected), "valid": 1, "test": sum(range(2, 8))})
    record = json.loads((out / "prepare.json").read_text())
    assert [s["lines"] for s in record["splits"]["test"]] == [2, 3, 4, 5, 6, 7]
    assert record["settings"]["valid_sets"] == IWSLT17_VALID_SETS and record["settings"]["lowercase"] is False


# ------------------------------------------------------------------------------------------------
# WMT14


@pytest.mark.slow
def test_wmt14_offline_concatenation_cleaning_and_sgm_test(tmp_path):
    raw_dir, out = tmp_path / "downloads", tmp_path / "wmt14"
    corpora, valid, test = make_wmt14_archives(raw_dir)
    # The fixture archives are not the published files: --no-verify skips the digest check.
    run_script("prepare_wmt14_en_de.sh", "--raw-dir", raw_dir, "--out-dir", out, "--vocab-size", "150",
               "--workers", "1", "--offline", "--no-verify")
    # train = europarl, commoncrawl, news-commentary in that order, each minus its ratio-3.5 pair.
    expected_en = [line for name in ("europarl", "commoncrawl", "news-commentary") for line in corpora[name][0][:-1]]
    expected_de = [line for name in ("europarl", "commoncrawl", "news-commentary") for line in corpora[name][1][:-1]]
    assert read(out / "raw" / "train.en") == expected_en
    assert read(out / "raw" / "train.de") == expected_de
    # Moses punctuation normalisation: German quotes become ", cased, not tokenised.
    assert read(out / "tok" / "train.de") == [line.replace("\u201e", '"').replace("\u201c", '"') for line in expected_de]
    assert read(out / "raw" / "valid.en") == valid[0] and read(out / "raw" / "valid.de") == valid[1]
    assert read(out / "raw" / "test.en") == test[0] and read(out / "raw" / "test.de") == test[1]
    # normalize-punctuation.perl: curly quotes -> ", ’ -> ', and (English) the full stop moved inside quotes.
    assert read(out / "tok" / "test.en") == ['Test "one."', "It's test two.", "Test three."]
    assert_sentencepiece_consistent(out, "tok", "en", "de", splits=("train",))
    assert_fairseq_bin(out / "bin", "en", "de", {"train": len(expected_en), "valid": 2, "test": 3})
    record = json.loads((out / "prepare.json").read_text())
    assert record["references"]["tokenised"] is None and record["references"]["postprocess"] == []
    assert sorted(record["inputs"]) == ["commoncrawl", "dev", "europarl", "news-commentary", "test"]
    assert {info["checksum"] for info in record["inputs"].values()} == {"skipped (--no-verify)"}


# ------------------------------------------------------------------------------------------------
# Archive failures: one clear line, nothing written

def test_missing_archive_offline_names_it(tmp_path):
    proc = run_script("prepare_iwslt14_de_en.sh", "--raw-dir", tmp_path / "none", "--out-dir", tmp_path / "out",
                      "--offline", check=False)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: missing archive: {tmp_path / 'none' / 'de-en.tgz'}")
    assert not (tmp_path / "out").exists()


def test_incomplete_and_damaged_archives_are_reported(tmp_path):
    raw_dir = tmp_path / "downloads"
    make_tgz(raw_dir / "de-en.tgz", {"de-en/train.tags.de-en.de": ["a"], "de-en/train.tags.de-en.en": ["b"]})
    proc = run_script("prepare_iwslt14_de_en.sh", "--raw-dir", raw_dir, "--out-dir", tmp_path / "out", "--offline",
                      check=False)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode != 0 and "lacks de-en/IWSLT14.TED.dev2010.de-en.de.xml" in last
    (raw_dir / "de-en.tgz").write_bytes((raw_dir / "de-en.tgz").read_bytes()[:40])  # truncated download
    proc = run_script("prepare_iwslt14_de_en.sh", "--raw-dir", raw_dir, "--out-dir", tmp_path / "out", "--offline",
                      check=False)
    assert proc.returncode != 0 and "cannot be opened" in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_misaligned_archive_names_both_members_and_counts(iwslt14_archive, tmp_path):
    _, archive, _, _ = iwslt14_archive
    with tarfile.open(archive) as source:
        members = {m.name: source.extractfile(m).read().decode().split("\n")[:-1] for m in source if m.isfile()}
    members["de-en/train.tags.de-en.en"].append("One extra English line.")
    raw_dir = tmp_path / "downloads"
    make_tgz(raw_dir / "de-en.tgz", members)
    proc = run_script("prepare_iwslt14_de_en.sh", "--raw-dir", raw_dir, "--out-dir", tmp_path / "out", "--offline",
                      check=False)
    last = proc.stderr.strip().splitlines()[-1]
    de_count = len(members["de-en/train.tags.de-en.de"]) - 3 * 3  # minus url/keywords/talkid lines per talk
    assert proc.returncode != 0
    assert (f"line counts differ: {raw_dir / 'de-en.tgz'}:de-en/train.tags.de-en.de has {de_count} lines, "
            f"{raw_dir / 'de-en.tgz'}:de-en/train.tags.de-en.en has {de_count + 1}") in last
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_iwslt_text_extraction_rules():
    train = ["<url>http://www.ted.com/talks/a.html</url>", "<keywords>talks, art</keywords>",
             "<speaker>Jane Doe</speaker>", "<talkid>7</talkid>", "<title>A Title</title>",
             "<description>TED Talk: about art</description>", "  First sentence.  ", "Second one."]
    assert iwslt_train_lines(train, ("<url>", "<talkid>", "<keywords>")) == [
        "<speaker>Jane Doe</speaker>", "A Title", "TED Talk: about art", "First sentence.", "Second one."]
    assert iwslt_train_lines(train, ("<url>", "<talkid>", "<keywords>", "<speaker>")) == [
        "A Title", "TED Talk: about art", "First sentence.", "Second one."]
    xml = ['<doc docid="1">', "<title>Not this</title>", '<seg id="1"> Hello  there. </seg>',
           '<seg id="12">It\u2019s &amp; more.</seg>', "</doc>"]
    assert iwslt_xml_lines(xml) == ["Hello  there.", "It\u2019s &amp; more."]


def test_zip_archives_are_verified_and_read_like_tarballs(tmp_path):
    path = tmp_path / "fr-en.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("fr-en/train.tags.fr-en.fr", "un\ndeux\n")
        archive.writestr("fr-en/train.tags.fr-en.en", "one\ntwo\n")
    assert verify_archive(path, ["fr-en/train.tags.fr-en.fr"]) is None
    assert verify_archive(path, ["fr-en/missing"]) == "lacks fr-en/missing"
    assert read_archive_members(path, ["fr-en/train.tags.fr-en.en"]) == {
        "fr-en/train.tags.fr-en.en": ["one", "two"]}
    tgz = make_tgz(tmp_path / "x.tgz", {"a/b.txt": ["é", "ü"]})
    assert read_archive_members(tgz, ["a/b.txt"]) == {"a/b.txt": ["é", "ü"]}
    (tmp_path / "bad.tgz").write_bytes(b"not a tarball")
    assert verify_archive(tmp_path / "bad.tgz", ["a"]).startswith("cannot be opened")


def test_invalid_utf8_inside_an_archive_names_member_and_line(tmp_path):
    path = tmp_path / "x.tgz"
    with tarfile.open(path, "w:gz") as archive:
        data = b"fine\nalso fine\nbroken \xe9 here\n"
        info = tarfile.TarInfo("de-en/train.tags.de-en.de")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    with pytest.raises(DataPrepError, match=r"x\.tgz:de-en/train\.tags\.de-en\.de: line 3: invalid UTF-8"):
        read_archive_members(path, ["de-en/train.tags.de-en.de"])
