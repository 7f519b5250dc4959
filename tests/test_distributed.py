"""Data-parallel training on CPU: two gloo processes equal one process over the same batches."""
import socket

import pytest

from conftest import BIN, TINY_TRANSFORMER, USER_DIR, run_tool
from test_end_to_end import json_records

COMMON = [*TINY_TRANSFORMER, "--user-dir", USER_DIR, "--task", "translation", "--criterion", "encouraging_ls",
          "--label-smoothing", "0.1", "--dropout", "0", "--optimizer", "adam", "--lr", "2e-3", "--max-tokens", "600",
          "--max-update", "4", "--cpu", "--seed", "3", "--log-format", "json", "--log-interval", "1",
          "--no-progress-bar", "--no-save"]
COMPARED = ("loss", "nll_loss", "ce_loss", "bonus", "p_target", "p_gt_half", "margin", "bonus_weight", "ppl")


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_with_the_same_total_batch(toy_data_bin, tmp_path):
    # fairseq shards batches round-robin over ranks, so rank r of 2 sees the batches that one process
    # with --update-freq 2 accumulates in the same update; with dropout off the results must agree.
    # cwd: fairseq makes its default save dir (checkpoints/) even with --no-save
    single = run_tool("fairseq-train", toy_data_bin, *COMMON, "--update-freq", "2", cwd=tmp_path)
    parallel = run_tool("torchrun", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                        "--master_port", free_port(), BIN / "fairseq-train", toy_data_bin, *COMMON, cwd=tmp_path)
    parallel_log = parallel.stderr + parallel.stdout
    assert "CPU data parallel: rank 1 of 2, gloo backend, legacy_ddp" in parallel_log
    for kind in ("train_inner", "valid"):
        one = json_records(single.stderr + single.stdout, kind)
        # every rank logs; rank 0's records come first in the merged output or interleaved: take one copy
        two = json_records(parallel_log, kind)[: len(one)] if kind == "train_inner" else json_records(parallel_log, kind)
        assert len(one) >= (2 if kind == "train_inner" else 1) and len(two) >= len(one), (kind, len(one), len(two))
        for a, b in zip(one, two):
            prefix = "valid_" if kind == "valid" else ""
            for key in COMPARED:
                assert float(a[prefix + key]) == pytest.approx(float(b[prefix + key]), abs=2e-3), (kind, key, a, b)


@pytest.mark.slow
def test_a_bad_flag_under_torchrun_is_one_line_per_worker(toy_data_bin, tmp_path):
    """Each worker reports the mistake in one line; torchrun itself then reports the failed workers
    (its own traceback, from the launcher process, which the user-dir cannot reach)."""
    proc = run_tool("torchrun", "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", free_port(),
                    BIN / "fairseq-train", toy_data_bin, *COMMON, "--bonus-rho", "-1", cwd=tmp_path, check=False)
    assert proc.returncode != 0
    for rank in (0, 1):
        reported = [line for line in proc.stderr.splitlines() if line.startswith(f"[rank{rank}]: fairseq-train: error: ")]
        assert len(reported) == 1 and reported[0].split("error: ", 1)[1].startswith("--bonus-rho "), proc.stderr[-3000:]
        assert "-1" in reported[0]
    assert "fairseq_plugins" not in proc.stderr and "fairseq_cli" not in proc.stderr, "a worker printed a traceback"
