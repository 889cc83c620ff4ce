"""Training: one seed (:func:`train_one`) and a whole recipe over seeds (:func:`fit_recipe`).

Regime (DESIGN.md section 2, the paper's): AdamW (weight decay 0 by default), batch 512, binary
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
from dataclasses import dataclass, field

import numpy as np

import qpelican  # noqa: F401  (selects tf-keras before TensorFlow)
from qpelican.core.errors import QpelicanError
from qpelican.core.io import write_json as _write_json

INTERRUPT_ENV = "QPELICAN_INTERRUPT_AFTER_EPOCHS"


class TrainingInterrupted(KeyboardInterrupt):
    """Raised after a committed checkpoint when a run is asked to stop early (tests, signals)."""


# ---------------------------------------------------------------------------------------- data
@dataclass
class Splits:
    """In-memory train/val/test arrays: each a tuple (p4 float32 (B, N, 4) GeV, labels float32 (B,))."""

    train: tuple
    val: tuple
    test: tuple
    description: dict = field(default_factory=dict)

    def __post_init__(self):
        for name in ("train", "val", "test"):
            p4, y = getattr(self, name)
            p4 = np.ascontiguousarray(p4, dtype=np.float32)
            y = np.asarray(y, dtype=np.float32).reshape(-1)
            if p4.ndim != 3 or p4.shape[-1] != 4 or len(p4) != len(y):
                raise QpelicanError(f"{name} split: expected (p4 (B, N, 4), labels (B,)), got {p4.shape}, {y.shape}")
            setattr(self, name, (p4, y))


def _read_split(path, n_constituents, cap):
    from qpelican.data.readers import open_dataset

    ds = open_dataset(path, n_constituents)
    stop = ds.n_jets if cap is None else min(ds.n_jets, int(cap))
    p4, y = ds.read(0, stop)
    return p4, y.astype(np.float32)


def load_splits(recipe, data=None, progress=True) -> Splits:
    """Read the recipe's train/val/test splits into memory.

    ``data``: None (the recipe's data.path, or the cached simulated sample of ``data.jets`` jets
    when that is null), a path (directory with train/val/test.h5, or files), or a :class:`Splits`
    (returned as is). With a path, ``data.jets`` caps the training jets and ``val_jets`` /
    ``test_jets`` cap the other splits (the first rows of each file are read).
    """
    if isinstance(data, Splits):
        return data
    from qpelican.data.readers import resolve_splits

    d = recipe.data
    path = data if data is not None else d.path
    simulated = path is None
    if simulated:
        from qpelican.data.simulate import default_sample

        path = default_sample(recipe.simulated_jets(), seed=d.seed, progress=progress, detector=d.detector)
    files = resolve_splits(path)
    missing = [k for k in ("train", "val", "test") if not files.get(k)]
    if missing:
        raise QpelicanError(f"data {path}: no {', '.join(missing)} split found; training needs train, val and test "
                            "files (a directory with train.h5, val.h5 and test.h5).")
    caps = {"train": None if simulated else d.jets, "val": d.val_jets, "test": d.test_jets}
    arrays = {k: _read_split(files[k], d.n_constituents, caps[k]) for k in ("train", "val", "test")}
    desc = {"source": "simulated" if simulated else "files", "path": os.fspath(path),
            "files": {k: os.fspath(v) for k, v in files.items()}, "n_constituents": d.n_constituents,
            "beams": d.beams}
    for k, (p4, y) in arrays.items():
        desc[f"{k}_jets"] = int(len(y))
        desc[f"{k}_signal_fraction"] = round(float(np.mean(y)), 4) if len(y) else None
    if simulated:
        desc["simulated_jets"] = recipe.simulated_jets()
        desc["simulation_seed"] = d.seed
        desc["detector"] = d.detector
    return Splits(arrays["train"], arrays["val"], arrays["test"], desc)


# ------------------------------------------------------------------------------------ helpers




def bce_from_logits(y, logits):
    """Mean binary cross-entropy (float64) of labels y in {0,1} and logits."""
    z = np.asarray(logits, np.float64).reshape(-1)
    y = np.asarray(y, np.float64).reshape(-1)
    return float(np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))))


def predict(model, p4, batch_size=4096):
    """Logits (B,) of a model (no validation; p4 already has the model's N)."""
    import tensorflow as tf

    out = []
    fn = _predict_fn(model)
    for a in range(0, len(p4), batch_size):
        out.append(fn(tf.constant(p4[a:a + batch_size])).numpy().reshape(-1))
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def _predict_fn(model):
    fn = getattr(model, "_qpelican_predict", None)
    if fn is None:
        import tensorflow as tf

        fn = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
        model._qpelican_predict = fn
    return fn


def quick_metrics(y, logits):
    """loss, accuracy, auc of logits (validation monitoring)."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y).reshape(-1)
    logits = np.asarray(logits, np.float64).reshape(-1)
    ok = np.isfinite(logits).all()
    return {
        "loss": bce_from_logits(y, logits) if ok else float("nan"),
        "accuracy": float(np.mean((logits > 0) == (y > 0.5))) if ok else float("nan"),
        "auc": float(roc_auc_score(y, logits)) if ok and 0 < y.mean() < 1 else float("nan"),
    }


def test_metrics(y, logits):
    """Full test metrics: roc_metrics (auc, accuracy, rej30, rej50) + loss."""
    from qpelican.core.metrics import roc_metrics

    m = roc_metrics(y, logits, threshold=0.0)
    m["loss"] = bce_from_logits(y, logits)
    return m


def model_cost_or_none(model):
    """qpelican.hw.cost.model_cost(model), or {"error": ...} if the cost model cannot handle it."""
    try:
        from qpelican.hw.cost import model_cost

        return model_cost(model)
    except Exception as exc:  # full PELICAN etc.: report, do not fail a finished training
        return {"error": f"{type(exc).__name__}: {exc}"}


def _phases(recipe):
    """[(name, quantized, epochs, learning_rate)] of the training phases."""
    t = recipe.training
    if t.qat == "finetune":
        qat = ("qat", True, t.epochs, t.finetune_learning_rate or t.learning_rate / 4)
        if t.pretrain_epochs == 0:
            return [qat]
        return [("float", False, t.pretrain_epochs, t.learning_rate), qat]
    return [("qat" if recipe.quantized else "float", recipe.quantized, t.epochs, t.learning_rate)]


def _phase_at(phases, epoch):
    start = 0
    for i, (name, quantized, n, lr) in enumerate(phases):
        if epoch < start + n:
            return i, start
        start += n
    return len(phases) - 1, start - phases[-1][2]


def _build(recipe, quantized, seed, steps_per_epoch, epochs, lr):
    import tensorflow as tf
    import tf_keras

    from qpelican.nn.models import build_model
    from qpelican.training.schedule import make_schedule

    # Dropout draws from a tf.random.Generator whose state is a variable: it is checkpointed with
    # the model, so a resumed run continues the same random sequence.
    tf_keras.backend.experimental.enable_tf_random_generator()
    tf_keras.utils.set_random_seed(seed)
    cfg = recipe.to_model_config(quantized=quantized)
    model = build_model(cfg)
    t = recipe.training
    sched = make_schedule(t.schedule, lr, epochs, steps_per_epoch, t.lr_final)
    if t.optimizer == "adamw":
        opt = tf_keras.optimizers.AdamW(learning_rate=sched, weight_decay=t.weight_decay)
    else:
        opt = tf_keras.optimizers.Adam(learning_rate=sched)
    opt.build(model.trainable_variables)  # create slots now so checkpoints restore into them
    jit = t.jit_compile
    if jit == "auto":
        jit = True  # XLA: ~2.5x float, ~1.3x quantized (QAT trains in float32; see qpelican.nn.layers.base)
    model.compile(optimizer=opt, loss=tf_keras.losses.BinaryCrossentropy(from_logits=True), jit_compile=bool(jit))
    ckpt = tf.train.Checkpoint(model=model, optimizer=opt)
    return model, opt, ckpt, bool(jit)


def _init_from(model, source):
    """Copy the weights of a trained model (run directory or .keras file) into ``model``."""
    from qpelican.core.io import run_model_path

    path = run_model_path(source, what="training.init_from:")
    src = qpelican.load_model(path)
    a, b = src.get_weights(), model.get_weights()
    if [w.shape for w in a] != [w.shape for w in b]:
        raise QpelicanError(f"training.init_from: {path} has weights {[w.shape for w in a]} but this recipe's model "
                            f"has {[w.shape for w in b]}; use a model of the same architecture (channels, alpha, ...).")
    model.set_weights(a)


def _epoch_dataset(p4_t, y_t, n, batch_size, seed, epoch):
    import tensorflow as tf

    perm = np.random.default_rng([int(seed), int(epoch), 7]).permutation(n)
    ds = tf.data.Dataset.from_tensor_slices(perm).batch(batch_size)
    ds = ds.map(lambda i: (tf.gather(p4_t, i), tf.gather(y_t, i)[:, None]), num_parallel_calls=1, deterministic=True)
    return ds.prefetch(2)


def _reseed(model, seed, epoch):
    """Reseed every RNG the training step uses (dropout) from (seed, epoch), so that epoch e draws
    the same dropout masks whether or not the run was resumed before it."""
    import tf_keras

    base = int(np.random.default_rng([int(seed), int(epoch), 11]).integers(2**31 - 1))
    tf_keras.utils.set_random_seed(base)
    for i, layer in enumerate(model.layers):
        rng = getattr(layer, "_random_generator", None)
        if rng is None:
            continue
        rng._maybe_init()
        gen = getattr(rng, "_generator", None)
        if gen is None:
            raise QpelicanError(f"layer {layer.name}: its random generator is not resettable, so --resume could not "
                                "reproduce the run; this is a bug, please report it.")
        gen.reset_from_seed(base + 7919 * (i + 1))


def _save_model(model, path):
    tmp = path[:-len(".keras")] + f".tmp{os.getpid()}.keras"
    model.save(tmp)
    os.replace(tmp, path)


def _fmt_rate(x):
    return f"{x / 1000:.1f}k" if x >= 1000 else f"{x:.0f}"


# --------------------------------------------------------------------------------- train_one
def train_one(recipe, splits, seed, out_dir, resume=False, progress=True, log=None, on_epoch=None,
              max_epochs_this_run=None, baseline=None):
    """Train one seed of a recipe; return ``(model, metrics)``.

    Args:
      recipe: a :class:`qpelican.config.recipe.Recipe`.
      splits: a :class:`Splits` (e.g. from :func:`load_splits`; reuse it across seeds/trials).
      seed: training seed (weights initialisation, data order, dropout).
      out_dir: the seed's directory (checkpoints, model.keras, history.json, results.json).
      resume: continue from the last committed checkpoint in ``out_dir`` (a finished seed is
        loaded, not retrained).
      progress: print one line per epoch (through ``log``, default ``print``).
      on_epoch: optional callable(dict) called after each epoch with its history row.
      max_epochs_this_run: stop (raise :class:`TrainingInterrupted`) after this many epochs were
        trained in this call, once their checkpoint is committed (also from the environment
        variable QPELICAN_INTERRUPT_AFTER_EPOCHS).
      baseline: optional dict stored in results.json under "baseline".

    Returns: the best model (tf-keras, weights of the epoch with the lowest validation loss in the
    final phase) and its metrics dict: test ``accuracy, auc, rej30, rej50, loss``, ``val_loss``,
    ``best_epoch``, ``epochs``, ``seed``, ``n_params``, ``bops``, ``cost``, ``timing``.
    """
    import tensorflow as tf

    from qpelican.nn.models import count_parameters

    log = log or (lambda s: print(s, flush=True))
    if max_epochs_this_run is None and os.environ.get(INTERRUPT_ENV):
        max_epochs_this_run = int(os.environ[INTERRUPT_ENV])
    os.makedirs(out_dir, exist_ok=True)
    state_path = os.path.join(out_dir, "state.json")
    best_path = os.path.join(out_dir, "best.weights.h5")
    results_path = os.path.join(out_dir, "results.json")
    model_path = os.path.join(out_dir, "model.keras")

    if resume and os.path.exists(results_path) and os.path.exists(model_path):
        with open(results_path) as f:
            metrics = json.load(f)
        if progress:
            log(f"seed {seed}: already finished (results in {results_path})")
        return qpelican.load_model(model_path), metrics

    tp4, ty = splits.train
    vp4, vy = splits.val
    n_train = len(ty)
    bs = recipe.training.batch_size
    steps = math.ceil(n_train / bs)
    phases = _phases(recipe)
    total_epochs = sum(p[2] for p in phases)

    state = None
    if resume and os.path.exists(state_path):
        with open(state_path) as f:
            state = json.load(f)
        if state.get("seed") != seed or state.get("total_epochs") != total_epochs or state.get("n_train") != n_train:
            raise QpelicanError(
                f"{out_dir}: the checkpoint was written for seed {state.get('seed')}, {state.get('total_epochs')} "
                f"epochs, {state.get('n_train')} training jets; this run has seed {seed}, {total_epochs} epochs, "
                f"{n_train} jets. Resume with the same recipe and data, or start a new --out directory.")
    elif not resume:
        for name in os.listdir(out_dir):
            path = os.path.join(out_dir, name)
            if name.startswith("ckpt-"):
                shutil.rmtree(path, ignore_errors=True)
            elif name in ("state.json", "best.weights.h5", "results.json", "model.keras", "history.json"):
                os.remove(path)
    if state is None:
        state = {"seed": seed, "total_epochs": total_epochs, "n_train": n_train, "epochs_done": 0,
                 "checkpoint": None, "best_val_loss": None, "best_epoch": None, "history": [],
                 "train_seconds": 0.0, "eval_seconds": 0.0}

    p4_t = tf.constant(tp4)
    y_t = tf.constant(ty)
    model = opt = ckpt = None
    cur_phase = None
    trained_now = 0
    epoch = state["epochs_done"]
    while epoch < total_epochs:
        pi, pstart = _phase_at(phases, epoch)
        pname, quantized, pepochs, plr = phases[pi]
        if cur_phase != pi:
            prev = model
            model, opt, ckpt, jit = _build(recipe, quantized, seed + 1000 * pi, steps, pepochs, plr)
            if state["checkpoint"] and state.get("phase_index") == pi:
                ckpt.read(os.path.join(out_dir, state["checkpoint"], "ckpt")).assert_existing_objects_matched()
            elif pi == 0 and recipe.training.init_from:
                _init_from(model, recipe.training.init_from)
            elif pi > 0:
                # phase change: start the QAT model from the float weights of the previous phase
                if prev is None:
                    prev, _, pck, _ = _build(recipe, phases[pi - 1][1], seed + 1000 * (pi - 1), steps,
                                             phases[pi - 1][2], phases[pi - 1][3])
                    pck.read(os.path.join(out_dir, state["checkpoint"], "ckpt")).expect_partial()
                model.set_weights(prev.get_weights())
            cur_phase = pi
            if progress and epoch == pstart:
                log(f"seed {seed}: phase {pname} ({'quantized' if quantized else 'float'}), {pepochs} epochs, "
                    f"{n_train} training jets, batch {bs}, lr {plr:g}, XLA {'on' if jit else 'off'}")
        _reseed(model, seed, epoch)
        t0 = time.perf_counter()
        hist = model.fit(_epoch_dataset(p4_t, y_t, n_train, bs, seed, epoch), epochs=1, verbose=0)
        t_train = time.perf_counter() - t0
        t1 = time.perf_counter()
        val = quick_metrics(vy, predict(model, vp4))
        t_eval = time.perf_counter() - t1
        lr_now = float(opt.learning_rate.numpy()) if hasattr(opt.learning_rate, "numpy") else float(opt.learning_rate)
        row = {"epoch": epoch + 1, "phase": pname, "lr": lr_now, "loss": float(hist.history["loss"][-1]),
               "val_loss": val["loss"], "val_accuracy": val["accuracy"], "val_auc": val["auc"],
               "train_seconds": t_train, "jets_per_second": n_train / t_train}
        final_phase = pi == len(phases) - 1
        improved = final_phase and np.isfinite(val["loss"]) and (
            state["best_val_loss"] is None or val["loss"] < state["best_val_loss"])
        if improved:
            tmp = os.path.join(out_dir, f"best.tmp{os.getpid()}.weights.h5")
            model.save_weights(tmp)
            os.replace(tmp, best_path)
            state["best_val_loss"] = val["loss"]
            state["best_epoch"] = epoch + 1
        # commit: checkpoint directory (atomic rename), then state.json (atomic replace)
        name = f"ckpt-{epoch + 1:04d}"
        tmpdir = os.path.join(out_dir, f".{name}.tmp{os.getpid()}")
        shutil.rmtree(tmpdir, ignore_errors=True)
        ckpt.write(os.path.join(tmpdir, "ckpt"))
        final_dir = os.path.join(out_dir, name)
        shutil.rmtree(final_dir, ignore_errors=True)
        os.replace(tmpdir, final_dir)
        old = state["checkpoint"]
        state.update(epochs_done=epoch + 1, checkpoint=name, phase_index=pi)
        state["history"].append(row)
        state["train_seconds"] += t_train
        state["eval_seconds"] += t_eval
        _write_json(state_path, state)
        if old and old != name:
            shutil.rmtree(os.path.join(out_dir, old), ignore_errors=True)
        if progress:
            log(f"seed {seed} epoch {epoch + 1:>3}/{total_epochs} [{pname}] lr {lr_now:.2e}  loss {row['loss']:.4f}  "
                f"val_loss {val['loss']:.4f} acc {val['accuracy']:.4f} auc {val['auc']:.4f}  "
                f"{t_train:.1f}s {_fmt_rate(row['jets_per_second'])} jets/s" + ("  *best" if improved else ""))
        if on_epoch is not None:
            on_epoch(dict(row, seed=seed))
        epoch += 1
        trained_now += 1
        if max_epochs_this_run is not None and trained_now >= max_epochs_this_run and epoch < total_epochs:
            raise TrainingInterrupted(f"stopped after epoch {epoch} (checkpoint committed); rerun with --resume")

    # ---- final: best model, test metrics, files
    if model is None:  # resumed a run whose epochs were all done but results were not written
        pi = len(phases) - 1
        model, opt, ckpt, _ = _build(recipe, phases[pi][1], seed + 1000 * pi, steps, phases[pi][2], phases[pi][3])
    if not os.path.exists(best_path):
        raise QpelicanError(f"seed {seed}: validation loss was never finite (training diverged); lower the "
                            "learning rate or check the quantizer ranges.")
    model.load_weights(best_path)
    _save_model(model, model_path)
    t2 = time.perf_counter()
    logits = predict(model, splits.test[0])
    metrics = test_metrics(splits.test[1], logits)
    t_test = time.perf_counter() - t2
    cost = model_cost_or_none(model)
    history = state["history"]
    train_s = state["train_seconds"]
    metrics.update(
        seed=seed, best_epoch=state["best_epoch"], val_loss=state["best_val_loss"], epochs=total_epochs,
        n_params=count_parameters(model), n_params_all=int(sum(int(np.prod(w.shape)) for w in model.trainable_weights)),
        bops=cost.get("bops"), cost=cost,
        timing={"train_seconds": round(train_s, 3), "eval_seconds": round(state["eval_seconds"] + t_test, 3),
                "epochs": total_epochs, "train_jets": n_train,
                "jets_per_second": round(n_train * len(history) / train_s, 1) if train_s else None,
                "seconds_per_epoch": round(train_s / len(history), 3) if history else None},
        test_jets=int(len(splits.test[1])),
    )
    if baseline is not None:
        metrics["baseline"] = baseline
    _write_json(os.path.join(out_dir, "history.json"), history)
    np.save(os.path.join(out_dir, "test_logits.npy"), logits.astype(np.float32))
    _write_json(results_path, metrics)
    return model, metrics


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
    from qpelican.config.recipe import Recipe, load_recipe, recipe_from_dict
    from qpelican.training.results import mass_baselines, write_run_results

    if isinstance(recipe, (str, os.PathLike)):
        recipe = load_recipe(recipe)
    elif isinstance(recipe, dict):
        recipe = recipe_from_dict(recipe)
    elif not isinstance(recipe, Recipe):
        raise QpelicanError(f"fit_recipe: expected a Recipe, a path or a dict, got {type(recipe).__name__}")
    log = log or (lambda s: print(s, flush=True))
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    recipe_path = os.path.join(out_dir, "recipe.yaml")
    as_run = recipe.to_dict(resolved=True)
    if isinstance(data, (str, os.PathLike)):
        as_run["data"]["path"] = os.fspath(data)
    if resume and os.path.exists(recipe_path):
        import yaml

        with open(recipe_path) as f:
            before = yaml.safe_load(f)
        diff = _dict_diff(before, as_run)
        if diff:
            raise QpelicanError(f"{out_dir}: --resume with a different recipe than the run was started with "
                                f"(differs in: {', '.join(diff)}). Resume with the same recipe and options, "
                                "or start a new --out directory.")
    _write_text(recipe_path, _yaml_dump(as_run))

    splits = splits or load_splits(recipe, data, progress=progress)
    if progress:
        dd = splits.description
        log(f"data: {dd.get('train_jets')} train / {dd.get('val_jets')} val / {dd.get('test_jets')} test jets "
            f"from {dd.get('path')}")
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


def _write_text(path, text):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _yaml_dump(d):
    import yaml

    return yaml.safe_dump(d, sort_keys=False)


def _dict_diff(a, b, prefix=""):
    out = []
    keys = set(a or {}) | set(b or {})
    for k in sorted(keys):
        va, vb = (a or {}).get(k), (b or {}).get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _dict_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}")
    return out
