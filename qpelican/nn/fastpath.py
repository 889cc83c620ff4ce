"""Inference fast path of nanoPELICAN: one fused numba kernel per jet, parallel over jets.

For each jet the kernel computes, on its n real particles only,

    p         the inputs on their grid (the front layer's float32 arithmetic), real particles kept
    d_ij      invariants (d_ii = 0), optionally a float BatchNorm a d + b
    S_j, T    column sums and total                                   (exact)
    A         aggregates Q_agg(S_j t_b(n)), Q_agg(T t_b(n))          (LinEq2to2, nano basis)
    z^h_ij    w0 d_ij + R^h_i + C^h_j + delta_ij D^h_i               (R, C, D: O(n) per channel)
    h^h_ij    Q_act(relu(z^h_ij))       summed at once into sum_ij h and sum_i h_ii
    U, logit  Q_agg(t(n) sum), Q_out(sum_h v U + b(n))                (LinEq2to0)

so the n x n array of one jet stays in cache and no (B, N, N, C) tensor is ever written. Every
weight, table and format is read from the Keras layers (:func:`plan`): the layers' own quantizers
round the coefficients, ``scale_table()`` / ``bias_tables()`` give the tables, the formats give
the grids (``FixedFormat``: 2^F, min, max), a float model's BatchNorms their inference affine map
(``qpelican.nn.fold``). The rounding itself, clip(rint(x 2^F) 2^-F), is ``qpelican.nn.quant.quantize``
written for numba (tested bit for bit against the layers).

Where the time goes (N = 80, 30-79 constituents, one thread, a quiet 2-core machine): about
2-3 us per jet for the inputs, invariants and aggregates, then about 0.4 us (float) or 0.5 us
(8-bit) per hidden channel in float32: c10 5.7 us (float) and 7.6 us (8-bit). The pair loops are
vectorised (rows padded to a multiple of 8, four rows per pass, the last block padded too, so that
no row takes a pass of its own); what is left is their arithmetic (an add, a fused multiply-add, a
round and a clip per pair and channel). The per-channel terms r, c and dg are one
vectorised loop per channel over the columns.
Computing d_ij for i < j only and mirroring it would save about a third of the invariants, but the
mirror is a strided copy that costs about as much.

Exactness (docs/fixed_point.md): a quantized model's every sum is exact in float64, so the kernel
computes in float64 and rounds half to even (``np.rint``, as ``tf.round``) exactly where the layers
round: its logits are bit-identical to ``model(x, training=False)``. The hidden layer's pair loops
run in float32 where :func:`pair_loops_float32` shows that they give the same bits (the recipes'
formats), else in float64. A float model's pair loops are float32, as the layers are; the rest is
float64: within 1e-5 of a float64 evaluation and of the Keras model (1e-3 with a float BatchNorm,
whose centring costs the float32 sums of the Keras model digits).

Supported (:func:`plan` says why not otherwise, and ``predict`` then takes the XLA path): the
nanoPELICAN graph of :func:`qpelican.nn.models.build_nanopelican` in the p4 or l1 (collider) input
format, with or without beams, any channels, sum/mean aggregation, alpha tables, folded-BatchNorm
bias tables (``input_shift``), dropout (identity in inference), and masked BatchNorms in float
models; fully float or fully quantized (every quantizer of the chain set).
"""
import os
from dataclasses import dataclass

import numba
import numpy as np
import tensorflow as tf
import tf_keras
from numba import njit, prange

from qpelican.nn.fold import batchnorm_affine
from qpelican.nn.quant import float32_exact
from qpelican.nn.layers.l1 import BEAM_PT
from qpelican.nn.layers import (CandidateMask, L1CandidateInput, L1Invariants, LinEq2to0, LinEq2to2,
                                LorentzInvariants, MaskedBatchNorm, MomentumInput, PairDropout, ParticleMask)

INVARIANT, AGG2, ACT2, AGG0, OUT0 = range(5)  # rows of the quantizer table: where the kernel rounds
CHUNK = 1 << 16  # jets per kernel call: memory stays one chunk's, whatever the number of jets


@dataclass
class Plan:
    """Everything the kernel reads (built by :func:`plan`); arrays are float64 unless noted."""

    shape: tuple             # (N, F): the model's input shape per jet
    l1: bool                 # Level-1 candidates (collider form) instead of 4-momenta
    front_scale: float       # p4: the float32 factor 1/scale of MomentumInput
    beams: np.ndarray        # (0 or 2, 4) the beam rows MomentumInput prepends
    qin: np.ndarray          # (6,) float32 input grid (see front_rows)
    quantized: bool
    l1_shift: float          # 2^-shift of the l1 invariants
    bn_in: np.ndarray        # (2,): a, b of the input BatchNorms (1, 0 without)
    w2: np.ndarray           # (C, 6) LinEq2to2 coefficients of the nano basis, per hidden channel
    tab2: np.ndarray         # (N+1, 5) LinEq2to2 normalisers of ops 1..5
    bias2: np.ndarray        # (N+1, C) bias off the diagonal, per multiplicity
    dbias2: np.ndarray       # (N+1, C) bias on the diagonal
    bn_h: np.ndarray         # (2, C): a, b of the hidden BatchNorms
    w0: np.ndarray           # (C, 2) LinEq2to0 coefficients of (total, trace)
    tab0: np.ndarray         # (N+1, 2) LinEq2to0 normalisers
    bias0: np.ndarray        # (N+1,) LinEq2to0 bias per multiplicity
    relu0: bool              # ReLU on the logit (else linear)
    qgrid: np.ndarray        # (5, 4): step scale 2^F, min, max, on — per rounding point
    float32: bool = False    # the pair loops in float32 (:func:`pair_loops_float32`), else float64


# ----------------------------------------------------------------------------------- the model
def layer_graph(model):
    """{layer name: (layer, [inbound layer names])} of a functional model, or None."""
    try:
        cfg = model.get_config()
    except NotImplementedError:  # subclassed models have no config
        return None
    if not isinstance(cfg, dict) or "layers" not in cfg or len(cfg.get("output_layers", [])) != 1 \
            or len(cfg.get("input_layers", [])) != 1:
        return None
    out = {}
    for entry in cfg["layers"]:
        nodes = entry.get("inbound_nodes") or [[]]
        if len(nodes) != 1:  # a layer called twice is not the nano chain
            return None
        out[entry["name"]] = (model.get_layer(entry["name"]), [n[0] for n in nodes[0]])
    return out, cfg["output_layers"][0][0]


def walk_back(graph, name, mask_name, regs):
    """Follow dropout / BatchNorm layers upstream of ``name``; returns the first other layer's name,
    collecting the BatchNorms (outermost last) in ``regs``."""
    while True:
        layer, ins = graph[name]
        if type(layer) is PairDropout and len(ins) == 1:
            name = ins[0]
        elif type(layer) is MaskedBatchNorm and len(ins) == 2 and ins[1] == mask_name:
            regs.insert(0, layer)
            name = ins[0]
        else:
            return name


def chain(model):
    """The layers of a nanoPELICAN chain (a dict), or a string saying why the model is not one."""
    g = layer_graph(model)
    if g is None:
        return "not a functional model"
    graph, out_name = g
    eq0, ins = graph[out_name]
    if type(eq0) is not LinEq2to0 or len(ins) != 2:
        return f"output layer {out_name!r} is not a LinEq2to0"
    mask_name = ins[1]
    bn_h, bn_in = [], []
    eq2, ins2 = graph[walk_back(graph, ins[0], mask_name, bn_h)]
    if type(eq2) is not LinEq2to2 or len(ins2) != 2 or ins2[1] != mask_name:
        return "the readout's input is not a LinEq2to2 (full PELICAN or another graph)"
    inv, ins_inv = graph[walk_back(graph, ins2[0], mask_name, bn_in)]
    mask, ins_mask = graph[mask_name]
    if type(inv) not in (LorentzInvariants, L1Invariants) or len(ins_inv) != 1 or ins_mask != ins_inv:
        return "the 2->2 layer's input is not the invariants of the masked inputs"
    front, ins_front = graph[ins_inv[0]]
    kinds = {MomentumInput: (ParticleMask, LorentzInvariants), L1CandidateInput: (CandidateMask, L1Invariants)}
    if kinds.get(type(front)) != (type(mask), type(inv)) or len(ins_front) != 1:
        return "the input layers are not MomentumInput/ParticleMask or L1CandidateInput/CandidateMask"
    if type(graph[ins_front[0]][0]) is not tf_keras.layers.InputLayer:
        return "the input layer is not the model's input"
    used = {out_name, mask_name, ins_front[0]} | {layer.name for layer in (eq2, inv, front, *bn_h, *bn_in)}
    if any(n not in used and type(graph[n][0]) is not PairDropout for n in graph):
        return "the model has layers outside the nanoPELICAN chain"
    return dict(front=front, inv=inv, eq2=eq2, eq0=eq0, bn_in=bn_in, bn_h=bn_h)


def why_not(ch):
    """Why the layers of a chain are outside what the kernel computes, or None."""
    eq2, eq0, inv = ch["eq2"], ch["eq0"], ch["inv"]
    if eq2.basis != "nano" or eq2.kernel.shape[0] != 1:
        return "the 2->2 layer is not the nano basis on one input channel"
    if eq2.activation is not tf_keras.activations.relu:
        return "the 2->2 layer's activation is not ReLU"
    if eq0.activation not in (tf_keras.activations.linear, tf_keras.activations.relu) or eq0.channels != 1:
        return "the readout is not one linear or ReLU output"
    if type(inv) is L1Invariants and inv.form != "collider":
        return "the l1 invariants are not the collider form"
    if type(inv) is LorentzInvariants and not inv.zero_diagonal:
        return "the invariants keep their diagonal"
    layers = (ch["front"], inv, eq2, eq0)
    formats = [getattr(layer, f"{n}_format") for layer in layers for n in layer.QUANTIZERS]
    if any(f is None for f in formats) and any(f is not None for f in formats):
        return "the model is partly quantized (its exactness in Keras depends on float32 rounding)"
    if formats[0] is not None and (ch["bn_in"] or ch["bn_h"]):
        return "a quantized model with a BatchNorm layer"
    return None


def grid(fmt):
    """(2^F, min, max, on) of a format: the grid the kernel rounds onto (none: off)."""
    if fmt is None:
        return [1.0, 0.0, 0.0, 0.0]
    return [2.0 ** fmt.frac, fmt.min, fmt.max, 1.0]


def _bn(model, layers, channels):
    """The inference affine map (a, b) of BatchNorms applied in sequence, (2, channels) float64
    (each from ``qpelican.nn.fold``, the home of a BatchNorm's inference form)."""
    a, b = np.ones(channels), np.zeros(channels)
    for bn in layers:
        a_k, b_k = batchnorm_affine(model, bn.name)
        a, b = a * a_k, b * a_k + b_k
    return np.stack([a, b])


def front_constants(front):
    """The front layer's constants: its scale, beam rows and the grids of its inputs."""
    if type(front) is L1CandidateInput:
        lo, hi = front.angle_range
        beams = np.array([[BEAM_PT, 0.0, 0.0]] if front.beams else np.zeros((0, 3)), np.float64)
        return dict(front_scale=1.0, beams=beams, qin=np.array(grid(front.input_format) + [lo, hi], np.float32))
    beams = np.zeros((0, 4))
    if front.beams:  # MomentumInput.call's constant rows
        e = front.beam_energy
        beams = np.array([[e, 0.0, 0.0, e], [e, 0.0, 0.0, -e]], np.float32).astype(np.float64)
    return dict(front_scale=1.0 / front.scale, beams=beams, qin=np.array(grid(front.input_format) + [0, 0], np.float32))


def _np(x):
    return np.asarray(tf.cast(x, tf.float64).numpy(), np.float64)


def _bias0(eq0):
    if eq0.input_shift:
        return _np(eq0.bias_table(tf.float64))[:, 0]
    return np.full(eq0.n_max + 1, _np(eq0.q("bias", eq0.bias))[0])


def plan(model):
    """A :class:`Plan` of a supported model's weights (read now), or a string saying why the model
    takes the XLA path instead."""
    ch = chain(model)
    if isinstance(ch, str):
        return ch
    why = why_not(ch)
    if why:
        return why
    eq2, eq0, inv = ch["eq2"], ch["eq0"], ch["inv"]
    bias2, dbias2 = (_np(t) for t in eq2.multiplicity_biases(tf.float64))
    c = eq2.channels
    p = Plan(
        shape=tuple(int(d) for d in model.inputs[0].shape[1:]), quantized=eq2.quantized,
        l1=type(inv) is L1Invariants, **front_constants(ch["front"]),
        l1_shift=2.0 ** -inv.shift if type(inv) is L1Invariants else 1.0,
        bn_in=_bn(model, ch["bn_in"], 1)[:, 0],
        w2=_np(eq2.q("coefficient", eq2.kernel))[0],
        tab2=_np(eq2.scale_table())[:, :, 0],
        bias2=bias2, dbias2=dbias2,
        bn_h=_bn(model, ch["bn_h"], c),
        w0=_np(eq0.q("coefficient", eq0.kernel))[:, :, 0],
        tab0=_np(eq0.scale_table())[:, :, 0],
        bias0=_bias0(eq0),
        relu0=eq0.activation is tf_keras.activations.relu,
        qgrid=np.array([grid(f) for f in (inv.invariant_format, eq2.aggregate_format, eq2.output_format,
                                           eq0.aggregate_format, eq0.output_format)]),
    )
    p.float32 = not p.quantized or pair_loops_float32(p)
    return p


def grid_exponent(values, limit=64):
    """The smallest e >= 0 with every value a multiple of 2^-e, or None (not dyadic within ``limit``)."""
    v = np.abs(np.asarray(values, np.float64)).ravel()
    for e in range(limit + 1):
        if np.all(np.floor(v * 2.0 ** e) == v * 2.0 ** e):
            return e
    return None


def pair_loops_float32(p):
    """Whether a quantized plan's pair loops give the same bits in float32 as in float64.

    In units of the activation's LSB, the pre-activation of a pair is z = P + S, P = w x (x on the
    invariant grid, w a coefficient), S = r + c (the row and column terms: aggregates times
    coefficients plus the biases), |S| <= R. Float32 computes S exactly when R fits a float32 on
    S's grid. Let B = R + top + 1 fit one on the finest grid of P and S. If |P| <= B, P is a
    float32, and so is z wherever |z| <= top + 1: exact there. Outside, and whenever |P| > B (then
    |z| > top + 1), the roundings (monotonic, at most half a step of 2^-e <= 1) keep z beyond
    top + 1/2 or below -1/2, where round-and-clip gives top or 0 anyway. This holds with or without
    a fused multiply-add. Column sums of h (at most M top) must be float32 too. Each "fits" is
    ``qpelican.nn.quant.float32_exact``. With the 8-bit recipes' formats it holds (z has 10 bits
    below the activation's LSB); wider formats take float64, whose sums are exact
    (docs/fixed_point.md)."""
    f_act, top = np.log2(p.qgrid[ACT2, 0]), p.qgrid[ACT2, 2] * p.qgrid[ACT2, 0]
    f_inv, f_agg = np.log2(p.qgrid[INVARIANT, 0]), np.log2(p.qgrid[AGG2, 0])
    x_max = max(-p.qgrid[INVARIANT, 1], p.qgrid[INVARIANT, 2])
    a_max = max(-p.qgrid[AGG2, 1], p.qgrid[AGG2, 2])
    e_w, e_b = grid_exponent(p.w2), grid_exponent(p.bias2)
    if e_w is None or e_b is None:
        return False
    w = np.abs(p.w2) * 2.0 ** f_act
    r_max = (a_max * (w[:, 2] + w[:, 3] + w[:, 4]) + np.abs(p.bias2).max(0) * 2.0 ** f_act).max()
    e_z = max(f_inv + e_w, f_agg + e_w, e_b, f_act) - f_act  # a grid no coarser than the LSB
    m = p.shape[0] + p.beams.shape[0]
    return all(float32_exact([(1, v)], e) for v, e in (
        (x_max, f_inv), (np.abs(p.w2).max(), e_w), (r_max + top + 1, e_z), (m * top, 0)))


def model_plan(model):
    """:func:`plan` of a model, kept on the model while its weights stay the same (fit evaluates a
    model whose weights change between epochs)."""
    key = tuple(w.tobytes() for w in model.get_weights())
    cached = getattr(model, "_qpelican_fastplan", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    p = plan(model)
    model._qpelican_fastplan = (key, p)
    return p


# ---------------------------------------------------------------------------------- the kernel
@njit(inline="always")
def round_to(x, g):
    """Round x onto grid g = (2^F, min, max, on): half to even, saturating (qpelican.nn.quant)."""
    if g[3] == 0.0:
        return x
    return min(max(np.rint(x * g[0]) * (1.0 / g[0]), g[1]), g[2])


@njit(inline="always")
def front_rows(xj, l1, scale, beams, g, q, pos):
    """The front layer's output of one jet, real particles only, into the columns of q (F, M):
    returns their number n; pos[k] is the row of real particle k in the layer's output. The
    layer's arithmetic is float32, and so is this: p4
    (``MomentumInput``) ``Q_input(p * (1/scale))`` after the constant ``beams`` rows; l1
    (``L1CandidateInput``) ``Q_input(pT)`` and the angles clipped to the angle range and rounded.
    A particle is real when its first feature (E or pT) on the grid is not zero (``ParticleMask``,
    ``CandidateMask``). ``g`` = (2^F, min, max, on, angle min, angle max), float32."""
    nf = q.shape[0]
    n = 0
    for k in range(beams.shape[0]):
        if beams[k, 0] != 0.0:
            for f in range(nf):
                q[f, n] = beams[k, f]
            pos[n] = k
            n += 1
    lsb = np.float32(1.0) / g[0]  # 2^-F: a product, exactly the layer's division by 2^F
    for k in range(xj.shape[0]):
        if xj[k, 0] == 0.0:  # padding: zero on any grid, so not a particle
            continue
        for f in range(nf):
            v = xj[k, f]
            if l1 and f > 0:
                v = np.rint(min(max(v, g[4]), g[5]))
            else:
                if not l1:
                    v = v * scale
                if g[3] != 0.0:
                    v = min(max(np.rint(v * g[0]) * lsb, g[1]), g[2])
            q[f, n] = v
        pos[n] = beams.shape[0] + k
        if q[0, n] != 0.0:  # else the next particle overwrites this padded one
            n += 1
    return n


@njit(inline="always")
def invariants(q, n, l1, shift, bn, g, x, s):
    """x[i, j] = a d_ij + b over the real particles q[:, :n] (x_ii = b: d_ii = 0), s[i] = sum_j x[i, j].

    Each row of x is one vectorised loop over the contiguous rows of q, to the next multiple of 8
    (longer than n: the scalar remainder of a vectorised loop costs more than the few padded
    entries; q is zero there, x is b, removed from the sum).
    Both triangles are computed: storing the mirror image of one would be a scalar, strided loop,
    which costs more than the arithmetic it saves."""
    npad = (n + 7) // 8 * 8
    for f in range(q.shape[0]):
        for k in range(n, npad):
            q[f, k] = 0.0
    a, b = bn[0], bn[1]
    sc, lo, hi, quant = g[0], g[1] * g[0], g[2] * g[0], g[3] != 0.0
    a_sc = a / sc  # the grid's 2^-F folded into a: exact (a power of two, or a float model's BatchNorm)
    q0, q1, q2 = q[0], q[1], q[2]
    q3 = q[3] if q.shape[0] > 3 else q[2]
    for i in range(n):
        xi = x[i]
        acc = 0.0
        # one loop per case, so that each is a plain vectorised loop (rounded onto the grid in units
        # of its LSB: clip(rint(d 2^F)) 2^-F, with 2^-F a product, as a division costs more)
        if l1:  # (pT_i pT_j) R_ij 2^-shift, R exact on the integer angle grid
            pt, eta, phi = q0[i], q1[i], q2[i]
            if quant:
                for j in range(npad):
                    de, dp = eta - q1[j], phi - q2[j]
                    v = a_sc * min(max(np.rint((pt * q0[j]) * (de * de + dp * dp) * shift * sc), lo), hi) + b
                    xi[j] = v
                    acc += v
            else:
                for j in range(npad):
                    de, dp = eta - q1[j], phi - q2[j]
                    v = a * ((pt * q0[j]) * (de * de + dp * dp) * shift) + b
                    xi[j] = v
                    acc += v
        else:  # E_i E_j - px px - py py - pz pz, the layer's order
            e, px, py, pz = q0[i], q1[i], q2[i], q3[i]
            if quant:
                for j in range(npad):
                    v = a_sc * min(max(np.rint((e * q0[j] - px * q1[j] - py * q2[j] - pz * q3[j]) * sc), lo), hi) + b
                    xi[j] = v
                    acc += v
            else:
                for j in range(npad):
                    v = a * (e * q0[j] - px * q1[j] - py * q2[j] - pz * q3[j]) + b
                    xi[j] = v
                    acc += v
        s[i] = acc - xi[i] - (npad - n - 1) * b
        xi[i] = b


@njit(inline="always")
def l1_beam(q, n, bn, g, x, s):
    """The l1 beam in row and column 0: x_0j = x_j0 = a Q(pT_0 pT_j) + b (``L1Invariants`` with
    beams), replacing what :func:`invariants` computed there from the angles, and s with them."""
    a, b = bn[0], bn[1]
    for j in range(1, n):
        v = q[0, 0] * q[0, j]
        if g[3] != 0.0:
            v = min(max(np.rint(v * g[0]), g[1] * g[0]), g[2] * g[0]) / g[0]
        v = a * v + b
        diff = v - x[0, j]
        x[0, j], x[j, 0] = v, v
        s[0] += diff
        s[j] += diff


@njit(inline="always")
def hidden_terms(n, s, t, w, bias, dbias, k, gq, agg, r, c, dg):
    """r, c, dg of z_ij = w0 x_ij + r_i + c_j + delta_ij dg_i, the 2->2 layer's pre-activation in
    the nano basis (x, delta S, S_j (column), S_i (row), T, delta T), in units of the activation's
    LSB k (1 in float), from the column sums s (n,), the normalisers t (5,) and the biases (C,) of
    the multiplicity n; returns T. The aggregates go through agg (3, M) so that each channel's
    terms are one vectorised loop over the columns. r and c are -1e30 on the padding (columns from
    n, rows n..n+2: the pair loops' blocks of four rows), where h = 0 and its gradient too."""
    tsum = 0.0
    for j in range(n):
        tsum += s[j]
    agg_t, agg_td = round_to(tsum * t[3], gq), round_to(tsum * t[4], gq)
    for j in range(n):
        for a in range(3):
            agg[a, j] = round_to(s[j] * t[a], gq)
    for h in range(w.shape[0]):
        r_h, c_h, d_h = r[h], c[h], dg[h]
        r_b, d_b = bias[h] + agg_t * w[h, 4], agg_td * w[h, 5] + dbias[h]
        for j in range(n):
            r_h[j] = (agg[2, j] * w[h, 3] + r_b) * k
            c_h[j] = agg[1, j] * w[h, 2] * k
            d_h[j] = (agg[0, j] * w[h, 1] + d_b) * k
    c[:, n:] = -1e30
    r[:, n:n + 3] = -1e30
    return tsum


@njit(fastmath={"reassoc", "contract", "nsz"}, cache=True)
def _channel_totals(x, n, w, r, c, dg, top, quant, col):
    """(sum_ij h_ij, sum_i h_ii) of one channel from its column sums ``col`` of h without the diagonal
    term dg (:func:`hidden_sums`): the diagonal is redone in float64, exact for a quantized model
    in any order, so these sums may be vectorised by reordering them."""
    npad = (n + 7) // 8 * 8
    t_all, t_diag = 0.0, 0.0
    for j in range(npad):
        t_all += col[j]
    w64, top64 = np.float64(w), np.float64(top)
    for i in range(n):
        z = w64 * x[i, i] + (np.float64(r[i]) + c[i])
        zd = z + dg[i]
        if quant:
            hd = min(max(np.rint(zd), 0.0), top64)
            t_all += hd - min(max(np.rint(z), 0.0), top64)
        else:
            hd = max(zd, 0.0)
            t_all += hd - max(z, 0.0)
        t_diag += hd
    return t_all, t_diag


@njit(fastmath={"contract", "nsz"}, cache=True)
def hidden_sums(x, n, w, r, c, dg, top, quant, tot, tr, col):
    """tot[h] = sum_ij h_ij, tr[h] = sum_i h_ii of h = Q_act(relu(w_h x_ij + (r_hi + c_hj) + delta_ij dg_hi)).

    Quantized, r, c, dg and w come scaled by the activation's 2^F, so that h is counted in units of
    its LSB (integers) and each h is one fused multiply-add, an add, a round and a clip. x, w, r, c
    are float64 or float32 (:func:`pair_loops_float32`: the same bits); the diagonal is redone in
    float64. Four rows at a time add into column sums ``col``: a plain vectorised loop, without the
    reassociation a running sum would need (the float32 sums are exact whatever their order, by
    :func:`pair_loops_float32`'s bounds, but a float model's are not). Rows run to the next
    multiple of 8 (c is -1e30 there: h = 0), as in :func:`invariants`, and the blocks of four rows
    past n (r is -1e30 on rows n..n+2: h = 0), so that no row is left to a loop of its own (one
    such pass per row cost about as much as a block of four)."""
    npad = (n + 7) // 8 * 8
    zero = top - top
    for h in range(w.shape[0]):
        wk, ch = w[h, 0], c[h]
        col[:npad] = zero
        for i in range(0, n, 4):  # rows n..n+2 are padding (r = -1e30 there: h = 0)
            xa, xb, xc, xd = x[i], x[i + 1], x[i + 2], x[i + 3]
            ra, rb, rc, rd = r[h, i], r[h, i + 1], r[h, i + 2], r[h, i + 3]
            if quant:
                for j in range(npad):
                    cj = ch[j]
                    col[j] += ((min(max(np.rint(wk * xa[j] + (ra + cj)), zero), top)
                                + min(max(np.rint(wk * xb[j] + (rb + cj)), zero), top))
                               + (min(max(np.rint(wk * xc[j] + (rc + cj)), zero), top)
                                  + min(max(np.rint(wk * xd[j] + (rd + cj)), zero), top)))
            else:
                for j in range(npad):
                    cj = ch[j]
                    col[j] += ((max(wk * xa[j] + (ra + cj), zero) + max(wk * xb[j] + (rb + cj), zero))
                               + (max(wk * xc[j] + (rc + cj), zero) + max(wk * xd[j] + (rd + cj), zero)))
        tot[h], tr[h] = _channel_totals(x, n, wk, r[h], ch, dg[h], top, quant, col)


@njit(parallel=True, cache=True, fastmath={"reassoc", "contract", "nsz"})
def _forward(p, l1, scale, beams, qin, shift, bn_in, w2, tab2, bias2, dbias2, bn_h, w0, tab0, bias0, relu0, qg,
             dt, n_chunks, out):
    """Logits of the jets p (B, N, F) (float32 model inputs) into out (B,), float64 (see the module),
    in ``n_chunks`` runs of consecutive jets shared among the threads; ``dt`` the pair loops' type.

    fast-math lets the sums be reordered and products fused: a quantized model's sums and products
    are exact, so neither changes a value (and a float model's change at the 1e-16 level)."""
    n_jets, nf = p.shape[0], p.shape[2]
    m = p.shape[1] + beams.shape[0]
    mpad = (m + 7) // 8 * 8
    ch = w2.shape[0]
    ga = qg[ACT2]
    quant = ga[3] != 0.0
    k = ga[0] if quant else 1.0  # the activation's 2^F: hidden sums in units of its LSB
    wk = (w2 * k).astype(dt)
    top = dt(ga[2] * ga[0])
    for chunk in prange(n_chunks):
        x = np.zeros((m + 3, mpad), dt)  # rows up to M + 2: the blocks of four rows
        q = np.empty((nf, mpad))
        pos = np.empty(m, np.int64)
        s = np.empty(m)
        r, dg = np.empty((ch, m + 3), dt), np.empty((ch, m))
        c = np.full((ch, mpad), -1e30, dt)
        tot, tr, col = np.empty(ch), np.empty(ch), np.empty(mpad, dt)
        agg = np.empty((3, m))
        for jet in range(chunk * n_jets // n_chunks, (chunk + 1) * n_jets // n_chunks):
            n = front_rows(p[jet], l1, scale, beams, qin, q, pos)
            invariants(q, n, l1, shift, bn_in, qg[INVARIANT], x, s)
            if l1 and beams.shape[0] > 0:
                l1_beam(q, n, bn_in, qg[INVARIANT], x, s)
            hidden_terms(n, s, tab2[n], w2, bias2[n], dbias2[n], k, qg[AGG2], agg, r, c, dg)
            hidden_sums(x, n, wk, r, c, dg, top, quant, tot, tr, col)
            t0 = tab0[n]
            z = 0.0
            for h in range(ch):  # hidden BatchNorm on real entries: n^2 of them in the total, n on the trace
                u1 = round_to((bn_h[0, h] * tot[h] / k + bn_h[1, h] * n * n) * t0[0], qg[AGG0])
                u2 = round_to((bn_h[0, h] * tr[h] / k + bn_h[1, h] * n) * t0[1], qg[AGG0])
                z += u1 * w0[h, 0] + u2 * w0[h, 1]
            z += bias0[n]
            out[jet] = round_to(max(z, 0.0) if relu0 else z, qg[OUT0])


def predict_fast(p, x):
    """Logits (jets,) float32 of plan ``p`` for inputs ``x`` already of the model's N (no validation of
    the values; the shape is checked, as the kernel indexes its tables by the multiplicity)."""
    if tuple(np.shape(x)[1:]) != p.shape:
        raise ValueError(f"inputs of shape {np.shape(x)}; the model takes (jets, {p.shape[0]}, {p.shape[1]}).")
    out = np.zeros(len(x), np.float64)
    for a in range(0, len(x), CHUNK):  # an array in memory is not copied; an HDF5 dataset is read a chunk at a time
        chunk = np.ascontiguousarray(x[a:a + CHUNK], np.float32)
        _forward(chunk, p.l1, np.float32(p.front_scale), p.beams, p.qin, p.l1_shift, p.bn_in, p.w2, p.tab2, p.bias2,
                 p.dbias2, p.bn_h, p.w0, p.tab0, p.bias0, p.relu0, p.qgrid, np.float32 if p.float32 else np.float64,
                 min(len(chunk), 64 * numba.get_num_threads()), out[a:a + len(chunk)])
    return out.astype(np.float32)


def threads():
    """numba's worker threads (``NUMBA_NUM_THREADS``, default: the CPUs)."""
    return int(os.environ.get("NUMBA_NUM_THREADS", numba.config.NUMBA_NUM_THREADS))
