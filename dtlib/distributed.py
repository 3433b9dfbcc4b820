"""Training one configuration on several processes with torch.distributed, launched by torchrun.

    torchrun --standalone --nproc-per-node=N -m dtlib train key=value ...
    torchrun --nnodes=M --nproc-per-node=N --rdzv-backend=c10d --rdzv-endpoint=HOST:PORT -m dtlib train ...

Every process (rank) loads the data, builds the model and wraps it in DistributedDataParallel; the
loop (``train``) shards each epoch as DistributedSampler does, sums the running UAP's gradient over
the ranks, and lets rank 0 alone write checkpoints. ``batch_size`` is per process, so a step sees
``nproc * batch_size`` images; ``nproc`` (the world size) is a training field, since it changes the
weights. A signal (SIGTERM from the launcher, Ctrl-C) stops every rank after the same batch, at
rank 0's checkpoint. Every rank reads the run's checkpoint itself when it resumes, so on several
machines ``runs_dir`` must be on a filesystem they share. After training the process group is closed
on every rank and rank 0 alone evaluates, with no collective to time out during an evaluation of
hours. PGD-AT's and entropy_dt's random starts are drawn by one generator seeded alike on every rank
(a resume restores rank 0's state on all), so the ranks draw the same noise for different images. ``launch`` runs a configuration with
``nproc > 1`` through torchrun from a notebook or ``make reproduce``.
"""
from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from .config import Config
from .runtime import distributed

# Set by torchrun in every worker it starts; WORLD_SIZE is set even for one process.
TORCHRUN_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
# A file per rank (JSON lines) of the indices each epoch's shard held and of the final state's
# digest, written when this variable names a folder: how a test sees what every rank did.
TRACE_ENV = "DTLIB_TRACE_DIR"


def launched() -> bool:
    """Whether this process is a worker that torchrun started."""
    return all(k in os.environ for k in TORCHRUN_ENV)


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_config(cfg: Config) -> Config:
    """``cfg`` with ``nproc`` = the launch's world size: set from torchrun's WORLD_SIZE when left at
    1, refused (one sentence) when it names another number."""
    world = int(os.environ["WORLD_SIZE"])
    if cfg.nproc not in (1, world):
        raise ValueError(f"nproc={cfg.nproc} differs from the {world} processes torchrun started; drop nproc "
                         f"or set it to {world}.")
    return cfg.replace(nproc=world)


def _watch_parent(parent: int) -> None:
    """End this worker when its launcher is gone: torchrun killed with SIGKILL cannot stop the
    workers it started, which would otherwise train on as orphans beside the next launch."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)
    threading.Thread(target=watch, name="dtlib-parent-watch", daemon=True).start()


@contextmanager
def process_group(cfg: Config) -> Iterator[torch.device]:
    """The process group of a torchrun worker (NCCL on CUDA, gloo on the CPU) for the length of the
    block; yields this rank's device. Closed on every rank after a barrier, so no rank tears its
    connections down while another still uses them (gloo then aborts the process)."""
    _watch_parent(os.getppid())
    cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    local = int(os.environ["LOCAL_RANK"])
    if cuda:
        torch.cuda.set_device(local)
    # a generous timeout: rank 0 may read and check a large checkpoint while the others wait
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(minutes=30))
    ok = False
    try:
        yield torch.device("cuda", local) if cuda else torch.device("cpu")
        ok = True
    finally:
        if ok:  # an error on one rank: the others fail in their next collective, so no barrier
            dist.barrier()
        gc.collect()  # DDP's reducer in a reference cycle would keep the group alive past its destruction
        dist.destroy_process_group()


def ddp(cfg: Config) -> Callable[[nn.Module], nn.Module]:
    """How ``train`` wraps the model: DistributedDataParallel (on CUDA on this rank's device), with
    BatchNorm synchronised over the ranks when ``cfg.sync_bn``. The attacks of the training step run
    on the module inside (``runtime.attack_module``), outside DDP's gradient hooks."""
    def wrap(model: nn.Module) -> nn.Module:
        cuda = next(model.parameters()).device.type == "cuda"
        if cfg.sync_bn and not cuda:
            raise ValueError("sync_bn=true needs CUDA (torch's SyncBatchNorm runs on GPUs), but this run trains on the CPU.")
        if cfg.sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return DistributedDataParallel(model, device_ids=[torch.cuda.current_device()] if cuda else None)
    return wrap


def agreed_signal(signum: int | None, device: torch.device) -> int | None:
    """The stop signal any rank has caught (the largest number), so that all ranks stop after the
    same batch and rank 0's checkpoint is where every rank stands; ``signum`` itself without a
    process group. One small all-reduce per batch (on CUDA also a wait for the device)."""
    if not distributed():
        return signum
    flag = torch.tensor([signum or 0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item()) or None


def trace(record: Callable[[], dict[str, Any]]) -> None:
    """When ``TRACE_ENV`` names a folder, append ``record()`` (with this rank) to the rank's trace file."""
    where = os.environ.get(TRACE_ENV)
    if where:
        with open(Path(where) / f"rank{rank()}.jsonl", "a") as fh:
            fh.write(json.dumps({"rank": rank(), **record()}) + "\n")


def torchrun_command(cfg: Config, runs_dir: str | Path) -> list[str]:
    """The command that trains ``cfg`` on ``cfg.nproc`` processes of this machine."""
    args = [f"{k}={v}" for k, v in cfg.to_dict().items() if k not in ("download",)]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={cfg.nproc}",
            "-m", "dtlib", "train", f"runs_dir={runs_dir}", "evaluate=false", *args]


def launch(cfg: Config, runs_dir: str | Path, log: Callable[[str], None] = print) -> None:
    """Train ``cfg`` through torchrun (``torchrun_command``) and wait for it; its output goes to
    this process's. Raises RuntimeError (one sentence) when it fails."""
    cmd = torchrun_command(cfg, Path(runs_dir).resolve())
    log(f"training on {cfg.nproc} processes: {' '.join(cmd[1:6])} ...")
    done = subprocess.run(cmd)
    if done.returncode:
        raise RuntimeError(f"torchrun training on {cfg.nproc} processes failed with exit code {done.returncode}; "
                           "its error is printed above.")
