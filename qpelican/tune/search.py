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

``--cost luts`` replaces BOPs by the da4ml LUT estimate of each trial's model traced to RTL, with
the products that ``export-rtl`` maps to DSP48E2 slices counted as DSPs (recorded as ``dsps``)
(:func:`qpelican.rtl.exporter.rtl_estimate`; seconds per trial at N = 16, minutes at N = 80): the
budget check uses the untrained variant, the score and the front the trained model, whose zero and
power-of-two coefficients cost fewer LUTs. BOPs are recorded beside it either way.

The AUC is measured on the validation jets; test metrics are recorded separately and never used
for selection. The Pareto front (``pareto.json``) is over (validation AUC up, BOPs down) of the
trained within-budget trials.

Outputs (``--out DIR``)
-----------------------
``tune.json`` (settings), ``kt/`` (Keras Tuner project: oracle state, ``trial_<id>/trial.json``,
``trial_<id>/run/`` the trained model, ``trial_<id>/qpelican.json`` its metrics and widths),
``trials.json`` / ``trials.csv`` (one row per trial), ``pareto.json``, ``pareto.png`` and
``pareto/point_<k>.yaml`` (a ready-to-run recipe per front point, for ``qpelican fit``).

The package: :mod:`~qpelican.tune.space` (hyperparameters, recipe variants, their cost),
:mod:`~qpelican.tune.trials` (the Keras Tuner worker and one trial), :mod:`~qpelican.tune.front`
(trials, Pareto front, its recipes and plot) and this module, the search itself.
"""
import json
import os
import warnings

import keras_tuner as kt

from qpelican.config.recipe import Recipe, load_recipe
from qpelican.config.search import (COST_AXES, DEFAULT_COST_AXIS, DEFAULT_COST_WEIGHT, DEFAULT_ORACLE,
                                   DEFAULT_TRIALS, ORACLES)
from qpelican.core.errors import QpelicanError
from qpelican.core.io import write_json
from qpelican.training.session import prepare_threads
from qpelican.training.splits import load_splits
from qpelican.tune.front import write_outputs
from qpelican.tune.space import hyperparameters, recipe_cost, search_space
from qpelican.tune.trials import QTuner, TuneContext



def make_oracle(kind, trials, epochs, seed, hp):
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


def tune(recipe, out_dir, data=None, epochs=None, jets=None, trials=DEFAULT_TRIALS, oracle=DEFAULT_ORACLE, max_cost=None,
         cost_weight=DEFAULT_COST_WEIGHT, resume=False, seed=0, log=print, splits=None, pretrain_epochs=None,
         on_trial_end=None, cost=DEFAULT_COST_AXIS):
    """Run (or continue, or serve/work in distributed mode) a bit-width search; return the summary dict
    of :func:`write_outputs` (None on a distributed worker, whose results the chief writes).

    Args:
      recipe: a Recipe or a YAML path. ``data``/``jets`` override the data section (as ``fit``),
        ``epochs`` the epochs per trial (the front's recipes keep the recipe's own epochs).
      trials: number of trials (Keras Tuner ``max_trials``; also the cap for hyperband).
      oracle: random | bayesian | hyperband.  max_cost: budget on the cost axis.  cost_weight: see
        module doc.
      resume: continue the search in ``out_dir`` (finished trials are kept, the interrupted one
        resumes its checkpoint).  seed: oracle seed (training uses the recipe's seed).
      splits: preloaded :class:`qpelican.training.train.Splits` (tests, benchmarks).
      pretrain_epochs: float pre-training epochs of a ``qat: finetune`` recipe (default: the
        recipe's ``pretrain_epochs``); the pre-training is shared by all trials (one per C).
      cost: the hardware-cost axis, "bops" (qpelican.hw.cost) or "luts" (the da4ml LUT estimate of
        each trial's traced RTL); ``max_cost`` and the objective are in its units.
      on_trial_end: optional callable(finished trials of this worker) after each trial; raising
        KeyboardInterrupt from it stops the search (finished trials are kept).
    """
    if isinstance(recipe, (str, os.PathLike)):
        recipe = load_recipe(recipe)
    if not isinstance(recipe, Recipe):
        raise QpelicanError(f"tune: expected a Recipe or a path, got {type(recipe).__name__}")
    if oracle not in ORACLES:
        raise QpelicanError(f"--oracle {oracle!r} is not supported; use one of {', '.join(ORACLES)}.")
    if cost not in COST_AXES:
        raise QpelicanError(f"--cost {cost!r} is not supported; use one of {', '.join(COST_AXES)}.")
    if trials < 1:
        raise QpelicanError("--trials must be at least 1.")
    if max_cost is not None and max_cost <= 0:
        raise QpelicanError(f"--max-cost must be a positive number of {COST_AXES[cost][0]}.")
    base = recipe.with_overrides(data=data, jets=jets)
    prepare_threads(base)
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
    if role is None and resume and not existing:
        raise QpelicanError(f"--resume: tune directory {out_dir} holds no search to continue (no kt/oracle.json); "
                            "drop --resume to start a new search there, or give the --out of the interrupted one.")

    base_cost = recipe_cost(base, cost)
    settings = {"recipe": base.to_dict(), "recipe_name": base.name, "space": space_json(space), "oracle": oracle,
                "trials": int(trials), "epochs": epochs, "recipe_epochs": base.training.epochs,
                "max_cost": int(max_cost) if max_cost else None, "cost_weight": float(cost_weight),
                "seed": int(seed), "recipe_bops": int(base_cost["bops"]), "cost": cost,
                "recipe_cost": base_cost["cost"], "data": os.fspath(data) if data else base.data.path,
                "jets": jets, "out_dir": os.path.abspath(out_dir),
                "pretrain_epochs": int(pretrain_epochs if pretrain_epochs is not None
                                       else base.training.pretrain_epochs)}
    if os.path.exists(settings_path) and (resume or role == "worker"):
        check_same_settings(settings_path, settings, out_dir)
    if role != "worker":
        write_json(settings_path, settings)

    # the Bayesian oracle's Gaussian process warns about length scales on every small search
    warnings.filterwarnings("ignore", message=".*length_scale.*", module="sklearn")
    warnings.filterwarnings("ignore", category=UserWarning, module="sklearn.gaussian_process")

    hp = hyperparameters(space)
    orc = make_oracle(oracle, trials, epochs, seed, hp)
    ctx = TuneContext(base, space, settings, log=log)
    if role != "chief":
        if splits is None:
            n_max = max(space["n_constituents"] or [base.data.n_constituents])
            loader = base.model_copy(deep=True)
            loader.data.n_constituents = max(n_max, base.data.n_constituents)
            splits = load_splits(loader, progress=True)
        ctx.splits = splits
        dd = splits.description
        log(f"data: {dd.get('train_jets')} train / {dd.get('val_jets')} val / {dd.get('test_jets')} test jets "
            f"from {dd.get('path')}")
    tuner = QTuner(orc, ctx, on_trial_end=on_trial_end, directory=out_dir, project_name="kt", overwrite=False)
    if role is None:
        tuner.save()  # oracle.json + tuner0.json now, so an interrupted first trial resumes too
    if role == "chief":
        log(f"chief: serving the Keras Tuner oracle on {os.environ['KERASTUNER_ORACLE_IP']}:"
            f"{os.environ['KERASTUNER_ORACLE_PORT']} ({oracle}, {trials} trials); waiting for workers")
    done_before = count_finished(project)
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


def check_same_settings(settings_path, settings, out_dir):
    """Refuse to continue a search with settings other than those it was started with."""
    with open(settings_path) as f:
        before = json.load(f)
    before.setdefault("cost", DEFAULT_COST_AXIS)  # searches written before the LUT axis existed
    diff = [k for k in ("recipe", "space", "oracle", "epochs", "max_cost", "cost_weight", "seed", "pretrain_epochs",
                        "cost")
            if json.dumps(before.get(k), sort_keys=True) != json.dumps(settings.get(k), sort_keys=True)]
    if diff:
        raise QpelicanError(f"{out_dir}: this search was started with different settings ({', '.join(diff)} "
                            "differ); continue it with the same recipe and options, or use a new --out.")


def space_json(space):
    return json.loads(json.dumps(space))


def count_finished(project):
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
