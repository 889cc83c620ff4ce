"""Dropout for pair tensors, drawing 16 random bits per entry instead of a float."""
import tensorflow as tf
import tf_keras

from qpelican.nn.compat import layer_generator, smart_cond

_LEVELS = 1 << 16


class PairDropout(tf_keras.layers.Dropout):
    """Inverted dropout for the O(N^2) pair tensors of PELICAN: ``y = x * keep / (1 - rate)``.

    Same contract as ``tf_keras.layers.Dropout`` (identity at inference), but each 32-bit word of
    the random stream serves two entries: keep = (16-bit draw >= round(rate * 2^16)). Uniform
    floats over B*N^2*C entries made dropout the dominant cost of a training step (3.7x slower than
    none at N = 80); this draws half the words and skips the float conversion. The rate is used as
    ``round(rate * 2^16) / 2^16`` (0.05 -> 0.0500031).

    With ``tf_keras.backend.experimental.enable_tf_random_generator()`` (as ``qpelican fit`` sets)
    the bits come from the layer's checkpointed ``tf.random.Generator``; otherwise from a stateless
    draw seeded by the global RNG.

    Input: any shape (B, ..., C). Output: same shape.
    """

    def __init__(self, rate, noise_shape=None, seed=None, **kwargs):
        if noise_shape is not None:
            raise ValueError("PairDropout draws an independent mask per entry; noise_shape is not supported.")
        super().__init__(rate, seed=seed, **kwargs)
        self.threshold = int(round(float(rate) * _LEVELS))

    def call(self, inputs, training=None):
        if training is None:
            training = tf_keras.backend.learning_phase()
        if self.threshold == 0:
            return tf.identity(inputs)
        return smart_cond(training, lambda: self._drop(inputs), lambda: tf.identity(inputs))

    def _bits(self, shape):
        gen = layer_generator(self)
        if gen is not None:
            return gen.uniform_full_int(shape, dtype=tf.int32)
        seed = tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int32)
        return tf.random.stateless_uniform(shape, seed=seed, minval=None, maxval=None, dtype=tf.int32)

    def _drop(self, x):
        c = int(x.shape[-1])
        words = (c + 1) // 2
        lead = tf.shape(x)[:-1]
        u = self._bits(tf.concat([lead, [words]], 0))
        bits = tf.reshape(tf.bitcast(u, tf.uint16), tf.concat([lead, [2 * words]], 0))[..., :c]
        keep = tf.cast(bits >= tf.constant(self.threshold, tf.uint16), x.dtype)
        return x * keep * (_LEVELS / (_LEVELS - self.threshold))
