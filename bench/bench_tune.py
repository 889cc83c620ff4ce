"""Trial throughput of `qpelican tune`: trials/hour at a stated budget.

Runs a random search of T trials of a recipe (default recipes/c2_8bit.yaml, QAT from scratch so
every trial pays its full training) on N training jets with E epochs per trial, one process, and
reports trials/hour, seconds per trial (median) and the share of a trial spent training. The data
are loaded once (as `qpelican tune` does) and not counted.

    python bench/bench_tune.py --data /tmp/sim125k --jets 20000 --epochs 2 --trials 6
    python bench/bench_tune.py                       # simulated sample (cached), 5000 jets

Prints one JSON line (also written to --json if given).
"""
import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import qpelican  # noqa: F401  (tf-keras before TensorFlow)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default=os.path.join(os.path.dirname(__file__), "..", "recipes", "c2_8bit.yaml"))
    ap.add_argument("--data", default=None, help="dataset directory (default: the recipe's simulated sample)")
    ap.add_argument("--jets", type=int, default=5000, help="training jets (cap with --data, sample size without)")
    ap.add_argument("--val-jets", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=2, help="epochs per trial")
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--n-constituents", type=int, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from qpelican.config.recipe import load_recipe, recipe_from_dict
    from qpelican.training.train import load_splits
    from qpelican.tune.search import tune

    r = load_recipe(args.recipe)
    d = r.model_dump()
    d["training"].update(qat="from_scratch", pretrain_epochs=0)  # every trial trains in full
    d["data"].update(val_jets=args.val_jets, test_jets=args.val_jets)
    if args.n_constituents:
        d["data"]["n_constituents"] = args.n_constituents
    d.pop("search", None)
    r = recipe_from_dict(d, source="bench recipe").with_overrides(data=args.data, jets=args.jets)
    t0 = time.perf_counter()
    splits = load_splits(r, progress=False)
    t_load = time.perf_counter() - t0
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        tune(r, tmp, epochs=args.epochs, trials=args.trials, oracle="random", seed=0, log=lines.append,
             splits=splits)
        wall = time.perf_counter() - t0
        rows = json.load(open(os.path.join(tmp, "trials.json")))
    secs = [r_["seconds"] for r_ in rows if r_.get("seconds")]
    out = {
        "recipe": os.path.basename(args.recipe), "train_jets": splits.description["train_jets"],
        "val_jets": splits.description["val_jets"], "n_constituents": r.data.n_constituents,
        "epochs_per_trial": args.epochs, "trials": len(rows), "wall_seconds": round(wall, 1),
        "trials_per_hour": round(3600 * len(rows) / wall, 1),
        "median_trial_seconds": round(statistics.median(secs), 2) if secs else None,
        "data_load_seconds": round(t_load, 1),
        "best_val_auc": max((r_["val_auc"] or 0) for r_ in rows),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores", "note": "search overhead (oracle, cost, "
        "outputs) is included in wall_seconds; the per-trial seconds include training, validation and test",
    }
    print(json.dumps(out))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
