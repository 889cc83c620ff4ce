"""The firmware plan of a qpelican model: which HLS function each layer becomes, with every width.

:func:`make_plan` walks a (tf-keras) qpelican model, rejects what the firmware cannot reproduce
(with an :class:`~qpelican.core.errors.ExportError` naming the layer and the fix) and derives, for
each layer, the quantized constants (coefficients, biases, normaliser tables exactly as Keras
uses them) and the C++ types:

* tensors rounded by a QKeras quantizer use the quantizer's format
  (:meth:`qpelican.nn.quant.FixedFormat.ap_type`: ``AP_RND_CONV, AP_SAT``, as QKeras rounds);
* everything Keras computes exactly (Minkowski products, particle sums, aggregate products,
  pre-activations) is kept exact in the firmware, in the narrowest type that holds every value
  it can take for momenta anywhere in the input format's range (:mod:`qpelican.hw.fixed`);
* a quantized nanoPELICAN with ``batchnorm`` has its BatchNorms folded into the equivariant layers
  (``input_shift``, :mod:`qpelican.nn.fold`): their biases are tables over the multiplicity n, which
  the firmware stores like the normaliser tables (weights ``b``, ``bd`` of (N+1) x C_out entries laid
  out [n][h], param ``bias_tables``), in a type fitted to the entries: they are on the bias
  quantizer's step but not in its range. A float model's ``MaskedBatchNorm`` is refused.

The plan is pure Python/numpy (no hls4ml): the exporter, the report and the tests share it.
"""
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import tf_keras

from qpelican.core.errors import ExportError
from qpelican.hw import fixed
from qpelican.hw.fixed import Fx, const, fit_values, from_format
from qpelican.nn.layers import LAYERS
from qpelican.nn.layers.l1 import BEAM_PT

# Keras class name -> our hls4ml IR layer class name
IR_NAMES = {
    "MomentumInput": "QPMomentumInput",
    "ParticleMask": "QPParticleMask",
    "LorentzInvariants": "QPLorentzInvariants",
    "LinEq2to2": "QPLinEq2to2Nano",
    "LinEq2to0": "QPLinEq2to0",
    "L1CandidateInput": "QPL1CandidateInput",
    "CandidateMask": "QPCandidateMask",
    "L1Invariants": "QPL1Invariants",
}
FLOAT64_BITS = 53
SKIPPED = ("InputLayer", "Dropout", "PairDropout")  # no firmware function: the input, identities at inference

NANO_FIX = ("Export supports the nanoPELICAN graph (MomentumInput -> ParticleMask, LorentzInvariants "
            "-> [Dropout] -> LinEq2to2 nano -> [Dropout] -> LinEq2to0; with data.format l1: L1CandidateInput "
            "-> CandidateMask, L1Invariants -> ...) with every tensor quantized; "
            "use a quantized nano recipe (architecture: nano; with batchnorm: true its BatchNorms are folded "
            "into the equivariant layers).")
BATCHNORM_FIX = ("A quantized nano recipe with batchnorm: true (training.qat: finetune) trains the BatchNorm in "
                 "the float pre-training and folds it into the fixed-point equivariant layers (qpelican.nn.fold), "
                 "which the firmware exports: export that quantized model, or train with batchnorm: false.")


@dataclass
class LayerPlan:
    """One firmware function: its Keras layer, IR class, C++ types and constants."""

    name: str
    keras_class: str
    ir_class: str
    inputs: list
    n: int  # particles the firmware sees (N, plus 2 with beams)
    out_shape: tuple  # without batch
    out_type: str  # C++ type of the output array
    types: dict = field(default_factory=dict)  # name -> Fx or ap type string of intermediates
    weights: dict = field(default_factory=dict)  # name -> (np.ndarray flattened C-order, ap type)
    params: dict = field(default_factory=dict)  # scalar settings for the config struct
    notes: list = field(default_factory=list)
    # weight-independent versions of the entries of types/params that depend on the weights (accum_t;
    # with alpha the tables and "alias"): what any weights on the quantizer grids need. The cost model
    # of a recipe uses them (qpelican.hw.inventory RECIPE), so a model costs the same before and after
    # training; the firmware is generated with the exact types.
    bounds: dict = field(default_factory=dict)


def _inbound(model_config):
    """{layer name: [input layer names]} from a functional model config."""
    out = {}
    for lc in model_config["layers"]:
        names = []
        for node in lc.get("inbound_nodes", []) or []:
            for inp in node:
                names.append(inp[0])
        out[lc["config"]["name"]] = names
    return out


def _fmt(layer, name, what, allow_float=False):
    fmt = getattr(layer, f"{name}_format")
    if fmt is None and not allow_float:
        raise ExportError(
            f"layer {layer.name!r} ({type(layer).__name__}): the {what} is float (no quantizer). The firmware "
            f"reproduces quantized models bit for bit only: set quantization.{what} in the recipe to a QKeras "
            "quantizer such as quantized_bits(8,0,alpha=1) (quantized_relu(8,3) for activations) and retrain.")
    return fmt


def _weights(layer, attr, qname):
    w = getattr(layer, attr)
    return np.asarray(layer.q(qname, w).numpy(), dtype=np.float64)


def _activation_name(layer):
    name = tf_keras.activations.serialize(layer.activation) if layer.activation is not None else "linear"
    if isinstance(name, dict):
        name = name.get("config", {}).get("name", name.get("class_name"))
    if name not in ("relu", "linear", None):
        raise ExportError(f"layer {layer.name!r}: activation {name!r} is not supported in firmware; use 'relu' or none.")
    return "relu" if name == "relu" else "linear"


def _table_columns(layer, n, c_in):
    """Normaliser table (n+1, K, C) exactly as Keras uses it, broadcast to C = c_in."""
    t = np.asarray(layer.scale_table().numpy(), dtype=np.float64)
    if t.shape[0] != n + 1:
        raise ExportError(f"layer {layer.name!r}: normaliser table has {t.shape[0]} rows, expected {n + 1}.")
    if t.shape[2] != c_in:
        t = np.broadcast_to(t, (t.shape[0], t.shape[1], c_in))
    return np.ascontiguousarray(t)


def _sum_terms(terms):
    """Range of any partial sum of ``terms`` (each widened to contain 0)."""
    total = None
    for t in terms:
        t = t.with_zero()
        total = t if total is None else total + t
    return total


def _accum_bound(coef, operands, c_in, n_biases, bias):
    """Range of a pre-activation for any coefficients and biases on their grids.

    Args:
      coef, bias: the coefficient and bias formats.
      operands: ranges multiplied by one coefficient each, per input channel.
      c_in: input channels; n_biases: bias terms added (1, or 2 with the diagonal bias).
    """
    c_rng = from_format(coef)
    terms = [c_rng * r for _ in range(c_in) for r in operands] + [from_format(bias)] * n_biases
    return _sum_terms(terms)


def _bias_rows(layer, n, bias, constants, tables):
    """The biases the firmware stores, as (rows, C_out) float64 arrays, their range and C++ type.

    Without ``input_shift``: the constants Q_bias(beta) (one row each), in the bias format. With it
    (a folded BatchNorm): ``tables()``, the Keras layer's bias tables over the multiplicity n
    (N+1 rows, the index of the normaliser tables), whose entries are on the bias step but may be
    far outside the bias range: the type is fitted to the entries (:func:`fit_values`).

    Args:
      constants: the quantized bias vectors (used without input_shift).
      tables: callable returning the layer's bias tables (tf tensors).
    Returns (list of arrays, Fx of all their entries, ap type string).
    """
    if not layer.input_shift:
        rows = [np.asarray(c, np.float64).reshape(1, -1) for c in constants]
        return rows, from_format(bias), bias.ap_type()
    rows = [np.asarray(t.numpy(), np.float64) for t in tables()]
    for r in rows:
        if r.shape != (n + 1, layer.channels):
            raise ExportError(f"layer {layer.name!r}: bias table of shape {r.shape}, expected {(n + 1, layer.channels)}.")
        if not np.all(np.isfinite(r)) or np.any(np.round(r * 2.0 ** bias.frac) != r * 2.0 ** bias.frac):
            raise ExportError(f"layer {layer.name!r}: its folded-BatchNorm bias table is not on the bias step "
                              f"2^-{bias.frac} (a non-finite shift?); retrain or refold the model.")
    rng = fit_values(np.concatenate([r.ravel() for r in rows]))
    return rows, rng, rng.ap_type()


def _bias_term(column, bias):
    """Range of one output channel's bias on the bias step: a constant, or a bias table's range over n."""
    return Fx(Fraction(float(np.min(column))), Fraction(float(np.max(column))), bias.frac)


def _note_bias_tables(plan, layer, bias):
    if layer.input_shift:
        plan.notes.append(f"folded BatchNorm: biases tabulated over the multiplicity n ({plan.n + 1} rows), "
                          f"{type_str(plan.types['bias_t'])} (the bias format is {bias.ap_type()})")


def _check_float64(plan, width, what):
    if width > FLOAT64_BITS:
        plan.notes.append(f"{what} needs {width} bits > 53: the QKeras reference (float64) is not exact there; "
                          "reduce table_bits or the invariant width for a bit-exact reference.")
        plan.params["keras_exact"] = False


def _refuse(layer, cls):
    """ExportError for a layer the firmware does not implement (Dropout and planned classes pass)."""
    if cls == "MaskedBatchNorm":
        raise ExportError(
            f"layer {layer.name!r} (MaskedBatchNorm) cannot be exported: a float masked BatchNorm has no "
            f"bit-exact fixed-point form. {BATCHNORM_FIX}")
    if cls in ("EdgeDense", "QDense", "Dense"):
        raise ExportError(
            f"layer {layer.name!r} ({cls}) belongs to full PELICAN, which the firmware exporter does not "
            f"support (only nanoPELICAN). {NANO_FIX}")
    if cls not in IR_NAMES:
        extra = "" if cls in {c.__name__ for c in LAYERS} else " (not a qpelican layer)"
        raise ExportError(f"layer {layer.name!r} ({cls}){extra} is not supported by the firmware exporter. {NANO_FIX}")


def _input_plan(layer):
    shape = tuple(layer.output_shape[0][1:] if isinstance(layer.output_shape, list) else layer.output_shape[1:])
    if len(shape) != 2 or shape[1] not in (3, 4):
        raise ExportError(f"model input {layer.name!r} has shape {shape}; expected (N, 4) momenta or (N, 3) "
                          f"Level-1 candidates. {NANO_FIX}")
    return {"name": layer.name, "n": int(shape[0]), "shape": shape}


def _needs(layer, src, kind, what):
    if src.get("kind") != kind:
        origin = "L1CandidateInput" if kind == "candidates" else "MomentumInput"
        raise ExportError(f"layer {layer.name!r}: {what} must be computed from {origin}. {NANO_FIX}")


def _plan_momentum(layer, ins, state):
    """MomentumInput: the input format, widened to hold the beams' energy when needed."""
    fmt = _fmt(layer, "input", "input")
    rng = from_format(fmt)
    n_in = state[ins[0]]["n"]
    n = n_in + 2 * int(layer.beams)
    out_type = fmt.ap_type()
    params = {"n_in": n_in, "n_out": n, "beams": bool(layer.beams), "beam_energy": float(layer.beam_energy),
              "scale": float(layer.scale)}
    if layer.beams:
        e = const(layer.beam_energy)
        if not (rng.lo <= e.lo <= rng.hi and e.frac <= rng.frac):
            rng = rng.union(e).union(-e)
            out_type = rng.ap_type()
    p = LayerPlan(layer.name, "MomentumInput", IR_NAMES["MomentumInput"], ins, n, (n, 4), out_type, params=params,
                  types={"input": fmt.ap_type()})
    return p, {"kind": "momenta", "n": n, "range": rng, "fmt": fmt, "type": out_type}


# mask layer -> (the input it masks, how errors name it)
MASK_SOURCES = {"ParticleMask": ("momenta", "the particle mask"), "CandidateMask": ("candidates", "the candidate mask")}


def _plan_mask(layer, ins, state):
    """ParticleMask / CandidateMask: one bit per particle, m_i = [first feature != 0]."""
    cls = type(layer).__name__
    src = state[ins[0]]
    _needs(layer, src, *MASK_SOURCES[cls])
    n = src["n"]
    p = LayerPlan(layer.name, cls, IR_NAMES[cls], ins, n, (n,), "ap_uint<1>", params={"n": n})
    return p, {"kind": "mask", "n": n}


def _plan_invariants(layer, ins, state):
    """LorentzInvariants: the exact Minkowski product of two momenta, rounded once."""
    src = state[ins[0]]
    _needs(layer, src, "momenta", "Lorentz invariants")
    n = src["n"]
    fmt = _fmt(layer, "invariant", "invariants")
    sq = src["range"] * src["range"]
    dot = sq - sq - sq - sq  # E_i E_j - px px - py py - pz pz, exact
    p = LayerPlan(layer.name, "LorentzInvariants", IR_NAMES["LorentzInvariants"], ins, n, (n, n, 1), fmt.ap_type(),
                  types={"p": src["type"], "dot_t": dot}, params={"n": n, "zero_diagonal": bool(layer.zero_diagonal)})
    _check_float64(p, dot.width, "the Minkowski product")
    return p, {"kind": "pairs", "n": n, "range": from_format(fmt), "fmt": fmt, "c": 1, "symmetric": True,
               "zero_diagonal": bool(layer.zero_diagonal)}


def _plan_lineq2to2(layer, ins, state):
    if layer.basis != "nano":
        raise ExportError(
            f"layer {layer.name!r} (LinEq2to2, basis {layer.basis!r}): only the 6-op nano basis is exported; "
            f"the 15-op full basis (full PELICAN) is not supported. {NANO_FIX}")
    x, m = state[ins[0]], state[ins[1]]
    if x.get("kind") != "pairs" or not x.get("symmetric") or not x.get("zero_diagonal") or m.get("kind") != "mask":
        raise ExportError(
            f"layer {layer.name!r}: the nano basis needs the symmetric, zero-diagonal invariants d_ij and the "
            f"particle mask as inputs. {NANO_FIX}")
    p = _plan_2to2(layer, ins, x)
    return p, {"kind": "pairs", "n": x["n"], "range": from_format(layer.output_format), "fmt": layer.output_format,
               "c": layer.channels, "symmetric": p.params["symmetric"], "zero_diagonal": False}


def _plan_lineq2to0(layer, ins, state):
    x, m = state[ins[0]], state[ins[1]]
    if x.get("kind") != "pairs" or m.get("kind") != "mask":
        raise ExportError(f"layer {layer.name!r}: LinEq2to0 needs a pair array and the particle mask. {NANO_FIX}")
    p = _plan_2to0(layer, ins, x)
    p.params["symmetric_input"] = bool(x.get("symmetric"))  # y_ij = y_ji: the total sum adds pairs i < j twice
    return p, {"kind": "vector", "n": x["n"], "c": layer.channels}


def _plan_l1_input(layer, ins, state):
    """L1CandidateInput: pT cast to the pT format, angles to saturating angle_bits-bit integers; one
    array of the type that holds both exactly (the firmware's input type)."""
    fmt = _fmt(layer, "input", "input")
    lo, hi = layer.angle_range
    pt, ang = from_format(fmt), Fx(lo, hi, 0)
    rng = pt.union(ang)
    n_in = state[ins[0]]["n"]
    n = n_in + int(layer.beams)
    in_type = f"{rng.ap_type()[:-1]},AP_RND_CONV,AP_SAT>"
    if layer.beams:  # the beam row (BEAM_PT, 0, 0) is a constant of the output array
        rng = rng.union(const(BEAM_PT))
    out_type = f"{rng.ap_type()[:-1]},AP_RND_CONV,AP_SAT>"
    a = layer.angle_bits
    p = LayerPlan(layer.name, "L1CandidateInput", IR_NAMES["L1CandidateInput"], ins, n, (n, 3), out_type,
                  types={"input": in_type, "pt_t": fmt.ap_type(), "angle_t": f"ap_fixed<{a},{a},AP_RND_CONV,AP_SAT>"},
                  params={"n": n, "n_in": n_in, "beams": bool(layer.beams), "beam_pt": BEAM_PT, "angle_bits": a})
    return p, {"kind": "candidates", "n": n, "n_in": n_in, "beams": bool(layer.beams), "pt": pt, "pt_fmt": fmt,
               "angle_bits": a, "type": out_type}


def _plan_l1_invariants(layer, ins, state):
    """L1Invariants: pT_i pT_j (deta^2 + dphi^2) 2^-shift, exact, rounded once (docs/l1.md)."""
    src = state[ins[0]]
    _needs(layer, src, "candidates", "Level-1 invariants")
    if layer.form != "collider":
        raise ExportError(f"layer {layer.name!r} (L1Invariants, form {layer.form!r}): only the collider form "
                          "pT_i pT_j (deta^2 + dphi^2) has firmware (the massless form is the float reference of "
                          "docs/l1.md); set model.l1_form: collider and retrain.")
    if layer.angle_bits != src["angle_bits"]:
        raise ExportError(f"layer {layer.name!r}: angle_bits {layer.angle_bits} differs from the input's "
                          f"{src['angle_bits']}; build the model with qpelican.build_model.")
    if layer.beams != src["beams"]:
        raise ExportError(f"layer {layer.name!r}: beams {layer.beams} differs from the input's {src['beams']}; "
                          "build the model with qpelican.build_model.")
    n = src["n"]
    fmt = _fmt(layer, "invariant", "invariants")
    amax = 2 ** src["angle_bits"] - 1  # largest |eta_i - eta_j| of two saturated angles
    diff = Fx(-amax, amax, 0)
    adiff = Fx(0, amax, 0)  # |eta_i - eta_j|: the squares are unsigned (angle_bits x angle_bits)
    r = Fx(0, 2 * amax * amax, 0)  # deta^2 + dphi^2, exact integer
    ptr = src["pt"] * r  # pT_i R_ij: one DSP48 (14 x 21 bits for the Level-1 pT)
    prod = ptr * src["pt"]  # (pT_i R_ij) pT_j, exact: the same number for ij and ji
    scale = Fraction(1, 2 ** layer.shift)
    dot = Fx(prod.lo * scale, prod.hi * scale, prod.frac + layer.shift)  # the same bits, 2^-shift
    p = LayerPlan(layer.name, "L1Invariants", IR_NAMES["L1Invariants"], ins, n, (n, n, 1), fmt.ap_type(),
                  types={"x": src["type"], "pt_t": src["pt_fmt"].ap_type(), "angle_t": f"ap_int<{src['angle_bits']}>",
                         "diff_t": diff, "adiff_t": adiff, "r_t": r, "ptr_t": ptr, "prod_t": prod, "dot_t": dot},
                  params={"n": n, "n_in": src["n_in"], "beams": src["beams"], "shift": layer.shift,
                          "angle_bits": src["angle_bits"]})
    _check_float64(p, prod.width, "the product pT_i pT_j R_ij")
    return p, {"kind": "pairs", "n": n, "range": from_format(fmt), "fmt": fmt, "c": 1, "symmetric": True,
               "zero_diagonal": True}


# Keras class -> planner(layer, input tensor names, state) -> (LayerPlan, state of its output)
PLANNERS = {"MomentumInput": _plan_momentum, "ParticleMask": _plan_mask, "LorentzInvariants": _plan_invariants,
            "LinEq2to2": _plan_lineq2to2, "LinEq2to0": _plan_lineq2to0, "L1CandidateInput": _plan_l1_input,
            "CandidateMask": _plan_mask, "L1Invariants": _plan_l1_invariants}


def make_plan(model):
    """Analyse ``model`` and return ``{"layers": [LayerPlan...], "input": {...}, "output": {...}}``.

    Raises ExportError for anything the firmware does not implement.
    """
    cfg = model.get_config()
    if "layers" not in cfg:
        raise ExportError("only functional qpelican models (built by qpelican.build_model) can be exported.")
    inbound = _inbound(cfg)
    # what the firmware does not implement is refused first, before any format check: a float model
    # with BatchNorm is told about its BatchNorm, not about its first float tensor
    for layer in model.layers:
        if type(layer).__name__ not in SKIPPED:
            _refuse(layer, type(layer).__name__)
    layers, by_name, input_plan = [], {}, None
    state = {}  # tensor name -> dict(range=Fx, fmt=FixedFormat|None, n=int, kind=...)

    def resolve(name):  # follow skipped layers (Dropout) back to their producer
        while name in state and state[name].get("alias"):
            name = state[name]["alias"]
        return name

    for layer in model.layers:
        cls = type(layer).__name__
        ins = [resolve(i) for i in inbound.get(layer.name, [])]
        if cls == "InputLayer":
            input_plan = _input_plan(layer)
            state[layer.name] = {"kind": "raw", "n": input_plan["n"]}
            continue
        # identity at inference: the exporter hands PairDropout to hls4ml as Dropout, the cost model
        # plans the model as trained
        if cls in ("Dropout", "PairDropout"):
            state[layer.name] = {"alias": ins[0]}
            continue
        p, state[layer.name] = PLANNERS[cls](layer, ins, state)
        layers.append(p)
        by_name[p.name] = p

    outputs = [o.name if hasattr(o, "name") else o for o in model.output_names] if hasattr(model, "output_names") else []
    if len(model.outputs) != 1 or not layers or layers[-1].keras_class != "LinEq2to0":
        raise ExportError(f"the model must end in one LinEq2to0 readout. {NANO_FIX}")
    return {"input": input_plan, "layers": layers, "by_name": by_name, "output": outputs,
            "keras_exact": all(p.params.get("keras_exact", True) for p in layers)}


def _plan_2to2(layer, ins, x):
    n = x["n"]
    c_in = int(layer.kernel.shape[0])
    h = layer.channels
    coef = _fmt(layer, "coefficient", "coefficients")
    bias = _fmt(layer, "bias", "biases")
    agg = _fmt(layer, "aggregate", "aggregates")
    out = _fmt(layer, "output", "activation")
    act = _activation_name(layer)
    xr = x["range"]
    s_rng = xr.times(n - 1)  # S_j = sum_{k != j} x_kj (zero diagonal)
    t_rng = s_rng.times(n)  # T = sum_j S_j
    w = _weights(layer, "kernel", "coefficient")  # (c_in, h, 6)
    bd = _weights(layer, "diag_bias_weight", "bias") if layer.diag_bias_weight is not None else np.zeros(h)
    (b, bd), bias_rng, bias_type = _bias_rows(layer, n, bias, [_weights(layer, "bias", "bias"), bd], layer.bias_tables)
    table = _table_columns(layer, n, c_in)  # (n+1, 5, c_in)
    # kernel ops: 0 elem x_ij, 1 S diag, 2 S col, 3 S row, 4 T scalar, 5 T diagscalar; table column = op - 1
    tables, alias = {}, {}
    for k in range(5):
        group = range(0, 3) if k < 3 else range(3, 5)
        alias[k] = next(j for j in group if j <= k and np.array_equal(table[:, j, :], table[:, k, :]))
        tables[k] = table[:, k, :].reshape(-1)
    tab_rng = {k: fit_values(tables[k]) for k in range(5)}
    agg_rng = from_format(agg)
    # pre-activation z_ij^h: exact sum of every term, with the actual (quantized) coefficients
    accum = None
    for hh in range(h):
        terms = []
        for c in range(c_in):
            terms.append(const(w[c, hh, 0], coef.frac) * xr)
            for op in range(1, 6):
                terms.append(const(w[c, hh, op], coef.frac) * agg_rng)
        terms += [_bias_term(b[:, hh], bias), _bias_term(bd[:, hh], bias)]
        z = _sum_terms(terms)
        accum = z if accum is None else accum.union(z)
    prods = {k: (s_rng if k < 3 else t_rng) * tab_rng[k] for k in range(5)}
    # a folded BatchNorm's shift has no grid: the recipe bound keeps the bias format's range for its tables
    n_biases = 1 + (layer.diag_bias_weight is not None or layer.input_shift)
    bounds = {"accum_t": _accum_bound(coef, [xr] + [agg_rng] * 5, c_in, n_biases, bias), "bias_t": from_format(bias)}
    # a symmetric layer (model.symmetric): ops 2 and 3 (S_j, S_i) share their coefficient and table, so
    # y_ij = y_ji exactly and the firmware computes each unordered pair once
    symmetric = bool(layer.symmetric) and np.array_equal(w[:, :, 2], w[:, :, 3]) and alias[1] == alias[2]
    if layer.alpha:  # tables follow the trained exponents: table_bits wide, no two alike (but a tied pair)
        bounds.update({f"table{k}_t": layer.table_bits for k in range(5)},
                      alias={k: 1 if symmetric and k == 2 else k for k in range(5)})
    weights = {
        "w": (w.reshape(-1), coef.ap_type()),
        "b": (b.reshape(-1), bias_type),  # [n][h] with bias tables, else [h]
        "bd": (bd.reshape(-1), bias_type),
    }
    for k in range(5):
        weights[f"t{k}"] = (tables[k], tab_rng[k].ap_type())
    p = LayerPlan(
        layer.name, "LinEq2to2", IR_NAMES["LinEq2to2"], ins, n, (n, n, h), out.ap_type(),
        types={"x": x["fmt"].ap_type(), "n_t": fixed.uint_type(n), "sum_t": s_rng, "total_t": t_rng,
               "agg_t": agg.ap_type(), "accum_t": accum, "bias_t": bias_rng,
               **{f"table{k}_t": tab_rng[k] for k in range(5)},
               **{f"agg_product{k}": prods[k] for k in range(5)}},
        weights=weights,
        params={"n": n, "n_in": c_in, "n_out": h, "relu": act == "relu", "zero_diagonal": True,
                "alias": alias, "table_bits": layer.table_bits, "alpha": bool(layer.alpha),
                "aggregation": layer.aggregation, "nbar": layer.nbar, "bias_tables": layer.input_shift,
                "symmetric": symmetric},
        bounds=bounds,
    )
    for k in range(5):
        _check_float64(p, prods[k].width, f"aggregate product {k}")
    _check_float64(p, accum.width, "the pre-activation")
    _check_float64(p, t_rng.width, "the total sum")
    _note_bias_tables(p, layer, bias)
    return p


def _plan_2to0(layer, ins, x):
    n = x["n"]
    c_in = int(layer.kernel.shape[0])
    h = layer.channels
    coef = _fmt(layer, "coefficient", "coefficients")
    bias = _fmt(layer, "bias", "biases")
    agg = _fmt(layer, "aggregate", "aggregates")
    out = _fmt(layer, "output", "output", allow_float=True)
    act = _activation_name(layer)
    xr = x["range"]
    tot_rng = xr.times(n * n)
    tr_rng = xr.times(n)
    w = _weights(layer, "kernel", "coefficient")  # (c_in, 2, h)
    (b,), bias_rng, bias_type = _bias_rows(layer, n, bias, [_weights(layer, "bias", "bias")],
                                           lambda: [layer.bias_table()])
    table = np.asarray(layer.scale_table().numpy(), dtype=np.float64)  # (n+1, 2, 1)
    if table.shape != (n + 1, 2, 1):
        raise ExportError(f"layer {layer.name!r}: unexpected normaliser table shape {table.shape}.")
    t0, t1 = table[:, 0, 0].copy(), table[:, 1, 0].copy()
    r0, r1 = fit_values(t0), fit_values(t1)
    agg_rng = from_format(agg)
    accum = None
    for hh in range(h):
        terms = [const(w[c, k, hh], coef.frac) * agg_rng for c in range(c_in) for k in range(2)]
        terms.append(_bias_term(b[:, hh], bias))
        z = _sum_terms(terms)
        accum = z if accum is None else accum.union(z)
    bounds = {"accum_t": _accum_bound(coef, [agg_rng, agg_rng], c_in, 1, bias), "bias_t": from_format(bias)}
    if layer.alpha:
        bounds.update(table0_t=layer.table_bits, table1_t=layer.table_bits)
    if out is None:
        out_type = accum.ap_type()
    else:
        out_type = out.ap_type()
    p = LayerPlan(
        layer.name, "LinEq2to0", IR_NAMES["LinEq2to0"], ins, n, (h,), out_type,
        types={"x": x["fmt"].ap_type(), "n_t": fixed.uint_type(n), "total_t": tot_rng, "trace_t": tr_rng,
               "agg_t": agg.ap_type(), "accum_t": accum, "bias_t": bias_rng, "table0_t": r0, "table1_t": r1,
               "agg_product0": tot_rng * r0, "agg_product1": tr_rng * r1},
        weights={"w": (w.reshape(-1), coef.ap_type()), "b": (b.reshape(-1), bias_type),  # [n][h] with bias tables
                 "t0": (t0, r0.ap_type()), "t1": (t1, r1.ap_type())},
        params={"n": n, "n_in": c_in, "n_out": h, "relu": act == "relu", "float_output": out is None,
                "table_bits": layer.table_bits, "alpha": bool(layer.alpha), "bias_tables": layer.input_shift},
        bounds=bounds,
    )
    _check_float64(p, (tot_rng * r0).width, "the total-sum product")
    _check_float64(p, accum.width, "the output sum")
    _note_bias_tables(p, layer, bias)
    return p


def type_str(t):
    """C++ type of a plan entry (Fx or string)."""
    return t.ap_type() if isinstance(t, Fx) else str(t)
