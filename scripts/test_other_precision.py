"""The precision-sensitive tests (pytest marker ``precision``) once more, under the precision this
machine's ``precision=auto`` does not pick: ``make test-other-precision``, CI's second pass.

    python scripts/test_other_precision.py [pytest arguments]

Where the other precision is bf16 on a CPU without bf16 instructions (no AMX or AVX512-BF16, and no
AVX-512 at all to emulate them on: an AVX2 CPU), oneDNN runs bf16 convolutions on reference kernels:
a 3x3 convolution of 128 x 64 x 16 x 16 images took 34 ms in fp32 and 1,019 ms in bf16 on a 2-core AVX2
EPYC, and this pass would take hours. There the tests also marked ``heavy`` (whole notebooks, long
trainings) are left out, and the run says so in its first line. Where bf16 is fast they all run:
there ``make test`` itself runs every test in bf16, and this pass runs the precision tests in fp32.
"""
from __future__ import annotations

import os
import sys
import time

import torch
import torch.nn.functional as F

from dtlib.runtime import PRECISION_ENV, auto_precision

SLOW = 5.0  # bf16 convolutions this many times slower than fp32: emulated (fast kernels: 0.3-2x)


def bf16_slowdown() -> float:
    """How many times longer a bf16 3x3 convolution takes than an fp32 one on this CPU (best of 3)."""
    x, w = torch.randn(32, 32, 16, 16), torch.randn(32, 32, 3, 3)

    def best(dtype: torch.dtype) -> float:
        a, b = x.to(dtype), w.to(dtype)
        F.conv2d(a, b, padding=1)  # the first call picks and builds the kernel
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            F.conv2d(a, b, padding=1)
            times.append(time.perf_counter() - t0)
        return min(times)

    return best(torch.bfloat16) / best(torch.float32)


def main(args: list[str]) -> None:
    other = {"bf16": "fp32", "fp32": "bf16"}[auto_precision(torch.device("cpu"))]
    marker = "precision"
    if other == "bf16" and (slowdown := bf16_slowdown()) > SLOW:
        marker = "precision and not heavy"
        print(f"test-other-precision: bf16 convolutions run {slowdown:.0f}x slower than fp32 on this CPU (no bf16 "
              "instructions), so this bf16 pass leaves out the tests marked heavy; a CPU with AVX512-BF16 or AMX "
              "runs every test in bf16 in `make test`.", flush=True)
    os.environ[PRECISION_ENV] = other
    os.execv(sys.executable, [sys.executable, "-m", "pytest", "-q", "-m", marker, *args])


if __name__ == "__main__":
    main(sys.argv[1:])
