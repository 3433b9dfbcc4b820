"""scripts/independent_attack.py: the plain SGD-UAP that checks the suite, run on the exported files
as on the run cache, with the evaluation settings of the results file."""
import functools
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dtlib.config import Config
from dtlib.study import export_models

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "independent_attack.py"
spec = importlib.util.spec_from_file_location("independent_attack", SCRIPT)
independent_attack = importlib.util.module_from_spec(spec)
spec.loader.exec_module(independent_attack)

EPS = 10 / 255


def write_results(where: Path, run: str, cfg: dict, suite_fooling: float) -> None:
    """A headline with ``run`` as standard (head0) and a published-method file with the same model
    (dropped: the headline has it), a second arm at the headline radius and rows the check skips."""
    common = {"profile": "smoke", "runs": {run: {"config": cfg, "train": {"precision": "fp32"}}},
              "provenance": {"git_commit": "abc"}}
    row = {"seed": 0, "run": run, "eval": "head0", "clean_acc": 0.5, "fooling_rate": suite_fooling, "uap_acc": 0.0}
    (where / "01_headline-smoke.json").write_text(json.dumps({**common, "study": {"eval_eps": EPS},
                                                              "rows": [{**row, "arm": "standard"}]}))
    pub = [{**row, "arm": "standard", "eps": EPS, "target": -1, "attack": "white-box"},
           {**row, "arm": "entropy_dt", "eps": 8 / 255, "target": -1, "attack": "white-box"},  # another radius
           {**row, "arm": "entropy_dt", "eps": EPS, "target": 9, "attack": "white-box"},  # targeted
           {**row, "arm": "entropy_dt", "eps": EPS, "target": -1, "attack": "standard's UAP"},  # transferred
           {**row, "arm": "entropy_dt", "eval": "ensemble", "eps": EPS, "target": -1, "attack": "white-box"}]
    (where / "06_published_method-smoke.json").write_text(json.dumps({**common, "rows": pub}))


def test_the_rows_are_the_headline_and_the_published_models_it_lacks_at_its_radius(tmp_path):
    cfg = Config(data="mini", precision="auto").to_dict()
    write_results(tmp_path, "abc123", cfg, 0.4)
    rows = independent_attack.suite_rows("smoke", tmp_path)
    assert [(r["arm"], r["eval"], r["results"]) for r in rows] == [
        ("standard", "head0", "01_headline"), ("entropy_dt", "ensemble", "06_published_method")]
    # scored as the suite scored them: the results' config and the precision the run was trained in
    assert all(math.isclose(r["eps"], EPS) and r["config"] == cfg and r["precision"] == "fp32" for r in rows)


def test_the_margin_is_five_points_counted_in_images():
    within = independent_attack.within_margin
    assert within(0.40, 0.40, 1000) and within(0.50, 0.40, 1000)  # at or above the baseline
    assert within(0.3501, 0.40, 10000) and not within(0.3499, 0.40, 10000)
    # exactly 5 points (500 of 10,000 images) is within, also as float32 rates, where 0.40 - 0.35 > 0.05
    fooled = lambda k: torch.tensor(k / 10000, dtype=torch.float32).item()
    assert fooled(4000) - fooled(3500) > 0.05 and within(fooled(3500), fooled(4000), 10000)


def test_exported_files_are_checked_against_their_index_before_any_attack(standard_run, runs_dir, tmp_path):
    write_results(tmp_path, standard_run.run_dir.name, standard_run.config.to_dict(), 0.4)
    rows = independent_attack.suite_rows("smoke", tmp_path)
    models = tmp_path / "models"
    export_models([tmp_path / "01_headline-smoke.json"], models, runs_dir, log=lambda s: None)
    assert independent_attack.model_files(rows, models) == {standard_run.run_dir.name: models / "standard-seed0.safetensors"}
    assert independent_attack.model_files(rows, None)[standard_run.run_dir.name].parts[-2:] == ("runs", standard_run.run_dir.name)
    with open(models / "standard-seed0.safetensors", "r+b") as f:  # one byte of the file changed
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    with pytest.raises(ValueError, match=r"standard-seed0.safetensors does not match the sha256 in its index\.$"):
        independent_attack.model_files(rows, models)
    (models / "standard-seed0.safetensors").unlink()
    with pytest.raises(ValueError, match=r"standard-seed0.safetensors, listed in .*index.json, is missing\.$"):
        independent_attack.model_files(rows, models)
    index = json.loads((models / "index.json").read_text())
    (models / "index.json").write_text(json.dumps({**index, "models": []}))
    with pytest.raises(ValueError, match=f"lists no file for run {standard_run.run_dir.name}"):
        independent_attack.model_files(rows, models)
    with pytest.raises(ValueError, match=r"index.json: no such file; export the models first"):
        independent_attack.model_files(rows, tmp_path / "nowhere")


def test_plain_sgd_uap_stays_in_the_ball_and_raises_the_loss():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))
    x = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    y = model(x.float() / 255).argmax(-1)
    delta = independent_attack.plain_sgd_uap(model, x, y, EPS, EPS / 4, None, passes=3, batch=16)
    assert delta.shape == (1, 3, 8, 8) and delta.abs().max() <= EPS + 1e-7
    loss = lambda d: F.cross_entropy(model((x.float() / 255 + d).clamp(0, 1)), y).item()
    assert loss(delta) > loss(torch.zeros_like(delta))


@pytest.mark.precision
def test_a_zero_radius_fools_nothing_and_the_table_marks_the_margin(standard_run, tmp_path, monkeypatch):
    """At eps = 0 the baseline's UAPs are zero: no image changes its prediction, and accuracy under
    the UAP is the clean accuracy; the table marks a suite 3 points under the baseline within the
    margin, 6 points under not."""
    monkeypatch.setattr(independent_attack, "plain_sgd_uap", functools.partial(independent_attack.plain_sgd_uap, passes=1))
    precision = standard_run.metrics["train"]["precision"]
    write_results(tmp_path, standard_run.run_dir.name, standard_run.config.to_dict(), 0.4)
    row = {**independent_attack.suite_rows("smoke", tmp_path)[0], "eps": 0.0, "model": standard_run.run_dir,
           "precision": precision}
    out = independent_attack.attack_row(row)
    assert out["independent_fooling_rate"] == 0.0 and out["suite_within_margin"] and out["suite_at_least_as_strong"]
    assert out["independent_uap_acc"] == out["clean_acc"]
    # the suite's clean accuracy, in other batches and memory layout: a near tie may flip under bf16
    assert out["clean_acc"] == pytest.approx(standard_run.metrics["eval"]["head0"]["clean_acc"], abs=0.01)
    record = {"profile": "smoke", "headline_commit": "abc", "models": "x", "margin": 0.05,
              "provenance": {"device": "cpu", "torch": "2", "git_commit": "abc"},
              "rows": [{**out, "independent_fooling_rate": f, "suite_within_margin": independent_attack.within_margin(0.4, f, 1000)}
                       for f in (0.43, 0.46)]}
    assert [line.rsplit("|", 2)[-2].strip() for line in independent_attack.table(record).splitlines()[3:5]] == ["yes", "no"]


def test_a_killed_invocation_resumes_with_the_rows_it_lacks(tmp_path, monkeypatch):
    """Rows finished before a kill are kept and not attacked again; a line the kill cut short is
    skipped; the record holds every row and the resume file is gone once it is written."""
    cfg = Config(data="mini", precision="auto").to_dict()
    write_results(tmp_path, "abc123", cfg, 0.4)
    attacked = []

    def fake(row: dict, kill_at: int | None = None) -> dict:
        if len(attacked) == kill_at:
            raise KeyboardInterrupt
        attacked.append((row["arm"], row["eval"]))
        return {"arm": row["arm"], "seed": row["seed"], "eval": row["eval"], "run": row["run"],
                "suite_fooling_rate": row["fooling_rate"], "independent_fooling_rate": 0.3,
                "suite_uap_acc": 0.0, "independent_uap_acc": 0.1, "suite_at_least_as_strong": True,
                "suite_within_margin": True, "wall_s": 2.0, "device": f"machine {len(attacked)}"}

    monkeypatch.setattr(independent_attack, "provenance", lambda device: {"device": "cpu", "torch": "2", "git_commit": "abc"})
    monkeypatch.setattr(independent_attack, "attack_row", functools.partial(fake, kill_at=1))
    with pytest.raises(KeyboardInterrupt):
        independent_attack.main("smoke", 1, None, tmp_path, tmp_path / "runs")
    resume = tmp_path / "runs" / "independent-attack.jsonl"
    assert len(resume.read_text().splitlines()) == 1 and not (tmp_path / "independent-attack-smoke.json").exists()
    # keyed by the model's path in the project, so a commit of the file resumes in another checkout
    key = json.loads(json.loads(resume.read_text())["key"])
    assert "runs/abc123" in key and str(independent_attack.ROOT) not in resume.read_text()
    with open(resume, "a") as f:
        f.write('{"key": "cut sh')  # the kill came mid-line
    monkeypatch.setattr(independent_attack, "attack_row", fake)
    record = independent_attack.main("smoke", 1, None, tmp_path, tmp_path / "runs")
    assert attacked == [("standard", "head0"), ("entropy_dt", "ensemble")]  # each attacked once
    assert [(r["arm"], r["eval"]) for r in record["rows"]] == attacked
    assert record["resumed_rows"] == 1 and record["row_wall_s"] == 4.0 and not resume.exists()
    assert record["row_devices"] == ["machine 1", "machine 2"]  # each row names the machine it ran on
    assert "Rows attacked on machine 1; machine 2" in (tmp_path / "independent-attack-smoke.md").read_text()
    assert json.loads((tmp_path / "independent-attack-smoke.json").read_text())["rows"] == record["rows"]
