"""The project installs as a package: importable from any directory, the user-dir nameable from
anywhere, and a wheel built from the checkout's files that holds every module fairseq needs."""
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from helpers import REPO  # noqa: E402

# What `--user-dir fairseq_plugins` must register, by fairseq registry.
REGISTERED = {
    "fairseq.criterions:CRITERION_REGISTRY": "encouraging_ls",
    "fairseq.tasks:TASK_REGISTRY": "translation_encouraging",
    "fairseq.models:ARCH_MODEL_REGISTRY": "transformer_iwslt_fr_en_2x2",
}


def python_outside_the_checkout(code, cwd):
    """Runs this interpreter in ``cwd`` with nothing of the checkout on the path."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True)


def test_installed_packages_import_from_another_directory_and_register_everything(tmp_path):
    checks = "\n".join(
        f"from {module.split(':')[0]} import {module.split(':')[1]}\n"
        f"assert {name!r} in {module.split(':')[1]}, {name!r}"
        for module, name in REGISTERED.items())
    code = f"import encouraging_loss, data_prep, fairseq_plugins\n{checks}\nprint(fairseq_plugins.__file__)"
    proc = python_outside_the_checkout(code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert Path(proc.stdout.strip()).resolve() == REPO / "fairseq_plugins" / "__init__.py"


def test_python_m_fairseq_plugins_prints_the_user_dir(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fairseq_plugins"], cwd=tmp_path,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert Path(proc.stdout.strip()) == REPO / "fairseq_plugins"


def checkout_files():
    """The files a fresh clone has (tracked, plus new files git does not ignore)."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs a git checkout to list its files")
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.splitlines()
    return [name for name in listed if (REPO / name).is_file()]


def test_wheel_from_the_checkout_holds_every_package_and_the_user_dir_parts(tmp_path):
    source = tmp_path / "source"
    for name in checkout_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, source / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           "--disable-pip-version-check", "-w", str(tmp_path / "dist"), str(source)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [wheel] = (tmp_path / "dist").glob("encouraging_loss-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    # every Python module and package-data file of the three packages in the checkout is in the wheel
    expected = {name for name in checkout_files()
                if name.split("/")[0] in ("encouraging_loss", "fairseq_plugins", "data_prep")
                and name.endswith((".py", ".sh"))}
    assert expected <= names, sorted(expected - names)
    for module in ("fairseq_plugins/criterions/encouraging_ls.py",
                   "fairseq_plugins/tasks/translation_encouraging.py",
                   "fairseq_plugins/models/transformer_iwslt_fr_en_2x2.py"):
        assert module in names
    metadata = next(zipfile.ZipFile(wheel).read(n) for n in names if n.endswith(".dist-info/METADATA")).decode()
    declared = [line[len("Requires-Dist:"):].strip() for line in metadata.splitlines()
                if line.startswith("Requires-Dist:")]
    assert not [line for line in declared if "fairseq-fixed" in line.lower()], \
        "fairseq-fixed must stay out of the dependencies (it is installed with --no-deps)"
    # the light install: the core needs torch and numpy only; the rest comes with an extra
    core = sorted(requirement_name(line) for line in declared if "extra ==" not in line)
    assert core == ["numpy", "torch"], core
    for extra, names_expected in (("fairseq", {"hydra-core", "omegaconf", "sacrebleu", "sentencepiece"}),
                                  ("huggingface", {"transformers", "accelerate", "tokenizers"}),
                                  ("test", {"pytest", "hypothesis", "triton"})):
        assert f"Provides-Extra: {extra}" in metadata, extra
        in_extra = {requirement_name(line) for line in declared if f'extra == "{extra}"' in line}
        from_file = {requirement_name(line) for line in requirement_lines(f"requirements-{extra}.txt")}
        assert in_extra == from_file and names_expected <= in_extra, (extra, in_extra, from_file)
    assert "mutmut" not in metadata.lower()


def requirement_lines(name):
    lines = [line.split("#")[0].strip() for line in (REPO / name).read_text().splitlines()]
    return [line for line in lines if line]


def requirement_name(line):
    """'triton>=3.0; platform_system == "Linux" and extra == "test"' -> 'triton'."""
    return re.split(r"[\s;<>=!~\[]", line.strip(), maxsplit=1)[0].lower()
