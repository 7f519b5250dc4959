"""Writes configs/RECIPE.yaml, the fairseq-hydra-train twin of the bash recipe configs/RECIPE.sh.

    python -m scripts.recipe_to_hydra [RECIPE ...]          (default: every recipe in configs/)
    python -m scripts.recipe_to_hydra --check [RECIPE ...]  exit 1 when a committed YAML differs

The bash recipe is the one source of truth: the YAML is derived from the exact fairseq-train command
that `scripts/train.sh RECIPE --dry-run` prints for one GPU (encouraging loss, seed 1), parsed by
fairseq's own argument parser and converted to its Hydra config (convert_namespace_to_omegaconf).
Exactly the values the command sets are written, in the groups where fairseq's conversion puts them;
fairseq fills in the rest as it does for fairseq-train (defaults, the architecture's own values). Paths are rewritten so the file works
from the repository root: the corpus and the user-dir under ${hydra:runtime.cwd}, checkpoints and
TensorBoard logs inside the run directory (hydra.run.dir, where Hydra moves the job). The header
gives the overrides for the baseline and for 2, 4 and 8 GPUs (the same tokens per update).
"""
import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CWD = "${hydra:runtime.cwd}"
# Written even when equal to fairseq's default, because that default depends on the machine
# (distributed_world_size is the number of visible GPUs).
ALWAYS = {("distributed_training", "distributed_world_size")}
# fairseq's registries: the groups whose dataclass is chosen by _name.
NAMED_GROUPS = ("task", "criterion", "optimizer", "lr_scheduler")


class RecipeError(Exception):
    """A recipe whose command cannot be derived: reported as one line."""


def train_command(recipe, config_dir, loss="encouraging", gpus=1):
    """The fairseq-train arguments train.sh builds for `recipe`, from the repository root, with only
    the environment that keeps the result the same on every machine."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHON": sys.executable,
           "VISIBLE_GPUS": str(gpus), "NUM_GPUS": str(gpus), "CONFIG_DIR": str(config_dir)}
    flags = ["--baseline"] if loss == "baseline" else []
    proc = subprocess.run(["bash", str(REPO / "scripts" / "train.sh"), recipe, "--dry-run", *flags], cwd=REPO,
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RecipeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"train.sh {recipe} failed")
    words = shlex.split(proc.stdout)
    return words[words.index("fairseq_cli.train") + 1:]


def flag_value(words, flag):
    return words[len(words) - 1 - words[::-1].index(flag) + 1]


def interpolated_fields(group, name):
    """The fields of a config group whose default is another group's value (fairseq's II("...")): the
    conversion copies the value there, but the YAML must leave the link in place."""
    from fairseq.dataclass.configs import FairseqConfig
    from fairseq.registry import REGISTRIES
    from fairseq.tasks import TASK_DATACLASS_REGISTRY

    if group == "task":
        dataclass = TASK_DATACLASS_REGISTRY.get(name)
    elif group in REGISTRIES:
        dataclass = REGISTRIES[group]["dataclass_registry"].get(name)
    else:
        dataclass = FairseqConfig.__dataclass_fields__[group].type
    fields = getattr(dataclass, "__dataclass_fields__", {})
    return {key for key, field in fields.items() if isinstance(field.default, str) and field.default.startswith("${")}


def explicit_config(words):
    """{group: {key: value}}: the values the command line sets explicitly, placed in the groups of
    fairseq's Hydra config as fairseq's own conversion places them (convert_namespace_to_omegaconf).
    Values fairseq derives (interpolations such as optimizer.lr -> optimization.lr, defaults an
    architecture computes from other values) are left to fairseq, so an override of the source value
    carries through as it does on the command line."""
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.models import ARCH_MODEL_REGISTRY
    from omegaconf import OmegaConf

    parser = options.get_training_parser()
    namespace = options.parse_args_and_arch(parser, words)  # adds the chosen components' flags to parser
    given = {word.split("=", 1)[0] for word in words if word.startswith("--")}
    explicit = {action.dest for action in parser._actions if given & set(action.option_strings)}
    config = convert_namespace_to_omegaconf(namespace)
    result = {}
    for group in config:
        if group == "model" or not OmegaConf.is_config(config[group]):
            continue
        values = OmegaConf.to_container(config[group], resolve=False, enum_to_str=True)
        interpolated = interpolated_fields(group, values.get("_name"))
        chosen = {key: value for key, value in values.items()
                  if (key in explicit or (group, key) in ALWAYS) and key not in interpolated}
        if group in NAMED_GROUPS:
            chosen = {"_name": values["_name"], **{key: value for key, value in chosen.items() if key != "_name"}}
        if chosen:
            result[group] = chosen
    model_parser = argparse.ArgumentParser(add_help=False)
    ARCH_MODEL_REGISTRY[namespace.arch].add_args(model_parser)
    result["model"] = {"_name": namespace.arch, **{action.dest: getattr(namespace, action.dest)
                                                    for action in model_parser._actions if action.dest in explicit}}
    return result


def hydra_value(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ",".join(map(hydra_value, value)) + "]"
    return str(value)


def override_string(changed, base):
    """Hydra command-line overrides that turn the config `base` into `changed` (one level deep)."""
    return " ".join(f"{group}.{key}={hydra_value(value)}" for group, values in changed.items()
                    for key, value in values.items() if base.get(group, {}).get(key) != value)


def baseline_overrides(config, baseline):
    """The criterion overrides from the encouraging config to the baseline's: its own values, and
    the criterion's defaults for what only the encouraging loss sets."""
    from fairseq.registry import REGISTRIES

    fields = REGISTRIES["criterion"]["dataclass_registry"][baseline["criterion"]["_name"]].__dataclass_fields__
    target = {key: baseline["criterion"].get(key, getattr(fields.get(key), "default", None))
              for key in {**config["criterion"], **baseline["criterion"]}}
    return override_string({"criterion": target}, config)


def recipe_yaml(recipe, config_dir):
    from omegaconf import OmegaConf

    words = train_command(recipe, config_dir)
    config = explicit_config(words)
    run_dir = f"runs/{recipe}/hydra/encouraging/seed{config.get('common', {}).get('seed', 1)}"
    data = os.path.relpath(words[0], REPO)
    if data.startswith(".."):
        raise RecipeError(f"{recipe}: its DATA_DIR {words[0]} is outside the repository; make it relative")
    config["task"]["data"] = f"{CWD}/{data}"
    config.setdefault("common", {})["user_dir"] = f"{CWD}/{os.path.relpath(flag_value(words, '--user-dir'), REPO)}"
    config["common"]["tensorboard_logdir"] = "tensorboard"
    config.setdefault("checkpoint", {})["save_dir"] = "checkpoints"

    baseline = explicit_config(train_command(recipe, config_dir, "baseline"))
    header = [
        f"# fairseq-hydra-train twin of configs/{recipe}.sh, generated by python -m scripts.recipe_to_hydra:",
        "# edit the bash recipe and regenerate, never this file. From the repository root:",
        f"#   fairseq-hydra-train --config-dir configs --config-name {recipe}",
        "# The encouraging loss on one GPU, seed 1, into hydra.run.dir. Overrides (KEY=VALUE after the command):",
        f"#   baseline (label-smoothed CE):  {baseline_overrides(config, baseline)}"
        f" hydra.run.dir={run_dir.replace('/encouraging/', '/baseline/')}",
        "#   CPU:                           common.cpu=true common.fp16=false",
    ]
    for gpus in (2, 4, 8):
        try:
            multi = train_command(recipe, config_dir, gpus=gpus)
        except RecipeError as error:
            header.append(f"#   {gpus} GPUs: refused ({error.args[0].removeprefix('error: ')})")
            continue
        # the three flags train.sh derives from the GPU count, where explicit_config places them
        selected = {"dataset": {"max_tokens": int(flag_value(multi, "--max-tokens"))},
                    "optimization": {"update_freq": [int(flag_value(multi, "--update-freq"))]},
                    "distributed_training": {"distributed_world_size": int(flag_value(multi, "--distributed-world-size"))}}
        header.append(f"#   {gpus} GPUs (same tokens per update): {override_string(selected, config)}")
    body = {"hydra": {"run": {"dir": run_dir}}}
    body.update(config)
    return "\n".join(header) + "\n" + OmegaConf.to_yaml(OmegaConf.create(body))


def known_recipes(config_dir):
    return sorted(path.stem for path in Path(config_dir).glob("*.sh"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipes", nargs="*", help="recipe names (default: all)")
    parser.add_argument("--check", action="store_true", help="compare with the committed YAMLs, write nothing")
    parser.add_argument("--config-dir", type=Path, default=Path(os.environ.get("CONFIG_DIR", REPO / "configs")),
                        help="the recipes and their YAMLs (default: $CONFIG_DIR or configs/)")
    args = parser.parse_args(argv)
    config_dir = args.config_dir.resolve()
    from scripts.atomic_io import write_text_atomically

    stale = []
    known = known_recipes(config_dir)
    for recipe in args.recipes or known:
        if recipe not in known:
            print(f"error: recipe_to_hydra: unknown recipe '{recipe}' (known: {' '.join(known)})", file=sys.stderr)
            return 2
        try:
            text = recipe_yaml(recipe, config_dir)
        except RecipeError as error:
            print(f"error: recipe_to_hydra: {error}", file=sys.stderr)
            return 2
        path = config_dir / f"{recipe}.yaml"
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(str(path))
        else:
            write_text_atomically(path, text)
            print(f"[recipe_to_hydra] {path}", file=sys.stderr)
    if stale:
        print(f"error: recipe_to_hydra: {' '.join(stale)} differ from their bash recipes; "
              "run python -m scripts.recipe_to_hydra", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
