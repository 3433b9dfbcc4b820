"""One record of every setting of a run; its fields are the notebooks' papermill parameters.

Fields carry a ``group`` in their metadata:
- ``train``: changes the trained weights, so it is part of the run-cache key (``runs/<hash>/``);
- ``eval``: changes only the evaluation (the attack); a finished run is re-evaluated, not retrained;
- ``runtime``: changes neither the weights nor the numbers (where to look for data, progress bars).
Every epsilon and step size is in pixel units: images live in [0, 1].
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field, fields
from typing import Any

from .parsing import (KIND_NAMES, LIST_NAMES, SCALARS, Kind, field_kinds, key_values,  # noqa: F401 (re-exported)
                      kind_name, parse_setting, parse_text)

from .choices import (ATTACK_LABELS, ATTACK_OBJECTIVES, BACKBONES, BN_MODES, DATASETS, DEVICES,  # noqa: F401
                      EVAL_SPLITS, L2_MAX, METHODS, MODES, NORMS, PRECISIONS, UAP_OBJECTIVES, check_radius)
from .validation import NATIVE_SIDE, validate

# Bumped when a change to dtlib changes what a given config trains to; part of the cache key.
CODE_VERSION = "1"
# Bumped when a change to the evaluation attack changes what an evaluation setting finds; part of the
# evaluation's cache key only, so trained runs stay valid. 2: SGD-UAP passes are whole batches only.
ATTACK_VERSION = 2
# Training fields added after CODE_VERSION was set, with the value that reproduces the code from
# before they existed: at that value a field is left out of the run-cache key, so runs cached
# earlier stay valid; any other value is part of the key.
ADDED_TRAIN_FIELDS: dict[str, Any] = {"uap_objective": "ensemble_ce", "uap_every": 1, "nproc": 1, "sync_bn": False,
                                      "pretrained": "", "image_size": 0, "uap_fraction": 1.0,
                                      "perturbed_fraction": 1.0}
# The same for evaluation fields: at these values an evaluation cached before they existed stays valid.
ADDED_EVAL_FIELDS: dict[str, Any] = {"eval_target": -1, "uap_adam_lr": 0.005}
# Training fields that only one method reads: they join the run key of that method's runs alone, so
# a setting meant for one method (a profile's shorter repair) never retrains another's runs.
METHOD_FIELDS: dict[str, tuple[str, ...]] = {
    "dt": ("uap_every", "uap_fraction", "perturbed_fraction"),
    "entropy_dt": ("repair_size", "repair_epochs", "repair_clean_epochs", "repair_batch_size", "repair_lr",
                   "repair_clean_lr", "repair_rotation", "ent_alpha", "ent_steps", "ent_step", "ent_clamp",
                   "ent_bn", "ent_leak"),
}


def _f(default: Any, group: str, doc: str) -> Any:
    return field(default=default, metadata={"group": group, "doc": doc})


@dataclass(frozen=True)
class Config:
    # --- what is trained -------------------------------------------------------------------
    method: str = _f("standard", "train", "per-batch step: standard | dt | pgd_at | uat | entropy_dt (fine-tunes the "
                "standard run of the same settings)")
    backbone: str = _f("cnn", "train", "cnn (0.3 M, CPU profile) | vgg (transfer) | resnet18 (GPU profile) | resnet50 "
                       "(torchvision's, ImageNet stem, 2048-d features)")
    pretrained: str = _f("", "train", "resnet50: a local file of torchvision ResNet-50 weights (a state dict) to start "
                         "from; its classifier is not used (\"\" = random initialisation)")
    heads: int = _f(1, "train", "K, the number of classification heads on the shared backbone")
    # --- DT loss weights: CE(clean) + lambda_cons*JSD(clean) - lambda_div*JSD(uap) + lambda_adv*CE_ens(uap)
    lambda_cons: float = _f(1.0, "train", "weight of the clean-consensus JSD term")
    lambda_div: float = _f(1.0, "train", "weight of the (maximised) JSD among heads on UAP inputs")
    lambda_adv: float = _f(0.0, "train", "weight of the ensemble CE on UAP inputs (0 = the seed's literal loss)")
    # --- the training-time threat model -----------------------------------------------------
    norm: str = _f("linf", "train", "ball of the running UAP (dt, uat) and of entropy_dt's samples: linf | l2")
    eps: float = _f(10 / 255, "train", "radius of the running UAP and of entropy_dt's samples, pixel units")
    uap_step: float = _f(1 / 255, "train", "signed-gradient step of the running UAP per batch, pixel units")
    uap_objective: str = _f("ensemble_ce", "train", "what the running UAP of dt ascends: ensemble_ce (the ensemble's CE on "
                            "the perturbed half; one extra input-gradient pass) | loss (the DT loss itself, min-max; "
                            "its gradient comes free from the weights' backward pass)")
    uap_every: int = _f(1, "train", "dt: the running UAP moves (one uap_step) on every n-th batch only; the batches "
                        "between keep it and skip its input-gradient pass, so the attacker costs 1/n of a pass")
    uap_fraction: float = _f(1.0, "train", "dt, uap_objective=ensemble_ce: the running UAP's gradient from this "
                             "fraction of the perturbed half (at least 2 images), in a forward and input-gradient "
                             "pass of its own on those images alone (BatchNorm on their batch statistics, running "
                             "ones untouched); 1 = the whole half, through the training step's own graph")
    perturbed_fraction: float = _f(1.0, "train", "dt: the perturbed half holds the batch's first ceil(f B) images "
                                   "(at least 2) plus the UAP, not all B, so a step runs (1 + f) B images; the clean "
                                   "terms still see all B (1 = the summary's step: every image clean and perturbed)")
    pgd_eps: float = _f(8 / 255, "train", "L-inf radius of PGD adversarial training, pixel units")
    pgd_steps: int = _f(7, "train", "PGD steps per batch in pgd_at")
    pgd_alpha: float = _f(2 / 255, "train", "PGD step size, pixel units")
    # --- entropy_dt, the published method (Sun et al., ICLR 2025): fine-tunes the finished standard run of the same
    # settings (epochs, lr, batch_size, weight_decay and warmup are that run's) on a repair set, with low-entropy samples
    repair_size: int = _f(2000, "train", "entropy_dt: class-balanced training images of the repair set (drawn with seed)")
    repair_epochs: int = _f(50, "train", "entropy_dt: passes over the repair set on clean and low-entropy samples")
    repair_clean_epochs: int = _f(10, "train", "entropy_dt: then passes on clean images only at repair_clean_lr, with a "
                                  "new optimizer (the published 'repaired' model); 0 = none")
    repair_batch_size: int = _f(32, "train", "entropy_dt: batch size of the fine-tuning")
    repair_lr: float = _f(1e-3, "train", "entropy_dt: learning rate (SGD, momentum 0.9, no weight decay, constant)")
    repair_clean_lr: float = _f(1e-5, "train", "entropy_dt: learning rate of the clean passes")
    repair_rotation: float = _f(15.0, "train", "entropy_dt: random rotation of repair images, at most this many degrees "
                                "(after the random crop and flip; 0 = none)")
    ent_alpha: float = _f(0.9, "train", "entropy_dt: loss (1 - ent_alpha) * CE(clean) + ent_alpha * CE(low-entropy sample)")
    ent_steps: int = _f(5, "train", "entropy_dt: signed-gradient steps lowering the feature entropy, from a random "
                        "point of the eps ball of norm")
    ent_step: float = _f(0.25, "train", "entropy_dt: size of those steps as a fraction of eps")
    ent_clamp: bool = _f(True, "train", "entropy_dt: keep perturbed images in [0, 1] (false: the published code's "
                         "unclamped x + delta)")
    ent_bn: str = _f("eval", "train", "entropy_dt: BatchNorm while making low-entropy samples: eval (running statistics, "
                     "untouched) | train (the published code's: batch statistics, running ones updated)")
    ent_leak: bool = _f(False, "train", "entropy_dt: also forward the standard run's evaluation UAP (this config's eval "
                        "settings, head 0; the targeted one when eval_target is set) in training mode every batch, so "
                        "BatchNorm's running statistics see the perturbation it is then tested with (the published code's "
                        "DEBUG default; only to measure that leak: the eval settings then join the run key)")
    # --- optimisation ------------------------------------------------------------------------
    epochs: int = _f(6, "train", "passes over the training split")
    batch_size: int = _f(128, "train", "training batch size (clean images; dt also forwards as many perturbed ones)")
    lr: float = _f(0.1, "train", "peak learning rate of SGD (Nesterov momentum 0.9), linear warm-up then decay")
    weight_decay: float = _f(5e-4, "train", "SGD weight decay")
    warmup: float = _f(0.2, "train", "fraction of the steps spent warming the learning rate up from 0")
    seed: int = _f(0, "train", "seed of weights, data order, augmentation and the running UAP")
    # --- data ----------------------------------------------------------------------------------
    data: str = _f("full", "train", "full (data/cifar10.npz or a torchvision folder) | mini (data/cifar10-mini.npz) | "
                   "imagenet (data_dir/train and data_dir/val class folders, torchvision's ImageFolder layout)")
    image_size: int = _f(0, "train", "data=imagenet: side of the square crops trained and scored on, pixels (0 = 224; "
                         "evaluation resizes the shorter side to 256/224 of it, then crops the centre); CIFAR-10 is 32")
    train_size: int = _f(0, "train", "class-balanced subset of the training images to use (0 = all)")
    val_size: int = _f(0, "train", "training images held out as a validation split (never trained on)")
    nproc: int = _f(1, "train", "processes training the run together (torchrun, DDP; batch_size is per process)")
    sync_bn: bool = _f(False, "train", "nproc > 1 on CUDA: BatchNorm statistics over all processes' batches")
    precision: str = _f("auto", "train", "auto (bf16 autocast on CUDA and on CPUs with AMX/AVX512-BF16; the environment "
                        "variable DTLIB_AUTO_PRECISION=bf16|fp32 pins what auto means) | bf16 | fp32 (IEEE fp32 on "
                        "CUDA too: no TF32)")
    # --- evaluation: SGD-UAP (Shafahi et al. 2020) fitted on training images, scored on test images
    eval_norm: str = _f("linf", "eval", "ball of the evaluation UAP: linf | l2")
    eval_eps: float = _f(10 / 255, "eval", "radius of the evaluation UAP, pixel units")
    eval_modes: str = _f("ensemble,single", "eval", "inference modes attacked and scored, comma-separated")
    eval_head: int = _f(0, "eval", "head used by the single mode")
    eval_size: int = _f(0, "eval", "images scored, a class-balanced subset (0, or more than the split holds, = the "
                        "whole split; the metrics record the number scored, n_test)")
    eval_split: str = _f("test", "eval", "images the UAP is scored on: test | val (the validation split, for model selection)")
    uap_fit_size: int = _f(5000, "eval", "training images the evaluation UAPs are fitted on, drawn from every "
                           "training image outside the validation split, whatever train_size (the metrics record "
                           "the number used, n_fit)")
    uap_epochs: int = _f(10, "eval", "the cap of each SGD-UAP fit, in passes over the fitting images (the stopping "
                         "rule usually ends it earlier; the metrics record the steps taken)")
    uap_window: int = _f(20, "eval", "stopping rule: SGD-UAP steps between readings of the fitting-set rate")
    uap_tol: float = _f(0.005, "eval", "stopping rule: a fit stops once its best fitting-set rate rose by at most "
                        "this in uap_patience readings in a row")
    uap_patience: int = _f(3, "eval", "stopping rule: readings in a row without a gain above uap_tol that end a fit")
    uap_lr: str = _f("0.1,0.25", "eval", "SGD-UAP step as a fraction of eval_eps; a comma-separated list fits each")
    uap_decay: float = _f(1.0, "eval", "SGD-UAP step multiplier per pass over the fitting images (1 = constant)")
    uap_restarts: int = _f(1, "eval", "SGD-UAP fits per setting: the first from zero, the others from random points")
    uap_refine: int = _f(3, "eval", "SGD-UAP fits from random points added, per kind of labels, to the setting whose "
                         "fits reached the best fitting-set rate (fits are multimodal: restarts pay where the "
                         "attack is strongest); 0 = none")
    eval_objectives: str = _f("ensemble_ce,heads_ce,mean_logit", "eval", "what the suite's SGD-UAPs ascend on a "
                              "K-head model, comma-separated: ensemble_ce | heads_ce (mean per-head CE) | mean_logit "
                              "(one objective, the CE, with one head)")
    eval_target: int = _f(-1, "eval", "a class index: targeted UAPs that send images to it (the suite adds the published "
                          "attack, Adam on a bounded-logit loss; metrics add targeted_success); -1 = untargeted. "
                          "The published CIFAR-10 setting is 9")
    uap_adam_lr: float = _f(0.005, "eval", "targeted suite: learning rate of the published attack's Adam, pixel units "
                            "(untargeted suites run no Adam attack and ignore it)")
    eval_labels: str = _f("predicted,true", "eval", "labels the suite's SGD-UAPs use, comma-separated: predicted (the "
                          "model's clean predictions, aimed at the fooling rate) | true (aimed at accuracy); a targeted suite "
                          "(eval_target) ignores it")
    # --- runtime -----------------------------------------------------------------------------
    device: str = _f("auto", "runtime", "auto (CUDA when present) | cpu | cuda")
    checkpointing: bool = _f(False, "runtime", "gradient checkpointing of the backbone (memory for compute; same results)")
    compile: bool = _f(False, "runtime", "torch.compile the model for training (faster on CUDA after a compile of "
                       "about a minute; results equal up to floating-point rounding)")
    deterministic: bool = _f(False, "runtime", "CUDA: deterministic kernels where torch has them and no cuDNN autotuning "
                             "(slower; see the README on determinism). CPU runs are deterministic anyway")
    checkpoint_minutes: float = _f(10.0, "runtime", "wall-clock minutes between checkpoints within an epoch (one is "
                                   "written after every epoch and on SIGTERM/SIGINT regardless)")
    data_dir: str = _f("data", "runtime", "folder holding cifar10.npz, cifar10-mini.npz or cifar-10-batches-py (or, "
                       "for data=imagenet, train/ and val/); a relative path is read from the project folder and "
                       "recorded as given")
    download: bool = _f(False, "runtime", "let torchvision download CIFAR-10 into data_dir when it is missing")
    workers: int = _f(4, "runtime", "data=imagenet: DataLoader processes decoding images (0 = in the training process)")

    def __post_init__(self) -> None:
        validate(self)

    # ------------------------------------------------------------------------------------------
    def replace(self, **overrides: Any) -> "Config":
        """A copy with ``overrides`` applied (each a field name; values may be strings as on the CLI)."""
        return dataclasses.replace(self, **coerce(overrides))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def group(self, name: str) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.metadata["group"] == name}

    def train_key(self) -> dict[str, Any]:
        """What the trained weights depend on: the training fields, less those only another method
        reads (METHOD_FIELDS), plus the evaluation settings where ``ent_leak`` trains on their UAP."""
        others = {n for m, names in METHOD_FIELDS.items() if m != self.method for n in names}
        key = {k: v for k, v in self.group("train").items() if k not in others}
        if self.method == "entropy_dt" and self.ent_leak:
            key["leaked_eval"] = self.eval_hash()
        return key

    def train_hash(self, precision: str | None = None, data: str | None = None) -> str:
        """Run-cache key: ``train_key`` (every field that changes the trained weights) plus the code version.

        ``precision`` is the resolved autocast precision ("bf16" or "fp32") that ``auto`` means on
        this machine, so a bf16 run is never reused for an fp32 request or the reverse. ``data``
        identifies training images that the fields do not (an ImageFolder's: ``data.data_identity``)."""
        fields_ = {**self.train_key(), "precision": precision or self.precision}
        if data is not None:
            fields_["data_files"] = data
        if self.data == "imagenet" and self.image_size == NATIVE_SIDE:  # 224 is what 0 means: one key
            fields_["image_size"] = 0
        for name, legacy in ADDED_TRAIN_FIELDS.items():
            if fields_.get(name, legacy) == legacy:
                fields_.pop(name, None)
        blob = json.dumps({"code": CODE_VERSION, **fields_}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def eval_hash(self) -> str:
        """Key of one evaluation setting of a run: its metrics and UAPs are cached under it."""
        fields_ = {k: v for k, v in self.group("eval").items() if not (k in ADDED_EVAL_FIELDS and ADDED_EVAL_FIELDS[k] == v)}
        # what the suite does not read in this mode is not part of the setting: the Adam attack's rate
        # when untargeted, the kinds of labels when targeted (its UAPs aim at the target)
        fields_.pop("eval_labels" if self.eval_target >= 0 else "uap_adam_lr", None)
        blob = json.dumps({"code": CODE_VERSION, "attack": ATTACK_VERSION, **fields_}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:8]

    @property
    def uap_lrs(self) -> list[float]:
        """The SGD-UAP step sizes tried (fractions of eval_eps)."""
        return [float(v) for v in self.uap_lr.split(",") if v.strip()]

    @property
    def uap_objective_list(self) -> list[str]:
        return [m.strip() for m in self.eval_objectives.split(",") if m.strip()]

    @property
    def uap_label_list(self) -> list[str]:
        return [m.strip() for m in self.eval_labels.split(",") if m.strip()]

    @property
    def modes(self) -> list[str]:
        return [m.strip() for m in self.eval_modes.split(",") if m.strip()]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        unknown = sorted(set(d) - set(FIELD_TYPES))
        if unknown:
            raise ValueError(f"Unknown config field {unknown[0]!r}; known fields: {', '.join(FIELD_TYPES)}.")
        return cls(**coerce(d))


FIELD_TYPES: dict[str, type] = {f.name: type(f.default) for f in fields(Config)}


def _parse(name: str, value: Any) -> Any:
    kind = FIELD_TYPES[name]
    if kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # configs written when a field was numeric (e.g. uap_lr=0.1) still load
    return parse_setting(name, value, kind)


def coerce(overrides: dict[str, Any]) -> dict[str, Any]:
    """Turn CLI/papermill strings into the field's type; unknown names are an error."""
    out = {}
    for name, value in overrides.items():
        if name not in FIELD_TYPES:
            raise ValueError(f"Unknown config field {name!r}; known fields: {', '.join(FIELD_TYPES)}.")
        out[name] = _parse(name, value)
    return out


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """``["method=dt", "heads=5"]`` -> ``{"method": "dt", "heads": 5}``."""
    return coerce(key_values(args))
