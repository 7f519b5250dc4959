"""average_checkpoints, score_translations and compare where their outputs cannot be written (a full
disk, reproduced with `ulimit -f`; permission denied; a directory in the way) or their inputs are
wrong (JSON of another type, a bootstrap of no samples, checkpoints deleted while being averaged):
one line naming the path, status 2, no partial file and the previous output intact."""
import contextlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import pytest
import torch

from helpers import REPO, repo_env

import fairseq_plugins  # noqa: F401  (the allowlist for weights_only loading)
from scripts import average_checkpoints, compare, score_translations

REFERENCES = ["a b c d e", "f g h i", "j k l m n o"]
HYPOTHESES = ["a b c d", "f g h i", "j k m n o"]


def leftovers(directory):
    return sorted(name for name in os.listdir(directory) if name.endswith(".partial"))


def score_inputs(root):
    """A fairseq-generate output and a prepared corpus (prepare.json, raw references) to score it against."""
    generate = root / "test.generate.txt"
    generate.write_text("".join(f"T-{i}\t{r}\nH-{i}\t-0.1\t{h}\n" for i, (h, r) in enumerate(zip(HYPOTHESES, REFERENCES))))
    (root / "data" / "raw").mkdir(parents=True)
    (root / "data" / "prepare.json").write_text(json.dumps({"references": {"postprocess": []}}))
    (root / "data" / "raw" / "test.tgt").write_text("\n".join(REFERENCES) + "\n")
    return ["--generate-output", str(generate), "--data-dir", str(root / "data"), "--tgt-lang", "tgt"]


def compare_runs(root):
    """Two arms, one seed each, as train.sh + evaluate.sh leave them."""
    runs = []
    for arm, bleu in (("baseline", 30.0), ("encouraging", 31.0)):
        run = root / arm
        (run / "eval").mkdir(parents=True)
        (run / "run.json").write_text(json.dumps({"loss": arm, "seed": 1, "tgt_lang": "tgt"}))
        (run / "eval" / "test.results.json").write_text(json.dumps(
            {"tokenized_bleu": bleu, "sacrebleu": bleu, "compound_split_bleu": None, "postprocess": []}))
        (run / "eval" / "test.generate.txt").write_text(
            "".join(f"T-{i}\t{r}\nH-{i}\t-0.1\t{h}\n" for i, (h, r) in enumerate(zip(HYPOTHESES, REFERENCES))))
        runs.append(str(run))
    return ["--recipe", "toy", "--runs", *runs, "--no-significance"]


def run_module(module, *args, file_blocks=None, obey_permissions=False):
    """python -m MODULE ARGS in a real process, under `ulimit -f` (blocks of 1 KiB), or, for root, without
    the capabilities that let root write where the permissions say no (as any other user would be)."""
    command = [sys.executable, "-m", module, *map(str, args)]
    if file_blocks is not None:
        command = ["bash", "-c", f'ulimit -f {file_blocks} && exec "$@"', "bash", *command]
    if obey_permissions and os.geteuid() == 0:
        command = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner", "--", *command]
    return subprocess.run(command, cwd=REPO, env=repo_env(MPLCONFIGDIR=tempfile.mkdtemp()), capture_output=True,
                          text=True, timeout=300)


def assert_one_line(proc, prefix, path, reason):
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == f"error: {prefix}: cannot write {path}: {reason}"


# ---------------------------------------------------------------- a full disk (ulimit -f)
def test_average_checkpoints_on_a_full_disk(genuine, tmp_path):
    output = tmp_path / "avg.pt"
    output.write_bytes(b"the previous average")
    proc = run_module("scripts.average_checkpoints", "--inputs", genuine, "--output", output, file_blocks=64)
    assert_one_line(proc, "average_checkpoints.py", output, "File too large")
    assert output.read_bytes() == b"the previous average" and leftovers(tmp_path) == []


def test_score_translations_and_compare_on_a_full_disk(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text("previous")
    proc = run_module("scripts.score_translations", *score_inputs(tmp_path), "--output", out / "results.json",
                      "--hypotheses-output", out / "hyp.txt", "--extra", "note=" + "x" * 5000, file_blocks=4)
    assert_one_line(proc, "score_translations", out / "results.json", "File too large")
    assert (out / "results.json").read_text() == "previous" and leftovers(out) == []
    proc = run_module("scripts.compare", *compare_runs(tmp_path), "--out-dir", out, file_blocks=2)
    assert_one_line(proc, "compare.py", out / "comparison.png", "File too large")
    assert leftovers(out) == [] and not (out / "comparison.png").exists()


# ---------------------------------------------------------------- permission denied, a directory in the way
@pytest.mark.skipif(os.geteuid() == 0 and shutil.which("setpriv") is None, reason="root without setpriv")
def test_score_translations_and_compare_in_a_directory_they_may_not_write(tmp_path):
    inputs, runs = score_inputs(tmp_path), compare_runs(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir(0o555)
    proc = run_module("scripts.score_translations", *inputs, "--output", locked / "r.json", obey_permissions=True)
    assert_one_line(proc, "score_translations", locked / "r.json", "Permission denied")
    proc = run_module("scripts.compare", *runs, "--out-dir", locked, obey_permissions=True)
    assert_one_line(proc, "compare.py", locked / "comparison.md", "Permission denied")
    assert os.listdir(locked) == []


def test_an_output_path_that_is_a_directory(genuine, tmp_path, capsys):
    in_the_way = tmp_path / "in_the_way"
    (in_the_way / "comparison.json").mkdir(parents=True)
    assert score_translations.main([*score_inputs(tmp_path), "--output", str(in_the_way)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: score_translations: cannot write {in_the_way}: a directory is in the way")
    assert compare.main([*compare_runs(tmp_path), "--out-dir", str(in_the_way)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: compare.py: cannot write {in_the_way / 'comparison.json'}: a directory is in the way")
    assert average_checkpoints.main(["--inputs", str(genuine), "--output", str(in_the_way)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: average_checkpoints.py: --output {in_the_way} is a directory; give the file to write")
    assert leftovers(tmp_path) == [] and leftovers(in_the_way) == []


# ---------------------------------------------------------------- inputs of the wrong type
@pytest.mark.parametrize("args, results, message", [
    (["--bootstrap-samples", "0"], None, "--bootstrap-samples must be a positive number of resamples, got 0"),
    (["--bootstrap-samples", "-5"], None, "--bootstrap-samples must be a positive number of resamples, got -5"),
    ([], [30.0], "baseline/eval/test.results.json: expected a JSON object, got list"),
    ([], {"tokenized_bleu": "30.0"}, "baseline/eval/test.results.json: field 'tokenized_bleu' must be a number or "
                                     "null, got '30.0'"),
])
def test_compare_refuses_bad_values_in_one_line(tmp_path, capsys, args, results, message):
    runs = compare_runs(tmp_path)
    if results is not None:
        (tmp_path / "baseline" / "eval" / "test.results.json").write_text(json.dumps(results))
    runs.remove("--no-significance")
    assert compare.main([*runs, "--out-dir", str(tmp_path / "out"), *args]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: compare.py: ") and last.endswith(message), last
    assert not (tmp_path / "out").exists()


def test_score_translations_refuses_a_prepare_json_of_another_type(tmp_path, capsys):
    inputs = score_inputs(tmp_path)
    prepare = tmp_path / "data" / "prepare.json"
    for content in ("[1, 2]", '{"references": "moses"}', '{"references": {"postprocess": [1]}}'):
        prepare.write_text(content)
        assert score_translations.main([*inputs, "--output", str(tmp_path / "r.json")]) == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == (
            f"error: score_translations: {prepare}: expected an object whose references.postprocess is a list of "
            "names (it is written by data_prep; prepare the corpus again)")
    assert not (tmp_path / "r.json").exists()


# ---------------------------------------------------------------- checkpoints deleted while being averaged
ROTATE = """
import os, sys, time
directory, pool, keep = sys.argv[1], sys.argv[2:], 3
number = 0
while True:
    number += 1
    temporary = os.path.join(directory, f"checkpoint{number}.pt.tmp")
    os.link(pool[number % len(pool)], temporary)
    os.replace(temporary, os.path.join(directory, f"checkpoint{number}.pt"))  # as fairseq saves
    if number > keep:
        os.remove(os.path.join(directory, f"checkpoint{number - keep}.pt"))  # --keep-last-epochs 3
    time.sleep(0.002)
"""


def test_averaging_while_training_rotates_checkpoints_takes_a_consistent_set(genuine, tmp_path, caplog):
    """A real process rotates checkpointN.pt every 2 ms (checkpoint N holds the genuine weights times
    1 + N mod 4) while average_checkpoints runs again and again: each run averages exactly the files it
    names, or says in one line which file vanished; none fails otherwise."""
    base = torch.load(genuine, weights_only=True)
    pool = []
    for factor in range(4):
        state = torch.load(genuine, weights_only=True)
        state["model"] = {k: v * (1 + factor) if v.is_floating_point() else v for k, v in state["model"].items()}
        pool.append(tmp_path / f"pool{factor}.pt")
        torch.save(state, pool[-1])
    caplog.set_level(logging.INFO, logger="average_checkpoints")
    checkpoints, output = tmp_path / "checkpoints", tmp_path / "avg.pt"
    checkpoints.mkdir()
    rotator = subprocess.Popen([sys.executable, "-c", ROTATE, str(checkpoints), *map(str, pool)])
    try:
        while len(os.listdir(checkpoints)) < 3:
            time.sleep(0.01)
        averaged = 0
        for _ in range(6):
            caplog.clear()
            status = average_checkpoints.main(["--inputs", str(checkpoints), "--num-epoch-checkpoints", "3",
                                               "--output", str(output)])
            if status != 0:
                continue  # the one line is checked by the vanished-file case below
            names = re.search(r"averaging 3 checkpoints: (.*)", caplog.text).group(1).split(", ")
            factors = [1 + int(re.fullmatch(r"checkpoint(\d+)\.pt", name).group(1)) % 4 for name in names]
            weights = torch.load(output, weights_only=True)["model"]["encoder.embed_tokens.weight"]
            expected = base["model"]["encoder.embed_tokens.weight"] * sum(factors) / 3
            assert torch.allclose(weights, expected, atol=1e-5), (names, factors)
            averaged += 1
        assert averaged >= 3, "the rotation should rarely win the race against opening three files"
    finally:
        rotator.kill()
        rotator.wait()


def test_a_checkpoint_that_keeps_vanishing_is_named_in_one_line(tmp_path, capsys, monkeypatch):
    (tmp_path / "checkpoint7.pt").write_bytes(b"")
    real_open = average_checkpoints.open_checkpoint

    @contextlib.contextmanager
    def vanishing(path):  # the training deletes each listed file just before it is opened, and saves it again
        os.remove(path)
        try:
            with real_open(path) as handle:
                yield handle
        finally:
            open(path, "wb").close()
    monkeypatch.setattr(average_checkpoints, "open_checkpoint", vanishing)
    assert average_checkpoints.main(["--inputs", str(tmp_path), "--num-epoch-checkpoints", "1",
                                     "--output", str(tmp_path / "avg.pt")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: average_checkpoints.py: {tmp_path / 'checkpoint7.pt'} vanished before it could be opened, 5 "
        f"listings in a row: is a training deleting the checkpoints of {tmp_path} faster than they are listed?")
