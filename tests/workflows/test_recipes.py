"""The recipe scripts end to end on a reduced demo: scripts/demo.sh generates the synthetic corpus,
prepares it with data_prep, trains baseline and encouraging loss (scripts/train.sh), evaluates them
(scripts/evaluate.sh: checkpoint averaging, fairseq-generate, scoring) and compares them
(scripts/compare.sh). The numbers it reports are checked against independent computations."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import repo_env
import sacrebleu
import torch

from helpers import REPO

SCRIPTS = REPO / "scripts"
# Small enough that the reduced demo runs in about a minute on 2 cores, big enough to learn some words.
REDUCED_DEMO = {
    "DEMO_TRAIN_SIZE": "2000", "DEMO_VALID_SIZE": "60", "DEMO_TEST_SIZE": "80", "DEMO_VOCAB_SIZE": "600",
    "DEMO_DIM": "32", "DEMO_LAYERS": "1", "DEMO_MAX_EPOCH": "4", "DEMO_MAX_TOKENS": "1024",
    "DEMO_WARMUP": "20", "DEMO_LR": "1e-2", "DEMO_AVERAGE_LAST": "2", "DEMO_BEAM": "2", "DEMO_WORKERS": "1",
    "LOG_INTERVAL": "10", "DEMO_SEEDS": "1", "DEMO_ARMS": "baseline le=0.5",
}
# where the reduced demo's runs of each loss live (scripts/sweep.py names arms by their settings)
ARM_DIRS = {"baseline": "baseline", "encouraging": "el_le0.5"}


def run_script(script, *args, env=None, check=True):
    full_env = dict(os.environ, PYTHON=sys.executable, **(env or {}))
    proc = subprocess.run(["bash", str(SCRIPTS / script), *map(str, args)], cwd=REPO, env=full_env,
                          capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The reduced demo's output directory and its printed output."""
    out = tmp_path_factory.mktemp("demo")
    proc = run_script("demo.sh", env=dict(REDUCED_DEMO, DEMO_DIR=str(out)))
    return out, proc.stdout + proc.stderr


def generate_lines(path, prefix):
    lines = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.startswith(prefix):
            key, *fields = line.split("\t")
            lines[int(key[len(prefix):])] = fields[-1]
    return [lines[i] for i in sorted(lines)]


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["baseline", "encouraging"])
def test_evaluate_reports_bleu_that_sacrebleu_reproduces(demo, loss):
    out, _ = demo
    eval_dir = out / ARM_DIRS[loss] / "seed1" / "eval"
    results = json.loads((eval_dir / "test.results.json").read_text())
    hypotheses = generate_lines(eval_dir / "test.generate.txt", "H-")
    assert len(hypotheses) == int(REDUCED_DEMO["DEMO_TEST_SIZE"]) == results["sentences"]
    # fairseq's tokenised BLEU = unsmoothed BLEU on space-split decoded text; a model this small
    # scores near 0, so the n-gram precisions fairseq prints are compared too
    tokenised = sacrebleu.corpus_bleu(hypotheses, [generate_lines(eval_dir / "test.generate.txt", "T-")],
                                      tokenize="none", smooth_method="none", force=True)
    assert results["tokenized_bleu"] == pytest.approx(tokenised.score, abs=0.01)
    summary = re.search(r"BLEU4 = [0-9.]+, ([0-9.]+)/([0-9.]+)/([0-9.]+)/([0-9.]+)",
                        (eval_dir / "test.generate.txt").read_text())
    fairseq_precisions = [float(p) for p in summary.groups()]
    assert fairseq_precisions == pytest.approx(tokenised.precisions, abs=0.051)
    assert fairseq_precisions[0] > 5, "the reduced demo should have learned some words"
    # sacreBLEU against the corpus generator's own test references (no Moses step for the demo)
    references = (out / "corpus" / "test.tgt").read_text(encoding="utf-8").splitlines()
    expected = sacrebleu.corpus_bleu(hypotheses, [references])
    assert expected.score > 0 and results["sacrebleu"] == pytest.approx(expected.score, abs=0.01)
    assert results["sacrebleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    assert results["loss"] == loss and results["beam"] == REDUCED_DEMO["DEMO_BEAM"]


@pytest.mark.slow
def test_averaged_checkpoint_is_the_mean_of_the_last_epochs(demo, tmp_path):
    out, _ = demo
    checkpoints = out / ARM_DIRS["encouraging"] / "seed1" / "checkpoints"
    epochs = sorted(int(m.group(1)) for p in checkpoints.iterdir() if (m := re.fullmatch(r"checkpoint(\d+)\.pt", p.name)))
    assert len(epochs) == 2, "--keep-last-epochs 2 keeps two epoch checkpoints"
    output = tmp_path / "avg.pt"
    subprocess.run([sys.executable, str(SCRIPTS / "average_checkpoints.py"), "--inputs", str(checkpoints),
                    "--num-epoch-checkpoints", "2", "--output", str(output)], check=True, cwd=REPO,
                   env=repo_env(), capture_output=True)
    states = [torch.load(checkpoints / f"checkpoint{e}.pt", map_location="cpu", weights_only=False)["model"]
              for e in epochs]
    averaged = torch.load(output, map_location="cpu", weights_only=False)["model"]
    assert set(averaged) == set(states[0])
    float_keys = [k for k, v in states[0].items() if v.is_floating_point()]
    assert float_keys
    for key in float_keys:
        torch.testing.assert_close(averaged[key], (states[0][key] + states[1][key]) / 2, rtol=1e-6, atol=1e-7)
    assert any(not torch.equal(states[0][k], states[1][k]) for k in float_keys), "epochs must differ"
    # evaluate.sh averaged the same two checkpoints
    evaluated = torch.load(checkpoints / "checkpoint_avg_last2.pt", map_location="cpu", weights_only=False)["model"]
    for key in float_keys:
        torch.testing.assert_close(evaluated[key], averaged[key])


def test_average_checkpoints_errors_name_the_culprit(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPTS / "average_checkpoints.py"), "--inputs", str(tmp_path),
                           "--num-epoch-checkpoints", "3", "--output", str(tmp_path / "a.pt")],
                          cwd=REPO, env=repo_env(), capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: average_checkpoints.py: no checkpoints")
    assert str(tmp_path) in proc.stderr


@pytest.mark.slow
def test_compare_table_and_plot(demo):
    out, printed = demo
    summary = json.loads((out / "comparison.json").read_text())
    table = (out / "comparison.md").read_text()
    assert summary["arms"] == ["baseline", "el_le0.5"]
    for run in summary["runs"]:
        # the demo's runs sit beside its corpus, one folder per arm: DEMO_DIR/ARM/seedN
        assert Path(run["dir"]).resolve().parent.parent == out.resolve(), run["dir"]
        results = json.loads((Path(run["dir"]) / "eval" / "test.results.json").read_text())
        assert run["results"]["tokenized_bleu"] == results["tokenized_bleu"]
        metric = summary["metrics"]["tokenized_bleu"][run["arm"]]
        assert metric["mean"] == pytest.approx(results["tokenized_bleu"]) and metric["seeds"] == 1
        assert f"| {results['tokenized_bleu']:.2f} |" in table.split("## Runs")[0]
    # the paired test on the two runs' translations, recomputed here with sacreBLEU
    [test] = summary["significance"]
    eval_dirs = [out / ARM_DIRS[loss] / "seed1" / "eval" / "test.generate.txt"
                 for loss in ("baseline", "encouraging")]
    hypotheses = [generate_lines(path, "H-") for path in eval_dirs]
    bleu = [sacrebleu.corpus_bleu(h, [generate_lines(eval_dirs[0], "T-")], tokenize="none", smooth_method="none",
                                  force=True).score
            for h in hypotheses]
    assert test["pooled"]["delta"] == pytest.approx(bleu[1] - bleu[0], abs=0.011)
    assert 0 < test["pooled"]["p_value"] <= 1 and test["pooled"]["ci_low"] <= test["pooled"]["delta"] <= test["pooled"]["ci_high"]
    assert test["in_words"] in table and f"paired bootstrap, seeds pooled: {test['in_words']}" in printed
    png = (out / "comparison.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    # both runs logged the diagnostics the plot shows (the baseline is encouraging_ls with rho 0)
    for loss in ("baseline", "encouraging"):
        log = (out / ARM_DIRS[loss] / "seed1" / "train.log").read_text()
        assert re.search(r'"valid_p_target": "?[0-9.]+', log) and re.search(r'"p_gt_half": "?[0-9.]+', log)
    assert f"table: {out / 'comparison.md'}" in printed and f"plot:  {out / 'comparison.png'}" in printed
    assert re.search(r"baseline: tokenised BLEU [0-9.]+, sacreBLEU [0-9.]+ \(mean \+- std over 1 seeds", printed)
    assert re.search(r"el_le0.5: tokenised BLEU [0-9.]+, sacreBLEU [0-9.]+", printed)
    assert re.search(r"\[sweep\] 1/2 .*ETA", printed) and re.search(r"\[sweep\] 2/2 .*all runs done", printed)


def test_compare_mean_and_std_over_seeds(tmp_path):
    """compare.py on hand-made runs: mean, sample std and delta against values computed here."""
    scores = {"baseline": [30.0, 32.0, 34.0], "encouraging": [33.0, 33.5]}
    runs = []
    for loss, values in scores.items():
        for seed, value in enumerate(values, 1):
            run = tmp_path / loss / f"seed{seed}"
            (run / "eval").mkdir(parents=True)
            (run / "run.json").write_text(json.dumps({"loss": loss, "seed": seed}))
            (run / "eval" / "test.results.json").write_text(json.dumps(
                {"tokenized_bleu": value, "sacrebleu": value - 1, "compound_split_bleu": None,
                 "sacrebleu_signature": "sig"}))
            (run / "train.log").write_text(
                '2026-01-01 00:00:00 | INFO | valid | {"epoch": 1, "valid_nll_loss": "3.1", '
                '"valid_p_target": "0.4", "valid_p_gt_half": "0.3", "valid_num_updates": "10"}\n')
            runs.append(str(run))
    proc = subprocess.run([sys.executable, "-m", "scripts.compare", "--recipe", "x", "--runs", *runs,
                           "--out-dir", str(tmp_path / "out"), "--paper-baseline", "35.09 +- 0.07",
                           "--paper-encouraging", "35.50 +- 0.11", "--no-significance"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "out" / "comparison.json").read_text())["metrics"]
    assert metrics["tokenized_bleu"]["baseline"]["mean"] == pytest.approx(32.0)
    assert metrics["tokenized_bleu"]["baseline"]["std"] == pytest.approx(2.0)  # sample std of 30, 32, 34
    assert metrics["tokenized_bleu"]["encouraging"]["std"] == pytest.approx(0.5 / 2 ** 0.5)  # of 33, 33.5
    assert metrics["tokenized_bleu"]["encouraging"]["delta"] == pytest.approx(33.25 - 32.0)
    assert "compound_split_bleu" not in metrics
    table = (tmp_path / "out" / "comparison.md").read_text()
    assert "| baseline | recipe default | 1,2,3 | 32.00 +- 2.00 | - | 31.00 +- 2.00 | - | 35.09 +- 0.07 |" in table
    assert "| encouraging | recipe default | 1,2 | 33.25 +- 0.35 | +1.25 | 32.25 +- 0.35 | +1.25 | 35.50 +- 0.11 |" in table


def test_unknown_recipe_is_one_line_naming_it_and_the_known_ones():
    for script in ("train.sh", "compare.sh"):
        proc = run_script(script, "iwslt99_xx_yy", check=False)
        assert proc.returncode == 2
        assert proc.stderr.strip().splitlines() == [
            "error: unknown recipe 'iwslt99_xx_yy' (known: demo iwslt14_de_en iwslt17_fr_en wmt14_en_de; "
            f"recipes live in {REPO / 'configs'})"]


@pytest.mark.slow
def test_train_records_the_exact_command_and_cpu_fallback(demo):
    out, printed = demo
    run = out / "baseline" / "seed1"
    info = json.loads((run / "run.json").read_text())
    assert info["loss"] == "baseline" and info["seed"] == 1 and info["fp16"] is False and info["workers"] == 1
    command = (run / "command.sh").read_text()
    assert "fairseq_cli.train" in command and "--bonus-rho 0" in command and "--cpu" in command
    assert "--max-epoch 4" in command and "--log-format json" in command
    # the reduced demo's batch (DEMO_MAX_TOKENS) on one CPU worker: the whole update in one batch
    assert "--max-tokens 1024 --update-freq 1" in command and info["tokens_per_update"] == 1024
    assert "WARNING: no GPU visible; training on CPU in float32" in printed
    assert list((run / "tensorboard").rglob("events.out.tfevents.*"))


@pytest.mark.slow
def test_train_fp16_on_cpu_rehearses_the_gpu_path(demo, tmp_path):
    """FP16=1 without a GPU: a half-precision model under fairseq's dynamic loss scaler."""
    out, _ = demo
    run = tmp_path / "run"
    proc = run_script("train.sh", "demo", "--data-dir", out / "data", "--run-dir", run, "--",
                      "--max-update", "12", "--max-epoch", "1", "--log-interval", "4", "--no-save",
                      env=dict(REDUCED_DEMO, FP16="1"))
    assert json.loads((run / "run.json").read_text())["fp16"] is True
    records = [json.loads(line.split(" | ")[-1]) for line in (run / "train.log").read_text().splitlines()
               if "| train_inner |" in line]
    assert records and all("loss_scale" in r and r["loss"] != "nan" for r in records)
    assert float(records[-1]["loss"]) < float(records[0]["loss"])
    assert "half precision" in proc.stderr
