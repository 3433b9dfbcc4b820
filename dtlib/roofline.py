"""How far a step is from the hardware (``make bench``): its FLOPs, counted by torch's FLOP counter
(convolutions and matrix products, forward and backward), per second of its time, against two
ceilings for the precision it runs in:

- ``gemm``: what a large matrix product attains here, measured (the best a dense kernel does on
  this machine, its threads and its precision);
- ``nominal``: the vector units' peak, threads x reported clock x FLOPs per cycle of the widest
  instructions the CPU lists, assuming two FMA units per core (AVX2 32 fp32 FLOPs per cycle,
  AVX-512 64, AVX512-BF16 128 bf16; AMX-BF16 1,024 bf16: one 16 x 16 x 32 tile product per 16
  cycles), halved on AMD cores before Zen 5, which run 512-bit instructions as two 256-bit halves.
  A ceiling of this kind, not a measurement: a clock that boosts above the reported one, or SMT
  threads counted as cores, moves it. None where the precision has no instructions of its own
  (bf16 emulated in fp32 units) or on a GPU.

FLOPs are those executed: a checkpointed step counts its recomputed forward too. The small layers
of a CIFAR network and the non-matmul operators (BatchNorm, GELU, pooling) keep a step below
either ceiling; the bench's op profile shows where the rest of the time goes.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from .io import cpu_flags, cpu_mhz, cpu_vendor_family
from .runtime import sync

# FLOPs per cycle per core (2 per FMA, two FMA units) of the widest instructions for a precision
FLOPS_PER_CYCLE = {"fp32": (("avx512f", 64), ("avx2", 32)),
                   "bf16": (("amx_bf16", 1024), ("avx512_bf16", 128))}
HALF_WIDTH = ("avx512f", "avx512_bf16")  # on AMD before Zen 5 (family 26): two 256-bit halves


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs that ``fn()`` runs through matrix products and convolutions (forward and backward)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def gemm_side(device: torch.device) -> int:
    """The side of the reference matrix product: 1024 on a CPU, 8192 on a GPU (where a small product
    would time the launch and the synchronisation, not the product)."""
    return 8192 if device.type == "cuda" else 1024


def gemm_flops_per_s(device: torch.device, precision: str, n: int | None = None, reps: int = 7) -> float:
    """FLOP/s of an n x n matrix product in ``precision`` (bf16 | fp32) on ``device``: the median
    of ``reps`` timed products after two untimed ones; n defaults to ``gemm_side``."""
    n = n or gemm_side(device)
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=g).to(device) for _ in range(2))
    if precision == "bf16":
        a, b = a.bfloat16(), b.bfloat16()
    times = []
    for r in range(reps + 2):
        sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        if r >= 2:
            times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / statistics.median(times)


def nominal_flops_per_s(device: torch.device, precision: str, threads: int) -> tuple[float | None, str]:
    """(the vector units' nominal peak FLOP/s for ``threads`` cores, how it was reckoned), or (None, why not)."""
    if device.type != "cpu":
        return None, "no nominal peak on a GPU: the measured matrix product is the ceiling"
    flags, mhz = cpu_flags(), cpu_mhz()
    unit = next(((f, n) for f, n in FLOPS_PER_CYCLE[precision] if f in flags), None)
    if mhz is None:
        return None, "this CPU reports no clock in /proc/cpuinfo"
    if unit is None:
        return None, f"no {precision} instructions listed by this CPU: it is emulated"
    flag, per_cycle = unit
    vendor, family = cpu_vendor_family()
    halves = flag in HALF_WIDTH and vendor == "AuthenticAMD" and family < 26
    per_cycle //= 2 if halves else 1
    how = f"{threads} threads x {mhz:.0f} MHz x {per_cycle} FLOP/cycle ({flag}, 2 FMA units{', 256-bit halves' if halves else ''})"
    return threads * mhz * 1e6 * per_cycle, how


def ceilings(device: torch.device, precision: str, threads: int) -> dict[str, Any]:
    """The two ceilings of a step in ``precision`` here, in GFLOP/s."""
    nominal, how = nominal_flops_per_s(device, precision, threads)
    return {"precision": precision, "gemm_gflops": gemm_flops_per_s(device, precision) / 1e9, "gemm_n": gemm_side(device),
            "nominal_gflops": None if nominal is None else nominal / 1e9, "nominal_basis": how}


def against(flops: float, seconds: float, ceiling: dict[str, Any]) -> dict[str, Any]:
    """A step's FLOPs and time as GFLOP/s and as fractions of the ``ceilings``."""
    rate = flops / seconds / 1e9
    nominal = ceiling["nominal_gflops"]
    return {"gflop": flops / 1e9, "gflops": rate, "of_gemm": rate / ceiling["gemm_gflops"],
            "of_nominal": None if nominal is None else rate / nominal}
