"""The pieces of one training phase: phases of a recipe, the compiled model and optimizer, the
epoch's batches and the reseeding that makes a resumed run repeat an uninterrupted one."""
import numpy as np
import tensorflow as tf
import tf_keras

from qpelican.config.model import DEFAULTS as MODEL_DEFAULTS
from qpelican.core.errors import QpelicanError
from qpelican.core.io import run_model_path
from qpelican.nn import fasttrain
from qpelican.nn.compat import layer_generator
from qpelican.nn.fold import transfer_weights
from qpelican.nn.models import build_model
from qpelican.nn.serialize import load_model
from qpelican.training.schedule import make_schedule


def prepare_threads(recipe):
    """Before a run's first TensorFlow op: a nanoPELICAN trains on the kernels, so TensorFlow gets
    one thread (:func:`qpelican.nn.fasttrain.leave_cores_to_kernels`); full PELICAN keeps
    TensorFlow's pools, which its XLA step uses. Returns whether TensorFlow's threads were set."""
    nano = (recipe.model.architecture or MODEL_DEFAULTS["architecture"]) == "nano"
    return nano and fasttrain.leave_cores_to_kernels()


def phases_of(recipe):
    """[(name, quantized, epochs, learning_rate)] of the training phases."""
    t = recipe.training
    if t.qat == "finetune":
        qat = ("qat", True, t.epochs, t.finetune_learning_rate or t.learning_rate / 4)
        if t.pretrain_epochs == 0:
            return [qat]
        return [("float", False, t.pretrain_epochs, t.learning_rate), qat]
    return [("qat" if recipe.quantized else "float", recipe.quantized, t.epochs, t.learning_rate)]


def phase_at(phases, epoch):
    """(index of the phase that trains ``epoch``, the first epoch of that phase)."""
    start = 0
    for i, (name, quantized, n, lr) in enumerate(phases):
        if epoch < start + n:
            return i, start
        start += n
    return len(phases) - 1, start - phases[-1][2]


# XLA makes a training step ~2x (float) to ~1.3x (QAT) faster, but compiling it costs 5-12 s per
# phase. Measured on the flagship at N = 16 (3,200 jets, 7 steps per epoch, loaded 2-core machine):
# 0.5 s per epoch with XLA, 1.0 s without, so compiling pays off after ~150 steps and clearly after
# a few hundred. Below XLA_MIN_STEPS a phase (and each start of it) trains without XLA.
XLA_MIN_STEPS = 500


def build_training(recipe, quantized, seed, steps_per_epoch, epochs, lr):
    """(compiled model, optimizer, checkpoint, XLA on) of one training phase."""
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
        jit = steps_per_epoch * epochs >= XLA_MIN_STEPS
    model.compile(optimizer=opt, loss=tf_keras.losses.BinaryCrossentropy(from_logits=True), jit_compile=bool(jit))
    ckpt = tf.train.Checkpoint(model=model, optimizer=opt)
    return model, opt, ckpt, bool(jit)


def init_from(model, source, x_sample):
    """Copy the weights of a trained model (run directory or .keras file) into ``model``, folding
    its BatchNorms when ``model`` is their fixed-point twin (``x_sample``: training inputs)."""
    path = run_model_path(source, what="training.init_from:")
    try:
        transfer_weights(load_model(path), model, x_sample)
    except QpelicanError as exc:
        raise QpelicanError(f"training.init_from: {path}: {exc}") from None


def epoch_order(n, seed, epoch):
    """The order of the ``n`` training jets in epoch ``epoch``: a pure function of (seed, epoch)."""
    return np.random.default_rng([int(seed), int(epoch), 7]).permutation(n)


def epoch_dataset(p4_t, y_t, n, batch_size, seed, epoch):
    """The batches of one epoch (for ``model.fit``), in :func:`epoch_order`."""
    perm = tf.constant(epoch_order(n, seed, epoch), tf.int64)
    # one dataset element per batch: a dataset of single jet indices costs ~5 ms per batch of 512
    ds = tf.data.Dataset.range(-(-n // batch_size)).map(
        lambda k: perm[k * batch_size:tf.minimum((k + 1) * batch_size, n)])
    ds = ds.map(lambda i: (tf.gather(p4_t, i), tf.gather(y_t, i)[:, None]), num_parallel_calls=1, deterministic=True)
    return ds.prefetch(2)


def train_epoch(model, p4_t, y_t, n, batch_size, seed, epoch):
    """Train a compiled model for one epoch over the first ``n`` jets in the order of
    :func:`epoch_dataset`; returns the epoch's mean training loss.

    A nanoPELICAN trains through the fused kernels of :mod:`qpelican.nn.fasttrain` (the same
    gradients as ``model.fit``, without its (B, N, N, C) arrays); any other model through
    ``model.fit`` (compiled with XLA or not, :func:`build_training`)."""
    step = fasttrain.train_step(model)
    if isinstance(step, str):
        ds = epoch_dataset(p4_t, y_t, n, batch_size, seed, epoch)
        return float(model.fit(ds, epochs=1, verbose=0).history["loss"][-1])
    order = epoch_order(n, seed, epoch).astype(np.int32)
    total = 0.0
    for a in range(0, n, batch_size):
        idx = order[a:a + batch_size]
        total += float(step(p4_t, y_t, tf.constant(idx))) * len(idx)  # weighted by jets, as model.fit's loss
    return total / max(n, 1)


def training_path(model):
    """How :func:`train_epoch` trains a model: "kernels" or "model.fit (<why not the kernels>)"."""
    tp = fasttrain.train_plan(model)
    return "kernels" if not isinstance(tp, str) else f"model.fit ({tp})"


def reseed(model, seed, epoch):
    """Reseed every RNG the training step uses (dropout) from (seed, epoch), so that epoch e draws
    the same dropout masks whether or not the run was resumed before it."""
    base = int(np.random.default_rng([int(seed), int(epoch), 11]).integers(2**31 - 1))
    tf_keras.utils.set_random_seed(base)
    for i, layer in enumerate(model.layers):
        if getattr(layer, "_random_generator", None) is None:  # layers without random draws
            continue
        gen = layer_generator(layer)
        if gen is None:
            raise QpelicanError(f"layer {layer.name}: its random generator is not resettable, so --resume could not "
                                "reproduce the run; this is a bug, please report it.")
        gen.reset_from_seed(base + 7919 * (i + 1))
