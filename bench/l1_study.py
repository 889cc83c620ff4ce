"""The preliminary l1 vs p4 comparison of docs/l1.md: trained runs, scored on an independent sample.

    python bench/l1_study.py --runs DIR --train TRAIN.h5 --eval EVAL.h5 [--jets K] [--json OUT]

For every run directory under ``--runs`` (``qpelican fit`` output): the model's input format and N,
the metrics on its own test split (results.json), and AUC and 1/eps_B at eps_S = 0.3 on the first
``--jets`` jets of ``--eval`` (an independent sample), beside both jet-mass baselines of the same
N constituents in the same format (fitted on ``--train``, scored on ``--eval``). Prints a markdown
table (and writes the rows as JSON with ``--json``).
"""
import argparse
import json
import os

import numpy as np

import qpelican  # noqa: F401
from qpelican.core.metrics import logit_metrics, roc_metrics
from qpelican.data.baseline import MassWindow
from qpelican.data.l1 import input_mass, open_input_dataset
from qpelican.nn.models import model_constituents, model_format, predict
from qpelican.nn.serialize import load_model


def read(path, n, fmt, jets):
    ds = open_input_dataset(path, n, fmt)
    x, y = ds.read(0, min(jets, ds.n_jets))
    return x, y.astype(np.float32)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", required=True, help="folder of run directories")
    ap.add_argument("--train", required=True, help="training file of the runs (fits the mass baselines)")
    ap.add_argument("--eval", required=True, help="independent file to score on")
    ap.add_argument("--jets", type=int, default=50000)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    cache, rows = {}, []
    for name in sorted(os.listdir(args.runs)):
        run = os.path.join(args.runs, name)
        if not os.path.exists(os.path.join(run, "results.json")):
            continue
        with open(os.path.join(run, "results.json")) as f:
            res = json.load(f)
        model = load_model(os.path.join(run, "model.keras"))
        n, fmt = model_constituents(model), model_format(model)
        if (n, fmt) not in cache:
            xt, yt = read(args.train, n, fmt, args.jets)
            xe, ye = read(args.eval, n, fmt, args.jets)
            me = input_mass(xe)
            base = {}
            for method in ("likelihood", "window"):
                mw = MassWindow(method).fit(labels=yt, masses=input_mass(xt))
                base[method] = roc_metrics(ye, mw.score(masses=me), threshold=0.0)
            cache[n, fmt] = (xe, ye, base)
        xe, ye, base = cache[n, fmt]
        m = logit_metrics(ye, predict(model, xe))
        rows.append({"run": name, "format": fmt, "n": n, "quantized": res.get("quantized"),
                     "test_auc": res["auc"], "test_rej30": res["rej30"], "eval_jets": int(len(ye)),
                     "auc": m["auc"], "rej30": m["rej30"], "mass_auc": base["likelihood"]["auc"],
                     "mass_rej30": base["likelihood"]["rej30"], "window_auc": base["window"]["auc"],
                     "window_rej30": base["window"]["rej30"]})
    print("| run | format | N | own test AUC / 1/eps_B | independent AUC | 1/eps_B(0.3) | mass LR AUC / 1/eps_B | "
          "mass window AUC / 1/eps_B |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['format']} | {r['n']} | {r['test_auc']:.4f} / {r['test_rej30']:.1f} | {r['auc']:.4f} | "
              f"{r['rej30']:.1f} | {r['mass_auc']:.4f} / {r['mass_rej30']:.1f} | "
              f"{r['window_auc']:.4f} / {r['window_rej30']:.1f} |")
    if rows:
        print(f"independent sample: {rows[0]['eval_jets']} jets of {args.eval}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
