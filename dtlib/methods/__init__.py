"""The training methods, each one per-batch step (``base.Step``) in a file of its own; the one
loop (``dtlib.train``) runs any of them. A new method is a file here and an entry in ``STEPS``
(and its name in ``config.METHODS``, which a test keeps equal to ``STEPS``)."""
from __future__ import annotations

from .base import RunningUAP, Step
from .dt import DT
from .entropy_dt import EntropyDT
from .pgd_at import PGDAT
from .uat import UAT

STEPS: dict[str, type[Step]] = {"standard": Step, "dt": DT, "uat": UAT, "pgd_at": PGDAT, "entropy_dt": EntropyDT}

__all__ = ["DT", "EntropyDT", "PGDAT", "STEPS", "UAT", "RunningUAP", "Step"]
