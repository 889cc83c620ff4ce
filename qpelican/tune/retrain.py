"""Retrain the Pareto front of a search with K seeds, so a chosen point's AUC comes with its spread.

A search scores every trial with one training (one seed, ``--epochs`` per trial); the AUC of a
point then mixes the widths' merit with the luck of that one initialisation. ``retrain_front``
trains each front point's recipe (``pareto/point_<k>.yaml``: the recipe's own epochs) with K
seeds -- as ``qpelican fit --seeds K`` does -- into ``<tune dir>/retrain/trial_<id>/`` and
:func:`qpelican.tune.front.write_outputs` adds the figures to ``pareto.json`` as each point's
``retrain``: test AUC, 1/eps_B at eps_S = 0.3 and 0.5 and accuracy as {mean, std, best} over the
seeds (best = the seed with the lowest validation loss, as in ``fit``).
"""
import json
import os

from qpelican.config.recipe import load_recipe
from qpelican.core.errors import QpelicanError
from qpelican.training.train import fit_recipe
from qpelican.tune.front import retrain_dir, write_outputs


def retrain_front(out_dir, seeds=5, epochs=None, points=None, log=print, progress=False):
    """Train the front points of the search in ``out_dir`` with ``seeds`` seeds each; return the
    updated summary of :func:`write_outputs`.

    ``epochs`` overrides the points' epochs (default: the recipe's); ``points`` the point
    indices to retrain (default: all). An interrupted retraining resumes its finished seeds when
    called again with the same arguments.
    """
    out_dir = os.fspath(out_dir)
    path = os.path.join(out_dir, "pareto.json")
    if not os.path.exists(path):
        raise QpelicanError(f"{out_dir}: no pareto.json; run the search first (qpelican tune RECIPE --out {out_dir})")
    if seeds < 1:
        raise QpelicanError("--retrain-seeds must be at least 1.")
    with open(path) as f:
        front = json.load(f)["front"]
    chosen = front if points is None else [p for p in front if p["point"] in set(points)]
    missing = sorted(set(points or ()) - {p["point"] for p in front})
    if missing:
        raise QpelicanError(f"no Pareto point {missing} in {out_dir}/pareto.json (points 0..{len(front) - 1})")
    for p in chosen:
        rec = load_recipe(os.path.join(out_dir, p["recipe"])).with_overrides(seeds=seeds, epochs=epochs)
        run = retrain_dir(out_dir, p["trial_id"])
        log(f"retraining Pareto point {p['point']} (trial {p['trial_id']}, {p['bops']:,} BOPs) with {seeds} seeds, "
            f"{rec.training.epochs} epochs -> {run}")
        fit_recipe(rec, run, resume=True, progress=progress, log=log)
    return write_outputs(out_dir, log=log)
