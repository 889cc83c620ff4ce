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
QKeras's quantizers (1 inside the range, 0 where it clips; ReLU's 0 below 0). The pair loops
run in float32, as the layers do in training (8 lanes of AVX2), four rows at a time into
column sums (float32, exact integers in LSB units for an 8-bit activation; a row's own sum
only where the gradient needs it), everything O(n) and every total in float64; losses agree
with the layers' to ~1e-6 and gradients to ~1e-5 (tested). A training step is not bit-exact
against ``model.fit`` (nor is one float32 order of operations against another); resume is, as
it replays the same kernels.

Dropout costs one draw and one decoding per dropped entry, in the forward pass only: without
branches (a dropped padding entry is written, then overwritten by the next), the draws
ending after the last real row, the gap table uint8 at the paper's rate so that it stays in
cache, each position split into row and column by a multiply and a shift, in unsigned
integers (numba tests every signed index for a negative one). The forward pass keeps the
decoded entries, one code (channel, i, j) per dropped real entry, in a buffer that the
backward pass of the same step reads: as a tensor (2.7 MB a step at N = 80) they cost the
step ~5%. The input dropout's entries are zeroed in the layer's input.
The forward pair loops take every hidden entry as kept; K3..K6 then lose the dropped ones'
h, recomputed at those entries alone, and each hidden code becomes the entry's offset in a
uint8 keep array (C, M + 3, Mpad) of the backward pass. There the entries are set to zero
before the jet and back to one after it, and the vectorised pair loops read the flags (a
variant of each loop without them, for models without hidden dropout): correcting dz at the
dropped entries instead, a row sum and two column sums updated in memory per entry, measured
three times dearer.

Supported: what :func:`qpelican.nn.fastpath.plan` supports, with at most one BatchNorm and one
dropout (in that order) before each equivariant layer, as :func:`qpelican.nn.models.build_model`
builds them. :func:`train_plan` says why not otherwise, and training then takes ``model.fit``.
"""
import os
import weakref
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
from numba import njit, prange

from qpelican.nn import fastpath
from qpelican.nn.fastpath import ACT2, AGG2, INVARIANT, front_rows, hidden_terms, invariants, l1_beam, round_to
from qpelican.nn.layers import L1Invariants, MaskedBatchNorm, PairDropout
from qpelican.nn.layers.dropout import LEVELS, draws, gap_table

N_SUMS = 6  # K1..K6 (module docstring)
JETS_PER_TASK = 8  # jets per parallel task: per-jet results, so the split changes no value
FASTMATH = {"reassoc", "contract", "nsz"}
f32, ZERO = np.float32, np.float32(0.0)  # the pair loops' arrays are float32: 8 lanes of AVX2
u32, u64 = np.uint32, np.uint64  # the dropout's indices: numba tests every signed index for a negative one
CODE_BITS = 12  # a dropped entry's code: (h << 2 CODE_BITS) | (i << CODE_BITS) | j, its channel and real pair
MAX_ROWS, MAX_CHANNELS = 1 << CODE_BITS, 64  # so that a code is below 2^30
OUT = -(1 << 30)  # a padding row's or column's part of a code: any sum with it is negative


@dataclass
class TrainPlan:
    """The layers a fast training step reads, and the constants of its kernel."""

    eq2: object
    eq0: object
    bn_in: object            # MaskedBatchNorm before the 2->2 layer, or None
    bn_h: object             # MaskedBatchNorm before the readout, or None
    drop_in: object          # PairDropout before the 2->2 layer, or None
    drop_h: object           # PairDropout before the readout, or None
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
    owned = {id(v) for layer in (ch["eq2"], ch["eq0"], *(r[0] for r in regs if r[0] is not None))
             for v in layer.trainable_weights}
    if any(id(v) not in owned for v in model.trainable_variables):
        return "trainable weights outside the equivariant layers and BatchNorms"
    front = fastpath.front_constants(ch["front"])
    n = int(model.inputs[0].shape[1])
    if n + len(front["beams"]) > MAX_ROWS or eq2.channels > MAX_CHANNELS:
        return f"more than {MAX_ROWS} rows or {MAX_CHANNELS} hidden channels (the dropped entries' codes)"
    inv = ch["inv"]
    l1 = type(inv) is L1Invariants
    return TrainPlan(eq2=eq2, eq0=eq0, bn_in=regs[0][0], bn_h=regs[1][0], drop_in=regs[0][1], drop_h=regs[1][1],
                     rows=n + len(front["beams"]), l1=l1,
                     front_scale=front["front_scale"], beams=front["beams"], qin=front["qin"],
                     l1_shift=2.0 ** -inv.shift if l1 else 1.0,
                     qgrid=np.array([fastpath.grid(fmt) for fmt in (inv.invariant_format, eq2.aggregate_format,
                                                                       eq2.output_format)]))


# ---------------------------------------------------------------------------------- the kernel
@njit(inline="always")
def _dropped(seed, gaps, draws, entries, out):
    """The dropped entries of a jet (positions < ``entries`` in the layer's row-major order) into
    out (uint64): ``qpelican.nn.layers.dropout.keep_mask``'s geometric gaps, in unsigned 64-bit
    integers; returns their number."""
    end, after, count, s = u64(entries), u64(0), u64(0), u64(seed)  # after: 1 + the last position
    for k in range(draws):
        h = (u64(k) * u64(0x9E3779B9) + s) & u64(0xFFFFFFFF)
        h = ((h ^ (h >> u64(15))) * u64(0x2C1B3C6D)) & u64(0xFFFFFFFF)
        after += u64(gaps[h >> u64(16)])
        if after > end:
            break
        out[count] = after - u64(1)
        count += u64(1)
    return count


@njit(inline="always")
def _magic(d):
    """(magic, shift) of :func:`_divmod` by d: shift = 31 + ceil(log2 d), magic = ceil(2^shift / d) < 2^32
    (unsigned)."""
    shift = 31
    while (1 << (shift - 31)) < d:
        shift += 1
    return u64(((1 << shift) + d - 1) // d), u64(shift)


@njit(inline="always")
def _divmod(p, d, magic):
    """(p // d, p % d) by a multiply and a shift, magic = :func:`_magic` (d): exact for 0 <= p < 2^31,
    as the product's error is below p / 2^shift < 1 / d, and p magic < 2^63 (an integer division
    costs ~30 cycles, a float64 product with its conversions more than this, and the dropped
    entries are decoded one by one)."""
    q = (u64(p) * magic[0]) >> magic[1]
    return q, u64(p) - q * u64(d)


@njit(inline="always")
def _jet_invariants(p, l1, scale, beams, qin, shift, gi, s_in, bn, unit, q, pos, rowof, x, s):
    """The invariants of one jet: returns n and fills, over the real rows i < n, x_ij = d_ij with
    ``bn`` (the BatchNorm comes with the input dropout, :func:`_layer_input`), else x_ij = s d_ij
    (s the dropout's scale) and its column sums s_j = sum_i x_ij. Columns n..npad-1 are zero;
    rowof[r] is the real particle in row r of the layer (-1: padding)."""
    n = front_rows(p, l1, scale, beams, qin, q, pos)
    rowof[:] = -1
    for i in range(n):
        rowof[pos[i]] = i
    affine = unit if bn else unit * s_in  # without BatchNorm x = s d: the dropout's scale applied here
    invariants(q, n, l1, shift, affine, gi, x, s)  # x = affine(d) (d_ii = 0), s its row sums (= column sums)
    if l1 and beams.shape[0] > 0:
        l1_beam(q, n, affine, gi, x, s)
    return n


@njit(inline="always")
def _entry(code):
    """(h, i, j) of a dropped entry's code (:data:`CODE_BITS`), unsigned."""
    u, mask = u32(code), u32((1 << CODE_BITS) - 1)
    return u >> u32(2 * CODE_BITS), (u >> u32(CODE_BITS)) & mask, u & mask


@njit(inline="always")
def _input_drops(seed, gaps, draws, entries, m, rowof, drops, codes):
    """The input dropout's dropped real entries (i, j) of one jet, as codes (:func:`_entry`, h = 0);
    returns their number."""
    count = _dropped(seed, gaps, draws, entries, drops)
    magic_m = _magic(m)
    real = u64(0)
    for e in range(count):  # without branches (a padding entry is written, then overwritten)
        row, col = _divmod(drops[e], m, magic_m)
        i, j = rowof[row], rowof[col]
        codes[real] = (i << CODE_BITS) | (j & ((1 << CODE_BITS) - 1))
        real += u64((i | j) >= 0)
    return real


@njit(inline="always")
def _input_map(ab, s_in):
    """(a, b) of x = a d + b: the input BatchNorm's map with the dropout's scale s_in, in float32
    (the layer's precision: 8 lanes, not 4)."""
    return np.array([ab[0] * s_in, ab[1] * s_in], np.float32)


@njit(inline="always")
def _layer_input(n, codes, count, ab_in, bn, grads, x, dk, kk, s, cd, ck):
    """The 2->2 layer's input after the input dropout's dropped entries (codes of
    :func:`_input_drops`), which are zeroed in x and taken out of its column sums s. With ``bn``,
    x holds d and one pass over the real entries makes x_ij = a d_ij + b ((a, b) = ab_in,
    :func:`_input_map`) and s_j first; with ``grads`` (the backward pass) it also makes the
    BatchNorm gradient's dk_ij = kk_ij d_ij, with kk_ij the flags (1 kept, 0 dropped), and their
    column sums cd_j, ck_j. Both passes take s in the same order, so the backward pass recomputes
    the forward pass's x and s bit for bit; the forward pass writes only x and s."""
    if bn:
        a, b = ab_in[0], ab_in[1]
        npad = (n + 7) // 8 * 8
        s[:npad] = 0.0
        if grads:
            cd[:npad] = ck[:npad] = 0.0
        for i in range(n):
            xi, dki, kki = x[i], dk[i], kk[i]
            for j in range(n):
                d = xi[j]
                xi[j] = a * d + b
                s[j] += xi[j]
                if grads:
                    dki[j], kki[j] = d, 1.0
                    cd[j] += d
                    ck[j] += 1.0
            if grads:
                dki[n:npad] = kki[n:npad] = 0.0
    for e in range(count):
        _, i, j = _entry(codes[e])
        s[j] -= x[i, j]
        x[i, j] = 0.0
        if bn and grads:  # by the entry's own values, as s: an entry listed twice is taken out once
            cd[j] -= dk[i, j]
            ck[j] -= kk[i, j]
            dk[i, j] = kk[i, j] = 0.0


@njit(inline="always")
def _last_row(pos, n):
    """1 + the last layer row holding a real particle: the dropout's draws can stop there."""
    last = 0
    for i in range(n):
        last = max(last, pos[i] + 1)
    return last


@njit(inline="always")
def _code_parts(m, ch, rowof, rowcode, colcode):
    """A jet's parts of the hidden dropout's codes (:func:`_entry`): rowcode[row] = i << CODE_BITS
    for the layer row holding real particle i, colcode[col C + h] = (h << 2 CODE_BITS) | j for the
    column holding j, and OUT for padding, so that a dropped entry's code is one sum, negative on
    padding."""
    for line in range(m):  # a row and a column of the layer
        i = rowof[line]
        rowcode[line] = i << CODE_BITS if i >= 0 else OUT
        for h in range(ch):
            colcode[line * ch + h] = (h << (2 * CODE_BITS)) | i if i >= 0 else OUT


@njit(inline="always")
def _hidden_drops(m, ch, last, rowcode, colcode, seed_h, gaps_h, draws_h, drops, codes):
    """The hidden dropout's dropped real entries of one jet, as codes (:func:`_code_parts`) into
    codes; returns their number."""
    count = _dropped(seed_h, gaps_h, draws_h, last * m * ch, drops)
    mc = m * ch
    magic = _magic(mc)
    real = u64(0)
    for e in range(count):  # without branches (a padding entry is written, then overwritten)
        row, rem = _divmod(drops[e], mc, magic)
        code = rowcode[row] + colcode[rem]
        codes[real] = code
        real += u64(code >= 0)
    return real


@njit(inline="always")
def _hidden(z, top, quant):
    """h of a pre-activation z (units of the LSB when quantized); float32 in the pair loops."""
    return min(max(np.rint(z), ZERO), top) if quant else max(z, ZERO)


@njit(inline="always")
def _on(z, top, quant):
    """Where the straight-through gradient of Q_act(relu(z)) is 1: z > 0, and z <= max quantized."""
    return (z > ZERO) & (z <= top) if quant else z > ZERO


@njit(inline="always")
def _drops_forward(codes, nd, n, x, wk, r, c, top, quant, kd, cc, cnt):
    """The hidden dropout's nd dropped entries (codes, :func:`_entry`) for :func:`_forward_sums`:
    cc[h, j] = the sum of their h in column j (z recomputed as the pair loops compute it, without
    the diagonal terms), cnt[h] their number in channel h, and kd[h, i] = 0 where a diagonal one
    is dropped (1 elsewhere). Scattered into columns, where two entries rarely meet, and read from
    flat arrays at unsigned offsets (a few instructions per entry). Each code is then replaced by
    the entry's offset in the backward pass's keep flags (:func:`_keep`: (C, M + 3, Mpad), x's
    rows and columns)."""
    kd[:, :n] = 1.0
    cc[:, :] = ZERO
    xf, rf, cf, ccf, kdf = x.reshape(-1), r.reshape(-1), c.reshape(-1), cc.reshape(-1), kd.reshape(-1)
    xw, rw, cw, kw = u32(x.shape[1]), u32(r.shape[1]), u32(c.shape[1]), u32(kd.shape[1])
    for h in range(cnt.shape[0]):  # one vectorised count per channel
        cnt[h] = 0
        for e in range(nd):
            cnt[h] += (codes[e] >> (2 * CODE_BITS)) == h
    for e in range(nd):
        h, i, j = _entry(codes[e])
        at = i * xw + j
        ccf[h * cw + j] += _hidden(wk[h, 0] * xf[at] + rf[h * rw + i] + cf[h * cw + j], top, quant)
        if i == j:
            kdf[h * kw + i] = ZERO
        codes[e] = h * u32(xf.size) + at


@njit(inline="always")
def _add_rows(x, i, w0, r, ch, cols, npad, top, quant):
    """Adds rows i..i+3 of the hidden array into the column sums cols: h and h^2. Four rows per
    pass, so that each column sum is loaded and stored once per four rows and no row ends in a
    horizontal reduction; ``quant`` is a literal at each call, so each variant is its own
    vectorised loop."""
    xa, xb, xc, xd = x[i], x[i + 1], x[i + 2], x[i + 3]
    ra, rb, rc, rd = r[i], r[i + 1], r[i + 2], r[i + 3]
    c1, c2 = cols[0], cols[1]
    for j in range(npad):
        cj = ch[j]
        va, vb = _hidden(w0 * xa[j] + ra + cj, top, quant), _hidden(w0 * xb[j] + rb + cj, top, quant)
        vc, vd = _hidden(w0 * xc[j] + rc + cj, top, quant), _hidden(w0 * xd[j] + rd + cj, top, quant)
        c1[j] += (va + vb) + (vc + vd)
        c2[j] += (va * va + vb * vb) + (vc * vc + vd * vd)


@njit(inline="always")
def _forward_sums(x, n, wk, r, c, dg, top, quant, k, kd, cc, cnt, cols, out):
    """out[h] = K1..K6 (module docstring) of one jet, the hidden dropout's entries as
    :func:`_drops_forward` gives them (kd, cc, cnt): the pair loops take every entry as kept,
    K3 loses cc and K4 cnt. The pair loops count h in units of k, four rows at a time into the
    column sums cols (rows n..n+2 are padding: r = -1e30 there, so h = 0 and dz = 0), and take
    z_ii without its diagonal terms, corrected row by row."""
    npad = (n + 7) // 8 * 8
    for h in range(wk.shape[0]):
        w0, ch, rh = wk[h, 0], c[h], r[h]
        cols[:, :npad] = ZERO
        for i in range(0, n, 4):
            if quant:
                _add_rows(x, i, w0, rh, ch, cols, npad, top, True)
            else:
                _add_rows(x, i, w0, rh, ch, cols, npad, top, False)
        k1 = k2 = dropped = k5 = k6 = 0.0
        for j in range(npad):
            k1 += cols[0, j]
            k2 += cols[1, j]
            dropped += cc[h, j]
        k3 = k1 - dropped
        for i in range(n):
            z = w0 * x[i, i] + rh[i] + ch[i]
            v0, vd, kii = _hidden(z, top, quant), _hidden(z + dg[h, i], top, quant), kd[h, i]
            k1 += vd - v0
            k2 += vd * vd - v0 * v0
            k3 += kii * (vd - v0)
            k5 += kii * vd
            k6 += kii
        out[h, 0], out[h, 1], out[h, 2], out[h, 4], out[h, 5] = k1 / k, k2 / (k * k), k3 / k, k5 / k, k6
        out[h, 3] = n * n - cnt[h]


@njit(inline="always")
def _keep(kh, offsets, nd, value):
    """Set the keep flags kh (C, M + 3, Mpad) of the backward pass at the hidden dropout's nd
    dropped entries (their offsets in kh, :func:`_drops_forward`) to value (0: drop; 1: restore)."""
    k = kh.reshape(-1)
    for e in range(nd):
        k[u32(offsets[e])] = value


@njit(inline="always")
def _grad_rows(x, dk, kk, kr, i, w0, r, ch, acc, npad, top, gs, quant, bn, keep):
    """dz_ij = dL/dz_ij along rows i..i+3 (recomputing z; kr: the channel's hidden keep flags,
    read with ``keep`` only): returns the four rows' sums of dz and adds, per column j, dz and
    dz x, or with ``bn`` dz dk and dz kk instead of dz x (x = a dk + b kk then gives its sum),
    into acc[0..3]. Four rows per pass, as in :func:`_add_rows`; the flags are literals at each
    call."""
    g1, g2, g3 = gs
    xa, xb, xc, xd = x[i], x[i + 1], x[i + 2], x[i + 3]
    ra, rb, rc, rd = r[i], r[i + 1], r[i + 2], r[i + 3]
    col, cx, ce, cf = acc[0], acc[1], acc[2], acc[3]
    sa = sb = sc = sd = ZERO
    for j in range(npad):
        cj = ch[j]
        za, zb, zc, zd = w0 * xa[j] + ra + cj, w0 * xb[j] + rb + cj, w0 * xc[j] + rc + cj, w0 * xd[j] + rd + cj
        if keep:
            ga, gb = g1 + g3 * f32(kr[i, j]), g1 + g3 * f32(kr[i + 1, j])
            gc, gd = g1 + g3 * f32(kr[i + 2, j]), g1 + g3 * f32(kr[i + 3, j])
        else:
            ga = gb = gc = gd = g1 + g3
        if bn:
            ga, gb = ga + g2 * _hidden(za, top, quant), gb + g2 * _hidden(zb, top, quant)
            gc, gd = gc + g2 * _hidden(zc, top, quant), gd + g2 * _hidden(zd, top, quant)
        da, db = ga if _on(za, top, quant) else ZERO, gb if _on(zb, top, quant) else ZERO
        dc, dd = gc if _on(zc, top, quant) else ZERO, gd if _on(zd, top, quant) else ZERO
        sa, sb, sc, sd = sa + da, sb + db, sc + dc, sd + dd
        col[j] += (da + db) + (dc + dd)
        if bn:
            ce[j] += (da * dk[i, j] + db * dk[i + 1, j]) + (dc * dk[i + 2, j] + dd * dk[i + 3, j])
            cf[j] += (da * kk[i, j] + db * kk[i + 1, j]) + (dc * kk[i + 2, j] + dd * kk[i + 3, j])
        else:
            cx[j] += (da * xa[j] + db * xb[j]) + (dc * xc[j] + dd * xd[j])
    return sa, sb, sc, sd


@njit(inline="always")
def _backward_pairs(x, dk, kk, ab, n, wk, r, c, dg, top, quant, bn, k, g, kh, hd, rows, acc, diag, ef):
    """dz_ij^h = dL/dz_ij^h from g[h] = dL/dK1..K6, recomputing z, summed into rows[h, i],
    acc[h, 0, j] (the column sums), diag[h, i] (dz_ii) and ef[h] = (sum dz x, sum dz dk,
    sum dz kk); with ``bn`` the loops sum only dz dk and dz kk, as x = a dk + b kk ((a, b) = ab,
    :func:`_input_map`). kh: the hidden keep flags of :func:`_keep` (with ``hd``); the blocks of
    four rows as in :func:`_forward_sums`."""
    npad = (n + 7) // 8 * 8
    for h in range(wk.shape[0]):
        w0, ch, rh, kr, ah = wk[h, 0], c[h], r[h], kh[h], acc[h]
        g1, g2, g3, g5 = g[h, 0], 2.0 * g[h, 1] / k, g[h, 2], g[h, 4]  # dK2/dv = 2 v / k^2
        gs = (np.float32(g1), np.float32(g2), np.float32(g3))  # the pair loops' float32
        ah[:, :npad] = ZERO
        for i in range(0, n, 4):
            if quant:  # (quant, bn, keep): literals at each call, so each variant is its own loop
                if hd:
                    sums = _grad_rows(x, dk, kk, kr, i, w0, rh, ch, ah, npad, top, gs, True, False, True)
                else:
                    sums = _grad_rows(x, dk, kk, kr, i, w0, rh, ch, ah, npad, top, gs, True, False, False)
            elif bn:
                if hd:
                    sums = _grad_rows(x, dk, kk, kr, i, w0, rh, ch, ah, npad, top, gs, False, True, True)
                else:
                    sums = _grad_rows(x, dk, kk, kr, i, w0, rh, ch, ah, npad, top, gs, False, True, False)
            elif hd:
                sums = _grad_rows(x, dk, kk, kr, i, w0, rh, ch, ah, npad, top, gs, False, False, True)
            else:
                sums = _grad_rows(x, dk, kk, kr, i, w0, rh, ch, ah, npad, top, gs, False, False, False)
            for e in range(4):  # rows n..n+2 are padding (dz = 0), written and never read
                rows[h, i + e] = sums[e]
        ex_all = e_all = f_all = 0.0
        for j in range(npad):
            if bn:
                e_all += ah[2, j]
                f_all += ah[3, j]
            else:
                ex_all += ah[1, j]
        if bn:
            ex_all = ab[0] * e_all + ab[1] * f_all
        for i in range(n):
            z = w0 * x[i, i] + rh[i] + ch[i]
            zd, kii = z + dg[h, i], f32(kr[i if hd else 0, i])
            d0 = g1 + g2 * _hidden(z, top, quant) + g3 * kii if _on(z, top, quant) else 0.0
            dd = g1 + g2 * _hidden(zd, top, quant) + (g3 + g5) * kii if _on(zd, top, quant) else 0.0
            fix = dd - d0  # the loop took z_ii without its diagonal terms
            rows[h, i] += fix
            ah[0, i] += fix
            diag[h, i] = dd
            ex_all += fix * x[i, i]
            if bn:
                e_all += fix * dk[i, i]
                f_all += fix * kk[i, i]
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




@njit(inline="always")
def _sizes(p, batch, beams, qg, w):
    """(jets, channels, rows M, M padded to 8, quantized, the activation's 2^F (1 in float), its
    top in LSBs) of a kernel call on the jets p[batch]."""
    m = p.shape[1] + beams.shape[0]
    ga = qg[ACT2]
    quant = ga[3] != 0.0
    return batch.shape[0], w.shape[0], m, (m + 7) // 8 * 8, quant, ga[0] if quant else 1.0, np.float32(ga[2] * ga[0])


@njit(inline="always")
def _scratch(m, mpad, nf, ch):
    """A task's arrays; the last, the aggregates of ``fastpath.hidden_terms``. x, dk, kk and r
    have rows up to M + 2, for the pair loops' blocks of four rows (:func:`_forward_sums`); x's
    row M stays zero."""
    return (np.zeros((m + 3, mpad), f32), np.zeros((m + 3, mpad), f32), np.zeros((m + 3, mpad), f32),
            np.empty((nf, mpad)), np.empty(m, np.int64), np.empty(m, np.int64),
            np.zeros(mpad), np.zeros(mpad), np.zeros(mpad),
            np.empty((ch, m + 3), f32), np.full((ch, mpad), f32(-1e30)), np.empty((ch, m), f32), np.empty((3, m)))


@njit(inline="always")
def _drop_slots(dl, draws_in):
    """A jet's row of the drop lists: (input codes, hidden codes or offsets), after the two counts."""
    return dl[2:2 + draws_in], dl[2 + draws_in:]


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _train_forward(p, batch, l1, scale, beams, qin, shift, qg, ab, s_in, seeds_in, gaps_in, draws_in, seeds_h, gaps_h, draws_h,
                   bn, w, t, bias, dbias, out, dl, mult):
    """out[jet] = K1..K6 (C, 6) of each jet p[batch[jet]] of p (jets, N, F), mult[jet] its multiplicity n (the row of
    the tables t (N+1, 5), bias, dbias (N+1, C) it reads); dl[jet] (2 + draws_in + draws_h,) int32
    its dropped entries for the backward pass: their numbers (input, hidden), the input's codes
    (:func:`_input_drops`) and the hidden's offsets in the keep flags (:func:`_drops_forward`)."""
    n_jets, ch, m, mpad, quant, k, top = _sizes(p, batch, beams, qg, w)
    wk, unit, ab_in = (w * k).astype(np.float32), np.array([1.0, 0.0]), _input_map(ab, s_in)
    for task in prange((n_jets + JETS_PER_TASK - 1) // JETS_PER_TASK):
        x, dk, kk, q, pos, rowof, s, cd, ck, r, c, dg, agg = _scratch(m, mpad, p.shape[2], ch)
        drops = np.empty(max(draws_in, draws_h, 1), u64)
        rowcode, colcode = np.empty(m, np.int64), np.empty(m * ch, np.int64)
        cols, cc, cnt, kd = np.zeros((2, mpad), f32), np.zeros((ch, mpad), f32), np.zeros(ch, np.int64), np.ones((ch, m), f32)
        for jet in range(task * JETS_PER_TASK, min(n_jets, (task + 1) * JETS_PER_TASK)):
            n = _jet_invariants(p[batch[jet]], l1, scale, beams, qin, shift, qg[INVARIANT], s_in, bn, unit, q, pos, rowof,
                                x, s)
            last, (codes, codes_h) = _last_row(pos, n), _drop_slots(dl[jet], draws_in)
            dl[jet, 0] = ni = _input_drops(seeds_in[jet], gaps_in, draws_in, last * m, m, rowof, drops, codes)
            mult[jet] = n
            _layer_input(n, codes, ni, ab_in, bn, False, x, dk, kk, s, cd, ck)
            hidden_terms(n, s, t[n], w, bias[n], dbias[n], k, qg[AGG2], agg, r, c, dg)
            if draws_h > 0:
                _code_parts(m, ch, rowof, rowcode, colcode)
            dl[jet, 1] = nd = _hidden_drops(m, ch, last, rowcode, colcode, seeds_h[jet], gaps_h, draws_h, drops, codes_h)
            _drops_forward(codes_h, nd, n, x, wk, r, c, top, quant, kd, cc, cnt)
            _forward_sums(x, n, wk, r, c, dg, top, quant, k, kd, cc, cnt, cols, out[jet])


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _train_backward(p, batch, l1, scale, beams, qin, shift, qg, ab, s_in, dl, draws_in, hidden_drops, bn, w, t, bias, dbias,
                    g, gw, gt, gb, gdb, gab):
    """Per jet p[batch[jet]], dL/d(w, t, bias, diag bias, (a, b)) into gw (B, C, 6), gt (B, 5), gb, gdb (B, C),
    gab (B, 2) (t, bias, diag bias: the rows of the jet's multiplicity), from g = dL/dK (B, C, 6)
    and the drop lists dl of :func:`_train_forward`."""
    n_jets, ch, m, mpad, quant, k, top = _sizes(p, batch, beams, qg, w)
    wk, unit, ab_in = (w * k).astype(np.float32), np.array([1.0, 0.0]), _input_map(ab, s_in)
    for task in prange((n_jets + JETS_PER_TASK - 1) // JETS_PER_TASK):
        x, dk, kk, q, pos, rowof, s, cd, ck, r, c, dg, agg = _scratch(m, mpad, p.shape[2], ch)
        rows, acc, diag, ef = np.empty((ch, m + 3)), np.zeros((ch, 4, mpad), f32), np.empty((ch, m)), np.empty((ch, 3))
        kh = np.ones((ch, m + 3 if hidden_drops else 1, mpad), np.uint8)  # the hidden keep flags (:func:`_keep`)
        for jet in range(task * JETS_PER_TASK, min(n_jets, (task + 1) * JETS_PER_TASK)):
            n = _jet_invariants(p[batch[jet]], l1, scale, beams, qin, shift, qg[INVARIANT], s_in, bn, unit, q, pos, rowof,
                                x, s)
            codes, codes_h = _drop_slots(dl[jet], draws_in)
            _layer_input(n, codes, dl[jet, 0], ab_in, bn, True, x, dk, kk, s, cd, ck)
            tsum = hidden_terms(n, s, t[n], w, bias[n], dbias[n], k, qg[AGG2], agg, r, c, dg)
            _keep(kh, codes_h, dl[jet, 1], 0)
            _backward_pairs(x, dk, kk, ab_in, n, wk, r, c, dg, top, quant, bn, k, g[jet], kh, hidden_drops,
                            rows, acc, diag, ef)
            _keep(kh, codes_h, dl[jet, 1], 1)
            _backward_weights(n, s, tsum, t[n], w, qg[AGG2], rows, acc[:, 0], diag, ef, cd, ck, s_in, bn,
                              gw[jet], gt[jet], gb[jet], gdb[jet], gab[jet])


@njit(inline="always")
def _gm(mm, a, c):
    """(G M)_ac for the metric G of :func:`_lorentz_moments`."""
    return 0.5 * mm[1 - a, c] if a < 2 else -mm[a, c]


@njit(inline="always")
def _lorentz_moments(q, n, mm, tot):
    """(sum_ij d_ij, sum_ij d_ij^2) over i != j of float (unrounded) Minkowski products of the
    momenta q[:, :n], in O(n) (``mm`` (5, 5), ``tot`` (5,): scratch). In light-cone coordinates
    along the jet's axis u, v = (E + p.u, E - p.u, p - (p.u) u), d_ij = v_i^T G v_j with
    G = [[0, 1/2], [1/2, 0]] + diag(-1, -1, -1); with S = sum_i v_i and M = sum_i v_i v_i^T, the
    sums over all i, j are S^T G S and tr(G M G M), and the diagonal's d_ii are then taken off.
    Along the axis every term is of the size of the d_ij themselves, so a narrow jet loses no
    digits to E^2 - p^2 (as it would in E, p)."""
    ax, ay, az = 0.0, 0.0, 0.0
    for i in range(n):
        ax, ay, az = ax + q[1, i], ay + q[2, i], az + q[3, i]
    norm = np.sqrt(ax * ax + ay * ay + az * az)
    ux, uy, uz = (ax / norm, ay / norm, az / norm) if norm > 0.0 else (0.0, 0.0, 1.0)
    mm[:] = 0.0
    tot[:] = 0.0
    diag1 = diag2 = 0.0
    for i in range(n):
        par = q[1, i] * ux + q[2, i] * uy + q[3, i] * uz
        v = (q[0, i] + par, q[0, i] - par, q[1, i] - par * ux, q[2, i] - par * uy, q[3, i] - par * uz)
        dii = v[0] * v[1] - v[2] * v[2] - v[3] * v[3] - v[4] * v[4]
        diag1 += dii
        diag2 += dii * dii
        for a in range(5):
            tot[a] += v[a]
            for c in range(5):
                mm[a, c] += v[a] * v[c]
    s1 = tot[0] * tot[1] - tot[2] * tot[2] - tot[3] * tot[3] - tot[4] * tot[4]
    s2 = 0.0
    for a in range(5):
        for c in range(5):
            s2 += _gm(mm, a, c) * _gm(mm, c, a)
    return s1 - diag1, s2 - diag2


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _moments(p, batch, l1, scale, beams, qin, shift, gi, out):
    """out[jet] = (n, sum_ij d_ij, sum_ij d_ij^2) over the real pairs of each jet p[batch[jet]] (d_ii = 0): from
    the momenta's Lorentz moments (:func:`_lorentz_moments`) where d_ij is a float Minkowski
    product (the p4 format, its grid off), else summed over the pairs."""
    n_jets, nf = batch.shape[0], p.shape[2]
    m = p.shape[1] + beams.shape[0]
    mpad = (m + 7) // 8 * 8
    unit = np.array([1.0, 0.0])
    for task in prange((n_jets + JETS_PER_TASK - 1) // JETS_PER_TASK):
        x, q, pos, s = np.empty((m, mpad)), np.empty((nf, mpad)), np.empty(m, np.int64), np.empty(mpad)
        mm, tot = np.empty((5, 5)), np.empty(5)
        for jet in range(task * JETS_PER_TASK, min(n_jets, (task + 1) * JETS_PER_TASK)):
            n = front_rows(p[batch[jet]], l1, scale, beams, qin, q, pos)
            out[jet, 0] = n
            if not l1 and nf == 4 and gi[3] == 0.0:
                out[jet, 1], out[jet, 2] = _lorentz_moments(q, n, mm, tot)
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


def kernels_ready(model):
    """Whether the kernels that ``model`` trains with are compiled in this process or in numba's
    cache for this source (a first step then loads them in seconds); False when that cannot be
    told. Compiling them takes a few minutes, once per installation."""
    tp = train_plan(model)
    kernels = (_train_forward, _train_backward) + ((_moments,) if getattr(tp, "bn_in", None) is not None else ())
    try:  # numba's cache index of this source: its entries, or none if the source has changed
        return all(k.signatures or k._cache._cache_file._load_index() for k in kernels)
    except (AttributeError, OSError):  # another numba's internals, or an unreadable cache
        return False


# ------------------------------------------------------------------------------ TensorFlow side
def leave_cores_to_kernels():
    """Give TensorFlow one inter-op and one intra-op thread in this process, so that the kernels'
    numba workers have the cores: a step's TensorFlow ops are small and follow one another, and
    TensorFlow's idle workers only took cores from the kernels between them (c2 at N = 80 on 2
    cores, processes alternated: epochs 1.05-1.8x slower with its default pools). Possible only
    before TensorFlow's first op, and left alone where TF_NUM_INTEROP_THREADS or
    TF_NUM_INTRAOP_THREADS is set; returns whether it took effect."""
    if any(os.environ.get(v) for v in ("TF_NUM_INTEROP_THREADS", "TF_NUM_INTRAOP_THREADS")):
        return False
    try:
        tf.config.threading.set_inter_op_parallelism_threads(1)
        tf.config.threading.set_intra_op_parallelism_threads(1)
    except RuntimeError:  # TensorFlow has started: its pools are fixed for the process
        return False
    return True


def _inputs(x):
    """The jets the kernels read (the whole training set: they index it by the batch's rows), as
    float32. Another type would be copied whole at every call, so :func:`train_step` converts a
    set that is not float32 a batch at a time in TensorFlow before it gets here."""
    return np.ascontiguousarray(x, np.float32)


def _rows(rows, x):
    """A batch's rows of the jets x, as the kernels index them (checked: they do not)."""
    rows = np.asarray(rows, np.int64)
    if len(rows) and not 0 <= rows.min() <= rows.max() < len(x):
        raise IndexError(f"rows {rows.min()}..{rows.max()} of {len(x)} jets")
    return rows


def _unsigned(seeds):
    """int32 jet seeds as the uint32 values the dropout hash adds (in int64)."""
    return np.asarray(seeds, np.int64) & 0xFFFFFFFF


class _Kernels:
    """The numba kernels with a plan's constants bound, as numpy functions for ``tf.numpy_function``."""

    def __init__(self, tp):
        self.tp = tp
        m, self.channels = tp.rows, tp.eq2.channels
        self.bn = tp.bn_in is not None  # and tp.bn_h: train_plan takes both or neither
        self.drop_in, self.s_in = self._dropout(tp.drop_in, m * m)
        self.drop_h, self.s_h = self._dropout(tp.drop_h, m * m * self.channels)
        self.front = (tp.l1, np.float32(tp.front_scale), tp.beams, tp.qin, tp.l1_shift)
        self.width = 2 + self.drop_in[1] + self.drop_h[1]  # of a row of the drop lists
        self._drop_lists, self._ticket = np.empty((0, self.width), np.int32), 0

    @staticmethod
    def _dropout(layer, entries):
        """((gap table, draws per jet), scale) of a PairDropout over ``entries`` per jet. The table
        is read at random once per draw, so it is as narrow as its values allow (uint8 at rates above
        ~4.6%, the paper's 5% included), to stay in cache; no dropout takes the same type, so
        the common recipes share one compiled kernel."""
        if layer is None or layer.threshold == 0:
            return (np.ones(LEVELS, np.uint8), 0), 1.0
        thr = layer.threshold
        gaps = gap_table(thr)
        narrow = next(t for t in (np.uint8, np.uint16, gaps.dtype) if gaps.max() <= np.iinfo(t).max)
        return (gaps.astype(narrow), draws(entries, thr)), LEVELS / (LEVELS - thr)

    def _front(self, x, rows, ab):
        return (_inputs(x), _rows(rows, x), *self.front, self.tp.qgrid, np.asarray(ab, np.float64), self.s_in)

    @staticmethod
    def _weights(w, t, bias, dbias):
        return tuple(np.ascontiguousarray(v) for v in (w, t, bias, dbias))

    def moments(self, x, rows):
        out = np.zeros((len(rows), 3))
        _moments(_inputs(x), _rows(rows, x), *self.front, self.tp.qgrid[INVARIANT], out)
        return out

    def forward(self, x, rows, seeds_in, seeds_h, ab, *weights):
        """(K (B, C, 6), the multiplicities (B,), a ticket for :meth:`backward`). The drop lists
        (B, 2 + draws) int32 that the backward pass reads stay in this object, in one buffer reused
        from step to step (why: the module docstring)."""
        b = len(rows)
        if len(self._drop_lists) < b:
            self._drop_lists = np.empty((b, self.width), np.int32)
        out, dl, mult = np.zeros((b, self.channels, N_SUMS)), self._drop_lists[:b], np.zeros(b)
        _train_forward(*self._front(x, rows, ab), _unsigned(seeds_in), *self.drop_in, _unsigned(seeds_h), *self.drop_h,
                       self.bn, *self._weights(*weights), out, dl, mult)
        self._ticket += 1
        return out, mult, np.int64(self._ticket)

    def backward(self, x, rows, ticket, ab, w, t, bias, dbias, g):
        b, ch = len(rows), self.channels
        if ticket != self._ticket:  # a step's backward pass follows its own forward pass, nothing between
            raise RuntimeError(f"drop lists of forward pass {self._ticket}, not {ticket}")
        gw, gt, gb, gdb, gab = np.zeros((b, ch, 6)), np.zeros((b, 5)), np.zeros((b, ch)), np.zeros((b, ch)), np.zeros((b, 2))
        _train_backward(*self._front(x, rows, ab), self._drop_lists[:b], self.drop_in[1], self.drop_h[1] > 0, self.bn,
                        *self._weights(w, t, bias, dbias), np.ascontiguousarray(g, np.float64), gw, gt, gb, gdb, gab)
        return gab.sum(axis=0), gw.sum(axis=0), gt, gb, gdb  # the order of the inputs (ab, w, t, bias, dbias)


def _pairs(mult):
    """The entries a masked BatchNorm averages over: n^2 per jet of multiplicity n (at least 1)."""
    return tf.maximum(tf.reduce_sum(tf.square(mult)), 1.0)


def _moments_of(first, second, count):
    """(mean, variance) over ``count`` entries from their sums of x and x^2 (``MaskedBatchNorm``'s
    training statistics)."""
    mean = first / count
    return mean, tf.maximum(second / count - tf.square(mean), 0.0)


def _jit(model):
    """Whether the TensorFlow parts run under XLA: as the model was compiled (``jit_compile``)."""
    return bool(getattr(model, "jit_compile", False))


def _halves(model, tp):
    """The two halves of a step of a compiled model (``tp``: its :func:`train_plan`), to be called
    inside a ``tf.function``, and the kernels (:class:`_Kernels`): ``run(x, rows, y, mom=None) ->
    (loss, rest)`` on the jets ``x[rows]`` and their labels ``y`` (B, 1) (mom: their moments for
    the input BatchNorm, :meth:`_Kernels.moments`, taken if not given), everything up to the
    kernel's backward pass (it moves the BatchNorms' inference statistics, as a training step
    does; the kernels read the rows of ``x`` themselves), and ``gradients(*rest)``, the gradients
    of ``model.trainable_variables``, a function of TensorFlow ops alone that the caller compiles
    with what follows it (the optimizer's update in a step).

    The TensorFlow parts are ``head`` (the jets' dropout seeds and the 2->2 layer's effective
    weights: its rounded coefficients, its tables of multiplicity n = 0..N, which the kernel
    indexes by each jet's n, and the input BatchNorm's map, from the variables), ``tail`` (hidden
    BatchNorm, readout and loss from the kernel's sums: the loss, dL/dK and the gradients of its
    variables), compiled with XLA when the model was, and, in ``gradients``, the head's gradients
    from the kernel's per-jet dL/d(weights), by ``output_gradients``. The multiplicities come from
    the forward kernel; with an input BatchNorm, whose batch statistics the forward pass needs,
    from a first pass (``moments``)."""
    kern = _Kernels(tp)
    eq2, eq0, bn_in, bn_h = tp.eq2, tp.eq0, tp.bn_in, tp.bn_h
    f64 = tf.float64
    head_vars = eq2.trainable_weights + (bn_in.trainable_weights if bn_in is not None else [])
    tail_vars = eq0.trainable_weights + (bn_h.trainable_weights if bn_h is not None else [])
    where = {id(v): (0, i) for i, v in enumerate(head_vars)} | {id(v): (1, i) for i, v in enumerate(tail_vars)}
    order = [where[id(v)] for v in model.trainable_variables]
    jit = _jit(model)

    def head_tables(stats_in):
        if bn_in is not None:
            a, c = bn_in.affine(*stats_in)
            ab = tf.concat([a, c], 0)
        else:
            ab = tf.constant([1.0, 0.0], f64)
        w = tf.cast(eq2.q("coefficient", eq2.kernel), f64)[0]
        bias, dbias = eq2.multiplicity_biases(f64)
        return ab, w, tf.cast(eq2.scale_table(), f64)[:, :, 0], bias, dbias

    @tf.function(jit_compile=jit)
    def head(mom, b):  # the dropout's draws and the BatchNorms' updates in the XLA calls too: a dozen small ops each
        seeds_in = tp.drop_in.draw_seeds(b) if kern.drop_in[1] else tf.zeros([b], tf.int32)
        seeds_h = tp.drop_h.draw_seeds(b) if kern.drop_h[1] else tf.zeros([b], tf.int32)
        stats_in = ()
        if bn_in is not None:
            stats_in = _moments_of(tf.reduce_sum(mom[:, 1:2], 0), tf.reduce_sum(mom[:, 2:3], 0), _pairs(mom[:, 0]))
            bn_in.update_moving(*stats_in)
        return seeds_in, seeds_h, stats_in, head_tables(stats_in)

    @tf.function(jit_compile=jit)
    def tail(k, mult, y):
        n = tf.cast(mult, tf.int32)
        with tf.GradientTape() as tape:
            tape.watch(k)
            if bn_h is not None:
                stats = _moments_of(tf.reduce_sum(k[:, :, 0], 0), tf.reduce_sum(k[:, :, 1], 0), _pairs(mult))
                a, c = bn_h.affine(*stats)
            else:
                a, c = 1.0, 0.0
            total = kern.s_h * (a * k[:, :, 2] + c * k[:, :, 3])
            trace = kern.s_h * (a * k[:, :, 4] + c * k[:, :, 5])
            logits = tf.ensure_shape(tf.cast(eq0.readout(total, trace, n, f64), tf.float32), [None, 1])
            loss = model.loss(tf.ensure_shape(y, [None, 1]), logits)
        if bn_h is not None:
            bn_h.update_moving(*stats)
        g = tape.gradient(loss, [k] + tail_vars)
        return loss, g[0], g[1:], n

    def run(x, rows, y, mom=None):
        if bn_in is not None and mom is None:
            mom = tf.numpy_function(kern.moments, [x, rows], f64, stateful=False)
        seeds_in, seeds_h, stats_in, weights = head(mom, tf.shape(rows)[0])
        k, mult, ticket = tf.numpy_function(kern.forward, [x, rows, seeds_in, seeds_h, *weights],
                                            [f64, f64, tf.int64], stateful=True)
        loss, g_k, g_tail, n = tail(tf.ensure_shape(k, [None, kern.channels, N_SUMS]), mult, y)
        g_weights = tf.numpy_function(kern.backward, [x, rows, ticket, *weights, g_k], [f64] * 5, stateful=True)
        return loss, (n, stats_in, g_weights, g_tail)

    def gradients(n, stats_in, g_weights, g_tail):
        with tf.GradientTape() as tape:
            ab, w, t, bias, dbias = head_tables(stats_in)
            per_jet = [ab, w, tf.gather(t, n), tf.gather(bias, n), tf.gather(dbias, n)]  # as the kernel read them
        g_head = tape.gradient(per_jet, head_vars, output_gradients=list(g_weights))
        return [(g_head, g_tail)[part][i] for part, i in order]

    return run, gradients, kern


class _SetMoments:
    """The input BatchNorm's per-jet moments (:meth:`_Kernels.moments`) of a whole float32
    training set, kept for as long as that set (a tensor, so never changed in place) lives: they
    depend on the jets alone, not on the weights, so one pass over the set replaces one pass per
    step (0.4-0.6 ms of a ~9 ms c2 8-bit step with BatchNorm), for 24 bytes a jet (the set's
    jets take 1,280 at N = 80)."""

    def __init__(self, kern):
        self.kern, self.of, self.values = kern, None, None

    def __call__(self, x_all, idx):
        """The moments (B, 3) of the jets x_all[idx] (a tensor), or None for a set that is not a
        float32 tensor (the step then takes them per batch)."""
        if not (isinstance(x_all, tf.Tensor) and x_all.dtype == tf.float32):
            return None
        if self.of is None or self.of() is not x_all:
            # through numpy_function, which hands numpy the tensor's memory (.numpy() copies it)
            self.values = tf.numpy_function(self.kern.moments, [x_all, tf.range(tf.shape(x_all)[0])], tf.float64,
                                            stateful=False).numpy()
            self.of = weakref.ref(x_all)
            weakref.finalize(x_all, self.forget)
        return tf.constant(self.values[_rows(idx, self.values)])  # a tensor: the step's call then binds nothing

    def forget(self):
        """Drop the moments if the set they belong to has died (called as each set kept dies)."""
        if self.of is not None and self.of() is None:
            self.of = self.values = None


def loss_and_gradients(model, tp=None):
    """A ``tf.function`` ``(x, y) -> (loss, gradients of model.trainable_variables)`` of a
    compiled model (its ``loss``) in training mode, through the kernels (``tp``: its
    :func:`train_plan`; the parts: :func:`_halves`). It moves the BatchNorms' inference
    statistics, as a training step does."""
    run, gradients, _ = _halves(model, tp or train_plan(model))
    grads = tf.function(gradients, jit_compile=_jit(model))

    @tf.function(reduce_retracing=True)
    def step(x, y):
        loss, rest = run(x, tf.range(tf.shape(x)[0]), y)
        return loss, grads(*rest)

    return step


def _concrete(fn):
    """``fn``, a ``tf.function`` of tensors of any first dimension, called through one concrete
    function per input types and trailing shapes (:func:`_flat_call`): a ``tf.function``'s own
    dispatch costs ~0.3 ms a call (a c2 8-bit step, interleaved: 7.0 ms through it, 6.7 ms without)."""
    cache = {}

    def call(*args):
        key = tuple((a.dtype, tuple(a.shape[1:])) for a in args)
        if key not in cache:
            cache[key] = _flat_call(fn.get_concrete_function(*[tf.TensorSpec([None, *a.shape[1:]], a.dtype)
                                                               for a in args]))
        return cache[key](*args)

    return call


def _flat_call(conc):
    """A call of the concrete function ``conc`` that hands tensors straight to its graph, in the
    order it was traced with, without the public call's binding of them to its signature (~0.2 ms
    of Python a call: a c2 8-bit QAT step, interleaved, 5.52 -> 5.32 ms median). Anything but
    tensors, or a TensorFlow without ``_call_flat`` (its private entry, which its public call
    ends in), goes through the public call."""
    call_flat = getattr(conc, "_call_flat", None)
    if call_flat is None:
        return conc

    def call(*args):
        if all(isinstance(a, tf.Tensor) for a in args):
            return call_flat(list(args), conc.captured_inputs)
        return conc(*args)

    return call


def train_step(model):
    """The fast training step ``(x_all, y_all, idx) -> loss`` (tensors) on the batch ``x_all[idx]``
    (labels ``y_all[idx]``, shape (jets,)) of a compiled model (its optimizer and loss), or
    a string saying why the model trains through ``model.fit`` instead. Built once per optimizer.
    With an input BatchNorm, it keeps the per-jet moments of a float32 set between steps
    (:class:`_SetMoments`)."""
    cached = getattr(model, "_qpelican_train_step", None)
    if cached is not None and cached[0] is model.optimizer:
        return cached[1]
    tp = train_plan(model)
    if isinstance(tp, str):
        return tp
    run, gradients, kern = _halves(model, tp)
    opt, variables = model.optimizer, model.trainable_variables
    set_moments = _SetMoments(kern) if tp.bn_in is not None else None

    @tf.function(jit_compile=_jit(model))
    def update(*rest):  # the head's gradients and the optimizer's update (a dozen small ops per variable) in one call
        opt.apply_gradients(zip(gradients(*rest), variables))

    def step(x_all, y_all, idx, mom=None):
        y = tf.gather(y_all, idx)[:, None]
        if x_all.dtype != tf.float32:  # the batch alone converted, not the whole set at every step
            x_all, idx = tf.cast(tf.gather(x_all, idx), tf.float32), tf.range(tf.size(idx))
        loss, rest = run(x_all, idx, y, mom)  # the kernels read the batch's rows themselves: no gather
        update(*rest)
        return loss

    # one tf.function per form: a concrete function traced without ``mom`` still asks for it when called
    with_moments = _concrete(tf.function(step))
    without = _concrete(tf.function(lambda x_all, y_all, idx: step(x_all, y_all, idx)))

    def call(x_all, y_all, idx):
        mom = set_moments(x_all, idx) if set_moments is not None else None
        return without(x_all, y_all, idx) if mom is None else with_moments(x_all, y_all, idx, mom)

    model._qpelican_train_step = (opt, call)
    return call
