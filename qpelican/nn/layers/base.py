"""Shared machinery of qpelican layers: quantizer attributes, masks and the aggregate scale table."""
import math

import numpy as np
import tensorflow as tf
import tf_keras

from qpelican.core.errors import QpelicanError
from qpelican.nn.quant import fixed_format, get_quantizer, quantize, serialize_quantizer

# the per-particle inputs a model takes: features on the last axis, and how the message names them
MOMENTA = (4, "4-momenta", "(E, px, py, pz)")
CANDIDATES = (3, "Level-1 candidates", "(pT in GeV, eta_rel, phi_rel in steps of pi/720) (data.format: l1)")


def check_particle_shape(input_shape, layer, kind=MOMENTA):
    """Refuse an input that is not (B, N, features) of ``kind`` (MOMENTA or CANDIDATES)."""
    features, what, layout = kind
    shape = tuple(input_shape)
    if len(shape) != 3 or shape[-1] != features:
        raise QpelicanError(f"{layer}: got input of shape {shape}; expected {what} of shape (B, N, {features}) "
                            f"with {layout} on the last axis.")


class QuantizedLayer(tf_keras.layers.Layer):
    """Base class keeping QKeras quantizers QDense-style.

    Subclasses list their quantizer names in ``QUANTIZERS`` (e.g. ``("coefficient", "bias")``);
    each is stored as ``self.<name>_quantizer`` (the object), exposed in ``get_config()`` as
    ``<name>_quantizer`` (QKeras serialisation) and rounded with :meth:`q`.
    """

    QUANTIZERS = ()

    def _init_quantizers(self, **quantizers):
        for name in self.QUANTIZERS:
            q = get_quantizer(quantizers.get(f"{name}_quantizer"))
            setattr(self, f"{name}_quantizer", q)
            setattr(self, f"{name}_format", fixed_format(q))

    @property
    def quantized(self):
        """True when any quantizer is set: the layer then computes its sums exactly in float64."""
        return any(getattr(self, f"{n}_quantizer") is not None for n in self.QUANTIZERS)

    @property
    def compute_dtype_exact(self):
        return tf.float64 if self.quantized else tf.float32

    def _dtypes(self, training):
        """(aggregate dtype, O(N^2) dtype). In training both are float32: QAT only needs the
        rounding, not the last-LSB exactness that inference, evaluation and the firmware
        comparison get (and float64 O(N^2) arithmetic would cost a factor ~3 in speed)."""
        if training:
            return tf.float32, tf.float32
        return self.compute_dtype_exact, self.elementwise_dtype

    @property
    def elementwise_dtype(self):
        return self.compute_dtype_exact

    def q(self, name, x):
        """Round ``x`` onto the grid of this layer's ``<name>`` quantizer (identity for float)."""
        return quantize(x, getattr(self, f"{name}_format"))

    def get_quantizers(self):
        """Quantizer objects in QUANTIZERS order (QKeras layers expose the same method)."""
        return [getattr(self, f"{n}_quantizer") for n in self.QUANTIZERS]

    def _quantizer_config(self):
        return {f"{n}_quantizer": serialize_quantizer(getattr(self, f"{n}_quantizer")) for n in self.QUANTIZERS}


def particle_mask(p):
    """Particle mask m_i = [E_i != 0] of momenta (B, N, 4) -> (B, N), in p's dtype."""
    return tf.cast(tf.not_equal(p[..., 0], 0), p.dtype)


def edge_mask(m):
    """Edge mask m_ij = m_i m_j: (B, N) -> (B, N, N, 1)."""
    return (m[:, :, None] * m[:, None, :])[..., None]


def pair_output(d, m, zero_diagonal=True):
    """Pair values d (B, N, N) -> (B, N, N, 1), zero on padded particles' rows and columns and,
    with ``zero_diagonal``, on i = j: the invariants layers' common output form."""
    d = d[..., None] * edge_mask(m)
    if zero_diagonal:
        d = d * (1.0 - tf.eye(tf.shape(d)[1], dtype=d.dtype))[None, :, :, None]
    return d


def scale_table(n_max, nbar, powers, aggregation, alpha=None, table_bits=None):
    """Aggregate normalisers t_k(n) for multiplicities n = 0..n_max, in float64.

    ``t_k(n) = norm(n)^p_k * (n / nbar)^alpha_k`` with ``norm = 1/nbar`` ("sum") or ``1/n``
    ("mean"), ``p_k`` = ``powers[k]`` (1 for row/column sums and trace, 2 for the total sum).

    Args:
      powers: list of K normalisation powers.
      alpha: None or a (K, C) tensor of trainable exponents.
      table_bits: None (float) or W: each column (k, c) is rounded to W significant bits,
        ``t = min(round(t * 2^F), 2^W - 1) / 2^F`` with ``F = W - e`` and ``2^(e-1) <= max_n t < 2^e``
        — the unsigned W-bit integer table times a constant shift that the firmware stores. A
        negative alpha makes t(n) grow steeply towards small n; then e is capped so that the entry
        of a full jet, t(n_max), keeps at least W/2 significant bits, and the entries of the few
        jets with far fewer constituents saturate (otherwise t(n_max) could round to 0 and the
        quantized layer would ignore every full jet).

    Returns: (n_max + 1, K, C) tensor (C = 1 without alpha).
    """
    n = tf.maximum(tf.range(n_max + 1, dtype=tf.float64), 1.0)[:, None, None]  # n=0: empty jet
    p = tf.constant(np.asarray(powers, np.float64))[None, :, None]
    norm = tf.constant(1.0 / nbar, tf.float64) if aggregation == "sum" else 1.0 / n
    t = tf.pow(norm, p) * tf.ones_like(n)
    if alpha is not None:
        t = t * tf.pow(n / nbar, tf.cast(alpha, tf.float64)[None])
    if table_bits is None:
        return t
    e_max, e_full = (tf.floor(tf.math.log(v) / math.log(2.0)) + 1.0 for v in (tf.reduce_max(t, axis=0), t[-1]))
    frac = tf.stop_gradient(table_bits - tf.minimum(e_max, e_full + table_bits // 2))
    step = tf.pow(tf.constant(2.0, tf.float64), frac)
    t_int = tf.clip_by_value(tf.round(t * step), 0.0, 2.0**table_bits - 1.0)
    return t + tf.stop_gradient(t_int / step - t)


def table_frac_bits(table, table_bits):
    """Fractional bits F of each column of a quantized scale table (for the firmware)."""
    tmax = np.max(np.asarray(table), axis=0)
    return (table_bits - (np.floor(np.log2(tmax)) + 1)).astype(int)
