"""scripts/sweep.py: arm names and fairseq arguments, and resuming a sweep, with stand-ins for
train.sh and evaluate.sh that record their calls (the real ones run in the demo's e2e tests)."""
import json
import os
import subprocess
import sys

import pytest

from helpers import REPO

from scripts.sweep import SweepError, parse_arm

FAKE_TRAIN = r"""#!/usr/bin/env bash
set -euo pipefail
recipe=$1; shift; baseline=0; seed=""; run_dir=""
while [[ $# -gt 0 ]]; do case "$1" in --baseline) baseline=1; shift;; --seed) seed=$2; shift 2;;
  --run-dir) run_dir=$2; shift 2;; --data-dir) shift 2;; --) shift; break;; *) exit 9;; esac; done
echo "train $run_dir baseline=$baseline seed=$seed args=$*" >> "$CALLS"
[[ "$run_dir" == *"${FAIL_ON:-none}" ]] && { echo "killed" >&2; exit 1; }
mkdir -p "$run_dir/checkpoints"; touch "$run_dir/checkpoints/checkpoint_last.pt"
loss=encouraging; [[ $baseline == 1 ]] && loss=baseline
printf '{"loss": "%s", "seed": %s, "tgt_lang": "tgt"}' "$loss" "$seed" > "$run_dir/run.json"
echo "fairseq_cli.train | done training in 1.0 seconds" >> "$run_dir/train.log"
"""
FAKE_EVALUATE = r"""#!/usr/bin/env bash
set -euo pipefail
run_dir=$1; echo "evaluate $run_dir" >> "$CALLS"; mkdir -p "$run_dir/eval"
for i in 0 1 2 3; do printf 'T-%s\ta b c d e %s\nH-%s\t-0.1\ta b c d %s %s\n' $i $i $i $i "${#run_dir}"; done > "$run_dir/eval/test.generate.txt"
echo '{"tokenized_bleu": 50.0, "sacrebleu": 49.0, "compound_split_bleu": null, "postprocess": []}' > "$run_dir/eval/test.results.json"
"""
ARMS = ["baseline", "le=0.75", "rho=0.5,schedule=linear,warmup=100"]


def test_arm_names_and_fairseq_arguments():
    assert parse_arm("baseline") == {"name": "baseline", "baseline": True, "settings": {}, "fairseq_args": []}
    arm = parse_arm("le=1.0,rho=0.5")
    assert arm["name"] == "el_le1.0_rho0.5" and arm["fairseq_args"] == ["--log-end", "1.0", "--bonus-rho", "0.5"]
    assert parse_arm("schedule=linear,warmup=300")["fairseq_args"] == [
        "--bonus-schedule", "linear", "--bonus-warmup-updates", "300"]
    assert parse_arm("baseline,epochs=6") == {"name": "baseline_epochs6", "baseline": True, "settings": {"epochs": "6"},
                                              "fairseq_args": ["--max-epoch", "6"]}
    assert parse_arm("el")["name"] == "el" and parse_arm("bonus=power,gamma=2")["fairseq_args"] == [
        "--bonus", "power", "--bonus-gamma", "2"]
    for bad, message in (("le", "not key=value"), ("baseline,le=0.5", "for a baseline"), ("foo=1", "unknown key"),
                         ("le=0.5,le=0.6", "twice"), ("le=a/b", "may hold only")):
        with pytest.raises(SweepError, match=message):
            parse_arm(bad)


def sweep(tmp_path, *extra, env=None):
    scripts = tmp_path / "fake"
    scripts.mkdir(exist_ok=True)
    (scripts / "train.sh").write_text(FAKE_TRAIN)
    (scripts / "evaluate.sh").write_text(FAKE_EVALUATE)
    full_env = dict(os.environ, PYTHON=sys.executable, CALLS=str(tmp_path / "calls.txt"),
                    SWEEP_TRAIN=str(scripts / "train.sh"), SWEEP_EVALUATE=str(scripts / "evaluate.sh"), **(env or {}))
    (tmp_path / "calls.txt").write_text("")
    return subprocess.run(["bash", str(REPO / "scripts" / "sweep.sh"), "demo", "--arms", *ARMS, "--seeds", "1-2",
                           "--runs-dir", str(tmp_path / "runs"), "--jobs", "2", *extra],
                          capture_output=True, text=True, env=full_env, cwd=REPO)


def calls(tmp_path):
    return (tmp_path / "calls.txt").read_text().splitlines()


def test_sweep_resumes_only_what_is_missing(tmp_path):
    runs = tmp_path / "runs" / "demo"
    first = sweep(tmp_path, env={"FAIL_ON": "el_le0.75/seed2"})
    assert first.returncode == 1
    assert f"error: sweep: 1 run(s) failed: {runs / 'el_le0.75' / 'seed2'}" in first.stderr
    assert len([c for c in calls(tmp_path) if c.startswith("train")]) == 6
    assert len([c for c in calls(tmp_path) if c.startswith("evaluate")]) == 5
    assert "ETA" in first.stderr and "6/6" in first.stderr
    train_call = next(c for c in calls(tmp_path) if "el_rho0.5_schedulelinear_warmup100/seed1" in c)
    assert "baseline=0 seed=1 args=--bonus-rho 0.5 --bonus-schedule linear --bonus-warmup-updates 100" in train_call
    assert "baseline=1 seed=2 args=" in next(c for c in calls(tmp_path) if "baseline/seed2" in c)
    assert not (runs / "comparison.json").exists()

    # a run trained but not evaluated when the sweep stopped: only evaluated next time
    os.remove(runs / "baseline" / "seed1" / "eval" / "test.results.json")
    second = sweep(tmp_path)
    assert second.returncode == 0, second.stderr
    assert sorted(calls(tmp_path)) == sorted([f"train {runs / 'el_le0.75' / 'seed2'} baseline=0 seed=2 args=--log-end 0.75",
                                              f"evaluate {runs / 'el_le0.75' / 'seed2'}",
                                              f"evaluate {runs / 'baseline' / 'seed1'}"])
    assert second.stderr.count("already evaluated, skipped") == 4
    summary = json.loads((runs / "comparison.json").read_text())
    assert summary["arms"] == ["baseline", "el_le0.75", "el_rho0.5_schedulelinear_warmup100"]
    assert len(summary["significance"]) == 3 and all(t["seeds"] == [1, 2] for t in summary["significance"])
    recorded = json.loads((runs / "el_le0.75" / "seed1" / "arm.json").read_text())
    assert recorded["fairseq_args"] == ["--log-end", "0.75"] and recorded["settings"] == {"le": "0.75"}

    # nothing left to do: no call at all
    third = sweep(tmp_path)
    assert third.returncode == 0 and calls(tmp_path) == []


def test_sweep_refuses_a_run_directory_made_for_other_settings(tmp_path):
    run = tmp_path / "runs" / "demo" / "el_le0.75" / "seed1"
    run.mkdir(parents=True)
    (run / "arm.json").write_text(json.dumps({"arm": "el_le0.75", "baseline": False, "fairseq_args": ["--log-end", "0.5"]}))
    proc = sweep(tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: sweep: {run / 'arm.json'} records other settings")
    assert calls(tmp_path) == []


def test_extra_fairseq_arguments_come_before_the_arms_own(tmp_path):
    proc = sweep(tmp_path, "--no-compare", "--", "--max-update", "5", "--lr", "1e-3")
    assert proc.returncode == 0, proc.stderr
    call = next(c for c in calls(tmp_path) if "el_le0.75/seed1" in c)
    assert call.endswith("args=--max-update 5 --lr 1e-3 --log-end 0.75")
    assert not (tmp_path / "runs" / "demo" / "comparison.json").exists()  # --no-compare


def test_sweep_script_errors_are_one_line():
    env = dict(os.environ, PYTHON=sys.executable)
    for args, expected in ((["--arms", "baseline"], "error: missing RECIPE"),
                           (["nope", "--arms", "baseline"], "error: unknown recipe 'nope'"),
                           (["demo", "--arms", "baseline", "le=2,rho"], "error: sweep: arm 'le=2,rho': 'rho' is not key=value"),
                           (["demo", "--arms", "le=0.5", "le=0.5"], "error: sweep: --arms: el_le0.5 given twice"),
                           (["demo", "--arms", "baseline", "--seeds", "3-1"], "error: sweep: --seeds 3-1: the range is empty")):
        proc = subprocess.run(["bash", str(REPO / "scripts" / "sweep.sh"), *args], capture_output=True, text=True,
                              env=env, cwd=REPO)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert proc.stderr.strip().splitlines()[-1].startswith(expected), proc.stderr
