"""Exact fixed-point bookkeeping for the firmware: value ranges -> ap_[u]fixed widths.

Every intermediate that the firmware keeps at full precision (Minkowski products, particle sums,
pre-activations) gets the narrowest ``ap_[u]fixed`` that holds *every* value it can take for
inputs anywhere in the declared input range. Ranges are tracked as exact rationals (interval
arithmetic), so "cannot overflow" is a proof, not an estimate.

A :class:`Fx` is a range ``[lo, hi]`` on the grid ``2^-frac``; ``Fx.ap_type()`` gives the C++ type.
Rounded/saturated tensors use :meth:`qpelican.nn.quant.FixedFormat.ap_type` (the single home of the
quantizer -> HLS type mapping); :func:`from_format` turns such a format into a range.
"""
import math
from dataclasses import dataclass
from fractions import Fraction


def _frac(x):
    return x if isinstance(x, Fraction) else Fraction(x)


@dataclass(frozen=True)
class Fx:
    """Exact value range ``[lo, hi]`` on the grid ``2^-frac`` (frac may be negative)."""

    lo: Fraction
    hi: Fraction
    frac: int

    def __post_init__(self):
        object.__setattr__(self, "lo", _frac(self.lo))
        object.__setattr__(self, "hi", _frac(self.hi))
        if self.lo > self.hi:
            raise ValueError(f"empty range [{self.lo}, {self.hi}]")

    # ---- arithmetic on ranges -------------------------------------------------------------
    def __mul__(self, other):
        other = other if isinstance(other, Fx) else const(other)
        c = [self.lo * other.lo, self.lo * other.hi, self.hi * other.lo, self.hi * other.hi]
        return Fx(min(c), max(c), self.frac + other.frac)

    def __add__(self, other):
        other = other if isinstance(other, Fx) else const(other)
        return Fx(self.lo + other.lo, self.hi + other.hi, max(self.frac, other.frac))

    def __sub__(self, other):
        other = other if isinstance(other, Fx) else const(other)
        return Fx(self.lo - other.hi, self.hi - other.lo, max(self.frac, other.frac))

    def __neg__(self):
        return Fx(-self.hi, -self.lo, self.frac)

    def with_zero(self):
        """The range widened to contain 0 (a masked entry, or a partial sum)."""
        return Fx(min(self.lo, 0), max(self.hi, 0), self.frac)

    def times(self, n):
        """Range of a sum of ``n`` values of this range, each possibly zero (masked)."""
        z = self.with_zero()
        return Fx(z.lo * n, z.hi * n, self.frac)

    def union(self, other):
        return Fx(min(self.lo, other.lo), max(self.hi, other.hi), max(self.frac, other.frac))

    # ---- the C++ type ---------------------------------------------------------------------
    @property
    def signed(self):
        return self.lo < 0

    @property
    def width(self):
        scale = Fraction(2) ** self.frac
        hi = self.hi * scale
        lo = self.lo * scale
        hi_i = math.ceil(hi)
        lo_i = math.floor(lo)
        if self.signed:
            return max(1 + max(hi_i, 0).bit_length(), 1 + max(-lo_i - 1, 0).bit_length(), 2)
        return max(hi_i.bit_length(), 1)

    @property
    def integer(self):
        """Integer bits as ap_fixed counts them (including the sign bit for signed types)."""
        return self.width - self.frac

    def ap_type(self):
        return f"ap_{'' if self.signed else 'u'}fixed<{self.width},{self.integer}>"

    def describe(self):
        return {"type": self.ap_type(), "width": self.width, "min": float(self.lo), "max": float(self.hi)}


def const(value, frac=None):
    """Range of one exact constant (``frac`` defaults to the value's own binary digits)."""
    v = Fraction(value)
    if frac is None:
        frac = 0
        while (v * 2**frac).denominator != 1:
            frac += 1
            if frac > 200:
                raise ValueError(f"{value} is not a dyadic rational")
    return Fx(v, v, frac)


def from_format(fmt):
    """Range of a :class:`qpelican.nn.quant.FixedFormat` (a quantized tensor)."""
    return Fx(Fraction(fmt.min), Fraction(fmt.max), fmt.frac)


def fit_values(values):
    """Narrowest exact range/grid of a set of dyadic values (e.g. a normaliser table)."""
    vals = [Fraction(float(v)) for v in values]
    frac = max(const(v).frac for v in vals) if vals else 0
    # trailing zeros: values whose grid is coarser than 1 (frac may go negative)
    if all(v == 0 for v in vals):
        return Fx(0, 0, 0)
    while frac > -64 and all((v * Fraction(2) ** (frac - 1)).denominator == 1 for v in vals):
        frac -= 1
    return Fx(min(vals), max(vals), frac)


def uint_type(max_value):
    """``ap_uint`` wide enough for 0..max_value."""
    return f"ap_uint<{max(int(max_value).bit_length(), 1)}>"
