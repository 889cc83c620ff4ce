"""Training: one seed (:func:`train_one`) and a whole recipe over seeds (:func:`fit_recipe`).

Regime (the paper's; docs/training.md): AdamW (weight decay 0 by default), batch 512, binary
cross-entropy on the logit, the per-step LR schedule of :mod:`qpelican.training.schedule`, and the best
epoch selected by validation loss. Quantization-aware training runs from scratch (``qat:
from_scratch``) or after ``pretrain_epochs`` of float training of the same architecture (``qat:
finetune``: the float weights are copied into the quantized model, which then trains for
``training.epochs`` epochs with a fresh optimizer and schedule starting at
``finetune_learning_rate``). The best epoch is taken from the final (quantized) phase only, so the
saved model is always the recipe's (quantized) model.

Run directory of one seed (``<run>/seeds/<seed>/``)::

    state.json          commit point of the checkpoint: epochs done, phase, best-so-far, history,
                        timing, name of the checkpoint directory (written tmp + os.replace)
    ckpt-<epoch>/       tf.train.Checkpoint of model + optimizer (iterations included) of that epoch
    best.weights.h5     weights of the best epoch so far (tmp + os.replace)
    model.keras         final: the best model (loadable with qpelican.load_model)
    history.json        per-epoch history
    results.json        test metrics of the best model

Resuming (``resume=True``) restores model, optimizer and best-so-far from the last committed
checkpoint. The data order of epoch e is a pure function of (seed, e) and the dropout RNG is
reseeded from (seed, e) at the start of each epoch, so a resumed run ends with the same weights as
an uninterrupted one (tested).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time

import numpy as np
import tensorflow as tf
import yaml

from qpelican.config.model import DEFAULTS as MODEL_DEFAULTS
from qpelican.config.recipe import Recipe, load_recipe, recipe_from_dict
from qpelican.core.errors import QpelicanError
from qpelican.core.io import atomic_path, write_json, write_text
from qpelican.core.metrics import logit_metrics, monitor_metrics
from qpelican.hw.cost import model_cost
from qpelican.nn import fasttrain
from qpelican.nn.fold import FOLD_SAMPLE, transfer_weights
from qpelican.nn.models import count_parameters, predict
from qpelican.nn.serialize import load_model
from qpelican.training import checkpoint
from qpelican.training.results import mass_baselines, write_run_results
from qpelican.training.session import (build_training, init_from, phase_at, phases_of, prepare_threads, reseed,
                                       train_epoch, training_path)
from qpelican.training.splits import Splits, load_splits

__all__ = ["Splits", "load_splits", "predict", "train_one", "fit_recipe", "model_cost_or_none"]


def model_cost_or_none(model):
    """qpelican.hw.cost.model_cost(model), or {"error": ...} if the cost model cannot handle it."""
    try:
        return model_cost(model)
    except Exception as exc:  # full PELICAN etc.: report, do not fail a finished training
        return {"error": f"{type(exc).__name__}: {exc}"}


def _fmt_rate(x):
    return f"{x / 1000:.1f}k" if x >= 1000 else f"{x:.0f}"


# --------------------------------------------------------------------------------- train_one
class _Run:
    """What the epochs of one seed share: recipe, data on the device, phases, directory, log."""

    def __init__(self, recipe, splits, seed, out_dir, progress, log, label=None):
        self.recipe, self.splits, self.seed, self.out_dir = recipe, splits, seed, out_dir
        self.label = seed if label is None else label  # how the log names it
        self.progress, self.log = progress, log
        self.n_train = len(splits.train[1])
        self.batch_size = recipe.training.batch_size
        self.steps = math.ceil(self.n_train / self.batch_size)
        self.phases = phases_of(recipe)
        self.total_epochs = sum(p[2] for p in self.phases)
        self.p4_t = tf.constant(splits.train[0])
        self.y_t = tf.constant(splits.train[1])

    def build(self, pi):
        """(model, optimizer, checkpoint, XLA on) of phase ``pi``."""
        _, quantized, epochs, lr = self.phases[pi]
        return build_training(self.recipe, quantized, self.seed + 1000 * pi, self.steps, epochs, lr)

    def enter_phase(self, pi, state, prev):
        """The compiled model of phase ``pi``: restored from the checkpoint, started from
        ``training.init_from``, or from the previous phase's weights (float -> QAT)."""
        model, opt, ckpt, jit = self.build(pi)
        if state["checkpoint"] and state.get("phase_index") == pi:
            ckpt.read(checkpoint.checkpoint_path(self.out_dir, state)).assert_existing_objects_matched()
        elif pi == 0 and self.recipe.training.init_from:
            init_from(model, self.recipe.training.init_from, self.p4_t[:FOLD_SAMPLE].numpy())
        elif pi > 0:
            if prev is None:  # resumed just after the phase change: the float weights are in the checkpoint
                prev, _, pck, _ = self.build(pi - 1)
                pck.read(checkpoint.checkpoint_path(self.out_dir, state)).expect_partial()
            transfer_weights(prev, model, self.p4_t[:FOLD_SAMPLE].numpy())
        return model, opt, ckpt, jit

    def announce(self, pi, model, jit):
        pname, quantized, pepochs, plr = self.phases[pi]
        path = training_path(model)
        if path.startswith("model.fit"):
            path = f"XLA {'on' if jit else 'off'}"
        elif not fasttrain.kernels_ready(model):
            path = "kernels (compiling them first: a few minutes, once per installation)"
        self.log(f"seed {self.label}: phase {pname} ({'quantized' if quantized else 'float'}), {pepochs} epochs, "
                 f"{self.n_train} training jets, batch {self.batch_size}, lr {plr:g}, {path}")

    def train_epoch(self, model, opt, epoch, pname):
        """Train and validate one epoch; return (history row, seconds training, seconds validating)."""
        reseed(model, self.seed, epoch)
        t0 = time.perf_counter()
        loss = train_epoch(model, self.p4_t, self.y_t, self.n_train, self.batch_size, self.seed, epoch)
        t_train = time.perf_counter() - t0
        t1 = time.perf_counter()
        val = monitor_metrics(self.splits.val[1], predict(model, self.splits.val[0]))
        t_eval = time.perf_counter() - t1
        lr = float(opt.learning_rate.numpy()) if hasattr(opt.learning_rate, "numpy") else float(opt.learning_rate)
        row = {"epoch": epoch + 1, "phase": pname, "lr": lr, "loss": loss,
               "val_loss": val["loss"], "val_accuracy": val["accuracy"], "val_auc": val["auc"],
               "train_seconds": t_train, "jets_per_second": self.n_train / t_train}
        return row, t_train, t_eval

    def report_epoch(self, row, improved):
        self.log(f"seed {self.label} epoch {row['epoch']:>3}/{self.total_epochs} [{row['phase']}] lr {row['lr']:.2e}  "
                 f"loss {row['loss']:.4f}  val_loss {row['val_loss']:.4f} acc {row['val_accuracy']:.4f} "
                 f"auc {row['val_auc']:.4f}  {row['train_seconds']:.1f}s {_fmt_rate(row['jets_per_second'])} jets/s"
                 + ("  *best" if improved else ""))

    def finish(self, model, state, baseline):
        """The best model, its test metrics and the seed's files; returns (model, metrics)."""
        if model is None:  # resumed a run whose epochs were all done but results were not written
            model = self.build(len(self.phases) - 1)[0]
        best_path = os.path.join(self.out_dir, checkpoint.BEST)
        if not os.path.exists(best_path):
            raise QpelicanError(f"seed {self.seed}: validation loss was never finite (training diverged); lower the "
                                "learning rate or check the quantizer ranges.")
        model.load_weights(best_path)
        checkpoint.save_model(model, os.path.join(self.out_dir, "model.keras"))
        t2 = time.perf_counter()
        logits = predict(model, self.splits.test[0])
        metrics = logit_metrics(self.splits.test[1], logits)
        t_test = time.perf_counter() - t2
        cost = model_cost_or_none(model)
        history, train_s = state["history"], state["train_seconds"]
        metrics.update(
            seed=self.seed, best_epoch=state["best_epoch"], val_loss=state["best_val_loss"], epochs=self.total_epochs,
            n_params=count_parameters(model),
            n_params_all=int(sum(int(np.prod(w.shape)) for w in model.trainable_weights)),
            bops=cost.get("bops"), cost=cost,
            timing={"train_seconds": round(train_s, 3), "eval_seconds": round(state["eval_seconds"] + t_test, 3),
                    "epochs": self.total_epochs, "train_jets": self.n_train,
                    "jets_per_second": round(self.n_train * len(history) / train_s, 1) if train_s else None,
                    "seconds_per_epoch": round(train_s / len(history), 3) if history else None},
            test_jets=int(len(self.splits.test[1])),
        )
        if baseline is not None:
            metrics["baseline"] = baseline
        write_json(os.path.join(self.out_dir, "history.json"), history)
        with atomic_path(os.path.join(self.out_dir, "test_logits.npy")) as tmp:
            np.save(tmp, logits.astype(np.float32))
        write_json(os.path.join(self.out_dir, "results.json"), metrics)
        return model, metrics


def _finished(out_dir):
    """(model, metrics) of a seed whose results were written, else None."""
    results_path = os.path.join(out_dir, "results.json")
    model_path = os.path.join(out_dir, "model.keras")
    if not (os.path.exists(results_path) and os.path.exists(model_path)):
        return None
    with open(results_path) as f:
        return load_model(model_path), json.load(f)


def train_one(recipe, splits, seed, out_dir, resume=False, progress=True, log=None, on_epoch=None, baseline=None):
    """Train one seed of a recipe; return ``(model, metrics)``.

    With ``training.starts`` K > 1 the seed first tries K initialisations (:func:`best_start`): each
    trains the first ``start_epochs`` epochs in ``out_dir/starts/<k>/``, and the one of lowest
    validation loss trains on to the end; its outputs are then copied into ``out_dir``.

    Args:
      recipe: a :class:`qpelican.config.recipe.Recipe`.
      splits: a :class:`Splits` (e.g. from :func:`load_splits`; reuse it across seeds/trials).
      seed: training seed (weights initialisation, data order, dropout).
      out_dir: the seed's directory (checkpoints, model.keras, history.json, results.json).
      resume: continue from the last committed checkpoint in ``out_dir`` (a finished seed is
        loaded, not retrained).
      progress: print one line per epoch (through ``log``, default ``print``).
      on_epoch: optional callable(dict) called with each epoch's history row once the epoch is
        committed; raising KeyboardInterrupt from it stops the run there, ready to resume.
      baseline: optional dict stored in results.json under "baseline".

    Returns: the best model (tf-keras, weights of the epoch with the lowest validation loss in the
    final phase) and its metrics dict: test ``accuracy, auc, rej30, rej50, loss``, ``val_loss``,
    ``best_epoch``, ``epochs``, ``seed``, ``n_params``, ``bops``, ``cost``, ``timing`` (and, with
    starts, ``start``, ``start_seed`` and ``starts``).
    """
    log = log or (lambda s: print(s, flush=True))
    os.makedirs(out_dir, exist_ok=True)
    if resume and (done := _finished(out_dir)) is not None:
        if progress:
            log(f"seed {seed}: already finished (results in {os.path.join(out_dir, 'results.json')})")
        return done
    if recipe.training.starts == 1:
        return _train(recipe, splits, seed, out_dir, resume, progress, log, on_epoch, baseline)
    chosen = best_start(recipe, splits, seed, out_dir, resume, progress, log, on_epoch)
    k = chosen["start"]
    start_dir = os.path.join(out_dir, STARTS, str(k))
    model, metrics = _train(recipe, splits, start_seed(seed, k), start_dir, True, progress, log, on_epoch, baseline,
                            label=f"{seed} start {k}")
    metrics.update(seed=seed, start=k, start_seed=start_seed(seed, k), starts=chosen["starts"])
    metrics["timing"]["start_seconds"] = chosen["seconds"]
    for name in ("history.json", "test_logits.npy", "model.keras"):
        with atomic_path(os.path.join(out_dir, name)) as tmp:
            shutil.copyfile(os.path.join(start_dir, name), tmp)
    write_json(os.path.join(out_dir, "results.json"), metrics)  # last: it marks the seed finished
    return model, metrics


STARTS = "starts"
START_STRIDE = 1_000_003  # start k of seed s trains with seed s + k * START_STRIDE (start 0 is seed s itself)


def start_seed(seed, k):
    """The training seed of start ``k`` of ``seed``."""
    return int(seed) + START_STRIDE * int(k)


def best_start(recipe, splits, seed, out_dir, resume, progress, log, on_epoch):
    """Train each of ``training.starts`` initialisations for ``training.start_epochs`` epochs (in
    ``out_dir/starts/<k>/``) and return the choice, committed to ``out_dir/starts/chosen.json``:
    ``{"start": k, "starts": [{"start", "seed", "val_loss"}...], "seconds"}``.

    A float training with BatchNorm can settle in a poor solution that later epochs do not leave
    (its validation loss stays flat); the validation loss after the first epochs tells it apart, at
    a fraction of the cost of training whole seeds. Resumed runs reuse the committed choice."""
    t = recipe.training
    root = os.path.join(out_dir, STARTS)
    chosen_path = os.path.join(root, "chosen.json")
    if not resume:
        shutil.rmtree(root, ignore_errors=True)
        checkpoint.clear_outputs(out_dir)
    elif os.path.exists(chosen_path):
        with open(chosen_path) as f:
            return json.load(f)
    rows, seconds = [], 0.0
    for k in range(t.starts):
        sdir = os.path.join(root, str(k))
        os.makedirs(sdir, exist_ok=True)
        if progress:
            log(f"seed {seed}: start {k} of starts 0-{t.starts - 1} (seed {start_seed(seed, k)}), "
                f"{t.start_epochs} epochs")
        _train(recipe, splits, start_seed(seed, k), sdir, True, progress, log, on_epoch, None,
               label=f"{seed} start {k}", until=t.start_epochs)
        with open(os.path.join(sdir, checkpoint.STATE)) as f:
            state = json.load(f)
        v = state["history"][t.start_epochs - 1]["val_loss"]
        rows.append({"start": k, "seed": start_seed(seed, k), "val_loss": v if np.isfinite(v) else None})
        seconds += state["train_seconds"]
    best = min(rows, key=lambda r: math.inf if r["val_loss"] is None else r["val_loss"])
    chosen = {"start": best["start"], "starts": rows, "seconds": round(seconds, 3)}
    write_json(chosen_path, chosen)
    if progress:
        log(f"seed {seed}: start {best['start']} continues (validation loss of starts 0-{t.starts - 1} after "
            f"{t.start_epochs} epochs: " + ", ".join("-" if r["val_loss"] is None else f"{r['val_loss']:.4f}" for r in rows) + ")")
    for r in rows:  # the other starts' checkpoints are not needed any more
        if r["start"] != best["start"]:
            for name in os.listdir(os.path.join(root, str(r["start"]))):
                if name.startswith("ckpt-"):
                    shutil.rmtree(os.path.join(root, str(r["start"]), name), ignore_errors=True)
    return chosen


def _train(recipe, splits, seed, out_dir, resume, progress, log, on_epoch, baseline, label=None, until=None):
    """Epochs of one training seed up to ``until`` (None: to the end, then the results)."""
    run = _Run(recipe, splits, seed, out_dir, progress, log, label)
    state = checkpoint.open_state(out_dir, seed, run.total_epochs, run.n_train, resume)
    model = opt = ckpt = None
    cur_phase = None
    for epoch in range(state["epochs_done"], run.total_epochs if until is None else min(until, run.total_epochs)):
        pi, pstart = phase_at(run.phases, epoch)
        if cur_phase != pi:
            model, opt, ckpt, jit = run.enter_phase(pi, state, model)
            cur_phase = pi
            if progress and epoch == pstart:
                run.announce(pi, model, jit)
        row, t_train, t_eval = run.train_epoch(model, opt, epoch, run.phases[pi][0])
        # the best epoch is taken from the final (quantized) phase only
        improved = pi == len(run.phases) - 1 and np.isfinite(row["val_loss"]) and (
            state["best_val_loss"] is None or row["val_loss"] < state["best_val_loss"])
        if improved:
            checkpoint.save_best(model, out_dir)
            state["best_val_loss"], state["best_epoch"] = row["val_loss"], epoch + 1
        checkpoint.commit_epoch(out_dir, state, ckpt, epoch, pi, row, t_train, t_eval)
        if progress:
            run.report_epoch(row, improved)
        if on_epoch is not None:
            on_epoch(dict(row, seed=seed))
    if until is not None:
        return None
    return run.finish(model, state, baseline)


# -------------------------------------------------------------------------------- fit_recipe
def fit_recipe(recipe, out_dir, data=None, resume=False, progress=True, log=None, on_epoch=None,
               splits=None):
    """Train every seed of a recipe and write the run directory; return the run's results dict.

    Args:
      recipe: a :class:`qpelican.config.recipe.Recipe`, a path to a YAML recipe or a dict.
      out_dir: run directory (``RUN/recipe.yaml``, ``RUN/model.keras``, ``RUN/results.json``,
        ``RUN/roc.png``, ``RUN/seeds/<seed>/...``).
      data: None (recipe's data), a path overriding data.path, or a :class:`Splits`.
      resume: continue an interrupted run (finished seeds are reused).
      progress: per-epoch lines on the terminal.
      splits: preloaded :class:`Splits` (same as passing them as ``data``).

    Returns: results dict (also RUN/results.json): metrics of the best seed (lowest validation
    loss) -- accuracy, auc, rej30, rej50, loss, n_params, bops, seed, timing -- plus ``baseline``
    (jet-mass baseline on the same test jets), ``data``, ``seeds`` (per-seed metrics) and, with
    more than one seed, ``seeds_summary`` {metric: {mean, std}, best: {...}}.
    """
    if isinstance(recipe, (str, os.PathLike)):
        recipe = load_recipe(recipe)
    elif isinstance(recipe, dict):
        recipe = recipe_from_dict(recipe)
    elif not isinstance(recipe, Recipe):
        raise QpelicanError(f"fit_recipe: expected a Recipe, a path or a dict, got {type(recipe).__name__}")
    log = log or (lambda s: print(s, flush=True))
    prepare_threads(recipe)
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    recipe_path = os.path.join(out_dir, "recipe.yaml")
    as_run = recipe.to_dict(resolved=True)
    if isinstance(data, (str, os.PathLike)):
        as_run["data"]["path"] = os.fspath(data)
    if resume and os.path.exists(recipe_path):
        with open(recipe_path) as f:
            before = yaml.safe_load(f)
        diff = dict_diff(_with_new_defaults(before, as_run), as_run)
        if diff:
            raise QpelicanError(f"{out_dir}: --resume with a different recipe than the run was started with "
                                f"(differs in: {', '.join(diff)}). Resume with the same recipe and options, "
                                "or start a new --out directory.")
    write_text(recipe_path, yaml.safe_dump(as_run, sort_keys=False))

    splits = splits or load_splits(recipe, data, progress=progress)
    if progress:
        dd = splits.description
        log(f"data: {dd.get('train_jets')} train / {dd.get('val_jets')} val / {dd.get('test_jets')} test jets "
            f"from {dd.get('path')}")
        if dd.get("l1_grid_summary"):
            log(dd["l1_grid_summary"])
    baselines = mass_baselines(splits)
    baseline = baselines["baseline"][0]
    per_seed, best = [], None
    for seed in recipe.seed_list():
        model, m = train_one(recipe, splits, seed, os.path.join(out_dir, "seeds", str(seed)), resume=resume,
                             progress=progress, log=log, on_epoch=on_epoch, baseline=baseline)
        per_seed.append(m)
        if best is None or m["val_loss"] < best[1]["val_loss"]:
            best = (model, m)
    results = write_run_results(out_dir, recipe, splits, per_seed, best, baselines)
    return results


def _with_new_defaults(before, as_run):
    """A run's recipe with the model keys it predates (written before the key existed) at their
    defaults, which is what it ran with."""
    model = before.get("model") if isinstance(before, dict) else None
    if not isinstance(model, dict):
        return before
    added = {k: v for k, v in as_run["model"].items() if k not in model and k in MODEL_DEFAULTS and v == MODEL_DEFAULTS[k]}
    return {**before, "model": {**model, **added}}


def dict_diff(a, b, prefix=""):
    """Dotted keys whose values differ between two nested dicts (a resumed run's recipe check)."""
    out = []
    for k in sorted(set(a or {}) | set(b or {})):
        va, vb = (a or {}).get(k), (b or {}).get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += dict_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}")
    return out
