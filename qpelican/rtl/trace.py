"""Trace a quantized nanoPELICAN into a da4ml combinational graph, from the firmware plan.

Every width, coefficient and normaliser table comes from :func:`qpelican.hw.plan.make_plan`, the
plan that ``export-hls`` writes its C++ from, so both back ends compute the same function:

* the input p_hat (N x 4, the input quantizer's grid) is read with WRAP/TRN (da4ml refuses
  SAT/RND on inputs; p_hat is on the grid already, so this is the identity);
* padded particles (E_i = 0) have their momentum zeroed once per particle (3N multiplexers), which
  makes every d_ij with a padded particle exactly Q(0) = 0 without a multiplexer per pair;
* Minkowski products, particle sums, pre-activations are exact (da4ml tracks every range);
* each rounding is :func:`qpelican.rtl.rounding.quantize_conv` (half to even, saturate);
* normaliser tables indexed by the multiplicity n are lookup tables, or constants when the table
  does not depend on n (sum aggregation without alpha), which turns those products into shifts
  and additions;
* biases are constants, or with a folded BatchNorm (the plan's ``bias_tables``) one lookup per
  output channel in its table over n. n is known in the invariants stage, so a looked-up bias is
  added where the sum is early (2->2: to each particle's column and diagonal terms; 2->0: in the
  adder tree, beside the trace terms), not after the late T or total-sum aggregates where the
  constant it replaces costs nothing: the folded BatchNorm adds no pipeline stage.

The graph is cut at the plan's stage boundaries (invariants, 2->2, 2->0) so that each stage can be
estimated, pipelined and synthesised on its own.

Level-1 candidates (``data.format: l1``, docs/l1.md): the input is (pT, eta_rel, phi_rel) per
candidate (N x 3, read with WRAP/TRN on the input type, then narrowed to the pT format and the
angle_bits integers: the identity on the grid), and
d_ij = Q((pT_i pT_j) (deta^2 + dphi^2) 2^-shift), exact before the one rounding: P_ij = pT_i pT_j
and R_ij = deta^2 + dphi^2 are computed side by side, so the critical path holds two products, not
three (the HLS header multiplies in another order; the exact integer, hence d_ij, is the same).
Padded candidates have pT = 0, so every d_ij with one of them is exactly Q(0) = 0 without any mask
logic.

Every variable x variable product goes through :func:`dsp_mul`, which splits a product wider than
one DSP48E2 multiplier (27 x 18 bits, two's complement) into partial products that each fit one,
summed in fabric. Yosys splits such products itself, but by its own rule: a 28 x 21-bit product
becomes 4 DSP48E2, against 2 when the 21-bit operand takes the 27-bit port and the other is cut
into 17-bit pieces. One product per DSP48E2 is also what the pipeline schedule
(:mod:`qpelican.rtl.timing`) assumes.
"""
import heapq
import itertools
import time
from dataclasses import dataclass, field

import numpy as np
from da4ml.trace import FixedVariable, FixedVariableArrayInput, HWConfig, comb_trace
from da4ml.trace.fixed_variable import to_csd_powers

from qpelican.core.errors import ExportError
from qpelican.core.formats import FixedFormat
from qpelican.hw.plan import make_plan
from qpelican.rtl.rounding import kif, quantize_conv

# plan classes the trace implements
PLANNED = ("MomentumInput", "ParticleMask", "LorentzInvariants", "LinEq2to2", "LinEq2to0", "L1CandidateInput",
           "CandidateMask", "L1Invariants")
STAGE_TITLES = {"invariants": "invariants d_ij", "lineq2to2": "LinEq 2->2", "lineq2to0": "LinEq 2->0"}
# DSP48E2 multiplier ports, two's complement (UG579): A 27 bits, B 18 bits
DSP_A_BITS, DSP_B_BITS = 27, 18
SPLIT_LABEL = "extra partial products (products wider than one DSP48E2, split)"


@dataclass
class TracedModel:
    """A traced model: the whole graph, its stage cuts and what was counted while tracing.

    Attributes:
      comb: da4ml CombLogic of the whole model (input p_hat flattened N*4, output logits).
      stages: {stage name: CombLogic} of each stage alone (its inputs are the previous cut).
      plan: the firmware plan the trace was built from.
      n_in: constituents delivered (without beams); n: particles the firmware sees.
      input_kif, output_kif: da4ml (k, i, f) of one input value and of the outputs.
      counts: operator inventory counted while tracing, per stage (see :func:`_Counter`).
      seconds: tracing time.
    """

    comb: object
    stages: dict
    plan: dict
    n_in: int
    n: int
    input_kif: tuple
    output_kif: tuple
    counts: dict = field(default_factory=dict)
    seconds: float = 0.0

    def predict(self, p_hat):
        """Bit-exact int64 interpretation of the graph (da4ml's C++ interpreter) on p_hat (B, N_in, 4)."""
        x = np.asarray(p_hat, np.float64).reshape(len(p_hat), -1)
        return np.asarray(self.comb.predict(x), np.float64).reshape(len(p_hat), -1)


class _Counter:
    """Operator inventory of the traced graph, in the words of ``qpelican.hw.cost``."""

    def __init__(self):
        self.stage = None
        self.counts = {}

    def add(self, what, count=1):
        d = self.counts.setdefault(self.stage, {})
        d[what] = d.get(what, 0) + int(count)


def tree_sum(values):
    """Sum of FixedVariables as a balanced adder tree (earliest-ready operands first).

    Args:
      values: list of FixedVariable (constants allowed).
    Returns the sum (a FixedVariable), or None for an empty list.
    """
    values = [v for v in values if not (v.low == v.high == 0)]
    if not values:
        return None
    tie = itertools.count()
    heap = [(float(v.latency), next(tie), v) for v in values]
    heapq.heapify(heap)
    while len(heap) > 1:
        _, _, a = heapq.heappop(heap)
        _, _, b = heapq.heappop(heap)
        s = a + b
        heapq.heappush(heap, (float(s.latency), next(tie), s))
    return heap[0][2]


def signed_width(v):
    """Bits of a traced value as a two's-complement operand (an unsigned one needs a zero sign bit)."""
    _, i, f = v.kif
    return int(i) + int(f) + 1


def _split_low(v, bits):
    """(lo, hi) with v = lo + hi exactly: lo the lowest ``bits`` bits (unsigned), hi the rest (wiring)."""
    k, i, f = (int(x) for x in v.kif)
    return v.quantize(0, bits - f, f, "WRAP", "TRN"), v.quantize(k, i, f - bits, "WRAP", "TRN")


def dsp_mul(a, b, counter):
    """a * b (exact) as products that each fit one DSP48E2 multiplier, summed in fabric.

    The wider operand is cut into pieces for the port the narrower one does not take: 26-bit
    unsigned pieces for the 27-bit port when the narrower operand fits the 18-bit one, else 17-bit
    pieces for the 18-bit port. Each extra piece is counted under SPLIT_LABEL.
    """
    if a.low == a.high or b.low == b.high:
        return a * b  # a constant operand: shifts and additions
    wa, wb = signed_width(a), signed_width(b)
    if wa < wb:
        a, b, wa, wb = b, a, wb, wa
    if wa <= DSP_A_BITS and wb <= DSP_B_BITS:
        return a * b
    lo, hi = _split_low(a, DSP_A_BITS - 1 if wb <= DSP_B_BITS else DSP_B_BITS - 1)
    counter.add(SPLIT_LABEL)
    return dsp_mul(lo, b, counter) + dsp_mul(hi, b, counter)


def _zero(hw):
    return FixedVariable.from_const(0.0, hw)


def _sum_or_zero(values, hw):
    s = tree_sum(values)
    return _zero(hw) if s is None else s


def _adders(values):
    """Adders a tree_sum of ``values`` uses (constant zeros dropped)."""
    return max(sum(1 for v in values if not (v.low == v.high == 0)) - 1, 0)


def const_mul(x, w):
    """x * constant w as shifts and additions in canonical signed digits.

    da4ml's own ``x * w`` adds the digits smallest first, which makes the result's internal scale
    factor the smallest digit: after a few layers of 18-bit normalisers the unscaled integers pass
    2^40 and da4ml's int64 interpreter goes wrong. Adding onto the largest digit keeps the scale of
    the result that of ``x`` times the leading power of two.
    """
    w = float(w)
    if w == 0 or x.low == x.high:
        return x * w
    if w < 0:
        return -const_mul(x, -w)
    digits = sorted(to_csd_powers(w), key=abs, reverse=True)
    acc = x * digits[0]
    for dgt in digits[1:]:
        acc = acc + x * dgt
    return acc


def _cmul(x, w, counter, what):
    """x * constant w, counted as one constant multiplication."""
    if w == 0:
        counter.add("zero coefficients (no product)")
        return _zero(x.hwconf)
    counter.add(what)
    return const_mul(x, w)


def _table(n_var, values, n_max, counter, what):
    """Normaliser t(n) as a traced value: a constant if the table does not depend on n, else a lookup."""
    values = np.asarray(values, np.float64)
    lo, hi = float(n_var.low), float(n_var.high)
    used = values[int(lo):int(hi) + 1]
    if np.all(used == used[0]):
        return FixedVariable.from_const(float(used[0]), n_var.hwconf)
    counter.add(what)
    return n_var.lookup(values, original_qint=(0.0, float(n_max), 1.0))


def _biases(p, key, n_var, counter):
    """Bias of each output channel: a float constant, or with ``bias_tables`` (a folded BatchNorm) the
    entry of its table over the multiplicity n (a lookup; a constant where the table does not vary
    over the n that occur)."""
    co = p.params["n_out"]
    values = np.asarray(p.weights[key][0], np.float64)
    if not p.params["bias_tables"]:
        return [float(v) for v in values]
    table = values.reshape(p.params["n"] + 1, co)
    out = [_table(n_var, table[:, h], p.params["n"], counter, "bias table lookups") for h in range(co)]
    return [float(t.low) if t.low == t.high else t for t in out]


def _mask(bit, value):
    """value if bit else 0 (bit: a one-bit traced value or a constant 0/1)."""
    if bit.low == bit.high:
        return value if bit.low else _zero(value.hwconf)
    if value.low == value.high == 0:
        return value
    return bit.msb_mux(value, _zero(value.hwconf))


def _and(a, b):
    """a AND b of two mask bits (constants folded)."""
    if a.low == a.high:
        return b if a.low else a
    if b.low == b.high:
        return a if b.low else b
    return a & b


def _act_quantize(z, fmt, relu, exact):
    """Activation, then the output quantizer (or the exact value for a float output)."""
    if relu and z.low < 0 and z.low != z.high:
        z = z.relu()
    elif relu and z.low == z.high:
        z = FixedVariable.from_const(max(float(z.low), 0.0), z.hwconf)
    return z if exact else quantize_conv(z, *kif(fmt))


def _trace_inputs(p, hw, counter):
    """p_hat -> (momenta N x 4 with padded particles zeroed, mask bits, multiplicity n)."""
    counter.stage = "invariants"
    fmt = p.params["input_format"]
    n_in, beams = p.params["n_in"], p.params["beams"]
    inp = FixedVariableArrayInput(n_in * 4, hwconf=hw)
    raw = inp.quantize(*kif(fmt), "WRAP", "TRN")._vars.reshape(n_in, 4)
    mom, mask = [], []
    if beams:
        e = float(p.params["beam_energy"])
        one = FixedVariable.from_const(1.0, hw)
        for pz in (e, -e):
            mom.append([FixedVariable.from_const(v, hw) for v in (e, 0.0, 0.0, pz)])
            mask.append(one)
    for i in range(n_in):
        m = raw[i, 0]._ne(0)  # m_i = [E_i != 0]
        counter.add("mask bits E_i != 0")
        # zero the 3-momentum of padded particles: then d_ij = 0 for every pair with one of them
        mom.append([raw[i, 0]] + [_mask(m, raw[i, c]) for c in (1, 2, 3)])
        counter.add("momentum masks", 3)
        mask.append(m)
    n_var = _sum_or_zero(mask, hw)
    counter.add("multiplicity adders", _adders(mask))
    return inp, mom, mask, n_var


def _trace_l1_inputs(p, hw, counter):
    """Level-1 candidates -> ((pT, eta, phi) per particle, mask bits, multiplicity n); with beams the
    beam comes first, (None, None, None) and always present (its products are the candidates' pT)."""
    counter.stage = "invariants"
    n, a = p.params["n_in"], p.params["angle_bits"]
    inp = FixedVariableArrayInput(n * 3, hwconf=hw)
    raw = inp.quantize(*kif(p.params["input_format"]), "WRAP", "TRN")._vars.reshape(n, 3)
    cands, mask = [], []
    if p.params["beams"]:
        cands.append((None, None, None))
        mask.append(FixedVariable.from_const(1.0, hw))
    for i in range(n):
        pt = raw[i, 0].quantize(*kif(p.params["pt_format"]), "WRAP", "TRN")
        eta, phi = (raw[i, c].quantize(1, a - 1, 0, "WRAP", "TRN") for c in (1, 2))
        m = pt._ne(0)  # m_i = [pT_i != 0]
        counter.add("mask bits pT_i != 0")
        cands.append((pt, eta, phi))
        mask.append(m)
    n_var = _sum_or_zero(mask, hw)
    counter.add("multiplicity adders", _adders(mask))
    return inp, cands, mask, n_var


def _trace_l1_invariants(p, cands, counter):
    """d_ij = Q((pT_i pT_j) R_ij 2^-shift), R_ij = deta^2 + dphi^2, for pairs i < j; a beam's d_bj = Q(pT_j).

    P_ij = pT_i pT_j does not wait for R_ij (the order of the HLS header, (pT_i R_ij) pT_j, puts
    three products in a row); the signed differences are squared directly (no magnitudes).
    """
    fmt, scale = p.params["invariant_format"], 2.0 ** -p.params["shift"]
    d = {}
    for i in range(len(cands)):
        for j in range(i + 1, len(cands)):
            (pi, ei, fi), (pj, ej, fj) = cands[i], cands[j]
            if pi is None:  # the beam (padding has pT_j = 0, so d_bj = 0 there)
                d[i, j] = quantize_conv(pj, *kif(fmt))
                continue
            de, dp = ei - ej, fi - fj
            r = dsp_mul(de, de, counter) + dsp_mul(dp, dp, counter)
            counter.add("angle differences", 2)
            counter.add("squares deta^2, dphi^2", 2)
            counter.add("R_ij sums", 1)
            pp = dsp_mul(pi, pj, counter)
            counter.add("pT_i pT_j, (pT_i pT_j) R_ij products", 2)
            d[i, j] = quantize_conv(dsp_mul(pp, r, counter) * scale, *kif(fmt))
    return d


def _trace_invariants(p, mom, counter):
    fmt = p.params["invariant_format"]
    n = len(mom)
    d = {}
    for i in range(n):
        for j in range(i + 1, n):
            a, b = mom[i], mom[j]
            terms = [dsp_mul(a[0], b[0], counter)] + [-dsp_mul(a[c], b[c], counter) for c in (1, 2, 3)]
            counter.add("p_i.p_j component products", sum(1 for t in terms if t.low != t.high))
            counter.add("p_i.p_j sums", _adders(terms))
            d[i, j] = quantize_conv(_sum_or_zero(terms, a[0].hwconf), *kif(fmt))
    return d


def _x(d, i, j, c, hw):
    """Element (i, j, c) of the symmetric, zero-diagonal input (single invariant channel) or a dense array."""
    if isinstance(d, dict):
        if i == j:
            return _zero(hw)
        return d[min(i, j), max(i, j)] if c == 0 else _zero(hw)
    return d[i][j][c]


def _trace_2to2(p, d, mask, n_var, counter):
    counter.stage = "lineq2to2"
    hw = n_var.hwconf
    n, ci, co = p.params["n"], p.params["n_in"], p.params["n_out"]
    w = np.asarray(p.weights["w"][0]).reshape(ci, co, 6)
    b, bd = _biases(p, "b", n_var, counter), _biases(p, "bd", n_var, counter)
    agg = kif(p.params["aggregate_format"])
    alias = p.params["alias"]
    # column sums S_j = sum_{k != j} x_kj (= row sums, x is symmetric) and the total T, exact
    S = [[_sum_or_zero([_x(d, k, j, c, hw) for k in range(n) if k != j], hw) for c in range(ci)] for j in range(n)]
    counter.add("column sums S_j", sum(_adders([_x(d, k, j, c, hw) for k in range(n) if k != j])
                                      for j in range(n) for c in range(ci)))
    T = [_sum_or_zero([S[j][c] for j in range(n)], hw) for c in range(ci)]
    counter.add("total sum T", sum(_adders([S[j][c] for j in range(n)]) for c in range(ci)))
    tabs = {k: [_table(n_var, np.asarray(p.weights[f"t{k}"][0]).reshape(n + 1, ci)[:, c], n, counter,
                       "normaliser lookups") if alias[k] == k else None for c in range(ci)] for k in range(5)}

    def aggregate(k, src, c):
        k = alias[k]
        t = tabs[k][c]
        counter.add("aggregate x normaliser products" if t.low != t.high else "aggregate x constant normaliser")
        return quantize_conv(const_mul(src, t.low) if t.low == t.high else dsp_mul(src, t, counter), *agg)

    vec = {}  # op -> [particle][channel] aggregates; ops sharing a table share the aggregate
    for k in (1, 2, 3):
        src = alias[k - 1] + 1
        vec[k] = vec[src] if src != k else [[aggregate(k - 1, S[j][c], c) for c in range(ci)] for j in range(n)]
    sca = {}
    for k in (4, 5):
        src = alias[k - 1] + 1
        sca[k] = sca[src] if src != k else [aggregate(k - 1, T[c], c) for c in range(ci)]
    what = "row/column/diagonal coefficients"
    # Where the biases go. The T aggregates (sca) end the critical path, the S_j aggregates (vec) are
    # ready several adders earlier. A constant bias joins the scalar terms sc/dsc (da4ml adds a constant
    # without delay); a folded BatchNorm's b(n), bd(n) is a lookup of n, ready since the invariants
    # stage, so it joins the early per-particle sums (col, the diagonal's early terms) instead: one
    # adder per particle and channel more, none on the critical path. Every sum is exact, so the order
    # of the additions does not change a bit.
    b_var, bd_var = ([None if isinstance(v, float) else v for v in t] for t in (b, bd))
    sc = [_sum_or_zero([_cmul(sca[4][c], w[c, h, 4], counter, what) for c in range(ci)], hw)
          + (0.0 if b_var[h] is not None else b[h]) for h in range(co)]
    dsc = [_sum_or_zero([_cmul(sca[5][c], w[c, h, 5], counter, what) for c in range(ci)], hw)
           + (0.0 if bd_var[h] is not None else bd[h]) for h in range(co)]
    row = [[_sum_or_zero([sc[h]] + [_cmul(vec[3][i][c], w[c, h, 3], counter, what) for c in range(ci)], hw)
            for h in range(co)] for i in range(n)]
    col = [[_sum_or_zero([_cmul(vec[2][i][c], w[c, h, 2], counter, what) for c in range(ci)]
                         + ([b_var[h]] if b_var[h] is not None else []), hw)
            for h in range(co)] for i in range(n)]
    # diagonal term: c_2 * vec1 (+ bd(n), both early, added first by tree_sum) + dsc
    dia = [[[dsc[h]] + [_cmul(vec[1][i][c], w[c, h, 1], counter, what) for c in range(ci)]
            + ([bd_var[h]] if bd_var[h] is not None else []) for h in range(co)] for i in range(n)]
    out_fmt, relu, sym = p.params["output_format"], p.params["relu"], p.params.get("symmetric", False)
    y = [[[None] * co for _ in range(n)] for _ in range(n)]
    for i in range(n):
        for h in range(co):
            z = row[i][h] + col[i][h] + _sum_or_zero(dia[i][h], hw)
            y[i][i][h] = _mask(mask[i], _act_quantize(z, out_fmt, relu, False))
        for j in range(i + 1, n):
            mij = _and(mask[i], mask[j])
            for h in range(co):
                # c1 * x_ij once per unordered pair, shared by ij and ji
                e = _sum_or_zero([_cmul(_x(d, i, j, c, hw), w[c, h, 0], counter, "c1 * d_ij (unordered pairs)")
                                  for c in range(ci)], hw)
                # symmetric layer: row_i + col_j = row_j + col_i exactly (same coefficient and table for
                # S_i and S_j), so z_ji is z_ij
                for a, bb in ((i, j),) if sym else ((i, j), (j, i)):
                    z = e + row[a][h] + col[bb][h]
                    y[a][bb][h] = _mask(mij, _act_quantize(z, out_fmt, relu, False))
                if sym:
                    y[j][i][h] = y[i][j][h]
            counter.add("pair masks", co if sym else 2 * co)
    counter.add("output quantizers", (n * (n + 1) // 2 if sym else n * n) * co)
    return y


def _trace_2to0(p, y, n_var, counter):
    counter.stage = "lineq2to0"
    hw = n_var.hwconf
    n, ci, co = p.params["n"], p.params["n_in"], p.params["n_out"]
    w = np.asarray(p.weights["w"][0]).reshape(ci, 2, co)
    b = _biases(p, "b", n_var, counter)
    agg = kif(p.params["aggregate_format"])
    t0 = _table(n_var, p.weights["t0"][0], n, counter, "normaliser lookups")
    t1 = _table(n_var, p.weights["t1"][0], n, counter, "normaliser lookups")
    u1, u2 = [], []
    for c in range(ci):
        diag = [y[i][i][c] for i in range(n)]
        if p.params.get("symmetric_input"):  # y_ji = y_ij: each pair i < j twice (a shift), then the diagonal
            every = [y[i][j][c] * 2.0 for i in range(n) for j in range(i + 1, n)] + diag
        else:
            every = [y[i][j][c] for i in range(n) for j in range(n)]
        counter.add("total sum over pairs", _adders(every))
        counter.add("trace", _adders(diag))
        for t, src, dst in ((t0, _sum_or_zero(every, hw), u1), (t1, _sum_or_zero(diag, hw), u2)):
            counter.add("aggregate x normaliser products" if t.low != t.high else "aggregate x constant normaliser")
            dst.append(quantize_conv(const_mul(src, t.low) if t.low == t.high else dsp_mul(src, t, counter), *agg))
    out = []
    for h in range(co):
        terms = [_cmul(u1[c], w[c, 0, h], counter, "output coefficients") for c in range(ci)]
        terms += [_cmul(u2[c], w[c, 1, h], counter, "output coefficients") for c in range(ci)]
        # a constant bias is added without delay; a lookup b(n) joins the adder tree, where it meets the
        # early trace terms rather than the late total sum
        z = _sum_or_zero(terms, hw) + b[h] if isinstance(b[h], float) else _sum_or_zero(terms + [b[h]], hw)
        out.append(_act_quantize(z, p.params["output_format"], p.params["relu"], p.params["float_output"]))
    return out


def _formats(model, plan):
    """Attach the quantizer formats (FixedFormat) of each planned layer to its params."""
    for p in plan["layers"]:
        layer = model.get_layer(p.name)
        if p.keras_class == "MomentumInput":
            p.params["input_format"] = layer.input_format
        elif p.keras_class == "L1CandidateInput":  # one input type holds the pT format and the angles
            pt, a = layer.input_format, layer.angle_bits
            integer, frac = max(pt.integer, a - 1), max(pt.frac, 0)
            p.params["input_format"] = FixedFormat(1 + integer + frac, integer, True)
            p.params["pt_format"] = pt
        elif p.keras_class in ("LorentzInvariants", "L1Invariants"):
            p.params["invariant_format"] = layer.invariant_format
        elif p.keras_class in ("LinEq2to2", "LinEq2to0"):
            p.params["aggregate_format"] = layer.aggregate_format
            p.params["output_format"] = layer.output_format
    return plan


def _cut(inputs, outputs):
    """CombLogic of the graph between two cuts; inputs whose range is a constant are dropped."""
    ins = [v for v in inputs if v.low != v.high]
    outs = [v for v in outputs]
    return comb_trace(ins, outs)


def trace_model(model, plan=None):
    """Trace a quantized nano model (or raise ExportError naming the layer it cannot handle).

    Args:
      model: tf-keras nanoPELICAN, every tensor quantized (as ``export-hls`` requires).
      plan: its firmware plan (default: ``make_plan(model)``).
    Returns a :class:`TracedModel`.
    """
    t0 = time.perf_counter()
    plan = _formats(model, plan or make_plan(model))
    by_class = {p.keras_class: p for p in plan["layers"]}
    front = ("L1CandidateInput", "L1Invariants") if "L1CandidateInput" in by_class else ("MomentumInput",
                                                                                          "LorentzInvariants")
    for cls in front:
        if cls not in by_class:
            other = next((p for p in plan["layers"] if p.keras_class not in PLANNED), plan["layers"][0])
            raise ExportError(f"layer {other.name!r} ({other.keras_class}): the RTL back end traces the 4-momentum "
                              "front end (MomentumInput -> LorentzInvariants) or the Level-1 candidate front end "
                              "(L1CandidateInput -> L1Invariants) built by qpelican.build_model.")
    for p in plan["layers"]:
        if p.keras_class == "LinEq2to2" and p.params["n_in"] != 1:
            raise ExportError(f"layer {p.name!r}: the RTL back end traces the nano graph with one invariant "
                              "channel into LinEq2to2.")
    l1 = "L1CandidateInput" in by_class  # Level-1 candidates (data.format: l1)
    lor = by_class["L1Invariants" if l1 else "LorentzInvariants"]
    if not l1 and not lor.params["zero_diagonal"]:
        raise ExportError(f"layer {lor.name!r}: the nano graph needs zero_diagonal invariants.")
    hw = HWConfig(1, -1, -1)
    counter = _Counter()
    if l1:
        inp, cands, mask, n_var = _trace_l1_inputs(by_class["L1CandidateInput"], hw, counter)
        d = _trace_l1_invariants(lor, cands, counter)
    else:
        inp, mom, mask, n_var = _trace_inputs(by_class["MomentumInput"], hw, counter)
        d = _trace_invariants(lor, mom, counter)
    y = _trace_2to2(by_class["LinEq2to2"], d, mask, n_var, counter)
    out = _trace_2to0(by_class["LinEq2to0"], y, n_var, counter)
    comb = comb_trace(inp, out)
    d_vals = list(d.values())
    y_vals = list({id(v): v for row in y for col in row for v in col}.values())  # a symmetric y_ji is y_ij
    stages = {
        "invariants": comb_trace(inp, d_vals + [v for v in mask if v.low != v.high] + [n_var]),
        "lineq2to2": _cut(d_vals + list(mask) + [n_var], y_vals),
        "lineq2to0": _cut(y_vals + [n_var], out),
    }
    mi = by_class["L1CandidateInput" if l1 else "MomentumInput"]
    out_kif = tuple(int(v) for v in np.max(np.asarray(comb.out_kifs), axis=1))
    return TracedModel(comb=comb, stages=stages, plan=plan, n_in=mi.params["n_in"], n=mi.n,
                       input_kif=kif(mi.params["input_format"]), output_kif=out_kif,
                       counts=counter.counts, seconds=time.perf_counter() - t0)
