"""One trial of ``qpelican tune``: the Keras Tuner worker, the shared float pre-training and the score.

Keras Tuner with Keras 3 installed rejects the tf-keras models a ``build()`` would return, so
:class:`QTuner` overrides ``run_trial`` (Keras Tuner's documented custom-training hook) and
declares the whole space up front in the oracle; nothing of Keras Tuner is patched.
"""
import fcntl
import hashlib
import json
import math
import os
import time

import keras_tuner as kt
import numpy as np
import tf_keras

from qpelican.config.recipe import first_phase_epochs, recipe_from_dict, rescale_start_epochs
from qpelican.config.search import DEFAULT_COST_AXIS, TENSORS
from qpelican.core.errors import QpelicanError
from qpelican.core.io import write_json, write_text
from qpelican.core.metrics import roc_metrics
from qpelican.training.splits import Splits
from qpelican.training.train import predict, train_one
from qpelican.rtl.exporter import rtl_estimate
from qpelican.tune.front import cost_text
from qpelican.tune.space import recipe_cost, variant, widths_label


class QTuner(kt.Tuner):
    """Keras Tuner worker that trains recipe variants with train_one (custom ``run_trial``).

    ``on_trial_end`` (optional) is called with the number of trials this worker finished; raising
    KeyboardInterrupt from it stops the search as Ctrl-C would (finished trials are kept).
    """

    def __init__(self, oracle, ctx, on_trial_end=None, **kwargs):
        super().__init__(oracle=oracle, hypermodel=None, **kwargs)
        self.ctx = ctx
        self.finished_here = 0
        self.trial_end_callback = on_trial_end

    def run_trial(self, trial, *args, **kwargs):
        return run_trial(self, trial)

    def on_trial_end(self, trial):
        super().on_trial_end(trial)
        self.finished_here += 1
        if self.trial_end_callback is not None:
            self.trial_end_callback(self.finished_here)


class TuneContext:
    """What every trial of one worker shares: settings, the base recipe, data loaded once."""

    def __init__(self, recipe, space, settings, splits=None, log=print):
        self.recipe = recipe
        self.space = space
        self.settings = settings
        self.splits = splits
        self._sliced = {}
        self.log = log
        self.tuner_id = os.environ.get("KERASTUNER_TUNER_ID", "tuner0")

    def splits_for(self, n):
        full = self.splits
        if full.train[0].shape[1] == n:
            return full
        if n not in self._sliced:
            self._sliced[n] = Splits(*[(p4[:, :n], y) for p4, y in (full.train, full.val, full.test)],
                                     description=dict(full.description, n_constituents=n))
        return self._sliced[n]


def objective_score(val_auc, cost, settings):
    """val_auc - w * log2(cost / cost of the recipe as written), on the search's cost axis."""
    ref = settings.get("recipe_cost", settings["recipe_bops"])
    return float(val_auc - settings["cost_weight"] * math.log2(max(cost, 1) / max(ref, 1)))


def over_budget(ctx, trial, trial_dir, record, t0):
    """The metrics of a trial whose cost exceeds ``--max-cost``: not trained, scored below every
    trained trial and rising towards the budget."""
    s = ctx.settings
    cost = record["cost"]
    metrics = {"score": float(-1.0 - math.log2(cost / s["max_cost"])), "cost": float(cost),
               "bops": float(record["bops"]), "over_budget": 1.0, "seconds": time.perf_counter() - t0}
    record.update(status="over_budget", metrics=metrics)
    write_json(os.path.join(trial_dir, "qpelican.json"), record)
    ctx.log(f"trial {trial.trial_id} ({ctx.tuner_id}) {widths_label(record['widths'])}{cn_label(ctx, record)}  "
            f"{cost_text(s, cost)} > budget {cost_text(s, s['max_cost'])}: not trained (score {metrics['score']:.3f})")
    return metrics


def with_shared_pretraining(ctx, rec):
    """A finetune variant starts from the float pre-training shared by its C (trained once)."""
    pre_dir = ensure_pretrain(ctx, rec.resolved_model_config()["channels"])
    d = rec.model_dump()
    # the shared pre-training chose among the starts; the variant fine-tunes its weights
    d["training"].update(pretrain_epochs=0, init_from=pre_dir, starts=1, start_epochs=0)
    return recipe_from_dict(d, source="search variant")


def trained_metrics(ctx, trial, model, test, splits, record):
    """Validation and test metrics of a trained trial, its cost on the search's axis and its score.

    On the LUT axis the trained model is traced again: its coefficients set which products exist."""
    val_logits = predict(model, splits.val[0])
    if not np.isfinite(val_logits).all():
        raise QpelicanError(f"trial {trial.trial_id}: non-finite validation outputs")
    val = roc_metrics(splits.val[1], val_logits)
    axis = ctx.settings.get("cost", DEFAULT_COST_AXIS)
    rtl = rtl_estimate(model) if axis == "luts" else {}
    cost = rtl["luts"] if axis == "luts" else record["bops"]
    record.update(cost=int(cost), **rtl)
    return {
        "score": objective_score(val["auc"], cost, ctx.settings),
        "val_auc": val["auc"], "val_accuracy": val["accuracy"], "val_rej30": finite(val["rej30"]),
        "val_rej50": finite(val["rej50"]),
        "test_auc": test["auc"], "test_accuracy": test["accuracy"], "test_rej30": finite(test["rej30"]),
        "test_rej50": finite(test["rej50"]),
        "cost": float(cost), "bops": float(record["bops"]), **({"dsps": float(rtl["dsps"])} if rtl else {}), "n_params": float(test.get("n_params") or 0),
        "over_budget": 0.0, "val_loss": float(test.get("val_loss") or float("nan")),
    }


def run_trial(tuner, trial):
    """Train one recipe variant; return the metrics dict (``score`` is the objective)."""
    ctx = tuner.ctx
    s = ctx.settings
    values = dict(trial.hyperparameters.values)
    epochs = int(values.get("tuner/epochs", s["epochs"]))
    name = f"{ctx.recipe.name or 'recipe'}_trial{trial.trial_id}"
    rec, widths = variant(ctx.recipe, ctx.space, values, epochs=epochs, name=name)
    trial_dir = os.path.join(tuner.project_dir, f"trial_{trial.trial_id}")
    os.makedirs(trial_dir, exist_ok=True)
    t0 = time.perf_counter()
    cost = recipe_cost(rec, s.get("cost", DEFAULT_COST_AXIS))
    record = {"trial_id": trial.trial_id, "tuner_id": ctx.tuner_id, "widths": widths,
              "quantization": rec.to_dict()["quantization"], "channels": rec.resolved_model_config()["channels"],
              "n_constituents": rec.data.n_constituents, "epochs": epochs, "bops": int(cost["bops"]),
              "cost": cost["cost"], "dsp_estimate": cost["dsp_estimate"], "lut_estimate": cost["lut_estimate"]}
    if s.get("max_cost") and record["cost"] > s["max_cost"]:
        return over_budget(ctx, trial, trial_dir, record, t0)
    t = rec.training
    if t.qat == "finetune" and t.pretrain_epochs > 0 and not t.init_from:
        t_pre = time.perf_counter()
        rec = with_shared_pretraining(ctx, rec)
        t0 += time.perf_counter() - t_pre  # a trial's seconds exclude the shared pre-training
    # a retried trial (interrupted search) resumes its checkpoint, unless the variant changed
    run_dir = os.path.join(trial_dir, "run")
    key = hashlib.sha256(json.dumps(rec.to_dict(), sort_keys=True).encode()).hexdigest()[:16]
    key_path = os.path.join(trial_dir, "variant.key")
    resume = os.path.exists(key_path) and open(key_path).read().strip() == key
    write_text(key_path, key)
    splits = ctx.splits_for(rec.data.n_constituents)
    model, test = train_one(rec, splits, seed=rec.seed, out_dir=run_dir, resume=resume, progress=False,
                            log=ctx.log)
    metrics = trained_metrics(ctx, trial, model, test, splits, record)
    metrics["seconds"] = time.perf_counter() - t0
    record.update(status="completed", metrics=metrics, n_params=test.get("n_params"),
                  train_seconds=(test.get("timing") or {}).get("train_seconds"))
    write_json(os.path.join(trial_dir, "qpelican.json"), record)
    write_text(os.path.join(trial_dir, "recipe.yaml"), rec.to_yaml())
    ctx.log(f"trial {trial.trial_id} ({ctx.tuner_id}) {widths_label(widths)}" + cn_label(ctx, record)
            + f"  val AUC {metrics['val_auc']:.4f}  test AUC {metrics['test_auc']:.4f}  "
            f"{cost_text(s, record['cost'])}  score {metrics['score']:.4f}  ({metrics['seconds']:.0f} s)")
    del model
    tf_keras.backend.clear_session()
    return metrics


def ensure_pretrain(ctx, channels):
    """Float pre-training shared by all trials with ``channels`` hidden channels (finetune recipes):
    trained once into ``<out>/pretrain/c<C>`` (a file lock serialises workers sharing the directory;
    a finished one is reused), its metrics written to ``reference.json`` (the float reference of the
    front). Returns the run directory (``training.init_from`` of the trials)."""
    s = ctx.settings
    pre_dir = os.path.join(s["out_dir"], "pretrain", f"c{channels}")
    ref_path = os.path.join(pre_dir, "reference.json")
    if os.path.exists(ref_path):
        return pre_dir
    os.makedirs(pre_dir, exist_ok=True)
    with open(os.path.join(pre_dir, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(ref_path):
            return pre_dir
        d = ctx.recipe.model_dump()
        d.pop("search", None)
        d["quantization"] = {t: None for t in TENSORS}
        d["model"]["channels"] = int(channels)
        first = first_phase_epochs(d["training"])
        d["training"].update(qat="from_scratch", pretrain_epochs=0, epochs=int(s["pretrain_epochs"]),
                             finetune_learning_rate=None)
        rescale_start_epochs(d["training"], first)
        d["seeds"] = 1
        d["name"] = f"{ctx.recipe.name or 'recipe'}_float_c{channels}"
        rec = recipe_from_dict(d, source="float pre-training")
        ctx.log(f"float pre-training C={channels} ({rec.training.epochs} epochs, shared by the trials) -> {pre_dir}")
        t0 = time.perf_counter()
        splits = ctx.splits_for(rec.data.n_constituents)
        model, test = train_one(rec, splits, seed=rec.seed, out_dir=pre_dir, resume=True, progress=False,
                                log=ctx.log)
        val = roc_metrics(splits.val[1], predict(model, splits.val[0]))
        ref = {"channels": int(channels), "epochs": rec.training.epochs, "val_auc": val["auc"],
               "val_rej30": finite(val["rej30"]), "test_auc": test["auc"], "test_rej30": finite(test["rej30"]),
               "bops": test.get("bops"), "seconds": time.perf_counter() - t0, "recipe": rec.to_dict()}
        write_json(ref_path, ref)
        ctx.log(f"float pre-training C={channels}: val AUC {val['auc']:.4f}, test AUC {test['auc']:.4f} "
                f"({ref['seconds']:.0f} s)")
    return pre_dir


def cn_label(ctx, record):
    return ((f" C={record['channels']}" if ctx.space["channels"] else "")
            + (f" N={record['n_constituents']}" if ctx.space["n_constituents"] else ""))


def finite(x):
    """inf rejection (no background passes) -> a large finite number the oracle can store."""
    return float(x) if math.isfinite(x) else 1e9
