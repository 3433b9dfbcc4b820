"""Command line: ``python -m dtlib COMMAND [key=value ...]``.

  train key=value ...       train (or load) and evaluate one configuration, print its table; also
                            runs_dir=PATH (default runs) and evaluate=false (train only). Under torchrun
                            (torchrun --standalone --nproc-per-node=N -m dtlib train ...) N processes train it
                            together (DDP) and rank 0 evaluates; nproc=N launches torchrun itself
  evaluate RUN_DIR [k=v]    re-evaluate a finished run (evaluation fields may be overridden)
  study [PROFILE] [k=v]     the six study experiments without Jupyter (make reproduce runs the notebooks);
                            k=v: Study or Config fields, as the notebooks' overrides (seeds=0,1,2)
  attack MODULE:FACTORY WEIGHTS [k=v]
                            the evaluation attack suite on your own model (FACTORY() maps images in [0, 1] to
                            logits; WEIGHTS its state dict); k=v: Config fields (data, eval_eps, uap_*, ...) and
                            out=PATH (default attack-<weights name>.json)
  export RESULTS.json ... [out=DIR] [runs_dir=DIR]
                            every arm and seed of the results files as weights-only safetensors files and an
                            index.json (default out: models/<profile>); dtlib.load_model(FILE) loads one
  download [DATA_DIR]       fetch CIFAR-10 with torchvision into DATA_DIR (default data)
  fields                    list every config field with its default and meaning
"""
from __future__ import annotations

import os
import sys
from dataclasses import fields

from . import figures, study
from .config import Config, key_values, parse_overrides, parse_setting
from .data import DataError, load_arrays
from .evaluate import attack_outside
from .distributed import launched
from .experiment import ensure_trained, evaluate_run, load_model, results_table, run, train_launched


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(__doc__)
        return 0
    cmd, args = argv[0], argv[1:]
    try:
        if cmd == "train":
            settings = key_values(args)
            runs_dir = settings.pop("runs_dir", "runs")
            evaluate = parse_setting("evaluate", settings.pop("evaluate", True), bool, "train option")
            if launched():  # the world size is torchrun's (sync_bn=true is refused at nproc=1)
                settings.setdefault("nproc", os.environ["WORLD_SIZE"])
            cfg = Config().replace(**settings)
            if launched():  # one of torchrun's processes
                res = train_launched(cfg, runs_dir=runs_dir, evaluate=evaluate)
            elif evaluate:
                res = run(cfg, runs_dir=runs_dir)
            else:
                res, where = None, ensure_trained(cfg, runs_dir=runs_dir)
                print(f"run directory: {where}")
            if res is not None:
                print(results_table([res]))
                print(f"run directory: {res.run_dir}")
        elif cmd == "evaluate":
            if not args:
                raise ValueError("evaluate needs a run directory: python -m dtlib evaluate runs/<hash>.")
            _, trained = load_model(args[0])
            res = evaluate_run(args[0], trained.replace(**parse_overrides(args[1:])))
            print(results_table([res]))
        elif cmd == "study":
            named = bool(args) and "=" not in args[0]  # `study cpu seeds=0,1` or just `study seeds=0,1`
            s = study.setup(args[0] if named else "cpu", key_values(args[1:] if named else args))
            for name, experiment in study.EXPERIMENTS.items():
                res = experiment(s)
                print(f"{name}: " + "; ".join(f"{c['claim']} {c['verdict']}" for c in res["claims"]))
            figures.regenerate(s.dir / "results", s.dir / "figures")
        elif cmd == "attack":
            if len(args) < 2:
                raise ValueError("attack needs a model and its weights: python -m dtlib attack package.module:factory "
                                 "weights.pt [key=value ...].")
            settings = key_values(args[2:])
            out = settings.pop("out", None)
            record = attack_outside(args[0], args[1], Config(eval_modes="single").replace(**settings), out)
            for key, row in record["eval"].items():
                print(f"{key}: clean {row['clean_acc']:.3f}, fooling {row['fooling_rate']:.3f} ({row['fooling_by']}), "
                      f"accuracy under UAP {row['uap_acc']:.3f} ({row['uap_acc_by']})")
        elif cmd == "export":
            files = [a for a in args if "=" not in a]
            settings = key_values([a for a in args if "=" in a])
            unknown = sorted(set(settings) - {"out", "runs_dir"})
            if not files or unknown:
                raise ValueError("export takes results files and out=, runs_dir= only: python -m dtlib export "
                                 "results/01_headline-study.json [out=models/study] [runs_dir=runs].")
            index = study.export_models(files, settings.get("out"), settings.get("runs_dir"))
            print(f"{len(index['models'])} models, {index['total_bytes'] / 1e6:.1f} MB")
        elif cmd == "download":
            load_arrays("full", args[0] if args else "data", download=True)
            print("CIFAR-10 is in place.")
        elif cmd == "fields":
            for f in fields(Config):
                print(f"{f.name:14s} {f.default!r:>22}  [{f.metadata['group']}] {f.metadata['doc']}")
        else:
            raise ValueError(f"Unknown command {cmd!r}; run `python -m dtlib --help` for the list.")
    except (ValueError, DataError, FileNotFoundError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    code = main()
    if launched():
        # A torchrun worker, its work done and saved: gloo's threads can still abort the interpreter's
        # shutdown (SIGABRT, "terminate called without an active exception"), failing a finished run.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
