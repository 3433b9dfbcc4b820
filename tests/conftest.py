import os
import subprocess
import time
from pathlib import Path

import pytest
import torch

import dtlib
from dtlib.checkpoint import CorruptFile, load_verified
from dtlib.data import load_cifar10
from dtlib.runtime import PRECISION_ENV, auto_precision

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
# device="cpu": these tests assert CPU determinism and exact equalities, also on a CUDA machine
MINI = dict(data="mini", data_dir=str(DATA_DIR), device="cpu")


def pytest_terminal_summary(terminalreporter):
    """Which precision this run's tests trained in (printed under -q too): CI runs both."""
    forced = os.environ.get(PRECISION_ENV)
    why = f"{PRECISION_ENV}={forced}" if forced else f"this CPU's choice; {PRECISION_ENV} unset"
    terminalreporter.write_line(f"dtlib: precision=auto resolved to {auto_precision(torch.device('cpu'))} ({why})")


# The session's trained fixtures: a test that asks for one pays for its training and evaluation
TRAINED = {"standard_run", "standard_model"}


def pytest_collection_modifyitems(items):
    """A precision test that asks for a trained fixture is heavy too (``heavy``: left out of the bf16
    pass on CPUs without bf16 instructions, scripts/test_other_precision.py)."""
    for item in items:
        if item.get_closest_marker("precision") and TRAINED & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.heavy)


@pytest.fixture(scope="session")
def mini():
    return load_cifar10("mini", DATA_DIR)


@pytest.fixture(scope="session")
def runs_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="session")
def standard_run(runs_dir):
    """A standard compact CNN trained on the mini set (about 30 s), evaluated with the attack suite
    (one refining start per kind of labels, not three: 0.42 fooling rate either way, measured)."""
    torch.set_num_threads(max(1, torch.get_num_threads()))
    return dtlib.run(method="standard", epochs=8, uap_fit_size=1000, uap_epochs=3, uap_refine=1, runs_dir=runs_dir,
                     progress=False, log=lambda s: None, **MINI)


@pytest.fixture(scope="session")
def standard_model(standard_run):
    model, cfg = dtlib.load_model(standard_run.run_dir)
    return model, cfg


def wait_for_mid_epoch_checkpoint(proc: subprocess.Popen, ckpt: Path, timeout: float = 120) -> None:
    """Wait until the training process ``proc`` has written ``ckpt`` from inside an epoch."""
    deadline = time.time() + timeout
    while True:
        assert proc.poll() is None, f"training ended before it was interrupted: {proc.communicate()[1][-3000:]}"
        assert time.time() < deadline, f"no checkpoint from inside an epoch at {ckpt} within {timeout} s"
        try:
            if load_verified(ckpt)["batch"] > 0:
                return
        except (FileNotFoundError, CorruptFile):
            pass
        time.sleep(0.01)
