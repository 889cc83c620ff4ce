"""Model builders: nanoPELICAN and full PELICAN, from a plain dict (filled by recipes).

Config keys (defaults in ``DEFAULTS``; ``quantization`` maps tensor names to QKeras quantizer
strings or ``"float"``):

    architecture    "nano" | "pelican"
    n_constituents  N, constituents per jet the model takes (paper: 80)
    beams           prepend the two beam particles
    scale           input scale in GeV: momenta enter as p / scale
    channels        nano: hidden channels C
    aggregation     "sum" | "mean"
    nbar            normaliser Nbar (paper: 49)
    alpha           (n/Nbar)^alpha scaling of the aggregators (nPELICAN_N)
    batchnorm       masked BatchNorm before each equivariant layer
    dropout         dropout rate before each equivariant layer
    table_bits      significant bits of the normaliser tables (quantized models)
    embedding, blocks, eq2to0_channels, mlp    full PELICAN widths
    quantization    {input, invariants, coefficients, biases, activation, aggregates, output}
"""
import copy

import numpy as np
import tf_keras
from qkeras import QDense

from qpelican.core.errors import DataError, QpelicanError
from qpelican.core.inputs import check_momenta
from qpelican.nn.layers import (EdgeDense, LinEq2to0, LinEq2to2, LorentzInvariants, MaskedBatchNorm, MomentumInput,
                             PairDropout, ParticleMask)
from qpelican.nn.quant import get_quantizer
from qpelican.config.recipe import QUANTIZED_TENSORS  # the tensor names' one home


DEFAULTS = {
    "architecture": "nano",
    "n_constituents": 80,
    "beams": False,
    "scale": 8.0,
    "channels": 2,
    "aggregation": "sum",
    "nbar": 49.0,
    "alpha": False,
    "batchnorm": False,
    "dropout": 0.0,
    "table_bits": 18,
    "embedding": 8,
    "blocks": [8, 8],
    "eq2to0_channels": 8,
    "mlp": [16],
    "quantization": {k: None for k in QUANTIZED_TENSORS},
}


def model_config(cfg=None):
    """``cfg`` merged over ``DEFAULTS``; unknown keys are errors."""
    out = copy.deepcopy(DEFAULTS)
    for key, value in (cfg or {}).items():
        if key not in DEFAULTS:
            raise QpelicanError(f"unknown model key {key!r}; allowed: {', '.join(sorted(DEFAULTS))}.")
        if key == "quantization":
            for qk, qv in (value or {}).items():
                if qk not in QUANTIZED_TENSORS:
                    raise QpelicanError(f"unknown quantization key {qk!r}; allowed: {', '.join(QUANTIZED_TENSORS)}.")
                out["quantization"][qk] = qv
        else:
            out[key] = value
    if out["architecture"] not in ("nano", "pelican"):
        raise QpelicanError(f"architecture {out['architecture']!r} is not supported; use 'nano' or 'pelican'.")
    for k, v in out["quantization"].items():
        get_quantizer(v)  # fail early with a clear message
    return out


def _front(cfg, q):
    """Input -> (momenta input, particle mask, invariants) shared by both families."""
    p4 = tf_keras.Input(shape=(cfg["n_constituents"], 4), name="momenta")
    p = MomentumInput(scale=cfg["scale"], beams=cfg["beams"], input_quantizer=q["input"], name="momentum_input")(p4)
    m = ParticleMask(name="mask")(p)
    d = LorentzInvariants(zero_diagonal=True, invariant_quantizer=q["invariants"], input_quantizer=q["input"],
                          name="invariants")(p)
    return p4, m, d


def _regularise(x, m, cfg, name):
    if cfg["batchnorm"]:
        x = MaskedBatchNorm(name=f"bn_{name}")([x, m])
    if cfg["dropout"]:
        x = PairDropout(cfg["dropout"], name=f"dropout_{name}")(x)
    return x


def _eq_kwargs(cfg, q):
    return dict(aggregation=cfg["aggregation"], nbar=cfg["nbar"], alpha=cfg["alpha"], table_bits=cfg["table_bits"],
                coefficient_quantizer=q["coefficients"], bias_quantizer=q["biases"], aggregate_quantizer=q["aggregates"])


def build_nanopelican(cfg):
    """nanoPELICAN(C): [BN] -> Dropout -> LinEq2->2 nano (1 -> C, ReLU) -> [BN] -> Dropout -> LinEq2->0 (C -> 1).

    Input: momenta (B, N, 4) in GeV. Output: one logit (B, 1), top if > 0.
    """
    q = cfg["quantization"]
    p4, m, x = _front(cfg, q)
    x = _regularise(x, m, cfg, "in")
    # without BatchNorm the incoming arrays are on the invariants' / activation's grids
    x_q = None if cfg["batchnorm"] else q["invariants"]
    h_q = None if cfg["batchnorm"] else q["activation"]
    h = LinEq2to2(cfg["channels"], basis="nano", activation="relu", output_quantizer=q["activation"],
                  input_quantizer=x_q, name="lineq_2to2", **_eq_kwargs(cfg, q))([x, m])
    h = _regularise(h, m, cfg, "hidden")
    w = LinEq2to0(1, output_quantizer=q["output"], input_quantizer=h_q, name="lineq_2to0", **_eq_kwargs(cfg, q))([h, m])
    return tf_keras.Model(p4, w, name=f"nanopelican_c{cfg['channels']}")


def build_pelican(cfg):
    """Full PELICAN: embedding, Eq2->2 blocks (messaging + BN + 15-op aggregation), Eq2->0, MLP.

    Input: momenta (B, N, 4) in GeV. Output: one logit (B, 1).
    """
    q = cfg["quantization"]
    dense_q = dict(coefficient_quantizer=q["coefficients"], bias_quantizer=q["biases"], output_quantizer=q["activation"])
    p4, m, x = _front(cfg, q)
    x = EdgeDense(cfg["embedding"], activation="relu", log_features=True, name="embedding", **dense_q)([x, m])
    for i, width in enumerate(cfg["blocks"]):
        x = EdgeDense(width, activation="relu", name=f"messaging_{i}", **dense_q)([x, m])
        x = _regularise(x, m, cfg, f"block_{i}")
        x = LinEq2to2(width, basis="full", activation="relu", output_quantizer=q["activation"],
                      name=f"lineq_2to2_{i}", **_eq_kwargs(cfg, q))([x, m])
    x = LinEq2to0(cfg["eq2to0_channels"], activation="relu", output_quantizer=q["activation"], name="lineq_2to0",
                  **_eq_kwargs(cfg, q))([x, m])
    for i, width in enumerate(cfg["mlp"]):
        x = QDense(width, activation="relu", kernel_quantizer=q["coefficients"], bias_quantizer=q["biases"],
                   name=f"mlp_{i}")(x)
    w = QDense(1, kernel_quantizer=q["coefficients"], bias_quantizer=q["biases"], name="logit")(x)
    return tf_keras.Model(p4, w, name="pelican")


def build_model(cfg=None):
    """Build a model from a config dict (see module docstring)."""
    cfg = model_config(cfg)
    return build_nanopelican(cfg) if cfg["architecture"] == "nano" else build_pelican(cfg)


def count_parameters(model, batchnorm=False, alpha=False):
    """Trainable parameters, by default without BatchNorm and alpha exponents (paper Table 1)."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, MaskedBatchNorm) and not batchnorm:
            continue
        for w in layer.trainable_weights:
            if "alpha" in w.name and not alpha:
                continue
            total += int(np.prod(w.shape))
    return total


def model_constituents(model):
    """N, the constituents per jet the model takes."""
    return int(model.inputs[0].shape[1])


def prepare_momenta(model, p4, source="input array"):
    """Validate momenta and zero-pad them to the model's N; more constituents than N is an error."""
    p4 = check_momenta(p4, source)
    n = model_constituents(model)
    if p4.shape[1] > n:
        raise DataError(
            f"{source}: jets have {p4.shape[1]} constituents but the model takes N={n}. Keep the {n} "
            f"highest-pT ones with qpelican.core.inputs.fit_constituents(p4, {n}) (or set n_constituents in the recipe)."
        )
    if p4.shape[1] < n:
        p4 = np.concatenate([p4, np.zeros((p4.shape[0], n - p4.shape[1], 4), np.float32)], axis=1)
    return p4


def predict_logits(model, p4, batch_size=4096):
    """Logits (jets,) of a model for a momentum array (jets, <=N, 4) in GeV, validated first."""
    p4 = prepare_momenta(model, p4)
    return model.predict(p4, batch_size=batch_size, verbose=0).reshape(-1)
