"""Dropout for pair tensors: one random seed per jet, the dropped entries drawn as geometric gaps."""
import math

import numpy as np
import tensorflow as tf
import tf_keras

from qpelican.nn.compat import layer_generator, smart_cond

LEVELS = 1 << 16


def _u32(v):
    return tf.constant(v, tf.uint32)


def gap_table(threshold):
    """(LEVELS,) int32: the gap to the next dropped entry for each 16-bit uniform u, the inverse
    distribution function of the geometric law of dropout rate p = threshold / 2^16:
    ``1 + floor(log((u + 1/2) / 2^16) / log(1 - p))``. Over the table, the gaps' mean is 1/p to
    1e-5 relative (p = 0.05: a rate of 0.0500006); the longest gap is where the 2^-16 tail ends."""
    u = (np.arange(LEVELS) + 0.5) / LEVELS
    return (1 + np.floor(np.log(u) / math.log1p(-threshold / LEVELS))).astype(np.int32)


def draws(entries, threshold):
    """How many gaps a jet of ``entries`` entries draws: the mean number of dropped entries plus
    8 standard deviations and 16 (a jet with more is about as likely as 1 in 10^15; its entries
    past the last draw are kept)."""
    p = threshold / LEVELS
    return int(math.ceil(entries * p + 8.0 * math.sqrt(entries * p * (1.0 - p)) + 16))


def _hash16(index, seeds):
    """The 16-bit hash of (draw index, jet seed): one xorshift-multiply round on
    ``index * 0x9E3779B9 + seed`` (uint32), its top 16 bits."""
    h = tf.bitcast(index, tf.uint32)[None, :] * _u32(0x9E3779B9) + tf.bitcast(seeds, tf.uint32)[:, None]
    h = tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, _u32(15))) * _u32(0x2C1B3C6D)
    return tf.cast(tf.bitwise.right_shift(h, _u32(16)), tf.int32)


def keep_mask(seeds, shape, threshold):
    """Keep flags of inverted dropout for entries of ``shape`` (B, ...), float32: 0.0 at the
    dropped entries of each jet, 1.0 elsewhere.

    Each entry is dropped independently with probability p = threshold / 2^16, drawn the way a
    sparse sampler does: jet b drops the entries at positions (in the jet's row-major order)
    ``P_k = G_1 + ... + G_k - 1``, with geometric gaps ``G_k = gap_table[hash16(k, seed_b)]``.
    A jet draws ``draws(entries, threshold)`` gaps, about 5% of its entries at p = 0.05, so the
    training kernels (:mod:`qpelican.nn.fasttrain`) touch only the dropped entries; here they are
    scattered into the mask. It is a pure function of the seeds: the gradient recomputes it.
    """
    per_jet = 1
    for d in shape[1:]:
        per_jet *= int(d)
    k = draws(per_jet, threshold)
    gaps = tf.gather(tf.constant(gap_table(threshold)), _hash16(tf.range(k, dtype=tf.int32), seeds))
    pos = tf.minimum(tf.cumsum(gaps, axis=1) - 1, per_jet)  # past the end: the extra column, cut below
    batch = tf.shape(seeds)[0]
    rows = tf.broadcast_to(tf.range(batch)[:, None], tf.shape(pos))
    dropped = tf.scatter_nd(tf.stack([rows, pos], -1), tf.ones_like(pos, tf.float32), [batch, per_jet + 1])
    return tf.reshape(1.0 - tf.minimum(dropped[:, :per_jet], 1.0), [-1, *(int(d) for d in shape[1:])])


class PairDropout(tf_keras.layers.Dropout):
    """Inverted dropout for the O(N^2) pair tensors of PELICAN: ``y = x * keep / (1 - rate)``.

    Same contract as ``tf_keras.layers.Dropout`` (identity at inference), but the random stream
    gives one 32-bit seed per jet, from which the dropped entries are drawn as geometric gaps
    (:func:`keep_mask`), each entry independently with probability ``round(rate * 2^16) / 2^16``
    (0.05 -> 0.0500031). Random numbers for every one of the B*N^2*C entries, and a stored mask for
    the backward pass, made dropout the dominant cost of a training step (4x slower than none at
    N = 80); the gaps are about one draw per dropped entry, and the training kernels correct only
    those entries.

    With ``tf_keras.backend.experimental.enable_tf_random_generator()`` (as ``qpelican fit`` sets)
    the seeds come from the layer's checkpointed ``tf.random.Generator`` (a resumed run draws the
    same masks); otherwise from a stateless draw seeded by the global RNG.

    Input: any shape (B, ..., C). Output: same shape.
    """

    def __init__(self, rate, noise_shape=None, seed=None, **kwargs):
        if noise_shape is not None:
            raise ValueError("PairDropout draws an independent mask per entry; noise_shape is not supported.")
        super().__init__(rate, seed=seed, **kwargs)
        self.threshold = int(round(float(rate) * LEVELS))

    def call(self, inputs, training=None):
        if training is None:
            training = tf_keras.backend.learning_phase()
        if self.threshold == 0:
            return tf.identity(inputs)
        return smart_cond(training, lambda: self._drop(inputs), lambda: tf.identity(inputs))

    def draw_seeds(self, batch):
        """The next ``batch`` jet seeds (int32) of this layer's random stream (one draw per step)."""
        gen = layer_generator(self)
        if gen is not None:
            return gen.uniform_full_int([batch], dtype=tf.int32)
        seed = tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int32)
        return tf.random.stateless_uniform([batch], seed=seed, minval=None, maxval=None, dtype=tf.int32)

    def _drop(self, x):
        seeds = self.draw_seeds(tf.shape(x)[0])
        shape, threshold = x.shape, self.threshold
        scale = LEVELS / (LEVELS - threshold)

        @tf.custom_gradient
        def drop(x):
            def grad(g):
                return g * tf.cast(keep_mask(seeds, shape, threshold), g.dtype) * scale

            return x * tf.cast(keep_mask(seeds, shape, threshold), x.dtype) * scale, grad

        return drop(x)
