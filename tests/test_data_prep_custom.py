"""data_prep on text files (the custom recipe, run through its script on tiny inputs) and the text
steps and pair filters, checked against expectations computed here independently."""
import json
import os

import pytest

from data_prep import build, cli, text
from data_prep.text import ParallelText, clean_by_length, every_nth
from data_prep.textfiles import DataPrepError
from tests.data_prep_fixtures import (TEST_DE, TEST_EN, TRAIN_DE, assert_fairseq_bin,
                                      assert_sentencepiece_consistent, custom_args, leftovers, read, run_script,
                                      write, write_custom)


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
        raise DataPrepError("fairseq-preprocess failed (1): simulated")
    monkeypatch.setattr(build, "run_fairseq_preprocess", broken_preprocess)
    assert cli.main(["custom", *map(str, custom_args(root, out))]) == 2
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
    corpus = ParallelText(
        raw_src=["a", "b", "c", "d", "e", "f", "g"], raw_tgt=["A", "B", "C", "D", "E", "F", "G"],
        text_src=[" one  two\tthree ", "x", "", "1 2 3 4", "w " * 5, "p | q", "k"],
        text_tgt=["uno dos tres", "x y", "z", "1 2", "W", "p q", "k" * 11])
    cleaned = clean_by_length(corpus, min_tokens=1, max_tokens=4, max_ratio=1.5, max_word_chars=10)
    # a: 3 vs 3 tokens after squeezing -> kept; b: 1 vs 2 is ratio 2 -> dropped; c: empty -> dropped;
    # d: 4 vs 2 -> dropped; e: 5 tokens > max -> dropped; f: 3 vs 2 = ratio 1.5 -> kept ('|' is a token);
    # g: an 11-character word -> dropped.
    assert cleaned.raw_src == ["a", "f"] and cleaned.raw_tgt == ["A", "F"]
    assert cleaned.text_src == ["one two three", "p | q"] and cleaned.text_tgt == ["uno dos tres", "p q"]


def test_every_nth_matches_awk_nr_modulo():
    corpus = ParallelText([str(i) for i in range(1, 51)], [f"t{i}" for i in range(1, 51)])
    rest, held_out = every_nth(corpus, 23)
    assert held_out.raw_src == ["23", "46"] and held_out.raw_tgt == ["t23", "t46"]
    assert rest.raw_src == [str(i) for i in range(1, 51) if i % 23 != 0]



def test_worker_pool_gives_the_same_text_as_one_process(monkeypatch):
    lines = [f"Mr. Smith’s {i}th „test“, isn't it?" for i in range(50)]
    steps = ("apostrophe", "normalize-punctuation", "moses", "lowercase")
    single = text.model_text(lines, "en", steps, workers=1, desc="single")
    monkeypatch.setattr(text, "MIN_LINES_FOR_POOL", 1)
    assert text.model_text(lines, "en", steps, workers=2, desc="pool") == single
    # Moses for English: the comma moves inside the quotes, "isn't" -> "isn 't", "Mr." stays whole.
    assert single[0] == "mr. smith 's 0th \" test , \" isn 't it ?"

