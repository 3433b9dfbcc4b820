"""The study's settings: one ``Study`` record per notebook run, its named profiles, ``setup`` (the
notebooks' papermill parameters turned into a Study, every list checked before any training) and
the guard against papermill parameters the notebooks do not declare. Radii in pixel units."""
from __future__ import annotations

import ast
import json
import re
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from ..config import FIELD_TYPES, LIST_NAMES, Config, field_kinds, parse_setting
from ..experiment import RunResult, run
from ..io import project_dir
from ..runtime import progress_mode

NOTEBOOKS = ("01_headline", "02_k_ablation", "03_cross_norm", "04_transfer", "05_cost", "06_published_method")


@dataclass(frozen=True)
class Study:
    """One record of the study's settings; its fields and the Config fields that are not set per
    run (``PER_RUN``) are the notebooks' papermill parameters (``overrides``). ``backbone`` and
    ``eval_eps`` are the study's, written into ``config``: every run uses them except where an
    experiment varies them (``transfer_backbones``; ``linf_radii`` and ``l2_radii`` in 03).
    Radii are in pixel units (images in [0, 1])."""
    profile: str = "cpu"
    seeds: tuple[int, ...] = (0, 1)            # headline arms: mean and spread over these
    ablation_seeds: int = 1                    # the first n seeds for the selection grid and cross-norm
    k_seeds: int = 1                           # the first n seeds for the K ablation (at the grid's choice)
    attacker_seeds: int = 0                    # grid_attacker's comparison: 0 = the grid's seeds, n = the first n
    ks: tuple[int, ...] = (1, 2, 3, 5, 10)     # K ablation
    grid_div: tuple[float, ...] = (0.0, 1.0, 3.0)   # sensitivity grid at K = 5: lambda_div ...
    grid_adv: tuple[float, ...] = (0.0, 1.0)        # ... x lambda_adv (0 = the seed's literal loss)
    # DT's training-time attacker, uap_objective[/uap_every][@uap_fraction][+perturbed_fraction]: the first trains
    # the grid; the others are scored beside it on validation at the chosen cell with the diversity term, and
    # every other DT run trains with the first unless the summary's ensemble_ce beats it (selection.chosen_step)
    grid_attacker: tuple[str, ...] = ("ensemble_ce", "loss", "ensemble_ce/4", "ensemble_ce@0.25")
    backbone: str = "cnn"                      # the headline's, K ablation's, cross-norm's and cost's model
    eval_eps: float = 10 / 255                 # L-inf radius of every evaluation UAP outside 03_cross_norm
    linf_radii: tuple[float, ...] = (4 / 255, 10 / 255, 16 / 255)
    l2_radii: tuple[float, ...] = (0.5, 1.0, 2.0)
    transfer_backbones: tuple[str, ...] = ("cnn", "vgg")
    published_radii: tuple[float, ...] = (8 / 255, 10 / 255)  # 06: L-inf radii of its untargeted and targeted UAPs
    published_target: int = 9                  # 06: the targeted UAPs' class (the published CIFAR-10 setting)
    bench_steps: int = 15
    bench_warmup: int = 3
    config: Config = field(default_factory=Config)  # every run starts from this config
    root: str = ""                             # folder of runs/, results/, figures/ ("" = the project)
    progress: str = "auto"                     # training bars (runtime.PROGRESS); setup picks it, see bars_for

    @property
    def dir(self) -> Path:
        return Path(self.root) if self.root else project_dir()

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("config", "root", "progress")}
        return {**d, "config": self.config.to_dict()}

    def run(self, log: Callable[[str], None] = print, **overrides: Any) -> RunResult:
        return run(self.config, runs_dir=self.dir / "runs", progress=self.progress, log=log, **overrides)


# Named presets. `smoke` runs every notebook in seconds on the committed mini set (the tests);
# `cpu` is the quick look (hours on 2 cores with the attack suite and its checks, so its K ablation
# leaves out K = 3 and its cross-norm sweep keeps one L-inf radius, the headline's, and the two L2
# radii where UAPs fool more than random noise); `study` is the study proper on CPU: the full training
# set less a 5,000-image validation split, 8 epochs (for a standard model past 85% clean), DT's cheaper step,
# three seeds for every headline arm and the K ablation, the whole test set scored, L-inf UAPs at the
# headline's radius only (the L2 radii are C7's); `gpu` the same questions on ResNet-18; `imagenet` the
# summary's scale.
PROFILES: dict[str, dict[str, Any]] = {
    "smoke": dict(seeds=(0,), ablation_seeds=1, ks=(1, 2), grid_div=(0.0, 1.0), grid_adv=(0.0,), grid_attacker=("ensemble_ce",),
                  linf_radii=(10 / 255,), l2_radii=(1.0,), bench_steps=2, bench_warmup=1, published_radii=(10 / 255,),
                  # 50 images scored and 32 fitted: every code path, at half the cost of 100 and 64 (CI's time)
                  config=dict(data="mini", train_size=400, val_size=50, epochs=1, batch_size=64,
                              uap_fit_size=32, uap_epochs=1, uap_lr="0.25", uap_refine=1, eval_size=50, device="cpu",
                              repair_size=100, repair_epochs=1, repair_clean_epochs=1)),
    "cpu": dict(ks=(1, 2, 5, 10), linf_radii=(10 / 255,), l2_radii=(1.0, 2.0),
                config=dict(train_size=8000, val_size=1000, epochs=4, eval_size=5000, device="cpu")),
    "study": dict(seeds=(0, 1, 2), ablation_seeds=1, k_seeds=3, ks=(1, 2, 5, 10), linf_radii=(10 / 255,),
                  # DT at 1.5x a standard step, not 3x: half the batch perturbed, the UAP ascending the loss
                  # (no worse on validation over three seeds, results/attackers-cpu-perturbed3.json); the
                  # selection scores the summary's ensemble_ce on the whole batch beside it and takes it instead
                  # where loss+0.5 is worse on the two seeds the grid did not use (selection.chosen_step)
                  grid_attacker=("loss+0.5", "ensemble_ce"), attacker_seeds=3,
                  # fp32 everywhere: a fill that spans sessions meets CPUs with and without bf16 instructions,
                  # and only fp32 runs at full speed on all of them (the run cache keys on the precision)
                  config=dict(val_size=5000, epochs=8, eval_size=10000, precision="fp32", device="cpu")),
    "gpu": dict(seeds=(0, 1, 2), ablation_seeds=3, k_seeds=3, grid_div=(0.0, 0.3, 1.0, 3.0), grid_adv=(0.0, 0.5, 1.0),
                backbone="resnet18", linf_radii=(4 / 255, 8 / 255, 10 / 255, 16 / 255), l2_radii=(0.25, 0.5, 1.0, 2.0),
                transfer_backbones=("resnet18", "vgg"), bench_steps=50, bench_warmup=10,
                config=dict(val_size=5000, epochs=15, uap_fit_size=10000, uap_lr="0.05,0.1,0.25", uap_restarts=2,
                            device="cuda")),
    # The summary's own setting, for 8 GPUs: ImageNet (data/imagenet/train and val/, ImageFolder layout),
    # torchvision's ResNet-50 trained from scratch by torchrun on 8 processes (64 images each, SyncBatchNorm),
    # 90 epochs at the linear-scaling rule's lr (0.1 per 256 images), K = 5, L-inf 10/255; UAPs fitted on
    # 10,000 training images drawn at random and scored on 10,000 of val/ (10 per class). Its L2 radii are 0.5 and 1 times
    # the L2 norm of an L-inf 10/255 perturbation at 224 x 224 (15.2). Not run here (no ImageNet, no 8 GPUs).
    "imagenet": dict(seeds=(0,), ks=(1, 2, 5, 10), grid_div=(1.0, 3.0), grid_adv=(0.0, 1.0), backbone="resnet50",
                     linf_radii=(4 / 255, 10 / 255, 16 / 255), l2_radii=(7.5, 15.0), transfer_backbones=("resnet50", "cnn"),
                     bench_steps=50, bench_warmup=10,
                     config=dict(data="imagenet", data_dir="data/imagenet", workers=8, nproc=8,
                                 sync_bn=True, batch_size=64, epochs=90, lr=0.2, weight_decay=1e-4, warmup=5 / 90,
                                 val_size=10000, eval_size=10000, uap_fit_size=10000, uap_lr="0.05,0.1,0.25",
                                 uap_restarts=2, device="cuda")),
}
STUDY_FIELDS = {f.name for f in fields(Study)} - {"config", "profile", "root", "progress"}
STUDY_KINDS = field_kinds(Study)
# Study fields that are also Config fields: the study writes them into every run's config.
SHARED_FIELDS = ("backbone", "eval_eps")

# Config fields the experiments set run by run, with the Study field (or rule) that controls them:
# an override of one would be accepted and then replaced, so it is refused.
PER_RUN: dict[str, str] = {
    "method": "the experiments' arms (standard, pgd_at, uat, dt and its controls)",
    "heads": "ks (the headline's DT arms use K = 5, its controls K = 1)",
    "lambda_div": "grid_div (the headline uses the cell chosen on the validation split)",
    "lambda_adv": "grid_adv (the headline uses the cell chosen on the validation split)",
    "seed": "seeds, ablation_seeds (grid, cross-norm), attacker_seeds (grid_attacker) and k_seeds (K ablation)",
    # grid_attacker's first entry trains the grid, and every other DT run unless selection.chosen_step takes ensemble_ce
    "uap_objective": "grid_attacker (its first entry, or ensemble_ce where the selection's rule takes it)",
    "uap_every": "grid_attacker (its first entry, or ensemble_ce where the selection's rule takes it: "
                 "grid_attacker: [ensemble_ce/4] trains with uap_every=4)",
    "uap_fraction": "grid_attacker (its first entry, or ensemble_ce where the selection's rule takes it: "
                    "grid_attacker: [ensemble_ce@0.25] trains with uap_fraction=0.25)",
    "perturbed_fraction": "grid_attacker (its first entry, or ensemble_ce where the selection's rule takes it: "
                          "grid_attacker: [loss+0.5] trains with uap_objective=loss, perturbed_fraction=0.5)",
    "eval_norm": "linf_radii and l2_radii in 03_cross_norm (every other attack is L-inf at eval_eps)",
    "eval_modes": "each experiment, which scores the inference modes it reports",
    "eval_split": "each experiment (the selection grid scores on the validation split, the rest on test)",
    "eval_head": "the study, whose single-head rows are head 0 (its K = 1 arms have no other)",
    "eval_target": "published_target in 06_published_method (every other attack is untargeted)",
    "ent_clamp": "06_published_method's two entropy-DT arms (careful, and as published: ent_clamp=false)",
    "ent_bn": "06_published_method's two entropy-DT arms (careful, and as published: ent_bn=train)",
    "ent_leak": "06_published_method, which runs both entropy-DT arms without it (README: it leaves no trace)",
    "ent_alpha": "06_published_method's arms (entropy-DT at the paper's 0.9, its clean fine-tune control at 0)",
    "pretrained": "nothing: every study run starts from random weights (pretrained=PATH is for single runs: "
                  "python -m dtlib train backbone=resnet50 pretrained=PATH)",
}


def setup(profile: str = "cpu", overrides: dict[str, Any] | None = None, root: str | None = None,
          progress: bool | str | None = None) -> Study:
    """The study for a profile, with ``overrides`` (Study fields, or Config fields not in
    ``PER_RUN``) replacing the preset's values. A name that is both (``SHARED_FIELDS``) is the
    Study's. Paths are kept as given (a relative data_dir is read from the project folder).
    ``progress`` (runtime.PROGRESS) defaults to ``bars_for`` the session this runs in."""
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
    study_kw = {**preset, **{k: parse_setting(k, v, STUDY_KINDS[k], "Study field")
                             for k, v in overrides.items() if k in STUDY_FIELDS}}
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
    for name in ("ablation_seeds", "k_seeds"):
        n = getattr(study, name)
        if not 1 <= n <= len(study.seeds):
            raise ValueError(f"{name}={n} must be between 1 and the number of seeds, {len(study.seeds)} "
                             f"({list(study.seeds)}); with fewer seeds, set {name} too.")
    n = study.attacker_seeds
    if n and not study.ablation_seeds < n <= len(study.seeds):
        raise ValueError(f"attacker_seeds={n} must be 0 (the grid's seeds) or above ablation_seeds={study.ablation_seeds} "
                         f"and at most the number of seeds, {len(study.seeds)} ({list(study.seeds)}).")
    if n and len(study.grid_attacker) < 2:
        raise ValueError(f"attacker_seeds={n} compares grid_attacker's settings, but grid_attacker={list(study.grid_attacker)} "
                         f"has one; set attacker_seeds=0 or add a setting.")
    return study


def check_types(study: Study) -> None:
    """Each Study field holds what its annotation says; a list holds no value twice (a repeated
    seed would count one run as two seeds and shrink the spread)."""
    for name, kind in STUDY_KINDS.items():
        if name not in STUDY_FIELDS or name in SHARED_FIELDS:
            continue  # the shared fields are checked as Config fields
        v = getattr(study, name)
        if isinstance(kind, tuple):
            items = (int, float) if kind[1] is float else kind[1]
            if not (isinstance(v, tuple) and all(isinstance(x, items) and not isinstance(x, bool) for x in v)):
                raise ValueError(f"{name}={v!r} must be a list of {LIST_NAMES[kind[1]]}.")
            if len(set(v)) != len(v):
                raise ValueError(f"{name}={list(v)} holds a value twice; give each once.")
        elif kind is int and not (isinstance(v, int) and not isinstance(v, bool)):
            raise ValueError(f"{name}={v!r} must be an integer.")


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
    if not study.grid_attacker:
        raise ValueError("grid_attacker is empty; give at least one setting (its first trains every DT run).")
    parsed = [tuple(attacker(a).values()) for a in study.grid_attacker]
    if len(set(parsed)) < len(parsed):
        raise ValueError(f"grid_attacker={list(study.grid_attacker)} names one setting twice (n = 1 is the default).")
    for a in study.grid_attacker:
        fields_ = attacker(a)
        try:
            c.replace(method="dt", **fields_)
        except ValueError as e:
            raise ValueError(f"grid_attacker holds {a!r}: {str(e)[0].lower()}{str(e)[1:]}") from None
    for name, values, norm in (("linf_radii", study.linf_radii, "linf"), ("l2_radii", study.l2_radii, "l2"),
                               ("published_radii", study.published_radii, "linf")):
        if name == "published_radii" and not values:
            raise ValueError("published_radii is empty; give at least one value.")
        for r in values:
            try:
                c.replace(eval_norm=norm, eval_eps=r)
            except ValueError as e:
                raise ValueError(f"{name} holds {r!r}: {e}") from None
    try:
        c.replace(eval_target=study.published_target)
    except ValueError as e:
        raise ValueError(f"published_target: {e}") from None
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


def attacker(setting: str) -> dict[str, Any]:
    """The Config fields of a ``grid_attacker`` entry: ``objective``, then optionally ``/n`` (uap_every,
    1 if absent), ``@f`` (uap_fraction, 1 if absent) and ``+p`` (perturbed_fraction, 1 if absent), such
    as ``ensemble_ce/4``, ``ensemble_ce@0.25`` or ``loss+0.5``."""
    m = re.fullmatch(r"([a-z_]+)(?:/([0-9]+))?(?:@([0-9.]+))?(?:\+([0-9.]+))?", setting)
    if not m:
        raise ValueError(f"grid_attacker holds {setting!r}: write uap_objective[/n][@f][+p], such as ensemble_ce/4 (the "
                         "UAP moves on every 4th batch), ensemble_ce@0.25 (its gradient from a quarter of the batch) or "
                         "loss+0.5 (half the batch perturbed).")
    fractions = []
    for mark, text in (("@", m.group(3)), ("+", m.group(4))):
        try:
            fractions.append(float(text or 1))
        except ValueError:
            raise ValueError(f"grid_attacker holds {setting!r}, whose {mark}{text} is not a number.") from None
    return {"uap_objective": m.group(1), "uap_every": int(m.group(2) or 1), "uap_fraction": fractions[0],
            "perturbed_fraction": fractions[1]}


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
