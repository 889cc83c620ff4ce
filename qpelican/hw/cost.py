"""Hardware cost model: bit operations (BOPs) and rough DSP/LUT estimates.

One function, :func:`model_cost`, used by ``qpelican fit`` (results.json), ``qpelican tune``
(the cost axis of the Pareto front) and the firmware exporter's report.

It counts what the exported nanoPELICAN firmware computes (``export/``), per jet:

* Lorentz invariants: only pairs i < j (d is symmetric, the diagonal is zero): 4 products
  W_in x W_in and 3 additions per pair.
* One column-sum vector S_j (= row sums, by symmetry) and the total T = sum_j S_j, shared by all
  aggregates; each distinct aggregate is one product with a ``table_bits`` normaliser from a table
  indexed by n (A2 = A3 = A4 and A5 = A6 coincide without alpha scaling and are computed once).
* Per hidden channel: the per-row, per-column and diagonal terms once per particle; the pair
  product c1 * d_ij once per unordered pair (shared by ij and ji); two additions per ordered pair.
* Readout: one accumulation over N^2 and one over the diagonal per channel, 2 table products and
  2 coefficient products per channel.

A product of an a-bit by a b-bit operand costs a*b BOPs; an addition costs its result width.
Float tensors count as 32 bits. Masks (AND gates), comparisons and table reads are not counted.

DSP/LUT estimates (labelled as estimates; synthesis is the truth): a product whose narrower
operand has more than 10 bits uses ceil(a/27)*ceil(b/18) DSP48 slices, narrower ones are built
from about a*b/2 LUTs; an adder costs about one LUT per result bit. ``reuse`` divides the number
of parallel operators (hls4ml's reuse factor).
"""
import math

FLOAT_BITS = 32
LUT_MULT_MAX = 10


def _bits(fmt):
    return FLOAT_BITS if fmt is None else fmt.bits


def _int_bits(fmt, default=16):
    """Bits above the binary point including sign (for accumulator sizing)."""
    return default if fmt is None else fmt.integer + int(fmt.signed)


def _clog2(x):
    return max(0, math.ceil(math.log2(max(x, 1))))


class CostSheet:
    """Accumulates multipliers and adders of a design."""

    def __init__(self):
        self.multipliers = []
        self.adders = []

    def mult(self, what, count, a, b, layer):
        if count:
            self.multipliers.append({"what": what, "layer": layer, "count": int(count), "widths": [int(a), int(b)]})

    def add(self, what, count, width, layer):
        if count:
            self.adders.append({"what": what, "layer": layer, "count": int(count), "width": int(width)})

    def summary(self, reuse=1):
        bops_mult = sum(m["count"] * m["widths"][0] * m["widths"][1] for m in self.multipliers)
        bops_add = sum(a["count"] * a["width"] for a in self.adders)
        dsp = lut = 0.0
        for m in self.multipliers:
            a, b = sorted(m["widths"])
            if a > LUT_MULT_MAX:
                dsp += m["count"] * math.ceil(b / 27) * math.ceil(a / 18)
            else:
                lut += m["count"] * a * b / 2
        lut += sum(a["count"] * a["width"] for a in self.adders)
        per_layer = {}
        for m in self.multipliers:
            per_layer[m["layer"]] = per_layer.get(m["layer"], 0) + m["count"] * m["widths"][0] * m["widths"][1]
        for a in self.adders:
            per_layer[a["layer"]] = per_layer.get(a["layer"], 0) + a["count"] * a["width"]
        return {
            "bops": int(bops_mult + bops_add),
            "bops_multipliers": int(bops_mult),
            "bops_adders": int(bops_add),
            "n_multipliers": int(sum(m["count"] for m in self.multipliers)),
            "n_adders": int(sum(a["count"] for a in self.adders)),
            "dsp_estimate": int(math.ceil(dsp / reuse)),
            "lut_estimate": int(math.ceil(lut / reuse)),
            "reuse": int(reuse),
            "per_layer": per_layer,
            "multipliers": self.multipliers,
            "adders": self.adders,
        }


def _product_width(fa, fb):
    return _bits(fa) + _bits(fb)


def _lorentz(sheet, layer, n, in_fmt):
    pairs = n * (n - 1) // 2 if layer.zero_diagonal else n * (n + 1) // 2
    w = _bits(in_fmt)
    sheet.mult("p_i.p_j component products", 4 * pairs, w, w, layer.name)
    sheet.add("p_i.p_j sums", 3 * pairs, 2 * w + 2, layer.name)


def _nano_2to2(sheet, layer, n, x_fmt):
    c_in = layer.kernel.shape[0]
    h = layer.channels
    wx, tb = _bits(x_fmt), layer.table_bits if layer.quantized else FLOAT_BITS
    agg = layer.aggregate_format
    ws = wx + _clog2(n - 1)
    wt = wx + _clog2(n * (n - 1))
    sheet.add("column sums S_j", c_in * n * max(n - 2, 0), ws, layer.name)
    sheet.add("total sum T", c_in * (n - 1), wt, layer.name)
    vec_aggs, scalar_aggs = (3, 2) if layer.alpha else (1, 1)
    sheet.mult("aggregate x normaliser (vectors)", c_in * vec_aggs * n, ws, tb, layer.name)
    sheet.mult("aggregate x normaliser (scalars)", c_in * scalar_aggs, wt, tb, layer.name)
    wc, wa = _bits(layer.coefficient_format), _bits(agg)
    pairs = n * (n - 1) // 2
    sheet.mult("c1 * d_ij (unordered pairs)", c_in * h * pairs, wc, wx, layer.name)
    sheet.mult("row/column/diagonal coefficients", c_in * h * (3 * n + 2), wc, wa, layer.name)
    # pre-activation width: the widest product plus carry bits for the terms summed
    wz = max(wc + wx, wc + wa, _bits(layer.bias_format)) + _clog2(6 * c_in + 2)
    sheet.add("row, column and diagonal terms", h * (4 * n + 2 * n * max(c_in - 1, 0)), wz, layer.name)
    sheet.add("z_ij = c1 d_ij + row_i + col_j", h * (2 * n * (n - 1) + 2 * n + max(c_in - 1, 0) * n * (n - 1)), wz,
              layer.name)


def _full_2to2(sheet, layer, n, x_fmt):
    c_in, h, ops = layer.kernel.shape[0], layer.channels, len(layer.ops)
    wx, wc = _bits(x_fmt), _bits(layer.coefficient_format)
    ws = wx + _clog2(n)
    sheet.add("row and column sums", 2 * c_in * n * (n - 1), ws, layer.name)
    sheet.mult("aggregate x normaliser", c_in * (4 * n + 4), ws, layer.table_bits if layer.quantized else FLOAT_BITS,
               layer.name)
    sheet.mult("elementwise coefficients", 2 * c_in * h * n * n, wc, wx, layer.name)
    sheet.mult("row/column/diagonal coefficients", c_in * h * (9 * n + 4), wc, _bits(layer.aggregate_format), layer.name)
    sheet.add("pre-activation sums", h * n * n * (2 * c_in + 3), wc + wx + _clog2(ops * c_in), layer.name)


def _readout(sheet, layer, n, x_fmt):
    c_in, h = layer.kernel.shape[0], layer.channels
    wx = _bits(x_fmt)
    tb = layer.table_bits if layer.quantized else FLOAT_BITS
    sheet.add("total sum over pairs", c_in * (n * n - 1), wx + _clog2(n * n), layer.name)
    sheet.add("trace", c_in * (n - 1), wx + _clog2(n), layer.name)
    sheet.mult("aggregate x normaliser", 2 * c_in, wx + _clog2(n * n), tb, layer.name)
    wc, wa = _bits(layer.coefficient_format), _bits(layer.aggregate_format)
    sheet.mult("output coefficients", 2 * c_in * h, wc, wa, layer.name)
    sheet.add("output sum", 2 * c_in * h, wc + wa + _clog2(2 * c_in + 1), layer.name)


def _dense(sheet, layer, count, c_in, units, x_fmt):
    wk = _bits(getattr(layer, "coefficient_format", None)) if hasattr(layer, "coefficient_format") else _qbits(layer)
    wx = _bits(x_fmt)
    sheet.mult("dense products", count * c_in * units, wk, wx, layer.name)
    sheet.add("dense sums", count * c_in * units, wk + wx + _clog2(c_in), layer.name)


def _qbits(layer):
    from qpelican.nn.quant import fixed_format

    q = getattr(layer, "kernel_quantizer_internal", None)
    f = fixed_format(q) if q is not None else None
    return _bits(f)


def model_cost(model, reuse=1):
    """Cost sheet of a qpelican model: BOPs, multiplier/adder inventory, DSP/LUT estimates.

    Returns a dict with ``bops``, ``bops_multipliers``, ``bops_adders``, ``n_multipliers``,
    ``n_adders``, ``dsp_estimate``, ``lut_estimate``, ``per_layer`` and the ``multipliers`` /
    ``adders`` lists (what, layer, count, widths).
    """
    from qpelican.nn.layers import EdgeDense, LinEq2to0, LinEq2to2, LorentzInvariants, MaskedBatchNorm, MomentumInput

    sheet = CostSheet()
    fmt = None  # format of the tensor flowing along the main path
    n = None
    for layer in model.layers:
        if isinstance(layer, MomentumInput):
            fmt = layer.input_format
            n = int(layer.output_shape[1])
        elif isinstance(layer, LorentzInvariants):
            _lorentz(sheet, layer, n, fmt)
            fmt = layer.invariant_format
        elif isinstance(layer, LinEq2to2):
            (_nano_2to2 if layer.basis == "nano" else _full_2to2)(sheet, layer, n, fmt)
            fmt = layer.output_format
        elif isinstance(layer, LinEq2to0):
            _readout(sheet, layer, n, fmt)
            fmt = layer.output_format
        elif isinstance(layer, EdgeDense):
            shape = layer.input_shape[0]
            count = n * n if len(shape) == 4 else n
            _dense(sheet, layer, count, layer.kernel.shape[0], layer.units, fmt)
            fmt = layer.output_format
        elif isinstance(layer, MaskedBatchNorm):
            shape = layer.input_shape[0]
            count = (n * n if len(shape) == 4 else n) * int(shape[-1])
            sheet.mult("batchnorm scale", count, FLOAT_BITS, _bits(fmt), layer.name)
            sheet.add("batchnorm shift", count, FLOAT_BITS, layer.name)
        elif type(layer).__name__ == "QDense":
            _dense(sheet, layer, 1, layer.kernel.shape[0], layer.units, fmt)
            fmt = None
    return sheet.summary(reuse)


def format_cost(cost):
    """A plain-text table of a cost sheet (for terminals and reports)."""
    lines = [f"{'operation':44s} {'layer':14s} {'count':>9s} {'widths':>9s} {'BOPs':>11s}"]
    for m in cost["multipliers"]:
        a, b = m["widths"]
        lines.append(f"{'x ' + m['what']:44s} {m['layer']:14s} {m['count']:9d} {f'{a}x{b}':>9s} {m['count'] * a * b:11d}")
    for s in cost["adders"]:
        lines.append(f"{'+ ' + s['what']:44s} {s['layer']:14s} {s['count']:9d} {s['width']:9d} {s['count'] * s['width']:11d}")
    lines.append(f"total BOPs {cost['bops']:,}  (multipliers {cost['n_multipliers']:,}, adders {cost['n_adders']:,}; "
                 f"estimates: {cost['dsp_estimate']} DSP, {cost['lut_estimate']:,} LUT at reuse {cost['reuse']})")
    return "\n".join(lines)
