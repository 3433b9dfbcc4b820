"""Training on several processes (``dtlib.distributed``): torchrun with gloo on the CPU, on the mini data.

One configuration, launched as a user would (``torchrun --standalone --nproc-per-node=2 -m dtlib
train ...``): both ranks see disjoint shards that cover each epoch, end with equal parameters and the
same running UAP, rank 0 alone writes one checkpoint and one evaluation, a launcher killed with
SIGKILL leaves no worker behind and the same command resumes to the same weights, and ``nproc=2``
in ``dtlib.run`` hands the configuration to torchrun (the same run key)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import dtlib
import dtlib.__main__
from dtlib import Config
from dtlib.checkpoint import CHECKPOINT, load_verified
from dtlib.distributed import TRACE_ENV, torchrun_command, world_config
from dtlib.experiment import run_dir_for, train_launched, without_timings

from conftest import DATA_DIR, wait_for_mid_epoch_checkpoint

ROOT = Path(__file__).resolve().parent.parent
TORCHRUN = Path(sys.executable).with_name("torchrun")
# DT keeps a running UAP whose gradient is summed over the ranks; 1000 images = 2 shards of 10 batches
# (evaluated by a small suite: what the launch must not change is the subject)
CFG = dict(method="dt", heads=2, train_size=1000, epochs=2, batch_size=50, uap_fit_size=100, uap_epochs=1,
           uap_lr="0.25", uap_refine=0, eval_size=100, data="mini", data_dir=str(DATA_DIR), device="cpu")


def _launch(cwd: Path, checkpoint_minutes: float = 10.0) -> subprocess.Popen:
    (cwd / "trace").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), TRACE_ENV: str(cwd / "trace"), "OMP_NUM_THREADS": "1"}
    args = [f"{k}={v}" for k, v in CFG.items()] + [f"checkpoint_minutes={checkpoint_minutes}"]
    return subprocess.Popen([str(TORCHRUN), "--standalone", "--nproc-per-node=2", "-m", "dtlib", "train", *args],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _trace(cwd: Path) -> dict[int, list[dict]]:
    return {r: [json.loads(line) for line in (cwd / "trace" / f"rank{r}.jsonl").read_text().splitlines()]
            for r in (0, 1)}


def _workers(launcher: int) -> list[int]:
    """The processes whose parent is ``launcher`` (torchrun's workers)."""
    out = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == launcher:
                out.append(int(d.name))
        except (OSError, IndexError, ValueError):
            pass
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """One uninterrupted launch: (its folder, its stdout)."""
    cwd = tmp_path_factory.mktemp("whole")
    proc = _launch(cwd)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return cwd, out


def test_two_ranks_train_disjoint_shards_to_one_model_and_rank_0_alone_writes(whole):
    cwd, out = whole
    trace = _trace(cwd)
    for epoch in range(CFG["epochs"]):
        shards = [next(t["indices"] for t in trace[r] if t.get("epoch") == epoch) for r in (0, 1)]
        assert len(shards[0]) == len(shards[1]) == 500
        assert not set(shards[0]) & set(shards[1]) and set(shards[0]) | set(shards[1]) == set(range(1000))
    ends = [next(t for t in trace[r] if "parameters" in t) for r in (0, 1)]
    assert ends[0]["parameters"] == ends[1]["parameters"]      # DDP: one set of weights
    assert ends[0]["method_state"] == ends[1]["method_state"]  # one running UAP for all ranks
    assert ends[0]["weights"] == ends[1]["weights"]            # BatchNorm statistics too: rank 0's
    (run,) = (cwd / "runs").iterdir()
    files = sorted(p.name for p in run.iterdir())
    assert [f.split("-")[0] for f in files] == ["checkpoint.pt", "config.json", "metrics", "uaps"], files
    assert out.count("| dt | 2 | ensemble |") == 1  # evaluated once, by rank 0
    cfg = Config(**CFG, nproc=2)
    assert run.name == run_dir_for(cfg, "runs").name  # nproc=2 is in the run key, from torchrun's WORLD_SIZE
    metrics = json.loads(next(run.glob("metrics-*.json")).read_text())
    assert metrics["config"]["nproc"] == 2


def test_a_launcher_killed_with_sigkill_leaves_no_worker_and_the_same_command_resumes_to_the_same_weights(tmp_path, whole):
    proc = _launch(tmp_path, checkpoint_minutes=0.002)
    ckpt = run_dir_for(Config(**CFG, nproc=2), tmp_path / "runs") / CHECKPOINT
    wait_for_mid_epoch_checkpoint(proc, ckpt, timeout=300)  # killed inside its first epoch
    workers = _workers(proc.pid)
    assert len(workers) == 2
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    deadline = time.time() + 20
    while any(_alive(w) for w in workers) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(_alive(w) for w in workers), "a worker outlived its launcher"
    stopped = load_verified(ckpt)
    assert not stopped["finished"] and stopped["epoch"] == 0
    again = _launch(tmp_path, checkpoint_minutes=0.002)
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-3000:]
    assert "resuming" in out
    ends = [next(t for t in reversed(_trace(tmp_path)[r]) if "parameters" in t) for r in (0, 1)]
    first = next(t for t in _trace(whole[0])[0] if "parameters" in t)
    assert ends[0]["weights"] == ends[1]["weights"] == first["weights"]  # as the uninterrupted launch
    metrics = [json.loads(next(d.glob("runs/*/metrics-*.json")).read_text()) for d in (tmp_path, whole[0])]
    assert without_timings(metrics[0]["eval"]) == without_timings(metrics[1]["eval"])


def test_nproc_hands_the_config_to_torchrun_and_evaluates_here(whole):
    lines = []
    res = dtlib.run(runs_dir=whole[0] / "runs", progress=False, log=lines.append, **CFG, nproc=2)
    assert any("loaded finished run" in line for line in lines)  # the run torchrun trained: the same key
    assert res.metrics["config"]["nproc"] == 2
    cfg = Config(**CFG, nproc=2)
    cmd = torchrun_command(cfg, "runs")
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    given = dict(a.split("=", 1) for a in cmd[8:])
    assert given.pop("runs_dir") == "runs" and given.pop("evaluate") == "false"
    assert Config().replace(**given) == cfg  # every field reaches the workers


def test_nproc_is_set_from_torchrun_and_a_different_one_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert world_config(Config()).nproc == 4
    assert world_config(Config(nproc=4)).nproc == 4
    with pytest.raises(ValueError, match=r"^nproc=2 differs from the 4 processes torchrun started; [^.]*\.$"):
        world_config(Config(nproc=2))


def test_nproc_and_sync_bn_keep_old_run_keys_and_move_new_ones():
    base = Config()
    assert base.train_hash("fp32") == Config(nproc=1, sync_bn=False).train_hash("fp32")
    assert base.train_hash("fp32") != Config(nproc=2).train_hash("fp32")
    with pytest.raises(ValueError, match="sync_bn=true needs nproc > 1 on CUDA"):
        Config(sync_bn=True)
    with pytest.raises(ValueError, match="nproc must be at least 1"):
        Config(nproc=0)


def test_dtlib_run_with_nproc_2_trains_through_torchrun_and_evaluates_here(tmp_path):
    lines = []
    cfg = dict(train_size=400, epochs=1, batch_size=50, uap_fit_size=50, uap_epochs=1, eval_size=100,
               data="mini", data_dir=str(DATA_DIR), device="cpu")
    res = dtlib.run(runs_dir=tmp_path, progress=False, log=lines.append, nproc=2, **cfg)
    assert any(line.startswith("training on 2 processes: -m torch.distributed.run") for line in lines)
    assert any(line.startswith("evaluating ") for line in lines)  # here, in this process
    ckpt = load_verified(res.run_dir / CHECKPOINT)
    assert ckpt["finished"] and ckpt["config"]["nproc"] == 2
    assert res.run_dir == run_dir_for(Config(**cfg, nproc=2), tmp_path)
    assert res.rows()[0]["clean_acc"] > 0


def test_a_launcher_stopped_by_sigterm_stops_every_rank_at_one_checkpoint_and_resumes_to_the_same_weights(tmp_path, whole):
    proc = _launch(tmp_path, checkpoint_minutes=10.0)  # no checkpoint inside an epoch but the signal's
    ckpt = run_dir_for(Config(**CFG, nproc=2), tmp_path / "runs") / CHECKPOINT
    deadline = time.time() + 300
    while not (tmp_path / "trace" / "rank1.jsonl").exists():  # both ranks are training
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    workers = _workers(proc.pid)
    proc.send_signal(signal.SIGTERM)  # torchrun passes it on to its workers
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "stopped by signal 15" in out, err[-3000:]
    assert not any(_alive(w) for w in workers)
    stopped = load_verified(ckpt)
    assert not stopped["finished"]
    again = _launch(tmp_path)
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-3000:]
    assert "resuming" in out
    ends = [next(t for t in reversed(_trace(tmp_path)[r]) if "parameters" in t) for r in (0, 1)]
    first = next(t for t in _trace(whole[0])[0] if "parameters" in t)
    assert ends[0]["weights"] == ends[1]["weights"] == first["weights"]


def test_under_torchrun_a_fine_tuning_method_needs_its_base_run_made_first(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as in a torchrun worker: refused before any process group
    cfg = Config(method="entropy_dt", train_size=200, repair_size=100, **{k: CFG[k] for k in ("data", "data_dir", "device")})
    with pytest.raises(ValueError, match=r"^method='entropy_dt' fine-tunes the standard run of its settings, which is "
                                         r"not trained in .* yet; run the same command without torchrun and with nproc=2"):
        train_launched(cfg, runs_dir=tmp_path)
    assert not (tmp_path).exists() or not any(tmp_path.iterdir())


def test_the_command_line_under_torchrun_takes_the_world_size_before_checking_the_config(monkeypatch):
    env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "localhost", "MASTER_PORT": "29500"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    seen = []
    monkeypatch.setattr(dtlib.__main__, "train_launched", lambda cfg, **kw: seen.append(cfg))
    assert dtlib.__main__.main(["train", "sync_bn=true", "device=cuda"]) == 0
    assert seen[0].nproc == 2 and seen[0].sync_bn  # sync_bn=true alone would be refused at nproc=1
