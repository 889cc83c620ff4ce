"""The operator inventory of the firmware: every multiplier, adder and table read per jet.

This is the one home of every operator count. The cost model (:mod:`qpelican.hw.cost`), the export
report (:mod:`qpelican.hls.report`), the HLS multiplier limits (:mod:`qpelican.hls.extension`) and
the RTL route all read it; none of them counts operators itself.

API (all plain dataclasses):

* :class:`Multiplier` ``(what, count, widths=(a, b))``, :class:`Adder` ``(what, count, width)``
  (the result width) and :class:`Lookup` ``(what, count, entries, width)``: one kind of operator,
  ``count`` instances per jet, fully unrolled (reuse factor 1);
* :class:`Stage` ``(layer, kind, multipliers, adders, lookups)``: the operators of one Keras layer.
  ``kind`` is ``"invariants"`` (LorentzInvariants, L1Invariants), ``"2to2"`` (LinEq2to2, nano basis) or ``"2to0"``
  (LinEq2to0); estimates of models without firmware add ``"2to2_full"``, ``"dense"`` and
  ``"batchnorm"``. MomentumInput, ParticleMask, L1CandidateInput and CandidateMask have no
  arithmetic and no stage;
* :class:`Inventory` ``(stages, widths, source, reason)``: ``inv.stage(layer)``, ``inv.of_kind(kind)``,
  ``inv.multipliers`` / ``inv.adders`` / ``inv.lookups`` (``(layer, operator)`` pairs).

Builders:

* :func:`from_plan` ``(plan, widths=EXACT)`` and :func:`stage_of` ``(layer_plan, widths=EXACT)``: the
  operators of the exported firmware, following ``export/nnet_qp_*.h`` line by line, with the
  plan's widths. ``widths=EXACT`` takes the types the firmware is generated with, some of which
  depend on the weights (accumulators, and with alpha the normaliser tables and which aggregates
  coincide); ``widths=RECIPE`` takes the plan's weight-independent bounds (``LayerPlan.bounds``):
  what any weights on the recipe's quantizer grids need, so a model costs the same before and
  after training. A folded BatchNorm's bias tables (``input_shift``) are read per output channel
  from tables over n; their shift has no grid, so RECIPE sizes them (and the accumulators) with
  the bias format's range and EXACT with the trained entries;
* :func:`estimate` ``(model)``: models the firmware does not implement (a float tensor, BatchNorm,
  full PELICAN) with nominal widths (``widths=NOMINAL``): a float tensor counts as 32 bits, a sum
  of k terms as its operand width plus ceil(log2 k) bits. nanoPELICAN stages use the same count
  functions as the firmware; full-PELICAN stages are estimates of a design that does not exist;
* :func:`model_inventory` ``(model, widths=RECIPE)``: the plan's inventory, or the estimate with the
  plan's refusal in ``reason``.

Not counted: the particle-mask comparisons, mask AND gates, ReLU and the rounding casts.
"""
import math
import re
from dataclasses import dataclass, field

from qpelican.core.errors import ExportError
from qpelican.hw.fixed import Fx
from qpelican.hw.plan import make_plan
from qpelican.nn.layers import (EdgeDense, L1CandidateInput, L1Invariants, LinEq2to0, LinEq2to2, LorentzInvariants, MaskedBatchNorm,
                                MomentumInput)
from qpelican.nn.quant import fixed_format

EXACT = "exact"  # the firmware's types for these weights
RECIPE = "recipe"  # bounds for any weights on the quantizer grids
NOMINAL = "nominal"  # estimate of a model the plan rejects
FLOAT_BITS = 32  # a float tensor in an estimate


@dataclass(frozen=True)
class Multiplier:
    """``count`` products per jet of an ``widths[0]``-bit by a ``widths[1]``-bit operand."""

    what: str
    count: int
    widths: tuple


@dataclass(frozen=True)
class Adder:
    """``count`` additions per jet whose result is ``width`` bits wide."""

    what: str
    count: int
    width: int


@dataclass(frozen=True)
class Lookup:
    """``count`` reads per jet of a table of ``entries`` values of ``width`` bits."""

    what: str
    count: int
    entries: int
    width: int


@dataclass
class Stage:
    """The operators of one Keras layer (``kind``: "invariants", "2to2", "2to0", ...)."""

    layer: str
    kind: str
    multipliers: list = field(default_factory=list)
    adders: list = field(default_factory=list)
    lookups: list = field(default_factory=list)

    @property
    def n_multipliers(self):
        return sum(m.count for m in self.multipliers)

    @property
    def n_adders(self):
        return sum(a.count for a in self.adders)

    def mult(self, what, count, a, b):
        if count:  # empty operators (N = 1, C_in = 1) are left out, not listed as 0
            self.multipliers.append(Multiplier(what, int(count), (int(a), int(b))))

    def add(self, what, count, width):
        if count:
            self.adders.append(Adder(what, int(count), int(width)))

    def lookup(self, what, count, entries, width):
        if count:
            self.lookups.append(Lookup(what, int(count), int(entries), int(width)))


@dataclass
class Inventory:
    """Stages of a model, with how their widths were obtained.

    ``widths``: EXACT, RECIPE or NOMINAL; ``source``: "plan" or "estimate"; ``reason``: why the
    plan rejected the model and ``uncounted``: the layers an estimate has no count for (estimates only).
    """

    stages: list
    widths: str
    source: str = "plan"
    reason: str = ""
    uncounted: list = field(default_factory=list)  # estimates: layers whose arithmetic is not modelled

    def stage(self, layer):
        """The stage of a Keras layer name (KeyError if it has no operators)."""
        for s in self.stages:
            if s.layer == layer:
                return s
        raise KeyError(layer)

    def of_kind(self, kind):
        return [s for s in self.stages if s.kind == kind]

    @property
    def multipliers(self):
        return [(s.layer, m) for s in self.stages for m in s.multipliers]

    @property
    def adders(self):
        return [(s.layer, a) for s in self.stages for a in s.adders]

    @property
    def lookups(self):
        return [(s.layer, t) for s in self.stages for t in s.lookups]


def width_of(t):
    """Bits of a plan type: an :class:`Fx`, an int, or a C++ type string such as ``ap_fixed<18,6>``."""
    if isinstance(t, Fx):
        return t.width
    if isinstance(t, int):
        return t
    m = re.search(r"<(\d+)", str(t))
    if m is None:
        raise ValueError(f"no width in type {t!r}")
    return int(m.group(1))


def _clog2(x):
    return max(0, math.ceil(math.log2(max(x, 1))))


def _distinct(alias, ks):
    """Aggregates computed (not reused): op k whose table is not an alias of an earlier one."""
    return [k for k in ks if alias[k] == k]


# ------------------------------------------------------------------------------------------------
# count functions: one per firmware function, shared by the plan and the estimate


def invariants_stage(name, n, zero_diagonal, w):
    """qp_lorentz_invariants: d_ij for pairs i < j (plus i = i without zero_diagonal).

    Args:
      w: widths {"p": momentum, "dot": exact Minkowski product}.
    """
    s = Stage(name, "invariants")
    pairs = n * (n - 1) // 2 if zero_diagonal else n * (n + 1) // 2
    s.mult("p_i,mu * p_j,mu (pairs i<j)", 4 * pairs, w["p"], w["p"])
    s.add("Minkowski sum (3 per pair)", 3 * pairs, w["dot"])
    return s


def l1_invariants_stage(name, n, w):
    """qp_l1_invariants: d_ij = (pT_i R_ij) pT_j 2^-shift, R_ij = |deta|^2 + |dphi|^2, for pairs i < j
    of the n candidates (the shift is wiring; so are a beam's products, d_bj = pT_j).

    Args:
      w: widths {"pt": pT, "diff": angle difference, "adiff": its magnitude, "r": R_ij, "ptr": pT_i R_ij}.
    """
    s = Stage(name, "invariants")
    pairs = n * (n - 1) // 2
    s.add("eta_i - eta_j, phi_i - phi_j (pairs i<j)", 2 * pairs, w["diff"])
    s.add("|deta|, |dphi| (conditional negation)", 2 * pairs, w["adiff"])
    s.mult("|deta|^2, |dphi|^2 (pairs i<j)", 2 * pairs, w["adiff"], w["adiff"])
    s.add("R_ij = deta^2 + dphi^2", pairs, w["r"])
    s.mult("pT_i * R_ij (pairs i<j)", pairs, w["pt"], w["r"])
    s.mult("(pT_i R_ij) * pT_j (pairs i<j)", pairs, w["ptr"], w["pt"])
    return s


def nano_2to2_stage(name, n, ci, co, alias, w, bias_tables=False, symmetric=False):
    """qp_lineq2to2_nano on the symmetric, zero-diagonal x_ij.

    Args:
      alias: {k: j} table column k reuses aggregate j (k = j: computed).
      w: widths {"n", "x", "sum", "total", "tables": [5], "coef", "agg", "accum", "bias"}.
      bias_tables: the biases are tables over n (a folded BatchNorm), read once per output channel.
      symmetric: S_i and S_j share their coefficient (model.symmetric): z_ji = z_ij, one per pair i < j.
    """
    s = Stage(name, "2to2")
    pairs = n * (n - 1) // 2
    s.add("multiplicity n = sum_i m_i", n - 1, w["n"])
    s.add("column sums S_j (= row sums)", ci * n * max(n - 2, 0), w["sum"])  # n - 1 terms each
    s.add("total T = sum_j S_j", ci * (n - 1), w["total"])
    for k in _distinct(alias, range(5)):
        src, cnt = ("S_j", ci * n) if k < 3 else ("T", ci)
        s.mult(f"{src} x table{k}[n] -> aggregate", cnt, w["sum" if k < 3 else "total"], w["tables"][k])
        s.lookup(f"table{k}[n]", ci, n + 1, w["tables"][k])
    if bias_tables:
        s.lookup("bias table b[n]", co, n + 1, w["bias"])
        s.lookup("diagonal bias table bd[n]", co, n + 1, w["bias"])
    s.mult("w0 * d_ij (once per unordered pair)", ci * co * pairs, w["coef"], w["x"])
    s.mult("row/column/diagonal coefficients", ci * co * 3 * n, w["coef"], w["agg"])
    s.mult("scalar coefficients", ci * co * 2, w["coef"], w["agg"])
    # sc_h = b_h + sum_c w4 a_sc, dsc_h = bd_h + sum_c w5 a_dsc
    s.add("scalar terms (bias + T aggregates)", co * 2 * ci, w["accum"])
    # per particle: diag = dsc + C_in terms, row = sc + C_in terms, col = C_in terms (starts at 0)
    s.add("per-particle terms (row, column, diagonal)", co * n * (3 * ci - 1), w["accum"])
    s.add("z_ii = row_i + col_i + diag_i", co * 2 * n, w["accum"])
    # e = sum_c w0 x_ij (C_in - 1 additions), shared by z_ij = e + row_i + col_j and z_ji
    if symmetric:
        s.add("z_ij = z_ji = w0 d_ij + row + col (pairs i<j)", co * pairs * (ci + 1), w["accum"])
    else:
        s.add("z_ij, z_ji = w0 d_ij + row + col (pairs i<j)", co * pairs * (ci + 3), w["accum"])
    return s


def readout_stage(name, n, ci, co, w, bias_tables=False, symmetric_input=False):
    """qp_lineq2to0: total sum and trace per channel, two aggregates, the output sum.

    Args:
      w: widths {"n", "total", "trace", "tables": [2], "coef", "agg", "accum", "bias"}.
      bias_tables: the bias is a table over n (a folded BatchNorm), read once per output channel.
      symmetric_input: y_ij = y_ji, so the total is 2 sum_{i<j} y_ij + trace (the doubling is a shift).
    """
    s = Stage(name, "2to0")
    s.add("multiplicity n = sum_i m_i", n - 1, w["n"])
    if symmetric_input:
        s.add("total sum over pairs i <= j", ci * (n * (n + 1) // 2 - 1), w["total"])
    else:
        s.add("total sum over pairs", ci * (n * n - 1), w["total"])
    s.add("trace", ci * (n - 1), w["trace"])
    s.mult("total x table0[n]", ci, w["total"], w["tables"][0])
    s.mult("trace x table1[n]", ci, w["trace"], w["tables"][1])
    s.lookup("table0[n]", ci, n + 1, w["tables"][0])
    s.lookup("table1[n]", ci, n + 1, w["tables"][1])
    if bias_tables:
        s.lookup("bias table b[n]", co, n + 1, w["bias"])
    s.mult("output coefficients", 2 * ci * co, w["coef"], w["agg"])
    s.add("output sum", 2 * ci * co, w["accum"])  # b_h + 2 C_in terms
    return s


# ------------------------------------------------------------------------------------------------
# from the firmware plan


def _types(lp, widths):
    """The plan's types, with the weight-independent bounds laid over them for RECIPE."""
    if widths not in (EXACT, RECIPE):
        raise ValueError(f"widths must be {EXACT!r} or {RECIPE!r}, not {widths!r}")
    return {**lp.types, **(lp.bounds if widths == RECIPE else {})}


def stage_of(lp, widths=EXACT):
    """The :class:`Stage` of one :class:`~qpelican.hw.plan.LayerPlan`; None for layers without arithmetic.

    Args:
      lp: a LayerPlan of :func:`qpelican.hw.plan.make_plan`.
      widths: EXACT (the firmware's types) or RECIPE (bounds for any weights on the grids).
    """
    t, p, n = _types(lp, widths), lp.params, lp.n
    if lp.keras_class == "LorentzInvariants":
        return invariants_stage(lp.name, n, p["zero_diagonal"], {"p": width_of(t["p"]), "dot": width_of(t["dot_t"])})
    if lp.keras_class == "L1Invariants":
        return l1_invariants_stage(lp.name, p["n_in"], {k: width_of(t[f"{k}_t"]) for k in ("pt", "diff", "adiff", "r", "ptr")})
    if lp.keras_class == "LinEq2to2":
        w = {"n": width_of(t["n_t"]), "x": width_of(t["x"]), "sum": width_of(t["sum_t"]),
             "total": width_of(t["total_t"]), "tables": [width_of(t[f"table{k}_t"]) for k in range(5)],
             "coef": width_of(lp.weights["w"][1]), "agg": width_of(t["agg_t"]), "accum": width_of(t["accum_t"]),
             "bias": width_of(t["bias_t"])}
        return nano_2to2_stage(lp.name, n, p["n_in"], p["n_out"], t.get("alias", p["alias"]), w, p["bias_tables"],
                               p.get("symmetric", False))
    if lp.keras_class == "LinEq2to0":
        w = {"n": width_of(t["n_t"]), "total": width_of(t["total_t"]), "trace": width_of(t["trace_t"]),
             "tables": [width_of(t["table0_t"]), width_of(t["table1_t"])], "coef": width_of(lp.weights["w"][1]),
             "agg": width_of(t["agg_t"]), "accum": width_of(t["accum_t"]), "bias": width_of(t["bias_t"])}
        return readout_stage(lp.name, n, p["n_in"], p["n_out"], w, p["bias_tables"], p.get("symmetric_input", False))
    return None


def from_plan(plan, widths=EXACT):
    """The :class:`Inventory` of a firmware plan (``make_plan(model)``).

    Args:
      plan: the dict of :func:`qpelican.hw.plan.make_plan`.
      widths: EXACT or RECIPE (see the module docstring).
    """
    stages = [stage_of(lp, widths) for lp in plan["layers"]]
    return Inventory([s for s in stages if s is not None], widths)


# ------------------------------------------------------------------------------------------------
# estimate of models without firmware (nominal widths)


def _bits(fmt):
    return None if fmt is None else fmt.bits


def _grow(w, extra):
    """Width of a sum or a wider result: float stays 32 bits."""
    return FLOAT_BITS if w is None else w + extra


def _prod(a, b):
    return None if a is None or b is None else a + b


def _widest(*ws):
    return None if any(w is None for w in ws) else max(ws)


def _nom(w):
    return FLOAT_BITS if w is None else w


def _table_bits(layer):
    return layer.table_bits if layer.quantized else FLOAT_BITS


def _nominal_2to2(layer, n, wx):
    ci, co = int(layer.kernel.shape[0]), layer.channels
    if layer.basis != "nano":
        return _full_2to2(layer, n, wx)
    wc, wa = _bits(layer.coefficient_format), _bits(layer.aggregate_format)
    alias = ({k: 1 if layer.symmetric and k == 2 else k for k in range(5)} if layer.alpha
             else {0: 0, 1: 0, 2: 0, 3: 3, 4: 3})
    w = {"n": n.bit_length(), "x": _nom(wx), "sum": _grow(wx, _clog2(n - 1)), "total": _grow(wx, _clog2(n * (n - 1))),
         "tables": [_table_bits(layer)] * 5, "coef": _nom(wc), "agg": _nom(wa),
         "accum": _grow(_widest(_prod(wc, wx), _prod(wc, wa), _bits(layer.bias_format)), _clog2(6 * ci + 2)),
         "bias": _nom(_bits(layer.bias_format))}
    return nano_2to2_stage(layer.name, n, ci, co, alias, w, layer.input_shift, layer.symmetric)


def _full_2to2(layer, n, wx):
    """Full 15-op basis (full PELICAN): an estimate, no firmware exists."""
    ci, h, ops = int(layer.kernel.shape[0]), layer.channels, len(layer.ops)
    wc, wa = _bits(layer.coefficient_format), _bits(layer.aggregate_format)
    ws = _grow(wx, _clog2(n))
    s = Stage(layer.name, "2to2_full")
    s.add("row and column sums", 2 * ci * n * (n - 1), ws)
    s.mult("aggregate x normaliser", ci * (4 * n + 4), ws, _table_bits(layer))
    s.mult("elementwise coefficients", 2 * ci * h * n * n, _nom(wc), _nom(wx))
    s.mult("row/column/diagonal coefficients", ci * h * (9 * n + 4), _nom(wc), _nom(wa))
    s.add("pre-activation sums", h * n * n * (2 * ci + 3), _grow(_prod(wc, wx), _clog2(ops * ci)))
    return s


def _nominal_2to0(layer, n, wx, symmetric_input=False):
    ci, co = int(layer.kernel.shape[0]), layer.channels
    wc, wa = _bits(layer.coefficient_format), _bits(layer.aggregate_format)
    w = {"n": n.bit_length(), "total": _grow(wx, _clog2(n * n)), "trace": _grow(wx, _clog2(n)),
         "tables": [_table_bits(layer)] * 2, "coef": _nom(wc), "agg": _nom(wa),
         "accum": _grow(_widest(_prod(wc, wa), _bits(layer.bias_format)), _clog2(2 * ci + 1)),
         "bias": _nom(_bits(layer.bias_format))}
    return readout_stage(layer.name, n, ci, co, w, layer.input_shift, symmetric_input)


def _dense(layer, count, ci, units, wk, wx, kind="dense"):
    s = Stage(layer.name, kind)
    s.mult("dense products", count * ci * units, _nom(wk), _nom(wx))
    s.add("dense sums", count * ci * units, _grow(_prod(wk, wx), _clog2(ci)))
    return s


def _per_entry(layer, n):
    """Entries per channel of an EdgeDense/BatchNorm input: N^2 (pairs) or N (particles)."""
    return n * n if len(layer.input_shape[0]) == 4 else n


def _nominal_stage(layer, n, fmt, symmetric_input=False):
    """(stage or None, format of the layer's output) of one layer of a model without firmware
    (``symmetric_input``: the pair array entering a LinEq2to0 is symmetric)."""
    if isinstance(layer, LorentzInvariants):
        w = _bits(fmt)
        return invariants_stage(layer.name, n, layer.zero_diagonal, {"p": _nom(w), "dot": _grow(_prod(w, w), 2)}), \
            layer.invariant_format
    if isinstance(layer, L1Invariants):
        wp, a = _bits(layer.input_format), layer.angle_bits
        w = {"pt": _nom(wp), "diff": a + 1, "adiff": a, "r": 2 * a + 1, "ptr": _nom(_prod(wp, 2 * a + 1))}
        return l1_invariants_stage(layer.name, n - int(layer.beams), w), layer.invariant_format
    if isinstance(layer, LinEq2to2):
        return _nominal_2to2(layer, n, _bits(fmt)), layer.output_format
    if isinstance(layer, LinEq2to0):
        return _nominal_2to0(layer, n, _bits(fmt), symmetric_input), layer.output_format
    if isinstance(layer, EdgeDense):
        return _dense(layer, _per_entry(layer, n), int(layer.kernel.shape[0]), layer.units,
                      _bits(layer.coefficient_format), _bits(fmt)), layer.output_format
    if isinstance(layer, MaskedBatchNorm):
        count = _per_entry(layer, n) * int(layer.input_shape[0][-1])
        s = Stage(layer.name, "batchnorm")
        s.mult("batchnorm scale", count, FLOAT_BITS, _nom(_bits(fmt)))
        s.add("batchnorm shift", count, FLOAT_BITS)
        return s, fmt
    if type(layer).__name__ == "QDense":
        q = getattr(layer, "kernel_quantizer_internal", None)
        wk = _bits(fixed_format(q)) if q is not None else None
        return _dense(layer, 1, int(layer.kernel.shape[0]), layer.units, wk, _bits(fmt)), None
    # no arithmetic (mask, dropout) or not modelled (see NO_ARITHMETIC); a layer with invariants still
    # sets the width the equivariant layers see
    return None, getattr(layer, "invariant_format", fmt)


# layers without arithmetic to count; any other layer an estimate does not model is listed as uncounted
NO_ARITHMETIC = ("InputLayer", "MomentumInput", "ParticleMask", "Dropout", "PairDropout", "L1CandidateInput",
                 "CandidateMask")


def estimate(model, reason=""):
    """Nominal-width :class:`Inventory` of a model the firmware plan rejects (see the module docstring).

    Args:
      model: a qpelican tf-keras model (float or quantized, nano or full PELICAN).
      reason: why it has no firmware plan (kept in ``Inventory.reason``).
    """
    stages, uncounted, fmt, symmetric = [], [], None, False
    n = int(model.inputs[0].shape[1])  # particles; MomentumInput adds the beams
    for layer in model.layers:
        if isinstance(layer, (MomentumInput, L1CandidateInput)):
            fmt, n = layer.input_format, int(layer.output_shape[1])
            continue
        stage, fmt = _nominal_stage(layer, n, fmt, symmetric)
        if isinstance(layer, LinEq2to2):
            symmetric = bool(layer.symmetric)
        if stage is not None:
            stages.append(stage)
        elif type(layer).__name__ not in NO_ARITHMETIC:
            uncounted.append(layer.name)
    return Inventory(stages, NOMINAL, "estimate", reason, uncounted)


def model_inventory(model, widths=RECIPE):
    """The inventory of a model: from its firmware plan, else (ExportError) an :func:`estimate`.

    Args:
      model: a qpelican tf-keras model.
      widths: EXACT or RECIPE for models the plan accepts.
    """
    try:
        plan = make_plan(model)
    except ExportError as exc:
        return estimate(model, reason=str(exc).split(". ")[0])
    return from_plan(plan, widths)
