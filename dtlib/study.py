"""The study behind the notebooks: named profiles, the five experiments, and the claims rows.

Each numbered notebook makes one call here (``headline``, ``k_ablation``, ``cross_norm``,
``transfer``, ``cost``). Each returns a JSON-able dict that it also writes to
``results/<notebook>-<profile>.json`` (and its table as CSV), with provenance; ``dtlib.figures``
draws every figure from such a dict, so figures are regenerated without training. Models are
shared between notebooks through the run cache ``runs/<config-hash>/``: the batch trains each
configuration once.

Every claims row is computed from measured numbers by ``verdict`` (rules in its docstring); the
seed summary's figures are the constants in ``SEED``.
"""
from __future__ import annotations

import ast
import csv
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from .bench import bench_split, inference_latency, training_steps
from .config import FIELD_TYPES, Config
from .evaluate import accuracy, fooling_rate, predict, scored_subset
from .experiment import RunResult, load_data, load_model, load_uaps, run
from .io import atomic_path, project_dir, provenance, write_json
from .train import amp_dtype, progress_mode, resolve_device

NOTEBOOKS = ("01_headline", "02_k_ablation", "03_cross_norm", "04_transfer", "05_cost")

# The seed summary's figures (ImageNet, ResNet-50), as fractions / ratios: docs/protocol.md section 1.
SEED = {"C1": {"standard": 0.934, "dt": 0.187}, "C2": {"standard": 0.766, "dt": 0.762},
        "C3": {"fooling": 0.345, "cost": 8.0}, "C4": {"cost": 2.3}, "C5": {"overhead": 0.0},
        "C6": {2: 0.41, 5: 0.187, 10: 0.169}, "C7": {"dt": 0.713, "defenses": 0.124}, "C8": {"change": -0.64}}


@dataclass(frozen=True)
class Study:
    """One record of the study's settings; its fields and the Config fields that are not set per
    run (``PER_RUN``) are the notebooks' papermill parameters (``overrides``). ``backbone`` and
    ``eval_eps`` are the study's, written into ``config``: every run uses them except where an
    experiment varies them (``transfer_backbones``; ``linf_radii`` and ``l2_radii`` in 03).
    Radii are in pixel units (images in [0, 1])."""
    profile: str = "cpu"
    seeds: tuple[int, ...] = (0, 1)            # headline arms: mean and spread over these
    ablation_seeds: int = 1                    # the first n seeds for the K ablation, grid, cross-norm
    ks: tuple[int, ...] = (1, 2, 3, 5, 10)     # K ablation
    grid_div: tuple[float, ...] = (0.0, 1.0, 3.0)   # sensitivity grid at K = 5: lambda_div ...
    grid_adv: tuple[float, ...] = (0.0, 1.0)        # ... x lambda_adv (0 = the seed's literal loss)
    backbone: str = "cnn"                      # the headline's, K ablation's, cross-norm's and cost's model
    eval_eps: float = 10 / 255                 # L-inf radius of every evaluation UAP outside 03_cross_norm
    linf_radii: tuple[float, ...] = (4 / 255, 10 / 255, 16 / 255)
    l2_radii: tuple[float, ...] = (0.5, 1.0, 2.0)
    transfer_backbones: tuple[str, ...] = ("cnn", "vgg")
    bench_steps: int = 15
    bench_warmup: int = 3
    config: Config = field(default_factory=Config)  # every run starts from this config
    root: str = ""                             # folder of runs/, results/, figures/ ("" = the project)
    progress: str = "auto"                     # training bars (train.PROGRESS); setup picks it, see bars_for

    @property
    def dir(self) -> Path:
        return Path(self.root) if self.root else project_dir()

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("config", "root", "progress")}
        return {**d, "config": self.config.to_dict()}

    def run(self, log: Callable[[str], None] = print, **overrides: Any) -> RunResult:
        return run(self.config, runs_dir=self.dir / "runs", progress=self.progress, log=log, **overrides)


# Named presets. `smoke` runs every notebook in seconds on the committed mini set (the tests);
# `cpu` is the quick look, the whole batch in about half an hour on 2 cores with bf16; `gpu` is the study.
PROFILES: dict[str, dict[str, Any]] = {
    "smoke": dict(seeds=(0,), ablation_seeds=1, ks=(1, 2), grid_div=(0.0, 1.0), grid_adv=(0.0,),
                  linf_radii=(10 / 255,), l2_radii=(1.0,), bench_steps=2, bench_warmup=1,
                  config=dict(data="mini", train_size=400, val_size=100, epochs=1, batch_size=64,
                              uap_fit_size=128, uap_epochs=1, eval_size=200, device="cpu")),
    "cpu": dict(config=dict(train_size=8000, val_size=1000, epochs=4, uap_fit_size=1000, uap_epochs=5,
                            uap_lr="0.05,0.2", eval_size=5000, device="cpu")),
    "gpu": dict(seeds=(0, 1, 2), ablation_seeds=3, grid_div=(0.0, 0.3, 1.0, 3.0), grid_adv=(0.0, 0.5, 1.0),
                backbone="resnet18", linf_radii=(4 / 255, 8 / 255, 10 / 255, 16 / 255), l2_radii=(0.25, 0.5, 1.0, 2.0),
                transfer_backbones=("resnet18", "vgg"), bench_steps=50, bench_warmup=10,
                config=dict(val_size=5000, epochs=15, uap_fit_size=5000, uap_epochs=10,
                            uap_lr="0.05,0.1,0.2", uap_restarts=2, device="cuda")),
}
STUDY_FIELDS = {f.name for f in fields(Study)} - {"config", "profile", "root", "progress"}
# Study fields that are also Config fields: the study writes them into every run's config.
SHARED_FIELDS = ("backbone", "eval_eps")

# Config fields the experiments set run by run, with the Study field (or rule) that controls them:
# an override of one would be accepted and then replaced, so it is refused.
PER_RUN: dict[str, str] = {
    "method": "the experiments' arms (standard, pgd_at, uat, dt and its controls)",
    "heads": "ks (the headline's DT arms use K = 5, its controls K = 1)",
    "lambda_div": "grid_div (the headline uses the cell chosen on the validation split)",
    "lambda_adv": "grid_adv (the headline uses the cell chosen on the validation split)",
    "seed": "seeds and ablation_seeds",
    "eval_norm": "linf_radii and l2_radii in 03_cross_norm (every other attack is L-inf at eval_eps)",
    "eval_modes": "each experiment, which scores the inference modes it reports",
    "eval_split": "each experiment (the selection grid scores on the validation split, the rest on test)",
    "eval_head": "the study, whose single-head rows are head 0 (its K = 1 arms have no other)",
}


def setup(profile: str = "cpu", overrides: dict[str, Any] | None = None, root: str | None = None,
          progress: bool | str | None = None) -> Study:
    """The study for a profile, with ``overrides`` (Study fields, or Config fields not in
    ``PER_RUN``) replacing the preset's values. A name that is both (``SHARED_FIELDS``) is the
    Study's. Paths are kept as given (a relative data_dir is read from the project folder).
    ``progress`` (train.PROGRESS) defaults to ``bars_for`` the session this runs in."""
    if profile not in PROFILES:
        raise ValueError(f"Unknown profile {profile!r}; choose one of {', '.join(PROFILES)}.")
    given = overrides
    if isinstance(overrides, str):  # papermill -p passes a dict as its text
        try:
            overrides = json.loads(overrides)
        except json.JSONDecodeError:
            pass
    if overrides is None:
        overrides = {}
    if not isinstance(overrides, dict):
        raise ValueError(f"overrides must be a dict of Study or Config fields, got {given!r} "
                         "(with papermill: -y 'overrides: {seeds: [0, 1, 2]}').")
    overrides = dict(overrides)
    unknown = sorted(set(overrides) - STUDY_FIELDS - set(FIELD_TYPES))
    if unknown:
        raise ValueError(f"Unknown parameter {unknown[0]!r}; use a Study field ({', '.join(sorted(STUDY_FIELDS))}) "
                         f"or a Config field (python -m dtlib fields).")
    per_run = sorted(set(overrides) & set(PER_RUN))
    if per_run:
        name = per_run[0]
        raise ValueError(f"Config field {name!r} is set run by run by the study, so an override would not reach "
                         f"the runs; it is controlled by {PER_RUN[name]}.")
    preset = {k: v for k, v in PROFILES[profile].items() if k != "config"}
    study_kw = {**preset, **{k: v for k, v in overrides.items() if k in STUDY_FIELDS}}
    study_kw = {k: tuple(v) if isinstance(v, list) else v for k, v in study_kw.items()}
    cfg_kw = {**PROFILES[profile].get("config", {}),
              **{k: v for k, v in overrides.items() if k in FIELD_TYPES and k not in STUDY_FIELDS}}
    shared = {k: study_kw.get(k, getattr(Study, k)) for k in SHARED_FIELDS}
    config = Config().replace(**cfg_kw, **shared)
    study_kw.update({k: getattr(config, k) for k in SHARED_FIELDS})  # as the Config parsed them
    study = Study(profile=profile, config=config, root=root or "",
                  progress=bars_for() if progress is None else progress_mode(progress),
                  **study_kw)
    check_study(study)
    if not any(d > 0 for d in study.grid_div):
        raise ValueError(f"grid_div={list(study.grid_div)} needs a value above 0: the diversity term is what the study tests.")
    if not 1 <= study.ablation_seeds <= len(study.seeds):
        raise ValueError(f"ablation_seeds={study.ablation_seeds} must be between 1 and the {len(study.seeds)} seeds.")
    return study


# The element type of each Study list field, by its annotation.
LIST_KINDS = {"tuple[int, ...]": ((int,), "integers"), "tuple[float, ...]": ((int, float), "numbers"),
              "tuple[str, ...]": ((str,), "names")}


def check_types(study: Study) -> None:
    """Each Study field holds what its annotation says; a list holds no value twice (a repeated
    seed would count one run as two seeds and shrink the spread)."""
    for f in fields(Study):
        if f.name not in STUDY_FIELDS or f.name in SHARED_FIELDS:
            continue  # the shared fields are checked as Config fields
        v = getattr(study, f.name)
        if f.type in LIST_KINDS:
            kinds, what = LIST_KINDS[f.type]
            if not (isinstance(v, tuple) and all(isinstance(x, kinds) and not isinstance(x, bool) for x in v)):
                raise ValueError(f"{f.name}={v!r} must be a list of {what}.")
            if len(set(v)) != len(v):
                raise ValueError(f"{f.name}={list(v)} holds a value twice; give each once.")
        elif f.type == "int" and not (isinstance(v, int) and not isinstance(v, bool)):
            raise ValueError(f"{f.name}={v!r} must be an integer.")


def check_study(study: Study) -> None:
    """Every config the study will build, made now: a bad seed, K, radius, loss weight or backbone
    in a list fails here in one sentence, before the first model trains."""
    check_types(study)
    c = study.config
    try:  # every experiment first scores its selection grid on the validation split
        c.replace(eval_split="val", eval_modes="ensemble")
    except ValueError as e:
        raise ValueError(f"The selection grid scores on the validation split: {str(e)[0].lower()}{str(e)[1:]}") from None
    for name, values, field_ in (("seeds", study.seeds, "seed"), ("ks", study.ks, "heads"),
                                 ("grid_div", study.grid_div, "lambda_div"), ("grid_adv", study.grid_adv, "lambda_adv"),
                                 ("transfer_backbones", study.transfer_backbones, "backbone")):
        if not values:
            raise ValueError(f"{name} is empty; give at least one value.")
        for v in values:
            try:
                c.replace(**{field_: v})
            except ValueError as e:
                raise ValueError(f"{name} holds {v!r}: {str(e)[0].lower()}{str(e)[1:]}") from None
    for name, values, norm in (("linf_radii", study.linf_radii, "linf"), ("l2_radii", study.l2_radii, "l2")):
        for r in values:
            try:
                c.replace(eval_norm=norm, eval_eps=r)
            except ValueError as e:
                raise ValueError(f"{name} holds {r!r}: {e}") from None
    if study.backbone not in study.transfer_backbones:
        raise ValueError(f"transfer_backbones {list(study.transfer_backbones)} must include the study's backbone "
                         f"{study.backbone!r}, whose headline models are the transfer sources (try transfer_backbones: "
                         f"[{study.backbone}, {next((b for b in study.transfer_backbones if b != study.backbone), 'vgg')}]).")
    for name in SHARED_FIELDS:
        if getattr(c, name) != getattr(study, name):
            raise ValueError(f"config.{name}={getattr(c, name)!r} differs from the study's {name}={getattr(study, name)!r}; "
                             "build the study with dtlib.study.setup.")
    if study.bench_steps < 1 or study.bench_warmup < 0:
        raise ValueError(f"bench_steps={study.bench_steps} must be at least 1 and bench_warmup={study.bench_warmup} "
                         "at least 0.")


# The names a study notebook's `parameters` cell declares (papermill's -p / -y names).
NOTEBOOK_PARAMETERS = ("profile", "overrides", "root")


def _injected(namespace: dict[str, Any]) -> list[str]:
    """The cells papermill injected into a kernel's history (``In``; first line ``# Parameters``)."""
    return [src for src in namespace.get("In", []) if isinstance(src, str) and src.startswith("# Parameters")]


def bars_for(shell: Any = None) -> str:
    """Training bars for the session: widgets in an interactive Jupyter kernel ("auto"), text
    lines under papermill, whose executed notebooks keep text, not widgets ("text": detected by
    its injected parameters cell), the terminal's bars elsewhere ("auto"). ``shell`` defaults to
    the running IPython shell, if any."""
    ipython = sys.modules.get("IPython")
    shell = shell or (ipython.get_ipython() if ipython else None)
    if shell is None or type(shell).__name__ != "ZMQInteractiveShell":
        return "auto"
    return "text" if _injected(shell.user_ns) else "auto"


def check_parameters(namespace: dict[str, Any]) -> None:
    """Raise ValueError (one sentence) if papermill injected a name the notebooks do not declare.

    papermill only warns about such names and runs on with the defaults; a notebook calls this
    with ``globals()`` before any work, and it reads the cell papermill injected (IPython's
    history ``In``; its first line is ``# Parameters``). Outside papermill there is none: no-op."""
    injected = _injected(namespace)
    if not injected:
        return
    names = [t.id for node in ast.parse(injected[-1]).body if isinstance(node, ast.Assign)
             for t in node.targets if isinstance(t, ast.Name)]
    unknown = [n for n in names if n not in NOTEBOOK_PARAMETERS and not n.startswith("PAPERMILL_")]  # --inject-paths
    if unknown:
        raise ValueError(f"Unknown notebook parameter {unknown[0]!r}; the notebooks take "
                         f"{', '.join(NOTEBOOK_PARAMETERS)} (Study and Config fields go inside overrides).")


# ---------------------------------------------------------------------------------------------
# statistics and verdicts

def mean_spread(values: list[float | None]) -> dict[str, Any]:
    """Mean, sample standard deviation (None for one value) and n of the finite values (None and
    NaN are missing, not zero)."""
    vals = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    try:
        return {"mean": statistics.fmean(vals) if vals else float("nan"),
                "std": statistics.stdev(vals) if len(vals) > 1 else None, "n": len(vals)}
    except OverflowError:  # not rates at all (|v| near 1e308): no measurement to read
        return {"mean": float("nan"), "std": None, "n": 0}


def fmt(ms: dict[str, Any], pct: bool = True) -> str:
    if not ms["n"]:
        return "n/a (n=0)"
    f = (lambda v: f"{100 * v:.1f}%") if pct else (lambda v: f"{v:.2f}x")
    spread = f" ± {(100 if pct else 1) * ms['std']:.1f}{'pt' if pct else 'x'}" if ms["std"] is not None else ""
    return f"{f(ms['mean'])}{spread} (n={ms['n']})"


def ratio(num: float | None, den: float | None) -> float:
    """``num / den``, NaN where it cannot be formed (a zero, missing or non-finite term)."""
    return num / den if finite(num, den) and den != 0 else float("nan")


def finite(*values: float | None) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def inconclusive(why: str) -> str:
    return f"inconclusive: {why}"


def missing(**groups: dict[str, Any]) -> str | None:
    """``inconclusive: no measurement of ...`` naming each compared group without a finite value
    (``mean_spread`` with n = 0), or None when every group has one."""
    empty = [name for name, ms in groups.items() if not ms["n"]]
    return inconclusive(f"no measurement of {', '.join(empty)}") if empty else None


INCONCLUSIVE = inconclusive("the UAP does not beat the random floor on the standard model")
MIN_NOISE = 0.02  # an absolute difference of rates below 2 points is never read as an effect
ORDER = ("does not hold", "partly", "holds")  # verdicts from weakest to strongest


def noise(*stats: dict[str, Any]) -> float:
    """Twice the combined standard deviation of the compared means, at least MIN_NOISE."""
    var = sum((s["std"] or 0.0) ** 2 for s in stats)
    return max(MIN_NOISE, 2 * math.sqrt(var))


def verdict(effect: float, seed_effect: float, margin: float) -> str:
    """The rule for an effect claim. ``effect`` is the measured change in the claim's direction
    (positive = as claimed), ``seed_effect`` the seed's, both on the same scale; ``margin`` the
    smallest change read as real on that scale. holds: at least half the seed's effect and beyond
    the margin; partly: beyond the margin but under half; does not hold: otherwise; inconclusive
    when the effect or the margin is not a number (e.g. a ratio over a zero rate)."""
    if not finite(effect, seed_effect, margin):
        return inconclusive("the effect cannot be formed from these numbers (a zero or missing rate)")
    if effect <= margin:
        return "does not hold"
    return "holds" if effect >= seed_effect / 2 else "partly"


def cost_verdict(measured: float, claimed: float) -> str:
    """The rule for a cost bound ("costs only X"): holds if at most 10% over the claimed cost,
    partly if at most 50% over, does not hold otherwise."""
    if not (finite(measured) and measured > 0):
        return inconclusive(f"the measured cost {measured} is not a positive number")
    return "holds" if measured <= claimed * 1.1 else "partly" if measured <= claimed * 1.5 else "does not hold"


def figure_verdict(measured: float, claimed: float) -> str:
    """The rule for a reported figure ("PGD-AT costs 8x"): holds within 25% of it either way,
    partly within a factor of 2, does not hold otherwise."""
    if not (finite(measured) and measured > 0):
        return inconclusive(f"the measured figure {measured} is not a positive number")
    r = measured / claimed
    return "holds" if 0.75 <= r <= 1.25 else "partly" if 0.5 <= r <= 2 else "does not hold"


def accuracy_cost_verdict(drop: float) -> str:
    """The rule for "DT costs (almost) no clean accuracy": holds if the mean drop is at most 1
    point, partly if at most 3 points, does not hold otherwise."""
    if not finite(drop):
        return inconclusive("the accuracy drop cannot be formed (a missing accuracy)")
    return "holds" if drop <= 0.01 else "partly" if drop <= 0.03 else "does not hold"


def overhead_verdict(ratio_: float) -> str:
    """The rule for "no inference overhead": holds if within 5% of the plain model (timing noise),
    partly within 20%, does not hold otherwise."""
    if not (finite(ratio_) and ratio_ > 0):
        return inconclusive(f"the latency ratio {ratio_} is not a positive number")
    return "holds" if ratio_ <= 1.05 else "partly" if ratio_ <= 1.2 else "does not hold"


def claim(cid: str, what: str, seed: str, measured: str, setting: str, result: str, n: int | None = None,
          **numbers: Any) -> dict[str, Any]:
    """One claims row; a verdict resting on a single seed says so."""
    if n is not None and n < 2 and result in ("holds", "partly", "does not hold"):
        result += " (one seed)"
    return {"claim": cid, "what": what, "seed": seed, "measured": measured, "setting": setting,
            "verdict": result, **numbers}


def not_measured(cid: str, what: str, seed: str, why: str) -> dict[str, Any]:
    return claim(cid, what, seed, "n/a", why, "not measured")


# ---------------------------------------------------------------------------------------------
# saving

def save(study: Study, notebook: str, payload: dict[str, Any], t0: float) -> dict[str, Any]:
    """Write ``results/<notebook>-<profile>.json`` and its table as ``.csv``, atomically."""
    device = resolve_device(study.config.device)
    payload = {"notebook": notebook, "profile": study.profile, "study": study.to_dict(), **payload,
               "wall_s": time.perf_counter() - t0, "provenance": provenance(device)}
    out = study.dir / "results" / f"{notebook}-{study.profile}.json"
    write_json(out, payload)
    table = payload.get("table") or []
    if table:
        prov = {"profile": study.profile, "git_commit": payload["provenance"]["git_commit"],
                "device": payload["provenance"]["device"], "torch": payload["provenance"]["torch"]}
        keys = list(dict.fromkeys(k for row in table for k in row)) + list(prov)
        with atomic_path(out.with_suffix(".csv")) as tmp, open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, keys)
            w.writeheader()
            w.writerows({**row, **prov} for row in table)
    return payload


def _runs(results: list[RunResult]) -> dict[str, Any]:
    return {r.run_dir.name: {"config": r.config.to_dict(), "train": r.metrics["train"],
                             "eval_provenance": r.metrics["provenance"], "eval_wall_s": r.metrics.get("eval_wall_s")}
            for r in results}


# ---------------------------------------------------------------------------------------------
# 01 headline and the selection of DT's loss weights

def select_dt(study: Study, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The K = 5 sensitivity grid over lambda_div x lambda_adv, scored on the validation split (held
    out of the training images) under a white-box UAP fitted against the ensemble. The chosen
    setting maximises validation accuracy under that UAP (fooling rate alone would favour a
    constant classifier); the standard model and UAT are scored the same way for reference."""
    val = dict(eval_split="val", eval_modes="ensemble")
    rows, results = [], []
    for seed in study.seeds[:study.ablation_seeds]:
        for div in study.grid_div:
            for adv in study.grid_adv:
                res = study.run(log, method="dt", heads=5, lambda_div=div, lambda_adv=adv, seed=seed, **val)
                results.append(res)
                rows.append({"lambda_div": div, "lambda_adv": adv, "seed": seed, **_val_row(res, "ensemble")})
    refs = {}
    for arm in ("standard", "uat"):
        vals = []
        for seed in study.seeds[:study.ablation_seeds]:
            res = study.run(log, method=arm, heads=1, seed=seed, **val)
            results.append(res)
            vals.append(_val_row(res, "head0"))
        refs[arm] = {k: statistics.fmean(v[k] for v in vals) for k in vals[0]}
    cells: dict[tuple[float, float], list[float]] = {}
    for r in rows:
        cells.setdefault((r["lambda_div"], r["lambda_adv"]), []).append(r["val_uap_acc"])
    score = lambda kv: statistics.fmean(kv[1])
    (div, adv), _ = max(cells.items(), key=score)  # first of ties: grid order
    with_div = {k: v for k, v in cells.items() if k[0] > 0}
    (ddiv, dadv), _ = max(with_div.items(), key=score) if with_div else ((div, adv), None)
    return {"grid": rows, "references": refs, "best": {"lambda_div": div, "lambda_adv": adv},
            "best_div": {"lambda_div": ddiv, "lambda_adv": dadv},
            "criterion": "validation accuracy under a white-box L-inf UAP fitted against the ensemble",
            "runs": _runs(results)}


def _val_row(res: RunResult, key: str) -> dict[str, float]:
    m = res.metrics["eval"][key]
    return {"val_clean_acc": m["clean_acc"], "val_fooling_rate": m["fooling_rate"], "val_uap_acc": m["uap_acc"]}


def arms(selection: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The headline's methods and the controls of docs/protocol.md section 3, as Config overrides.

    ``dt_best`` is the grid's best cell on validation; ``dt_div`` the best cell *with* the diversity
    term (lambda_div > 0), which the controls (K = 1, lambda_div = 0, at its lambda_adv) are read
    against: when the best cell has no diversity term, the two differ."""
    best, with_div = selection["best"], selection.get("best_div", selection["best"])
    div, adv = best["lambda_div"], best["lambda_adv"]
    cdiv, cadv = with_div["lambda_div"], with_div["lambda_adv"]
    return {
        "standard": dict(method="standard", heads=1),
        "pgd_at": dict(method="pgd_at", heads=1),
        "uat": dict(method="uat", heads=1),
        # control: the same running UAP and CE term with one head, so no diversity is possible
        "dt_k1": dict(method="dt", heads=1, lambda_div=cdiv, lambda_adv=cadv),
        # control: five heads, no diversity term
        "dt_nodiv": dict(method="dt", heads=5, lambda_div=0.0, lambda_adv=cadv),
        "dt_literal": dict(method="dt", heads=5, lambda_div=1.0, lambda_adv=0.0),
        "dt_div": dict(method="dt", heads=5, lambda_div=cdiv, lambda_adv=cadv),
        "dt_best": dict(method="dt", heads=5, lambda_div=div, lambda_adv=adv),
    }


METRICS = ("clean_acc", "fooling_rate", "uap_acc", "random_fooling_rate")


def summarise(rows: list[dict[str, Any]], by: tuple[str, ...], metrics: tuple[str, ...]) -> list[dict[str, Any]]:
    """Mean, std and n over seeds of ``metrics`` for each group of ``by`` (first-seen order)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in by), []).append(r)
    out = []
    for key, rs in groups.items():
        row = dict(zip(by, key))
        for m in metrics:
            ms = mean_spread([r[m] for r in rs])
            row[m], row[f"{m}_std"], row["n"] = ms["mean"], ms["std"], ms["n"]
        out.append(row)
    return out


def headline(study: Study, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Standard vs PGD-AT vs UAT vs DT (K = 5: the setting chosen on validation, and the seed's
    literal loss) and the controls, over ``study.seeds``; white-box L-inf UAP at the config's
    eval_eps against each inference mode; training cost as wall-time ratio to standard."""
    t0 = time.perf_counter()
    selection = select_dt(study, log)
    rows, results = [], []
    for seed in study.seeds:
        base_wall = None
        for arm, o in arms(selection).items():
            res = study.run(log, seed=seed, **o)
            results.append(res)
            wall = res.metrics["train"]["wall_s"]
            base_wall = wall if arm == "standard" else base_wall
            for key, m in res.metrics["eval"].items():
                rows.append({"arm": arm, "eval": key, "seed": seed, "heads": res.config.heads,
                             "lambda_div": res.config.lambda_div, "lambda_adv": res.config.lambda_adv,
                             **{k: m[k] for k in METRICS}, "train_s": wall, "cost_ratio": ratio(wall, base_wall),
                             "run": res.run_dir.name})
    table = summarise(rows, ("arm", "eval"), (*METRICS, "cost_ratio"))
    check = attack_check(study, selection, log)
    payload = {"selection": selection, "rows": rows, "table": table, "attack_check": check,
               "claims": headline_claims(rows, study, selection), "runs": _runs(results)}
    return save(study, "01_headline", payload, t0)


def attack_check(study: Study, selection: dict[str, Any], log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Is the evaluation attack converged? Refit with twice the epochs and one more restart: the
    fooling rate must not rise by more than MIN_NOISE (docs/protocol.md section 3)."""
    out = []
    c = study.config
    stronger = dict(uap_epochs=2 * c.uap_epochs, uap_restarts=c.uap_restarts + 1)
    for arm in ("standard", "dt_best", "dt_div"):
        o = {**arms(selection)[arm], "seed": study.seeds[0]}
        base = study.run(log, **o).metrics["eval"]
        strong = study.run(log, **o, **stronger).metrics["eval"]
        for key in base:
            rise = strong[key]["fooling_rate"] - base[key]["fooling_rate"]
            out.append({"arm": arm, "eval": key, "fooling_rate": base[key]["fooling_rate"],
                        "stronger_fooling_rate": strong[key]["fooling_rate"], "rise": rise,
                        "converged": rise <= MIN_NOISE, "stronger": stronger})
    return out


def _pick(rows: list[dict[str, Any]], metric: str, **where: Any) -> dict[str, Any]:
    """``mean_spread`` of ``metric`` over the rows matching ``where`` (rows lacking a key do not match)."""
    return mean_spread([r.get(metric) for r in rows if all(r.get(k) == v for k, v in where.items())])


def pgd_setting(c: Config) -> str:
    return f"PGD-AT {c.pgd_steps} x {c.pgd_alpha * 255:g}/255 in L-inf {c.pgd_eps * 255:g}/255"


def training_threat(c: Config) -> str:
    radius = f"{c.eps * 255:g}/255" if c.norm == "linf" else f"{c.eps:g}"
    return f"trained against {c.norm} {radius} UAPs (DT, UAT) or {pgd_setting(c)}"


def headline_claims(rows: list[dict[str, Any]], study: Study, selection: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """C1, C1-ctl, C2, C3 and C4-wall from the headline's rows (one per arm, inference mode, seed)."""
    eps = f"L-inf {study.config.eval_eps * 255:.0f}/255 white-box SGD-UAP"
    best = (selection or {}).get("best") or {}
    div, adv = best.get("lambda_div"), best.get("lambda_adv")
    chosen = "DT weights chosen on validation" + (
        f": lambda_div={div:g}, lambda_adv={adv:g}" + (" (no diversity term)" if div == 0 else "") if finite(div, adv) else "")
    std_fr = _pick(rows, "fooling_rate", arm="standard", eval="head0")
    dt_fr = _pick(rows, "fooling_rate", arm="dt_best", eval="ensemble")
    dt_single = _pick(rows, "fooling_rate", arm="dt_best", eval="head0")
    lit_fr = _pick(rows, "fooling_rate", arm="dt_literal", eval="ensemble")
    div_fr = _pick(rows, "fooling_rate", arm="dt_div", eval="ensemble")
    floor = _pick(rows, "random_fooling_rate", arm="standard", eval="head0")
    n = min(std_fr["n"], dt_fr["n"])
    # a reduction of fooling means nothing if the attack does not beat random noise to begin with
    weak = missing(**{"the standard model's fooling rate": std_fr, "its random floor": floor}) or (
        INCONCLUSIVE if std_fr["mean"] - floor["mean"] <= noise(std_fr, floor) else None)
    s1 = SEED["C1"]
    seed_rel = (s1["standard"] - s1["dt"]) / s1["standard"]
    rel = ratio(std_fr["mean"] - dt_fr["mean"], std_fr["mean"])
    result = weak or missing(**{"DT (chosen, ensemble)": dt_fr}) or verdict(
        rel, seed_rel, ratio(noise(std_fr, dt_fr), std_fr["mean"]))
    out = [claim("C1", "UAP fooling rate, standard -> DT (K=5, ensemble)", "93.4% -> 18.7%",
                 f"{fmt(std_fr)} -> {fmt(dt_fr)}; single head {fmt(dt_single)}; best with diversity {fmt(div_fr)};"
                 f" literal loss {fmt(lit_fr)}", f"{eps}; {chosen}", result, n=n, effect=rel, seed_effect=seed_rel)]

    controls = {a: _pick(rows, "fooling_rate", arm=a, eval="ensemble" if a == "dt_nodiv" else "head0")
                for a in ("uat", "dt_k1", "dt_nodiv")}
    measured = {a: ms for a, ms in controls.items() if ms["n"]}
    what = "the part credited to diversity: DT with lambda_div > 0 vs its best control"
    setting = "controls at the same lambda_adv: UAT, DT with K=1, DT with lambda_div=0; lower fooling is better"
    if not measured:
        out.append(claim("C1-ctl", what, "(implied: all of C1)", f"DT with diversity {fmt(div_fr)}; no control measured",
                         setting, inconclusive("no control arm was measured")))
    else:
        best_ctrl = min(measured, key=lambda a: measured[a]["mean"])
        diff = measured[best_ctrl]["mean"] - div_fr["mean"]
        result = weak or missing(**{"DT with diversity": div_fr}) or (
            "holds" if diff > noise(div_fr, measured[best_ctrl]) else "does not hold")
        out.append(claim("C1-ctl", what, "(implied: all of C1)",
                         f"DT with diversity {fmt(div_fr)} vs {best_ctrl} {fmt(measured[best_ctrl])}", setting, result,
                         n=min(div_fr["n"], measured[best_ctrl]["n"]), effect=diff))

    std_acc = _pick(rows, "clean_acc", arm="standard", eval="head0")
    dt_acc = _pick(rows, "clean_acc", arm="dt_best", eval="ensemble")
    drop = std_acc["mean"] - dt_acc["mean"]
    out.append(claim("C2", "clean accuracy, standard -> DT (mean drop at most 1 point)", "76.6% -> 76.2%",
                     f"{fmt(std_acc)} -> {fmt(dt_acc)}", "CIFAR-10 test",
                     missing(**{"the standard model's accuracy": std_acc, "DT's accuracy": dt_acc})
                     or accuracy_cost_verdict(drop), n=min(std_acc["n"], dt_acc["n"]), effect=-drop))

    pgd_fr = _pick(rows, "fooling_rate", arm="pgd_at", eval="head0")
    pgd_acc = _pick(rows, "clean_acc", arm="pgd_at", eval="head0")
    pgd_cost = _pick(rows, "cost_ratio", arm="pgd_at", eval="head0")
    s3 = SEED["C3"]
    seed_rel3 = (s1["standard"] - s3["fooling"]) / s1["standard"]
    rel3 = ratio(std_fr["mean"] - pgd_fr["mean"], std_fr["mean"])
    # a classifier that is mostly wrong is hard to fool: low fooling then says little about robustness
    result = missing(**{"PGD-AT's accuracy": pgd_acc, "the standard model's accuracy": std_acc})
    if not result and std_acc["mean"] - pgd_acc["mean"] > 0.10:
        result = inconclusive(f"PGD-AT is undertrained (clean {fmt(pgd_acc)} vs standard {fmt(std_acc)})")
    result = result or weak or missing(**{"PGD-AT's fooling rate": pgd_fr}) or verdict(
        rel3, seed_rel3, ratio(noise(std_fr, pgd_fr), std_fr["mean"]))
    out.append(claim("C3", "PGD-AT: fooling rate, training cost", "34.5% at 8x",
                     f"{fmt(pgd_fr)} at {fmt(pgd_cost, pct=False)} (wall time); clean {fmt(pgd_acc)}",
                     f"{eps}; {pgd_setting(study.config)}; cost judged in 05_cost", result, n=min(pgd_fr["n"], std_fr["n"]),
                     effect=rel3, seed_effect=seed_rel3))

    dt_cost = _pick(rows, "cost_ratio", arm="dt_best", eval="ensemble")
    out.append(claim("C4-wall", "DT training wall time / standard", "2.3x", f"{fmt(dt_cost, pct=False)}",
                     "whole runs: same data, epochs, batch size (05_cost times single steps)",
                     missing(**{"DT's wall-time ratio": dt_cost}) or cost_verdict(dt_cost["mean"], SEED["C4"]["cost"]),
                     effect=dt_cost["mean"]))
    return out


# ---------------------------------------------------------------------------------------------
# 02 K ablation

def k_ablation(study: Study, log: Callable[[str], None] = print) -> dict[str, Any]:
    """DT with K in ``study.ks`` at the best validated setting *with* the diversity term (without
    it, K has nothing to act through): fooling rate and clean accuracy (ensemble and single head),
    step time and training memory against K; and the grid."""
    t0 = time.perf_counter()
    selection = select_dt(study, log)
    best = selection["best_div"]
    rows, results = [], []
    for seed in study.seeds[:study.ablation_seeds]:
        for k in study.ks:
            res = study.run(log, method="dt", heads=k, seed=seed, **best)
            results.append(res)
            for key, m in res.metrics["eval"].items():
                rows.append({"heads": k, "eval": "ensemble" if key == "ensemble" else "single", "seed": seed,
                             **{x: m[x] for x in METRICS}, "run": res.run_dir.name})
    cases = {f"dt_k{k}": dict(method="dt", heads=k, **best) for k in study.ks}
    cases["standard"] = dict(method="standard", heads=1)
    bench = time_training_steps(study, cases)
    table = summarise(rows, ("heads", "eval"), METRICS)
    for row in table:
        b = bench[f"dt_k{row['heads']}"]
        row["step_ratio"] = b["median_s"] / bench["standard"]["median_s"]
        row["train_memory_mb"] = b["memory"].get("cuda_peak_mb", b["memory"]["peak_mb"])
    ens = {r["heads"]: r for r in table if r["eval"] == "ensemble" or r["heads"] == 1}
    payload = {"selection": selection, "rows": rows, "table": table, "bench": bench,
               "claims": k_claims(ens, rows, study), "runs": _runs(results)}
    return save(study, "02_k_ablation", payload, t0)


def time_training_steps(study: Study, cases: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``bench.training_steps`` for ``cases`` on the first training images, as many as one pass needs."""
    split = bench_split(study.config, study.config.batch_size * (study.bench_steps + study.bench_warmup + 1))
    return training_steps(study.config, split, cases, steps=study.bench_steps, warmup=study.bench_warmup)


def k_claims(ens: dict[int, dict[str, Any]], rows: list[dict[str, Any]], study: Study) -> list[dict[str, Any]]:
    """C6: the ensemble's fooling rate from the smallest to the largest of K = 2, 5, 10 measured."""
    s6 = SEED["C6"]
    what, seed = "fooling rate falls with K", "41% / 18.7% / 16.9%"
    ks = [k for k in (2, 5, 10) if k in ens]
    measured = " / ".join(f"K={k}: {fmt(_pick(rows, 'fooling_rate', heads=k, eval='ensemble'))}" for k in ks)
    if len(ks) < 2:
        return [not_measured("C6", what, seed, f"needs two of K = 2, 5, 10; K in {list(study.ks)}")]
    lo, hi = ks[0], ks[-1]
    a, b = (_pick(rows, "fooling_rate", heads=k, eval="ensemble") for k in (lo, hi))
    rel = ratio(a["mean"] - b["mean"], a["mean"])
    seed_rel = (s6[lo] - s6[hi]) / s6[lo]
    result = missing(**{f"K={lo}": a, f"K={hi}": b}) or (
        inconclusive(f"K={lo} is never fooled, so no relative fall can be formed") if a["mean"] == 0 else
        verdict(rel, seed_rel, ratio(noise(a, b), a["mean"])))
    return [claim("C6", f"{what} (K={lo} -> K={hi}, ensemble)", seed, measured,
                  "DT at the best validated weights with lambda_div > 0", result,
                  n=min(a["n"], b["n"]), effect=rel, seed_effect=seed_rel)]


# ---------------------------------------------------------------------------------------------
# 03 cross-norm

CROSS_ARMS = ("standard", "uat", "pgd_at", "dt_best", "dt_div")


def cross_norm(study: Study, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Models trained against L-inf UAPs (or none), evaluated under L2 and L-inf UAPs over a range
    of radii, each UAP fitted against the model's default inference mode (DT: the ensemble)."""
    t0 = time.perf_counter()
    selection = select_dt(study, log)
    rows, results = [], []
    for seed in study.seeds[:study.ablation_seeds]:
        for arm in dict.fromkeys(CROSS_ARMS):
            for norm, radii in (("linf", study.linf_radii), ("l2", study.l2_radii)):
                for r in radii:
                    res = study.run(log, seed=seed, eval_norm=norm, eval_eps=r, eval_modes="ensemble",
                                    **arms(selection)[arm])
                    results.append(res)
                    (key, m), = res.metrics["eval"].items()
                    rows.append({"arm": arm, "norm": norm, "radius": r, "seed": seed, "eval": key,
                                 **{x: m[x] for x in METRICS}, "run": res.run_dir.name})
    table = summarise(rows, ("arm", "norm", "radius"), METRICS)
    payload = {"selection": selection, "rows": rows, "table": table, "claims": cross_claims(rows, study),
               "runs": _runs(results)}
    return save(study, "03_cross_norm", payload, t0)


def cross_claims(rows: list[dict[str, Any]], study: Study) -> list[dict[str, Any]]:
    """C7, read at every L2 radius: DT (with its diversity term) against the stronger of UAT and
    PGD-AT at that radius; the verdict is the weakest over the radii (the seed names none), and
    inconclusive if any radius lacks a measurement."""
    what, seed = "accuracy under L2 UAPs, DT vs the stronger standard defense", "71.3% vs 12.4%"
    if not study.l2_radii:
        return [not_measured("C7", what, seed, "no L2 radius in the profile")]
    s7 = SEED["C7"]
    parts, verdicts, gaps, n = [], [], [], None
    for r in study.l2_radii:
        at = lambda arm, m="uap_acc": _pick(rows, m, arm=arm, norm="l2", radius=r)
        dt = at("dt_div")
        defenses = {a: ms for a in ("uat", "pgd_at") if (ms := at(a))["n"]}
        if not (dt["n"] and defenses):
            verdicts.append(missing(**{"DT": dt, "UAT or PGD-AT": {"n": len(defenses)}}) + f" at r={r:g}")
            parts.append(f"r={r:g}: DT {fmt(dt)}, no defense measured" if not defenses else f"r={r:g}: DT {fmt(dt)}")
            continue
        strongest = max(defenses, key=lambda a: defenses[a]["mean"])
        gap = dt["mean"] - defenses[strongest]["mean"]
        gaps.append(gap)
        n = min(n if n is not None else dt["n"], dt["n"], defenses[strongest]["n"])
        verdicts.append(verdict(gap, s7["dt"] - s7["defenses"], noise(dt, defenses[strongest])))
        parts.append(f"r={r:g}: DT {fmt(dt)} vs {strongest} {fmt(defenses[strongest])}"
                     f" (fooling {fmt(at('dt_div', 'fooling_rate'))} vs {fmt(at(strongest, 'fooling_rate'))})")
    unsure = [v for v in verdicts if v not in ORDER]
    worst = unsure[0] if unsure else min(verdicts, key=ORDER.index)
    return [claim("C7", what, seed, "; ".join(parts),
                  f"{training_threat(study.config)}; white-box L2 SGD-UAP; verdict = weakest radius",
                  worst, n=n, effect=min(gaps) if gaps else float("nan"), seed_effect=s7["dt"] - s7["defenses"])]


# ---------------------------------------------------------------------------------------------
# 04 transfer

def transfer(study: Study, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Each source model's white-box UAP (fitted against its default inference mode) applied to
    every target model: transfer success = the target's fooling rate (docs/protocol.md section 3)."""
    t0 = time.perf_counter()
    selection = select_dt(study, log)
    seed = study.seeds[0]
    models: dict[str, dict[str, Any]] = {}
    for bb in study.transfer_backbones:
        wanted = ("standard", "dt_div", "uat", "pgd_at") if bb == study.config.backbone else ("standard", "dt_div")
        for arm in wanted:
            models[f"{bb}/{arm}"] = {"backbone": bb, **arms(selection)[arm]}
    device = resolve_device(study.config.device)
    dtype = amp_dtype(study.config.precision, device)
    _, _, test = load_data(study.config)
    test = scored_subset(test, study.config.eval_size).to(device)
    loaded, uaps, results = {}, {}, []
    for name, o in models.items():
        res = study.run(log, seed=seed, **o)
        results.append(res)
        model, cfg = load_model(res.run_dir, device)
        mode = "ensemble" if cfg.heads > 1 else "single"
        loaded[name] = (lambda x, model=model, mode=mode: model.scores(x, mode))
        saved = load_uaps(res.run_dir, res.config, device)
        uaps[name] = saved["ensemble" if cfg.heads > 1 else f"head{cfg.eval_head}"]
    clean = {t: predict(fn, test.x, amp_dtype=dtype) for t, fn in loaded.items()}
    rows = []
    for s, delta in uaps.items():
        for t, fn in loaded.items():
            adv = predict(fn, test.x, delta=delta, amp_dtype=dtype)
            rows.append({"source": s, "target": t, "fooling_rate": fooling_rate(clean[t], adv),
                         "uap_acc": accuracy(adv, test.y), "white_box": s == t})
    payload = {"selection": selection, "models": models, "rows": rows, "table": rows,
               "claims": transfer_claims(rows, study), "runs": _runs(results)}
    return save(study, "04_transfer", payload, t0)


def transfer_claims(rows: list[dict[str, Any]], study: Study) -> list[dict[str, Any]]:
    """C8: for each architecture, UAPs from the other architectures' models, on the DT target vs
    the standard target of that architecture: mean relative change of transfer success."""
    what, seed = "cross-model UAP transfer success, relative change on a DT target", "-64%"
    fr = {(r.get("source"), r.get("target")): r.get("fooling_rate") for r in rows}
    fr = {k: v for k, v in fr.items() if finite(v)}
    sources = sorted({s for s, _ in fr if isinstance(s, str)})
    per_arch, diffs, bases = [], [], []
    for bb in study.transfer_backbones:
        std, dt = f"{bb}/standard", f"{bb}/dt_div"
        changes = []
        for s in sources:
            if not s.startswith(bb + "/") and (s, std) in fr and (s, dt) in fr and fr[(s, std)] > 0:
                changes.append((fr[(s, dt)] - fr[(s, std)]) / fr[(s, std)])
                diffs.append(fr[(s, dt)] - fr[(s, std)])
                bases.append(fr[(s, std)])
        if changes:
            per_arch.append(statistics.fmean(changes))
    if not per_arch:
        return [not_measured("C8", what, seed, "no cross-architecture source/target pair with transfer > 0")]
    change = statistics.fmean(per_arch)  # each target architecture weighs the same
    # margin: 2 standard errors of the pairs' absolute differences (at least MIN_NOISE), relative
    se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else 0.0
    margin = max(MIN_NOISE, 2 * se) / statistics.fmean(bases)
    return [claim("C8", what, seed,
                  f"{100 * change:+.0f}% (mean over target architectures of {len(diffs)} cross-architecture "
                  f"pairs; absolute {100 * statistics.fmean(diffs):+.1f}pt)",
                  f"DT = best validated lambda_div > 0; sources: {', '.join(sources)}",
                  verdict(-change, -SEED["C8"]["change"], margin), n=1, effect=change,
                  seed_effect=SEED["C8"]["change"])]


# ---------------------------------------------------------------------------------------------
# 05 cost

def cost(study: Study, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Per-step training time of each method over standard's, and inference latency of DT's single
    head and ensemble over a plain one-head model, measured in one process (docs/protocol.md section 3)."""
    t0 = time.perf_counter()
    selection = select_dt(study, log)
    a = arms(selection)
    cases = {"standard": a["standard"], "dt_k5": a["dt_div"], "pgd_at": a["pgd_at"], "uat": a["uat"]}
    steps = time_training_steps(study, cases)
    infer = inference_latency(study.config, {"plain": dict(heads=1, mode="single"),
                                             "single_head_k5": dict(heads=5, mode="single"),
                                             "ensemble_k5": dict(heads=5, mode="ensemble")},
                              steps=2 * study.bench_steps, warmup=study.bench_warmup)
    table = [{"kind": kind, "case": k, "median_ms": 1e3 * v["median_s"], "ratio": v["ratio"],
              "ratio_q1": v["ratio_quartiles"][0], "ratio_q3": v["ratio_quartiles"][1]}
             for kind, part in (("train step", steps), ("inference", infer)) for k, v in part.items()]
    claims = cost_claims({row["case"]: row["ratio"] for row in table}, study)
    payload = {"selection": selection, "train_steps": steps, "inference": infer, "table": table, "claims": claims}
    return save(study, "05_cost", payload, t0)


def cost_claims(ratios: dict[str, float], study: Study) -> list[dict[str, Any]]:
    """C3-cost, C4 and C5 from the step-time and latency ratios to standard (cases ``pgd_at``,
    ``dt_k5``, ``single_head_k5``, ``ensemble_k5``); a missing case is NaN, its row inconclusive."""
    r = {k: v if finite(v) else float("nan") for k, v in ratios.items()}
    get = lambda k: r.get(k, float("nan"))
    x = lambda k, digits=2: f"{get(k):.{digits}f}x" if finite(get(k)) else "n/a"
    setting = f"{study.config.backbone}, batch {study.config.batch_size}, median of {study.bench_steps} steps"
    return [
        claim("C3-cost", "PGD-AT training cost / standard", "8x", x("pgd_at"), f"{setting}, {study.config.pgd_steps} PGD steps",
              figure_verdict(get("pgd_at"), SEED["C3"]["cost"]), effect=get("pgd_at")),
        claim("C4", "DT (K=5) training step / standard", "2.3x", x("dt_k5"), setting,
              cost_verdict(get("dt_k5"), SEED["C4"]["cost"]), effect=get("dt_k5")),
        claim("C5", "single-head inference / plain model", "1.00x (no overhead)",
              f"{x('single_head_k5', 3)} (ensemble K=5: {x('ensemble_k5', 3)})", "batch 256, forward only",
              overhead_verdict(get("single_head_k5")), effect=get("single_head_k5")),
    ]


EXPERIMENTS: dict[str, Callable[..., dict[str, Any]]] = {
    "01_headline": headline, "02_k_ablation": k_ablation, "03_cross_norm": cross_norm,
    "04_transfer": transfer, "05_cost": cost}
