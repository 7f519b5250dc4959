"""Untrusted checkpoints that run no code but would exhaust the machine or end in a traceback: a config
literal that builds gigabytes, a config that sizes a model far beyond the weights stored beside it,
files that are not regular files, and states that unpickle but are not what fairseq-train saves.
Each is refused in one line naming the file and the culprit, quickly and without the allocation."""
import os
import re
import shutil
import threading
import time
import tracemalloc
import warnings
import zipfile

import pytest
import torch

from helpers import TINY_TRANSFORMER, USER_DIR, run_tool

import fairseq_plugins  # noqa: F401  (allowlist, loader, literal-only eval)
from fairseq import checkpoint_utils
from fairseq_plugins.checkpoints import CheckpointLoadError
from fairseq_plugins.config_literals import MAX_LITERAL_ITEMS, NotALiteral, literal_value


def load(path):
    return checkpoint_utils.load_checkpoint_to_cpu(str(path))


def saved_with(genuine, destination, change):
    state = torch.load(genuine, weights_only=True)
    change(state)
    torch.save(state, destination)
    return destination


# ---------------------------------------------------------------- the total size of a config literal
@pytest.mark.parametrize("text, items", [
    ("([0]*99999,)*9000", 9000 * 99999),            # each repetition small, the product 900 million
    ("+".join(["[0]*99999"] * 40), 40 * 99999),     # a chain of small lists, 4 million together
    ("[[0]*400]*400", 400 * 400),
])
def test_a_literal_building_too_many_items_is_refused_before_it_is_built(text, items):
    assert items > MAX_LITERAL_ITEMS
    tracemalloc.start()
    try:
        with pytest.raises(NotALiteral, match=rf"would build \d+ items or more \(at most {MAX_LITERAL_ITEMS}"):
            literal_value(text)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # a few times what the largest allowed literal takes (8-byte references), not what the hostile one asks
    assert peak < 4 * 8 * MAX_LITERAL_ITEMS, f"the check itself allocated {peak} bytes"


def test_literals_of_the_allowed_size_keep_their_value():
    assert literal_value("[(512, 3)] * 20 + [(1024, 3)]") == [(512, 3)] * 20 + [(1024, 3)]
    assert literal_value("[[1, 2]] * 1000") == [[1, 2]] * 1000  # 1 + 1000 x (1 + 2) items


# ---------------------------------------------------------------- model sizes before the model is built
def set_model_field(field, value):
    return lambda state: setattr(state["cfg"]["model"], field, value)


@pytest.mark.parametrize("field, value, why", [
    ("decoder_layers", 10 ** 6, r"outside 0\.\.1000, the bound on layers"),
    ("decoder_layers", 3, r"but the file holds the weights of 1 decoder layer"),
    ("max_source_positions", 10 ** 12, r"outside 0\.\.65536, the bound on positions"),
    ("encoder_embed_dim", 48, r"but the file's encoder.embed_tokens.weight is 32 wide"),
    ("decoder_ffn_embed_dim", 4096, r"but the file's decoder.layers.0.fc1.weight is 64 wide"),
])
def test_a_model_config_unlike_the_stored_weights_is_refused_naming_the_field(genuine, tmp_path, field, value, why):
    hostile = saved_with(genuine, tmp_path / "checkpoint_hostile.pt", set_model_field(field, value))
    started = time.monotonic()
    with pytest.raises(CheckpointLoadError, match=rf"^refusing to load checkpoint {hostile}: its config sets "
                                                  rf"cfg\.model\.{field} = {value}, {why}"):
        load(hostile)
    assert time.monotonic() - started < 10


# ---------------------------------------------------------------- only regular files
def outcome_within(seconds, function, *args):
    """What ``function(*args)`` returned or raised, or 'still running' after ``seconds``: a read that
    never ends must fail the test, not hang it."""
    result = ["still running"]

    def run():
        try:
            result[0] = function(*args)
        except Exception as error:  # noqa: BLE001  (the outcome is what the test compares)
            result[0] = error
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    return result[0]


@pytest.mark.parametrize("kind", ["a FIFO", "a character device", "a directory"])
def test_fifos_devices_and_directories_are_not_read_as_checkpoints(tmp_path, kind):
    path = tmp_path / "checkpoint1.pt"
    if kind == "a FIFO":
        os.mkfifo(path)  # nobody writes to it: opening it for reading would wait forever
    elif kind == "a character device":
        path.symlink_to("/dev/zero")  # reads without end
    else:
        path.mkdir()
    outcome = outcome_within(30, load, path)
    assert isinstance(outcome, CheckpointLoadError), outcome
    assert str(outcome) == f"checkpoint {path} is not a regular file ({kind}); only regular files are read as checkpoints"


def test_average_checkpoints_refuses_a_fifo_among_the_last_epochs(genuine, tmp_path, capsys):
    from scripts import average_checkpoints
    shutil.copy(genuine, tmp_path / "checkpoint1.pt")
    os.mkfifo(tmp_path / "checkpoint2.pt")
    argv = ["--inputs", str(tmp_path), "--num-epoch-checkpoints", "2", "--output", str(tmp_path / "avg.pt")]
    assert outcome_within(30, average_checkpoints.main, argv) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: average_checkpoints.py: checkpoint {tmp_path / 'checkpoint2.pt'} is not a regular file (a FIFO); "
        "only regular files are read as checkpoints")
    assert not (tmp_path / "avg.pt").exists()


# ---------------------------------------------------------------- states that unpickle but are not checkpoints
def duplicate_record(genuine, destination):
    """The genuine archive with its data.pkl stored a second time (zip allows it; readers disagree)."""
    with zipfile.ZipFile(genuine) as source, zipfile.ZipFile(destination, "w") as copy:
        records = source.infolist()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zipfile warns about the duplicate name it is asked to write
            for record in records + [r for r in records if r.filename.endswith("/data.pkl")]:
                copy.writestr(record, source.read(record))


def without(key):
    return lambda state: state.pop(key)


def replaced(key, value):
    return lambda state: state.__setitem__(key, value)


@pytest.mark.parametrize("make, message", [
    (lambda genuine, path: path.write_bytes(b"x"),
     r"is not a torch checkpoint: its 1 byte\(s\) start with neither a zip header nor a pickle protocol mark"),
    (lambda genuine, path: path.write_bytes(b""), r"is not a torch checkpoint: its 0 byte\(s\)"),
    (lambda genuine, path: torch.save([1, 2], path),
     "is not a fairseq checkpoint: it holds a list, not a dict with model weights and a config"),
    (lambda genuine, path: saved_with(genuine, path, without("cfg")),
     r"is not a fairseq checkpoint: it has no config \(neither 'cfg' nor 'args'\)"),
    (lambda genuine, path: saved_with(genuine, path, replaced("cfg", 5)),
     "is not a fairseq checkpoint: its 'cfg' is a int, not a dict"),
    (lambda genuine, path: saved_with(genuine, path, replaced("cfg", {"common": {}})),
     r"is not a fairseq checkpoint: its cfg has no model section \(cfg.model is NoneType\)"),
    (lambda genuine, path: saved_with(genuine, path, replaced("model", {"w": 1})),
     "is not a fairseq checkpoint: its 'model' entry is missing or is not a dict of tensors"),
    (lambda genuine, path: saved_with(genuine, path, replaced("optimizer_history", "x")),
     r"holds a state fairseq cannot read \(TypeError"),
    (duplicate_record, "is corrupt: its archive stores record archive/data.pkl more than once"),
], ids=["one-byte", "empty", "list", "no-cfg", "int-cfg", "no-model-section", "no-tensors", "odd-history",
        "duplicate-record"])
def test_a_state_that_is_not_a_fairseq_checkpoint_is_one_error_naming_the_file(genuine, tmp_path, make, message):
    path = tmp_path / "checkpoint_odd.pt"
    make(genuine, path)
    with pytest.raises(CheckpointLoadError, match=rf"^checkpoint {path} {message}") as raised:
        load(path)
    assert "could run code" not in str(raised.value)


def test_weights_of_another_vocabulary_size_are_one_line_from_generate(genuine, toy_data_bin, tmp_path):
    data = tmp_path / "bin"
    shutil.copytree(toy_data_bin, data)
    trained_size = len(torch.load(genuine, weights_only=False)["model"]["encoder.embed_tokens.weight"])
    for dictionary in data.glob("dict.*.txt"):  # the same corpus with six more dictionary entries
        with dictionary.open("a") as handle:
            handle.writelines(f"extra{i} 1\n" for i in range(6))
    proc = run_tool("fairseq-generate", data, "--user-dir", USER_DIR, "--path", genuine, "--gen-subset", "test",
                    "--beam", "1", "--cpu", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"fairseq-generate: error: checkpoint {genuine} was trained with a vocabulary of {trained_size}, the source "
        f"dictionary has {trained_size + 6} (encoder.embed_tokens.weight): is it the dictionary of the corpus it "
        "was trained on?")


@pytest.mark.slow
def test_resuming_with_another_architecture_is_one_line_from_train(genuine, toy_data_bin, tmp_path):
    deeper = [*TINY_TRANSFORMER[:2], "--encoder-layers", "2", *TINY_TRANSFORMER[4:]]  # trained with 1
    proc = run_tool("fairseq-train", toy_data_bin, "--user-dir", USER_DIR, "--task", "translation_encouraging",
                    *deeper, "--criterion", "encouraging_ls", "--optimizer", "adam", "--lr", "1e-3",
                    "--max-tokens", "500", "--max-update", "2", "--cpu", "--save-dir", tmp_path,
                    "--restore-file", genuine, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert re.fullmatch(rf"fairseq-train: error: checkpoint {re.escape(str(genuine))} lacks \d+ parameter\(s\) of "
                        r"the model \(e\.g\. encoder\.layers\.1\.\S+\): was it trained with another architecture\?",
                        last), last
