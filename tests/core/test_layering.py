"""The layers import downward only (scripts -> fairseq_plugins -> encouraging_loss), the loss core and
its tests need no fairseq, and no module takes part in an import circle, lazy imports included."""
import ast
import subprocess
import sys
from pathlib import Path

from helpers import REPO, repo_env

PACKAGES = ("encouraging_loss", "fairseq_plugins", "data_prep", "scripts", "benchmarks")
# What each layer may import from the project (itself included).
ALLOWED = {
    "encouraging_loss": {"encouraging_loss"},
    "fairseq_plugins": {"fairseq_plugins", "encouraging_loss"},
    "data_prep": {"data_prep"},
    "scripts": {"scripts", "fairseq_plugins", "encouraging_loss", "data_prep"},
    "benchmarks": {"benchmarks", "scripts", "fairseq_plugins", "encouraging_loss"},
}


# Training frameworks the core must not import; its adapters (encouraging_loss.integrations) may, lazily.
FRAMEWORKS = ("fairseq", "fairseq_cli", "transformers", "accelerate", "lightning", "pytorch_lightning")
ADAPTERS = "encouraging_loss.integrations"


def top_level_imports(path: Path):
    """Modules imported by the statements at a file's top level (run at import time)."""
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names.add(node.module)
    return names


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path):
    """Every module ``path`` imports anywhere in its body (function-level imports too), absolute names."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module
            yield prefix
            yield from (f"{prefix}.{alias.name}" for alias in node.names)  # `from pkg import module`


def project_modules():
    return {module_name(path): path for package in PACKAGES for path in (REPO / package).rglob("*.py")}


def test_each_layer_imports_only_the_layers_below_it():
    modules = project_modules()
    wrong = []
    for name, path in modules.items():
        layer = name.split(".")[0]
        for target in imported_modules(path):
            top = target.split(".")[0]
            if top in PACKAGES and top not in ALLOWED[layer]:
                wrong.append(f"{name} imports {target}")
            if layer == "encouraging_loss" and top in ("fairseq", "fairseq_cli"):
                wrong.append(f"{name} imports {target}")
            # frameworks only in their adapters, and there inside functions (imported when used)
            if layer == "encouraging_loss" and top in FRAMEWORKS and not name.startswith(ADAPTERS):
                wrong.append(f"{name} imports {target}")
            if name.startswith(ADAPTERS) and target in top_level_imports(path) and top in FRAMEWORKS:
                wrong.append(f"{name} imports {target} at import time")
    assert not wrong, wrong


def test_no_import_circle():
    modules = project_modules()
    graph = {name: {target for target in imported_modules(path) if target in modules and target != name}
             for name, path in modules.items()}
    # a package's __init__ importing its own submodules is how packages are made, not a circle
    graph = {name: {t for t in targets if not t.startswith(name + ".")} for name, targets in graph.items()}
    state, stack, circles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                circles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not circles, circles


def test_core_tests_and_the_loss_run_without_fairseq():
    for path in (REPO / "tests" / "core").glob("*.py"):
        assert not [t for t in imported_modules(path) if t.split(".")[0] in ("fairseq", "fairseq_plugins")], path
    # the loss imported and run in a process where fairseq cannot be imported
    code = ("import sys; sys.modules['fairseq'] = sys.modules['transformers'] = None\n"
            "import torch, encouraging_loss\n"
            "from encouraging_loss.schedule import BonusSchedule\n"
            "out = encouraging_loss.encouraging_loss(torch.randn(4, 7), torch.tensor([1, 2, 3, 4]))\n"
            "assert torch.isfinite(out.loss) and BonusSchedule('linear', 4)(2) == 0.5\n"
            "import encouraging_loss.integrations.huggingface as hf\n"
            "hf.EncouragingLossFunc(bonus_rho=0.5)({'logits': torch.randn(2, 3, 7)}, torch.ones(2, 3, dtype=torch.long), 6)\n"
            "assert not {'fairseq', 'transformers'} & {m.split('.')[0] for m in sys.modules if sys.modules[m] is not None}")
    proc = subprocess.run([sys.executable, "-c", code], env=repo_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
