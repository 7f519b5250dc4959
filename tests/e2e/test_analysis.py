"""scripts/analyze_margins.py: per-token p, margin and rank under teacher forcing, checked against a
sentence-by-sentence computation here on a tiny trained model."""
import argparse
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers import REPO, TINY_TRANSFORMER, USER_DIR, run_tool

MODULE = ["-m", "scripts.analyze_margins"]


@pytest.fixture(scope="module")
def two_checkpoints(toy_data_bin, tmp_path_factory):
    """checkpoint1.pt and checkpoint2.pt of one tiny encouraging_ls training (two epochs)."""
    save_dir = tmp_path_factory.mktemp("analysis_ckpt")
    run_tool("fairseq-train", toy_data_bin, *TINY_TRANSFORMER, "--user-dir", USER_DIR, "--task", "translation",
             "--criterion", "encouraging_ls", "--label-smoothing", "0.1", "--log-end", "0.75", "--optimizer", "adam",
             "--lr", "3e-3", "--max-tokens", "1000", "--cpu", "--seed", "1", "--max-epoch", "2",
             "--no-progress-bar", "--save-dir", save_dir, "--num-workers", "0")
    return [save_dir / "checkpoint1.pt", save_dir / "checkpoint2.pt"]


def direct_statistics(checkpoint, data_bin):
    """p, margin and rank of every valid-set target token, one sentence at a time."""
    from fairseq import checkpoint_utils, utils
    utils.import_user_module(argparse.Namespace(user_dir=USER_DIR))
    [model], _, task = checkpoint_utils.load_model_ensemble_and_task([str(checkpoint)], arg_overrides={"data": str(data_bin)})
    model.eval()
    task.load_dataset("valid")
    dataset, eos = task.dataset("valid"), task.target_dictionary.eos()
    p, margin, rank, tokens = [], [], [], []
    with torch.no_grad():
        for index in range(len(dataset)):
            item = dataset[index]
            target = item["target"]
            previous = torch.cat([torch.tensor([eos]), target[:-1]])
            logits = model(item["source"][None], torch.tensor([len(item["source"])]), previous[None])[0][0]
            for position, token in enumerate(target.tolist()):
                row = logits[position].double()
                p.append(torch.softmax(row, 0)[token].item())
                order = torch.argsort(row, descending=True).tolist()
                best_other = order[0] if order[0] != token else order[1]
                margin.append((row[token] - row[best_other]).item())
                rank.append(order.index(token) + 1)
                tokens.append(token)
    return np.array(p), np.array(margin), np.array(rank), np.array(tokens), task.target_dictionary


@pytest.mark.slow
def test_analysis_matches_a_direct_computation(two_checkpoints, toy_data_bin, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, *MODULE, *map(str, two_checkpoints), "--data-dir", str(toy_data_bin),
                           "--subset", "valid", "--out-dir", str(out), "--max-tokens", "300", "--labels", "e1", "e2"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "margins.json").read_text())
    for label, checkpoint in zip(("e1", "e2"), two_checkpoints):
        entry = summary["models"][label]
        p, margin, rank, tokens, dictionary = direct_statistics(checkpoint, toy_data_bin)
        assert entry["log_end"] == 0.75  # read from the checkpoint's criterion settings
        assert entry["tokens"] == len(p) and entry["sentences"] == 40
        assert entry["mean_p"] == pytest.approx(p.mean(), abs=1e-5)
        assert entry["mean_margin"] == pytest.approx(margin.mean(), abs=1e-4)
        assert entry["median_margin"] == pytest.approx(np.median(margin), abs=1e-4)
        assert entry["share_p_gt_half"] == pytest.approx((p > 0.5).mean())
        assert entry["share_p_gt_log_end"] == pytest.approx((p > 0.75).mean())
        assert entry["share_rank1"] == pytest.approx((rank == 1).mean())
        assert entry["mean_rank"] == pytest.approx(rank.mean())
        assert entry["mean_margin_misranked"] == pytest.approx(margin[rank > 1].mean(), abs=1e-4)
        assert entry["mean_margin_misranked"] < 0
        # buckets: types sorted by training count; a type is "frequent" while the tokens before it
        # cover less than half of all training target tokens, "medium" below 90%, else "rare"
        counts = dictionary.count
        ordered = sorted(range(len(counts)), key=lambda t: (-counts[t], t))
        total, seen, bucket = sum(counts), 0, {}
        for token in ordered:
            share = seen / total
            bucket[token] = "frequent" if share < 0.5 else "medium" if share < 0.9 else "rare"
            seen += counts[token]
        for special in range(dictionary.nspecial):
            bucket[special] = "frequent"
        names = np.array([bucket[t] for t in tokens])
        for name in ("frequent", "medium", "rare"):
            part = entry["by_frequency"][name]
            assert part["tokens"] == (names == name).sum()
            if part["tokens"]:
                assert part["mean_margin"] == pytest.approx(margin[names == name].mean(), abs=1e-4)
                assert part["share_p_gt_half"] == pytest.approx((p[names == name] > 0.5).mean())
    assert summary["models"]["e1"]["mean_p"] != summary["models"]["e2"]["mean_p"]
    for name in ("histograms.png", "cdfs.png"):
        assert (out / name).read_bytes().startswith(b"\x89PNG")
    assert not list(out.glob("*partial*"))


def test_analysis_errors_name_the_culprit(tmp_path, toy_data_bin):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    cases = [
        ([str(bad)], "two or more"),
        ([str(bad), str(tmp_path / "missing")], str(tmp_path / "missing")),
        ([str(bad), str(bad), "--labels", "a", "b"], f"checkpoint {bad}"),
    ]
    for models, expected in cases:
        proc = subprocess.run([sys.executable, *MODULE, *models, "--data-dir", str(toy_data_bin),
                               "--out-dir", str(tmp_path / "out")], capture_output=True, text=True, cwd=REPO)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert proc.stderr.strip().splitlines()[-1].startswith("error: analyze_margins.py:")
        assert expected in proc.stderr
