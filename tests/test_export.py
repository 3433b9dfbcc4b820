"""Weights-only exports: a run's model as a safetensors file with its config, loaded back by path to
the same function; the study's export of every arm and seed with an index whose sha256 match."""
import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import dtlib
from dtlib.study import export_models
from dtlib.weights import FORMAT, load_weights, save_weights


def results_file(tmp_path, run, profile="smoke"):
    rows = [{"arm": arm, "eval": "head0", "seed": 0, "clean_acc": 0.5, "run": run.run_dir.name}
            for arm in ("standard", "dt_best")]
    path = tmp_path / f"01_headline-{profile}.json"
    path.write_text(json.dumps({"profile": profile, "rows": rows, "provenance": {"git_commit": "abc"}}))
    return path


def test_an_exported_model_computes_what_the_run_does(standard_run, tmp_path):
    model, cfg = dtlib.load_model(standard_run.run_dir)
    sha = save_weights(model, cfg, tmp_path / "m.safetensors", {"arm": "standard"})
    assert sha == hashlib.sha256((tmp_path / "m.safetensors").read_bytes()).hexdigest()
    again, cfg2 = dtlib.load_model(tmp_path / "m.safetensors")
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert cfg2 == cfg and not again.training
    assert torch.equal(again(x), model(x))
    # an outside tool needs safetensors alone: plain tensors, the config in the metadata
    assert set(load_file(tmp_path / "m.safetensors")) == set(model.state_dict())
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary file left


def test_unreadable_or_foreign_files_are_refused_in_one_sentence(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(ValueError, match=r"junk.safetensors is not a readable safetensors file \(\w+\)\.$"):
        load_weights(tmp_path / "junk.safetensors")
    with pytest.raises(ValueError, match=r"missing.safetensors: no such file\.$"):
        dtlib.load_model(tmp_path / "missing.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"), metadata={"format": "someone else's"})
    with pytest.raises(ValueError, match=f"holds no dtlib model .*not {FORMAT!r}"):
        load_weights(tmp_path / "other.safetensors")


def test_the_study_export_writes_each_run_once_with_an_index(standard_run, runs_dir, tmp_path):
    out = tmp_path / "models"
    index = export_models([results_file(tmp_path, standard_run)], out, runs_dir, log=lambda s: None)
    files = sorted(p.name for p in out.iterdir())
    assert files == ["index.json", "standard-seed0.safetensors"]  # dt_best shares the run: one file
    assert json.loads((out / "index.json").read_text()) == index
    assert [(m["arm"], m["seed"], m["file"]) for m in index["models"]] == [
        ("standard", 0, "standard-seed0.safetensors"), ("dt_best", 0, "standard-seed0.safetensors")]
    m = index["models"][0]
    assert m["sha256"] == hashlib.sha256((out / m["file"]).read_bytes()).hexdigest()
    assert m["clean_acc"] == {"head0": 0.5} and m["config"] == standard_run.config.to_dict()
    assert index["total_bytes"] == (out / m["file"]).stat().st_size
    with pytest.raises(ValueError, match=r"holds no checkpoint \(1 of the runs are missing\)"):
        export_models([results_file(tmp_path, standard_run)], tmp_path / "elsewhere", tmp_path)
    assert not (tmp_path / "elsewhere").exists()  # nothing written
    cpu_dir = tmp_path / "cpu"
    cpu_dir.mkdir()
    with pytest.raises(ValueError, match="profiles cpu, smoke"):
        export_models([results_file(tmp_path, standard_run), results_file(cpu_dir, standard_run, "cpu")],
                      out, runs_dir)
