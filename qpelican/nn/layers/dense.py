"""Channel-mixing dense layer on particle or pair arrays (PELICAN's embedding and messaging)."""
import math

import tensorflow as tf
import tf_keras

from qpelican.nn.layers.base import QuantizedLayer, edge_mask


class EdgeDense(QuantizedLayer):
    """Dense layer over the channel axis, shared by all entries, masked.

    ``y = Q_out(act(x @ Q_coef(W) + Q_bias(b))) * mask``. With ``log_features`` the input is
    first augmented with ``sign(x) log(1 + |x|)`` per channel (PELICAN's input embedding of d_ij).

    Inputs: ``[x, m]``, x of shape (B, N, N, C_in) (pairs) or (B, N, C_in) (particles), m (B, N).
    Output: same leading shape with C_out = ``units`` channels.
    """

    QUANTIZERS = ("coefficient", "bias", "output")

    def __init__(self, units, activation=None, log_features=False, coefficient_quantizer=None,
                 bias_quantizer=None, output_quantizer=None, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        self.activation = tf_keras.activations.get(activation)
        self.log_features = bool(log_features)
        self._init_quantizers(coefficient_quantizer=coefficient_quantizer, bias_quantizer=bias_quantizer,
                              output_quantizer=output_quantizer)

    def build(self, input_shape):
        c_in = int(input_shape[0][-1]) * (2 if self.log_features else 1)
        bound = math.sqrt(6.0 / (c_in + self.units))
        self.kernel = self.add_weight(name="kernel", shape=(c_in, self.units),
                                      initializer=tf_keras.initializers.RandomUniform(-bound, bound))
        self.bias = self.add_weight(name="bias", shape=(self.units,), initializer="zeros")
        super().build(input_shape)

    def call(self, inputs):
        x, m = inputs
        if self.log_features:
            x = tf.concat([x, tf.sign(x) * tf.math.log1p(tf.abs(x))], axis=-1)
        z = tf.tensordot(x, self.q("coefficient", self.kernel), axes=[[-1], [0]]) + self.q("bias", self.bias)
        y = self.q("output", self.activation(z))
        mask = edge_mask(m) if x.shape.rank == 4 else m[..., None]
        return y * tf.cast(mask, y.dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0][:-1]) + (self.units,)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(units=self.units, activation=tf_keras.activations.serialize(self.activation),
                   log_features=self.log_features, **self._quantizer_config())
        return cfg
