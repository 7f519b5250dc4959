"""A run killed mid-epoch and resumed from checkpoint_last.pt ends where an uninterrupted run ends."""
import signal
import subprocess
import time

import pytest
import torch

from helpers import BIN, REPO, TINY_TRANSFORMER, USER_DIR, json_records, repo_env, run_tool

# the bonus is warmed in linearly over updates 3..27, so the kill lands inside the schedule
TRAIN = [*TINY_TRANSFORMER, "--user-dir", USER_DIR, "--task", "translation_encouraging", "--bonus-schedule", "linear",
         "--bonus-start-update", "3", "--bonus-warmup-updates", "24", "--criterion", "encouraging_ls",
         "--label-smoothing", "0.1", "--optimizer", "adam", "--lr", "2e-3", "--lr-scheduler", "inverse_sqrt",
         "--warmup-updates", "10", "--max-tokens", "300", "--max-update", "36", "--save-interval-updates", "6",
         "--no-epoch-checkpoints", "--cpu", "--seed", "5", "--log-format", "json", "--log-interval", "1",
         "--no-progress-bar"]


def last_records(log):
    by_update = {int(r["num_updates"]): r for r in json_records(log, "train_inner")}
    return by_update, json_records(log, "valid")


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_end(toy_data_bin, tmp_path):
    reference = run_tool("fairseq-train", toy_data_bin, *TRAIN, "--save-dir", tmp_path / "whole")
    whole_updates, whole_valid = last_records(reference.stderr + reference.stdout)

    save_dir = tmp_path / "killed"
    env = repo_env()
    proc = subprocess.Popen([str(BIN / "fairseq-train"), str(toy_data_bin), *TRAIN, "--save-dir", str(save_dir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=REPO)
    deadline = time.time() + 300
    while not (save_dir / "checkpoint_last.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be interrupted"
    time.sleep(0.1)
    import fairseq_plugins  # noqa: F401  (allowlist for weights_only loading)
    state = torch.load(save_dir / "checkpoint_last.pt")
    interrupted_at = state["optimizer_history"][-1]["num_updates"]
    assert 0 < interrupted_at < 36
    assert state["extra_state"]["train_iterator"]["iterations_in_epoch"] > 0, "not interrupted mid-epoch"

    resumed = run_tool("fairseq-train", toy_data_bin, *TRAIN, "--save-dir", save_dir)
    resumed_log = resumed.stderr + resumed.stdout
    assert f"@ {interrupted_at} updates" in resumed_log
    resumed_updates, resumed_valid = last_records(resumed_log)
    assert min(resumed_updates) == interrupted_at + 1 and max(resumed_updates) == 36
    for update in range(interrupted_at + 1, 37):
        for key in ("loss", "nll_loss", "bonus", "bonus_weight", "p_target", "margin", "lr"):
            assert resumed_updates[update][key] == whole_updates[update][key], (update, key)
    for key in ("valid_loss", "valid_nll_loss", "valid_bonus", "valid_p_target", "valid_bonus_weight"):
        assert resumed_valid[-1][key] == whole_valid[-1][key], key
    # and the schedule is the closed form min(1, (n - 3) / 24) on both sides of the interruption
    for update in (interrupted_at, interrupted_at + 1, 36):
        expected = min(1.0, max(0, update - 3) / 24)
        assert float(whole_updates[update]["bonus_weight"]) == pytest.approx(expected, abs=1e-4)
