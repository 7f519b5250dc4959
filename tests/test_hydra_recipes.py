"""configs/RECIPE.yaml, the fairseq-hydra-train twins of the bash recipes: generated from them
(scripts/recipe_to_hydra.py), kept in step (a changed bash recipe fails the check), and the demo's
YAML trains exactly like scripts/train.sh demo."""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.conftest import BIN, REPO

KEEP_OUT = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "FP16", "NUM_GPUS", "VISIBLE_GPUS", "DATA_DIR", "RUNS_DIR",
            "CONFIG_DIR", "LOG_INTERVAL")


def clean_env(**extra):
    env = {key: value for key, value in os.environ.items() if key not in KEEP_OUT and not key.startswith("DEMO_")}
    env.update(PYTHON=sys.executable, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", **extra)
    return env


def generator(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-W", "ignore", "-m", "scripts.recipe_to_hydra", *map(str, args)],
                          cwd=cwd, env=clean_env(), capture_output=True, text=True)


def test_committed_yamls_are_what_the_bash_recipes_generate():
    proc = generator("--check")
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_a_changed_bash_recipe_makes_the_check_fail(tmp_path):
    configs = tmp_path / "configs"
    shutil.copytree(REPO / "configs", configs)
    recipe = configs / "demo.sh"
    recipe.write_text(recipe.read_text().replace('--lr "${DEMO_LR:-4e-3}"', '--lr "${DEMO_LR:-5e-3}"'))
    proc = generator("--check", "--config-dir", configs, "demo")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: recipe_to_hydra: {configs / 'demo.yaml'} differ")
    assert generator("--config-dir", configs, "demo").returncode == 0  # regenerating brings it back in step
    assert "- 0.005" in (configs / "demo.yaml").read_text()
    assert generator("--check", "--config-dir", configs, "demo").returncode == 0


def test_yaml_headers_give_the_overrides_for_more_gpus_with_the_same_batch():
    header = (REPO / "configs" / "wmt14_en_de.yaml").read_text()
    # 32768 tokens per update = 4096 x update-freq x GPUs
    assert "#   8 GPUs (same tokens per update): optimization.update_freq=[1] distributed_training.distributed_world_size=8" in header
    assert "#   8 GPUs: refused" in (REPO / "configs" / "iwslt17_fr_en.yaml").read_text()


def train_records(text):
    """fairseq's JSON train_inner records as fairseq-train and fairseq-hydra-train print them."""
    pattern = re.compile(r"(?:\| INFO \| train_inner \| |\[train_inner\]\[INFO\] - )(\{.*\})$")
    return [json.loads(m.group(1)) for m in map(pattern.search, text.splitlines()) if m]


@pytest.mark.slow
def test_demo_yaml_trains_exactly_like_train_sh(toy_data_bin, tmp_path):
    """The same updates, to the last logged digit, from scripts/train.sh demo and from
    fairseq-hydra-train with configs/demo.yaml (CPU, a few updates on the toy corpus)."""
    short = ["--max-update", "6", "--max-epoch", "2", "--log-interval", "1", "--no-save"]
    bash_run = subprocess.run(["bash", str(REPO / "scripts" / "train.sh"), "demo", "--data-dir", toy_data_bin.parent,
                               "--run-dir", tmp_path / "bash", "--", *short], cwd=REPO,
                              env=clean_env(VISIBLE_GPUS="0"), capture_output=True, text=True)
    assert bash_run.returncode == 0, bash_run.stderr[-3000:]
    expected = train_records((tmp_path / "bash" / "train.log").read_text())
    # run from the repository root, as documented; Hydra moves into hydra.run.dir (outside the checkout)
    hydra_run = subprocess.run(
        [str(BIN / "fairseq-hydra-train"), "--config-dir", str(REPO / "configs"), "--config-name", "demo",
         f"task.data={toy_data_bin}", "common.cpu=true", "common.fp16=false", "optimization.max_update=6",
         "optimization.max_epoch=2", "common.log_interval=1", "checkpoint.no_save=true",
         f"hydra.run.dir={tmp_path / 'hydra'}"],
        cwd=REPO, env=clean_env(), capture_output=True, text=True)
    assert hydra_run.returncode == 0, hydra_run.stderr[-3000:]
    got = train_records(hydra_run.stdout + hydra_run.stderr)
    assert len(expected) == 6 and [r["num_updates"] for r in got] == [r["num_updates"] for r in expected]
    timing = {"wall", "train_wall", "ups", "wps"}
    for mine, theirs in zip(got, expected):
        assert {k: v for k, v in mine.items() if k not in timing} == {k: v for k, v in theirs.items() if k not in timing}
    assert any("p_target" in record for record in expected)  # the diagnostics are compared too
    assert float(expected[0]["bonus_weight"]) == 1.0  # the encouraging loss, rho 1
