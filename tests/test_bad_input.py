"""Bad input a user can give the task: one-line errors that name the culprit."""
import pytest

from conftest import TINY_TRANSFORMER, USER_DIR, run_tool

from fairseq_plugins.tasks.translation_encouraging import check_data_dirs


def test_missing_data_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"^data directory {tmp_path / 'nope'} does not exist$"):
        check_data_dirs(str(tmp_path / "nope"), None, None)


def test_directory_without_dictionaries(tmp_path):
    (tmp_path / "train.de").write_text("raw text, not binarised\n")
    with pytest.raises(FileNotFoundError, match="has no dict.*txt: it is not fairseq-preprocess output"):
        check_data_dirs(str(tmp_path), None, None)


def test_language_pair_that_is_not_there_lists_the_ones_that_are(toy_data_bin):
    with pytest.raises(FileNotFoundError, match=r"^--target-lang en: .* has no dict.en.txt \(its languages: src, tgt\)$"):
        check_data_dirs(str(toy_data_bin), "src", "en")


def test_fairseq_train_stops_on_a_mismatched_pair_with_one_line(toy_data_bin, tmp_path):
    proc = run_tool("fairseq-train", toy_data_bin, "--user-dir", USER_DIR, "--task", "translation_encouraging",
                    "--source-lang", "de", "--target-lang", "tgt", *TINY_TRANSFORMER, "--criterion", "encouraging_ls",
                    "--optimizer", "adam", "--lr", "1e-3", "--max-tokens", "500", "--cpu", "--save-dir", tmp_path,
                    check=False)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == (
        f"FileNotFoundError: --source-lang de: {toy_data_bin} has no dict.de.txt (its languages: src, tgt)")
    assert not list(tmp_path.iterdir())
