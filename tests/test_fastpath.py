"""The inference fast path (qpelican.nn.fastpath) against the Keras model run op by op,
``model(x, training=False)``: bit for bit for every quantized nanoPELICAN the recipes build, to
1e-5 relative for their float twins, on the session's simulated jets and on stress jets (every
multiplicity, saturating momenta, single-particle and empty jets); other models take the XLA path."""
import glob
import os
import zlib

import numpy as np
import pytest

import qpelican  # noqa: F401  (selects tf-keras)
import tensorflow as tf

from qpelican.config.recipe import load_recipe
from qpelican.data.l1 import open_input_dataset
from qpelican.hls.verify import stress_jets
from qpelican.nn import fastpath
from qpelican.nn.layers import MaskedBatchNorm
from qpelican.nn.models import build_model, predict, xla_predict

RECIPES = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "recipes", "*.yaml")))
NANO = [r for r in RECIPES if load_recipe(r).model.architecture == "nano"]
QUANTIZED = [r for r in NANO if load_recipe(r).quantized]
# the float models the recipes build (the float pre-training of a quantized recipe), each once
FLOAT = list({repr(load_recipe(r).to_model_config(quantized=False)): r for r in NANO}.values())
REAL_JETS = 64


def on_grids(model, rng, steps=3):
    """Coefficients within +-steps LSBs of their grid (large enough to matter, small enough that
    most logits do not saturate), biases and folded shifts within +-4 bias LSBs, alphas in [-1, 1]."""
    for layer in model.layers:
        for w in layer.weights:
            if "alpha" in w.name:
                w.assign(rng.uniform(-1.0, 1.0, w.shape))
            elif hasattr(layer, "coefficient_format"):
                fmt = layer.coefficient_format if "kernel" in w.name else layer.bias_format
                k = steps if "kernel" in w.name else 4
                w.assign((rng.integers(-k, k + 1, w.shape) * fmt.lsb).astype(np.float32))
    return model


def float_weights(model, rng):
    """Random float weights; BatchNorms with positive variances and non-trivial statistics."""
    for layer in model.layers:
        for w in layer.weights:
            if isinstance(layer, MaskedBatchNorm) and "variance" in w.name:
                w.assign(rng.uniform(0.5, 3.0, w.shape) * (1e6 if layer.name == "bn_in" else 10.0))
            elif isinstance(layer, MaskedBatchNorm) and "mean" in w.name:
                w.assign(rng.normal(size=w.shape) * (300.0 if layer.name == "bn_in" else 3.0))
            else:
                w.assign(rng.normal(size=w.shape).astype(np.float32) * (0.1 if "alpha" in w.name else 0.3))
    return model


# the input formats the stress jets saturate (a float model's are those of the 8-bit recipes)
STRESS_INPUT = {"p4": "quantized_bits(18,12,alpha=1)", "l1": "quantized_bits(14,12,keep_negative=False,alpha=1)"}


def inputs(sim_dir, model, fmt, rng):
    """Real jets of the model's format (fmt) and N, then stress jets of its input format's corners."""
    n = model.inputs[0].shape[1]
    real, _ = open_input_dataset(str(sim_dir / "train.h5"), n, fmt).read(0, REAL_JETS)
    front = model.layers[1]
    if front.input_format is None:
        front = build_model({"n_constituents": n, "format": fmt, "scale": getattr(front, "scale", 1.0),
                             "quantization": {"input": STRESS_INPUT[fmt]}})
    else:
        front = model
    return np.concatenate([np.asarray(real, np.float32), stress_jets(rng, front, 64)]).astype(np.float32)


def reference(model, x):
    return np.concatenate([model(tf.constant(x[a:a + 128]), training=False).numpy()[:, 0]
                           for a in range(0, len(x), 128)])


def float64_reference(model, x):
    """A float model written out in float64 numpy, with the layers' masks (no compaction): the
    truth that the float32 Keras model approximates. Its masked BatchNorms make the Keras model's
    float32 sums lose digits (the centring cancels), so the fast path, which sums in float64, is
    compared with this as well."""
    layer = model.get_layer
    l1 = model.layers[1].__class__.__name__ == "L1CandidateInput"
    x = np.asarray(x, np.float64)
    if l1:
        lo, hi = layer("candidate_input").angle_range
        x = np.concatenate([x[..., :1], np.round(np.clip(x[..., 1:], lo, hi))], -1)
        if layer("candidate_input").beams:
            x = np.concatenate([np.broadcast_to([[1.0, 0, 0]], (len(x), 1, 3)), x], 1)
    else:
        front = layer("momentum_input")
        x = x * np.float64(np.float32(1.0 / front.scale))
        if front.beams:
            e = front.beam_energy
            x = np.concatenate([np.broadcast_to([[e, 0, 0, e], [e, 0, 0, -e]], (len(x), 2, 4)), x], 1)
    m = (x[..., 0] != 0).astype(np.float64)
    mm = m[:, :, None] * m[:, None, :]
    n = m.sum(1).astype(int)
    if l1:
        r = (x[:, :, None, 1] - x[:, None, :, 1]) ** 2 + (x[:, :, None, 2] - x[:, None, :, 2]) ** 2
        if layer("invariants").beams:  # the beam's products with the candidates: their pT
            r[:, 0, :] = r[:, :, 0] = 2.0 ** layer("invariants").shift
        d = x[:, :, None, 0] * x[:, None, :, 0] * r * 2.0 ** -layer("invariants").shift
    else:
        d = x[:, :, None, 0] * x[:, None, :, 0] - np.einsum("bif,bjf->bij", x[..., 1:], x[..., 1:])
    d = d * mm * (1 - np.eye(d.shape[1]))

    def bn(v, name):  # y = (v - mean) / sqrt(var + eps) * gamma + beta on real entries
        names = [lay.name for lay in model.layers]
        if name not in names:
            return v
        b = layer(name)
        y = (v - b.moving_mean.numpy()) / np.sqrt(b.moving_variance.numpy().astype(np.float64) + b.epsilon)
        return (y * b.gamma.numpy() + b.beta.numpy()) * mm[..., None]

    eq2, eq0 = layer("lineq_2to2"), layer("lineq_2to0")
    xx = bn(d[..., None], "bn_in")[..., 0]
    w = eq2.kernel.numpy().astype(np.float64)[0]  # (C, 6): x, delta S, S col, S row, T, delta T
    t = eq2.scale_table().numpy()[n, :, 0]  # (B, 5)
    s = xx.sum(1)
    tot = s.sum(1)
    eye = np.eye(xx.shape[1])
    hidden = []
    for h in range(w.shape[0]):
        z = (w[h, 0] * xx + (w[h, 3] * s * t[:, 2:3])[:, :, None] + (w[h, 2] * s * t[:, 1:2])[:, None, :]
             + (eq2.bias.numpy()[h] + w[h, 4] * tot * t[:, 3])[:, None, None]
             + eye * (w[h, 1] * s * t[:, :1] + (w[h, 5] * tot * t[:, 4])[:, None] + eq2.diag_bias_weight.numpy()[h])[:, :, None])
        hidden.append(np.maximum(z, 0) * mm)
    hidden = bn(np.stack(hidden, -1), "bn_hidden")
    t0 = eq0.scale_table().numpy()[n, :, 0]
    v = eq0.kernel.numpy().astype(np.float64)[:, :, 0]
    u1 = hidden.sum((1, 2)) * t0[:, :1]
    u2 = np.einsum("biic->bc", hidden) * t0[:, 1:]
    return u1 @ v[:, 0] + u2 @ v[:, 1] + eq0.bias.numpy()[0]


def recipe_model(path, quantized, sim_dir, seed):
    r = load_recipe(path)
    rng = np.random.default_rng(seed)
    model = build_model(r.to_model_config(quantized=quantized))
    (on_grids if quantized else float_weights)(model, rng)
    return model, inputs(sim_dir, model, r.data.format, rng)


def lively_recipe_model(path, quantized, sim_dir, salt=0):
    """recipe_model with a seed from the recipe's file name (not its checkout path), redrawn until
    the weights give many different logits: a one-channel model whose ReLU is off on most jets
    would compare little more than its bias."""
    base = zlib.crc32(os.path.basename(path).encode()) + salt
    for attempt in range(16):
        model, x = recipe_model(path, quantized, sim_dir, seed=base + 1000 * attempt)
        ref = reference(model, x)
        if len(np.unique(ref)) > 20:
            return model, x, ref
    raise AssertionError(f"{os.path.basename(path)}: no draw of 16 gives more than 20 different logits")


@pytest.mark.parametrize("path", QUANTIZED, ids=os.path.basename)
def test_quantized_recipes_are_bit_identical(path, sim_dir):
    """Every quantized recipe (p4 and l1, alpha tables, folded BatchNorm, C = 1..10, 4 to 8 bits):
    the fast path's logits equal the Keras model's bit for bit, with the pair loops in float32
    (every recipe's formats allow it: ``fastpath.pair_loops_float32``)."""
    model, x, ref = lively_recipe_model(path, True, sim_dir)
    assert not isinstance(fastpath.plan(model), str), fastpath.plan(model)
    assert fastpath.plan(model).float32
    got = predict(model, x)
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("path", FLOAT, ids=os.path.basename)
def test_float_recipes_agree_to_1e5(path, sim_dir):
    """Every nano recipe's float model (the float pre-training of quantized ones: masked
    BatchNorms where the recipe has batchnorm, dropout): 1e-5 relative of the Keras model, and
    of the same model in float64 (the pair loops run in float32, as Keras does). With a BatchNorm the float32 Keras model is itself only
    ~1e-4 from the float64 value (its centring cancels digits of the float32 sums); there the fast
    path is held to float64 only, and Keras to 1e-3 of it (the reference computes the same function)."""
    model, x = recipe_model(path, False, sim_dir, seed=zlib.crc32(os.path.basename(path).encode()) + 1)
    assert not isinstance(fastpath.plan(model), str), fastpath.plan(model)
    ref, exact, got = reference(model, x), float64_reference(model, x), predict(model, x)
    np.testing.assert_allclose(got, exact, rtol=1e-5, atol=1e-5 * np.abs(exact).max())
    batchnorm = any(isinstance(layer, MaskedBatchNorm) for layer in model.layers)
    tol = 1e-3 if batchnorm else 1e-5
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * np.abs(ref).max())


@pytest.mark.parametrize("extra", [
    {"beams": True, "aggregation": "mean", "channels": 3},
    {"beams": True, "alpha": True, "batchnorm": True, "channels": 2},
    {"quantization": {"input": "quantized_bits(10,7,alpha=1)", "invariants": "quantized_bits(16,12,alpha=1)"}},
    {"recipe": "l1_c2_16.yaml", "beams": True, "dropout": 0.05, "channels": 3},
    {"quantization": {"coefficients": "quantized_bits(16,2,alpha=1)"}, "float32": False},
])
def test_beams_mean_and_narrow_formats(extra, sim_dir):
    """Options no recipe sets: beam particles (p4 and l1), mean aggregation, a folded BatchNorm with
    beams, formats narrow enough for float32 invariants in Keras, coefficients too wide for the
    float32 pair loops (w x has 26 bits below the activation's LSB: float64); quantized bit for bit,
    float to 1e-5."""
    r = load_recipe([p for p in QUANTIZED if p.endswith(extra.get("recipe", "c2_8bit.yaml"))][0])
    rng = np.random.default_rng(7)
    cfg = r.to_model_config(quantized=True)
    cfg.update({k: v for k, v in extra.items() if k not in ("quantization", "recipe", "float32")}, n_constituents=24)
    cfg["quantization"].update(extra.get("quantization", {}))
    for quantized in (True, False):
        c = dict(cfg, quantization=cfg["quantization"] if quantized else {})
        model = (on_grids if quantized else float_weights)(build_model(c), rng)
        x = inputs(sim_dir, model, r.data.format, rng)
        assert fastpath.plan(model).float32 == (extra.get("float32", True) or not quantized)
        ref, got = reference(model, x), predict(model, x)
        if quantized:
            np.testing.assert_array_equal(got, ref)
        else:
            exact = float64_reference(model, x)
            np.testing.assert_allclose(got, exact, rtol=1e-5, atol=1e-5 * np.abs(exact).max())
            np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())


def test_weights_changed_after_the_first_call_are_used(sim_dir):
    """fit evaluates the model it trains: the plan is rebuilt when the weights change."""
    model, x = recipe_model([p for p in QUANTIZED if p.endswith("c2_8bit.yaml")][0], True, sim_dir, seed=3)
    first = predict(model, x)
    on_grids(model, np.random.default_rng(4))
    second = predict(model, x)
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(second, reference(model, x))
    assert predict(model, x[:0]).shape == (0,)
    with pytest.raises(ValueError, match="the model takes"):  # the kernel indexes its tables by n <= N
        predict(model, np.concatenate([x, x], axis=1))


def test_other_models_take_the_xla_path(sim_dir):
    """Full PELICAN is not a nanoPELICAN chain: plan says why, and predict is the XLA path."""
    model = build_model({"architecture": "pelican", "n_constituents": 16, "blocks": [3], "embedding": 3, "mlp": [4],
                         "scale": 1.0})
    float_weights(model, np.random.default_rng(5))
    why = fastpath.plan(model)
    assert isinstance(why, str) and "LinEq2to0" in why
    x = inputs(sim_dir, model, "p4", np.random.default_rng(6))
    np.testing.assert_array_equal(predict(model, x), xla_predict(model, x))


def test_float32_pair_loops_are_exact_at_full_width():
    """``fastpath.pair_loops_float32``'s claim where it is tight: 8-bit coefficients with every bit set,
    invariants up to 2^14 (w x has up to 26 significant bits, more than a float32 holds), the
    8-bit recipes' grids (activation LSB 1/2, aggregates 2^-6, coefficients and invariants 2^-5),
    half of the rows built so that the pre-activations land inside the activation's range, the
    others mostly far beyond it. The float32 and float64 pair loops give the same sums, bit for bit."""
    rng = np.random.default_rng(11)
    c, n, mpad, k, top = 3, 45, 48, 2.0, 255.0  # k: the activation's 2^F; sums in units of its LSB
    wk = (2 * rng.integers(-63, 64, (c, 1)) + 1) / 32 * k
    r = rng.integers(-2 ** 20, 2 ** 20, (c, n)) * 2.0 ** -11 * k
    col = np.full((c, mpad), -1e30)
    col[:, :n] = rng.integers(-2 ** 20, 2 ** 20, (c, n)) * 2.0 ** -11 * k
    dg = rng.integers(-2 ** 12, 2 ** 12, (c, n)) * 2.0 ** -11 * k
    x = rng.integers(-2 ** 19, 2 ** 19, (mpad, mpad)) / 32.0  # mostly far outside the range
    target = rng.uniform(-3.0, top + 3.0, (n, n))  # rows 0, 2, 4...: z near a target in the range
    near = np.round((target - r[0][:, None] - col[0, :n][None, :]) / wk[0, 0] * 32.0) / 32.0
    x[:n:2, :n] = np.clip(near, -2 ** 14, 2 ** 14)[::2]
    z = wk[0, 0] * x[:n, :n] + (r[0][:, None] + col[0, :n][None, :])
    assert ((z > 0.5) & (z < top - 0.5)).mean() > 0.3  # many pairs are rounded, not clipped
    r = np.concatenate([r, np.full((c, 3), -1e30)], axis=1)  # rows n..n+2: padding of the blocks of four rows
    out = {}
    for dt in (np.float64, np.float32):
        tot, tr = np.zeros(c), np.zeros(c)
        fastpath.hidden_sums(x.astype(dt), n, wk.astype(dt), r.astype(dt), col.astype(dt), dg, dt(top), True,
                             tot, tr, np.zeros(mpad, dt))
        out[dt] = (tot, tr)
    assert out[np.float32][0][0] > 0
    np.testing.assert_array_equal(out[np.float32][0], out[np.float64][0])
    np.testing.assert_array_equal(out[np.float32][1], out[np.float64][1])
