"""Bad input a user can give the task and the criterion: one line on stderr that names the culprit,
a non-zero exit, no traceback."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, TINY_TRANSFORMER, USER_DIR, run_tool

import encouraging_loss.options
from fairseq_plugins.errors import FlagError, one_line_message
from fairseq_plugins.tasks.translation_encouraging import check_data_dirs

# The core library rejects non-finite values itself (OptionError, with the field it checks).
CORE_REJECTS_NON_FINITE = hasattr(encouraging_loss.options, "OptionError")
needs_core_finite_check = pytest.mark.skipif(not CORE_REJECTS_NON_FINITE,
                                             reason="the core library's OptionError rejects inf (not merged yet)")


def test_missing_data_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"^data directory {tmp_path / 'nope'} does not exist$"):
        check_data_dirs(str(tmp_path / "nope"), None, None)


def test_directory_without_dictionaries(tmp_path):
    (tmp_path / "train.de").write_text("raw text, not binarised\n")
    with pytest.raises(FileNotFoundError, match="has no dict.*txt: it is not fairseq-preprocess output"):
        check_data_dirs(str(tmp_path), None, None)


def test_language_pair_that_is_not_there_lists_the_ones_that_are(toy_data_bin):
    with pytest.raises(FileNotFoundError, match=r"^--target-lang en: .* has no dict.en.txt \(its languages: src, tgt\)$"):
        check_data_dirs(str(toy_data_bin), "src", "en")


def test_fairseq_train_stops_on_a_mismatched_pair_with_one_line(toy_data_bin, tmp_path):
    proc = run_tool("fairseq-train", toy_data_bin, "--user-dir", USER_DIR, "--task", "translation_encouraging",
                    "--source-lang", "de", "--target-lang", "tgt", *TINY_TRANSFORMER, "--criterion", "encouraging_ls",
                    "--optimizer", "adam", "--lr", "1e-3", "--max-tokens", "500", "--cpu", "--save-dir", tmp_path,
                    check=False)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        f"fairseq-train: error: --source-lang de: {toy_data_bin} has no dict.de.txt (its languages: src, tgt)"]
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------- every out-of-range value, one line each
ENCOURAGING = ["--task", "translation_encouraging", "--criterion", "encouraging_ls"]
LINEAR = [*ENCOURAGING, "--bonus-schedule", "linear", "--bonus-warmup-updates", "4"]
EXP = [*ENCOURAGING, "--bonus-schedule", "exp", "--bonus-warmup-updates", "4"]
# (extra arguments, the flag the line must name, the value it must quote)
BAD_VALUES = [
    (["--log-end", "1.5"], "--log-end", "1.5"),
    (["--log-end", "0"], "--log-end", "0"),
    (["--log-end", "nan"], "--log-end", "nan"),
    (["--bonus-rho", "-1"], "--bonus-rho", "-1"),
    (["--bonus-rho", "nan"], "--bonus-rho", "nan"),
    pytest.param(["--bonus-rho", "inf"], "--bonus-rho", "inf", marks=needs_core_finite_check),
    (["--label-smoothing", "1.0"], "--label-smoothing", "1.0"),
    (["--label-smoothing", "-0.1"], "--label-smoothing", "-0.1"),
    (["--el-label-smoothing", "1.5"], "--el-label-smoothing", "1.5"),
    (["--el-label-smoothing", "-0.5"], "--el-label-smoothing", "-0.5"),
    (["--bonus", "power", "--bonus-gamma", "0"], "--bonus-gamma", "0"),
    (["--bonus", "power", "--bonus-gamma", "-2"], "--bonus-gamma", "-2"),
    pytest.param(["--bonus", "power", "--bonus-gamma", "inf"], "--bonus-gamma", "inf", marks=needs_core_finite_check),
    (["--bonus-start", "1"], "--bonus-start", "1"),
    (["--bonus-start", "-0.5"], "--bonus-start", "-0.5"),
    ([*ENCOURAGING, "--bonus-schedule", "linear", "--bonus-warmup-updates", "-5"], "--bonus-warmup-updates", "-5"),
    ([*LINEAR, "--bonus-start-update", "-1"], "--bonus-start-update", "-1"),
    ([*EXP, "--bonus-exp-ratio", "0"], "--bonus-exp-ratio", "0"),
    ([*EXP, "--bonus-exp-ratio", "inf"], "--bonus-exp-ratio", "inf"),
    ([*EXP, "--bonus-exp-ratio", "nan"], "--bonus-exp-ratio", "nan"),
    ([*ENCOURAGING, "--bonus-warmup-updates", "5"], "--bonus-warmup-updates", "5"),  # constant schedule
    ([*ENCOURAGING, "--diagnostics-interval", "0"], "--diagnostics-interval", "0"),
    ([*ENCOURAGING, "--diagnostics-interval", "-3"], "--diagnostics-interval", "-3"),
    (["--task", "translation_encouraging", "--criterion", "label_smoothed_cross_entropy", "--bonus-schedule",
      "linear", "--bonus-warmup-updates", "5"], "--bonus-schedule", "linear"),
    (["--task", "translation_encouraging", "--criterion", "label_smoothed_cross_entropy",
      "--diagnostics-interval", "5"], "--diagnostics-interval", "label_smoothed_cross_entropy"),
]

# One interpreter imports fairseq once; each case then runs fairseq-train's entry point in a forked
# child, as the top level of its own process: an uncaught exception goes to sys.excepthook (the
# user-dir's, installed when fairseq imports it for --user-dir), and the exit status is 1.
FORKING_DRIVER = r"""
import json, os, sys
from fairseq_cli.train import cli_main
results = []
for index, argv in enumerate(json.loads(sys.argv[1])):
    err_path = os.path.join(sys.argv[2], f"{index}.err")
    pid = os.fork()
    if pid == 0:
        with open(err_path, "w") as err, open(os.devnull, "w") as out:
            os.dup2(err.fileno(), 2)
            os.dup2(out.fileno(), 1)
        sys.argv = ["fairseq-train", *argv]
        try:
            cli_main()
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
        except BaseException:
            sys.excepthook(*sys.exc_info())
            code = 1
        sys.stderr.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    results.append([os.waitstatus_to_exitcode(status), open(err_path).read()])
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def bad_value_runs(toy_data_bin, tmp_path_factory):
    """stderr and exit status of fairseq-train for every case of BAD_VALUES (skipped ones included)."""
    root = tmp_path_factory.mktemp("bad_values")
    common = [str(toy_data_bin), "--user-dir", USER_DIR, *TINY_TRANSFORMER, "--optimizer", "adam", "--lr", "1e-3",
              "--max-tokens", "500", "--max-update", "1", "--cpu", "--no-save", "--save-dir", str(root / "save")]
    cases = [case.values[0] if hasattr(case, "values") else case[0] for case in BAD_VALUES]
    argvs = [common + (extra if "--criterion" in extra else ["--criterion", "encouraging_ls", *extra])
             for extra in cases]
    proc = subprocess.run([sys.executable, "-c", FORKING_DRIVER, json.dumps(argvs), str(root)], cwd=root,
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = json.loads(proc.stdout.strip().splitlines()[-1])
    return {json.dumps(extra): run for extra, run in zip(cases, runs)}


@pytest.mark.slow
@pytest.mark.parametrize("extra, flag, value", BAD_VALUES)
def test_out_of_range_value_is_one_line_naming_the_flag(bad_value_runs, extra, flag, value):
    returncode, stderr = bad_value_runs[json.dumps(extra)]
    assert returncode == 1, stderr
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"fairseq-train: error: {flag} "), lines[0]
    assert value in lines[0]


def test_other_exceptions_keep_their_traceback():
    assert one_line_message(ZeroDivisionError("a bug")) is None
    assert one_line_message(FlagError("--log-end must be\nin (0, 1]")) == "--log-end must be in (0, 1]"


def test_a_worker_spawned_by_fairseq_reports_our_error_in_one_line():
    """fairseq on several GPUs runs main() in torch.multiprocessing workers; the parent re-raises
    the worker's exception as text (ProcessRaisedException)."""
    from torch.multiprocessing.spawn import ProcessRaisedException
    worker_traceback = ("\n\n-- Process 1 terminated with the following error:\nTraceback (most recent call last):\n"
                        '  File "x.py", line 1, in <module>\n'
                        "fairseq_plugins.errors.FlagError: --bonus-rho must be >= 0, got -1.0\n")
    assert one_line_message(ProcessRaisedException(worker_traceback, 1, 123)) == "--bonus-rho must be >= 0, got -1.0"
    assert one_line_message(ProcessRaisedException(worker_traceback.replace("fairseq_plugins.errors.FlagError",
                                                                            "KeyError"), 1, 123)) is None
