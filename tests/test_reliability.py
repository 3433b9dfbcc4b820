"""Nothing lost, nothing silently wrong: resume after a kill, determinism, corrupt files, the cache key."""
import json
import os
import signal
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import torch

import dtlib
from dtlib import Config
from dtlib.config import BACKBONES, FIELD_TYPES, METHOD_FIELDS, METHODS
import dtlib.suite
from dtlib.experiment import journal_path, metrics_path, run_dir_for, without_timings
from dtlib import study as S
from dtlib.study import carry, fill
from dtlib.checkpoint import CHECKPOINT, CorruptFile, load_verified, read_checkpoint, save_verified, state_digest
from dtlib.evaluate import journal_file

from conftest import DATA_DIR, MINI, wait_for_mid_epoch_checkpoint

ROOT = Path(__file__).resolve().parent.parent
# DT keeps a running UAP and PGD-AT a random generator: both must come back exactly after a kill.
# Its evaluation is a small suite (one step size, no refining starts): what a kill must not change is the subject.
KILLED = dict(method="dt", heads=2, train_size=1000, epochs=3, batch_size=50, uap_fit_size=200, uap_epochs=1,
              uap_lr="0.25", uap_refine=0, eval_size=100, data="mini", data_dir=str(DATA_DIR), device="cpu",
              checkpoint_minutes=0.002)
QUIET = dict(progress=False, log=lambda s: None)


def _cli(cwd: Path, cfg: dict) -> subprocess.Popen:
    args = [f"{k}={v}" for k, v in cfg.items()]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "dtlib", "train", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finished(cwd: Path, cfg: dict) -> tuple[dict, dict]:
    """(final model weights, metrics without timings) of the run of ``cfg`` under ``cwd``/runs."""
    run_dir = run_dir_for(Config(**cfg), cwd / "runs")
    ckpt = load_verified(run_dir / CHECKPOINT)
    assert ckpt["finished"]
    metrics = json.loads(metrics_path(run_dir, Config(**cfg)).read_text())
    return ckpt["model"], without_timings(metrics)


def _interrupt_then_resume(tmp: Path, cfg: dict, sig: int) -> tuple[dict, dict, dict]:
    """Start a training process, send ``sig`` as soon as it has written a checkpoint from inside an
    epoch (still in its first of three epochs, so never during evaluation), then run the same
    command again to the end; returns (weights, metrics, what the stopped process left)."""
    proc = _cli(tmp, cfg)
    ckpt = run_dir_for(Config(**cfg), tmp / "runs") / CHECKPOINT
    wait_for_mid_epoch_checkpoint(proc, ckpt)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    stopped_at = load_verified(ckpt)
    assert not stopped_at["finished"]
    again = _cli(tmp, cfg)
    out2, err2 = again.communicate(timeout=300)
    assert again.returncode == 0, err2
    weights, metrics = _finished(tmp, cfg)
    return weights, metrics, {"returncode": proc.returncode, "stdout": out, "ckpt": stopped_at, "resumed": out2}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("whole")
    proc = _cli(tmp, KILLED)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return _finished(tmp, KILLED)


def _assert_same(a: tuple[dict, dict], b: tuple[dict, dict]) -> None:
    assert a[0].keys() == b[0].keys()
    for k in a[0]:
        assert torch.equal(a[0][k], b[0][k]), k
    assert a[1] == b[1]


def test_a_run_killed_with_sigkill_and_started_again_ends_exactly_as_an_uninterrupted_one(tmp_path, uninterrupted):
    weights, metrics, stopped = _interrupt_then_resume(tmp_path, KILLED, signal.SIGKILL)
    assert stopped["returncode"] == -signal.SIGKILL
    ckpt = stopped["ckpt"]  # the last periodic checkpoint before the kill: inside an epoch
    assert ckpt["batch"] > 0 and ckpt["partial"]["seen"] == ckpt["batch"] * KILLED["batch_size"]
    assert f"batch {ckpt['batch']}/20" in stopped["resumed"]
    _assert_same((weights, metrics), uninterrupted)


def test_sigterm_writes_a_mid_epoch_checkpoint_and_the_resumed_run_ends_the_same(tmp_path, uninterrupted):
    weights, metrics, stopped = _interrupt_then_resume(tmp_path, KILLED, signal.SIGTERM)
    assert stopped["returncode"] == 128 + signal.SIGTERM
    assert "stopped by signal 15" in stopped["stdout"]
    ckpt = stopped["ckpt"]  # written on the signal, at the batch it came in (inside the first epoch)
    assert ckpt["epoch"] == 0 and ckpt["batch"] > 0
    assert ckpt["partial"]["seen"] == ckpt["batch"] * KILLED["batch_size"] and set(ckpt["rng"]) == {"torch", "cuda"}
    assert f"batch {ckpt['batch']}/20" in stopped["resumed"]
    _assert_same((weights, metrics), uninterrupted)


def test_sigint_inside_an_epoch_checkpoints_raises_keyboard_interrupt_and_resumes_exactly(tmp_path, monkeypatch):
    """Ctrl-C (as Jupyter's interrupt sends it) in the middle of PGD-AT's second epoch: the batch
    finishes, the checkpoint holds the epoch's running sums and the attack generator's state, and
    the resumed run ends as one never interrupted."""
    # one PGD step, not seven: the attack's generator state is what must come back, at a quarter of the time
    cfg = Config(**{**KILLED, "method": "pgd_at", "heads": 1, "epochs": 2, "pgd_steps": 1, "checkpoint_minutes": 10.0})
    train_split, _, _ = dtlib.data.load_data(cfg)
    real, calls = dtlib.train.train_step, []

    def step_then_interrupt(*a, **k):
        out = real(*a, **k)
        calls.append(1)
        if len(calls) == 27:  # batch 7 of the second epoch (20 batches an epoch)
            os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(dtlib.train, "train_step", step_then_interrupt)
    handler = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN in a job started with `&`
    with pytest.raises(KeyboardInterrupt):
        dtlib.train.train(cfg, train_split, run_dir=tmp_path, **QUIET)
    ckpt = load_verified(tmp_path / CHECKPOINT)
    assert (ckpt["epoch"], ckpt["batch"], ckpt["partial"]["seen"]) == (1, 7, 7 * 50)
    assert signal.getsignal(signal.SIGINT) is handler  # handlers restored
    lines = []
    _, stats = dtlib.train.train(cfg, train_split, run_dir=tmp_path, progress=False, log=lines.append)
    assert lines[0].startswith("resuming") and "epoch 2, batch 7/20" in lines[0]
    monkeypatch.setattr(dtlib.train, "train_step", real)
    _, whole = dtlib.train.train(cfg, train_split, run_dir=tmp_path / "whole", **QUIET)
    assert without_timings(stats["history"]) == without_timings(whole["history"])
    assert torch.equal(stats["method_state"]["generator"], whole["method_state"]["generator"])


def test_two_runs_of_one_config_give_identical_results_minus_wall_times(tmp_path):
    cfg = dict(method="dt", heads=2, train_size=400, epochs=1, batch_size=50, uap_fit_size=100, uap_epochs=1,
               eval_size=100, **MINI)
    a = dtlib.run(runs_dir=tmp_path / "a", **QUIET, **cfg).metrics
    b = dtlib.run(runs_dir=tmp_path / "b", **QUIET, **cfg).metrics
    assert a != b  # the wall times differ...
    assert without_timings(a) == without_timings(b)  # ...and nothing else
    assert "wall_s" not in json.dumps(without_timings(a))


def test_a_truncated_checkpoint_is_reported_in_one_line_and_its_config_trained_again(tmp_path):
    cfg = dict(train_size=200, epochs=1, batch_size=50, uap_fit_size=50, uap_epochs=1, eval_size=100, **MINI)
    first = dtlib.run(runs_dir=tmp_path, **QUIET, **cfg)
    ckpt = first.run_dir / CHECKPOINT
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    metrics_path(first.run_dir, first.config).unlink()
    lines = []
    again = dtlib.run(runs_dir=tmp_path, progress=False, log=lines.append, **cfg)
    said = [line for line in lines if "unreadable" in line]
    assert len(said) == 1 and "truncated or corrupt" in said[0] and "again from the start" in said[0]
    assert any(line.startswith("training ") for line in lines)
    assert (first.run_dir / (CHECKPOINT + ".corrupt")).exists()
    assert without_timings(again.metrics) == without_timings(first.metrics)


@pytest.mark.parametrize("keep", [0.5, -20, 0])
def test_a_torch_file_cut_short_anywhere_is_corrupt_not_an_os_error(tmp_path, keep):
    """Cut in the middle torch.load fails to unpickle; cut just before the zip's end record (the
    last bytes) its zip reader raises OSError(EINVAL), which is the file's fault too; empty."""
    path = tmp_path / "u.pt"
    save_verified(path, {"w": torch.arange(5000, dtype=torch.float32)})
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)] if isinstance(keep, float) else data[:keep])
    with pytest.raises(CorruptFile, match=r"u\.pt is unreadable \(\w+: truncated or corrupt\)\.$"):
        load_verified(path)


def test_a_checkpoint_that_lost_its_digest_or_its_running_sums_is_not_trusted(tmp_path):
    path = tmp_path / "c.pt"
    torch.save({"model": {}, "rng": {}, "epoch": 1}, path)  # a current checkpoint without its sha256
    with pytest.raises(CorruptFile, match=r"c\.pt has lost its sha256 entry\.$"):
        load_verified(path)
    torch.save({"model": {}, "epoch": 1}, path)  # from before digests: loads
    assert load_verified(path)["epoch"] == 1
    cfg = Config(**MINI)
    save_verified(tmp_path / CHECKPOINT, {"config": cfg.to_dict(), "batch": 3, "partial": None, "rng": {}})
    lines = []
    assert read_checkpoint(tmp_path / CHECKPOINT, cfg, lines.append) is None
    assert len(lines) == 1 and "lacks that epoch's running sums; training this config again" in lines[0]


def test_a_flipped_byte_inside_a_tensor_fails_the_checkpoints_sha256(tmp_path):
    path = tmp_path / "c.pt"
    save_verified(path, {"w": torch.arange(50000, dtype=torch.float32), "epoch": 3})
    assert load_verified(path)["epoch"] == 3
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # torch.load itself would load this without complaint
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptFile, match=r"c\.pt fails its sha256 check \(corrupt on disk\)\.$"):
        load_verified(path)


def test_an_evaluation_killed_inside_its_suite_goes_on_from_the_fits_it_saved(tmp_path, monkeypatch):
    cfg = dict(method="dt", heads=2, train_size=200, epochs=1, batch_size=50, uap_fit_size=50, uap_epochs=1,
               eval_size=100, **MINI)
    calls = []

    def fit_uap(*args, **kw):  # the suite's fits, counted; the kill comes inside the second mode's
        calls.append(1)
        if len(calls) == die_at:
            raise KeyboardInterrupt
        return real(*args, **kw)

    real, die_at = dtlib.suite.fit_uap, 0
    monkeypatch.setattr(dtlib.suite, "fit_uap", fit_uap)
    whole = dtlib.run(runs_dir=tmp_path / "a", **QUIET, **cfg).metrics
    total, die_at = len(calls), len(calls) - 2
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        dtlib.run(runs_dir=tmp_path / "b", **QUIET, **cfg)
    run_dir = run_dir_for(Config(**cfg), tmp_path / "b")
    assert sorted(p.name for p in run_dir.glob("partial-*")) == [f"{journal_path(run_dir, Config(**cfg)).name}-{m}.pt"
                                                                 for m in ("ensemble", "single")]
    # packed (study.carry) as it stands and unpacked into another cache: the saved fits travel with the weights
    quiet = lambda s: None
    assert carry.pack_runs([Config(**cfg)], tmp_path / "b", tmp_path / "pack", log=quiet)["under_way"] == 1
    said = []  # a cache without the plan's runs (e.g. filled at another precision) says how to find them
    assert carry.pack_runs([Config(**cfg)], tmp_path / "empty", tmp_path / "pack0", log=said.append)["runs"] == 0
    assert "DTLIB_AUTO_PRECISION" in said[-1]
    carry.unpack(tmp_path / "pack", tmp_path / "c", log=quiet)
    for where in ("b", "c"):
        calls.clear()
        again = dtlib.run(runs_dir=tmp_path / where, **QUIET, **cfg)
        assert len(calls) == 3  # the killed fit and the two after it: the other total - 3 came from the journals
        assert without_timings(again.metrics) == without_timings(whole)
    assert total > 6 and not list(run_dir.glob("partial-*"))  # removed once the metrics are saved


def test_a_corrupt_cached_evaluation_is_evaluated_again(tmp_path):
    cfg = dict(train_size=200, epochs=1, batch_size=50, uap_fit_size=50, uap_epochs=1, eval_size=100, **MINI)
    first = dtlib.run(runs_dir=tmp_path, **QUIET, **cfg)
    path = metrics_path(first.run_dir, first.config)
    path.write_text(path.read_text()[:100])
    lines = []
    again = dtlib.run(runs_dir=tmp_path, progress=False, log=lines.append, **cfg)
    assert any("cannot be trusted" in line and "evaluating again" in line for line in lines)
    assert not any(line.startswith("training ") for line in lines)  # the checkpoint was fine
    assert without_timings(again.metrics) == without_timings(first.metrics)


def test_a_checkpoint_of_another_config_is_refused_naming_the_field(tmp_path):
    cfg = Config(train_size=200, epochs=1, batch_size=50, **MINI)
    train_split, _, _ = dtlib.data.load_data(cfg)
    dtlib.train.train(cfg, train_split, run_dir=tmp_path, progress=False, log=lambda s: None)
    with pytest.raises(ValueError, match=r"was written for a different training config \(lr=0\.1, asked 0\.05\); "
                                         r"delete it or use another run directory\.$"):
        dtlib.train.train(cfg.replace(lr=0.05), train_split, run_dir=tmp_path, progress=False, log=lambda s: None)


def _another_value(name: str, value):
    """A different valid value of a Config field."""
    choices = {"method": METHODS, "backbone": BACKBONES, "norm": ("linf", "l2"), "eval_norm": ("linf", "l2"),
               "data": ("full", "mini"), "device": ("auto", "cpu"), "precision": ("auto", "bf16", "fp32"),
               "eval_split": ("test", "val"), "uap_objective": ("ensemble_ce", "loss"),
               "eval_modes": ("ensemble,single", "ensemble"), "uap_lr": ("0.1", "0.05,0.2"), "data_dir": ("data", "x"),
               "eval_objectives": ("ensemble_ce", "heads_ce"), "eval_labels": ("predicted", "true"),
               "ent_bn": ("eval", "train"), "pretrained": ("", "weights.pth"), "image_size": (0, 32)}
    if name in choices:
        return next(c for c in choices[name] if c != value)
    kind = FIELD_TYPES[name]
    if kind is bool:
        return not value
    if kind is int:
        return value + 10 if name in ("train_size", "val_size", "eval_size", "repair_size") else value + 1
    return value / 2 if value else 0.5


def test_the_cache_keys_cover_every_field_that_changes_results():
    """Every training field moves the run key, every evaluation field the evaluation key; runtime
    fields (device, precision-neutral switches, where the data lives, checkpoint cadence) move
    neither. A new field must be put in one of the groups, and this test holds it to its group."""
    own = {name: method for method, names in METHOD_FIELDS.items() for name in names}
    for f in fields(Config):
        # a field only one method reads (METHOD_FIELDS) is checked on that method's runs
        base = Config(method=own.get(f.name, "dt"), heads=2, val_size=100, eval_target=3 if f.name == "uap_adam_lr" else -1,
                      nproc=2 if f.name == "sync_bn" else 1,  # SyncBatchNorm needs processes to share batches
                      backbone="resnet50" if f.name == "pretrained" else "cnn",  # ... and weights a ResNet-50
                      data="imagenet" if f.name in ("image_size", "workers") else "full")  # ... an ImageFolder's settings
        changed = base.replace(**{f.name: _another_value(f.name, getattr(base, f.name))})
        group = f.metadata["group"]
        assert (changed.train_hash() != base.train_hash()) == (group == "train"), f.name
        assert (changed.eval_hash() != base.eval_hash()) == (group == "eval"), f.name
        if f.name in own:  # ... and leaves every other method's runs where they are
            other = "standard" if own[f.name] != "standard" else "dt"
            try:
                elsewhere = Config(method=other).replace(**{f.name: getattr(changed, f.name)})
            except ValueError:  # refused where it is not read (uap_every): no run of another method to move
                continue
            assert elsewhere.train_hash() == Config(method=other).train_hash()
    # ... except what the suite does not read in the evaluation's mode: Adam's rate untargeted, labels targeted
    assert Config(uap_adam_lr=0.01).eval_hash() == Config().eval_hash()
    assert Config(eval_target=3, eval_labels="true").eval_hash() == Config(eval_target=3).eval_hash()
    assert set(dtlib.config.ADDED_TRAIN_FIELDS) <= {f.name for f in fields(Config) if f.metadata["group"] == "train"}
    assert set(own) <= {f.name for f in fields(Config) if f.metadata["group"] == "train"}


def test_the_code_version_is_part_of_both_keys(monkeypatch):
    before = Config().train_hash("bf16"), Config().eval_hash()
    monkeypatch.setattr(dtlib.config, "CODE_VERSION", "test-bump")
    after = Config().train_hash("bf16"), Config().eval_hash()
    assert before[0] != after[0] and before[1] != after[1]
    monkeypatch.setattr(dtlib.config, "ATTACK_VERSION", -1)  # the attack's: evaluations again, never training
    assert Config().train_hash("bf16") == after[0] and Config().eval_hash() != after[1]


def test_fill_trains_and_evaluates_in_lanes_what_the_notebook_then_reads_here_and_after_a_pack(tmp_path, capsys):
    """A real fill of the smoke headline in two lanes: afterwards nothing is left to plan, and the
    headline trains and fits nothing (every run and evaluation is read from the cache). Its
    ``--status`` counts what the cache holds of the plan, before, during and after. Packed
    (``carry``) and unpacked into another machine's empty cache, the headline there too reads
    everything and trains nothing; a damaged pack and a run retrained there are not mixed in."""
    # the least attack suite (what is filled is the subject here, not how strong the attack is)
    light = {"eval_objectives": "ensemble_ce", "eval_labels": "predicted", "uap_refine": 0}
    overrides = {"seeds": [0], "grid_div": [1.0], "grid_adv": [0.0], **light}
    study = S.setup("smoke", overrides, root=str(tmp_path), progress=False)
    planned = fill.plan(study, ["01_headline"])
    n_runs = len({run_dir_for(c, tmp_path / "runs") for c in planned})
    assert fill.status(study, ["01_headline"]) == {"01_headline": dict(evaluations=len(planned), cached=0, under_way=0,
                                                                       runs=n_runs, trained=0)}
    journal = journal_path(run_dir_for(planned[0], tmp_path / "runs"), planned[0])
    journal.parent.mkdir(parents=True)
    Path(f"{journal}-ensemble.pt").write_bytes(b"fits of a killed evaluation")
    assert fill.status(study, ["01_headline"])["01_headline"]["under_way"] == 1
    Path(f"{journal}-ensemble.pt").unlink()
    fill.fill_runs(study, ["01_headline"], lanes=2, log=lambda s: None)
    assert all(fill.cached(c, tmp_path / "runs") for c in fill.plan(study, ["01_headline"]))
    capsys.readouterr()
    fill.main(["--status", "--root", str(tmp_path), "--overrides", json.dumps(overrides), "smoke", "01_headline"])
    n = len(fill.plan(study, ["01_headline"]))
    assert capsys.readouterr().out == (f"01_headline: {n} of {n} evaluations cached, 0 under way; "
                                       f"{n_runs} of {n_runs} runs trained\n")
    assert not list((tmp_path / "runs").glob("*/partial-*"))
    said = []
    S.headline(study, log=said.append)
    assert said and all("loaded finished run" in s for s in said), said
    _pack_and_unpack(study, overrides, planned_runs=n_runs, evaluations=n, tmp_path=tmp_path)


def _pack_and_unpack(study, overrides, planned_runs, evaluations, tmp_path):
    quiet = lambda s: None
    packed = tmp_path / "pack"
    assert carry.pack(study, ["01_headline"], packed, log=quiet) == {"runs": planned_runs, "evaluations": evaluations,
                                                                      "under_way": 0, "skipped": 0}
    ckpts = sorted(packed.glob(f"*/{CHECKPOINT}"))
    assert len(ckpts) == planned_runs and not list(packed.glob("*/partial-*"))
    ckpt = load_verified(ckpts[0])
    here = load_verified(tmp_path / "runs" / ckpts[0].parent.name / CHECKPOINT)
    assert ckpt["finished"] and "optimizer" not in ckpt and "optimizer" in here
    assert all(torch.equal(ckpt["model"][k], here["model"][k]) for k in here["model"])

    other = S.setup("smoke", overrides, root=str(tmp_path / "other"), progress=False)
    runs = tmp_path / "other" / "runs"
    copied = carry.unpack(packed, runs, log=quiet)
    assert copied == len([f for f in packed.rglob("*") if f.is_file()])
    assert fill.status(other, ["01_headline"])["01_headline"] == dict(evaluations=evaluations, cached=evaluations,
                                                                       under_way=0, runs=planned_runs, trained=planned_runs)
    said = []
    S.headline(other, log=said.append)
    assert said and all("loaded finished run" in s for s in said), said
    assert carry.unpack(packed, runs, log=quiet) == 0  # what is there is never copied again

    # an evaluation under way there: its saved fits travel, its metrics do not exist yet
    cfg = fill.plan(other, ["01_headline"])[-1]  # a test-split one: the plan does not hang on it
    where = run_dir_for(cfg, runs)
    for f in (f"metrics-{cfg.eval_hash()}.json", f"uaps-{cfg.eval_hash()}.pt"):
        (where / f).unlink()
    save_verified(journal_file(journal_path(where, cfg), "single"), {"key": {}, "fits": {}})
    again = tmp_path / "pack2"
    assert carry.pack(other, ["01_headline"], again, log=quiet) == {"runs": planned_runs, "evaluations": evaluations - 1,
                                                                     "under_way": 1, "skipped": 0}
    assert (again / where.name / f"partial-{cfg.eval_hash()}-single.pt").exists()

    # a run trained there with other weights keeps its own evaluations: none of the pack's is copied in
    state = load_verified(where / CHECKPOINT)
    state["model"] = {k: v + 1 if v.is_floating_point() else v for k, v in state["model"].items()}
    save_verified(where / CHECKPOINT, state)
    said = []
    carry.unpack(packed, runs, log=said.append)
    assert not (where / f"metrics-{cfg.eval_hash()}.json").exists()
    assert any("holds other weights" in s for s in said), said
    said = []  # nor is such a run packed beside the weights the pack holds
    assert carry.pack(other, ["01_headline"], again, log=said.append)["skipped"] == 1
    assert any("holds other weights" in s for s in said), said

    # an unfinished run there (a fill started before the pack came) is set aside for the pack's finished one
    fourth = tmp_path / "fourth" / "runs"
    name = ckpts[0].parent.name
    save_verified(fourth / name / CHECKPOINT, {**load_verified(ckpts[0]), "finished": False})
    carry.unpack(again, fourth, log=quiet)
    assert not load_verified(fourth / name / (CHECKPOINT + ".unfinished"))["finished"]
    assert state_digest(load_verified(fourth / name / CHECKPOINT)) == state_digest(load_verified(again / name / CHECKPOINT))

    # a damaged file stops the unpack before anything of its run is copied, naming the file
    bad = next(packed.glob("*/uaps-*.pt"))
    bad.write_bytes(bad.read_bytes()[:-20])
    third = tmp_path / "third" / "runs"
    with pytest.raises(CorruptFile, match=bad.name):
        carry.unpack(packed, third, log=quiet)
    assert not (third / bad.parent.name).exists()
