"""Dropout for pair tensors: one random seed per jet, a hash of (seed, entry index) per entry."""
import tensorflow as tf
import tf_keras

from qpelican.nn.compat import layer_generator, smart_cond

LEVELS = 1 << 16


def _u32(v):
    return tf.constant(v, tf.uint32)


def keep_mask(seeds, shape, threshold):
    """Keep flags of inverted dropout for entries of ``shape`` (B, ...): 1.0 where the 16-bit hash
    of (jet seed, entry index) is at least ``threshold``, else 0.0, float32.

    The hash is one xorshift-multiply round on ``index * 0x9E3779B9 + seed_b`` (index = the entry's
    position within its jet), and its top 16 bits are compared. It is a pure function of the seeds,
    so the mask is never stored: XLA computes it inside the fused elementwise passes that use it,
    the gradient recomputes it, and as XLA recomputes it in every consumer of the dropped array it
    is kept to four integer operations (MurmurHash3's full finaliser made the paper's dropout cost
    3x in a quantized training step, this 1.7x).
    """
    per_jet = 1
    for d in shape[1:]:
        per_jet *= int(d)
    idx = tf.reshape(tf.range(per_jet, dtype=tf.int32), [1, *(int(d) for d in shape[1:])])
    h = tf.bitcast(idx, tf.uint32) * _u32(0x9E3779B9)
    h = h + tf.reshape(tf.bitcast(seeds, tf.uint32), [-1] + [1] * (len(shape) - 1))
    h = tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, _u32(15))) * _u32(0x2C1B3C6D)
    return tf.cast(tf.bitwise.right_shift(h, _u32(16)) >= _u32(threshold), tf.float32)


class PairDropout(tf_keras.layers.Dropout):
    """Inverted dropout for the O(N^2) pair tensors of PELICAN: ``y = x * keep / (1 - rate)``.

    Same contract as ``tf_keras.layers.Dropout`` (identity at inference), but the random stream
    gives one 32-bit seed per jet, and the keep flag of each entry is a hash of (seed, entry
    index) (:func:`keep_mask`): keep = (16-bit hash >= round(rate * 2^16)). Random numbers for
    every one of the B*N^2*C entries, and a stored mask for the backward pass, made dropout the
    dominant cost of a training step (4x slower than none at N = 80); the hash is a few integer
    operations inside the fused elementwise pass, recomputed in the backward pass. The rate is used
    as ``round(rate * 2^16) / 2^16`` (0.05 -> 0.0500031).

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
