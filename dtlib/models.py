"""Backbones and the K-head wrapper. Models take images in [0, 1]; normalisation is their first layer.

``MultiHead(backbone, feature_dim, heads)`` puts K independent linear heads on one backbone:
``model(x)`` gives per-head logits (K, B, classes); ``model.scores(x, mode, head)`` gives (B, classes)
scores for one inference mode: ``single`` (head i's logits, costing exactly a one-head model's forward)
or ``ensemble`` (log of the mean of the heads' softmaxes: a valid logit vector whose softmax is the
ensemble's probabilities). ``model.classifier(mode, head)`` wraps that as a plain (B, classes) module
for outside attack tools.
"""
from __future__ import annotations

import math
import pickle
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from torchvision.models import ResNet, resnet18, resnet50

from .config import BACKBONES, MODES, Config
from .data import CLASSES, MEAN, STD
from .imagenet import MEAN as IMAGENET_MEAN, STD as IMAGENET_STD


class Normalize(nn.Module):
    def __init__(self, mean: tuple[float, ...] = MEAN, std: tuple[float, ...] = STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def conv_bn(ci: int, co: int, pool: bool = False) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(ci, co, 3, padding=1, bias=False)]
    if pool:
        layers.append(nn.MaxPool2d(2))  # pool before BN as airbench: BN and GELU then run on 4x fewer pixels
    return layers + [nn.BatchNorm2d(co), nn.GELU()]


def compact_cnn(widths: tuple[int, int, int, int] = (24, 32, 64, 128)) -> tuple[nn.Sequential, int]:
    """The CPU-profile backbone (0.29 M parameters): a stem and three [conv-pool-BN-GELU, conv-BN-GELU]
    blocks, global max-pool. Stages are children so gradient checkpointing can cut between them."""
    stages = [nn.Sequential(*conv_bn(3, widths[0]))]
    for ci, co in zip(widths[:-1], widths[1:]):
        stages.append(nn.Sequential(*conv_bn(ci, co, pool=True), *conv_bn(co, co)))
    stages.append(nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten()))
    return nn.Sequential(*stages), widths[-1]


def vgg(widths: tuple[int, ...] = (16, "M", 32, "M", 64, 64, "M", 128, 128, "M", 128, 128, "M")) -> tuple[nn.Sequential, int]:
    """A VGG-11-BN layout at a quarter width (0.58 M parameters): the second architecture for transfer."""
    stages, layers, ci = [], [], 3
    for w in widths:
        if w == "M":
            layers.append(nn.MaxPool2d(2))
            stages.append(nn.Sequential(*layers))
            layers = []
        else:
            layers += [nn.Conv2d(ci, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            ci = w
    stages.append(nn.Sequential(*layers, nn.Flatten()))
    return nn.Sequential(*stages), ci


def resnet18_cifar() -> tuple[nn.Sequential, int]:
    """torchvision's ResNet-18 with the CIFAR stem (3x3 conv, stride 1, no max-pool): the GPU profile."""
    r = resnet18(num_classes=len(CLASSES))
    r.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
    stem = nn.Sequential(r.conv1, r.bn1, r.relu)
    return nn.Sequential(stem, r.layer1, r.layer2, r.layer3, r.layer4, nn.Sequential(r.avgpool, nn.Flatten())), 512


def resnet50_imagenet(weights: str | Path = "") -> tuple[nn.Sequential, int]:
    """torchvision's ResNet-50 as it is for ImageNet (7x7 stride-2 stem and max-pool; 2048-d pooled
    features), from random weights or from ``weights``, a local file of torchvision's ResNet-50
    weights (a state dict, e.g. IMAGENET1K_V2 saved by ``torch.save``: nothing is downloaded); its
    ``fc`` is dropped, the K heads replace it. Stages are children, for gradient checkpointing."""
    r = resnet50()
    if weights:
        load_resnet_weights(r, weights)
    stem = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool)
    return nn.Sequential(stem, r.layer1, r.layer2, r.layer3, r.layer4, nn.Sequential(r.avgpool, nn.Flatten())), 2048


def load_resnet_weights(net: ResNet, path: str | Path) -> None:
    """Load a torchvision ResNet state dict from ``path`` into ``net``, all but its ``fc`` (any class
    count); raise ValueError (one sentence naming the file) when it is missing, unreadable or another network's."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"pretrained={str(path)!r}: no such file (give a local file of torchvision ResNet-50 weights).") from None
    except OSError as e:  # a folder, no permission
        raise ValueError(f"pretrained={str(path)!r} cannot be read ({type(e).__name__}).") from None
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError) as e:
        raise ValueError(f"pretrained={str(path)!r} is not a readable torch state dict ({type(e).__name__}).") from None
    if not isinstance(state, dict):
        raise ValueError(f"pretrained={str(path)!r} holds a {type(state).__name__}, not a state dict.")
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    mine = net.state_dict()
    for k, v in state.items():
        if k in mine and (not torch.is_tensor(v) or v.shape != mine[k].shape):
            raise ValueError(f"pretrained={str(path)!r} does not fit torchvision's ResNet-50: its {k} has shape "
                             f"{tuple(getattr(v, 'shape', ()))}, where ResNet-50 has {tuple(mine[k].shape)}.")
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise ValueError(f"pretrained={str(path)!r} does not fit torchvision's ResNet-50: {len(missing)} tensors missing, "
                         f"{len(unexpected)} unknown (e.g. {(missing or unexpected)[0]!r}).")


BUILDERS = {"cnn": compact_cnn, "vgg": vgg, "resnet18": resnet18_cifar, "resnet50": resnet50_imagenet}


class FrozenBNStats:
    """Keep BatchNorm running statistics unchanged (momentum 0) while a checkpointed segment is
    recomputed in the backward pass, so checkpointing does not count a batch twice. Re-enterable:
    DT backpropagates through one graph twice (the UAP's gradient, then the weights')."""

    def __init__(self, module: nn.Module):
        self.bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def __enter__(self) -> None:
        self.saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None)
                      for m in self.bns]
        for m in self.bns:
            m.momentum = 0.0

    def __exit__(self, *exc: object) -> None:
        for m, (mom, nbt) in zip(self.bns, self.saved):
            m.momentum = mom
            if nbt is not None:
                m.num_batches_tracked.copy_(nbt)


class MultiHead(nn.Module):
    """A shared backbone with K independent linear heads; see the module docstring for the modes."""

    def __init__(self, backbone: nn.Sequential, feature_dim: int, heads: int = 1,
                 num_classes: int = len(CLASSES), checkpointing: bool = False, normalize: Normalize | None = None):
        super().__init__()
        if not isinstance(heads, int) or isinstance(heads, bool) or heads < 1:
            raise ValueError(f"heads (K) must be an integer of at least 1, got {heads!r}.")
        self.normalize = normalize or Normalize()  # CIFAR-10's statistics unless given
        self.backbone = backbone
        self.heads, self.num_classes, self.checkpointing = heads, num_classes, checkpointing
        # K heads stored as one (K, C, D) tensor so all of them cost one matmul; each is initialised
        # independently like an nn.Linear.
        self.weight = nn.Parameter(torch.empty(heads, num_classes, feature_dim))
        self.bias = nn.Parameter(torch.empty(heads, num_classes))
        bound = 1 / math.sqrt(feature_dim)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, D) of images in [0, 1]."""
        x = self.normalize(x)
        if not (self.checkpointing and self.training and torch.is_grad_enabled()):
            return self.backbone(x)
        stages = list(self.backbone.children())
        for stage in stages[:-1]:
            x = checkpoint(stage, x, use_reentrant=False,
                           context_fn=lambda s=stage: (nullcontext(), FrozenBNStats(s)))
        return stages[-1](x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per-head logits (K, B, classes)."""
        f = self.features(x)
        k, c, d = self.weight.shape
        return F.linear(f, self.weight.reshape(k * c, d), self.bias.reshape(k * c)).view(-1, k, c).transpose(0, 1)

    def head_logits(self, x: torch.Tensor, head: int = 0) -> torch.Tensor:
        """Logits (B, classes) of one head; the same work as a one-head model's forward."""
        if not 0 <= head < self.heads:
            raise ValueError(f"head index {head} is out of range for a model with {self.heads} heads.")
        return F.linear(self.features(x), self.weight[head], self.bias[head])

    def scores(self, x: torch.Tensor, mode: str = "ensemble", head: int = 0) -> torch.Tensor:
        """(B, classes) scores of an inference mode; argmax is the prediction, cross-entropy applies."""
        if mode == "single":
            return self.head_logits(x, head)
        if mode == "ensemble":
            return ensemble_log_probs(self(x))
        raise ValueError(f"Unknown inference mode {mode!r}; choose from {', '.join(MODES)}.")

    def classifier(self, mode: str = "ensemble", head: int = 0) -> "Classifier":
        return Classifier(self, mode, head)


class Classifier(nn.Module):
    """A MultiHead seen as an ordinary classifier: images in [0, 1] -> (B, classes) scores."""

    def __init__(self, model: MultiHead, mode: str = "ensemble", head: int = 0):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"Unknown inference mode {mode!r}; choose from {', '.join(MODES)}.")
        if mode == "single" and not 0 <= head < model.heads:
            raise ValueError(f"head index {head} is out of range for a model with {model.heads} heads.")
        self.model, self.mode, self.head = model, mode, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.scores(x, self.mode, self.head)


def check_head_logits(logits: torch.Tensor) -> None:
    if logits.dim() != 3:
        raise ValueError(f"Expected per-head logits of shape (K, B, C), got shape {tuple(logits.shape)}.")


def ensemble_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """log(mean_k softmax(logits_k)) for per-head logits (K, B, C), computed stably in float32."""
    check_head_logits(logits)
    lp = F.log_softmax(logits.float(), dim=-1)
    return torch.logsumexp(lp, dim=0) - math.log(lp.shape[0])


def build_model(cfg: Config, num_classes: int = len(CLASSES)) -> MultiHead:
    """An untrained MultiHead for ``cfg`` (backbone, heads, checkpointing, the normalisation of its
    data) with ``num_classes`` classes (the data's: 10 for CIFAR-10); seed torch first."""
    if cfg.backbone not in BUILDERS:
        raise ValueError(f"Unknown backbone {cfg.backbone!r}; choose one of {', '.join(BACKBONES)}.")
    backbone, dim = resnet50_imagenet(cfg.pretrained) if cfg.pretrained else BUILDERS[cfg.backbone]()
    norm = Normalize(IMAGENET_MEAN, IMAGENET_STD) if cfg.data == "imagenet" else Normalize()
    return MultiHead(backbone, dim, cfg.heads, num_classes, checkpointing=cfg.checkpointing, normalize=norm)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
