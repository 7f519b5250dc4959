"""fairseq-train / resume / generate / hydra-train with the user-dir, and checkpoint loading."""
import json
import math
import re
import subprocess
import sys

import pytest
import sacrebleu
import torch

from helpers import REPO, TINY_TRANSFORMER, USER_DIR, json_records, run_tool

TRAIN_ARGS = [*TINY_TRANSFORMER, "--user-dir", USER_DIR, "--task", "translation", "--criterion", "encouraging_ls",
              "--label-smoothing", "0.1", "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--lr", "3e-3",
              "--max-tokens", "1000", "--cpu", "--seed", "1", "--log-format", "json", "--log-interval", "5",
              "--no-progress-bar", "--no-epoch-checkpoints", "--report-accuracy"]



@pytest.fixture(scope="module")
def trained(toy_data_bin, tmp_path_factory):
    save_dir = tmp_path_factory.mktemp("ckpt")
    first = run_tool("fairseq-train", toy_data_bin, *TRAIN_ARGS, "--max-update", "40", "--save-dir", save_dir)
    return save_dir, first.stderr + first.stdout


@pytest.mark.slow
def test_train_loss_is_finite_and_falls(trained):
    _, log = trained
    records = json_records(log, "train_inner")
    assert len(records) >= 6
    losses = [float(r["loss"]) for r in records]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 0.5, losses
    # the criterion's own metrics reach fairseq's log
    for key in ("nll_loss", "ppl", "ce_loss", "bonus", "p_target", "p_gt_half", "margin", "bonus_weight", "accuracy"):
        assert key in records[-1], key
    assert float(records[-1]["bonus"]) < 0


@pytest.mark.slow
@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_fp16_training_follows_the_float32_run(trained, toy_data_bin, tmp_path, impl):
    """fairseq's --fp16 (half model, dynamic loss scaling) on CPU, where it needs
    --fp16-no-flatten-grads: the fused loss there keeps the gradient in the half logits' memory
    with a per-row scale and multiplies in the loss scale in place. Both paths must follow the
    float32 run of the same seed update for update, to the precision of the log."""
    _, float32_log = trained
    half = run_tool("fairseq-train", toy_data_bin, *TRAIN_ARGS, "--max-update", "40", "--save-dir", tmp_path,
                    "--no-save", "--fp16", "--fp16-no-flatten-grads", "--el-impl", impl)
    half_records, float32_records = json_records(half.stderr + half.stdout, "train_inner"), json_records(float32_log, "train_inner")
    assert [r["num_updates"] for r in half_records] == [r["num_updates"] for r in float32_records]
    assert all(float(r["loss_scale"]) >= 1 for r in half_records) and "loss_scale" not in float32_records[0]
    for got, want in zip(half_records, float32_records):
        for key in ("loss", "nll_loss", "ce_loss", "bonus", "p_target", "gnorm"):
            assert float(got[key]) == pytest.approx(float(want[key]), rel=5e-3, abs=0.02), (key, got, want)
        # a percentage; half-precision logits flip the argmax of a few near ties
        assert float(got["accuracy"]) == pytest.approx(float(want["accuracy"]), abs=0.5), (got, want)


@pytest.mark.slow
def test_resume_from_checkpoint_last_continues(trained, toy_data_bin):
    save_dir, _ = trained
    resumed = run_tool("fairseq-train", toy_data_bin, *TRAIN_ARGS, "--max-update", "50", "--save-dir", save_dir)
    log = resumed.stderr + resumed.stdout
    assert "Loaded checkpoint" in log and "@ 40 updates" in log
    updates = [int(r["num_updates"]) for r in json_records(log, "train_inner")]
    assert updates and min(updates) > 40 and max(updates) == 50


@pytest.mark.slow
def test_generate_translates_the_test_set(trained, toy_data_bin):
    save_dir, _ = trained
    proc = run_tool("fairseq-generate", toy_data_bin, "--user-dir", USER_DIR, "--path", save_dir / "checkpoint_last.pt",
                    "--gen-subset", "test", "--beam", "2", "--batch-size", "16", "--cpu")
    lines = proc.stdout.splitlines()
    hypotheses = {int(line[2:].split("\t")[0]): line.split("\t")[2] for line in lines if line.startswith("H-")}
    references = {int(line[2:].split("\t")[0]): line.split("\t")[1] for line in lines if line.startswith("T-")}
    assert sorted(hypotheses) == sorted(references) == list(range(40)), "every test sentence translated once"
    # the BLEU fairseq prints is the corpus BLEU of exactly these hypotheses against these references
    # (its score, n-gram precisions and brevity penalty: after 40 updates the 4-gram score may still be 0)
    match = re.search(r"BLEU4? = ([0-9.]+), ([0-9.]+)/([0-9.]+)/([0-9.]+)/([0-9.]+) \(BP=([0-9.]+)", proc.stdout)
    expected = sacrebleu.corpus_bleu([hypotheses[i] for i in range(40)], [[references[i] for i in range(40)]],
                                     tokenize="none", smooth_method="none", force=True)
    printed = [float(value) for value in match.groups()]
    assert printed[0] == pytest.approx(expected.score, abs=0.01)
    assert printed[1:5] == pytest.approx(expected.precisions, abs=0.1)
    assert printed[5] == pytest.approx(expected.bp, abs=0.001)
    assert expected.precisions[0] > 0, "40 updates on the toy pair should get some words right"


@pytest.mark.slow
def test_checkpoint_loads_weights_only_only_with_the_allowlist(trained):
    save_dir, _ = trained
    path = save_dir / "checkpoint_last.pt"
    probe = ("import sys, torch\n"
             "if sys.argv[1] == 'with': import fairseq_plugins\n"
             "state = torch.load(sys.argv[2], weights_only=True)\n"
             "print(sorted(state))\n")
    env = {"PYTHONPATH": str(REPO)}
    without = subprocess.run([sys.executable, "-c", probe, "without", str(path)], capture_output=True, text=True, env=env)
    assert without.returncode != 0 and "argparse.Namespace" in without.stderr
    with_allowlist = subprocess.run([sys.executable, "-c", probe, "with", str(path)], capture_output=True, text=True,
                                    env=env)
    assert with_allowlist.returncode == 0, with_allowlist.stderr[-2000:]
    assert "'model'" in with_allowlist.stdout and "'optimizer_history'" in with_allowlist.stdout


@pytest.mark.slow
def test_hydra_yaml_config_sets_the_criterion(toy_data_bin, tmp_path):
    config = tmp_path / "encouraging.yaml"
    config.write_text(f"""
common: {{cpu: true, seed: 1, user_dir: {USER_DIR}, log_format: json, log_interval: 1}}
task: {{_name: translation, data: {toy_data_bin}, source_lang: src, target_lang: tgt}}
criterion: {{_name: encouraging_ls, label_smoothing: 0.1, log_end: 0.75, bonus_rho: 0.5}}
model: {{_name: transformer, encoder_layers: 1, decoder_layers: 1, encoder_embed_dim: 32, decoder_embed_dim: 32,
        encoder_ffn_embed_dim: 64, decoder_ffn_embed_dim: 64, encoder_attention_heads: 2, decoder_attention_heads: 2}}
optimizer: {{_name: adam}}
lr_scheduler: {{_name: fixed}}
optimization: {{max_update: 3, lr: [0.001]}}
dataset: {{max_tokens: 1000}}
checkpoint: {{save_dir: {tmp_path / 'ckpt'}, no_save: true}}
""")
    # hydra writes its outputs/ folder into the working directory: keep it out of the checkout
    proc = run_tool("fairseq-hydra-train", "--config-dir", tmp_path, "--config-name", "encouraging", cwd=tmp_path)
    log = proc.stderr + proc.stdout
    assert "'_name': 'encouraging_ls'" in log and "'log_end': 0.75" in log and "'bonus_rho': 0.5" in log
    records = json_records(log, "train_inner")
    assert records and all(float(r["bonus_weight"]) == 0.5 for r in records)


def test_checkpoint_that_would_run_code_is_refused(tmp_path):
    import fairseq_plugins  # noqa: F401  (installs the allowlist and the clear errors)
    from fairseq import checkpoint_utils
    from fairseq_plugins.checkpoints import CheckpointLoadError

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (marker.touch, ())

    crafted = tmp_path / "checkpoint_evil.pt"
    torch.save({"model": {}, "extra": Payload()}, crafted)
    with pytest.raises(CheckpointLoadError, match=f"refusing to load checkpoint {crafted}"):
        checkpoint_utils.load_checkpoint_to_cpu(str(crafted))
    assert not marker.exists()


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    import fairseq_plugins  # noqa: F401
    from fairseq import checkpoint_utils
    from fairseq_plugins.checkpoints import CheckpointLoadError

    good = tmp_path / "good.pt"
    torch.save({"model": {"w": torch.randn(64, 64)}, "args": None}, good)
    truncated = tmp_path / "checkpoint_last.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointLoadError, match=f"checkpoint {truncated} is truncated or corrupt"):
        checkpoint_utils.load_checkpoint_to_cpu(str(truncated))


def test_checkpoint_copies_never_leave_a_half_written_file(tmp_path, monkeypatch):
    import shutil

    import fairseq_plugins  # noqa: F401
    from fairseq.file_io import PathManager

    source, last = tmp_path / "checkpoint3.pt", tmp_path / "checkpoint_last.pt"
    source.write_bytes(b"new" * 1000)
    last.write_bytes(b"previous good checkpoint")

    def copy_that_dies_half_way(src, dst):
        with open(dst, "wb") as out:
            out.write(b"ne")
        raise KeyboardInterrupt  # the run is killed during the copy

    monkeypatch.setattr(shutil, "copyfile", copy_that_dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        PathManager.copy(str(source), str(last), overwrite=True)
    assert last.read_bytes() == b"previous good checkpoint"
    monkeypatch.undo()
    assert PathManager.copy(str(source), str(last), overwrite=True)
    assert last.read_bytes() == source.read_bytes()


def test_numpy_values_fairseq_keeps_in_checkpoints_load_weights_only(tmp_path):
    import numpy as np

    import fairseq_plugins  # noqa: F401

    path = tmp_path / "checkpoint_best.pt"
    saved = {"extra_state": {"metrics": {"_bleu_counts": np.array([3, 2, 1, 0]), "best": np.float64(27.5),
                                         "ratio": np.float32(0.5), "n": np.int64(7)}}}
    torch.save(saved, path)
    loaded = torch.load(path)  # weights_only=True, the torch >= 2.6 default
    assert loaded["extra_state"]["metrics"]["_bleu_counts"].tolist() == [3, 2, 1, 0]
    assert loaded["extra_state"]["metrics"]["best"] == 27.5 and loaded["extra_state"]["metrics"]["n"] == 7
