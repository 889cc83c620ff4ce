"""`qpelican explain`: a trained nanoPELICAN written as the paper's analytic formula (eq. 1).

For a nanoPELICAN(C) without BatchNorm the whole network is

    w = b + sum_h v_h1 (1/Nbar^2) sum_{i,j} ReLU(z^h_ij) + sum_h v_h2 (1/Nbar) sum_i ReLU(z^h_ii)

    z^h_ij = c1h d_ij + c2h delta_ij S_j/Nbar + c3h S_j/Nbar + c4h S_i/Nbar + c5h T/Nbar^2
             + c6h delta_ij T/Nbar^2 + beta_h + beta_diag_h delta_ij

with d_ij = p_i . p_j (in units of scale^2 GeV^2; zero on the diagonal), S_j = sum_k d_kj
(= p_j . J for massless constituents, J the jet momentum), T = sum_kl d_kl = m_J^2, sums over the
real constituents only; with alpha scaling every 1/Nbar^p also carries (n/Nbar)^alpha.

ReLU is positively homogeneous, so for lambda_h > 0, ``v_h ReLU(z^h) = (v_h / lambda_h) ReLU(lambda_h
z^h)``: one positive factor per hidden channel is redundant. The canonical form takes
``lambda_h = |v_h1|``, which turns the total-sum weights into signs (+1/-1) and leaves
8C (2->2) + C (trace weights) + 1 (bias) = 9C + 1 effective parameters: 19 for C = 2 (paper
section 5), plus the alpha exponents when present.

The numerical check evaluates the formula in numpy float64 on jets and compares it with the
Keras model: for quantized models the formula rounds at the points of the fixed-point contract
(qpelican/nn/layers/lineq.py), so the difference must be exactly zero; for float models it is float32
round-off. The canonical (rescaled) form is checked against the original form in real arithmetic.
"""
from __future__ import annotations

import json
import os

import numpy as np

from qpelican.core.errors import DataError, QpelicanError
from qpelican.core.io import run_model_path
from qpelican.data.l1 import open_input_dataset, to_l1
from qpelican.data.readers import evaluation_file
from qpelican.nn.layers import (
    L1CandidateInput,
    L1Invariants,
    LinEq2to0,
    LinEq2to2,
    LorentzInvariants,
    MaskedBatchNorm,
    MomentumInput,
)
from qpelican.nn.layers.l1 import BEAM_PT
from qpelican.nn.models import model_constituents, model_format, predict, prepare_momenta
from qpelican.nn.serialize import load_model

OP_TEXT = ("d_ij", "δ_ij S_j/N̄", "S_j/N̄", "S_i/N̄", "T/N̄²", "δ_ij T/N̄²")


# ------------------------------------------------------------------------------ extraction
def _q_np(x, fmt):
    """numpy twin of qpelican.nn.quant.quantize (round half to even, saturate)."""
    if fmt is None:
        return x
    scale = 2.0 ** fmt.frac
    return np.clip(np.round(x * scale) / scale, fmt.min, fmt.max)


def nano_parts(model):
    """Weights and fixed-point formats of a nanoPELICAN as plain numpy (quantized values)."""

    by, bns = {}, {}
    for layer in model.layers:
        if isinstance(layer, MaskedBatchNorm):
            if layer.name not in ("bn_in", "bn_hidden"):
                raise QpelicanError(f"explain: unexpected BatchNorm layer {layer.name!r}; only nanoPELICAN's bn_in / "
                                    "bn_hidden are folded into the formula.")
            bns[layer.name] = _bn_affine(layer)
            continue
        for cls in (LinEq2to0, LinEq2to2, LorentzInvariants, MomentumInput, L1Invariants, L1CandidateInput):
            if isinstance(layer, cls):
                if cls in by:
                    raise QpelicanError("explain: only nanoPELICAN (one LinEq2->2 and one LinEq2->0 layer) has the "
                                        "analytic form of the paper; this model has more layers (full PELICAN?).")
                by[cls] = layer
    if LinEq2to2 not in by or LinEq2to0 not in by:
        raise QpelicanError("explain: this model is not a nanoPELICAN (no LinEq2->2 / LinEq2->0 layers).")
    l1 = L1CandidateInput in by  # Level-1 candidates (data.format: l1)
    l22, l20 = by[LinEq2to2], by[LinEq2to0]
    inv, mom = (by[L1Invariants], by[L1CandidateInput]) if l1 else (by[LorentzInvariants], by[MomentumInput])
    if l22.basis != "nano" or l20.channels != 1:
        raise QpelicanError("explain: the analytic form needs the nano basis and one output channel.")
    if int(l22.kernel.shape[0]) != 1:
        raise QpelicanError("explain: the analytic form needs one input channel (the dot products d_ij).")
    act = getattr(l22.activation, "__name__", str(l22.activation))
    if act != "relu":
        raise QpelicanError(f"explain: hidden activation is {act!r}; the analytic form is written for ReLU.")
    k22 = l22.q("coefficient", l22.kernel).numpy()[0]  # (C, 6)
    folded = l22.input_shift or l20.input_shift  # a folded BatchNorm: biases are tables over n
    p = {
        "C": int(k22.shape[0]),
        "symmetric": bool(l22.symmetric),  # S_i and S_j share their coefficient (and alpha)
        "c": k22.astype(np.float64),
        "beta": l22.q("bias", l22.bias).numpy().astype(np.float64),
        "beta_diag": (l22.q("bias", l22.diag_bias_weight).numpy().astype(np.float64)
                      if l22.diag_bias_weight is not None else np.zeros(int(k22.shape[0]))),
        "v": l20.q("coefficient", l20.kernel).numpy()[:, :, 0].astype(np.float64),  # (C, 2): [U1 total, U2 trace]
        "b": float(l20.q("bias", l20.bias).numpy()[0]),
        "t22": np.asarray(l22.scale_table().numpy(), np.float64),  # (N+1, 5, 1)
        "t20": np.asarray(l20.scale_table().numpy(), np.float64),  # (N+1, 2, 1)
        "nbar": l22.nbar,
        "aggregation": l22.aggregation,
        "alpha22": None if l22.alphas is None else l22.alphas.numpy()[:, 0].astype(np.float64),
        "alpha20": None if l20.alphas is None else l20.alphas.numpy()[:, 0].astype(np.float64),
        "scale": 1.0 if l1 else mom.scale, "beams": mom.beams,
        "beam_energy": None if l1 else mom.beam_energy,
        "l1": {"shift": inv.shift, "form": inv.form, "angle_range": mom.angle_range} if l1 else None,
        "bn_in": bns.get("bn_in"), "bn_hidden": bns.get("bn_hidden"),
        "folded_shifts": (bool(l22.input_shift), bool(l20.input_shift)),
        "fmt": {"input": mom.input_format, "invariant": inv.invariant_format,
                "aggregate": l22.aggregate_format, "activation": l22.output_format,
                "aggregate20": l20.aggregate_format, "output": l20.output_format},
        "quantized": any(f is not None for f in (mom.input_format, inv.invariant_format, l22.aggregate_format,
                                                  l22.output_format, l20.aggregate_format, l20.output_format,
                                                  l22.coefficient_format, l20.coefficient_format)),
    }
    if folded:  # (N+1, C) and (N+1,) arrays indexed by the multiplicity n replace the constants
        p["beta"], p["beta_diag"] = (t.numpy().astype(np.float64) for t in l22.bias_tables())
        p["b"] = l20.bias_table().numpy()[:, 0].astype(np.float64)
    return p


def _bn_affine(layer):
    """Inference-mode BatchNorm as y = a x + b per channel (on real particle pairs)."""
    var = layer.moving_variance.numpy().astype(np.float64)
    mean = layer.moving_mean.numpy().astype(np.float64)
    gamma = layer.gamma.numpy().astype(np.float64) if layer.gamma is not None else np.ones_like(var)
    beta = layer.beta.numpy().astype(np.float64) if layer.beta is not None else np.zeros_like(var)
    inv = 1.0 / np.sqrt(var.astype(np.float32) + np.float32(layer.epsilon)).astype(np.float64)
    a = gamma * inv
    return a, beta - mean * a


def canonical(p):
    """Absorb lambda_h = |v_h1| (or |v_h2| when v_h1 = 0) into channel h: (parts, lambdas, dead channels)."""
    q = dict(p)
    gain = p["bn_hidden"][0] if p["bn_hidden"] is not None else np.ones(p["C"])  # hidden BN scale per channel
    lam = np.abs(p["v"][:, 0] * gain)
    fallback = lam == 0
    lam[fallback] = np.abs(p["v"][fallback, 1] * gain[fallback])
    dead = lam == 0
    lam[dead] = 1.0
    q["c"] = p["c"] * lam[:, None]
    q["beta"] = p["beta"] * lam
    q["beta_diag"] = p["beta_diag"] * lam
    if p["bn_hidden"] is not None:
        q["bn_hidden"] = (p["bn_hidden"][0] / lam, p["bn_hidden"][1])
    else:
        q["v"] = p["v"] / lam[:, None]
    q["fmt"] = {k: None for k in p["fmt"]}
    return q, lam, dead


def effective_parameters(p):
    """9C + 1 (+ alpha exponents) after absorbing one positive factor per hidden channel."""
    C, tied = p["C"], p.get("symmetric", False)
    n = 9 * C + 1 - (C if tied else 0)  # a symmetric layer's S_i and S_j terms share one coefficient
    n_alpha = (0 if p["alpha22"] is None else p["alpha22"].size - (1 if tied else 0)) + \
        (0 if p["alpha20"] is None else p["alpha20"].size)
    # paper section 3: a folded BatchNorm adds min(C_in, 4 C_out) (before 2->2) and min(C_in, 2 C_out) (before 2->0)
    bn_in, bn_hidden = (p["bn_in"] is not None or p["folded_shifts"][0]), (p["bn_hidden"] is not None
                                                                          or p["folded_shifts"][1])
    n_bn = (min(1, 4 * C) if bn_in else 0) + (min(C, 2) if bn_hidden else 0)
    return {"raw": 10 * C + 1 - (C if tied else 0), "effective": n + n_bn, "alpha": n_alpha, "batchnorm": n_bn,
            "total_effective": n + n_bn + n_alpha}


# ------------------------------------------------------------------------------ evaluation
def formula_logits(p, p4, rounding=True, chunk=256):
    """Evaluate the analytic formula in numpy float64 on momenta p4 (B, N, 4) GeV -> logits (B,).

    ``rounding``: round at the fixed-point contract's points (quantized models); False = real arithmetic.
    """
    f = p["fmt"] if rounding else {k: None for k in p["fmt"]}
    out = []
    for a in range(0, len(p4), chunk):
        out.append(_formula_chunk(p, np.asarray(p4[a:a + chunk], np.float64), f))
    return np.concatenate(out) if out else np.zeros(0)


def _l1_invariants(p, x, f):
    """Level-1 candidates (B, N, 3) -> (mask, d_ij) as L1Invariants computes them (collider or massless form)."""
    lo, hi = p["l1"]["angle_range"]
    pt = _q_np(x[..., 0], f["input"])
    eta, phi = (np.clip(np.round(x[..., k]), lo, hi) for k in (1, 2))
    m = (pt != 0).astype(np.float64)
    de, dp = eta[:, :, None] - eta[:, None, :], phi[:, :, None] - phi[:, None, :]
    if p["l1"]["form"] == "collider":
        r = de * de + dp * dp
    else:
        step = np.pi / 720
        r = (np.cosh(de * step) - np.cos(dp * step)) * (2.0 / step**2)
    if p["beams"]:  # the beam in row 0: (BEAM_PT, 0, 0), its products BEAM_PT pT_j
        pt, m = (np.concatenate([np.full((len(x), 1), v), a], 1) for v, a in ((BEAM_PT, pt), (1.0, m)))
        r = np.pad(r, ((0, 0), (1, 0), (1, 0)), constant_values=2.0 ** p["l1"]["shift"])
    d = pt[:, :, None] * pt[:, None, :] * r * 2.0 ** -p["l1"]["shift"] * (m[:, :, None] * m[:, None, :])
    return m, _q_np(d * (1.0 - np.eye(d.shape[1]))[None], f["invariant"])


def _formula_chunk(p, p4, f):
    if p["l1"] is not None:
        m, d = _l1_invariants(p, p4, f)
        return _formula_rest(p, f, m, d)
    # MomentumInput scales in float32 (as the Keras layer does), then rounds onto the input grid
    x = _q_np((p4.astype(np.float32) * np.float32(1.0 / p["scale"])).astype(np.float64), f["input"])
    if p["beams"]:
        e = p["beam_energy"]
        beam = np.broadcast_to(np.array([[e, 0, 0, e], [e, 0, 0, -e]], np.float64), (len(x), 2, 4))
        x = np.concatenate([beam, x], axis=1)
    m = (x[..., 0] != 0).astype(np.float64)  # (B, N)
    n_part = x.shape[1]
    mm = m[:, :, None] * m[:, None, :]
    d = np.einsum("bik,bjk->bij", x * np.array([1.0, -1.0, -1.0, -1.0]), x) * mm
    d = d * (1.0 - np.eye(n_part))[None]
    d = _q_np(d, f["invariant"])
    return _formula_rest(p, f, m, d)


def _formula_rest(p, f, m, d):
    """The formula from the mask (B, N) and the rounded invariants d (B, N, N)."""
    n_part = d.shape[1]
    mm = m[:, :, None] * m[:, None, :]
    if p["bn_in"] is not None:  # x_ij = a d_ij + b on every real pair (the diagonal included)
        d = (p["bn_in"][0][0] * d + p["bn_in"][1][0]) * mm
    n = m.sum(1).astype(int)
    S = d.sum(axis=1)  # S_j = sum_k d_kj  (B, N)
    T = S.sum(axis=1)  # (B,)
    t = p["t22"][n][:, :, 0]  # (B, 5)
    qa = lambda v: _q_np(v, f["aggregate"])  # noqa: E731
    A2 = qa(S * t[:, 0:1])
    A3 = qa(S * t[:, 1:2])
    A4 = qa(S * t[:, 2:3])
    A5 = qa(T * t[:, 3])
    A6 = qa(T * t[:, 4])
    eye = np.eye(n_part)[None, :, :, None]
    beta, beta_diag = p["beta"], p["beta_diag"]
    if np.ndim(beta) == 2:  # a folded BatchNorm's biases: tables over n, read at each jet's n
        beta, beta_diag = beta[n][:, None, None, :], beta_diag[n][:, None, None, :]
    c = p["c"]  # (C, 6)
    z = (d[..., None] * c[:, 0]
         + eye * A2[:, None, :, None] * c[:, 1]
         + A3[:, None, :, None] * c[:, 2]
         + A4[:, :, None, None] * c[:, 3]
         + A5[:, None, None, None] * c[:, 4]
         + eye * A6[:, None, None, None] * c[:, 5]
         + beta + eye * beta_diag)
    h = _q_np(np.maximum(z, 0.0), f["activation"]) * mm[..., None]  # (B, N, N, C)
    if p["bn_hidden"] is not None:
        h = (p["bn_hidden"][0] * h + p["bn_hidden"][1]) * mm[..., None]
    t2 = p["t20"][n][:, :, 0]  # (B, 2)
    u1 = _q_np(h.sum(axis=(1, 2)) * t2[:, 0:1], f["aggregate20"])
    u2 = _q_np(np.einsum("biic->bc", h) * t2[:, 1:2], f["aggregate20"])
    w = u1 @ p["v"][:, 0] + u2 @ p["v"][:, 1] + (p["b"][n] if np.ndim(p["b"]) else p["b"])
    return _q_np(w, f["output"])


# ------------------------------------------------------------------------------ printing
def _num(x):
    return f"{x:+.4g}"


def formula_text(p, lam=None, dead=None):
    """The formula with numbers (canonical form when p comes from :func:`canonical`)."""
    C = p["C"]
    nb = p["nbar"]
    agg = "mean" if p["aggregation"] == "mean" else "sum"
    lines = []
    norm1, norm2 = (f"1/{nb:g}²", f"1/{nb:g}") if agg == "sum" else ("1/n²", "1/n")
    a20 = p["alpha20"]
    s1 = f" (n/{nb:g})^{a20[0]:.3f}" if a20 is not None else ""
    s2 = f" (n/{nb:g})^{a20[1]:.3f}" if a20 is not None else ""
    terms = ["b(n)" if np.ndim(p["b"]) else f"{p['b']:+.4g}"]
    gain = p["bn_hidden"][0] if p["bn_hidden"] is not None else np.ones(C)
    for h in range(C):
        if dead is not None and dead[h]:
            continue
        terms.append(f"{_num(p['v'][h, 0] * gain[h])} · {norm1}{s1} Σ_ij ReLU(z{h + 1}_ij)")
        terms.append(f"{_num(p['v'][h, 1] * gain[h])} · {norm2}{s2} Σ_i ReLU(z{h + 1}_ii)")
    if p["bn_hidden"] is not None:
        k1 = float(np.sum(p["v"][:, 0] * p["bn_hidden"][1]))
        k2 = float(np.sum(p["v"][:, 1] * p["bn_hidden"][1]))
        terms.append(f"{_num(k1)} · n² {norm1}{s1} {_num(k2)} · n {norm2}{s2}   (hidden BatchNorm shifts)")
    lines.append("w = " + "\n    ".join(terms))
    if p["bn_in"] is not None:
        a, b = p["bn_in"][0][0], p["bn_in"][1][0]
        lines.append(f"x_ij = {a:.4g}·d_ij {_num(b)}  on every pair of real constituents, i = j included "
                     "(input BatchNorm, folded); the aggregates below are sums of x")
    a22 = p["alpha22"]
    op = list(OP_TEXT)
    if agg == "mean":
        op = ["d_ij", "δ_ij S_j/n", "S_j/n", "S_i/n", "T/n²", "δ_ij T/n²"]
    if a22 is not None:
        op = [op[0]] + [f"{o}·(n/{nb:g})^{a:.3f}" for o, a in zip(op[1:], a22)]
    op = [o.replace("N̄", f"{nb:g}") for o in op]
    for h in range(C):
        if dead is not None and dead[h]:
            lines.append(f"z{h + 1}: dead channel (both 2->0 weights are zero)")
            continue
        ops_h = [o.replace("d_ij", "x_ij") for o in op] if p["bn_in"] is not None else op
        parts = [f"{_num(p['c'][h, b])}·{ops_h[b]}" for b in range(6)]
        if np.ndim(p["beta"]) == 2:
            parts += [f"+ β{h + 1}(n) + β'{h + 1}(n)·δ_ij"]
        else:
            parts += [f"{_num(p['beta'][h])}", f"{_num(p['beta_diag'][h])}·δ_ij"]
        lines.append(f"z{h + 1}_ij = " + " ".join(parts))
    if np.ndim(p["b"]):
        lines.append(_tables_text(p))
    return "\n".join(lines)


def _tables_text(p):
    """The folded BatchNorm's biases over n, at a few multiplicities."""
    n_max = len(p["b"]) - 1
    ns = sorted({1, max(1, n_max // 2), n_max})
    rows = [f"  n = {n}: b = {p['b'][n]:+.4g}; " + "; ".join(
        f"β{h + 1} = {p['beta'][n, h]:+.4g}, β'{h + 1} = {p['beta_diag'][n, h]:+.4g}" for h in range(p["C"]))
        for n in ns]
    return ("biases tabulated over the multiplicity n (BatchNorm folded into the fixed-point layers: its shift "
            "s adds w·s·n^k terms), e.g.\n" + "\n".join(rows))


def explain_model(model, p4, log=print):
    """Print the formula and check it numerically on jets p4 (B, N, 4) GeV; return the check dict."""

    p = nano_parts(model)
    cp, lam, dead = canonical(p)
    counts = effective_parameters(p)
    unit = f"({p['scale']:g} GeV)²"
    log(f"nanoPELICAN C={p['C']}{' with alpha scaling' if p['alpha22'] is not None else ''}"
        f"{', quantized' if p['quantized'] else ', float'}: the whole model is (paper eq. 1)")
    log("")
    log(formula_text(cp, lam, dead))
    log("")
    if p["l1"] is not None:
        form = ("(Δη_ij² + Δφ_ij²)" if p["l1"]["form"] == "collider" else
                "(cosh(Δη_ij π/720) - cos(Δφ_ij π/720))·2·(720/π)²")
        log(f"where d_ij = pT_i pT_j {form} 2^-{p['l1']['shift']} from the Level-1 candidates (pT in GeV, "
            "η, φ in integer steps of π/720; ≈ 0.80 pT_i pT_j ΔR²/2 in GeV², d_ii = 0), S_j = Σ_k d_kj, "
            + ("T = Σ_kl d_kl, sums over the n real candidates and the beam (row 0, d_0j = pT_j)" if p["beams"]
               else "T = Σ_kl d_kl ≈ 0.80 m_J², sums over the n real candidates") + "; w > 0 tags a top.")
    else:
        log(f"where d_ij = p_i·p_j in units of {unit} (d_ii = 0), S_j = Σ_k d_kj = p_j·J (J = jet momentum), "
            f"T = Σ_kl d_kl = m_J², sums over the n real constituents" + (" and the 2 beams" if p["beams"] else "")
            + "; w > 0 tags a top.")
    log(f"Canonical form: one positive factor λ_h = |v_h1| per hidden channel absorbed into z_h "
        f"(λ = {', '.join(f'{x:.4g}' for x in lam)}), so the total-sum weights are ±1.")
    raw, eff = ("9C+1", "8C+1") if p["symmetric"] else ("10C+1", "9C+1")
    msg = (f"Parameters: {counts['raw']} trained ({raw}) -> {counts['effective']} effective "
           + (f"({eff}, + {counts['batchnorm']} from the folded BatchNorms)" if counts["batchnorm"] else f"({eff})"))
    if counts["alpha"]:
        msg += f" + {counts['alpha']} alpha exponents = {counts['total_effective']}"
    log(msg + ".")
    if p["quantized"]:
        log("The model's stored weights are fixed-point numbers; the canonical numbers above are those times λ_h "
            "(z_h and its biases) or divided by λ_h (trace weights). Rounding happens at the points listed in "
            "qpelican/nn/layers/lineq.py, which the check below reproduces.")
    # numerical check
    p4 = prepare_momenta(model, p4, "explain jets")
    keras = predict(model, p4).astype(np.float64)
    f_round = formula_logits(p, p4, rounding=True)
    f_real = formula_logits(p, p4, rounding=False)
    c_real = formula_logits(cp, p4, rounding=False)
    check = {
        "jets": int(len(p4)),
        "max_abs_diff_formula_vs_model": float(np.max(np.abs(f_round - keras))) if len(p4) else 0.0,
        "jets_differing": int(np.sum(f_round != keras)) if p["quantized"] else None,
        "max_abs_diff_canonical_vs_original": float(np.max(np.abs(c_real - f_real))) if len(p4) else 0.0,
        "max_abs_logit": float(np.max(np.abs(keras))) if len(p4) else 0.0,
        "sign_agreement": float(np.mean((f_round > 0) == (keras > 0))) if len(p4) else 1.0,
        "effective_parameters": counts,
        "quantized": p["quantized"],
    }
    tol = 0.0 if p["quantized"] else 1e-4 * max(1.0, check["max_abs_logit"])
    check["tolerance"] = tol
    check["ok"] = (check["max_abs_diff_formula_vs_model"] <= tol
                   and check["max_abs_diff_canonical_vs_original"] <= 1e-9 * max(1.0, check["max_abs_logit"]))
    log("")
    how = "bit-exact fixed-point evaluation" if p["quantized"] else "float64 evaluation vs float32 model"
    log(f"Check on {check['jets']} jets ({how}): max |w_formula - w_model| = "
        f"{check['max_abs_diff_formula_vs_model']:.3g} (tolerance {tol:.3g})"
        + (f", {check['jets_differing']} jets differ" if p["quantized"] else "")
        + f"; canonical vs original form: {check['max_abs_diff_canonical_vs_original']:.3g} -> "
        + ("OK" if check["ok"] else "MISMATCH"))
    return check


def _run_model_path(run):

    return run_model_path(run)


def _check_jets(run, data, jets, n_constituents, fmt="p4"):
    """Jets for the numerical check: --data, else the run's test split, else synthetic jets (in the
    model's input format ``fmt``)."""

    src = None
    if data is not None:
        src = evaluation_file(data)
    elif os.path.isdir(os.fspath(run)) and os.path.exists(os.path.join(run, "results.json")):

        with open(os.path.join(run, "results.json")) as f:
            desc = json.load(f).get("data") or {}
        cand = (desc.get("files") or {}).get("test")
        if cand and os.path.exists(cand):
            src = cand
    if src is not None:
        ds = open_input_dataset(src, n_constituents, fmt)
        p4, _ = ds.read(0, min(int(jets), ds.n_jets))
        if len(p4) == 0:
            raise DataError(f"{src}: no jets to check the formula on (" + (
                f"the first {min(int(jets), ds.n_jets)} rows are all empty jets without constituents"
                if ds.n_jets else "the file holds no rows") + "); pass --data with non-empty jets, or leave "
                "--data out to check on synthetic jets.")
        return p4, src
    rng = np.random.default_rng(0)  # massless synthetic jets: the identity holds on any input
    p = rng.normal(0, 20, size=(int(jets), n_constituents, 3)) + np.array([0, 0, 300.0])
    p4 = np.concatenate([np.linalg.norm(p, axis=-1, keepdims=True), p], -1).astype(np.float32)
    mult = rng.integers(5, n_constituents + 1, size=int(jets))
    p4[np.arange(n_constituents)[None, :] >= mult[:, None]] = 0
    if fmt == "l1":
        return to_l1(p4, n_constituents)[0], "synthetic jets"
    return p4, "synthetic jets"


def explain_run(run, data=None, jets=1000, log=print):
    """`qpelican explain RUN`: print the formula of RUN/model.keras and check it; return the check."""

    path = _run_model_path(run)
    model = load_model(path)
    p4, src = _check_jets(run, data, jets, model_constituents(model), model_format(model))
    log(f"{path}  (check jets: {src})")
    check = explain_model(model, p4, log=log)
    if not check["ok"]:
        raise QpelicanError(f"explain: the analytic formula does not reproduce {path} (max difference "
                            f"{check['max_abs_diff_formula_vs_model']:.3g}); please report this as a bug.")
    return check
