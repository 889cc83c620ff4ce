"""Bit-width search: Keras Tuner over the fixed-point formats of a recipe, AUC against hardware cost.

``qpelican tune RECIPE`` (see ``docs/tuning.md``) searches the total and integer bits of every
quantized tensor of a recipe (and optionally the hidden channels C and the number of constituents
N), trains each candidate with :func:`qpelican.training.train.train_one`, and returns the Pareto front of
validation AUC against bit operations (:func:`qpelican.hw.cost.model_cost`, the one cost model).

Search space
------------
One pair of hyperparameters per tensor of ``QUANTIZED_TENSORS``: ``<tensor>_bits`` (total bits)
and ``<tensor>_integer`` (integer bits, excluding the sign, as in ``quantized_bits(bits, integer)``).
Defaults are relative to the recipe's own format (b, i) of that tensor (``DEFAULT_FORMATS`` when
the recipe leaves it float); the search only looks for cheaper formats than the recipe's:

    tensor        bits                   integer
    input         [max(4, b//2), b]      [i-2, i]    (fewer: the hardest constituents saturate)
    invariants    [max(4, b//2), b]      [i-4, i]    (fewer: the rare largest pairs saturate)
    coefficients  [2, b]                 [i-1, i+1]
    biases        [3, b]                 [i-2, i]
    activation    [2, b]                 [i-1, i+1]
    aggregates    [3, b]                 [i-1, i+1]
    output        [max(4, b//2), b]      [i-2, i]

(integer ranges are clipped at 0). For a signed ``quantized_bits`` an integer width larger than
``bits - 1`` is clipped to it; the unsigned activation keeps its integer width even above ``bits``
(``quantized_relu(4,6)``: range 64 in steps of 4, bit-exact in the firmware): its range is what
matters, not its step. The trial records the widths actually
trained. An optional ``search:`` section of the recipe narrows or widens the bounds::

    search:
      coefficients: {bits: [2, 6], integer: [0, 1]}   # [min, max] or one value
      biases: fixed                                   # keep the recipe's quantizer, not searched
      channels: [1, 2, 3]                             # optional: hidden channels C (choices)
      n_constituents: [32, 48, 64, 80]                # optional: N (choices)

Objective
---------
Keras Tuner maximises ``score``:

* a trial within budget (BOPs <= ``--max-cost``, or no budget): ``score = val_auc - w *
  log2(bops / bops_recipe)``, with ``w = --cost-weight`` (default 0.002: halving the BOPs is worth
  0.002 AUC) and ``bops_recipe`` the BOPs of the recipe as written. ``w = 0`` is plain validation
  AUC under the budget.
* a trial over budget is **not trained** (its cost follows from the widths alone): ``score = -1 -
  log2(bops / max_cost)``, below every trained trial and rising towards the budget, so Bayesian
  optimisation is steered back into it. Such trials are listed (status ``over_budget``) but are
  never on the front.

The AUC is measured on the validation jets; test metrics are recorded separately and never used
for selection. The Pareto front (``pareto.json``) is over (validation AUC up, BOPs down) of the
trained within-budget trials.

Outputs (``--out DIR``)
-----------------------
``tune.json`` (settings), ``kt/`` (Keras Tuner project: oracle state, ``trial_<id>/trial.json``,
``trial_<id>/run/`` the trained model, ``trial_<id>/qpelican.json`` its metrics and widths),
``trials.json`` / ``trials.csv`` (one row per trial), ``pareto.json``, ``pareto.png`` and
``pareto/point_<k>.yaml`` (a ready-to-run recipe per front point, for ``qpelican fit``).

Keras Tuner with Keras 3 installed rejects the tf-keras models a ``build()`` would return, so
:class:`QTuner` overrides ``run_trial`` (Keras Tuner's documented custom-training hook) and
declares the whole space up front in the oracle; nothing of Keras Tuner is patched.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import time

from qpelican.core.errors import QpelicanError, RecipeError
from qpelican.core.io import write_json as _write_json

TENSORS = ("input", "invariants", "coefficients", "biases", "activation", "aggregates", "output")
SHORT = {"input": "in", "invariants": "inv", "coefficients": "w", "biases": "b", "activation": "act",
         "aggregates": "agg", "output": "out"}

# Formats searched below when the recipe leaves a tensor float: (kind, bits, integer, signed).
DEFAULT_FORMATS = {
    "input": ("bits", 16, 7, True),
    "invariants": ("bits", 16, 9, True),
    "coefficients": ("bits", 8, 2, True),
    "biases": ("bits", 8, 3, True),
    "activation": ("relu", 8, 7, False),
    "aggregates": ("bits", 10, 3, True),
    "output": ("bits", 16, 6, True),
}
# default bounds relative to the recipe's (bits b, integer i): (bits_lo(b), int_lo(i), int_hi(i))
_DEFAULT_BOUNDS = {
    "input": (lambda b: max(4, b // 2), lambda i: i - 2, lambda i: i),
    "invariants": (lambda b: max(4, b // 2), lambda i: i - 4, lambda i: i),
    "coefficients": (lambda b: 2, lambda i: i - 1, lambda i: i + 1),
    "biases": (lambda b: 3, lambda i: i - 2, lambda i: i),
    "activation": (lambda b: 2, lambda i: i - 1, lambda i: i + 1),
    "aggregates": (lambda b: 3, lambda i: i - 1, lambda i: i + 1),
    "output": (lambda b: max(4, b // 2), lambda i: i - 2, lambda i: i),
}
SEARCH_KEYS = TENSORS + ("channels", "n_constituents")
ORACLES = ("random", "bayesian", "hyperband")
DEFAULT_COST_WEIGHT = 0.002
STOP_ENV = "QPELICAN_TUNE_STOP_AFTER_TRIALS"  # test hook: interrupt after K finished trials


# ------------------------------------------------------------------------------ search space
def _range(value, key, lo_allowed, hi_allowed, source):
    """[lo, hi] from an int or a 2-list; RecipeError naming the key otherwise."""
    if isinstance(value, bool):
        value = None
    if isinstance(value, int):
        value = [value, value]
    ok = (isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                                         for v in value))
    if not ok or not (lo_allowed <= value[0] <= value[1] <= hi_allowed):
        raise RecipeError(f"{source}: search.{key} = {value!r} is not allowed; expected an integer or [min, max] "
                          f"with {lo_allowed} <= min <= max <= {hi_allowed}.")
    return int(value[0]), int(value[1])


def _choices(value, key, lo_allowed, hi_allowed, source):
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if (not isinstance(value, (list, tuple)) or not value
            or not all(isinstance(v, int) and not isinstance(v, bool) and lo_allowed <= v <= hi_allowed for v in value)):
        raise RecipeError(f"{source}: search.{key} = {value!r} is not allowed; expected a list of integers "
                          f"between {lo_allowed} and {hi_allowed} (the choices to search), e.g. [1, 2, 3].")
    return sorted(set(int(v) for v in value))


def base_format(recipe, tensor):
    """(kind, bits, integer, signed) of a tensor in the recipe, DEFAULT_FORMATS when it is float."""
    from qpelican.nn.quant import fixed_format, get_quantizer

    q = getattr(recipe.quantization, tensor)
    if q is None:
        return DEFAULT_FORMATS[tensor]
    f = fixed_format(q)
    kind = "relu" if type(get_quantizer(q)).__name__ == "quantized_relu" else "bits"
    return (kind, f.bits, f.integer, f.signed)


def parse_search(section, recipe=None, source="recipe"):
    """Validate a ``search:`` section (dict or None) and return the full search space.

    Returns {"tensors": {tensor: None (fixed) | {"kind", "signed", "bits": (lo, hi), "integer": (lo, hi)}},
    "channels": [..] | None, "n_constituents": [..] | None}. Raises RecipeError naming the key and
    the allowed keys/values. With ``recipe=None`` only the section's own syntax is checked.
    """
    section = {} if section is None else section
    if not isinstance(section, dict):
        raise RecipeError(f"{source}: search must be a mapping with keys {', '.join(SEARCH_KEYS)} "
                          f"(got {section!r}).")
    for key in section:
        if key not in SEARCH_KEYS:
            raise RecipeError(f"{source}: unknown key 'search.{key}'; allowed keys here: {', '.join(SEARCH_KEYS)}.")
    space = {"tensors": {}, "channels": None, "n_constituents": None}
    if section.get("channels") is not None:
        space["channels"] = _choices(section["channels"], "channels", 1, 64, source)
    if section.get("n_constituents") is not None:
        space["n_constituents"] = _choices(section["n_constituents"], "n_constituents", 2, 200, source)
    for t in TENSORS:
        spec = section.get(t)
        if isinstance(spec, str) and spec.strip() == "fixed":
            space["tensors"][t] = None
            continue
        if spec is not None and not isinstance(spec, dict):
            raise RecipeError(f"{source}: search.{t} = {spec!r} is not allowed; use 'fixed' (keep the recipe's "
                              "quantizer) or a mapping with keys bits, integer, e.g. {bits: [2, 8], integer: [0, 2]}.")
        spec = spec or {}
        for k in spec:
            if k not in ("bits", "integer"):
                raise RecipeError(f"{source}: unknown key 'search.{t}.{k}'; allowed keys here: bits, integer.")
        bits = _range(spec["bits"], f"{t}.bits", 2, 32, source) if spec.get("bits") is not None else None
        integer = _range(spec["integer"], f"{t}.integer", 0, 31, source) if spec.get("integer") is not None else None
        if recipe is None:
            space["tensors"][t] = {"bits": bits, "integer": integer}
            continue
        kind, b, i, signed = base_format(recipe, t)
        blo_f, ilo_f, ihi_f = _DEFAULT_BOUNDS[t]
        if bits is None:
            bits = (min(blo_f(b), b), b)
        if integer is None:
            integer = (max(0, ilo_f(i)), max(0, ihi_f(i)))
        if signed and integer[0] > bits[1] - 1:
            raise RecipeError(f"{source}: search.{t}: integer >= {integer[0]} does not fit in at most {bits[1]} bits "
                              f"(signed: integer <= bits - 1); lower "
                              f"search.{t}.integer or raise search.{t}.bits.")
        space["tensors"][t] = {"kind": kind, "signed": bool(signed), "bits": bits, "integer": integer}
    return space


def search_space(recipe):
    """The recipe's full search space (its ``search`` section over the defaults)."""
    return parse_search(getattr(recipe, "search", None), recipe, source=f"recipe {recipe.name or ''}".strip())


def hyperparameters(space):
    """A ``keras_tuner.HyperParameters`` declaring the whole space (fixed ranges as Fixed)."""
    import keras_tuner as kt

    hp = kt.HyperParameters()
    for t in TENSORS:
        spec = space["tensors"][t]
        if spec is None:
            continue
        for k in ("bits", "integer"):
            lo, hi = spec[k]
            if lo == hi:
                hp.Fixed(f"{t}_{k}", lo)
            else:
                hp.Int(f"{t}_{k}", lo, hi)
    if space["channels"]:
        (hp.Fixed if len(space["channels"]) == 1 else hp.Choice)("channels", *(
            [space["channels"][0]] if len(space["channels"]) == 1 else [space["channels"]]))
    if space["n_constituents"]:
        (hp.Fixed if len(space["n_constituents"]) == 1 else hp.Choice)("n_constituents", *(
            [space["n_constituents"][0]] if len(space["n_constituents"]) == 1 else [space["n_constituents"]]))
    return hp


def quantizer_string(kind, bits, integer, signed):
    if kind == "relu":
        return f"quantized_relu({bits},{integer})"
    if not signed:
        return f"quantized_bits({bits},{integer},keep_negative=False,alpha=1)"
    return f"quantized_bits({bits},{integer},alpha=1)"


def variant(recipe, space, values, epochs=None, name=None):
    """(recipe variant, widths) for hyperparameter ``values``: the recipe with the sampled formats,
    C and N, no search section; ``widths`` = {tensor: [bits, integer] | None (float)}."""
    from qpelican.config.recipe import recipe_from_dict

    d = recipe.model_dump()
    d.pop("search", None)
    widths = {}
    for t in TENSORS:
        spec = space["tensors"][t]
        if spec is None:
            q = d["quantization"][t]
            if q is None:
                widths[t] = None
            else:
                _, b, i, _ = base_format(recipe, t)
                widths[t] = [b, i]
            continue
        b = int(values.get(f"{t}_bits", spec["bits"][1]))
        i = int(values.get(f"{t}_integer", spec["integer"][1]))
        i = max(0, min(i, b - 1) if spec["signed"] else i)
        d["quantization"][t] = quantizer_string(spec["kind"], b, i, spec["signed"])
        widths[t] = [b, i]
    if "channels" in values:
        d["model"]["channels"] = int(values["channels"])
    if "n_constituents" in values:
        d["data"]["n_constituents"] = int(values["n_constituents"])
    if epochs is not None:
        d["training"]["epochs"] = int(epochs)
    d["seeds"] = 1
    if name:
        d["name"] = name
    if d["model"].get("batchnorm"):
        d["model"]["batchnorm"] = False  # quantized recipes cannot fold BatchNorm
    return recipe_from_dict(d, source="search variant"), widths


def widths_label(widths):
    return " ".join(f"{SHORT[t]} {w[0]},{w[1]}" if w else f"{SHORT[t]} f" for t, w in widths.items())


def recipe_cost(recipe):
    """model_cost of a recipe's model (built, not trained)."""
    import tf_keras

    from qpelican.hw.cost import model_cost
    from qpelican.nn.models import build_model

    model = build_model(recipe.to_model_config())
    try:
        return model_cost(model)
    finally:
        del model
        tf_keras.backend.clear_session()


# -------------------------------------------------------------------------------- the tuner
def _tuner_class():
    import keras_tuner as kt

    class QTuner(kt.Tuner):
        """Keras Tuner worker that trains recipe variants with train_one (custom ``run_trial``)."""

        def __init__(self, oracle, ctx, **kwargs):
            super().__init__(oracle=oracle, hypermodel=None, **kwargs)
            self.ctx = ctx
            self.finished_here = 0

        def run_trial(self, trial, *args, **kwargs):
            return run_trial(self, trial)

        def on_trial_end(self, trial):
            super().on_trial_end(trial)
            self.finished_here += 1
            stop = os.environ.get(STOP_ENV)
            if stop and self.finished_here >= int(stop):
                raise KeyboardInterrupt(f"stopped after {self.finished_here} trial(s) ({STOP_ENV})")

    return QTuner


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
        from qpelican.training.train import Splits

        full = self.splits
        if full.train[0].shape[1] == n:
            return full
        if n not in self._sliced:
            self._sliced[n] = Splits(*[(p4[:, :n], y) for p4, y in (full.train, full.val, full.test)],
                                     description=dict(full.description, n_constituents=n))
        return self._sliced[n]


def _objective_score(val_auc, bops, settings):
    ref = settings["recipe_bops"]
    return float(val_auc - settings["cost_weight"] * math.log2(max(bops, 1) / max(ref, 1)))


def run_trial(tuner, trial):
    """Train one recipe variant; return the metrics dict (``score`` is the objective)."""
    import numpy as np

    from qpelican.core.metrics import roc_metrics
    from qpelican.config.recipe import recipe_from_dict
    from qpelican.training.train import predict, train_one

    ctx = tuner.ctx
    s = ctx.settings
    values = dict(trial.hyperparameters.values)
    epochs = int(values.get("tuner/epochs", s["epochs"]))
    name = f"{ctx.recipe.name or 'recipe'}_trial{trial.trial_id}"
    rec, widths = variant(ctx.recipe, ctx.space, values, epochs=epochs, name=name)
    trial_dir = os.path.join(tuner.project_dir, f"trial_{trial.trial_id}")
    os.makedirs(trial_dir, exist_ok=True)
    t0 = time.perf_counter()
    cost = recipe_cost(rec)
    bops = int(cost["bops"])
    record = {"trial_id": trial.trial_id, "tuner_id": ctx.tuner_id, "widths": widths,
              "quantization": rec.to_dict()["quantization"], "channels": rec.resolved_model_config()["channels"],
              "n_constituents": rec.data.n_constituents, "epochs": epochs, "bops": bops,
              "dsp_estimate": cost["dsp_estimate"], "lut_estimate": cost["lut_estimate"]}
    max_cost = s.get("max_cost")
    if max_cost and bops > max_cost:
        metrics = {"score": float(-1.0 - math.log2(bops / max_cost)), "bops": float(bops), "over_budget": 1.0,
                   "seconds": time.perf_counter() - t0}
        record.update(status="over_budget", metrics=metrics)
        _write_json(os.path.join(trial_dir, "qpelican.json"), record)
        ctx.log(f"trial {trial.trial_id} ({ctx.tuner_id}) {widths_label(widths)}{_cn_label(ctx, record)}  BOPs {bops:,} > budget "
                f"{max_cost:,}: not trained (score {metrics['score']:.3f})")
        return metrics

    t = rec.training
    if t.qat == "finetune" and t.pretrain_epochs > 0 and not t.init_from:
        # shared float pre-training (one per C, trained once), then QAT fine-tuning of this variant
        t_pre = time.perf_counter()
        pre_dir = ensure_pretrain(ctx, rec.resolved_model_config()["channels"])
        t0 += time.perf_counter() - t_pre  # a trial's seconds exclude the shared pre-training
        d = rec.model_dump()
        d["training"].update(pretrain_epochs=0, init_from=pre_dir)
        rec = recipe_from_dict(d, source="search variant")
    # a retried trial (interrupted search) resumes its checkpoint, unless the variant changed
    run_dir = os.path.join(trial_dir, "run")
    key = hashlib.sha256(json.dumps(rec.to_dict(), sort_keys=True).encode()).hexdigest()[:16]
    key_path = os.path.join(trial_dir, "variant.key")
    resume = os.path.exists(key_path) and open(key_path).read().strip() == key
    with open(key_path, "w") as f:
        f.write(key)
    splits = ctx.splits_for(rec.data.n_constituents)
    model, test = train_one(rec, splits, seed=rec.seed, out_dir=run_dir, resume=resume, progress=False,
                            log=ctx.log)
    vy = splits.val[1]
    val_logits = predict(model, splits.val[0])
    if not np.isfinite(val_logits).all():
        raise QpelicanError(f"trial {trial.trial_id}: non-finite validation outputs")
    val = roc_metrics(vy, val_logits)
    seconds = time.perf_counter() - t0
    metrics = {
        "score": _objective_score(val["auc"], bops, s),
        "val_auc": val["auc"], "val_accuracy": val["accuracy"], "val_rej30": _finite(val["rej30"]),
        "val_rej50": _finite(val["rej50"]),
        "test_auc": test["auc"], "test_accuracy": test["accuracy"], "test_rej30": _finite(test["rej30"]),
        "test_rej50": _finite(test["rej50"]),
        "bops": float(bops), "n_params": float(test.get("n_params") or 0), "over_budget": 0.0,
        "val_loss": float(test.get("val_loss") or float("nan")), "seconds": seconds,
    }
    record.update(status="completed", metrics=metrics, n_params=test.get("n_params"),
                  train_seconds=(test.get("timing") or {}).get("train_seconds"))
    _write_json(os.path.join(trial_dir, "qpelican.json"), record)
    with open(os.path.join(trial_dir, "recipe.yaml"), "w") as f:
        f.write(rec.to_yaml())
    ctx.log(f"trial {trial.trial_id} ({ctx.tuner_id}) {widths_label(widths)}"
            + _cn_label(ctx, record) + f"  val AUC {val['auc']:.4f}  test AUC {test['auc']:.4f}  BOPs {bops:,}  "
            f"score {metrics['score']:.4f}  ({seconds:.0f} s)")
    del model
    import tf_keras

    tf_keras.backend.clear_session()
    return metrics


def ensure_pretrain(ctx, channels):
    """Float pre-training shared by all trials with ``channels`` hidden channels (finetune recipes):
    trained once into ``<out>/pretrain/c<C>`` (a file lock serialises workers sharing the directory;
    a finished one is reused), its metrics written to ``reference.json`` (the float reference of the
    front). Returns the run directory (``training.init_from`` of the trials)."""
    import fcntl

    from qpelican.core.metrics import roc_metrics
    from qpelican.config.recipe import recipe_from_dict
    from qpelican.training.train import predict, train_one

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
        d["training"].update(qat="from_scratch", pretrain_epochs=0, epochs=int(s["pretrain_epochs"]),
                             finetune_learning_rate=None)
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
               "val_rej30": _finite(val["rej30"]), "test_auc": test["auc"], "test_rej30": _finite(test["rej30"]),
               "bops": test.get("bops"), "seconds": time.perf_counter() - t0, "recipe": rec.to_dict()}
        _write_json(ref_path, ref)
        ctx.log(f"float pre-training C={channels}: val AUC {val['auc']:.4f}, test AUC {test['auc']:.4f} "
                f"({ref['seconds']:.0f} s)")
    return pre_dir


def _cn_label(ctx, record):
    return ((f" C={record['channels']}" if ctx.space["channels"] else "")
            + (f" N={record['n_constituents']}" if ctx.space["n_constituents"] else ""))


def _finite(x):
    """inf rejection (no background passes) -> a large finite number the oracle can store."""
    return float(x) if math.isfinite(x) else 1e9






# ----------------------------------------------------------------------------- the search
def _make_oracle(kind, trials, epochs, seed, hp):
    import keras_tuner as kt

    objective = kt.Objective("score", direction="max")
    common = dict(objective=objective, hyperparameters=hp, seed=seed, allow_new_entries=False,
                  tune_new_entries=True, max_retries_per_trial=1, max_consecutive_failed_trials=5)
    if kind == "random":
        return kt.oracles.RandomSearchOracle(max_trials=trials, **common)
    if kind == "bayesian":
        return kt.oracles.BayesianOptimizationOracle(max_trials=trials, num_initial_points=max(2, min(trials // 3, 10)),
                                                     **common)
    if kind == "hyperband":
        oracle = kt.oracles.HyperbandOracle(max_epochs=epochs, factor=3, hyperband_iterations=1, **common)
        oracle.max_trials = trials  # cap the number of trials like the other oracles
        return oracle
    raise QpelicanError(f"--oracle {kind!r} is not supported; use one of {', '.join(ORACLES)}.")


def distributed_role():
    """'chief', 'worker' or None (single process), from Keras Tuner's environment variables."""
    if "KERASTUNER_ORACLE_IP" not in os.environ:
        return None
    missing = [k for k in ("KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID") if k not in os.environ]
    if missing:
        raise QpelicanError(f"KERASTUNER_ORACLE_IP is set but {' and '.join(missing)} not; distributed tuning needs "
                            "KERASTUNER_TUNER_ID (chief, tuner0, tuner1, ...), KERASTUNER_ORACLE_IP and "
                            "KERASTUNER_ORACLE_PORT (see docs/tuning.md).")
    return "chief" if "chief" in os.environ["KERASTUNER_TUNER_ID"] else "worker"


def tune(recipe, out_dir, data=None, epochs=None, jets=None, trials=20, oracle="random", max_cost=None,
         cost_weight=DEFAULT_COST_WEIGHT, resume=False, seed=0, log=print, splits=None, pretrain_epochs=None):
    """Run (or continue, or serve/work in distributed mode) a bit-width search; return the summary dict
    of :func:`write_outputs` (None on a distributed worker, whose results the chief writes).

    Args:
      recipe: a Recipe or a YAML path. ``data``/``jets`` override the data section (as ``fit``),
        ``epochs`` the epochs per trial (the front's recipes keep the recipe's own epochs).
      trials: number of trials (Keras Tuner ``max_trials``; also the cap for hyperband).
      oracle: random | bayesian | hyperband.  max_cost: BOPs budget.  cost_weight: see module doc.
      resume: continue the search in ``out_dir`` (finished trials are kept, the interrupted one
        resumes its checkpoint).  seed: oracle seed (training uses the recipe's seed).
      splits: preloaded :class:`qpelican.training.train.Splits` (tests, benchmarks).
      pretrain_epochs: float pre-training epochs of a ``qat: finetune`` recipe (default: the
        recipe's ``pretrain_epochs``); the pre-training is shared by all trials (one per C).
    """
    from qpelican.config.recipe import Recipe, load_recipe

    if isinstance(recipe, (str, os.PathLike)):
        recipe = load_recipe(recipe)
    if not isinstance(recipe, Recipe):
        raise QpelicanError(f"tune: expected a Recipe or a path, got {type(recipe).__name__}")
    if oracle not in ORACLES:
        raise QpelicanError(f"--oracle {oracle!r} is not supported; use one of {', '.join(ORACLES)}.")
    if trials < 1:
        raise QpelicanError("--trials must be at least 1.")
    if max_cost is not None and max_cost <= 0:
        raise QpelicanError("--max-cost must be a positive number of bit operations.")
    base = recipe.with_overrides(data=data, jets=jets)
    space = search_space(base)
    if pretrain_epochs is None and epochs:
        # as in `fit`: --epochs scales a finetune recipe's float pre-training with the QAT epochs
        pretrain_epochs = base.with_overrides(epochs=epochs).training.pretrain_epochs
    epochs = int(epochs or base.training.epochs)
    role = distributed_role()
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    project = os.path.join(out_dir, "kt")
    settings_path = os.path.join(out_dir, "tune.json")
    existing = os.path.exists(os.path.join(project, "oracle.json"))
    # Workers join whatever the chief started; the chief / a single process owns the directory.
    if role != "worker" and existing and not resume:
        raise QpelicanError(f"tune directory {out_dir} already holds a search; pass --resume to continue it, or "
                            "--out NEW_DIR to start another (delete the directory to start over).")

    recipe_bops = int(recipe_cost(base)["bops"])
    settings = {"recipe": base.to_dict(), "recipe_name": base.name, "space": _space_json(space), "oracle": oracle,
                "trials": int(trials), "epochs": epochs, "recipe_epochs": base.training.epochs,
                "max_cost": int(max_cost) if max_cost else None, "cost_weight": float(cost_weight),
                "seed": int(seed), "recipe_bops": recipe_bops, "data": os.fspath(data) if data else base.data.path,
                "jets": jets, "out_dir": os.path.abspath(out_dir),
                "pretrain_epochs": int(pretrain_epochs if pretrain_epochs is not None
                                       else base.training.pretrain_epochs)}
    if os.path.exists(settings_path) and (resume or role == "worker"):
        with open(settings_path) as f:
            before = json.load(f)
        diff = [k for k in ("recipe", "space", "oracle", "epochs", "max_cost", "cost_weight", "seed", "pretrain_epochs")
                if json.dumps(before.get(k), sort_keys=True) != json.dumps(settings.get(k), sort_keys=True)]
        if diff:
            raise QpelicanError(f"{out_dir}: this search was started with different settings ({', '.join(diff)} "
                                "differ); continue it with the same recipe and options, or use a new --out.")
    if role != "worker":
        _write_json(settings_path, settings)

    import warnings

    import keras_tuner as kt  # noqa: F401  (after qpelican selected tf-keras)

    # the Bayesian oracle's Gaussian process warns about length scales on every small search
    warnings.filterwarnings("ignore", message=".*length_scale.*", module="sklearn")
    warnings.filterwarnings("ignore", category=UserWarning, module="sklearn.gaussian_process")

    hp = hyperparameters(space)
    orc = _make_oracle(oracle, trials, epochs, seed, hp)
    ctx = TuneContext(base, space, settings, log=log)
    if role != "chief":
        if splits is None:
            from qpelican.training.train import load_splits

            n_max = max(space["n_constituents"] or [base.data.n_constituents])
            loader = base.model_copy(deep=True)
            loader.data.n_constituents = max(n_max, base.data.n_constituents)
            splits = load_splits(loader, progress=True)
        ctx.splits = splits
        dd = splits.description
        log(f"data: {dd.get('train_jets')} train / {dd.get('val_jets')} val / {dd.get('test_jets')} test jets "
            f"from {dd.get('path')}")
    QTuner = _tuner_class()
    tuner = QTuner(orc, ctx, directory=out_dir, project_name="kt", overwrite=False)
    if role is None:
        tuner.save()  # oracle.json + tuner0.json now, so an interrupted first trial resumes too
    if role == "chief":
        log(f"chief: serving the Keras Tuner oracle on {os.environ['KERASTUNER_ORACLE_IP']}:"
            f"{os.environ['KERASTUNER_ORACLE_PORT']} ({oracle}, {trials} trials); waiting for workers")
    done_before = _count_finished(project)
    if role is None and done_before:
        log(f"resuming: {done_before} trial(s) already finished, {max(trials - done_before, 0)} to go")
    try:
        tuner.search(verbose=0)
    except RuntimeError as exc:  # Keras Tuner stops after max_consecutive_failed_trials failures
        if "consecutive failures" not in str(exc):
            raise
        last = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
        raise QpelicanError(f"the search stopped: 5 trials in a row failed (last error: {last}). The trials' "
                            f"messages are in {project}/trial_<id>/trial.json; fix the cause and rerun with "
                            "--resume.") from None
    if role == "worker":
        log(f"worker {ctx.tuner_id}: the oracle has no more trials; done")
        return None
    return write_outputs(out_dir, log=log)


def _space_json(space):
    return json.loads(json.dumps(space))


def _count_finished(project):
    n = 0
    if not os.path.isdir(project):
        return 0
    for name in os.listdir(project):
        p = os.path.join(project, name, "trial.json")
        if name.startswith("trial_") and os.path.exists(p):
            with open(p) as f:
                if json.load(f).get("status") in ("COMPLETED", "FAILED"):
                    n += 1
    return n


# ---------------------------------------------------------------------------------- outputs
def collect_trials(out_dir):
    """One row per trial of the search in ``out_dir`` (from Keras Tuner's trial.json files, which
    the chief holds in distributed mode, plus the worker-side qpelican.json where present)."""
    project = os.path.join(os.fspath(out_dir), "kt")
    with open(os.path.join(out_dir, "tune.json")) as f:
        settings = json.load(f)
    from qpelican.config.recipe import recipe_from_dict

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
                  "test_rej50", "bops", "n_params", "seconds"):
            row[k] = metrics.get(k)
        if row["bops"] is not None:
            row["bops"] = int(row["bops"])
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


def pareto_front(rows):
    """Trained trials not dominated in (val AUC higher, BOPs lower), sorted by BOPs."""
    ok = [r for r in rows if r["status"] == "completed" and r.get("val_auc") is not None and r.get("bops")]
    ok.sort(key=lambda r: (r["bops"], -r["val_auc"]))
    front, best = [], -1.0
    for r in ok:
        if r["val_auc"] > best:
            front.append(r)
            best = r["val_auc"]
    return front


def write_outputs(out_dir, log=print):
    """trials.json/csv, pareto.json, pareto.png, pareto/point_<k>.yaml; print the front; return a summary."""
    import yaml

    out_dir = os.fspath(out_dir)
    settings, base, space, rows = collect_trials(out_dir)
    _write_json(os.path.join(out_dir, "trials.json"), rows)
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
                            f"test AUC {r['test_auc']:.4f}, {r['bops']:,} BOPs, "
                            f"searched with {r['epochs']} epochs per trial")
        path = os.path.join(pdir, f"point_{k}.yaml")
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            yaml.safe_dump(d, f, sort_keys=False)
        os.replace(tmp, path)
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
            with open(path2 + ".tmp", "w") as f:
                yaml.safe_dump(d2, f, sort_keys=False)
            os.replace(path2 + ".tmp", path2)
            point["recipe_finetune"] = os.path.relpath(path2, out_dir)
        points.append(point)
    counts = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    summary = {"recipe": settings["recipe_name"], "recipe_bops": settings["recipe_bops"],
               "max_cost": settings["max_cost"], "cost_weight": settings["cost_weight"],
               "oracle": settings["oracle"], "epochs_per_trial": settings["epochs"], "trials": counts,
               "objective": "score = val_auc - cost_weight * log2(bops / recipe_bops) within budget; "
                            "-1 - log2(bops / max_cost) over budget (not trained)",
               "float_reference": _float_references(out_dir), "front": points}
    _write_json(os.path.join(out_dir, "pareto.json"), summary)
    _plot(os.path.join(out_dir, "pareto.png"), rows, front, settings, summary["float_reference"])
    log(format_front(summary))
    log(f"written {out_dir}/trials.csv, trials.json, pareto.json, pareto.png and {len(points)} recipe(s) in "
        f"{pdir}/ (retrain one with: qpelican fit {pdir}/point_0.yaml --seeds 5)")
    if not front:
        failed = [r for r in rows if r["status"] == "failed"]
        if failed and len(failed) == len(rows):
            raise QpelicanError(f"all {len(rows)} trials failed; last error: {failed[-1]['message']}")
    return summary


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
    from io import StringIO

    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"Pareto front: validation AUC vs BOPs ({summary['recipe']}, recipe as written: "
                    f"{summary['recipe_bops']:,} BOPs)")
    for c in ("k", "trial", "BOPs", "val AUC", "test AUC", "val 1/eps_B@0.3", "widths (bits,integer)"):
        t.add_column(c)
    for p in summary["front"]:
        t.add_row(str(p["point"]), str(p["trial_id"]), f"{p['bops']:,}", f"{p['val_auc']:.4f}",
                  f"{p['test_auc']:.4f}", f"{p['val_rej30']:.1f}",
                  widths_label(p["widths"]) + (f" C={p['channels']}" if p.get("channels") else "")
                  + (f" N={p['n_constituents']}" if p.get("n_constituents") else ""))
    buf = StringIO()
    Console(file=buf, width=160, highlight=False).print(t)
    for r in summary.get("float_reference") or []:
        buf.write(f"float reference (shared pre-training, C={r['channels']}, {r['epochs']} epochs): "
                  f"val AUC {r['val_auc']:.4f}, test AUC {r['test_auc']:.4f}, {r['bops']:,} BOPs\n")
    return buf.getvalue().rstrip()


CSV_COLUMNS = ("trial_id", "status", "tuner_id", "score", "val_auc", "val_accuracy", "val_rej30", "val_rej50",
               "test_auc", "test_accuracy", "test_rej30", "test_rej50", "bops", "n_params", "channels",
               "n_constituents", "epochs", "seconds")


def _write_csv(path, rows):
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(list(CSV_COLUMNS) + [f"{t}_{k}" for t in TENSORS for k in ("bits", "integer")])
        for r in rows:
            w.writerow([r.get(c) for c in CSV_COLUMNS]
                       + [(r["widths"][t] or [None, None])[j] for t in TENSORS for j in (0, 1)])
    os.replace(tmp, path)


def _plot(path, rows, front, settings, refs=()):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    done = [r for r in rows if r["status"] == "completed" and r.get("val_auc") is not None]
    if done:
        ax.scatter([r["bops"] for r in done], [r["val_auc"] for r in done], s=16, c="0.6", label="trials")
    if front:
        xs = [r["bops"] for r in front]
        ys = [r["val_auc"] for r in front]
        ax.step(xs, ys, where="post", c="C3", lw=1)
        ax.scatter(xs, ys, s=30, c="C3", label="Pareto front", zorder=3)
        for r in front:
            ax.annotate(str(front.index(r)), (r["bops"], r["val_auc"]), fontsize=7, xytext=(3, -9),
                        textcoords="offset points")
    ax.axvline(settings["recipe_bops"], c="C0", ls=":", lw=1, label="recipe as written")
    for r in refs:
        ax.axhline(r["val_auc"], c="C2", ls="-.", lw=1, label=f"float C={r['channels']} (pre-training)")
    if settings.get("max_cost"):
        ax.axvline(settings["max_cost"], c="k", ls="--", lw=1, label="--max-cost")
    ax.set_xscale("log")
    ax.set_xlabel("bit operations per jet (qpelican.hw.cost.model_cost)")
    ax.set_ylabel("validation AUC")
    ax.set_title(f"qpelican tune: {settings['recipe_name']} ({settings['oracle']}, {settings['epochs']} epochs/trial)",
                 fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    tmp = path[:-4] + ".tmp.png"
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
