"""Model builders: nanoPELICAN and full PELICAN, from a plain dict (filled by recipes).

The dict's keys, their defaults and their validation live in :mod:`qpelican.config.model`
(``DEFAULTS``, :func:`~qpelican.config.model.model_config`).
"""
import numpy as np
import tensorflow as tf
import tf_keras
from qkeras import QDense

from qpelican.core.errors import DataError
from qpelican.core.formats import is_float
from qpelican.core.inputs import check_candidates, check_momenta
from qpelican.nn import fastpath
from qpelican.nn.layers import (CandidateMask, EdgeDense, L1CandidateInput, L1Invariants, LinEq2to0, LinEq2to2,
                             LorentzInvariants, MaskedBatchNorm, MomentumInput, PairDropout, ParticleMask)
from qpelican.nn.layers.lineq import TiedSlices
from qpelican.config.model import model_config


def _front(cfg, q):
    """Input -> (momenta input, particle mask, invariants) shared by both families."""
    if cfg["format"] == "l1":  # Level-1 candidates (pT, eta_rel, phi_rel); quantization.input is the pT format
        x = tf_keras.Input(shape=(cfg["n_constituents"], 3), name="candidates")
        c = L1CandidateInput(beams=cfg["beams"], input_quantizer=q["input"], name="candidate_input")(x)
        m = CandidateMask(name="mask")(c)
        d = L1Invariants(form=cfg["l1_form"], beams=cfg["beams"], invariant_quantizer=q["invariants"], input_quantizer=q["input"],
                         name="invariants")(c)
        return x, m, d
    p4 = tf_keras.Input(shape=(cfg["n_constituents"], 4), name="momenta")
    p = MomentumInput(scale=cfg["scale"], beams=cfg["beams"], input_quantizer=q["input"], name="momentum_input")(p4)
    m = ParticleMask(name="mask")(p)
    d = LorentzInvariants(zero_diagonal=True, invariant_quantizer=q["invariants"], input_quantizer=q["input"],
                          name="invariants")(p)
    return p4, m, d


def folded_batchnorm(cfg):
    """True when a model's BatchNorm is folded into its equivariant layers (``input_shift``): a
    quantized nanoPELICAN with ``batchnorm`` (fixed-point layers take no BatchNorm of their own)."""
    return bool(cfg["batchnorm"]) and cfg["architecture"] == "nano" and not all(
        is_float(v) for v in cfg["quantization"].values())


def _regularise(x, m, cfg, name):
    if cfg["batchnorm"] and not folded_batchnorm(cfg):
        x = MaskedBatchNorm(name=f"bn_{name}")([x, m])
    if cfg["dropout"]:
        x = PairDropout(cfg["dropout"], name=f"dropout_{name}")(x)
    return x


def _eq_kwargs(cfg, q):
    return dict(aggregation=cfg["aggregation"], nbar=cfg["nbar"], alpha=cfg["alpha"], table_bits=cfg["table_bits"],
                coefficient_quantizer=q["coefficients"], bias_quantizer=q["biases"], aggregate_quantizer=q["aggregates"])


def build_nanopelican(cfg):
    """nanoPELICAN(C): [BN] -> Dropout -> LinEq2->2 nano (1 -> C, ReLU) -> [BN] -> Dropout -> LinEq2->0 (C -> 1).

    Quantized, the BatchNorms are folded into the LinEq layers (``input_shift``; see
    :mod:`qpelican.nn.fold` for how a float model's BatchNorm gets there).

    Input: momenta (B, N, 4) in GeV. Output: one logit (B, 1), top if > 0.
    """
    q = cfg["quantization"]
    p4, m, x = _front(cfg, q)
    x = _regularise(x, m, cfg, "in")
    # without a BatchNorm layer the incoming arrays are on the invariants' / activation's grids
    fold = folded_batchnorm(cfg)
    x_q = None if cfg["batchnorm"] and not fold else q["invariants"]
    h_q = None if cfg["batchnorm"] and not fold else q["activation"]
    h = LinEq2to2(cfg["channels"], basis="nano", symmetric=cfg["symmetric"], activation="relu",
                  output_quantizer=q["activation"],
                  input_quantizer=x_q, input_shift=fold, name="lineq_2to2", **_eq_kwargs(cfg, q))([x, m])
    h = _regularise(h, m, cfg, "hidden")
    w = LinEq2to0(1, output_quantizer=q["output"], input_quantizer=h_q, input_shift=fold, name="lineq_2to0",
                  **_eq_kwargs(cfg, q))([h, m])
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
    """Trainable parameters, by default without BatchNorm (or its folded shifts) and alpha exponents
    (paper Table 1)."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, MaskedBatchNorm) and not batchnorm:
            continue
        for w in layer.trainable_weights:
            if ("alpha" in w.name and not alpha) or ("shift" in w.name and not batchnorm):
                continue
            total += int(np.prod(w.shape))
            if isinstance(w.constraint, TiedSlices):  # a tied slice (model.symmetric) is one parameter, not two
                total -= int(np.prod(w.shape)) // int(w.shape[w.constraint.axis])
    return total


def randomize_on_grids(model, seed=0, bias_scale=1.0):
    """Set every coefficient and bias to a random value on its quantizer's grid, and every alpha to a
    random value in [-1, 1]: an untrained model whose firmware can be checked bit for bit and costed
    (untrained weights are not on the grids, and a zero-initialised alpha would hide its tables).

    ``bias_scale`` scales the biases (0.5 keeps pre-activations away from saturation). Returns the model.
    """
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        for w in layer.weights:
            if "alpha" in w.name:
                w.assign(rng.uniform(-1.0, 1.0, w.shape))
            elif hasattr(layer, "coefficient_format"):
                fmt = layer.coefficient_format if "kernel" in w.name else layer.bias_format
                steps = rng.integers(round(fmt.min / fmt.lsb), round(fmt.max / fmt.lsb) + 1, w.shape)
                w.assign((steps * fmt.lsb * (bias_scale if "bias" in w.name else 1.0)).astype(np.float32))
    return retie(model)


def retie(model):
    """Make the tied slices of every weight (model.symmetric) equal again after its weights were set
    by hand (each :class:`TiedSlices` copies its first slice into the second). Returns the model."""
    for w in model.weights:
        if isinstance(w.constraint, TiedSlices):
            w.constraint.tie(w)
    return model


def model_constituents(model):
    """N, the constituents per jet the model takes."""
    return int(model.inputs[0].shape[1])


def model_format(model):
    """The model's input format: "l1" (Level-1 candidates, (B, N, 3)) or "p4" (momenta, (B, N, 4))."""
    return "l1" if any(isinstance(layer, L1CandidateInput) for layer in model.layers) else "p4"


def prepare_momenta(model, p4, source="input array"):
    """Validate momenta and zero-pad them to the model's N; more constituents than N is an error."""
    if model_format(model) == "l1":
        p4 = check_candidates(p4, source)
    else:
        p4 = check_momenta(p4, source)
    n = model_constituents(model)
    if p4.shape[1] > n:
        raise DataError(
            f"{source}: jets have {p4.shape[1]} constituents but the model takes N={n}. Keep the {n} "
            f"highest-pT ones with qpelican.core.inputs.fit_constituents(p4, {n}) (or set n_constituents in the recipe)."
        )
    if p4.shape[1] < n:
        p4 = np.concatenate([p4, np.zeros((p4.shape[0], n - p4.shape[1], p4.shape[2]), np.float32)], axis=1)
    return p4


def inference_function(model):
    """The model's XLA-compiled inference function ``x -> logits`` (no training machinery: no
    dropout, BatchNorm in inference mode), built once and kept on the model.

    XLA fuses each layer's O(N^2) pair arithmetic with its reductions, so the (B, N, N, C) arrays
    are streamed through the cache instead of written to memory between layers. It changes no
    value of a quantized model: every quantized sum is exact in its dtype (docs/fixed_point.md),
    so the order XLA adds in does not matter, and rounding is ``tf.round`` either way (tested bit
    for bit against the eager model)."""
    fn = getattr(model, "_qpelican_predict", None)
    if fn is None:
        fn = tf.function(lambda x: model(x, training=False), jit_compile=True, reduce_retracing=True)
        model._qpelican_predict = fn
    return fn


def _padded(chunk, size):
    """``chunk`` zero-padded to ``size`` jets (empty jets), so XLA compiles one shape per size."""
    if len(chunk) == size:
        return chunk
    return np.concatenate([chunk, np.zeros((size - len(chunk),) + chunk.shape[1:], chunk.dtype)])


def predict(model, p4, batch_size=4096):
    """Logits (jets,) of a model for momenta already of its N (no validation): the inference of
    fit, tune, evaluate and explain.

    A nanoPELICAN goes through the fused numba kernel of :mod:`qpelican.nn.fastpath` (bit-identical
    to the model when quantized); any other model (full PELICAN, another graph: see
    ``fastpath.plan``) through :func:`xla_predict`."""
    fast = fastpath.model_plan(model)
    if isinstance(fast, str):  # the reason the kernel does not compute this model
        return xla_predict(model, p4, batch_size)
    return fastpath.predict_fast(fast, p4)


def xla_predict(model, p4, batch_size=4096):
    """Logits (jets,) of a model through :func:`inference_function`, for any model.

    Jets go through in batches of ``batch_size``; the last partial batch is padded with empty jets
    to the next power of two (at most ``batch_size``), so only a few shapes are ever compiled.
    Memory is one batch's, whatever the number of jets."""
    fn = inference_function(model)
    out = np.zeros(len(p4), np.float32)
    for a in range(0, len(p4), batch_size):
        chunk = np.asarray(p4[a:a + batch_size], np.float32)
        size = min(batch_size, 1 << (len(chunk) - 1).bit_length())
        out[a:a + len(chunk)] = fn(tf.constant(_padded(chunk, size))).numpy().reshape(size, -1)[:len(chunk), 0]
    return out


def predict_logits(model, p4, batch_size=4096):
    """Logits (jets,) of a model for a momentum array (jets, <=N, 4) in GeV, validated first."""
    return predict(model, prepare_momenta(model, p4), batch_size)
