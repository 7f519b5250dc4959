"""Hostile and damaged checkpoints: a config value fairseq would eval(), flipped bytes in a tensor.
Refused in one line naming the file (and the field) on every path that loads a checkpoint, and no
code runs (a marker file stays absent)."""
import argparse
import ast
import json
import os
import pathlib
import subprocess
import sys
import zipfile

import pytest
import torch

from helpers import BIN, REPO, TINY_TRANSFORMER, USER_DIR, repo_env, run_tool

import fairseq_plugins  # noqa: F401  (allowlist, loader, literal-only eval)
from fairseq import checkpoint_utils
from fairseq_plugins.checkpoints import CheckpointLoadError
from fairseq_plugins.config_literals import (
    EVALUATED_CONFIG_FIELDS,
    MODULES_THAT_EVAL,
    NotALiteral,
    literal_value,
)


def payload(marker):
    return f"__import__('pathlib').Path({str(marker)!r}).touch() or [50]"


def with_config_value(source, destination, value, field="adaptive_softmax_cutoff", section="model"):
    """A copy of a genuine checkpoint whose cfg.<section>.<field> is ``value``."""
    state = torch.load(source, weights_only=True)
    node = state["cfg"][section]
    if isinstance(node, dict):
        node[field] = value
    else:  # fairseq keeps legacy-style model configs as an argparse.Namespace
        setattr(node, field, value)
    torch.save(state, destination)
    return destination


# ---------------------------------------------------------------- what counts as a plain literal
@pytest.mark.parametrize("text, value", [
    ("(0.9, 0.98)", (0.9, 0.98)),
    ("10000,50000,200000", (10000, 50000, 200000)),
    ("[(512, 3)] * 2 + [(1024, 3)]", [(512, 3), (512, 3), (1024, 3)]),  # fconv's own defaults look like this
    ("[(512, 10, 5)] + [(512, 3, 2)] * 2", [(512, 10, 5), (512, 3, 2), (512, 3, 2)]),
    ('{"name": "scaled_dot_product"}', {"name": "scaled_dot_product"}),
    ("-1e-3", -1e-3), ("True", True), ("None", None), (b"(1, 2)", (1, 2)),
])
def test_plain_literals_keep_their_value(text, value):
    assert literal_value(text) == value


@pytest.mark.parametrize("text", [
    "__import__('os').system('true') or [50]", "[1, open('/etc/passwd')]", "os.environ", "x",
    "(lambda: 1)()", "[c for c in ().__class__.__base__.__subclasses__()]", "f'{1}'", "[0] * 10**9",
    "[0] * 1000000000", "{**{}}", "[*range(3)]", b"__import__('os')", "1 +", "(" * 300 + ")" * 300,
])
def test_anything_else_is_not_a_literal(text):
    with pytest.raises(NotALiteral):
        literal_value(text)


def test_fairseqs_eval_runs_no_code_once_the_user_dir_is_loaded(tmp_path):
    from fairseq import options, utils
    from fairseq.optim import adam

    marker = tmp_path / "ran"
    for evaluate in (lambda v: utils.eval_str_list(v, int), utils.eval_str_dict, utils.eval_bool,
                     lambda v: options.eval_str_list(v, int), adam.eval):
        with pytest.raises(NotALiteral):
            evaluate(payload(marker))
    assert not marker.exists()
    # what the command line passes keeps working
    assert utils.eval_str_list("10000,50000", int) == [10000, 50000] and utils.eval_bool("True") is True
    assert adam.eval("(0.9, 0.98)") == (0.9, 0.98) and utils.eval_str_dict("{'beam': 4}") == {"beam": 4}


# ---------------------------------------------------------------- every field fairseq evaluates is checked
EVALUATORS = {"eval", "eval_str_list", "eval_str_dict", "eval_bool"}


def fields_fairseq_evaluates():
    """{config field: {module}} for every eval / eval_str_* call on an attribute or getattr(args, name)
    in the installed fairseq (its examples/ included), and the modules calling the builtin eval."""
    import fairseq
    import fairseq_cli
    fields, modules = {}, set()
    sources = [(package, path) for package in (fairseq, fairseq_cli)
               for path in pathlib.Path(package.__file__).parent.rglob("*.py")]
    for package, path in sources:
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        parts = path.relative_to(pathlib.Path(package.__file__).parent).with_suffix("").parts
        module = ".".join((package.__name__, *parts))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and node.args):
                continue
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            if name not in EVALUATORS or (isinstance(node.func, ast.Attribute) and name == "eval"):
                continue  # obj.eval(...): editdistance.eval, model.eval()
            argument = node.args[0]
            if isinstance(argument, ast.Attribute):
                field = argument.attr
            elif (isinstance(argument, ast.Call) and getattr(argument.func, "id", None) == "getattr"
                  and isinstance(argument.args[1], ast.Constant)):
                field = argument.args[1].value
            else:
                continue
            fields.setdefault(field, set()).add(module)
            if name == "eval" and ".examples." not in module:
                modules.add(module)
    return fields, modules


def test_every_config_field_fairseq_evaluates_is_checked():
    fields, modules = fields_fairseq_evaluates()
    assert {"adaptive_softmax_cutoff", "adam_betas", "conv_feature_layers"} <= set(fields)  # the scan works
    missing = {field: sorted(where) for field, where in fields.items() if field not in EVALUATED_CONFIG_FIELDS}
    assert not missing, f"fairseq evaluates config fields the loader does not check: {missing}"
    assert modules <= set(MODULES_THAT_EVAL), sorted(modules - set(MODULES_THAT_EVAL))


# ---------------------------------------------------------------- the loader
def load(path):
    return checkpoint_utils.load_checkpoint_to_cpu(str(path))


def test_genuine_checkpoint_loads(genuine):
    state = load(genuine)
    assert state["cfg"].criterion._name == "encouraging_ls" and state["model"]


@pytest.mark.parametrize("field, section", [("adaptive_softmax_cutoff", "model"), ("adam_betas", "optimizer"),
                                            ("encoder_layers", "model"), ("pipeline_balance", "distributed_training")])
def test_config_value_fairseq_would_eval_is_refused(genuine, tmp_path, field, section):
    marker = tmp_path / "ran"
    hostile = with_config_value(genuine, tmp_path / "hostile.pt", payload(marker), field, section)
    with pytest.raises(CheckpointLoadError, match=rf"^refusing to load checkpoint {hostile}: its config sets "
                                                  rf"cfg\.{section}\.{field} = .* is not a plain literal"):
        load(hostile)
    assert not marker.exists()


def test_what_genuine_configs_hold_is_accepted(tmp_path):
    """fairseq 0.10 checkpoints keep the args as strings (left_pad_source 'True', betas '(0.9, 0.98)');
    fconv and wav2vec keep layer specs as list arithmetic."""
    from fairseq_plugins.config_literals import refuse_code_in_config
    args = argparse.Namespace(arch="fconv_iwslt_de_en", encoder_layers="[(256, 3)] * 4", left_pad_source="True",
                              decoder_attention="True", adam_betas="(0.9, 0.98)", adaptive_softmax_cutoff=None,
                              data="/data/iwslt14.de-en", save_dir="checkpoints/run (copy)")
    cfg = {"model": {"conv_feature_layers": "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]",
                     "encoder": {"xformers_att_config": '{"name": "scaled_dot_product"}'}},
           "common": {"user_dir": "${common.seed}"}}
    refuse_code_in_config({"args": args, "cfg": cfg}, tmp_path / "checkpoint.pt")  # raises nothing


def test_bytes_legacy_args_and_resolvers_are_refused(genuine, tmp_path):
    marker = tmp_path / "ran"
    as_bytes = with_config_value(genuine, tmp_path / "bytes.pt", payload(marker).encode())  # eval() runs bytes too
    with pytest.raises(CheckpointLoadError, match="cfg.model.adaptive_softmax_cutoff"):
        load(as_bytes)
    state = torch.load(genuine, weights_only=True)
    state["cfg"], state["args"] = None, argparse.Namespace(arch="transformer", adaptive_softmax_cutoff=payload(marker))
    torch.save(state, tmp_path / "legacy.pt")
    with pytest.raises(CheckpointLoadError, match="args.adaptive_softmax_cutoff"):
        load(tmp_path / "legacy.pt")
    resolver = with_config_value(genuine, tmp_path / "resolver.pt", "${oc.env:HOME}", "save_dir", "checkpoint")
    with pytest.raises(CheckpointLoadError, match=r"cfg.checkpoint.save_dir = '\$\{oc.env:HOME\}', an OmegaConf"):
        load(resolver)
    assert not marker.exists()


def flip_byte_in_tensor(source, destination):
    """A copy of ``source`` with one byte inverted in the middle of its largest tensor record."""
    data = bytearray(source.read_bytes())
    with zipfile.ZipFile(source) as archive:
        record = max((r for r in archive.infolist() if "/data/" in r.filename), key=lambda r: r.file_size)
        header = data[record.header_offset:record.header_offset + 30]  # the record's local header
        name_length, extra_length = int.from_bytes(header[26:28], "little"), int.from_bytes(header[28:30], "little")
        start = record.header_offset + 30 + name_length + extra_length
    data[start + record.file_size // 2] ^= 0xFF
    destination.write_bytes(bytes(data))
    return destination, record.filename


def test_flipped_byte_inside_a_tensor_is_refused(genuine, tmp_path):
    damaged, record = flip_byte_in_tensor(genuine, tmp_path / "checkpoint_last.pt")
    assert torch.load(damaged, weights_only=True)["model"], "torch alone loads it without a word"
    with pytest.raises(CheckpointLoadError, match=rf"^checkpoint {damaged} is corrupt: record {record} does not "
                                                  r"match its CRC-32 \(stored [0-9a-f]{8}, computed [0-9a-f]{8}\)$"):
        load(damaged)


def test_checkpoint_saved_without_crcs_still_loads(tmp_path):
    from torch.utils.serialization import config
    path = tmp_path / "no_crc.pt"
    saved = config.save.compute_crc32
    config.save.compute_crc32 = False
    try:
        torch.save({"model": {"w": torch.arange(6.0)}, "args": argparse.Namespace(arch="transformer"), "cfg": None,
                    "optimizer_history": [{"num_updates": 0, "optimizer_name": "x", "lr_scheduler_state": {}}],
                    "extra_state": {"train_iterator": None}}, path)
    finally:
        config.save.compute_crc32 = saved
    assert load(path)["model"]["w"].tolist() == [0, 1, 2, 3, 4, 5]


# ---------------------------------------------------------------- every command that loads a checkpoint
def assert_refused_in_one_line(proc, marker, *names):
    stderr = proc.stderr
    assert proc.returncode != 0, stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert "error: " in last and ("refusing to load checkpoint" in last or "is corrupt" in last), last
    assert all(name in last for name in names), (last, names)
    assert sum("refusing to load checkpoint" in line for line in stderr.splitlines()) <= 1
    assert not marker.exists(), "the checkpoint's code ran"


@pytest.fixture(scope="module")
def hostile(genuine, tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    marker = root / "ran"
    return with_config_value(genuine, root / "checkpoint_hostile.pt", payload(marker)), marker


@pytest.mark.slow
@pytest.mark.parametrize("tool", ["fairseq-generate", "fairseq-interactive", "fairseq-validate", "fairseq-train",
                                  "fairseq-train-resume"])
def test_fairseq_tools_refuse_it_in_one_line(hostile, toy_data_bin, tmp_path, tool):
    path, marker = hostile
    if tool == "fairseq-train-resume":  # the run's own checkpoint_last.pt, as after an interruption
        (tmp_path / "checkpoint_last.pt").write_bytes(path.read_bytes())
        path, tool = tmp_path / "checkpoint_last.pt", "fairseq-train"
    train = ["--task", "translation_encouraging", *TINY_TRANSFORMER, "--criterion", "encouraging_ls", "--optimizer",
             "adam", "--lr", "1e-3", "--max-tokens", "500", "--max-update", "2", "--save-dir", tmp_path]
    args = {"fairseq-generate": ["--path", path, "--gen-subset", "test", "--beam", "1", "--batch-size", "8"],
            "fairseq-interactive": ["--path", path, "--input", os.devnull],
            "fairseq-validate": ["--path", path, "--task", "translation_encouraging", "--batch-size", "8"],
            "fairseq-train": ["--restore-file", path, *train]}[tool]
    proc = run_tool(tool, toy_data_bin, "--user-dir", USER_DIR, "--cpu", *args, check=False)
    assert_refused_in_one_line(proc, marker, str(path), "cfg.model.adaptive_softmax_cutoff")


@pytest.mark.slow
def test_evaluate_sh_refuses_it_with_checkpoint_and_when_averaging(hostile, genuine, toy_data_bin, tmp_path):
    path, marker = hostile
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "bin").symlink_to(toy_data_bin)
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"recipe": "demo", "data_dir": str(data_dir), "loss": "encouraging",
                                                  "seed": 1}))
    env = dict(os.environ, PYTHON=sys.executable, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")

    def evaluate(*args):
        return subprocess.run(["bash", str(REPO / "scripts" / "evaluate.sh"), str(run_dir), *args], cwd=REPO, env=env,
                              capture_output=True, text=True)

    assert_refused_in_one_line(evaluate("--checkpoint", str(path)), marker, str(path), "adaptive_softmax_cutoff")
    damaged, _ = flip_byte_in_tensor(genuine, run_dir / "checkpoints" / "checkpoint_damaged.pt")
    assert_refused_in_one_line(evaluate("--checkpoint", str(damaged)), marker, str(damaged), "CRC-32")
    # averaging: the newest epoch checkpoint is the hostile one
    (run_dir / "checkpoints" / "checkpoint1.pt").write_bytes(genuine.read_bytes())
    (run_dir / "checkpoints" / "checkpoint2.pt").write_bytes(path.read_bytes())
    assert_refused_in_one_line(evaluate("--average-last", "2"), marker, "checkpoint2.pt", "adaptive_softmax_cutoff")
    assert not (run_dir / "checkpoints" / "checkpoint_avg_last2.pt").exists()


@pytest.mark.slow
def test_hub_from_pretrained_after_import_fairseq_plugins(hostile, genuine, toy_data_bin):
    """`import fairseq_plugins` registers criterion, task and architecture (fairseq's import_user_module
    then skips the module), so from_pretrained(..., user_dir=...) works; a hostile file is refused."""
    path, marker = hostile
    script = f"""
import fairseq_plugins
from fairseq.criterions import CRITERION_REGISTRY
from fairseq.models import ARCH_MODEL_REGISTRY
from fairseq.models.transformer import TransformerModel
from fairseq.tasks import TASK_REGISTRY
from fairseq_plugins.checkpoints import CheckpointLoadError
print("registered", "encouraging_ls" in CRITERION_REGISTRY, "translation_encouraging" in TASK_REGISTRY,
      "transformer_iwslt_fr_en_2x2" in ARCH_MODEL_REGISTRY)
hub = TransformerModel.from_pretrained({str(genuine.parent)!r}, checkpoint_file={genuine.name!r},
                                       data_name_or_path={str(toy_data_bin)!r}, user_dir={USER_DIR!r})
print("task", type(hub.task).__name__, "translation", len(hub.translate("w1 w2 w3", beam=1).split()) > 0)
try:
    TransformerModel.from_pretrained({str(path.parent)!r}, checkpoint_file={path.name!r},
                                     data_name_or_path={str(toy_data_bin)!r}, user_dir={USER_DIR!r})
except CheckpointLoadError as error:
    print("refused", error)
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                          env=repo_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert "registered True True True" in lines
    assert "task TranslationEncouragingTask translation True" in lines
    assert any(line.startswith(f"refused refusing to load checkpoint {path}: its config sets "
                               "cfg.model.adaptive_softmax_cutoff") for line in lines), lines
    assert not marker.exists()


def test_average_checkpoints_refuses_it_in_one_line(hostile, tmp_path):
    path, marker = hostile
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "average_checkpoints.py"), "--inputs", str(path),
                           "--output", str(tmp_path / "avg.pt")], cwd=REPO, capture_output=True, text=True,
                          env=repo_env())
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"error: average_checkpoints.py: refusing to load checkpoint {path}: its config sets cfg.model.adaptive")
    assert not marker.exists() and not (tmp_path / "avg.pt").exists()
