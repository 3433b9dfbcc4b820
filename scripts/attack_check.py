"""The attack check (``dtlib.study.check.attack_check``) on chosen headline arms, with the
suite as the code defines it now: each model's suite against the clearly larger one, and where that
raises a figure, the larger one against the level-2 suite (several times its cost).

    python scripts/attack_check.py [profile] [seed] arm[:modes] ...    e.g. cpu 0 dt_k1 dt_nodiv:single

Arms are the headline's (``selection.arms``, with the loss weights chosen in the committed
``results/01_headline-<profile>.json``); ``:modes`` limits the inference modes scored (comma-
separated, ``eval_modes``), to spend the time on the mode in question. Trains what the run cache
lacks. Writes ``results/attack-check-<profile>.{json,md}``: the rows ``attack_check`` returns,
every entry's rates read from the run cache, the eval settings and provenance.
"""
import json
import sys
import time
from pathlib import Path

import torch

from dtlib.io import write_record
from dtlib.runtime import provenance
from dtlib.study import setup
from dtlib.study.check import attack_check, stronger, suite_at
from dtlib.study.selection import arms
from dtlib.tables import check_table

ROOT = Path(__file__).resolve().parent.parent
LABELS = {0: "suite", 1: "stronger"}


def main(profile: str, seed: int, specs: list[str]) -> dict:
    t0 = time.perf_counter()
    study = setup(profile, progress=False)
    selection = json.loads((ROOT / "results" / f"01_headline-{profile}.json").read_text())["selection"]
    table = arms(selection)
    models = []
    for spec in specs:
        arm, _, modes = spec.partition(":")
        if arm not in table:
            raise SystemExit(f"Unknown arm {arm!r}; choose from {', '.join(table)}.")
        models.append(({"arm": arm}, {**table[arm], "seed": seed, **({"eval_modes": modes} if modes else {})}))
    more, rows, entries, runs = stronger(study.config), [], {}, {}
    for tags, o in models:  # one at a time, the file rewritten after each: a killed run keeps what it did
        mine = attack_check(study, [(tags, o)], log=lambda s: print(s, flush=True))
        rows += mine
        # every level of the check's ladder it evaluated: the suite, the stronger one, and level 2 where it climbed
        top = max(r["level"] for r in mine) + 1
        for level in range(top + 1):
            label = LABELS.get(level, f"level{level}")
            done = study.run(lambda s: None, **o, **suite_at(study.config, level))
            runs.setdefault(tags["arm"], {"run": done.run_dir.name, "trained": done.metrics["train"].get("provenance")})
            runs[tags["arm"]][f"{label}_eval_s"] = done.metrics["eval_wall_s"]
            for key, m in done.metrics["eval"].items():
                entries[f"{tags['arm']}/{key}/{label}"] = {
                    n: {k: e[k] for k in ("fooling_rate", "uap_acc", "steps", "converged") if k in e}
                    for n, e in m["attack"].items() if n.startswith("sgd:")}
        record = {"profile": profile, "seed": seed, "arms": specs, "eval": study.config.group("eval"),
                  "stronger": more, "rows": rows, "runs": runs, "entries": entries, "wall_s": time.perf_counter() - t0,
                  "provenance": provenance(torch.device("cpu"))}
        write_record(ROOT / "results" / f"attack-check-{profile}.json", record, markdown(record))
    return record


def markdown(record: dict) -> str:
    p = record["provenance"]
    short = lambda c: c[:12] + ("+dirty" if c.endswith("+dirty") else "")
    trained = sorted({short((r["trained"] or {}).get("git_commit", "?")) for r in record["runs"].values()})
    minutes = lambda label: sum(r.get(f"{label}_eval_s", 0) for r in record["runs"].values()) / 60
    return (f"<!-- written by scripts/attack_check.py from attack-check-{record['profile']}.json -->\n"
            + check_table(record["rows"]).replace("Attack check (first seed)", f"Attack check (seed {record['seed']})")
            + f"\nRun on {p['device']}, torch {p['torch']}, commit {short(p['git_commit'])}; models trained at "
            f"{', '.join(trained)}. Evaluations (2 threads, from the run cache where it had them): suite "
            f"{minutes('suite'):.0f} min, stronger suite {minutes('stronger'):.0f} min"
            + (f", level-2 suite {minutes('level2'):.0f} min" if minutes("level2") else "") + ".\n")


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0] if args else "cpu", int(args[1]) if len(args) > 1 else 0, args[2:] or ["dt_k1", "dt_nodiv:single"])
