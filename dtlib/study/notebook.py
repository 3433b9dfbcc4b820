"""What a study notebook calls, one line per cell: ``start`` (its parameters cell into a Study),
``run`` (its experiment), ``table``, ``figure`` and ``claims`` (what it shows). The notebooks keep
only their markdown and these calls; what the claims columns and verdicts mean is written once,
in docs/protocol.md and notebooks/README.md."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from IPython.display import Image, display

from .. import figures
from .registry import EXPERIMENTS
from .settings import Study, check_parameters, setup

CLAIM_COLUMNS = ["claim", "what", "seed", "measured", "setting", "verdict"]


def start(namespace: dict[str, Any]) -> Study:
    """The Study of a notebook's parameters cell (``profile``, ``overrides``, ``root`` in
    ``namespace``, the notebook's ``globals()``); a papermill parameter the notebooks do not declare
    stops it here, before any work (papermill itself only warns)."""
    check_parameters(namespace)
    study = setup(namespace["profile"], namespace["overrides"], namespace["root"])
    pd.set_option("display.precision", 3)
    pd.set_option("display.max_colwidth", 120)
    c = study.config
    print(f"profile {study.profile}: seeds {study.seeds}, {c.backbone}, train_size {c.train_size or 'all'},"
          f" {c.epochs} epochs, device {c.device}")
    return study


def run(study: Study, notebook: str) -> dict[str, Any]:
    """The notebook's experiment (``registry.EXPERIMENTS``): trains through the run cache and
    writes ``results/<notebook>-<profile>.{json,csv}``."""
    return EXPERIMENTS[notebook](study)


def table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(rows)


def selection(res: dict[str, Any]) -> pd.DataFrame:
    """The validation-split selection of DT's loss weights: the cells chosen (printed), the
    references scored the same way (shown), and the grid they were chosen from (returned)."""
    sel = res["selection"]
    print(f"chosen: {sel['best']}; best with lambda_div > 0 (the controls', 02's and 04's): {sel['best_div']}"
          f" - {sel['criterion']}")
    display(pd.DataFrame(sel["references"]).T.rename_axis("reference"))
    if len(sel.get("attackers", [])) > 1:  # DT's training-time attackers beside the grid's (the first)
        if "step" in sel:  # selections from before selection.chosen_step: the first
            print(f"DT's training-time attacker after the selection (selection.chosen_step): {sel['step']}")
        display(pd.DataFrame(sel["attackers"]).set_index("attacker"))
    return pd.DataFrame(sel["grid"])


def transfer_matrix(res: dict[str, Any]) -> pd.DataFrame:
    """04's fooling rates as a source x target matrix (white-box on the diagonal)."""
    return pd.DataFrame(res["rows"]).pivot(index="source", columns="target", values="fooling_rate")


def figure(res: dict[str, Any], study: Study) -> list[str]:
    """Draw the notebook's figure into ``figures/<notebook>-<profile>.{png,pdf}`` and show it."""
    out = Path(study.dir) / "figures" / f"{res['notebook']}-{study.profile}"
    paths = figures.PLOTS[res["notebook"]](res, out)
    display(Image(paths[0]))
    return paths


def claims(res: dict[str, Any]) -> pd.DataFrame:
    """The claims rows: the seed's figure beside the measured one and the verdict computed from it."""
    return pd.DataFrame(res["claims"])[CLAIM_COLUMNS]
