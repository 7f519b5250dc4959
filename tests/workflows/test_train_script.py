"""scripts/train.sh and scripts/evaluate.sh without training: the commands they build (--dry-run), the
batch split over GPUs and torchrun workers, and their refusals of bad input (one line, nothing left
behind). VISIBLE_GPUS fakes the GPU count that torch would report."""
import json
import os
import re
import socket
import subprocess
import sys
import time

import pytest

from helpers import REPO

SCRIPTS = REPO / "scripts"
RECIPES = ("iwslt14_de_en", "iwslt17_fr_en", "wmt14_en_de", "demo")
# The tokens per update of each recipe's one-GPU command: the paper's 4 x 4096 (IWSLT14) and 4096
# (IWSLT17), the scaling-NMT 8 x 4096 (WMT14), the demo's 2048.
ONE_GPU_TOKENS = {"iwslt14_de_en": 16384, "iwslt17_fr_en": 4096, "wmt14_en_de": 32768, "demo": 2048}
INHERITED = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "FP16", "NUM_GPUS", "VISIBLE_GPUS", "DATA_DIR", "RUNS_DIR",
             "DEMO_MAX_TOKENS", "CUDA_VISIBLE_DEVICES")


def run_script(script, *args, cwd=REPO, **env):
    full_env = {key: value for key, value in os.environ.items() if key not in INHERITED}
    full_env.update(PYTHON=sys.executable, **env)
    return subprocess.run(["bash", str(SCRIPTS / script), *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True)


def fake_corpus(tmp_path, lang="de"):
    data = tmp_path / "data"
    (data / "bin").mkdir(parents=True, exist_ok=True)
    (data / "bin" / f"dict.{lang}.txt").touch()
    return data


def dry_run(tmp_path, *args, recipe="iwslt14_de_en", **env):
    """train.sh --dry-run with the iwslt14 recipe on a fake prepared corpus: (command words, stderr)."""
    proc = run_script("train.sh", recipe, "--data-dir", fake_corpus(tmp_path), "--dry-run",
                      "--run-dir", tmp_path / "run", *args, **env)
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "run").exists()  # a dry run writes nothing
    return proc.stdout.split(), proc.stderr


def flag_values(command, flag):
    return [command[i + 1] for i, word in enumerate(command) if word == flag]


def recipe_batch_limits(recipe):
    """(MAX_TOKENS, MIN_MAX_TOKENS) as the recipe file sets them, read by bash itself."""
    proc = subprocess.run(["bash", "-c", f'source configs/{recipe}.sh && echo "$MAX_TOKENS $MIN_MAX_TOKENS"'],
                          cwd=REPO, capture_output=True, text=True, check=True,
                          env={k: v for k, v in os.environ.items() if k not in INHERITED})
    return tuple(map(int, proc.stdout.split()))


def can_split(total, workers, low, high):
    """Whether some per-GPU batch in [low, high] and whole accumulation steps give `total` exactly."""
    return any(total % (workers * tokens) == 0 for tokens in range(low, high + 1))


@pytest.mark.parametrize("recipe", RECIPES)
def test_tokens_per_update_do_not_depend_on_the_hardware(tmp_path, recipe):
    """max-tokens x update-freq x workers is the one-GPU value for 1, 2, 4, 8 GPUs and for torchrun
    workers, or train.sh refuses in one line listing the worker counts that work. Without a corpus."""
    high, low = recipe_batch_limits(recipe)
    cases = [dict(NUM_GPUS=str(n)) for n in (1, 2, 3, 4, 8)] + [dict(WORLD_SIZE=str(n), RANK="0") for n in (2, 8, 16)]
    accepted, refused = {}, {}
    for env in cases:
        workers = int(env.get("WORLD_SIZE", env.get("NUM_GPUS")))
        proc = run_script("train.sh", recipe, "--dry-run", DATA_DIR=str(tmp_path / "none"), VISIBLE_GPUS="8", **env)
        if proc.returncode == 0:
            command = proc.stdout.split()
            max_tokens, = map(int, flag_values(command, "--max-tokens"))
            update_freq, = map(int, flag_values(command, "--update-freq"))
            assert max_tokens * update_freq * workers == ONE_GPU_TOKENS[recipe], (env, max_tokens, update_freq)
            assert low <= max_tokens <= high
            assert f"no prepared corpus in {tmp_path / 'none'}" in proc.stderr
            accepted[workers] = command
        else:
            assert proc.returncode == 2
            lines = proc.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith(f"error: {recipe}: {ONE_GPU_TOKENS[recipe]} tokens per update")
            assert not can_split(ONE_GPU_TOKENS[recipe], workers, low, high), env
            listed = [int(n) for n in lines[0].split("worker counts that do: ")[1].split()]
            assert listed == [n for n in range(1, 65) if can_split(ONE_GPU_TOKENS[recipe], n, low, high)]
            refused[workers] = listed
    assert 1 in accepted and 3 in refused  # no recipe's batch splits over 3 workers
    # the one-GPU command keeps the recipe's full per-GPU batch
    assert flag_values(accepted[1], "--max-tokens") == [str(high)]


def test_batch_split_examples(tmp_path):
    """The split written out by hand for the cases the old rounding got wrong."""
    eight, _ = dry_run(tmp_path, NUM_GPUS="8", VISIBLE_GPUS="8")  # 16384 = 2048 x 1 x 8 (was 4096 x 1 x 8)
    assert flag_values(eight, "--max-tokens") == ["2048"] and flag_values(eight, "--update-freq") == ["1"]
    two, _ = dry_run(tmp_path, recipe="iwslt17_fr_en", NUM_GPUS="2", VISIBLE_GPUS="2")  # 4096 = 2048 x 1 x 2
    assert flag_values(two, "--max-tokens") == ["2048"] and flag_values(two, "--update-freq") == ["1"]
    custom, _ = dry_run(tmp_path, "--tokens-per-update", "12288", "--max-tokens", "3000", NUM_GPUS="0")
    assert flag_values(custom, "--max-tokens") == ["2048"] and flag_values(custom, "--update-freq") == ["6"]


def test_train_hardware_arguments_for_gpus_torchrun_and_cpu(tmp_path):
    """What train.sh hands fairseq-train per hardware (the GPU branches cannot run here)."""
    one_gpu, _ = dry_run(tmp_path, NUM_GPUS="1", VISIBLE_GPUS="4")
    assert "--fp16" in one_gpu and "--cpu" not in one_gpu and flag_values(one_gpu, "--update-freq") == ["4"]
    all_visible, _ = dry_run(tmp_path, VISIBLE_GPUS="4")  # NUM_GPUS defaults to every visible GPU
    assert flag_values(all_visible, "--distributed-world-size") == ["4"] and flag_values(all_visible, "--update-freq") == ["1"]
    torchrun, printed = dry_run(tmp_path, VISIBLE_GPUS="1", WORLD_SIZE="2", RANK="1")
    assert flag_values(torchrun, "--update-freq") == ["2"] and "--distributed-world-size" not in torchrun
    assert "rank 1 of 2" in printed
    no_fp16, _ = dry_run(tmp_path, NUM_GPUS="2", VISIBLE_GPUS="2", FP16="0")
    assert "--fp16" not in no_fp16
    cpu, printed = dry_run(tmp_path, VISIBLE_GPUS="0")
    assert "--cpu" in cpu and "--fp16" not in cpu and "training on CPU in float32" in printed
    assert flag_values(cpu, "--update-freq") == ["4"]
    cpu_half, printed = dry_run(tmp_path, NUM_GPUS="0", FP16="1")
    assert {"--cpu", "--fp16", "--fp16-no-flatten-grads"} <= set(cpu_half) and "half precision" in printed
    extra, _ = dry_run(tmp_path, "--", "--max-update", "7", NUM_GPUS="0")
    assert flag_values(extra, "--max-update")[-1] == "7"  # extra arguments come last and win
    _, printed = dry_run(tmp_path, "--", "--update-freq", "2", NUM_GPUS="0")
    assert "'--update-freq' after -- overrides the batch split: tokens per update are no longer 16384" in printed
    # a dry run for more GPUs than this machine has previews the command and says so
    preview, printed = dry_run(tmp_path, NUM_GPUS="8", VISIBLE_GPUS="0")
    assert flag_values(preview, "--distributed-world-size") == ["8"] and "a real run would refuse" in printed


def test_dry_run_without_a_corpus_says_so_and_prints_the_command(tmp_path):
    proc = run_script("train.sh", "iwslt14_de_en", "--dry-run", "--data-dir", tmp_path / "nothing",
                      "--run-dir", tmp_path / "run", VISIBLE_GPUS="0")
    assert proc.returncode == 0, proc.stderr
    assert (f"no prepared corpus in {tmp_path / 'nothing'} (missing bin/dict.de.txt); make it with: "
            "data_prep/prepare_iwslt14_de_en.sh --out-dir data/iwslt14.de-en") in proc.stderr
    command = proc.stdout.split()
    assert command[1:4] == ["-m", "fairseq_cli.train", str(tmp_path / "nothing" / "bin")]
    assert not (tmp_path / "run").exists()


def test_train_without_prepared_data_says_how_to_make_it(tmp_path):
    proc = run_script("train.sh", "iwslt14_de_en", "--data-dir", tmp_path / "nothing", "--run-dir", tmp_path / "run")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: no prepared corpus in {tmp_path / 'nothing'} (missing bin/dict.de.txt); "
        f"make it with: data_prep/prepare_iwslt14_de_en.sh --out-dir data/iwslt14.de-en"]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("env, message", [
    (dict(NUM_GPUS="abc"), "error: NUM_GPUS must be a non-negative integer, got 'abc'"),
    (dict(FP16="2"), "error: FP16 must be auto, 0 or 1, got '2'"),
    (dict(NUM_GPUS="08"), "error: NUM_GPUS must be a non-negative integer, got '08'"),  # not bash's octal error
    (dict(WORLD_SIZE="two"), "error: WORLD_SIZE (set by torchrun) must be a positive integer, got 'two'"),
    (dict(VISIBLE_GPUS="x"), "error: VISIBLE_GPUS must be a non-negative integer, got 'x'"),
    (dict(NUM_GPUS="2", VISIBLE_GPUS="0"),
     "error: NUM_GPUS=2 but torch sees 0 GPU(s) (CUDA_VISIBLE_DEVICES=unset); set NUM_GPUS=0 or fewer"),
    (dict(NUM_GPUS="3", VISIBLE_GPUS="4"), "error: iwslt14_de_en: 16384 tokens per update do not split exactly over "
     "3 workers into per-GPU batches of 1024..4096 tokens; worker counts that do: 1 2 4 8 16"),
])
def test_bad_settings_are_refused_in_one_line_before_anything_is_created(tmp_path, env, message):
    env.setdefault("VISIBLE_GPUS", "0")
    run = tmp_path / "runs" / "run"
    proc = run_script("train.sh", "iwslt14_de_en", "--data-dir", fake_corpus(tmp_path), "--run-dir", run, **env)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [message]
    assert not (tmp_path / "runs").exists()


def test_unknown_option_values_are_refused():
    for args, message in ((["--tokens-per-update", "0"], "--tokens-per-update needs a positive integer"),
                          (["--max-tokens", "100"], "--max-tokens 100 is below the recipe's MIN_MAX_TOKENS 1024")):
        proc = run_script("train.sh", "iwslt14_de_en", "--dry-run", *args)
        assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [f"error: {message}"]


# evaluate.sh

def evaluation_run(tmp_path, data_dir, record=None):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    if record is None:
        record = {"recipe": "demo", "loss": "baseline", "seed": 1, "data_dir": str(data_dir)}
    (run / "run.json").write_text(json.dumps(record) if isinstance(record, dict) else record)
    return run


@pytest.mark.parametrize("content, complaint", [
    ('{"recipe": "demo", "loss": ', "not valid JSON (Expecting value: line 1 column 28 (char 27))"),
    ("", "not valid JSON (Expecting value: line 1 column 1 (char 0))"),
    ('["demo"]', "expected a JSON object, got list"),
    ('{"loss": "baseline", "seed": 1, "data_dir": "x"}', "field 'recipe' is missing or not a one-line value (got None)"),
    ('{"recipe": "demo", "loss": "baseline", "seed": 1}', "field 'data_dir' is missing"),
])
def test_evaluate_names_a_damaged_run_json_in_one_line(tmp_path, content, complaint):
    run = evaluation_run(tmp_path, tmp_path, record=content)
    proc = run_script("evaluate.sh", run)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: run_json: {run / 'run.json'}: {complaint}"), lines
    assert not (run / "eval").exists()


def test_evaluate_leaves_no_temporary_files_after_a_failure_and_removes_only_its_own(tmp_path, toy_data_bin):
    """fairseq-generate fails (a checkpoint that is not one): no temporary file stays behind; those an
    earlier killed evaluation left (its own names, any PID: one of a zombie too, which `kill -0` counts
    as alive) are removed, and the user's files are not, even when they look like temporaries."""
    run = evaluation_run(tmp_path, toy_data_bin.parent)
    eval_dir = run / "eval"
    eval_dir.mkdir()
    zombie = subprocess.Popen(["true"])  # exits at once; not waited for until the end, so a zombie
    time.sleep(0.2)
    stale = [eval_dir / ".test.results.json.999999999.partial", eval_dir / ".valid.generate.txt.12.partial",
             eval_dir / f".test.hyp.detok.tgt.{zombie.pid}.partial",
             run / "checkpoints" / ".checkpoint_avg_last5.pt.77.partial",
             # scripts/atomic_io.py's names on this host (.NAME.HOST.RANDOM.PID.partial)
             eval_dir / f".test.results.json.{socket.gethostname()}.0badcafe.999999998.partial"]
    users = ["notes.tmp", "test.generate.txt.tmp", ".draft.abc.partial", ".test.results.json.mine.partial",
             ".test.results.json.another-host.0badcafe.12.partial"]
    for path in stale + [eval_dir / name for name in users]:
        path.write_text("half")
    (eval_dir / "test.generate.txt").write_text("an earlier complete output\n")
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    proc = run_script("evaluate.sh", run, "--checkpoint", broken)
    assert proc.returncode != 0
    assert sorted(p.name for p in eval_dir.iterdir()) == sorted(["test.generate.txt", *users]), proc.stderr[-2000:]
    assert (eval_dir / "test.generate.txt").read_text() == "an earlier complete output\n"
    assert not [path.name for path in stale if path.exists()]
    zombie.wait()


def test_evaluate_refuses_a_run_whose_corpus_is_gone(tmp_path):
    run = evaluation_run(tmp_path, tmp_path / "moved")
    proc = run_script("evaluate.sh", run)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {run / 'run.json'}: its data_dir {tmp_path / 'moved'} has no prepared corpus (missing bin/dict.tgt.txt)"]


def test_evaluate_help_lists_every_output():
    usage = run_script("evaluate.sh", "-h").stdout
    for output in ("checkpoint_avg_lastN.pt", "SUBSET.generate.txt", "SUBSET.hyp.detok.TGT", "SUBSET.results.json"):
        assert output in usage
