"""The preliminary l1 vs p4 comparison of docs/l1.md: trained runs, scored on an independent sample.

    python bench/l1_study.py --runs DIR --train TRAIN.h5 --eval EVAL.h5 [--jets K] [--json OUT]
    python bench/l1_study.py --costs

``--costs`` prints the cost model's figures (qpelican.hw.cost.model_cost) of the l1 recipes and of
the same models on 18-bit (E, px, py, pz) instead.

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


P4 = ["data.format=p4", "quantization.input=quantized_bits(18,12,alpha=1)",
      "quantization.invariants=quantized_bits(20,14,alpha=1)"]
COST_ROWS = [("l1_c2_16", "recipes/l1_c2_16.yaml", []), ("l1_c2_alpha_16", "recipes/l1_c2_alpha_16.yaml", []),
             ("l1_c2_32", "recipes/l1_c2_32.yaml", []), ("p4 N=16 (18-bit)", "recipes/l1_c2_16.yaml", P4),
             ("p4 N=32 (18-bit)", "recipes/l1_c2_32.yaml", P4), ("c2_8bit (p4 N=80)", "recipes/c2_8bit.yaml", [])] + [
    (f"l1 N={n}", "recipes/l1_c2_16.yaml", [f"data.n_constituents={n}"]) for n in (8, 12, 24)]


def costs():
    from qpelican.config.recipe import load_recipe
    from qpelican.hw.cost import model_cost
    from qpelican.hw.parts import DEFAULT_PART, part_resources
    from qpelican.nn.models import build_model

    part = part_resources(DEFAULT_PART)
    print(f"| recipe | multipliers | BOPs | DSP est. | LUT est. | % of a {DEFAULT_PART} (DSP / LUT) |")
    print("|---|---|---|---|---|---|")
    for name, path, sets in COST_ROWS:
        c = model_cost(build_model(load_recipe(path).with_overrides(sets=sets).to_model_config()))
        print(f"| {name} | {c['n_multipliers']:,} | {c['bops']:,} | {c['dsp_estimate']:,} | {c['lut_estimate']:,} | "
              f"{100 * c['dsp_estimate'] / part['dsp']:.1f} / {100 * c['lut_estimate'] / part['lut']:.1f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--costs", action="store_true", help="print the cost-model table of the l1 recipes and exit")
    ap.add_argument("--runs", help="folder of run directories")
    ap.add_argument("--train", help="training file of the runs (fits the mass baselines)")
    ap.add_argument("--eval", help="independent file to score on")
    ap.add_argument("--jets", type=int, default=50000)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.costs:
        return costs()
    if not (args.runs and args.train and args.eval):
        ap.error("--runs, --train and --eval are required (or --costs)")
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
