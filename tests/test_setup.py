"""The set-up files agree: one torch pin in the Makefile and environment.yml, pyproject's bounds admit it;
the docs link nothing outside the repository."""
import importlib.util
import json
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def pins(text):
    return dict(re.findall(r"\b(torch|torchvision)==([\d.]+)", text))


def test_torch_pins_agree_and_satisfy_pyproject():
    make, env = (ROOT / "Makefile").read_text(), (ROOT / "environment.yml").read_text()
    assert pins(make) == pins(env) == {"torch": "2.14.1", "torchvision": "0.29.1"}
    py = (ROOT / "pyproject.toml").read_text()
    lower = dict(re.findall(r'"(torch|torchvision)>=([\d.]+)"', py))
    assert lower == {"torch": "2.11", "torchvision": "0.26"}
    version = lambda v: tuple(int(p) for p in v.split("."))
    assert all(version(pins(make)[k]) >= version(lower[k]) for k in lower)


def test_environment_uses_conda_forge_only_and_installs_the_project():
    env = (ROOT / "environment.yml").read_text()
    channels = re.search(r"channels:\n((?:\s+- .*\n)+)", env).group(1)
    assert [c.strip("- \n") for c in channels.splitlines()] == ["conda-forge"]
    assert "-e .[test]" in env
    deps = re.search(r"^dependencies = \[(.*?)\]", (ROOT / "pyproject.toml").read_text(), re.M | re.S).group(1)
    for dep in re.findall(r'"([a-z]+)>=', deps):
        assert dep in env, dep


def test_ci_calls_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert "make test" in (ROOT / "README.md").read_text()


def test_readme_numbers_are_the_committed_results_files():
    """Every results block of the README is a verbatim copy of its results/*.md file."""
    mod = _script("update_readme")
    readme = (ROOT / "README.md").read_text()
    blocks = mod.BLOCK.findall(readme)
    assert blocks, "README has no results block"
    assert mod.render(readme) == readme, "README.md is out of date: run `make readme`"


def _docs():
    """The project's prose: README, docs/, every folder's README and the notebooks' markdown."""
    for path in [ROOT / "README.md", *ROOT.glob("docs/*.md"), *ROOT.glob("*/README.md")]:
        yield path, path.read_text()
    for path in ROOT.glob("notebooks/0*.ipynb"):
        cells = json.loads(path.read_text())["cells"]
        yield path, "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")


def test_the_docs_stand_on_their_own():
    """Every relative link in the project's prose points at a file inside the repository (a clone
    made elsewhere has nothing beside it), and README and notebooks link the protocol."""
    for path, text in _docs():
        inline, reference = re.findall(r"\]\(([^)\s#]+)", text), re.findall(r"(?m)^\[[^\]]+\]:\s*([^\s#]+)", text)
        for target in inline + reference:
            if re.match(r"[a-z]+:", target):
                continue  # https://, mailto:
            resolved = (path.parent / target).resolve()
            assert resolved.is_relative_to(ROOT) and resolved.exists(), f"{path.name} links {target}"
    linked = [p.name for p, text in _docs() if "protocol.md" in text]
    assert "README.md" in linked and all(f"{n}.ipynb" in linked for n in
                                         ("01_headline", "02_k_ablation", "03_cross_norm", "04_transfer", "05_cost"))


def _script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("auto,slowdown,precision,marker", [
    ("fp32", 30.0, "bf16", "precision and not heavy"),  # an AVX2 CPU: bf16 emulated, heavy tests left out
    ("fp32", 1.5, "bf16", "precision"),                  # bf16 fast but not picked: every precision test
    ("bf16", 30.0, "fp32", "precision")])                # a bf16 CPU: the fp32 pass runs them all
def test_other_precision_pass_leaves_out_heavy_tests_only_where_bf16_is_emulated(monkeypatch, auto, slowdown,
                                                                                 precision, marker):
    mod = _script("test_other_precision")
    ran = {}
    monkeypatch.setattr(mod, "auto_precision", lambda device: auto)
    monkeypatch.setattr(mod, "bf16_slowdown", lambda: slowdown)
    monkeypatch.setattr(mod.os, "execv", lambda exe, argv: ran.update(argv=argv))
    monkeypatch.setenv(mod.PRECISION_ENV, "")
    mod.main(["-x"])
    assert os.environ[mod.PRECISION_ENV] == precision
    assert ran["argv"][-3:] == ["-m", marker, "-x"] and ran["argv"][1:4] == ["-m", "pytest", "-q"]
