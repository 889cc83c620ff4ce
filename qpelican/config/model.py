"""The model section of a recipe: every model key, its default and its validation.

``DEFAULTS`` is the one home of the model defaults; :func:`model_config` merges a partial dict
over them. :mod:`qpelican.nn.models` builds a Keras model from the result. The keys:

    architecture    "nano" | "pelican"
    n_constituents  N, constituents per jet the model takes (paper: 80)
    format          input format: "p4" (E, px, py, pz) | "l1" (Level-1 candidates: pT, eta_rel,
                    phi_rel on the trigger grid; quantization.input is then the pT format; docs/l1.md)
    l1_form         l1 format: "collider" (pT_i pT_j dR^2/2 from exact integer squares; exported) |
                    "massless" (pT_i pT_j (cosh deta - cos dphi) in float, the reference; not exported)
    beams           p4: prepend the two beam particles; l1: prepend the beam in its Level-1 form
                    (one row whose products are the candidates' pT; docs/l1.md)
    scale           input scale in GeV: momenta enter as p / scale
    channels        nano: hidden channels C
    aggregation     "sum" | "mean"
    nbar            normaliser Nbar (paper: 49)
    alpha           (n/Nbar)^alpha scaling of the aggregators (nPELICAN_N)
    symmetric       nano: one coefficient (and alpha) for the S_i and S_j terms of LinEq2->2, so
                    the hidden array is symmetric, h_ij = h_ji, and firmware computes each unordered
                    pair once (about half the LinEq2->2 logic)
    batchnorm       masked BatchNorm before each equivariant layer
    dropout         dropout rate before each equivariant layer
    table_bits      significant bits of the normaliser tables (quantized models)
    embedding, blocks, eq2to0_channels, mlp    full PELICAN widths
    quantization    {input, invariants, coefficients, biases, activation, aggregates, output}:
                    quantizer strings (:mod:`qpelican.core.formats`) or None for float
"""
import copy

from qpelican.core.errors import QpelicanError
from qpelican.core.formats import parse_format

QUANTIZED_TENSORS = ("input", "invariants", "coefficients", "biases", "activation", "aggregates", "output")
MAX_CONSTITUENTS = 200  # the largest N a model, a recipe or a search may ask for
ARCHITECTURES = ("nano", "pelican")
INPUT_FORMATS = ("p4", "l1")
L1_FORMS = ("collider", "massless")


DEFAULTS = {
    "architecture": "nano",
    "n_constituents": 80,
    "format": "p4",
    "l1_form": "collider",
    "beams": False,
    "scale": 8.0,
    "channels": 2,
    "aggregation": "sum",
    "nbar": 49.0,
    "alpha": False,
    "symmetric": False,
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
    if out["architecture"] not in ARCHITECTURES:
        raise QpelicanError(f"architecture {out['architecture']!r} is not supported; use one of {', '.join(ARCHITECTURES)}.")
    if out["format"] not in INPUT_FORMATS:
        raise QpelicanError(f"input format {out['format']!r} is not supported; use one of {', '.join(INPUT_FORMATS)}.")
    if out["l1_form"] not in L1_FORMS:
        raise QpelicanError(f"l1_form {out['l1_form']!r} is not supported; use one of {', '.join(L1_FORMS)}.")
    if out["symmetric"] and out["architecture"] != "nano":
        raise QpelicanError("model.symmetric ties the nano basis's S_i and S_j coefficients; the full PELICAN "
                            "basis has no such pair. Set model.symmetric: false or architecture: nano.")
    for v in out["quantization"].values():
        parse_format(v)  # fail early with a clear message
    return out
