"""Learning-rate schedules, evaluated PER STEP (optimizer iteration), as a function of the
fractional epoch ``t = step / steps_per_epoch``.

The paper's regime (nanoPELICAN, section 4) for 140 epochs:

* epochs [0, 4): linear warm-up from ``lr / warmup_steps`` to ``lr``;
* epochs [4, 128): cosine annealing with warm restarts (SGDR), T0 = 4, Tmult = 2 — cycles of
  4, 8, 16, 32, 64 epochs (exactly 124); in each cycle the LR goes from ``lr`` down to ``lr_final``;
* epochs [128, 140): exponential decay ``lr_final * 0.5 ** (t - 128)`` (gamma = 0.5 per epoch),
  starting where the last cosine cycle ended.

For ``epochs != 140`` every duration (warm-up, T0, the decay's epoch unit) is scaled by
``epochs / 140``, so the shape is the same (5 cosine cycles; gamma = 0.5 per scaled epoch).

Because the LR is a pure function of the optimizer's iteration counter, a resumed run (which
restores the optimizer, iterations included) continues on exactly the same schedule.
"""
import math

import numpy as np
import tensorflow as tf
import tensorflow.experimental.numpy as tnp
import tf_keras

PAPER_EPOCHS = 140
PAPER_WARMUP = 4
PAPER_COSINE = 124
PAPER_T0 = 4
PAPER_GAMMA = 0.5


def paper_lr(t, lr, epochs=PAPER_EPOCHS, lr_final=1e-5, min_warmup=1e-3, xp=np):
    """Paper schedule at fractional epoch(s) ``t``, scalar or array.

    ``xp`` is the array module: numpy (plots, tests) or ``tf.experimental.numpy`` (the optimizer's
    schedule, traced per step), so both evaluate this one formula.
    """
    t = xp.asarray(t, dtype=xp.float64)
    f = epochs / PAPER_EPOCHS
    warm = PAPER_WARMUP * f
    cos_end = (PAPER_WARMUP + PAPER_COSINE) * f
    t0 = PAPER_T0 * f
    # warm-up
    warm_lr = lr * xp.maximum(t / warm, min_warmup) if warm > 0 else xp.full_like(t, lr)
    # cosine with warm restarts: cycle k spans t0 * (2^k - 1) .. t0 * (2^(k+1) - 1) after warm-up
    u = xp.maximum(t - warm, 0.0) / t0
    k = xp.floor(xp.log2(u + 1.0))
    start = xp.power(2.0, k) - 1.0
    length = xp.power(2.0, k)
    frac = xp.clip((u - start) / length, 0.0, 1.0)
    cos_lr = lr_final + 0.5 * (lr - lr_final) * (1.0 + xp.cos(math.pi * frac))
    # exponential decay
    dec_lr = lr_final * xp.power(PAPER_GAMMA, xp.maximum(t - cos_end, 0.0) / f)
    return xp.where(t < warm, warm_lr, xp.where(t < cos_end, cos_lr, dec_lr))


def make_schedule(kind, lr, epochs, steps_per_epoch, lr_final=1e-5):
    """A tf-keras ``LearningRateSchedule`` (per step) or a float for ``kind='constant'``.

    kind: "paper" (see module docstring), "cosine" (single cosine from lr to lr_final over all
    epochs) or "constant".
    """
    if kind == "constant":
        return float(lr)

    class _Schedule(tf_keras.optimizers.schedules.LearningRateSchedule):
        def __init__(self, kind, lr, epochs, steps_per_epoch, lr_final):
            self.kind, self.lr, self.epochs = kind, float(lr), float(epochs)
            self.steps_per_epoch, self.lr_final = int(steps_per_epoch), float(lr_final)

        def __call__(self, step):
            t = tf.cast(step, tf.float64) / self.steps_per_epoch
            lr, lrf = tf.constant(self.lr, tf.float64), tf.constant(self.lr_final, tf.float64)
            if self.kind == "cosine":
                frac = tf.clip_by_value(t / self.epochs, 0.0, 1.0)
                out = lrf + 0.5 * (lr - lrf) * (1.0 + tf.cos(math.pi * frac))
                return tf.cast(out, tf.float32)
            out = paper_lr(t, self.lr, self.epochs, self.lr_final, xp=tnp)
            return tf.cast(out, tf.float32)

        def get_config(self):
            return dict(kind=self.kind, lr=self.lr, epochs=self.epochs, steps_per_epoch=self.steps_per_epoch,
                        lr_final=self.lr_final)

    return _Schedule(kind, lr, epochs, steps_per_epoch, lr_final)
