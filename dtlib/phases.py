"""The named parts of a training step, defined once: the runtime's phase clock times them and the
benchmark's report tabulates them. No torch here, so the report can be redrawn without it."""
from __future__ import annotations

# In the order a step runs them. ``uap_gradient`` (dt's input-gradient pass for its running UAP) and
# ``low_entropy`` (entropy_dt's sample generation) run inside ``forward_and_loss``, so a clock's
# ``forward_and_loss`` includes them.
PHASES = ("forward_and_loss", "uap_gradient", "low_entropy", "backward", "uap_update", "optimizer")
NESTED = {"uap_gradient": "forward_and_loss", "low_entropy": "forward_and_loss"}


def phase_split(phases_ms: dict[str, float]) -> dict[str, float]:
    """Phases as disjoint parts: each nested phase taken out of the phase that holds it."""
    out = {p: phases_ms.get(p, 0.0) for p in PHASES}
    for inner, outer in NESTED.items():
        out[outer] -= out[inner]
    return out
