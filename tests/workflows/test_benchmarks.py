"""The benchmarks run as modules from anywhere (python -m benchmarks.bench_loss), tiny sizes only:
this checks that they work, not how fast anything is."""
import subprocess
import sys

import pytest

from helpers import repo_env


@pytest.mark.slow
def test_bench_loss_runs_every_implementation(tmp_path):
    output = tmp_path / "table.md"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_loss", "--tokens", "64", "--vocab", "300",
                           "--repeats", "1", "--chunk-elements", "1000", "--output", str(output)],
                          cwd=tmp_path, env=repo_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split("|")[1:-1] for line in proc.stdout.splitlines() if line.startswith("| cpu")]
    assert [row[3].strip() for row in rows] == ["fairseq LS-CE", "EL reference", "EL fused",
                                                "EL fused, gradient over the logits"]
    for row in rows:
        float(row[4]), float(row[5]), float(row[6])  # time, time / LS-CE, peak: all measured
    assert rows[0][5].strip() == "1.00"
    assert output.read_text().startswith(proc.stdout.strip().splitlines()[-6])


@pytest.mark.slow
def test_bench_loss_runs_the_projection_cases(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_loss", "--projection", "--tokens", "64",
                           "--vocab", "300", "--hidden", "16", "--repeats", "1", "--chunk-elements", "1000",
                           "--block-elements", "3000"],
                          cwd=tmp_path, env=repo_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split("|")[1:-1] for line in proc.stdout.splitlines() if line.startswith("| cpu")]
    assert [row[2].strip() for row in rows] == ["64 x 300 x 16"] * 4
    assert [row[3].strip() for row in rows] == ["projection + fairseq LS-CE", "projection + EL fused",
                                                "torch linear_cross_entropy, chunked (CE, no smoothing)",
                                                "EL, projection fused (linear_encouraging_loss)"]
    for row in rows:
        float(row[4]), float(row[5]), float(row[6])  # time, time / baseline, peak: all measured
    assert rows[0][5].strip() == "1.00"


@pytest.mark.slow
def test_bench_train_runs_with_the_fused_projection(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_train", "--workdir", str(tmp_path / "work"),
                           "--settings", "baseline,fused-projection", "--vocab", "60", "--sentences", "300",
                           "--max-update", "4", "--log-interval", "1", "--max-tokens", "400", "--embed-dim", "16",
                           "--device", "cpu"],
                          cwd=tmp_path, env=repo_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in proc.stdout.splitlines()
            if line.startswith("| baseline") or line.startswith("| fused-projection")}
    assert sorted(rows) == ["baseline", "fused-projection"], proc.stdout[-3000:]
    for cells in rows.values():
        float(cells[0]), float(cells[2]), float(cells[4])  # words/s, peak memory, final loss: all measured
