"""Five experiments of the study, one per notebook (``headline``, ``k_ablation``, ``cross_norm``,
``transfer``, ``cost``; the sixth, ``published_method``, has a module of its own; ``registry`` maps
notebooks to them); the validation-split selection of DT's settings they share is ``selection``'s.

Each returns a JSON-able dict that it also writes to ``results/<notebook>-<profile>.json`` (and its
table as CSV), with provenance; ``dtlib.figures`` draws every figure from such a dict, so figures
are regenerated without training. Models are shared between notebooks through the run cache
``runs/<config-hash>/``: the batch trains each configuration once. Every claims row comes from
``claims``.
"""
from __future__ import annotations

import csv
import math
import time
from typing import Any, Callable

from ..config import ATTACK_VERSION, Config
from ..data import load_data
from ..evaluate import scored_subset
from ..experiment import load_model, load_uaps
from ..io import atomic_path, write_json
from ..measure import bench_split, inference_latency, training_steps
from ..metrics import accuracy, fooling_rate, predict
from ..runtime import amp_dtype, provenance, resolve_device
from .check import attack_check, checked, checked_seeds, suite_for
from .claims import MIN_NOISE, cost_claims, cross_claims, headline_claims, k_claims, summarise, transfer_claims
from .rules import machine_ratio
from .selection import _runs, arms, select_dt
from .settings import Study


def save(study: Study, notebook: str, payload: dict[str, Any], t0: float) -> dict[str, Any]:
    """Write ``results/<notebook>-<profile>.json`` and its table as ``.csv``, atomically."""
    device = resolve_device(study.config.device)
    payload = {"notebook": notebook, "profile": study.profile, "attack_version": ATTACK_VERSION,
               "study": study.to_dict(), **payload,
               "wall_s": time.perf_counter() - t0, "provenance": provenance(device)}
    out = study.dir / "results" / f"{notebook}-{study.profile}.json"
    write_json(out, payload)
    table = payload.get("table") or []
    if table:
        prov = {"profile": study.profile, "git_commit": payload["provenance"]["git_commit"],
                "device": payload["provenance"]["device"], "torch": payload["provenance"]["torch"]}
        keys = list(dict.fromkeys(k for row in table for k in row)) + list(prov)
        with atomic_path(out.with_suffix(".csv")) as tmp, open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, keys)
            w.writeheader()
            w.writerows({**row, **prov} for row in table)
    return payload



METRICS = ("clean_acc", "fooling_rate", "uap_acc", "random_fooling_rate")


def headline(study: Study, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Standard vs PGD-AT vs UAT vs DT (K = 5: the setting chosen on validation, and the seed's
    literal loss) and the controls, over ``study.seeds``; white-box L-inf UAP at the config's
    eval_eps against each inference mode; training cost as wall-time ratio to the standard run of
    the same seed, formed only where both were trained on the same kind of machine (a run cache
    filled across sessions can mix them)."""
    t0 = time.perf_counter()
    selection = select_dt(study, log)
    # the check first: each evaluation's figures are those of the suite it settles on
    check = attack_check(study, checked_seeds(study, [({"arm": arm}, o) for arm, o in arms(selection).items()],
                                              study.seeds, log), log)
    rows, results = [], []
    for seed in study.seeds:
        base_wall = base_machine = None
        for arm, o in arms(selection).items():
            res = study.run(log, seed=seed, **o, **suite_for(study, check, {"arm": arm, "seed": seed}))
            results.append(res)
            wall, machine = res.metrics["train"]["wall_s"], res.metrics["train"].get("provenance", {}).get("device")
            if arm == "standard":
                base_wall, base_machine = wall, machine
            for key, m in res.metrics["eval"].items():
                rows.append({"arm": arm, "eval": key, "seed": seed, "heads": res.config.heads,
                             "lambda_div": res.config.lambda_div, "lambda_adv": res.config.lambda_adv,
                             **{k: m[k] for k in METRICS}, "train_s": wall,
                             "cost_ratio": machine_ratio(wall, base_wall, machine, base_machine),
                             "train_machine": machine, "run": res.run_dir.name})
    table = summarise(rows, ("arm", "eval"), (*METRICS, "cost_ratio"))
    payload = {"selection": selection, "rows": rows, "table": table, "attack_check": check,
               "claims": headline_claims(rows, study, selection, check), "runs": _runs(results)}
    return save(study, "01_headline", payload, t0)


def k_ablation(study: Study, log: Callable[[str], None] = print) -> dict[str, Any]:
    """DT with K in ``study.ks`` at the best validated setting *with* the diversity term (without
    it, K has nothing to act through): fooling rate and clean accuracy (ensemble and single head),
    step time and training memory against K; and the grid."""
    t0 = time.perf_counter()
    selection = select_dt(study, log)
    best = {**selection["best_div"], **selection["attacker"]}
    check = attack_check(study, checked_seeds(study, [({"arm": f"K={k}", "heads": k}, dict(method="dt", heads=k, **best))
                                                      for k in study.ks], study.seeds[:study.k_seeds], log), log)
    rows, results = [], []
    for seed in study.seeds[:study.k_seeds]:
        for k in study.ks:
            res = study.run(log, method="dt", heads=k, seed=seed, **best,
                            **suite_for(study, check, {"arm": f"K={k}", "seed": seed}))
            results.append(res)
            for key, m in res.metrics["eval"].items():
                rows.append({"heads": k, "eval": "ensemble" if key == "ensemble" else "single", "seed": seed,
                             **{x: m[x] for x in METRICS}, "run": res.run_dir.name})
    cases = {f"dt_k{k}": dict(method="dt", heads=k, **best) for k in study.ks}
    cases["standard"] = dict(method="standard", heads=1)
    bench = time_training_steps(study, cases)
    table = summarise(rows, ("heads", "eval"), METRICS)
    for row in table:
        b = bench[f"dt_k{row['heads']}"]
        row["step_ratio"] = b["median_s"] / bench["standard"]["median_s"]
        row["train_memory_mb"] = b["memory"].get("cuda_peak_mb", b["memory"]["peak_mb"])
    ens = {r["heads"]: r for r in table if r["eval"] == "ensemble" or r["heads"] == 1}
    payload = {"selection": selection, "rows": rows, "table": table, "bench": bench, "attack_check": check,
               "claims": k_claims(ens, rows, study, check), "runs": _runs(results)}
    return save(study, "02_k_ablation", payload, t0)


def time_training_steps(study: Study, cases: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``measure.training_steps`` for ``cases`` on the first training images, as many as one pass needs."""
    split = bench_split(study.config, study.config.batch_size * (study.bench_steps + study.bench_warmup + 1))
    return training_steps(study.config, split, cases, steps=study.bench_steps, warmup=study.bench_warmup)


CROSS_ARMS = ("standard", "uat", "pgd_at", "dt_best", "dt_div")


def cross_norm(study: Study, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Models trained against L-inf UAPs (or none), evaluated under L2 and L-inf UAPs over a range
    of radii, each UAP fitted against the model's default inference mode (DT: the ensemble). The
    L-inf point at the study's eval_eps is the headline's own evaluation (and check), read from the
    run cache rather than fitted again."""
    t0 = time.perf_counter()
    selection = select_dt(study, log)
    models = []
    for seed in study.seeds[:study.ablation_seeds]:
        for arm in dict.fromkeys(CROSS_ARMS):
            for norm, radii in (("linf", study.linf_radii), ("l2", study.l2_radii)):
                for r in radii:
                    o = dict(seed=seed, eval_norm=norm, eval_eps=r, **arms(selection)[arm])
                    if norm == "linf" and math.isclose(r, study.eval_eps):
                        o["eval_eps"] = study.eval_eps  # the headline's evaluation, shared
                    else:
                        o["eval_modes"] = "ensemble"
                    models.append(({"arm": arm, "norm": norm, "radius": r, "seed": seed}, o))
    check = attack_check(study, checked(study, models, lambda tags: tags["seed"] == study.seeds[0], log), log)
    rows, results = [], []
    for tags, o in models:
        res = study.run(log, **o, **suite_for(study, check, tags))
        results.append(res)
        key = "ensemble" if res.config.heads > 1 else f"head{res.config.eval_head}"
        m = res.metrics["eval"][key]
        rows.append({**tags, "eval": key, **{x: m[x] for x in METRICS}, "run": res.run_dir.name})
    table = summarise(rows, ("arm", "norm", "radius"), METRICS)
    # the headline's evaluation scores every mode; this experiment reports the default one
    scored = {(r["arm"], r["norm"], r["radius"], r["eval"]) for r in rows}
    check = [c for c in check if (c["arm"], c["norm"], c["radius"], c["eval"]) in scored]
    payload = {"selection": selection, "rows": rows, "table": table, "attack_check": check,
               "claims": cross_claims(rows, study, check), "runs": _runs(results)}
    return save(study, "03_cross_norm", payload, t0)


def transfer(study: Study, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Each source model's white-box UAP (fitted against its default inference mode) applied to
    every target model: transfer success = the target's fooling rate (docs/protocol.md section 3)."""
    t0 = time.perf_counter()
    selection = select_dt(study, log)
    seed = study.seeds[0]
    models: dict[str, dict[str, Any]] = {}
    for bb in study.transfer_backbones:
        wanted = ("standard", "dt_div", "uat", "pgd_at") if bb == study.config.backbone else ("standard", "dt_div")
        for arm in wanted:
            models[f"{bb}/{arm}"] = {"backbone": bb, **arms(selection)[arm]}
    device = resolve_device(study.config.device)
    dtype = amp_dtype(study.config.precision, device)
    _, _, test = load_data(study.config)
    test = scored_subset(test, study.config.eval_size).to(device)
    check = attack_check(study, [({"arm": name, "seed": seed}, {**o, "seed": seed}) for name, o in models.items()], log)
    loaded, uaps, own, keys, results = {}, {}, {}, {}, []
    for name, o in models.items():
        # each model's own UAPs and figures from the suite its check settled on
        res = study.run(log, seed=seed, **o, **suite_for(study, check, {"arm": name, "seed": seed}))
        results.append(res)
        model, cfg = load_model(res.run_dir, device)
        mode = "ensemble" if cfg.heads > 1 else "single"
        loaded[name] = (lambda x, model=model, mode=mode: model.scores(x, mode))
        keys[name] = key = "ensemble" if cfg.heads > 1 else f"head{cfg.eval_head}"
        uaps[name], own[name] = load_uaps(res.run_dir, res.config, device)[key], res.metrics["eval"][key]
    clean = {t: predict(fn, test.x, amp_dtype=dtype) for t, fn in loaded.items()}
    rows = []
    for s, delta in uaps.items():
        for t, fn in loaded.items():
            adv = predict(fn, test.x, delta=delta, amp_dtype=dtype)
            rows.append({"source": s, "target": t, "fooling_rate": fooling_rate(clean[t], adv),
                         "uap_acc": accuracy(adv, test.y), "white_box": s == t})
    check = beaten_by_transfer(check, rows, keys)
    payload = {"selection": selection, "models": models, "rows": rows, "table": rows, "reported": reported(rows, own),
               "attack_check": check, "claims": transfer_claims(rows, study, check), "runs": _runs(results)}
    return save(study, "04_transfer", payload, t0)


def beaten_by_transfer(check: list[dict[str, Any]], rows: list[dict[str, Any]],
                       keys: dict[str, str]) -> list[dict[str, Any]]:
    """The check rows of the transfer matrix's models, each also marked unconverged when another
    model's UAP fools it more, or leaves it less accurate, than its own suite by more than
    MIN_NOISE: a white-box attack that transfer beats has not found the model's weakest direction."""
    out = []
    for c in check:
        moved = [r for r in rows if r["target"] == c["arm"] and r["source"] != c["arm"] and keys[c["arm"]] == c["eval"]]
        beat = sorted(r["source"] for r in moved if r["fooling_rate"] > c["fooling_rate"] + MIN_NOISE
                      or r["uap_acc"] < c["uap_acc"] - MIN_NOISE)
        out.append({**c, "beaten_by_transfer": beat, "converged": c["converged"] and not beat})
    return out


def reported(rows: list[dict[str, Any]], own: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each model's reported white-box numbers with the other models' UAPs as candidates of its
    suite: the fooling rate is the maximum, the accuracy under UAP the minimum, of its own suite's
    (``own``, its metrics) and every transferred UAP's on it, with the entry that won."""
    out = []
    for t, m in own.items():
        moved = [(r["source"], r) for r in rows if r["target"] == t and r["source"] != t]
        fool = max([(m["fooling_rate"], m["fooling_by"]), *((r["fooling_rate"], f"transfer:{s}") for s, r in moved)])
        acc = min([(m["uap_acc"], m["uap_acc_by"]), *((r["uap_acc"], f"transfer:{s}") for s, r in moved)])
        out.append({"target": t, "suite_fooling_rate": m["fooling_rate"], "fooling_rate": fool[0], "fooling_by": fool[1],
                    "suite_uap_acc": m["uap_acc"], "uap_acc": acc[0], "uap_acc_by": acc[1]})
    return out


def cost(study: Study, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Per-step training time of each method over standard's, and inference latency of DT's single
    head and ensemble over a plain one-head model, measured in one process (docs/protocol.md section 3)."""
    t0 = time.perf_counter()
    selection = select_dt(study, log)
    a = arms(selection)
    cases = {"standard": a["standard"], "dt_k5": a["dt_div"], "pgd_at": a["pgd_at"], "uat": a["uat"]}
    steps = time_training_steps(study, cases)
    infer = inference_latency(study.config, {"plain": dict(heads=1, mode="single"),
                                             "single_head_k5": dict(heads=5, mode="single"),
                                             "ensemble_k5": dict(heads=5, mode="ensemble")},
                              steps=2 * study.bench_steps, warmup=study.bench_warmup)
    table = [{"kind": kind, "case": k, "median_ms": 1e3 * v["median_s"], "ratio": v["ratio"],
              "ratio_q1": v["ratio_quartiles"][0], "ratio_q3": v["ratio_quartiles"][1]}
             for kind, part in (("train step", steps), ("inference", infer)) for k, v in part.items()]
    claims = cost_claims({row["case"]: row["ratio"] for row in table}, study)
    payload = {"selection": selection, "train_steps": steps, "inference": infer, "table": table, "claims": claims}
    return save(study, "05_cost", payload, t0)
