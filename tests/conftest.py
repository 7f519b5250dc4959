"""Fixtures shared by every layer's tests; plain helpers are in helpers.py (this folder is on sys.path
because this file is here, so test modules in the subfolders import ``helpers`` directly)."""
import pytest
from hypothesis import HealthCheck, settings

# Property tests: a fixed, derandomised budget by default (the same examples on every run, fast enough
# for `make test`); `make test-deep` (pytest --hypothesis-profile=deep) searches far more widely.
settings.register_profile("ci", max_examples=150, derandomize=True, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
settings.register_profile("deep", max_examples=3000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
# `make mutate` runs the suite once per mutant: fewer examples, still derandomised.
settings.register_profile("mutate", max_examples=40, derandomize=True, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
settings.load_profile("ci")

from helpers import REPO, TINY_TRANSFORMER, USER_DIR, run_tool, write_toy_parallel


@pytest.fixture(scope="session")
def toy_data_bin(tmp_path_factory):
    """Binarised toy corpus (src -> tgt, joined dictionary) made by the real fairseq-preprocess."""
    root = tmp_path_factory.mktemp("toy")
    raw = write_toy_parallel(root / "raw")
    dest = root / "bin"
    run_tool("fairseq-preprocess", "--source-lang", "src", "--target-lang", "tgt",
             "--trainpref", raw / "train", "--validpref", raw / "valid", "--testpref", raw / "test",
             "--destdir", dest, "--joined-dictionary", "--workers", "1")
    return dest


@pytest.fixture(scope="session")
def genuine(toy_data_bin, tmp_path_factory):
    """A checkpoint written by fairseq-train (one update of a tiny Transformer)."""
    save_dir = tmp_path_factory.mktemp("genuine")
    run_tool("fairseq-train", toy_data_bin, "--user-dir", USER_DIR, "--task", "translation_encouraging",
             *TINY_TRANSFORMER, "--criterion", "encouraging_ls", "--label-smoothing", "0.1", "--optimizer", "adam",
             "--lr", "1e-3", "--max-tokens", "500", "--max-update", "1", "--cpu", "--save-dir", save_dir,
             "--no-epoch-checkpoints", "--disable-validation")
    return save_dir / "checkpoint_last.pt"


@pytest.fixture(scope="session", autouse=True)
def checkout_stays_clean():
    """Tools run from the repository root must write into temporary folders only: fairseq and hydra
    otherwise leave checkpoints/ and outputs/ behind in the checkout."""
    before = {entry.name for entry in REPO.iterdir()}
    yield
    left_behind = sorted({entry.name for entry in REPO.iterdir()} - before - {".pytest_cache"})
    assert not left_behind, f"the tests left {left_behind} in {REPO}"
