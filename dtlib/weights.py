"""Weights-only model files anyone can load and attack without retraining: a MultiHead's state dict
as safetensors (no pickle, so loading runs no code), with the run's Config in the file's metadata,
so the file alone rebuilds the model. ``experiment.load_model`` takes such a file as well as a run.

The model takes images (B, 3, H, W) with pixels in [0, 1] (normalisation is its first layer) and
returns per-head logits (K, B, classes); ``model.classifier(mode, head)`` is a plain scores module.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .config import Config
from .data import file_digest
from .io import atomic_path
from .models import MultiHead, build_model

FORMAT = "dtlib.multihead/1"  # the metadata's "format": what the tensors' names and shapes mean


def save_weights(model: MultiHead, cfg: Config, path: str | Path, info: dict[str, Any] | None = None) -> str:
    """Write ``model``'s weights and ``cfg`` to ``path`` (atomically; ``info``: more metadata, stored
    as JSON strings); returns the file's sha256."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "config": json.dumps(cfg.to_dict(), sort_keys=True),
            **{k: json.dumps(v) for k, v in (info or {}).items()}}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return file_digest(Path(path))


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(state dict on the CPU, metadata) of a safetensors file; ValueError in one sentence when unreadable."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file.") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path} is not a readable safetensors file ({type(e).__name__}).") from None


def load_weights(path: str | Path, device: str | torch.device = "cpu") -> tuple[MultiHead, Config]:
    """The model in ``path`` (written by ``save_weights``), in eval mode on ``device``, and its config."""
    state, meta = read_weights(path)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} holds no dtlib model (its metadata's format is {meta.get('format')!r}, not {FORMAT!r}).")
    cfg = Config.from_dict(json.loads(meta["config"]))
    model = build_model(cfg.replace(checkpointing=False, pretrained=""), state["weight"].shape[1])
    model.load_state_dict(state)
    return model.to(device).eval(), cfg
