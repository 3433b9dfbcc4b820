"""Running configurations through the run cache, loading trained models, and the result table.

``run(cfg)`` trains into ``runs/<config-hash>/`` (config.json, checkpoint.pt) unless that directory
already holds a finished checkpoint, and evaluates it into ``metrics-<eval-hash>.json`` and
``uaps-<eval-hash>.pt``, one pair per evaluation setting: a finished run is loaded, never retrained,
and an evaluation already made is loaded, never refitted.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

from .checkpoint import CHECKPOINT, CorruptFile, load_verified, read_checkpoint, save_verified, train_summary
from .config import MODES, Config
from .data import data_identity, load_data, make_loader
from .distributed import ddp, launch, process_group, rank, world_config
from .evaluate import check_scored, evaluate_model, journal_file
from .io import write_json
from .methods import STEPS
from .models import MultiHead, build_model
from .runtime import amp_dtype, distributed, precision_name, provenance, resolve_device
from .train import train
from .weights import load_weights


def _read_checkpoint(run_dir: Path) -> dict[str, Any]:
    path = run_dir / CHECKPOINT
    if not path.exists():
        raise FileNotFoundError(f"{run_dir} holds no {CHECKPOINT}; train it with dtlib.run or `python -m dtlib train`.")
    return load_verified(path)


def load_uaps(run_dir: str | Path, cfg: Config, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """The UAPs an evaluation of ``cfg`` fitted, by inference mode ("ensemble", "head0", ...)."""
    return load_verified(uaps_path(Path(run_dir), cfg), device)


def load_model(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[MultiHead, Config]:
    """The trained model of a finished run (its folder), or of an exported ``.safetensors`` file
    (``weights``, e.g. ``models/study/dt_div-seed0.safetensors``), in eval mode, and its config.

    The model takes images (B, 3, H, W) in [0, 1] and returns per-head logits (K, B, 10);
    ``model.classifier("ensemble")`` or ``model.classifier("single", head=i)`` is a plain
    (B, 10)-scores module for outside attack libraries."""
    run_dir = Path(run_dir)
    if run_dir.suffix == ".safetensors":
        return load_weights(run_dir, device)
    return _model_from(_read_checkpoint(run_dir), run_dir, device)


def _model_from(ckpt: dict[str, Any], run_dir: Path, device: str | torch.device) -> tuple[MultiHead, Config]:
    cfg = Config.from_dict(ckpt["config"])
    if not ckpt.get("finished"):
        raise ValueError(f"{run_dir} stopped at epoch {ckpt['epoch']} of {cfg.epochs}; run its config again to finish it.")
    classes = ckpt["model"]["weight"].shape[1]  # the heads' (K, classes, features): the data's class count
    model = build_model(cfg.replace(checkpointing=False, pretrained=""), classes).to(device)  # the checkpoint's weights
    model.load_state_dict(ckpt["model"])
    return model.eval(), cfg


def run_dir_for(cfg: Config, runs_dir: str | Path = "runs") -> Path:
    """``runs/<hash>``: the hash covers the training fields, the code version and the precision
    that ``cfg.precision`` resolves to on this machine."""
    return Path(runs_dir) / cfg.train_hash(precision_name(cfg), data_identity(cfg))


def metrics_path(run_dir: Path, cfg: Config) -> Path:
    return run_dir / f"metrics-{cfg.eval_hash()}.json"


def uaps_path(run_dir: Path, cfg: Config) -> Path:
    return run_dir / f"uaps-{cfg.eval_hash()}.pt"


def cached(cfg: Config, runs: Path) -> bool:
    """Whether the run cache under ``runs`` holds ``cfg``'s evaluation (its metrics and its UAPs)."""
    where = run_dir_for(cfg, runs)
    return metrics_path(where, cfg).exists() and uaps_path(where, cfg).exists()


def journal_path(run_dir: Path, cfg: Config) -> Path:
    """The prefix of an evaluation's unfinished suites (``evaluate.journal_file``): removed once its metrics are saved."""
    return run_dir / f"partial-{cfg.eval_hash()}"


@dataclass
class RunResult:
    config: Config
    run_dir: Path
    metrics: dict[str, Any]

    def rows(self) -> list[dict[str, Any]]:
        """One row per evaluated inference mode, flat, for tables."""
        c, t = self.config, self.metrics["train"]
        return [{"method": c.method, "heads": c.heads, "backbone": c.backbone, "seed": c.seed, "eval": key,
                 **{k: v for k, v in row.items() if k not in ("mode", "head")},
                 "train_s": t["wall_s"], "train_img_s": t["images_per_s"], "run": self.run_dir.name}
                for key, row in self.metrics["eval"].items()]


def evaluate_run(run_dir: str | Path, cfg: Config | None = None, *, log: Callable[[str], None] = print) -> RunResult:
    """(Re-)evaluate a finished run; ``cfg`` may change evaluation fields, never training ones."""
    run_dir = Path(run_dir)
    ckpt = _read_checkpoint(run_dir)
    trained = Config.from_dict(ckpt["config"])
    cfg = cfg or trained
    if cfg.train_key() != trained.train_key():
        if {**cfg.train_key(), "leaked_eval": None} == {**trained.train_key(), "leaked_eval": None}:
            raise ValueError(f"{run_dir} leaked the UAP of another evaluation setting into its BatchNorm statistics "
                             "(ent_leak=true ties a run to its evaluation); train a run for this setting.")
        raise ValueError(f"{run_dir} was trained with a different config; only evaluation fields may change.")
    device = resolve_device(cfg.device)
    model, _ = _model_from(ckpt, run_dir, device)  # the checkpoint read once: it is hashed on every read
    model = model.to(memory_format=torch.channels_last)
    pool, val, test = load_data(cfg.replace(train_size=0))  # pool = data.fitting_pool(cfg), in the same load
    scored = val if cfg.eval_split == "val" else test
    t0 = time.perf_counter()
    log(f"evaluating {run_dir.name}: SGD-UAP {cfg.eval_norm} eps {cfg.eval_eps:.4f} against {', '.join(cfg.modes)}"
        f" on the {cfg.eval_split} split")
    journal = journal_path(run_dir, cfg)
    rows, uaps = evaluate_model(model, cfg, pool.to(device), scored.to(device), amp_dtype(cfg.precision, device),
                                journal=journal)
    metrics = {"run": run_dir.name, "config": cfg.to_dict(), "eval_config": cfg.group("eval"),
               "train": train_summary(ckpt), "eval": rows, "eval_wall_s": time.perf_counter() - t0,
               "provenance": provenance(device)}
    save_verified(uaps_path(run_dir, cfg), uaps)  # first, so a metrics file always has its UAPs
    write_json(metrics_path(run_dir, cfg), metrics)
    for mode in MODES:
        journal_file(journal, mode).unlink(missing_ok=True)
    return RunResult(cfg, run_dir, metrics)


def run(cfg: Config | None = None, *, runs_dir: str | Path = "runs", progress: bool | str = True,
        log: Callable[[str], None] = print, **overrides: Any) -> RunResult:
    """Train (or load) and evaluate one configuration; ``overrides`` are Config fields;
    ``progress`` as in ``train`` (True, False or a ``runtime.PROGRESS`` name)."""
    cfg = (cfg or Config()).replace(**overrides)
    run_dir = run_dir_for(cfg, runs_dir)
    done = metrics_path(run_dir, cfg)
    if done.exists():
        try:
            metrics = json.loads(done.read_text())
            load_uaps(run_dir, cfg)
            log(f"{cfg.method} K={cfg.heads}: loaded finished run {done}")
            return RunResult(cfg, run_dir, metrics)
        except (ValueError, FileNotFoundError) as e:  # JSONDecodeError and CorruptFile are ValueErrors
            log(f"The evaluation cached in {done} cannot be trusted ({str(e).rstrip('.')}); evaluating again.")
    ensure_trained(cfg, runs_dir=runs_dir, progress=progress, log=log)
    return evaluate_run(run_dir, cfg, log=log)


def ensure_trained(cfg: Config, *, runs_dir: str | Path = "runs", progress: bool | str = True,
                   log: Callable[[str], None] = print) -> Path:
    """Train ``cfg`` into ``runs/<hash>/`` unless a finished checkpoint is there (an unfinished one
    is resumed); returns the run's directory."""
    run_dir = run_dir_for(cfg, runs_dir)
    ckpt = read_checkpoint(run_dir / CHECKPOINT, cfg, log)  # a corrupt one is moved aside
    if not (ckpt and ckpt["finished"]):
        method = STEPS[cfg.method]
        train_split, val, test = load_data(cfg)  # bad data fails here, before anything is written,
        check_scored(cfg, val if cfg.eval_split == "val" else test)  # as does an evaluation it cannot take,
        images = method.training_images(cfg, train_split)
        make_loader(images, method.schedule(cfg).batch_size, world_size=cfg.nproc)  # and so does a batch larger than a shard
        if cfg.pretrained and not Path(cfg.pretrained).is_file():
            raise ValueError(f"pretrained={cfg.pretrained!r}: no such file (give a local file of torchvision ResNet-50 weights).")
        start = base_start(cfg, runs_dir=runs_dir, progress=progress, log=log)
        write_json(run_dir / "config.json", cfg.to_dict())
        log(f"training {cfg.method} K={cfg.heads} on {len(images)} images -> {run_dir}")
        if cfg.nproc > 1 and not distributed():  # the processes torchrun starts train it: `train_launched`
            launch(cfg, runs_dir, log)
        else:
            train(cfg, train_split, run_dir=run_dir, progress=progress, log=log, start=start,
                  wrap=ddp(cfg) if distributed() else None)
    return run_dir


def train_launched(cfg: Config, *, runs_dir: str | Path = "runs", evaluate: bool = True, progress: bool | str = True,
                   log: Callable[[str], None] = print) -> RunResult | None:
    """What each process torchrun starts for ``python -m dtlib train`` does (``distributed``): train
    ``cfg`` together, through the run cache (rank 0 reads or moves aside the checkpoint first, and
    a finished one is not trained again), then close the process group; rank 0 alone evaluates
    (unless ``evaluate`` is False) and returns the result, the other ranks None."""
    cfg = world_config(cfg)
    spec = STEPS[cfg.method].base(cfg)
    if spec and not _ready(*spec, runs_dir=runs_dir):  # every rank would train or evaluate it on its own
        raise ValueError(f"method={cfg.method!r} fine-tunes the {spec[0].method} run of its settings, which is not "
                         f"{'evaluated' if spec[1] else 'trained'} in {runs_dir} yet; run the same command without "
                         f"torchrun and with nproc={cfg.nproc}, which makes it first and then launches torchrun.")
    with process_group(cfg):
        me = rank()
        if me == 0:  # a corrupt checkpoint is moved aside by one rank, before any rank reads it
            read_checkpoint(run_dir_for(cfg, runs_dir) / CHECKPOINT, cfg, log)
        dist.barrier()
        ensure_trained(cfg, runs_dir=runs_dir, progress=progress if me == 0 else False,
                       log=log if me == 0 else (lambda s: None))
    if me or not evaluate:
        return None
    return run(cfg, runs_dir=runs_dir, progress=progress, log=log)


def _ready(base: Config, needs_uaps: bool, *, runs_dir: str | Path) -> bool:
    """Whether the run cache holds ``base`` finished (and evaluated, when its UAPs are needed)."""
    if needs_uaps:
        return cached(base, Path(runs_dir))
    where = run_dir_for(base, runs_dir)
    try:
        return bool(load_verified(where / CHECKPOINT).get("finished"))
    except (FileNotFoundError, CorruptFile):
        return False


def base_start(cfg: Config, *, runs_dir: str | Path = "runs", progress: bool | str = True,
               log: Callable[[str], None] = print) -> dict[str, Any] | None:
    """For a method that fine-tunes another run (``Step.base``): that run, trained (and evaluated,
    where its UAPs are needed) through the run cache, as ``train``'s ``start``; else None."""
    spec = STEPS[cfg.method].base(cfg)
    if spec is None:
        return None
    base, needs_uaps = spec
    if needs_uaps:
        where = run(base, runs_dir=runs_dir, progress=progress, log=log).run_dir
    else:
        where = ensure_trained(base, runs_dir=runs_dir, progress=progress, log=log)
    log(f"{cfg.method} starts from {base.method} run {where.name}")
    return {"model": _read_checkpoint(where)["model"], "uaps": load_uaps(where, base) if needs_uaps else None}


# What differs between two runs of one config on one machine: how long things took, and when.
TIMING_KEYS = frozenset({"wall_s", "eval_wall_s", "seconds", "images_per_s", "date_utc"})


def without_timings(obj: Any) -> Any:
    """``obj`` (a metrics or results record) with every TIMING_KEYS entry removed at any depth:
    on CPU, two runs of one config and seed give equal records after this (tested)."""
    if isinstance(obj, dict):
        return {k: without_timings(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [without_timings(v) for v in obj]
    return obj


COLUMNS = (("method", "method", "{}"), ("K", "heads", "{}"), ("eval", "eval", "{}"),
           ("clean acc", "clean_acc", "{:.3f}"), ("UAP fooling", "fooling_rate", "{:.3f}"),
           ("acc under UAP", "uap_acc", "{:.3f}"), ("random fooling", "random_fooling_rate", "{:.3f}"),
           ("train s", "train_s", "{:.0f}"), ("img/s", "train_img_s", "{:.0f}"))


def results_table(results: list[RunResult]) -> str:
    """A Markdown table of every run's rows."""
    rows = [r for res in results for r in res.rows()]
    head = "| " + " | ".join(c[0] for c in COLUMNS) + " |"
    rule = "| " + " | ".join("---" for _ in COLUMNS) + " |"
    body = ["| " + " | ".join(fmt.format(row[key]) for _, key, fmt in COLUMNS) + " |" for row in rows]
    return "\n".join([head, rule, *body])
