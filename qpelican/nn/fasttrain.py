"""Training fast path of nanoPELICAN: the O(N^2) part of a training step in one numba kernel per
jet, forward and backward, and everything else (the weights' quantizers and tables, the hidden
BatchNorm, the readout, the loss, the optimizer) in TensorFlow, on tensors of O(B N) entries.

A nanoPELICAN is a chain of per-pair arithmetic between two small sets of numbers. The kernel
takes, per jet, the effective weights of the 2->2 layer (its rounded coefficients ``w`` (C, 6),
the normalisers ``t(n)`` (5,), the biases of its multiplicity ``b(n)``, ``b_diag(n)``) and the
input BatchNorm's affine map (a, b), and returns six sums per hidden channel h:

    K1 = sum_ij h_ij     K2 = sum_ij h_ij^2     K3 = sum_ij k_ij h_ij     K4 = sum_ij k_ij
    K5 = sum_i k_ii h_ii                        K6 = sum_i k_ii

over the real pairs, with ``h = Q_act(relu(z))`` the hidden array and ``k`` the hidden dropout's
keep flags. K1, K2 are the hidden BatchNorm's batch moments; ``s (a K3 + b K4)`` and
``s (a K5 + b K6)`` are the readout's total and trace after BatchNorm and dropout. TensorFlow
differentiates the rest (``LinEq2to0.readout``, ``MaskedBatchNorm.affine``, the loss and the
weights' own quantizers and tables) and hands the kernel dL/dK; the kernel recomputes the jet
and returns dL/d(w, t, b, b_diag, a, b). Nothing of size B N^2 is ever stored.

The forward pass is the model's, entry for entry: the same front and invariants as the
inference fast path (:mod:`qpelican.nn.fastpath`), the input BatchNorm with the batch's
statistics, the hashed pair dropout with the layers' own seeds (``PairDropout.draw_seeds``,
``keep_mask``), the rounding points of the layers, and the straight-through gradients of
QKeras's quantizers (1 inside the range, 0 where it clips; ReLU's 0 below 0). It computes in
float64 where the layers compute in float32 in training; losses agree to ~1e-6 and gradients
to ~1e-5 (tested).

Supported: what :func:`qpelican.nn.fastpath.plan` supports, with at most one BatchNorm and one
dropout (in that order) before each equivariant layer, as :func:`qpelican.nn.models.build_model`
builds them. :func:`train_plan` says why not otherwise, and training then takes ``model.fit``.
"""
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
import tf_keras
from numba import njit, prange

from qpelican.nn import fastpath
from qpelican.nn.fastpath import ACT2, AGG2, INVARIANT, front_rows, invariants, l1_beam, round_to
from qpelican.nn.layers import L1Invariants, MaskedBatchNorm, PairDropout
from qpelican.nn.layers.dropout import LEVELS

N_SUMS = 6  # K1..K6 (module docstring)
JETS_PER_TASK = 8  # jets per parallel task: per-jet results, so the split changes no value


@dataclass
class TrainPlan:
    """The layers a fast training step reads, and the constants of its kernel."""

    eq2: object
    eq0: object
    bn_in: object            # MaskedBatchNorm before the 2->2 layer, or None
    bn_h: object             # MaskedBatchNorm before the readout, or None
    drop_in: object          # PairDropout before the 2->2 layer, or None
    drop_h: object           # PairDropout before the readout, or None
    shape: tuple             # (N, F) of the inputs
    rows: int                # M: rows of the pair arrays (N plus the beams)
    l1: bool
    front_scale: float
    beams: np.ndarray
    qin: np.ndarray
    l1_shift: float
    qgrid: np.ndarray        # (3, 4): the invariants', aggregates' and activation's grids


def _regularisers(graph, name, mask_name):
    """The BatchNorm and the dropout (each or None) between a layer's input and the layer that
    produced it, or a string if they are not at most one of each in that order."""
    found = []
    layer, ins = graph[name]
    while type(layer) in (PairDropout, MaskedBatchNorm):
        if type(layer) is MaskedBatchNorm and (len(ins) != 2 or ins[1] != mask_name):
            return "a BatchNorm with another mask"
        found.insert(0, layer)
        layer, ins = graph[ins[0]]
    kinds = [type(x) for x in found]
    if kinds not in ([], [MaskedBatchNorm], [PairDropout], [MaskedBatchNorm, PairDropout]):
        return "other than one BatchNorm then one dropout between two layers"
    bn = found[0] if kinds and kinds[0] is MaskedBatchNorm else None
    drop = found[-1] if kinds and kinds[-1] is PairDropout else None
    return bn, drop


def train_plan(model):
    """A :class:`TrainPlan` of a model the training kernel computes, or a string saying why not."""
    ch = fastpath.chain(model)
    if isinstance(ch, str):
        return ch
    why = fastpath.why_not(ch)
    if why:
        return why
    graph, _ = fastpath.layer_graph(model)
    eq2, eq0 = ch["eq2"], ch["eq0"]
    mask_name = graph[eq0.name][1][1]
    regs = [_regularisers(graph, graph[layer.name][1][0], mask_name) for layer in (eq2, eq0)]
    for r in regs:
        if isinstance(r, str):
            return r
    if (regs[0][0] is None) != (regs[1][0] is None):
        return "a BatchNorm before one equivariant layer only"
    front = fastpath.front_constants(ch["front"])
    n, f = (int(d) for d in model.inputs[0].shape[1:])
    inv = ch["inv"]
    l1 = type(inv) is L1Invariants
    return TrainPlan(eq2=eq2, eq0=eq0, bn_in=regs[0][0], bn_h=regs[1][0], drop_in=regs[0][1], drop_h=regs[1][1],
                     shape=(n, f), rows=n + len(front["beams"]), l1=l1,
                     front_scale=front["front_scale"], beams=front["beams"], qin=front["qin"],
                     l1_shift=2.0 ** -inv.shift if l1 else 1.0,
                     qgrid=np.array([fastpath.grid(fmt) for fmt in (inv.invariant_format, eq2.aggregate_format,
                                                                       eq2.output_format)]))


# ---------------------------------------------------------------------------------- the kernel
@njit(inline="always")
def _keep(idx, seed, threshold):
    """1.0 if the pair dropout keeps entry ``idx`` of a jet with seed ``seed`` (0 <= seed < 2^32),
    else 0.0: the hash of ``qpelican.nn.layers.dropout.keep_mask``, in 64-bit integers."""
    h = (idx * 0x9E3779B9 + seed) & 0xFFFFFFFF
    h = ((h ^ (h >> 15)) * 0x2C1B3C6D) & 0xFFFFFFFF
    return 1.0 if (h >> 16) >= threshold else 0.0


@njit(inline="always")
def _jet_input(p, m, l1, scale, beams, qin, shift, gi, ab, seed_in, thr_in, s_in, bn, unit, q, pos, x, dk, kk, s,
               cd, ck):
    """The 2->2 layer's input of one jet: returns n and fills, over the real rows i < n,
    x_ij = k_ij s (a d_ij + b) (k: the input dropout's keep flags, s its scale; (a, b) the input
    BatchNorm) and the column sums s_j = sum_i x_ij; with ``bn`` also dk_ij = k_ij d_ij,
    kk_ij = k_ij and their column sums cd_j, ck_j (for the BatchNorm's gradient). Columns
    n..npad-1 are zero."""
    n = front_rows(p, l1, scale, beams, qin, q, pos)
    invariants(q, n, l1, shift, unit, gi, x, s)  # x = d (zero diagonal), s its row sums (= column sums)
    if l1 and beams.shape[0] > 0:
        l1_beam(q, n, unit, gi, x, s)
    if thr_in == 0 and not bn:
        return n
    npad = (n + 7) // 8 * 8
    a, b = ab[0], ab[1]
    s[:npad] = 0.0
    cd[:npad] = 0.0
    ck[:npad] = 0.0
    for i in range(n):
        xi, dki, kki = x[i], dk[i], kk[i]
        base = pos[i] * m
        if bn:
            for j in range(n):
                k = _keep(base + pos[j], seed_in, thr_in) if thr_in > 0 else 1.0
                d = xi[j]
                dki[j] = k * d
                kki[j] = k
                xi[j] = k * s_in * (a * d + b)
                s[j] += xi[j]
                cd[j] += k * d
                ck[j] += k
            dki[n:npad] = 0.0
            kki[n:npad] = 0.0
        else:
            for j in range(n):
                xi[j] *= _keep(base + pos[j], seed_in, thr_in) * s_in
                s[j] += xi[j]
    return n


@njit(inline="always")
def _hidden_terms(n, s, t, w, bias, dbias, k, gq, r, c, dg):
    """r, c, dg of z_ij = w0 x_ij + r_i + c_j + delta_ij dg_i (nano basis), in units of the
    activation's LSB k (1 in float), from the column sums s and normalisers t; returns T."""
    tsum = 0.0
    for j in range(n):
        tsum += s[j]
    a_ts, a_td = round_to(tsum * t[3], gq), round_to(tsum * t[4], gq)
    for j in range(n):
        a_d, a_c, a_r = round_to(s[j] * t[0], gq), round_to(s[j] * t[1], gq), round_to(s[j] * t[2], gq)
        for h in range(w.shape[0]):
            r[h, j] = (a_r * w[h, 3] + (bias[h] + a_ts * w[h, 4])) * k
            c[h, j] = a_c * w[h, 2] * k
            dg[h, j] = (a_d * w[h, 1] + a_td * w[h, 5] + dbias[h]) * k
    c[:, n:] = -1e300  # the padding of the rows: z = -1e300 there, so h = 0 and no gradient
    return tsum


@njit(inline="always")
def _hidden_keep(n, pos, m, thr_h, seed_h, kh):
    """kh[h, i, j]: the hidden dropout's keep flag of entry (i, j, h); 0 on the padding columns."""
    ch = kh.shape[0]
    npad = (n + 7) // 8 * 8
    for h in range(ch):
        for i in range(n):
            khi = kh[h, i]
            base = pos[i] * m * ch + h
            for j in range(n):
                khi[j] = _keep(base + pos[j] * ch, seed_h, thr_h)
            khi[n:npad] = 0.0


@njit(inline="always")
def _sums_row(xi, ki, w0, ri, ch, npad, top, quant, drop):
    """(sum h, sum h^2, sum k h, sum k) over row i of the hidden array (units of the LSB when
    quantized). The flags are literals at each call: every variant is its own vectorised loop."""
    a1 = a2 = a3 = a4 = 0.0
    for j in range(npad):
        z = w0 * xi[j] + ri + ch[j]
        v = min(max(np.rint(z), 0.0), top) if quant else max(z, 0.0)
        a1 += v
        a2 += v * v
        if drop:
            a3 += ki[j] * v
            a4 += ki[j]
    return a1, a2, a3, a4


@njit(inline="always")
def _forward_sums(x, n, wk, r, c, dg, kh, top, quant, drop, k, out):
    """out[h] = K1..K6 (module docstring) of one jet; the pair loop counts h in units of k."""
    for h in range(wk.shape[0]):
        w0, ch, khh = wk[h, 0], c[h], kh[h]
        npad = (n + 7) // 8 * 8
        k1 = k2 = k3 = k4 = k5 = k6 = 0.0
        for i in range(n):
            xi, ki, ri = x[i], khh[i], r[h, i]
            if quant:
                a1, a2, a3, a4 = (_sums_row(xi, ki, w0, ri, ch, npad, top, True, True) if drop
                                  else _sums_row(xi, ki, w0, ri, ch, npad, top, True, False))
            else:
                a1, a2, a3, a4 = (_sums_row(xi, ki, w0, ri, ch, npad, top, False, True) if drop
                                  else _sums_row(xi, ki, w0, ri, ch, npad, top, False, False))
            z = w0 * xi[i] + ri + ch[i]
            if quant:
                v0, vd = min(max(np.rint(z), 0.0), top), min(max(np.rint(z + dg[h, i]), 0.0), top)
            else:
                v0, vd = max(z, 0.0), max(z + dg[h, i], 0.0)
            kd = ki[i] if drop else 1.0
            k1 += a1 + vd - v0  # the loop took z_ii without its diagonal terms
            k2 += a2 + vd * vd - v0 * v0
            k3 += a3 + kd * (vd - v0)
            k4 += a4
            k5 += kd * vd
            k6 += kd
        if not drop:
            k3, k4 = k1, float(n * n)
        out[h, 0], out[h, 1], out[h, 2] = k1 / k, k2 / (k * k), k3 / k
        out[h, 3], out[h, 4], out[h, 5] = k4, k5 / k, k6


@njit(inline="always")
def _grad_row(xi, ki, dki, kki, w0, ri, ch, colh, npad, top, g1, g2, g3, quant, drop, bn):
    """dz_ij = dL/dz_ij along row i (recomputing z), summed: returns (sum_j dz, sum dz x,
    sum dz dk, sum dz kk) (the last two with ``bn`` only) and adds dz to colh[j]. Flags as
    :func:`_sums_row`."""
    rs = ex = e = f = 0.0
    for j in range(npad):
        z = w0 * xi[j] + ri + ch[j]
        on = (z > 0.0) & (z <= top) if quant else z > 0.0
        g = g1
        if bn:
            g += g2 * (min(max(np.rint(z), 0.0), top) if quant else z)
        if drop:
            g += g3 * ki[j]
        dz = g if on else 0.0
        rs += dz
        colh[j] += dz
        ex += dz * xi[j]
        if bn:
            e += dz * dki[j]
            f += dz * kki[j]
    return rs, ex, e, f


@njit(inline="always")
def _grad_row_of(xi, ki, dki, kki, w0, ri, ch, colh, npad, top, g1, g2, g3, quant, drop, bn):
    """:func:`_grad_row` with its flags as literals: the 6 loops of a model (a quantized model
    has no BatchNorm)."""
    if quant:
        if drop:
            return _grad_row(xi, ki, dki, kki, w0, ri, ch, colh, npad, top, g1, g2, g3, True, True, False)
        return _grad_row(xi, ki, dki, kki, w0, ri, ch, colh, npad, top, g1, g2, g3, True, False, False)
    if drop:
        if bn:
            return _grad_row(xi, ki, dki, kki, w0, ri, ch, colh, npad, top, g1, g2, g3, False, True, True)
        return _grad_row(xi, ki, dki, kki, w0, ri, ch, colh, npad, top, g1, g2, g3, False, True, False)
    if bn:
        return _grad_row(xi, ki, dki, kki, w0, ri, ch, colh, npad, top, g1, g2, g3, False, False, True)
    return _grad_row(xi, ki, dki, kki, w0, ri, ch, colh, npad, top, g1, g2, g3, False, False, False)


@njit(inline="always")
def _backward_pairs(x, dk, kk, n, wk, r, c, dg, kh, top, quant, drop, bn, k, g, rows, cols, diag, ef):
    """dz_ij^h = dL/dz_ij^h from g[h] = dL/dK1..K6, recomputing z, summed into rows[h, i],
    cols[h, j], diag[h, i] (dz_ii) and ef[h] = (sum dz x, sum dz dk, sum dz kk)."""
    npad = (n + 7) // 8 * 8
    for h in range(wk.shape[0]):
        w0, ch, khh, colh = wk[h, 0], c[h], kh[h], cols[h]
        g1, g2, g3, g5 = g[h, 0], 2.0 * g[h, 1] / k, g[h, 2], g[h, 4]  # dK2/dv = 2 v / k^2
        g1row = g1 if drop else g1 + g3  # without dropout every real entry is kept
        colh[:npad] = 0.0
        ex_all = e_all = f_all = 0.0
        for i in range(n):
            xi, ki, dki, kki, ri = x[i], khh[i], dk[i], kk[i], r[h, i]
            rs, ex, e, f = _grad_row_of(xi, ki, dki, kki, w0, ri, ch, colh, npad, top, g1row, g2, g3, quant, drop, bn)
            z = w0 * xi[i] + ri + ch[i]
            zd = z + dg[h, i]
            kd = ki[i] if drop else 1.0
            if quant:
                v0, vd = min(max(np.rint(z), 0.0), top), min(max(np.rint(zd), 0.0), top)
                on0, ond = (z > 0.0) & (z <= top), (zd > 0.0) & (zd <= top)
            else:
                v0, vd, on0, ond = z, zd, z > 0.0, zd > 0.0
            d0 = g1 + g2 * v0 + g3 * kd if on0 else 0.0
            dd = g1 + g2 * vd + (g3 + g5) * kd if ond else 0.0
            fix = dd - d0  # the loop took z_ii without its diagonal terms
            rows[h, i] = rs + fix
            colh[i] += fix
            diag[h, i] = dd
            ex_all += ex + fix * xi[i]
            if bn:
                e_all += e + fix * dki[i]
                f_all += f + fix * kki[i]
        ef[h, 0], ef[h, 1], ef[h, 2] = ex_all, e_all, f_all


@njit(inline="always")
def _passes(v, gq):
    """The straight-through gradient of rounding v onto grid gq: 1 inside its range, else 0."""
    return 1.0 if gq[3] == 0.0 or (gq[1] <= v <= gq[2]) else 0.0


@njit(inline="always")
def _backward_weights(n, s, tsum, t, w, gq, rows, cols, diag, ef, cd, ck, s_in, bn, gw, gt, gb, gdb, gab):
    """dL/d(w, t, bias, diag bias, (a, b)) of one jet from its summed dz (:func:`_backward_pairs`)."""
    ch = w.shape[0]
    a_ts, a_td = round_to(tsum * t[3], gq), round_to(tsum * t[4], gq)
    g4 = g5 = 0.0
    for h in range(ch):
        rsum = dsum = 0.0
        for j in range(n):
            rsum += rows[h, j]
            dsum += diag[h, j]
        gw[h, 0] = ef[h, 0]
        gw[h, 1] = gw[h, 2] = gw[h, 3] = 0.0
        gw[h, 4], gw[h, 5] = a_ts * rsum, a_td * dsum
        gb[h], gdb[h] = rsum, dsum
        g4 += w[h, 4] * rsum
        g5 += w[h, 5] * dsum
    g4 *= _passes(tsum * t[3], gq)
    g5 *= _passes(tsum * t[4], gq)
    gt[0] = gt[1] = gt[2] = 0.0
    gt[3], gt[4] = g4 * tsum, g5 * tsum
    g_total = g4 * t[3] + g5 * t[4]  # dL/dT: every column sum is in T
    ga = gb_ = 0.0
    for j in range(n):
        a_d, a_c, a_r = round_to(s[j] * t[0], gq), round_to(s[j] * t[1], gq), round_to(s[j] * t[2], gq)
        g1 = g2 = g3 = 0.0
        for h in range(ch):
            gw[h, 1] += diag[h, j] * a_d
            gw[h, 2] += cols[h, j] * a_c
            gw[h, 3] += rows[h, j] * a_r
            g1 += diag[h, j] * w[h, 1]
            g2 += cols[h, j] * w[h, 2]
            g3 += rows[h, j] * w[h, 3]
        g1 *= _passes(s[j] * t[0], gq)
        g2 *= _passes(s[j] * t[1], gq)
        g3 *= _passes(s[j] * t[2], gq)
        gt[0] += g1 * s[j]
        gt[1] += g2 * s[j]
        gt[2] += g3 * s[j]
        if bn:
            gs = g1 * t[0] + g2 * t[1] + g3 * t[2] + g_total  # dL/dS_j
            ga += gs * cd[j]
            gb_ += gs * ck[j]
    for h in range(ch):  # the element term w0 x_ij
        ga += w[h, 0] * ef[h, 1]
        gb_ += w[h, 0] * ef[h, 2]
    gab[0], gab[1] = (s_in * ga, s_in * gb_) if bn else (0.0, 0.0)  # without the BatchNorm (a, b) = (1, 0)


FASTMATH = {"reassoc", "contract", "nsz"}


@njit(inline="always")
def _scratch(m, mpad, nf, ch):
    return (np.zeros((m, mpad)), np.zeros((m, mpad)), np.zeros((m, mpad)), np.empty((nf, mpad)),
            np.empty(m, np.int64), np.zeros(mpad), np.zeros(mpad), np.zeros(mpad),
            np.empty((ch, m)), np.full((ch, mpad), -1e300), np.empty((ch, m)), np.zeros((ch, m, mpad)))


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _train_forward(p, l1, scale, beams, qin, shift, qg, ab, s_in, seeds_in, thr_in, seeds_h, thr_h, bn,
                   w, t, bias, dbias, out):
    """out[jet] = K1..K6 (C, 6) of each jet of p (B, N, F)."""
    n_jets, nf, ch = p.shape[0], p.shape[2], w.shape[0]
    m = p.shape[1] + beams.shape[0]
    mpad = (m + 7) // 8 * 8
    ga = qg[ACT2]
    quant = ga[3] != 0.0
    k = ga[0] if quant else 1.0
    wk = w * k
    unit = np.array([1.0, 0.0])
    drop = thr_h > 0
    for task in prange((n_jets + JETS_PER_TASK - 1) // JETS_PER_TASK):
        x, dk, kk, q, pos, s, cd, ck, r, c, dg, kh = _scratch(m, mpad, nf, ch)
        for jet in range(task * JETS_PER_TASK, min(n_jets, (task + 1) * JETS_PER_TASK)):
            n = _jet_input(p[jet], m, l1, scale, beams, qin, shift, qg[INVARIANT], ab, seeds_in[jet], thr_in, s_in,
                           bn, unit, q, pos, x, dk, kk, s, cd, ck)
            _hidden_terms(n, s, t[jet], w, bias[jet], dbias[jet], k, qg[AGG2], r, c, dg)
            if drop:
                _hidden_keep(n, pos, m, thr_h, seeds_h[jet], kh)
            _forward_sums(x, n, wk, r, c, dg, kh, ga[2] * ga[0], quant, drop, k, out[jet])


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _train_backward(p, l1, scale, beams, qin, shift, qg, ab, s_in, seeds_in, thr_in, seeds_h, thr_h, bn,
                    w, t, bias, dbias, g, gw, gt, gb, gdb, gab):
    """Per jet, dL/d(w, t, bias, diag bias, (a, b)) into gw (B, C, 6), gt (B, 5), gb, gdb (B, C),
    gab (B, 2), from g = dL/dK (B, C, 6)."""
    n_jets, nf, ch = p.shape[0], p.shape[2], w.shape[0]
    m = p.shape[1] + beams.shape[0]
    mpad = (m + 7) // 8 * 8
    ga = qg[ACT2]
    quant = ga[3] != 0.0
    k = ga[0] if quant else 1.0
    wk = w * k
    unit = np.array([1.0, 0.0])
    drop = thr_h > 0
    for task in prange((n_jets + JETS_PER_TASK - 1) // JETS_PER_TASK):
        x, dk, kk, q, pos, s, cd, ck, r, c, dg, kh = _scratch(m, mpad, nf, ch)
        rows, cols, diag, ef = np.empty((ch, m)), np.zeros((ch, mpad)), np.empty((ch, m)), np.empty((ch, 3))
        for jet in range(task * JETS_PER_TASK, min(n_jets, (task + 1) * JETS_PER_TASK)):
            n = _jet_input(p[jet], m, l1, scale, beams, qin, shift, qg[INVARIANT], ab, seeds_in[jet], thr_in, s_in,
                           bn, unit, q, pos, x, dk, kk, s, cd, ck)
            tsum = _hidden_terms(n, s, t[jet], w, bias[jet], dbias[jet], k, qg[AGG2], r, c, dg)
            if drop:
                _hidden_keep(n, pos, m, thr_h, seeds_h[jet], kh)
            _backward_pairs(x, dk, kk, n, wk, r, c, dg, kh, ga[2] * ga[0], quant, drop, bn, k, g[jet], rows, cols,
                            diag, ef)
            _backward_weights(n, s, tsum, t[jet], w, qg[AGG2], rows, cols, diag, ef, cd, ck, s_in, bn,
                              gw[jet], gt[jet], gb[jet], gdb[jet], gab[jet])


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _moments(p, l1, scale, beams, qin, shift, gi, pairs, out):
    """out[jet] = (n, sum_ij d_ij, sum_ij d_ij^2) over the real pairs of each jet (d_ii = 0); the
    sums only with ``pairs``."""
    n_jets, nf = p.shape[0], p.shape[2]
    m = p.shape[1] + beams.shape[0]
    mpad = (m + 7) // 8 * 8
    unit = np.array([1.0, 0.0])
    for task in prange((n_jets + JETS_PER_TASK - 1) // JETS_PER_TASK):
        x, q, pos, s = np.zeros((m, mpad)), np.empty((nf, mpad)), np.empty(m, np.int64), np.zeros(mpad)
        for jet in range(task * JETS_PER_TASK, min(n_jets, (task + 1) * JETS_PER_TASK)):
            n = front_rows(p[jet], l1, scale, beams, qin, q, pos)
            out[jet, 0] = n
            if not pairs:
                continue
            invariants(q, n, l1, shift, unit, gi, x, s)
            if l1 and beams.shape[0] > 0:
                l1_beam(q, n, unit, gi, x, s)
            s1 = s2 = 0.0
            for i in range(n):
                xi = x[i]
                for j in range(n):
                    s1 += xi[j]
                    s2 += xi[j] * xi[j]
            out[jet, 1], out[jet, 2] = s1, s2


# ------------------------------------------------------------------------------ TensorFlow side
def _unsigned(seeds):
    """int32 jet seeds as the uint32 values the dropout hash adds (in int64)."""
    return np.asarray(seeds, np.int64) & 0xFFFFFFFF


def _dropout(layer):
    """(threshold, scale) of a PairDropout (0, 1.0 without one)."""
    if layer is None or layer.threshold == 0:
        return 0, 1.0
    return layer.threshold, LEVELS / (LEVELS - layer.threshold)


class _Kernels:
    """The numba kernels with a plan's constants bound, as numpy functions for ``tf.numpy_function``."""

    def __init__(self, tp):
        self.tp = tp
        self.thr_in, self.s_in = _dropout(tp.drop_in)
        self.thr_h, self.s_h = _dropout(tp.drop_h)
        self.front = (tp.l1, np.float32(tp.front_scale), tp.beams, tp.qin, tp.l1_shift)
        self.channels = tp.eq2.channels
        self.bn = tp.bn_in is not None  # and tp.bn_h: train_plan takes both or neither

    def _args(self, x, seeds_in, seeds_h, ab, w, t, bias, dbias):
        return (np.ascontiguousarray(x, np.float32), *self.front, self.tp.qgrid, np.asarray(ab, np.float64),
                self.s_in, _unsigned(seeds_in), self.thr_in, _unsigned(seeds_h), self.thr_h,
                self.bn,
                np.ascontiguousarray(w), np.ascontiguousarray(t), np.ascontiguousarray(bias),
                np.ascontiguousarray(dbias))

    def moments(self, x):
        out = np.zeros((len(x), 3))
        _moments(np.ascontiguousarray(x, np.float32), *self.front, self.tp.qgrid[INVARIANT], self.tp.bn_in is not None,
                 out)
        return out

    def forward(self, *inputs):
        out = np.zeros((len(inputs[0]), self.channels, N_SUMS))
        _train_forward(*self._args(*inputs), out)
        return out

    def backward(self, *inputs_and_g):
        *inputs, g = inputs_and_g
        b, ch = len(inputs[0]), self.channels
        gw, gt, gb, gdb, gab = np.zeros((b, ch, 6)), np.zeros((b, 5)), np.zeros((b, ch)), np.zeros((b, ch)), np.zeros((b, 2))
        _train_backward(*self._args(*inputs), np.ascontiguousarray(g, np.float64), gw, gt, gb, gdb, gab)
        return gab.sum(axis=0), gw.sum(axis=0), gt, gb, gdb  # the order of the inputs (ab, w, t, bias, dbias)


def _batch_statistics(bn, first, second, count):
    """A training BatchNorm's (a, b) from summed moments over ``count`` entries; moves its
    inference statistics (as ``MaskedBatchNorm.call`` in training)."""
    mean = first / count
    var = tf.maximum(second / count - tf.square(mean), 0.0)
    bn.update_moving(mean, var)
    return bn.affine(mean, var)


def loss_and_gradients(model, tp=None):
    """A ``tf.function`` ``(x, y) -> (loss, gradients of model.trainable_variables)`` of a
    compiled model (its ``loss``) in training mode, through the kernels; ``tp`` its :func:`train_plan`."""
    tp = tp or train_plan(model)
    kern = _Kernels(tp)
    eq2, eq0 = tp.eq2, tp.eq0
    f64 = tf.float64
    variables = model.trainable_variables

    def pair_sums(x, seeds_in, seeds_h, ab, w, t, bias, dbias):
        @tf.custom_gradient
        def sums(ab, w, t, bias, dbias):
            inputs = [x, seeds_in, seeds_h, ab, w, t, bias, dbias]
            out = tf.ensure_shape(tf.numpy_function(kern.forward, inputs, f64, stateful=False),
                                  [None, kern.channels, N_SUMS])

            def grad(g):
                return tf.numpy_function(kern.backward, inputs + [g], [f64] * 5, stateful=False)

            return out, grad

        return sums(ab, w, t, bias, dbias)

    @tf.function(reduce_retracing=True)
    def step(x, y):
        b = tf.shape(x)[0]
        seeds_in = tp.drop_in.draw_seeds(b) if kern.thr_in else tf.zeros([b], tf.int32)
        seeds_h = tp.drop_h.draw_seeds(b) if kern.thr_h else tf.zeros([b], tf.int32)
        mom = tf.numpy_function(kern.moments, [x], f64, stateful=False)
        n = tf.cast(mom[:, 0], tf.int32)
        n2 = tf.maximum(tf.reduce_sum(tf.square(mom[:, 0])), 1.0)
        with tf.GradientTape() as tape:
            if tp.bn_in is not None:
                a, c = _batch_statistics(tp.bn_in, tf.reduce_sum(mom[:, 1:2], 0), tf.reduce_sum(mom[:, 2:3], 0), n2)
                ab = tf.concat([a, c], 0)
            else:
                ab = tf.constant([1.0, 0.0], f64)
            w = tf.cast(eq2.q("coefficient", eq2.kernel), f64)[0]
            bias, dbias = eq2.multiplicity_biases(f64)
            t = tf.gather(tf.cast(eq2.scale_table(), f64)[:, :, 0], n)
            k = pair_sums(x, seeds_in, seeds_h, ab, w, t, tf.gather(bias, n), tf.gather(dbias, n))
            if tp.bn_h is not None:
                a, c = _batch_statistics(tp.bn_h, tf.reduce_sum(k[:, :, 0], 0), tf.reduce_sum(k[:, :, 1], 0), n2)
            else:
                a, c = 1.0, 0.0
            total = kern.s_h * (a * k[:, :, 2] + c * k[:, :, 3])
            trace = kern.s_h * (a * k[:, :, 4] + c * k[:, :, 5])
            logits = tf.cast(eq0.readout(total, trace, n, f64), tf.float32)
            loss = model.loss(y, logits)
        return loss, tape.gradient(loss, variables)

    return step


def train_step(model):
    """The fast training step ``(x_all, y_all, idx) -> loss`` on the batch ``x_all[idx]`` (labels
    ``y_all[idx]``, shape (jets,)) of a compiled model (its optimizer and loss), or
    a string saying why the model trains through ``model.fit`` instead. Built once per optimizer."""
    cached = getattr(model, "_qpelican_train_step", None)
    if cached is not None and cached[0] is model.optimizer:
        return cached[1]
    tp = train_plan(model)
    if isinstance(tp, str):
        return tp
    grads = loss_and_gradients(model, tp)
    opt, variables = model.optimizer, model.trainable_variables

    @tf.function(reduce_retracing=True)
    def step(x_all, y_all, idx):
        loss, g = grads(tf.gather(x_all, idx), tf.gather(y_all, idx)[:, None])
        opt.apply_gradients(zip(g, variables))
        return loss

    model._qpelican_train_step = (opt, step)
    return step
