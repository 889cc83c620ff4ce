"""Convergent rounding and saturation built from da4ml operations.

QKeras's ``quantized_bits`` / ``quantized_relu`` and the HLS types (``AP_RND_CONV, AP_SAT``) round
half to even and then saturate. da4ml's own ``RND`` rounds half up, so every rounding of the
firmware graph goes through :func:`quantize_conv`, which builds round-half-to-even from da4ml's
exact primitives (a bit extraction, two additions and a truncation):

    Q(x) = trunc_f(x + (2^-(f+1) - s) + l * s)

where ``s`` is the grid step of ``x`` and ``l`` the bit of weight ``2^-f`` of ``x`` (the last kept
bit). A remainder below one half truncates down, above one half carries up, and exactly one half
carries only when ``l`` is 1, i.e. rounds to the even neighbour. Saturation follows (da4ml's
``SAT``, elided when the value range cannot overflow).
"""
from decimal import Decimal
from fractions import Fraction
from math import floor, log2

from da4ml.trace import FixedVariable

__all__ = ["kif", "quantize_conv", "round_conv_exact"]


def kif(fmt):
    """da4ml (keep_negative, integer, fraction) bits of a :class:`qpelican.nn.quant.FixedFormat`.

    da4ml's ``i`` excludes the sign bit, as QKeras's ``integer`` does: range [-k 2^i, 2^i - 2^-f].
    """
    return int(fmt.signed), int(fmt.integer), int(fmt.frac)


def round_conv_exact(value, k, i, f):
    """Reference in exact rationals: round half to even on 2^-f, then saturate (for constants, tests)."""
    v = Fraction(value) * 2 ** f
    lo = floor(v)
    rem = v - lo
    q = lo + (1 if rem > Fraction(1, 2) or (rem == Fraction(1, 2) and lo % 2) else 0)
    q_min, q_max = (-(2 ** (i + f)) if k else 0), 2 ** (i + f) - 1
    return Fraction(min(max(q, q_min), q_max), 2 ** f) if f >= 0 else Fraction(min(max(q, q_min), q_max) * 2 ** -f)


def _step_bits(x):
    """Fraction bits F of the grid step 2^-F of ``x``."""
    return -int(round(log2(float(x.step))))


def quantize_conv(x, k, i, f):
    """Round ``x`` (a da4ml FixedVariable) half to even onto 2^-f and saturate to [-k 2^i, 2^i - 2^-f].

    Args:
      x: traced FixedVariable (or a constant FixedVariable).
      k, i, f: target sign bit (0/1), integer bits (without sign), fraction bits.
    Returns the traced FixedVariable of the rounded value.
    """
    if x.low == x.high:  # constants are folded exactly at trace time
        return FixedVariable.from_const(Decimal(str(float(round_conv_exact(Fraction(float(x.low)), k, i, f)))),
                                        hwconf=x.hwconf)
    big = _step_bits(x)
    if big > f:
        step = Decimal(2) ** -big
        half = Decimal(2) ** -(f + 1)
        # the kept LSB l (weight 2^-f) as a one-bit value {0, 2^-f}: a wire, no logic
        lsb = x.quantize(0, -f + 1, f, "WRAP", "TRN")
        x = (x + (half - step)) + lsb * float(2.0 ** (f - big))
        kx, ix, _ = x.kif
        x = x.quantize(kx, ix, f, "WRAP", "TRN")  # truncation: drops bits only, no wrap-around
    return x.quantize(k, i, f, "SAT", "TRN")
