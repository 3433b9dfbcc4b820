"""Every numbered notebook runs under nbval (--nbval-lax) with the smoke profile, and the results
JSON it writes is complete: claims rows present, numbers finite, rates in [0, 1].

The notebooks are parameterised the way papermill does it (an injected cell after the one tagged
``parameters``), written to a temporary folder, and run by nbval in a subprocess; their runs,
results and figures go to one shared temporary root, so later notebooks reuse earlier models as
the batch does."""
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from papermill.iorw import load_notebook_node
from papermill.parameterize import parameterize_notebook

from dtlib.config import ATTACK_VERSION
from dtlib.study import ARMS, CROSS_ARMS, NOTEBOOK_PARAMETERS, NOTEBOOKS, PER_RUN, SHARED_FIELDS, arms

pytestmark = pytest.mark.precision  # trains or evaluates: run under both precisions (make test-other-precision)

NB_DIR = Path(__file__).resolve().parent.parent / "notebooks"
OVERRIDES = {"uap_decay": 0.9}  # a value other than the profile's, to see it reach every run
RATES = {"clean_acc", "fooling_rate", "uap_acc", "random_fooling_rate", "val_clean_acc", "val_fooling_rate",
         "val_uap_acc", "stronger_fooling_rate"}
VERDICTS = ("holds", "partly", "does not hold", "not measured", "inconclusive")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("study")


def test_committed_notebooks_are_clean_and_parameterised():
    assert sorted(p.stem for p in NB_DIR.glob("0*.ipynb")) == list(NOTEBOOKS)
    for name in NOTEBOOKS:
        raw = json.loads((NB_DIR / f"{name}.ipynb").read_text())
        assert all("id" in c for c in raw["cells"]), f"{name}: a cell without an id (nbformat 4.5 requires one)"
        nb = nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), f"{name} carries outputs"
        assert "parameters" in code[0].metadata.get("tags", []), f"{name}: first code cell is not tagged parameters"
        names = [line.split("=")[0].strip() for line in code[0].source.splitlines() if "=" in line and not line.startswith("#")]
        assert tuple(names) == NOTEBOOK_PARAMETERS
        assert 'profile = "cpu"' in code[0].source
        # thin: after the parameters, one-line library calls (dtlib.study.notebook); the first one
        # refuses undeclared papermill parameters before any work
        assert code[1].source.splitlines()[-1].startswith("study = nb.start(globals())"), name
        assert code[2].source == f'res = nb.run(study, "{name}")'
        for c in code[2:]:
            assert len([line for line in c.source.splitlines() if line.strip()]) == 1, (name, c.source)


def test_an_unknown_papermill_parameter_stops_the_notebook_before_any_work(tmp_path):
    """papermill itself only warns about ``-p seedz 3``; the notebook's first cell after the
    parameters refuses it, so a batch never runs on silently with the defaults."""
    import papermill
    with pytest.raises(papermill.PapermillExecutionError) as err:
        papermill.execute_notebook(str(NB_DIR / "05_cost.ipynb"), str(tmp_path / "out.ipynb"), cwd=str(NB_DIR),
                                   parameters={"profile": "smoke", "root": str(tmp_path), "seedz": 3},
                                   progress_bar=False, log_output=False)
    assert "Unknown notebook parameter 'seedz'" in str(err.value)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()


def _numbers(obj, path=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _numbers(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _numbers(v, f"{path}[{i}]")
    elif isinstance(obj, float):
        yield path, obj


@pytest.mark.heavy
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_under_nbval_and_writes_its_results(name, root, tmp_path):
    nb = parameterize_notebook(load_notebook_node(str(NB_DIR / f"{name}.ipynb")),
                               {"profile": "smoke", "root": str(root), "overrides": OVERRIDES})
    path = tmp_path / f"{name}.ipynb"
    nbformat.write(nb, path)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "--nbval-lax", "-p", "no:cacheprovider",
                           "--rootdir", str(tmp_path), str(path)], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]

    res = json.loads((root / "results" / f"{name}-smoke.json").read_text())
    assert res["notebook"] == name and res["profile"] == "smoke" and res["attack_version"] == ATTACK_VERSION
    assert res["provenance"]["git_commit"] and res["provenance"]["torch"]
    assert res["claims"], "no claims rows"
    for c in res["claims"]:
        assert {"claim", "seed", "measured", "setting", "verdict"} <= set(c)
        assert c["verdict"].startswith(VERDICTS), c["verdict"]
    assert res["table"]
    for where, value in _numbers({k: v for k, v in res.items() if k not in ("claims", "provenance")}):
        key = where.rsplit(".", 1)[-1]
        if key.endswith("_std"):
            continue  # None with one seed, a finite number otherwise
        assert math.isfinite(value), where
        if key in RATES:
            assert 0 <= value <= 1, where
    # accepted means applied: every run the results record has the study's value of each field
    # a user may override (the ones the experiments vary run by run are refused by setup)
    study_cfg = res["study"]["config"]
    assert study_cfg["uap_decay"] == OVERRIDES["uap_decay"] and study_cfg["data_dir"] == "data"
    for run in res.get("runs", {}).values():
        differ = {k for k, v in study_cfg.items() if run["config"][k] != v}
        assert differ <= set(PER_RUN) | set(SHARED_FIELDS), (name, differ)
    assert (root / "results" / f"{name}-smoke.csv").exists()
    if name == "06_published_method":  # its re-scored rows read the same images, model and mode as the suite
        white = {(r["arm"], r["seed"], r["eps"], r["target"], r["eval"]): r for r in res["rows"] if r["attack"] == "white-box"}
        moved = [r for r in res["rows"] if r["attack"] != "white-box"]
        assert moved and all(abs(r["clean_acc"] - white[r["arm"], r["seed"], r["eps"], r["target"], r["eval"]]["clean_acc"])
                             <= 0.01 for r in moved)
    # every model the notebook reports was attacked again by the stronger suite (first seed; a later seed only where its fits reached the cap)
    st = res["study"]
    checked = {(r["arm"], r.get("norm"), r.get("radius")) for r in res.get("attack_check", [])}
    expected = {"01_headline": {(a, None, None) for a in arms(res["selection"])},
                "02_k_ablation": {(f"K={k}", None, None) for k in st["ks"]},
                "03_cross_norm": {(a, n, r) for a in CROSS_ARMS for n in ("linf", "l2") for r in st[f"{n}_radii"]},
                "04_transfer": {(m, None, None) for m in res.get("models", {})},
                "06_published_method": {(a, None, None) for a in {*ARMS, "dt_best"}}}.get(name, set())
    assert checked == expected, (name, checked ^ expected)
    assert all(isinstance(r["converged"], bool) and r["stronger"]["uap_refine"] == 2 * st["config"]["uap_refine"] + 2 for r in res.get("attack_check", []))
    for ext in ("png", "pdf"):
        assert (root / "figures" / f"{name}-smoke.{ext}").stat().st_size > 1000


@pytest.mark.heavy  # reads what the notebook runs above wrote
def test_figures_and_claims_table_regenerate_from_results_alone(root):
    """`make figures`: every figure is redrawn from results/ without training (runs/ removed)."""
    shutil.rmtree(root / "runs", ignore_errors=True)
    shutil.rmtree(root / "figures", ignore_errors=True)
    results = root / "results"
    compared = results / "compared"  # the smoke results again as two profiles that are read side by side
    compared.mkdir(exist_ok=True)
    for path in results.glob("0*-smoke.json"):
        res = json.loads(path.read_text())
        for profile in ("study", "cpu"):
            (compared / path.name.replace("smoke", profile)).write_text(json.dumps({**res, "profile": profile}))
    for where in (results, compared):
        proc = subprocess.run([sys.executable, "-m", "dtlib.figures", str(where), str(root / "figures")],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
    changes = (compared / "claims-study-vs-cpu.md").read_text().splitlines()[3:]
    assert len(changes) >= 11 and all(line.endswith("| no |") for line in changes)
    assert not (results / "claims-study-vs-cpu.md").exists()
    for name in NOTEBOOKS:
        assert (root / "figures" / f"{name}-smoke.png").exists()
    published = (root / "results" / "06_published_method-smoke.md").read_text().splitlines()
    assert [x for x in published if x.startswith("| entropy-DT (as published) | head0 |")]
    table = (root / "results" / "claims-smoke.md").read_text()
    for cid in ("C1", "C2", "C3", "C4", "C5", "C6", "C7", "C8", "P1", "P2", "P3"):
        assert f"| {cid} |" in table, cid
