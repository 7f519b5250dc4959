"""data_prep/: each script run offline on tiny inputs (custom text files, and archives laid out like
the real IWSLT/WMT downloads), outputs checked against expectations computed here independently."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sentencepiece as spm

from data_prep import prepare

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "data_prep"


def run_script(script, *args, check=True):
    env = dict(os.environ, PYTHON=sys.executable, PYTHONUNBUFFERED="1")
    proc = subprocess.run(["bash", str(SCRIPTS / script), *map(str, args)], env=env,
                          capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return proc


def write(path: Path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def read(path: Path):
    return path.read_text(encoding="utf-8").split("\n")[:-1]


def leftovers(parent: Path):
    """Temporary build directories that a finished or failed run must not leave behind."""
    return [p.name for p in parent.iterdir() if ".partial-" in p.name or ".old-" in p.name]


def assert_fairseq_bin(bin_dir: Path, src, tgt, counts):
    """The binarised splits hold exactly `counts` sentences and the dictionary is joined."""
    from fairseq.data import Dictionary, data_utils
    assert (bin_dir / f"dict.{src}.txt").read_text() == (bin_dir / f"dict.{tgt}.txt").read_text()
    dictionary = Dictionary.load(str(bin_dir / f"dict.{src}.txt"))
    for split, count in counts.items():
        for lang in (src, tgt):
            dataset = data_utils.load_indexed_dataset(str(bin_dir / f"{split}.{src}-{tgt}.{lang}"), dictionary)
            assert dataset is not None and len(dataset) == count, (split, lang)
    return dictionary


def assert_sentencepiece_consistent(out: Path, text_dir: str, src, tgt, splits=("train", "valid", "test")):
    """spm/ holds the encoding of the model text, and decoding its pieces gives that text back
    (ids too for training text: characters never seen in training become <unk> ids)."""
    processor = spm.SentencePieceProcessor(model_file=str(out / "spm.model"))
    for split in splits:
        for lang in (src, tgt):
            text = read(out / text_dir / f"{split}.{lang}")
            pieces = read(out / "spm" / f"{split}.{lang}")
            assert pieces == [" ".join(p) for p in processor.encode(text, out_type=str)]
            assert [processor.decode_pieces(line.split()) for line in pieces] == text
            if split == "train":
                assert processor.decode(processor.encode(text)) == text
    return processor


# ------------------------------------------------------------------------------------------------
# custom

TRAIN_EN = ["Hello, World!", "The cat's toy isn't here.", "Mr. Smith went to Washington.",
            "It costs $5 (five dollars).", "Ünïcode is fine: naïve café."] * 6
TRAIN_DE = ["Hallo, Welt!", "Das Spielzeug der Katze ist nicht hier.", "Herr Smith ging nach Washington.",
            "Es kostet 5 $ (fünf Dollar).", "Ünïcode ist gut: naives Café."] * 6
VALID_EN, VALID_DE = ["Hello there, cat."], ["Hallo da, Katze."]
TEST_EN, TEST_DE = ["Good morning, Mr. Smith!", "A café."], ["Guten Morgen, Herr Smith!", "Ein Café."]


def write_custom(root: Path):
    for split, en, de in (("train", TRAIN_EN, TRAIN_DE), ("valid", VALID_EN, VALID_DE), ("test", TEST_EN, TEST_DE)):
        write(root / f"{split}.en", en)
        write(root / f"{split}.de", de)
    return root


def custom_args(root: Path, out: Path, *extra):
    return ["--src-lang", "en", "--tgt-lang", "de", "--train-prefix", root / "train",
            "--valid-prefix", root / "valid", "--test-prefix", root / "test", "--out-dir", out,
            "--vocab-size", "60", "--workers", "1", *extra]


@pytest.fixture(scope="module")
def custom_moses(tmp_path_factory):
    root = write_custom(tmp_path_factory.mktemp("custom") / "text")
    out = root.parent / "out"
    proc = run_script("prepare_custom.sh", *custom_args(root, out, "--moses", "--lowercase"))
    return root, out, proc


@pytest.mark.slow
def test_custom_moses_lowercase_outputs(custom_moses):
    root, out, _ = custom_moses
    for split in ("train", "valid", "test"):
        for lang in ("en", "de"):
            # The references are the input exactly as given.
            assert (out / "raw" / f"{split}.{lang}").read_bytes() == (root / f"{split}.{lang}").read_bytes()
    # Moses rules written out by hand: punctuation split off, "Mr." kept (non-breaking prefix),
    # English clitics split, then lower-cased.
    assert read(out / "tok" / "test.en") == ["good morning , mr. smith !", "a café ."]
    assert read(out / "tok" / "test.de") == ["guten morgen , herr smith !", "ein café ."]
    assert read(out / "tok" / "train.en")[1] == "the cat 's toy isn 't here ."
    assert all(line == line.lower() for split in ("train", "valid", "test") for lang in ("en", "de")
               for line in read(out / "tok" / f"{split}.{lang}"))
    assert_sentencepiece_consistent(out, "tok", "en", "de")
    assert_fairseq_bin(out / "bin", "en", "de", {"train": 30, "valid": 1, "test": 2})
    assert (out / "spm.vocab").is_file()
    record = json.loads((out / "prepare.json").read_text())
    assert record["lines"] == {"train": 30, "valid": 1, "test": 2}
    assert record["command"][0].endswith("prepare_custom.sh") and record["command"][1:3] == ["--src-lang", "en"]
    assert record["settings"]["moses"] is True and record["settings"]["lowercase"] is True
    assert record["settings"]["vocab_size"] == 60 and record["settings"]["model_type"] == "bpe"
    assert record["references"] == {"raw": "raw/test.de", "tokenised": "tok/test.de", "model_text": "tok/test.de",
                                    "postprocess": ["moses-detokenise", "compare-lowercased"]}
    assert leftovers(out.parent) == []


@pytest.mark.slow
def test_custom_is_skipped_when_up_to_date_and_rebuilt_when_input_changes(custom_moses, tmp_path):
    root, out, _ = custom_moses
    before = (out / "prepare.json").read_text()
    # --workers changes speed only, so it does not count as a different build.
    proc = run_script("prepare_custom.sh", *custom_args(root, out, "--moses", "--lowercase", "--workers", "2"))
    assert "up to date" in proc.stderr
    assert (out / "prepare.json").read_text() == before
    # Same settings, changed test input (a copy, so the module fixture stays intact): rebuilt.
    copy = write_custom(tmp_path / "text")
    write(copy / "test.en", TEST_EN + ["One more."])
    write(copy / "test.de", TEST_DE + ["Noch einer."])
    moved = tmp_path / "out"
    os.rename(out, moved)
    try:
        run_script("prepare_custom.sh", *custom_args(copy, moved, "--moses", "--lowercase"))
        assert json.loads((moved / "prepare.json").read_text())["lines"]["test"] == 3
        assert read(moved / "raw" / "test.de") == TEST_DE + ["Noch einer."]
    finally:
        os.rename(moved, out)


@pytest.mark.slow
def test_custom_plain_unigram_trains_on_raw_text(tmp_path):
    root = write_custom(tmp_path / "text")
    out = tmp_path / "out"
    run_script("prepare_custom.sh", *custom_args(root, out, "--model-type", "unigram"))
    assert not (out / "tok").exists()
    processor = assert_sentencepiece_consistent(out, "raw", "en", "de")
    assert read(out / "raw" / "test.de") == TEST_DE
    assert processor.decode(processor.encode(TRAIN_DE)) == TRAIN_DE
    assert json.loads((out / "prepare.json").read_text())["references"]["tokenised"] is None
    import sentencepiece.sentencepiece_model_pb2 as model_pb2
    model = model_pb2.ModelProto()
    model.ParseFromString((out / "spm.model").read_bytes())
    assert model.trainer_spec.model_type == model_pb2.TrainerSpec.UNIGRAM


@pytest.mark.parametrize("damage, message", [
    (lambda root: (root / "valid.de").unlink(), "missing input file: {root}/valid.de"),
    (lambda root: write(root / "test.de", TEST_DE + ["extra"]),
     "line counts differ: {root}/test.en has 2 lines, {root}/test.de has 3"),
    (lambda root: (root / "train.en").write_bytes(b"good line\nsecond\nbad \xff byte\n"),
     "{root}/train.en: line 3: invalid UTF-8"),
    (lambda root: (write(root / "valid.en", []), write(root / "valid.de", [])), "empty corpus"),
])
def test_custom_bad_input_fails_with_one_clear_line(tmp_path, damage, message):
    root = write_custom(tmp_path / "text")
    damage(root)
    out = tmp_path / "out"
    proc = run_script("prepare_custom.sh", *custom_args(root, out), check=False)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message.format(root=root) in last
    assert "Traceback" not in proc.stderr
    assert not out.exists() and leftovers(tmp_path) == []


def test_failure_while_building_leaves_previous_output_intact(tmp_path, monkeypatch, capfd):
    root = write_custom(tmp_path / "text")
    out = tmp_path / "out"
    out.mkdir()
    (out / "prepare.json").write_text('{"fingerprint": "an earlier build"}')

    def broken_preprocess(pieces_dir, bin_dir, settings, log_path):
        assert (pieces_dir / "train.en").is_file()  # it fails after the work is under way
        raise prepare.DataPrepError("fairseq-preprocess failed (1): simulated")
    monkeypatch.setattr(prepare, "run_fairseq_preprocess", broken_preprocess)
    assert prepare.main(["custom", *map(str, custom_args(root, out))]) == 2
    assert "simulated" in capfd.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["prepare.json"]
    assert (out / "prepare.json").read_text() == '{"fingerprint": "an earlier build"}'
    assert leftovers(tmp_path) == []


def test_refuses_to_replace_a_directory_it_did_not_write(tmp_path):
    root = write_custom(tmp_path / "text")
    out = tmp_path / "precious"
    write(out / "notes.txt", ["keep me"])
    proc = run_script("prepare_custom.sh", *custom_args(root, out), check=False)
    assert proc.returncode != 0 and "was not written by data_prep" in proc.stderr
    assert read(out / "notes.txt") == ["keep me"]


def test_usage_on_h():
    proc = run_script("prepare_custom.sh", "-h")
    for flag in ("--src-lang", "--tgt-lang", "--train-prefix", "--valid-prefix", "--test-prefix", "--out-dir",
                 "--vocab-size", "--model-type", "--lowercase", "--moses", "--workers"):
        assert flag in proc.stdout


def test_clean_by_length_matches_clean_corpus_n_rules():
    corpus = prepare.ParallelText(
        raw_src=["a", "b", "c", "d", "e", "f", "g"], raw_tgt=["A", "B", "C", "D", "E", "F", "G"],
        text_src=[" one  two\tthree ", "x", "", "1 2 3 4", "w " * 5, "p | q", "k"],
        text_tgt=["uno dos tres", "x y", "z", "1 2", "W", "p q", "k" * 11])
    cleaned = prepare.clean_by_length(corpus, min_tokens=1, max_tokens=4, max_ratio=1.5, max_word_chars=10)
    # a: 3 vs 3 tokens after squeezing -> kept; b: 1 vs 2 is ratio 2 -> dropped; c: empty -> dropped;
    # d: 4 vs 2 -> dropped; e: 5 tokens > max -> dropped; f: 3 vs 2 = ratio 1.5 -> kept ('|' is a token);
    # g: an 11-character word -> dropped.
    assert cleaned.raw_src == ["a", "f"] and cleaned.raw_tgt == ["A", "F"]
    assert cleaned.text_src == ["one two three", "p | q"] and cleaned.text_tgt == ["uno dos tres", "p q"]


def test_every_nth_matches_awk_nr_modulo():
    corpus = prepare.ParallelText([str(i) for i in range(1, 51)], [f"t{i}" for i in range(1, 51)])
    rest, held_out = prepare.every_nth(corpus, 23)
    assert held_out.raw_src == ["23", "46"] and held_out.raw_tgt == ["t23", "t46"]
    assert rest.raw_src == [str(i) for i in range(1, 51) if i % 23 != 0]


# ------------------------------------------------------------------------------------------------
# Archives laid out like the real downloads

import io
import tarfile
import zipfile


def make_tgz(path: Path, members: dict):
    """A gzip-compressed tar with {member path: lines}, like the real .tgz downloads (a .zip by name)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".zip":
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, lines in members.items():
                archive.writestr(name, "".join(line + "\n" for line in lines))
        return path
    with tarfile.open(path, "w:gz") as archive:
        for name, lines in members.items():
            data = "".join(line + "\n" for line in lines).encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def words(n, offset=0, cap=False):
    vocabulary = ["haus", "baum", "katze", "hund", "wasser", "licht", "stein", "vogel"]
    chosen = [vocabulary[(offset + i) % len(vocabulary)] for i in range(n)]
    return [w.capitalize() if cap and i == 0 else w for i, w in enumerate(chosen)]


def talk_pairs(count, seed):
    """(de, en, kept-by-cleaning) sentence pairs for train.tags: mostly clean, with some that
    clean-corpus-n must drop: empty, over 175 tokens, token ratio over 1.5."""
    pairs = []
    for i in range(count):
        n = 3 + (i + seed) % 6
        de = " ".join(words(n, i, cap=True)) + "."
        en = " ".join(w.upper() for w in words(n, i + 1)) + "."
        pairs.append((de, en, True))
        if i % 9 == 4:
            pairs.append(("Ja.", "Yes yes yes yes.", False))        # 2 vs 5 tokens
        if i % 11 == 6:
            pairs.append(("Ja ja.", "Yes yes yes.", True))         # 3 vs 4 tokens: ratio 1.33, kept
        if i % 13 == 7:
            long = " ".join(words(180, i))
            pairs.append((long, long, False))                       # 180 tokens > 175
    return pairs


def iwslt_train(pairs, talks, lang, extra_meta=()):
    """train.tags.* lines: per talk the metadata lines, then its sentences (de side or en side)."""
    lines, per_talk = [], len(pairs) // talks + 1
    for talk in range(talks):
        lines += [f"<url>http://www.ted.com/talks/talk_{talk}.html</url>",
                  f"<keywords>talks, topic{talk}</keywords>", *[m.format(talk=talk) for m in extra_meta],
                  f"<talkid>{talk}</talkid>",
                  f"<title>Title {talk} {lang.upper()}</title>",
                  f"<description>TED Talk Subtitles and Transcript: about {talk} {lang}</description>"]
        for de, en, _ in pairs[talk * per_talk:(talk + 1) * per_talk]:
            lines.append(de if lang == "de" else en)
    return lines


def iwslt_meta_pairs(talks, pairs):
    """The sentence pairs as the recipe sees them: title and description lines are sentences too."""
    out, per_talk = [], len(pairs) // talks + 1
    for talk in range(talks):
        out.append((f"Title {talk} DE", f"Title {talk} EN", True))
        out.append((f"TED Talk Subtitles and Transcript: about {talk} de",
                    f"TED Talk Subtitles and Transcript: about {talk} en", True))
        out += pairs[talk * per_talk:(talk + 1) * per_talk]
    return out


def iwslt_xml(lines, setid, lang):
    return ['<?xml version="1.0" encoding="UTF-8"?>', "<mteval>",
            f'<srcset setid="{setid}" srclang="{lang}">', '<doc docid="1" genre="lectures">',
            "<url>http://www.ted.com/talks/x.html</url>", "<talkid>1</talkid>", "<title>Not a sentence</title>",
            *[f'<seg id="{i + 1}"> {line} </seg>' for i, line in enumerate(lines)],
            "</doc>", "</srcset>", "</mteval>"]


def xml_set(name, count, apostrophe):
    label = name.replace(".", " ")
    de = [f"Satz {i} aus {label}." for i in range(count)]
    en = [(f"It\u2019s sentence {i} of {label}." if apostrophe and i == 0 else f"Sentence {i} of {label}.")
          for i in range(count)]
    return de, en


IWSLT14_SETS = ["TED.dev2010", "TEDX.dev2012", "TED.tst2010", "TED.tst2011", "TED.tst2012"]


@pytest.fixture(scope="module")
def iwslt14_archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("iwslt14")
    pairs = talk_pairs(60, seed=0)
    members = {"de-en/train.tags.de-en.de": iwslt_train(pairs, 3, "de"),
               "de-en/train.tags.de-en.en": iwslt_train(pairs, 3, "en")}
    sets = {}
    for index, name in enumerate(IWSLT14_SETS):
        de, en = xml_set(name, 2 + index, apostrophe=True)
        sets[name] = (de, en)
        members[f"de-en/IWSLT14.{name}.de-en.de.xml"] = iwslt_xml(de, name, "german")
        members[f"de-en/IWSLT14.{name}.de-en.en.xml"] = iwslt_xml(en, name, "english")
    archive = make_tgz(root / "mirror" / "de-en.tgz", members)
    return root, archive, iwslt_meta_pairs(3, pairs), sets


def moses_like(line, lang):
    """The tokenisation of the fixture sentences, written out: final '.', ',' and ':' split off,
    "’s"/"'s" split in English."""
    line = line.replace("\u2019", "'")
    for mark in (".", ",", ":"):
        line = line.replace(mark, f" {mark}")
    return line.replace("'s", " 's") if lang == "en" else line


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
    assert [s["name"] for s in record["splits"]["test"]] == [f"IWSLT14.{n}" for n in IWSLT14_SETS]
    assert [s["lines"] for s in record["splits"]["test"]] == [2, 3, 4, 5, 6]
    assert record["text_steps"]["test"] == ["apostrophe", "moses", "lowercase"]
    assert leftovers(tmp_path) == []


IWSLT17_VALID_SETS = ["TED.dev2010"]
IWSLT17_TEST_SETS = ["TED.tst2010", "TED.tst2011", "TED.tst2012", "TED.tst2013", "TED.tst2014", "TED.tst2015"]


def make_iwslt17_archive(path: Path, pairs):
    meta = ('<doc docid="{talk}" genre="lectures">', "<speaker>Speaker {talk}</speaker>",
            '<reviewer href="x">R</reviewer>', '<translator href="y">T</translator>')
    # fr-en: the "de" slot of the generated pairs is the French side.
    members = {"fr-en/train.tags.fr-en.fr": [*iwslt_train(pairs, 2, "de", meta), "</doc>"],
               "fr-en/train.tags.fr-en.en": [*iwslt_train(pairs, 2, "en", meta), "</doc>"]}
    sets = {}
    for index, name in enumerate(IWSLT17_VALID_SETS + IWSLT17_TEST_SETS):
        fr, en = xml_set(name, 1 + index, apostrophe=True)
        sets[name] = (fr, en)
        members[f"fr-en/IWSLT17.{name}.fr-en.fr.xml"] = iwslt_xml(fr, name, "french")
        members[f"fr-en/IWSLT17.{name}.fr-en.en.xml"] = iwslt_xml(en, name, "english")
    return make_tgz(path, members), sets


def test_iwslt17_takes_the_mirrors_zip_or_wit3s_tgz(tmp_path):
    """The default download is the Hugging Face mirror's fr-en.zip; WIT3's fr-en.tgz, which some
    users still have, is accepted in --raw-dir under its own name."""
    assert prepare.IWSLT17_URL.endswith("/2017-01-trnted/texts/fr/en/fr-en.zip")
    members = ("fr-en/train.tags.fr-en.fr",)
    archive = prepare.Archive("iwslt17", prepare.IWSLT17_URL, members, prepare.IWSLT17_OTHER_NAMES)
    with pytest.raises(prepare.DataPrepError, match=f"missing archive: {tmp_path / 'fr-en.zip'} .*--offline"):
        prepare.ensure_archive(tmp_path, archive, prepare.IWSLT17_URL, offline=True)
    tgz = make_tgz(tmp_path / "fr-en.tgz", {members[0]: ["Bonjour ."]})
    assert prepare.ensure_archive(tmp_path, archive, prepare.IWSLT17_URL, offline=True) == tgz
    zipped = make_tgz(tmp_path / "fr-en.zip", {members[0]: ["Bonjour ."]})
    assert prepare.ensure_archive(tmp_path, archive, prepare.IWSLT17_URL, offline=True) == zipped


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

def sgm(lines, setid, kind):
    return [f'<{kind}set setid="{setid}" srclang="any">', '<doc sysid="ref" docid="d1" genre="news" origlang="en">',
            "<p>", *[f'<seg id="{i + 1}">{line}</seg>' for i, line in enumerate(lines)], "</p>", "</doc>",
            f"</{kind}set>"]


def make_wmt14_archives(raw_dir: Path):
    """The five archives with the members fairseq's prepare-wmt14en2de.sh reads (plus distractors)."""
    corpora = {}
    for name, count in (("europarl", 12), ("commoncrawl", 8), ("news-commentary", 10)):
        en = [f"{name} sentence {i} is here." for i in range(count)]
        de = [f"\u201e{name}\u201c Satz {i} ist hier." for i in range(count)]
        en.append("Short.")
        de.append("Ein viel zu langer deutscher Satz hier.")  # 2 vs 7 words: ratio 3.5, dropped
        corpora[name] = (en, de)
    make_tgz(raw_dir / "training-parallel-europarl-v7.tgz", {
        "training/europarl-v7.de-en.en": corpora["europarl"][0], "training/europarl-v7.de-en.de": corpora["europarl"][1],
        "training/europarl-v7.fr-en.en": ["not this"], "training/europarl-v7.fr-en.fr": ["pas ça"]})
    make_tgz(raw_dir / "training-parallel-commoncrawl.tgz", {
        "commoncrawl.de-en.en": corpora["commoncrawl"][0], "commoncrawl.de-en.de": corpora["commoncrawl"][1]})
    make_tgz(raw_dir / "training-parallel-nc-v12.tgz", {
        "training/news-commentary-v12.de-en.en": corpora["news-commentary"][0],
        "training/news-commentary-v12.de-en.de": corpora["news-commentary"][1]})
    valid = (["Valid one.", "Valid two."], ["Gültig eins.", "Gültig zwei."])
    make_tgz(raw_dir / "dev.tgz", {"dev/newstest2013.en": valid[0], "dev/newstest2013.de": valid[1],
                                   "dev/newstest2012.en": ["wrong"], "dev/newstest2012.de": ["falsch"]})
    test_en = ["Test \u201cone\u201d.", "It\u2019s test two.", "Test three."]
    test_de = ["Test eins.", "Test zwei.", "Test drei."]
    make_tgz(raw_dir / "test-full.tgz", {
        "test-full/newstest2014-deen-src.en.sgm": sgm(test_en, "newstest2014", "src"),
        "test-full/newstest2014-deen-ref.de.sgm": sgm(test_de, "newstest2014", "ref"),
        "test-full/newstest2014-deen-src.de.sgm": sgm(["Falsche Richtung."] * 3, "newstest2014", "src"),
        "test-full/newstest2014-deen-ref.en.sgm": sgm(["Wrong direction."] * 3, "newstest2014", "ref")})
    return corpora, valid, (test_en, test_de)


@pytest.mark.slow
def test_wmt14_offline_concatenation_cleaning_and_sgm_test(tmp_path):
    raw_dir, out = tmp_path / "downloads", tmp_path / "wmt14"
    corpora, valid, test = make_wmt14_archives(raw_dir)
    run_script("prepare_wmt14_en_de.sh", "--raw-dir", raw_dir, "--out-dir", out, "--vocab-size", "150",
               "--workers", "1", "--offline")
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


def test_worker_pool_gives_the_same_text_as_one_process(monkeypatch):
    lines = [f"Mr. Smith’s {i}th „test“, isn't it?" for i in range(50)]
    steps = ("apostrophe", "normalize-punctuation", "moses", "lowercase")
    single = prepare.model_text(lines, "en", steps, workers=1, desc="single")
    monkeypatch.setattr(prepare, "MIN_LINES_FOR_POOL", 1)
    assert prepare.model_text(lines, "en", steps, workers=2, desc="pool") == single
    # Moses for English: the comma moves inside the quotes, "isn't" -> "isn 't", "Mr." stays whole.
    assert single[0] == "mr. smith 's 0th \" test , \" isn 't it ?"


def test_iwslt_text_extraction_rules():
    train = ["<url>http://www.ted.com/talks/a.html</url>", "<keywords>talks, art</keywords>",
             "<speaker>Jane Doe</speaker>", "<talkid>7</talkid>", "<title>A Title</title>",
             "<description>TED Talk: about art</description>", "  First sentence.  ", "Second one."]
    assert prepare.iwslt_train_lines(train, ("<url>", "<talkid>", "<keywords>")) == [
        "<speaker>Jane Doe</speaker>", "A Title", "TED Talk: about art", "First sentence.", "Second one."]
    assert prepare.iwslt_train_lines(train, ("<url>", "<talkid>", "<keywords>", "<speaker>")) == [
        "A Title", "TED Talk: about art", "First sentence.", "Second one."]
    xml = ['<doc docid="1">', "<title>Not this</title>", '<seg id="1"> Hello  there. </seg>',
           '<seg id="12">It\u2019s &amp; more.</seg>', "</doc>"]
    assert prepare.iwslt_xml_lines(xml) == ["Hello  there.", "It\u2019s &amp; more."]


def test_zip_archives_are_verified_and_read_like_tarballs(tmp_path):
    import zipfile
    path = tmp_path / "fr-en.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("fr-en/train.tags.fr-en.fr", "un\ndeux\n")
        archive.writestr("fr-en/train.tags.fr-en.en", "one\ntwo\n")
    assert prepare.verify_archive(path, ["fr-en/train.tags.fr-en.fr"]) is None
    assert prepare.verify_archive(path, ["fr-en/missing"]) == "lacks fr-en/missing"
    assert prepare.read_archive_members(path, ["fr-en/train.tags.fr-en.en"]) == {
        "fr-en/train.tags.fr-en.en": ["one", "two"]}
    tgz = make_tgz(tmp_path / "x.tgz", {"a/b.txt": ["é", "ü"]})
    assert prepare.read_archive_members(tgz, ["a/b.txt"]) == {"a/b.txt": ["é", "ü"]}
    (tmp_path / "bad.tgz").write_bytes(b"not a tarball")
    assert prepare.verify_archive(tmp_path / "bad.tgz", ["a"]).startswith("cannot be opened")


def test_invalid_utf8_inside_an_archive_names_member_and_line(tmp_path):
    path = tmp_path / "x.tgz"
    with tarfile.open(path, "w:gz") as archive:
        data = b"fine\nalso fine\nbroken \xe9 here\n"
        info = tarfile.TarInfo("de-en/train.tags.de-en.de")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    with pytest.raises(prepare.DataPrepError, match=r"x\.tgz:de-en/train\.tags\.de-en\.de: line 3: invalid UTF-8"):
        prepare.read_archive_members(path, ["de-en/train.tags.de-en.de"])
