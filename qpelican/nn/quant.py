"""Fixed-point quantizers: the one place where a QKeras quantizer becomes a grid.

Layers accept QKeras quantizers as strings (``"quantized_bits(8,0,alpha=1)"``), objects or
``None``/``"float"`` (no quantization), keep them for ``get_config()`` (serialized the way QKeras's
``QDense`` does, which is what hls4ml's quantizer parsing reads) and round with :func:`quantize`.

Supported for bit-exact firmware: ``quantized_bits(bits, integer, alpha=1 or None)`` (signed
unless ``keep_negative=False``) and ``quantized_relu(bits, integer)``. They map to
``ap_fixed<bits, integer+1, AP_RND_CONV, AP_SAT>`` / ``ap_ufixed<bits, integer, AP_RND_CONV, AP_SAT>``:
round half to even, saturate — exactly what QKeras does (checked against QKeras in the tests).

:func:`quantize` reproduces QKeras's rounding in any float dtype. The layers use it in float64
for the sums whose exact value needs more than float32's 24-bit significand, so the Keras model
and the HLS C++ round the same exact number (docs/fixed_point.md, "Exactness in Keras").
"""
import math
import warnings

import tensorflow as tf
from qkeras import quantizers as qkeras_quantizers
from tf_keras import constraints

from qpelican.core.errors import QpelicanError
from qpelican.core.formats import FLOAT32_BITS, USAGE, FixedFormat, is_float, parse_format


def get_quantizer(q):
    """A QKeras quantizer object from a string, dict or object; ``None`` for float."""
    if is_float(q):
        return None
    if isinstance(q, str):
        parse_format(q)  # refuse what has no firmware equivalent before QKeras sees the string
    try:
        return qkeras_quantizers.get_quantizer(q)
    except Exception as exc:  # QKeras raises ValueError/NameError/SyntaxError on bad strings
        raise QpelicanError(f"cannot parse quantizer {q!r} ({exc}); {USAGE}.") from None


def serialize_quantizer(q):
    """Config form of a quantizer (QKeras's serialisation, as ``QDense.get_config`` writes it)."""
    if q is None:
        return None
    with warnings.catch_warnings():  # tf-keras warns for every non-Constraint object; QKeras relies on it
        warnings.simplefilter("ignore", UserWarning)
        return constraints.serialize(q)


def fixed_format(q):
    """The :class:`FixedFormat` of a quantizer, ``None`` for float; errors for unsupported ones."""
    if isinstance(q, str) or q is None:
        return parse_format(q)
    name = type(q).__name__
    if name == "quantized_bits":
        if q.alpha not in (None, 1, 1.0) or getattr(q, "symmetric", 0):
            raise QpelicanError(
                f"quantizer {q} uses alpha={q.alpha!r} or symmetric=1, which has no fixed-point "
                "equivalent in firmware; use alpha=1 (e.g. 'quantized_bits(8,0,alpha=1)')."
            )
        return FixedFormat(int(q.bits), int(q.integer), bool(q.keep_negative))
    if name == "quantized_relu":
        if getattr(q, "negative_slope", 0) or getattr(q, "use_sigmoid", 0):
            raise QpelicanError(f"quantizer {q}: negative_slope/use_sigmoid are not supported; use quantized_relu(bits, integer).")
        return FixedFormat(int(q.bits), int(q.integer), False)
    raise QpelicanError(
        f"quantizer {q} ({name}) is not supported; use quantized_bits(bits, integer, alpha=1) "
        "or quantized_relu(bits, integer)."
    )


def quantize(x, q):
    """Round ``x`` onto the grid of quantizer ``q`` (half to even, saturating), straight-through.

    Works in the dtype of ``x`` (float32 or float64). ``q`` is a quantizer, a :class:`FixedFormat`
    or None (identity). Gradient: identity inside the range, zero where it saturates (as QKeras).
    """
    fmt = q if isinstance(q, FixedFormat) or q is None else fixed_format(q)
    if fmt is None:
        return x
    scale = tf.constant(2.0 ** fmt.frac, x.dtype)
    lo = tf.constant(fmt.min, x.dtype)
    hi = tf.constant(fmt.max, x.dtype)
    clipped = tf.clip_by_value(x, lo, hi)
    rounded = tf.clip_by_value(tf.round(x * scale) / scale, lo, hi)
    return clipped + tf.stop_gradient(rounded - clipped)


def float32_exact(terms, frac_bits):
    """True if a sum is exact in float32: ``terms`` are (count, max magnitude) pairs of values
    that are all multiples of 2^-frac_bits; float32 holds integers of up to FLOAT32_BITS bits exactly."""
    total = sum(count * mag for count, mag in terms)
    return math.ceil(math.log2(max(total, 2.0 ** -frac_bits))) + frac_bits + 1 <= FLOAT32_BITS


def max_abs(fmt):
    """Largest magnitude on a format's grid."""
    return max(abs(fmt.min), fmt.max)
