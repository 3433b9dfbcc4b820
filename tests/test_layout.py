"""The layout's rules, read from the source: one concern per module and none much over 350 lines,
no import inside a function, no import cycle among dtlib's modules, the claims torch-free, and
redrawing a figure without the training stack (``dtlib.figures`` depends on the claims, the
benchmark's report and file I/O only).

The graph is the static one of module-level imports (``if TYPE_CHECKING`` blocks left out, as
they never run). The packages' ``__init__`` offer their names lazily (``EXPORTS``, loaded on first
use by ``dtlib.lazy``, the one place a module is imported by a call); a fresh interpreter shows what importing the
figures really loads."""
import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "dtlib"
MAX_LINES = 350
TRAINING_STACK = {"dtlib.train", "dtlib.methods", "dtlib.models", "dtlib.attacks", "dtlib.experiment", "dtlib.measure",
                  "dtlib.evaluate", "dtlib.runtime", "dtlib.study.experiments", "dtlib.study.settings"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports(name: str) -> tuple[set[str], set[str]]:
    """(dtlib modules, outside top-level packages) that module ``name`` imports at module level."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    inner, outer = set(), set()
    body = list(ast.parse(path.read_text()).body)
    while body:
        node = body.pop(0)
        if isinstance(node, (ast.If, ast.Try)) and not _type_checking(node):
            body += node.body + getattr(node, "orelse", []) + [h for x in getattr(node, "handlers", []) for h in x.body]
        elif isinstance(node, ast.Import):
            for a in node.names:
                (inner if a.name.startswith("dtlib") else outer).add(a.name if a.name.startswith("dtlib") else a.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            if not mod.startswith("dtlib"):
                outer.add(mod.split(".")[0])
                continue
            for a in node.names:  # `from . import figures` imports a module; `from .data import Split` a name
                inner.add(f"{mod}.{a.name}" if f"{mod}.{a.name}" in MODULES else mod)
    inner.discard(name)
    return inner, outer


def closure(name: str) -> set[str]:
    seen, todo = set(), [name]
    while todo:
        m = todo.pop()
        for d in imports(m)[0] - seen:
            seen.add(d)
            todo.append(d)
    return seen


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_is_much_over_350_lines(name):
    assert len(MODULES[name].read_text().splitlines()) <= MAX_LINES, name


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_import_inside_a_function_or_class(name):
    tree = ast.parse(MODULES[name].read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            inside = [n for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))]
            assert not inside, f"{name}: import at line {inside[0].lineno}"
        if isinstance(node, ast.Call) and ast.unparse(node.func) in ("__import__", "importlib.import_module",
                                                                     "import_module"):
            assert name == "dtlib.lazy", f"{name}: dynamic import at line {node.lineno}"


@pytest.mark.parametrize("package", ["dtlib", "dtlib.study"])
def test_every_lazy_export_names_what_its_module_defines(package):
    pkg = importlib.import_module(package)
    for name, module in pkg.EXPORTS.items():
        defined = importlib.import_module(f"{package}.{module}")
        assert name in vars(defined), (package, name, module)
        assert getattr(pkg, name) is vars(defined)[name]
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        getattr(pkg, "nothing")


def test_there_is_no_import_cycle():
    graph = {m: imports(m)[0] for m in MODULES}
    state: dict[str, int] = {}

    def visit(m, path):
        state[m] = 1
        for d in graph[m]:
            assert state.get(d) != 1, "import cycle: " + " -> ".join(path + [m, d])
            if d not in state:
                visit(d, path + [m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])


def test_figures_are_redrawn_without_the_training_stack():
    deps = closure("dtlib.figures")
    assert deps == {"dtlib.bench_report", "dtlib.choices", "dtlib.config", "dtlib.io", "dtlib.parsing", "dtlib.phases",
                    "dtlib.study.claims", "dtlib.study.rules", "dtlib.tables", "dtlib.validation"}, deps
    assert not deps & TRAINING_STACK


def test_the_claims_need_no_torch():
    assert closure("dtlib.study.claims") == {"dtlib.choices", "dtlib.config", "dtlib.parsing", "dtlib.study.rules",
                                             "dtlib.validation"}
    for name in ("dtlib.study.claims", "dtlib.study.rules", "dtlib.choices", "dtlib.config", "dtlib.validation",
                 "dtlib.parsing", "dtlib.phases", "dtlib.io",
                 "dtlib.bench_report", "dtlib.tables"):
        assert not imports(name)[1] & {"torch", "torchvision", "numpy"}, name


def test_a_fresh_interpreter_redraws_figures_without_torch():
    code = ("import sys, dtlib.figures; print(sorted(m for m in sys.modules if m.startswith('dtlib'))); "
            "print(any(m == 'torch' or m.startswith('torch.') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert ast.literal_eval(out[0]) == ["dtlib", "dtlib.bench_report", "dtlib.choices", "dtlib.config", "dtlib.figures", "dtlib.io", "dtlib.lazy", "dtlib.parsing",
                            "dtlib.phases", "dtlib.study", "dtlib.study.claims", "dtlib.study.rules", "dtlib.tables",
                            "dtlib.validation"]
    assert out[1] == "False"


def test_attacks_and_their_metrics_are_below_the_evaluation():
    assert "dtlib.evaluate" not in closure("dtlib.attacks")
    assert "dtlib.metrics" in imports("dtlib.attacks")[0]
