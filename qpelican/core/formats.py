"""Fixed-point formats and the quantizer strings that name them, in pure Python.

A recipe names the format of each tensor with a QKeras quantizer string. Only the two quantizers
with a bit-exact firmware equivalent are accepted:

* ``quantized_bits(bits, integer, keep_negative=1, alpha=1)``: signed (unless ``keep_negative=0``),
  ``integer`` bits above the binary point excluding the sign: ``ap_fixed<bits, integer+1>``;
* ``quantized_relu(bits, integer)``: unsigned, ``ap_ufixed<bits, integer>``. Its integer width may
  exceed ``bits`` (``quantized_relu(4,6)``: range 64 in steps of 4), since its range is what matters.

Both round half to even and saturate, as QKeras does. The strings are read with :mod:`ast` (never
evaluated), so a recipe can be checked without TensorFlow or QKeras. Tensors that pass between
Keras layers are float32, whose 24-bit significand bounds the widest exact format.
"""
import ast
from dataclasses import dataclass

from qpelican.core.errors import QpelicanError

FLOAT_NAMES = ("float", "none", "None", "")
FLOAT32_BITS = 24  # float32's significand: the widest integer it holds exactly
KINDS = {  # quantizer name -> its positional and keyword arguments, in QKeras's order
    "quantized_bits": ("bits", "integer", "symmetric", "keep_negative", "alpha", "use_stochastic_rounding"),
    "quantized_relu": ("bits", "integer", "use_sigmoid", "negative_slope", "use_stochastic_rounding"),
}
USAGE = ("use quantized_bits(bits, integer, alpha=1) or quantized_relu(bits, integer), such as "
         "'quantized_bits(8,0,alpha=1)' or 'quantized_relu(8,3)', or 'float'")


@dataclass(frozen=True)
class FixedFormat:
    """A fixed-point format: ``bits`` total, ``integer`` bits above the binary point (excluding sign)."""

    bits: int
    integer: int
    signed: bool

    @property
    def frac(self):
        return self.bits - self.integer - int(self.signed)

    @property
    def lsb(self):
        return 2.0 ** -self.frac

    @property
    def max(self):
        return 2.0 ** self.integer - self.lsb

    @property
    def min(self):
        return -(2.0 ** self.integer) if self.signed else 0.0

    def ap_type(self):
        """The HLS type hls4ml uses for this QKeras quantizer."""
        if self.signed:
            return f"ap_fixed<{self.bits},{self.integer + 1},AP_RND_CONV,AP_SAT>"
        return f"ap_ufixed<{self.bits},{self.integer},AP_RND_CONV,AP_SAT>"


def is_float(q):
    """True for the names that mean 'no quantizer'."""
    return q is None or (isinstance(q, str) and q.strip() in FLOAT_NAMES)


def _call_args(text):
    """(name, {argument: value}) of a call such as ``quantized_bits(8, 0, alpha=1)``."""
    try:
        call = ast.parse(text.strip(), mode="eval").body
        if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name):
            raise ValueError("not a call")
        names = KINDS.get(call.func.id)
        if names is None:
            raise ValueError(f"unknown quantizer {call.func.id!r}")
        if len(call.args) > len(names):
            raise ValueError("too many arguments")
        args = {n: ast.literal_eval(a) for n, a in zip(names, call.args)}
        for kw in call.keywords:
            if kw.arg not in names or kw.arg in args:
                raise ValueError(f"unexpected argument {kw.arg!r}")
            args[kw.arg] = ast.literal_eval(kw.value)
    except (SyntaxError, ValueError) as exc:
        raise QpelicanError(f"cannot parse quantizer {text!r} ({exc}); {USAGE}.") from None
    return call.func.id, args


def _int_arg(args, key, text, lo):
    v = args.get(key, 0 if key == "integer" else None)
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if not isinstance(v, int) or isinstance(v, bool) or v < lo:
        raise QpelicanError(f"quantizer {text!r}: {key} = {v!r} is not allowed; it must be an integer >= {lo}.")
    return v


def parse_format(text):
    """The :class:`FixedFormat` a quantizer string names, ``None`` for float names.

    Raises :class:`QpelicanError` naming the argument for anything without a bit-exact firmware
    equivalent: unknown quantizers, fractional or negative widths, a signed integer part that
    leaves no room in ``bits``, alpha other than 1, symmetric, sigmoid, leaky or stochastic rounding.
    """
    if is_float(text):
        return None
    if not isinstance(text, str):
        raise QpelicanError(f"expected a quantizer string, got {text!r}; {USAGE}.")
    kind, args = _call_args(text)
    bits = _int_arg(args, "bits", text, 1)
    integer = _int_arg(args, "integer", text, 0)
    for key in ("symmetric", "use_sigmoid", "negative_slope", "use_stochastic_rounding"):
        if args.get(key):
            raise QpelicanError(f"quantizer {text!r}: {key} has no fixed-point equivalent in firmware; {USAGE}.")
    if kind == "quantized_relu":
        return FixedFormat(bits, integer, False)
    if args.get("alpha") not in (None, 1, 1.0, "1"):
        raise QpelicanError(f"quantizer {text!r} uses alpha={args['alpha']!r}, which has no fixed-point "
                            "equivalent in firmware; use alpha=1 (e.g. 'quantized_bits(8,0,alpha=1)').")
    signed = bool(args.get("keep_negative", True))
    if signed and bits < 2:
        raise QpelicanError(f"quantizer {text!r}: bits = {bits} leaves no room beside the sign; allowed: bits >= 2.")
    if integer > bits - int(signed):
        raise QpelicanError(f"quantizer {text!r}: integer = {integer} leaves no room in {bits} bits"
                            f"{' with the sign' if signed else ''}; allowed: 0 <= integer <= "
                            f"{bits - int(signed)} (e.g. quantized_bits({bits},{min(2, bits - 1)},alpha=1)).")
    return FixedFormat(bits, integer, signed)


def quantizer_kind(text):
    """``"relu"`` for a quantized_relu string, ``"bits"`` for quantized_bits (None for float)."""
    if is_float(text):
        return None
    return "relu" if _call_args(text)[0] == "quantized_relu" else "bits"


def quantizer_string(kind, bits, integer, signed=True):
    """The quantizer string of a format: the inverse of :func:`parse_format` and :func:`quantizer_kind`."""
    if kind == "relu":
        return f"quantized_relu({bits},{integer})"
    return f"quantized_bits({bits},{integer},alpha=1)" if signed else f"quantized_bits({bits},{integer},keep_negative=False,alpha=1)"


def check_exact(fmt, what, limit=FLOAT32_BITS):
    """Tensors kept in float32 between layers must fit its 24-bit significand."""
    if fmt is not None and fmt.bits > limit:
        raise QpelicanError(
            f"{what} has {fmt.bits} bits; tensors passed between layers are float32 and hold at most "
            f"{limit} bits exactly. Use at most {limit} bits."
        )
