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
    assert record["settings"]["moses"] is True and record["settings"]["lowercase"] is True
    assert record["settings"]["vocab_size"] == 60 and record["settings"]["model_type"] == "bpe"
    assert record["references"] == {"raw": "raw/test.de", "tokenised": "tok/test.de", "model_text": "tok/test.de",
                                    "postprocess": ["moses-detokenise", "compare-lowercased"]}
    assert leftovers(out.parent) == []


@pytest.mark.slow
def test_custom_is_skipped_when_up_to_date_and_rebuilt_when_input_changes(custom_moses, tmp_path):
    root, out, _ = custom_moses
    before = (out / "prepare.json").read_text()
    proc = run_script("prepare_custom.sh", *custom_args(root, out, "--moses", "--lowercase"))
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
