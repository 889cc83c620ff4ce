"""The results of a search: trials from Keras Tuner's files, the Pareto front, its recipes and plot.

Everything here reads the search directory only, so the chief of a distributed search (or a
later ``--resume``) rebuilds the same outputs from the same files.
"""
import csv
import json
import os
from io import StringIO

import matplotlib
import yaml
from rich.console import Console
from rich.table import Table

from qpelican.config.recipe import recipe_from_dict
from qpelican.config.search import COST_AXES, DEFAULT_COST_AXIS, TENSORS
from qpelican.core.errors import QpelicanError
from qpelican.core.formats import quantizer_string
from qpelican.core.io import atomic_path, write_json, write_text
from qpelican.tune.space import variant, widths_label

matplotlib.use("Agg")  # files only, never a window; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402


def collect_trials(out_dir):
    """One row per trial of the search in ``out_dir`` (from Keras Tuner's trial.json files, which
    the chief holds in distributed mode, plus the worker-side qpelican.json where present)."""
    project = os.path.join(os.fspath(out_dir), "kt")
    with open(os.path.join(out_dir, "tune.json")) as f:
        settings = json.load(f)
    base = recipe_from_dict(settings["recipe"], source=f"{out_dir}/tune.json")
    space = settings["space"]
    space["tensors"] = {t: (None if v is None else dict(v, bits=tuple(v["bits"]), integer=tuple(v["integer"])))
                        for t, v in space["tensors"].items()}
    rows = []
    names = sorted(n for n in os.listdir(project) if n.startswith("trial_")) if os.path.isdir(project) else []
    for name in names:
        tpath = os.path.join(project, name, "trial.json")
        if not os.path.exists(tpath):
            continue
        with open(tpath) as f:
            tj = json.load(f)
        metrics = {}
        for mname, m in (tj.get("metrics", {}).get("metrics", {}) or {}).items():
            obs = m.get("observations") or []
            if obs:
                v = obs[-1]["value"]
                metrics[mname] = v[0] if isinstance(v, list) else v
        values = tj.get("hyperparameters", {}).get("values", {})
        _, widths = variant(base, space, values)
        extra = {}
        qpath = os.path.join(project, name, "qpelican.json")
        if os.path.exists(qpath):
            with open(qpath) as f:
                extra = json.load(f)
        status = tj.get("status", "").lower()
        if status == "completed" and metrics.get("over_budget"):
            status = "over_budget"
        row = {"trial_id": tj["trial_id"], "status": status, "tuner_id": extra.get("tuner_id"),
               "score": tj.get("score"), "widths": widths, "hyperparameters": values}
        for k in ("val_auc", "val_accuracy", "val_rej30", "val_rej50", "test_auc", "test_accuracy", "test_rej30",
                  "test_rej50", "bops", "cost", "dsps", "n_params", "seconds"):
            row[k] = metrics.get(k)
        if row["cost"] is None:  # trials of searches from before the cost axis: BOPs
            row["cost"] = row["bops"]
        for k in ("bops", "cost", "dsps"):
            if row[k] is not None:
                row[k] = int(row[k])
        if row["n_params"] is not None:
            row["n_params"] = int(row["n_params"])
        row["channels"] = values.get("channels", extra.get("channels"))
        row["n_constituents"] = values.get("n_constituents", extra.get("n_constituents"))
        row["epochs"] = values.get("tuner/epochs", settings["epochs"])
        row["quantization"] = {t: (quantizer_string(space["tensors"][t]["kind"], w[0], w[1],
                                                    space["tensors"][t]["signed"])
                                   if space["tensors"][t] and w else getattr(base.quantization, t) or "float")
                               for t, w in widths.items()}
        row["message"] = (tj.get("message") or "").strip().splitlines()[-1:] or None
        rows.append(row)
    return settings, base, space, rows


def cost_axis(settings):
    """The search's cost axis ("bops" for searches written before the LUT axis existed)."""
    return settings.get("cost", DEFAULT_COST_AXIS)


def cost_text(settings, value):
    """A cost with its unit, e.g. ``6,751,395 BOPs``."""
    return f"{value:,} {COST_AXES[cost_axis(settings)][0]}"


def pareto_front(rows, key="cost"):
    """Trained trials not dominated in (val AUC higher, cost ``key`` lower), sorted by cost."""
    ok = [r for r in rows if r["status"] == "completed" and r.get("val_auc") is not None and r.get(key)]
    ok.sort(key=lambda r: (r[key], -r["val_auc"]))
    front, best = [], -1.0
    for r in ok:
        if r["val_auc"] > best:
            front.append(r)
            best = r["val_auc"]
    return front


def write_outputs(out_dir, log=print):
    """trials.json/csv, pareto.json, pareto.png, pareto/point_<k>.yaml; print the front; return a summary."""
    out_dir = os.fspath(out_dir)
    settings, base, space, rows = collect_trials(out_dir)
    write_json(os.path.join(out_dir, "trials.json"), rows)
    _write_csv(os.path.join(out_dir, "trials.csv"), rows)
    front = pareto_front(rows)
    pdir = os.path.join(out_dir, "pareto")
    os.makedirs(pdir, exist_ok=True)
    for name in os.listdir(pdir):
        if name.startswith("point_") and name.endswith(".yaml"):  # also point_<k>_finetune.yaml
            os.remove(os.path.join(pdir, name))
    points = []
    for k, r in enumerate(front):
        rec, _ = variant(base, space, r["hyperparameters"], epochs=settings["recipe_epochs"],
                         name=f"{settings['recipe_name'] or 'recipe'}_pareto{k}")
        d = rec.to_dict()
        d["seeds"] = base.seeds
        for sec in ("data", "model"):  # compact: unset keys take their defaults
            d[sec] = {k: v for k, v in d[sec].items() if v is not None}
        d["description"] = (f"qpelican tune point {k} (trial {r['trial_id']}): val AUC {r['val_auc']:.4f}, "
                            f"test AUC {r['test_auc']:.4f}, {cost_text(settings, r['cost'])}, "
                            f"searched with {r['epochs']} epochs per trial")
        path = os.path.join(pdir, f"point_{k}.yaml")
        write_text(path, yaml.safe_dump(d, sort_keys=False))
        point = dict(r, point=k, recipe=os.path.relpath(path, out_dir))
        t = base.training
        pre_dir = os.path.join(settings.get("out_dir") or os.path.abspath(out_dir), "pretrain",
                               f"c{r.get('channels') or rec.resolved_model_config()['channels']}")
        if t.qat == "finetune" and t.pretrain_epochs > 0 and not t.init_from and os.path.isdir(pre_dir):
            # the trial's own path: QAT fine-tuning of the search's shared float pre-training
            d2 = dict(d, name=d["name"] + "_finetune", training=dict(d["training"], pretrain_epochs=0,
                                                                     init_from=pre_dir))
            d2["description"] = d["description"] + f"; fine-tunes the search's float pre-training {pre_dir}"
            path2 = os.path.join(pdir, f"point_{k}_finetune.yaml")
            write_text(path2, yaml.safe_dump(d2, sort_keys=False))
            point["recipe_finetune"] = os.path.relpath(path2, out_dir)
        retrained = retrained_figures(out_dir, r["trial_id"])
        if retrained:
            point["retrain"] = retrained
        points.append(point)
    counts = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    axis = cost_axis(settings)
    summary = {"recipe": settings["recipe_name"], "recipe_bops": settings["recipe_bops"], "cost": axis,
               "cost_unit": COST_AXES[axis][0], "cost_source": COST_AXES[axis][1],
               "recipe_cost": settings.get("recipe_cost", settings["recipe_bops"]),
               "max_cost": settings["max_cost"], "cost_weight": settings["cost_weight"],
               "oracle": settings["oracle"], "epochs_per_trial": settings["epochs"], "trials": counts,
               "objective": f"score = val_auc - cost_weight * log2({axis} / recipe {axis}) within budget; "
                            f"-1 - log2({axis} / max_cost) over budget (not trained)",
               "float_reference": _float_references(out_dir), "front": points}
    write_json(os.path.join(out_dir, "pareto.json"), summary)
    _plot(os.path.join(out_dir, "pareto.png"), rows, front, settings, summary["float_reference"])
    log(format_front(summary))
    log(f"written {out_dir}/trials.csv, trials.json, pareto.json, pareto.png and {len(points)} recipe(s) in "
        f"{pdir}/ (retrain the front with 5 seeds each: add --resume --retrain-seeds 5 to the tune command)")
    if not front:
        failed = [r for r in rows if r["status"] == "failed"]
        if failed and len(failed) == len(rows):
            raise QpelicanError(f"all {len(rows)} trials failed; last error: {failed[-1]['message']}")
    return summary


RETRAIN_METRICS = ("auc", "rej30", "rej50", "accuracy")


def retrain_dir(out_dir, trial_id):
    """Run directory of a front point retrained with K seeds (qpelican.tune.retrain)."""
    return os.path.join(os.fspath(out_dir), "retrain", f"trial_{trial_id}")


def retrained_figures(out_dir, trial_id):
    """{seeds, epochs, run, auc: {mean, std, best}, ...} of a retrained point, or None."""
    run = retrain_dir(out_dir, trial_id)
    path = os.path.join(run, "results.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        res = json.load(f)
    ss = res.get("seeds_summary")
    out = {"seeds": len(res.get("seeds") or []) or 1, "epochs": (res.get("timing") or {}).get("epochs_per_seed"),
           "best_seed": res.get("seed"), "selection": "best = lowest validation loss",
           "run": os.path.relpath(run, out_dir)}
    for k in RETRAIN_METRICS:
        out[k] = (dict(ss[k]) if ss else {"mean": res.get(k), "std": 0.0, "best": res.get(k)})
    return out


def _retrain_label(rt):
    if not rt:
        return "-"

    def num(x, fmt):
        return "-" if x is None else format(x, fmt)

    auc, rej = rt["auc"], rt["rej30"]
    return (f"{num(auc['mean'], '.4f')} ± {num(auc['std'], '.4f')} ({num(auc['best'], '.4f')}); "
            f"{num(rej['mean'], '.1f')} ± {num(rej['std'], '.1f')}  [{rt['seeds']} seeds]")


def _float_references(out_dir):
    refs = []
    pdir = os.path.join(out_dir, "pretrain")
    for name in sorted(os.listdir(pdir)) if os.path.isdir(pdir) else []:
        p = os.path.join(pdir, name, "reference.json")
        if os.path.exists(p):
            with open(p) as f:
                r = json.load(f)
            r.pop("recipe", None)
            refs.append(r)
    return refs


def format_front(summary):
    unit = summary.get("cost_unit", "BOPs")
    t = Table(title=f"Pareto front: validation AUC vs {unit} ({summary['recipe']}, recipe as written: "
                    f"{summary.get('recipe_cost', summary['recipe_bops']):,} {unit})")
    retrained = any(p.get("retrain") for p in summary["front"])
    cols = ["k", "trial", unit, "val AUC", "test AUC", "val 1/eps_B@0.3", "widths (bits,integer)"]
    if retrained:
        cols.append("retrained: test AUC mean ± std (best); 1/eps_B@0.3 mean ± std")
    for c in cols:
        t.add_column(c)
    for p in summary["front"]:
        cells = [str(p["point"]), str(p["trial_id"]), f"{p['cost']:,}", f"{p['val_auc']:.4f}",
                 f"{p['test_auc']:.4f}", f"{p['val_rej30']:.1f}",
                 widths_label(p["widths"]) + (f" C={p['channels']}" if p.get("channels") else "")
                 + (f" N={p['n_constituents']}" if p.get("n_constituents") else "")]
        if retrained:
            cells.append(_retrain_label(p.get("retrain")))
        t.add_row(*cells)
    buf = StringIO()
    Console(file=buf, width=160, highlight=False).print(t)
    for r in summary.get("float_reference") or []:
        buf.write(f"float reference (shared pre-training, C={r['channels']}, {r['epochs']} epochs): "
                  f"val AUC {r['val_auc']:.4f}, test AUC {r['test_auc']:.4f}, {r['bops']:,} BOPs\n")
    return buf.getvalue().rstrip()


CSV_COLUMNS = ("trial_id", "status", "tuner_id", "score", "val_auc", "val_accuracy", "val_rej30", "val_rej50",
               "test_auc", "test_accuracy", "test_rej30", "test_rej50", "cost", "bops", "dsps", "n_params", "channels",
               "n_constituents", "epochs", "seconds")


def _write_csv(path, rows):
    buf = StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(list(CSV_COLUMNS) + [f"{t}_{k}" for t in TENSORS for k in ("bits", "integer")])
    for r in rows:
        w.writerow([r.get(c) for c in CSV_COLUMNS]
                   + [(r["widths"][t] or [None, None])[j] for t in TENSORS for j in (0, 1)])
    write_text(path, buf.getvalue())


def _plot(path, rows, front, settings, refs=()):
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    done = [r for r in rows if r["status"] == "completed" and r.get("val_auc") is not None]
    if done:
        ax.scatter([r["cost"] for r in done], [r["val_auc"] for r in done], s=16, c="0.6", label="trials")
    if front:
        xs = [r["cost"] for r in front]
        ys = [r["val_auc"] for r in front]
        ax.step(xs, ys, where="post", c="C3", lw=1)
        ax.scatter(xs, ys, s=30, c="C3", label="Pareto front", zorder=3)
        for r in front:
            ax.annotate(str(front.index(r)), (r["cost"], r["val_auc"]), fontsize=7, xytext=(3, -9),
                        textcoords="offset points")
    ax.axvline(settings.get("recipe_cost", settings["recipe_bops"]), c="C0", ls=":", lw=1, label="recipe as written")
    for r in refs:
        ax.axhline(r["val_auc"], c="C2", ls="-.", lw=1, label=f"float C={r['channels']} (pre-training)")
    if settings.get("max_cost"):
        ax.axvline(settings["max_cost"], c="k", ls="--", lw=1, label="--max-cost")
    ax.set_xscale("log")
    ax.set_xlabel(f"{COST_AXES[cost_axis(settings)][0]}: {COST_AXES[cost_axis(settings)][1]}")
    ax.set_ylabel("validation AUC")
    ax.set_title(f"qpelican tune: {settings['recipe_name']} ({settings['oracle']}, {settings['epochs']} epochs/trial)",
                 fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120, format="png")
    finally:
        plt.close(fig)
