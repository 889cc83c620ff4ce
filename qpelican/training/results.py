"""Run results: results.json, the ROC curve PNG and the seeds summary (mean +- std, best).

``RUN/results.json`` keys (the contract other commands read):

    recipe, accuracy, auc, rej30, rej50, loss        test metrics of the best seed
    val_loss, best_epoch, seed                       the best seed (lowest validation loss)
    n_params, n_params_all, bops, cost               paper parameter count, all trainable, cost model
    timing                                           train seconds, jets/s, seconds/epoch (summed over seeds)
    baseline                                         jet-mass likelihood ratio on the same test jets
    baseline_window                                  classic top-mass window on the same test jets
    data                                             where the jets came from and how many
    quantized, quantization                          the quantizers of the recipe
    seeds                                            list of the seeds' metrics
    seeds_summary                                    (K > 1) {metric: {mean, std, best}}, best_seed

Metrics: accuracy (logit > 0), ROC AUC, background rejection 1/eps_B at eps_S = 0.3 (rej30) and
0.5 (rej50), binary cross-entropy (loss).
"""
from __future__ import annotations

import os
import time

import matplotlib
import numpy as np
from sklearn.metrics import roc_auc_score

from qpelican.core.errors import DataError
from qpelican.core.io import atomic_path, run_model_path, write_json
from qpelican.core.metrics import logit_metrics, roc_curve, roc_metrics
from qpelican.data.baseline import MassWindow
from qpelican.data.l1 import input_mass, open_input_dataset
from qpelican.data.readers import evaluation_file
from qpelican.nn.models import model_constituents, model_format, predict
from qpelican.nn.serialize import load_model
from qpelican.training.checkpoint import save_model

matplotlib.use("Agg")  # files only, never a window; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402

SUMMARY_KEYS = ("accuracy", "auc", "rej30", "rej50", "loss", "val_loss")


# results.json key, MassWindow method, legend: the likelihood ratio is the best any function of the
# jet mass can do; the window is the classic top-mass cut. See qpelican.data.baseline.
MASS_BASELINES = (("baseline", "likelihood", "jet-mass likelihood ratio"),
                  ("baseline_window", "window", "top-mass window"))


def mass_baselines(splits):
    """Jet-mass baselines fitted on the training jets and scored on the test jets, each fitted once:
    {results key: (roc_metrics + method, test scores)} in MASS_BASELINES order."""

    # the mass of the same N constituents the model sees (on the L1 grid with data.format: l1)
    m_train, m_test = input_mass(splits.train[0]), input_mass(splits.test[0])
    out = {}
    for key, method, _ in MASS_BASELINES:
        mw = MassWindow(method).fit(labels=splits.train[1], masses=m_train)
        scores = mw.score(masses=m_test)
        metrics = roc_metrics(splits.test[1], scores, threshold=0.0)
        metrics["method"] = mw.describe()
        out[key] = (metrics, scores)
    return out


def _finite(x):
    return x if x is None or np.isfinite(x) else None


def seeds_summary(per_seed, best_seed):
    """{metric: {mean, std, best}} over seeds (std with ddof=0 as numpy; inf rejections skipped)."""
    out = {}
    best = next(m for m in per_seed if m["seed"] == best_seed)
    for k in SUMMARY_KEYS:
        vals = np.array([m[k] for m in per_seed if m.get(k) is not None and np.isfinite(m[k])], np.float64)
        out[k] = {"mean": float(vals.mean()) if vals.size else None,
                  "std": float(vals.std()) if vals.size else None,
                  "best": best.get(k)}
    out["best_seed"] = best_seed
    out["n_seeds"] = len(per_seed)
    out["selection"] = "best = lowest validation loss"
    return out


def write_run_results(out_dir, recipe, splits, per_seed, best, baselines):
    """Write RUN/model.keras (best seed), RUN/results.json and RUN/roc.png; return the results dict.

    baselines: ``mass_baselines(splits)``."""
    model, bm = best
    save_model(model, os.path.join(out_dir, "model.keras"))
    results = {"recipe": recipe.name}
    for k in ("accuracy", "auc", "rej30", "rej50", "loss", "val_loss", "best_epoch", "seed", "n_params",
              "n_params_all", "bops", "cost", "test_jets"):
        results[k] = bm.get(k)
    tr = sum(m["timing"]["train_seconds"] for m in per_seed)
    epochs = sum(m["timing"]["epochs"] for m in per_seed)
    n_train = bm["timing"]["train_jets"]
    results["timing"] = {"train_seconds": round(tr, 3), "seeds": len(per_seed), "epochs_per_seed": bm["epochs"],
                         "train_jets": n_train,
                         "jets_per_second": round(n_train * epochs / tr, 1) if tr else None,
                         "seconds_per_epoch": round(tr / epochs, 3) if epochs else None}
    for key, (metrics, _) in baselines.items():
        results[key] = metrics
    results["data"] = splits.description
    results["quantized"] = recipe.quantized
    results["quantization"] = recipe.to_dict()["quantization"]
    results["seeds"] = [{k: v for k, v in m.items() if k not in ("cost", "baseline")} for m in per_seed]
    if len(per_seed) > 1:
        results["seeds_summary"] = seeds_summary(per_seed, bm["seed"])
    for k in ("rej30", "rej50"):
        results[k] = _finite(results[k])
    write_json(os.path.join(out_dir, "results.json"), results)
    logits = np.load(os.path.join(out_dir, "seeds", str(bm["seed"]), "test_logits.npy"))
    curves = [(f"{recipe.name} (seed {bm['seed']})", logits)]
    curves += [(name, baselines[key][1]) for key, _, name in MASS_BASELINES]
    plot_roc(os.path.join(out_dir, "roc.png"), splits.test[1], curves)
    return results


def plot_roc(path, y, curves):
    """ROC as background rejection 1/eps_B vs signal efficiency eps_S (log scale) of each
    (label, test scores) in ``curves`` on the test labels ``y``."""
    fig, ax = plt.subplots(figsize=(5.5, 4.2), dpi=120)
    for name, s in curves:
        fpr, tpr = roc_curve(y, s)
        ok = fpr > 0
        ax.plot(tpr[ok], 1.0 / fpr[ok], label=f"{name}: AUC {roc_auc_score(y, s):.4f}")
    ax.set_yscale("log")
    ax.set_xlabel(r"signal efficiency $\epsilon_S$")
    ax.set_ylabel(r"background rejection $1/\epsilon_B$")
    ax.set_xlim(0, 1)
    ax.axvline(0.3, color="grey", lw=0.5, ls=":")
    ax.axvline(0.5, color="grey", lw=0.5, ls=":")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title(f"test jets: {len(y)}", fontsize=9)
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)


def evaluate_run(run, data, out=None, jets=None):
    """`qpelican evaluate RUN DATA`: metrics of RUN/model.keras (or a .keras file) on a dataset.

    DATA: an HDF5 file, or a directory whose test split is used. ``jets`` evaluates the first K
    jets. Writes JSON (default ``RUN/evaluate_<data name>.json``) and returns (results, path).
    """
    run = os.fspath(run)
    model_path = run_model_path(run)
    src = evaluation_file(data)
    model = load_model(model_path)
    n = model_constituents(model)
    fmt = model_format(model)
    ds = open_input_dataset(src, n, fmt)
    stop = ds.n_jets if jets is None else min(int(jets), ds.n_jets)
    p4, y = ds.read(0, stop)
    if len(y) < 2 or len(np.unique(y)) < 2:
        raise DataError(f"{src}: {len(y)} jets with constituents in the rows read ({int(np.sum(y))} signal); "
                        "evaluating needs jets of both classes. Pass a test file with signal and background jets "
                        "(or raise --jets).")
    if out is not None and os.path.isdir(os.fspath(out)):
        raise DataError(f"--out {out} is a directory; give the JSON file to write, e.g. {os.path.join(out, 'evaluate.json')}.")
    t0 = time.perf_counter()
    logits = predict(model, p4)
    dt = time.perf_counter() - t0
    res = logit_metrics(y, logits)
    for k in ("rej30", "rej50"):
        res[k] = _finite(res[k])
    res.update(jets=int(len(y)), signal_fraction=float(np.mean(y)), model=model_path,
               data={"file": src, "n_constituents": n, "format": fmt}, inference_jets_per_second=round(len(y) / dt, 1))
    if fmt == "l1":
        res["l1_grid"] = dict(ds.counts.as_dict(), summary=ds.counts.describe())
    if out is None:
        base = os.path.splitext(os.path.basename(src))[0]
        parent = os.path.basename(os.path.dirname(os.path.abspath(src)))
        out = os.path.join(run if os.path.isdir(run) else os.path.dirname(os.path.abspath(run)),
                           f"evaluate_{parent}_{base}.json")
    write_json(os.fspath(out), res)
    return res, os.fspath(out)
