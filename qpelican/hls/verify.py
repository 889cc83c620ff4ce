"""Bit-exactness check: the compiled C simulation against the QKeras model, jet by jet.

The firmware input is the quantized scaled momenta ``p_hat = Q_input(p / scale)``, computed by the
model's own ``MomentumInput`` layer (the same TF ops as in training, beams stripped: the firmware
adds them as constants); for a Level-1 model (``data.format: l1``) it is the candidates on the
grid, computed by its ``L1CandidateInput``. Both outputs are compared exactly; differences are
reported in LSBs of the output format.
"""
import time

import numpy as np
from hls4ml.backends import get_backend

from qpelican.core.errors import ExportError
from qpelican.core.metrics import roc_metrics
from qpelican.data.l1 import open_input_dataset
from qpelican.data.readers import evaluation_file
from qpelican.hw.fixed import Fx
from qpelican.nn.layers import L1CandidateInput, MomentumInput
from qpelican.nn.models import model_constituents, prepare_momenta
from qpelican.nn.quant import quantize


def momentum_layer(model):
    """The model's input layer: MomentumInput, or L1CandidateInput for a Level-1 model."""

    for layer in model.layers:
        if isinstance(layer, (MomentumInput, L1CandidateInput)):
            return layer
    raise ExportError("the model has no MomentumInput (or L1CandidateInput) layer; only qpelican nanoPELICAN "
                      "models can be verified.")


def _l1_inputs(layer, x):
    """Level-1 candidates on the grid, as the model's L1CandidateInput computes them."""

    x_hat = layer(np.asarray(x, np.float32)).numpy()[:, int(layer.beams):]  # the firmware adds the beam
    lo, hi = layer.angle_range
    pt = x_hat[..., 0].astype(np.float64)
    ang = x_hat[..., 1:]
    on_grid = np.array_equal(quantize(pt, layer.input_format).numpy(), pt) and np.array_equal(np.round(ang), ang) \
        and ang.min(initial=0) >= lo and ang.max(initial=0) <= hi
    if not on_grid:
        raise ExportError("L1CandidateInput produced values off the Level-1 grid; cannot feed the firmware.")
    return np.ascontiguousarray(x_hat, dtype=np.float32)


def firmware_inputs(model, p4):
    """p_hat (B, N, 4) float32 exactly as the model's MomentumInput computes it (without beams);
    for a Level-1 model the candidates (B, N, 3) on the grid (L1CandidateInput)."""

    layer = momentum_layer(model)
    if type(layer).__name__ == "L1CandidateInput":
        return _l1_inputs(layer, p4)
    p_hat = layer(np.asarray(p4, np.float32)).numpy()
    if layer.beams:
        p_hat = p_hat[:, 2:]
    # every value must lie on the input grid, or the C simulation's input cast would round it again
    again = quantize(p_hat.astype(np.float64), layer.input_format).numpy()
    if not np.array_equal(again, p_hat.astype(np.float64)):
        raise ExportError("MomentumInput produced values off the input quantizer's grid; cannot feed the firmware.")
    return np.ascontiguousarray(p_hat, dtype=np.float32)


def output_lsb(plan):
    """LSB of the firmware output (the output quantizer's, or the exact accumulator's for float output)."""

    last = plan["layers"][-1]
    if last.params.get("float_output"):
        acc = last.types["accum_t"]
        return 2.0 ** -acc.frac if isinstance(acc, Fx) else None

    prec = get_backend("Vitis").convert_precision_string(last.out_type)
    return 2.0 ** -(prec.width - prec.integer)


def predict_phat(hls_model, p_hat):
    """Run the C simulation on quantized momenta p_hat (B, N, 4); returns (B, outputs) float64."""
    x = np.ascontiguousarray(np.asarray(p_hat, dtype=np.float32).reshape(len(p_hat), -1))
    y = hls_model.predict(x)
    y = np.asarray(y, dtype=np.float64)
    return y.reshape(len(p_hat), -1)


def compare(model, hls_model, plan, p4, labels=None, batch=2000):
    """Run both models on momenta ``p4`` (B, N, 4) GeV; return the verification summary dict."""

    p4 = prepare_momenta(model, p4, "verification jets")
    keras_out, hls_out = [], []
    t_keras = t_hls = 0.0
    for start in range(0, len(p4), batch):
        chunk = p4[start:start + batch]
        t0 = time.perf_counter()
        keras_out.append(model.predict(chunk, batch_size=len(chunk), verbose=0).reshape(len(chunk), -1))
        t1 = time.perf_counter()
        hls_out.append(predict_phat(hls_model, firmware_inputs(model, chunk)))
        t2 = time.perf_counter()
        t_keras += t1 - t0
        t_hls += t2 - t1
    saturation = input_saturation(momentum_layer(model), p4)
    k = np.concatenate(keras_out).astype(np.float64)
    h = np.concatenate(hls_out).astype(np.float64)
    diff = np.abs(h - k)
    lsb = output_lsb(plan)
    differing = np.any(diff != 0, axis=1)
    out = {
        "jets": int(len(p4)),
        "differing_jets": int(differing.sum()),
        "differing_outputs": int((diff != 0).sum()),
        "max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "max_diff_lsb": float(diff.max() / lsb) if (diff.size and lsb) else 0.0,
        "output_lsb": lsb,
        "first_differing_jets": [int(i) for i in np.nonzero(differing)[0][:10]],
        "csim_seconds": t_hls,
        "csim_jets_per_s": float(len(p4) / t_hls) if t_hls > 0 else None,
        "keras_seconds": t_keras,
        "input_saturation": saturation,
        "multiplicity": {"min": int((p4[..., 0] != 0).sum(1).min()), "max": int((p4[..., 0] != 0).sum(1).max())},
        "reference": "QKeras/tf-keras model (quantized sums in float64, exact for the widths in report.json)",
    }
    if labels is not None:

        labels = np.asarray(labels).reshape(-1)[: len(p4)]
        if len(np.unique(labels)) == 2:
            out["keras_metrics"] = roc_metrics(labels, k[:, 0])
            out["hls_metrics"] = roc_metrics(labels, h[:, 0])
            out["auc_keras"] = out["keras_metrics"]["auc"]
            out["auc_hls"] = out["hls_metrics"]["auc"]
    return out, k, h


def input_saturation(layer, x):
    """Constituents the input layer clips (counted per constituent and per jet): momenta beyond the
    input range, or Level-1 candidates with pT above the pT format or an angle beyond angle_bits."""
    x = np.asarray(x, np.float64)
    if type(layer).__name__ == "L1CandidateInput":
        lo, hi = layer.angle_range
        sat = (x[..., 0] > layer.input_format.max) | np.any((x[..., 1:] < lo) | (x[..., 1:] > hi), axis=-1)
        sat &= x[..., 0] != 0
        note = (f"candidates with pT above {layer.input_format.max:g} GeV or eta_rel/phi_rel beyond "
                f"[{lo}, {hi}]; both models saturate them identically, no internal sum can overflow")
    else:
        sat = np.any(np.abs(x / layer.scale) > layer.input_format.max, axis=-1)
        note = ("constituents with a momentum component beyond the input range "
                f"(|p| > {layer.input_format.max * layer.scale:g} GeV); both models clip them "
                "identically, no internal sum can overflow")
    return {"constituents": int(sat.sum()), "jets": int(np.any(sat, axis=1).sum()), "note": note}


def read_jets(data, n_constituents, jets, log=None, fmt="p4"):
    """First ``jets`` jets with constituents of an HDF5 file, or of a directory's test split (else its
    validation split, never its training split): (inputs, labels, file) in input format ``fmt``
    (``l1``: Level-1 candidates, qpelican.data.l1). A DataError when none."""

    path = evaluation_file(data, warn=(lambda m: log(f"note: {m}")) if log else None)
    ds = open_input_dataset(path, n_constituents, fmt)
    p4, labels = ds.read(0, min(int(jets), int(ds.n_jets)))
    if fmt == "l1" and log is not None:
        log(ds.counts.describe())
    if len(p4) == 0:
        raise ExportError(f"--verify {path}: no jets to verify (" + (
            f"the first {min(int(jets), ds.n_jets)} rows are all empty jets without constituents"
            if ds.n_jets else "the file holds no rows") + "); pass a file with non-empty jets, e.g. a test.h5 "
            "written by `qpelican data simulate`.")
    return np.asarray(p4, np.float32), (None if labels is None else np.asarray(labels)), path


def stress_jets(rng, model, jets=400):
    """Jets that exercise the firmware's corners, for tests and benchmarks (momenta in GeV).

    A mix of: random massless jets with realistic spreads (falling pT spectrum, eta/phi spread
    ~0.3 around an axis at |eta| < 2), padded jets of every multiplicity, jets with the maximum
    number of constituents, jets whose momenta sit at and beyond the top of the input range
    (saturating), single-particle and empty jets.
    """

    layer = momentum_layer(model)
    n = model_constituents(model)
    if type(layer).__name__ == "L1CandidateInput":
        return stress_candidates(rng, layer, n, jets)
    top = layer.input_format.max * layer.scale  # GeV at the top of the input range
    q = max(jets // 4, 1)
    groups = []

    def massless(b, nn, pt_scale):
        eta0 = rng.uniform(-2, 2, (b, 1))
        phi0 = rng.uniform(-np.pi, np.pi, (b, 1))
        pt = rng.exponential(pt_scale, (b, nn)) * rng.uniform(0.3, 1.5, (b, 1))
        pt = -np.sort(-pt, axis=1)
        eta = eta0 + rng.normal(0, 0.3, (b, nn))
        phi = phi0 + rng.normal(0, 0.3, (b, nn))
        return np.stack([pt * np.cosh(eta), pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)], -1)

    # realistic spread, padded to random multiplicities (including 0 and 1)
    p = massless(q, n, top / 12)
    mult = rng.integers(0, n + 1, q)
    mult[:2] = [0, 1]
    p[np.arange(n)[None, :] >= mult[:, None]] = 0
    groups.append(p)
    # maximum number of constituents
    groups.append(massless(q, n, top / 12))
    # near the top of the input range: energies around and beyond the largest representable value
    p = massless(q, n, top / 3)
    p[:, :3] *= (top / np.maximum(p[:, :1, 0:1], 1e-6)) * rng.uniform(0.9, 1.3, (q, 1, 1))
    groups.append(p)
    # everything else: soft jets with few constituents (small sums, rounding ties)
    p = massless(jets - 3 * q, n, top / 40)
    mult = rng.integers(1, max(n // 4, 2), jets - 3 * q)
    p[np.arange(n)[None, :] >= mult[:, None]] = 0
    groups.append(p)
    out = np.concatenate(groups).astype(np.float32)
    out[..., 0] = np.abs(out[..., 0])
    return out


def stress_candidates(rng, layer, n, jets=400):
    """Level-1 candidates (jets, n, 3) on the grid that exercise the firmware's corners: realistic
    jets padded to every multiplicity, full jets, candidates at and beyond the top of the pT format
    and the angle range (saturating), equal-pT and single-candidate jets."""
    lo, hi = layer.angle_range
    top = layer.input_format.max
    lsb = layer.input_format.lsb
    q = max(jets // 4, 1)
    x = np.zeros((jets, n, 3))
    pt = rng.exponential(top / 200, (jets, n)) * rng.uniform(0.3, 1.5, (jets, 1))
    x[..., 0] = -np.sort(-np.round(pt / lsb) * lsb, axis=1)
    x[..., 1:] = np.round(rng.normal(0, 0.3, (jets, n, 2)) * 720 / np.pi)
    mult = rng.integers(0, n + 1, jets)
    mult[:2] = [0, 1]
    mult[q:2 * q] = n  # full jets
    # at and beyond the top of the ranges
    x[2 * q:3 * q, :2, 0] = np.round(top * rng.uniform(0.9, 1.3, (q, 1)) / lsb) * lsb  # on the pT grid
    x[2 * q:3 * q, 2:4, 1:] = rng.choice([lo - 40, lo, hi, hi + 40], (q, min(2, max(n - 2, 0)), 2))
    x[3 * q:, :, 0] = x[3 * q:, :1, 0]  # equal pT: ties everywhere
    x[np.arange(n)[None, :] >= mult[:, None]] = 0
    return np.maximum(x, [0.0, -np.inf, -np.inf]).astype(np.float32)
