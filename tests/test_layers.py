"""Core layers against direct numpy implementations of docs/physics.md (2-5), and their symmetries."""
import numpy as np
import pytest

import qpelican  # noqa: F401  (selects tf-keras)
import tensorflow as tf
import tf_keras

from qpelican.core.errors import DataError, QpelicanError
from qpelican.nn.layers import LinEq2to0, LinEq2to2, LorentzInvariants, MaskedBatchNorm, MomentumInput
from qpelican.nn.layers.base import scale_table, table_frac_bits
from qpelican.nn.models import build_model, count_parameters, predict_logits, retie
from qpelican.nn.quant import fixed_format, get_quantizer, quantize

Q8 = {
    "input": "quantized_bits(16,7,alpha=1)",
    "invariants": "quantized_bits(16,9,alpha=1)",
    "coefficients": "quantized_bits(8,0,alpha=1)",
    "biases": "quantized_bits(8,2,alpha=1)",
    "activation": "quantized_relu(8,3)",
    "aggregates": "quantized_bits(12,4,alpha=1)",
    "output": "quantized_bits(16,6,alpha=1)",
}


def jets(rng, b=6, n=24, n_real=None, spread=60.0):
    """Random massless jets (B, n, 4) in GeV with a leading direction, zero-padded after n_real."""
    p = rng.normal(size=(b, n, 3)) * spread * 0.3
    p[..., 2] += spread * rng.exponential(size=(b, n))
    e = np.linalg.norm(p, axis=-1, keepdims=True)
    out = np.concatenate([e, p], -1).astype(np.float32)
    counts = n_real if n_real is not None else rng.integers(n // 3, n + 1, size=b)
    for k, c in enumerate(np.broadcast_to(counts, (b,))):
        out[k, c:] = 0
    return out


def randomise(model, rng, scale=0.5):
    """Non-trivial weights (biases and alphas included) so that tests can fail."""
    for w in model.weights:
        if "moving" in w.name:
            continue
        w.assign(rng.normal(size=w.shape).astype(np.float32) * (0.1 if "alpha" in w.name else scale))
    retie(model)  # tied slices (model.symmetric) stay tied


def minkowski(p):
    g = np.array([1, -1, -1, -1.0])
    return np.einsum("bid,bjd,d->bij", p, p, g)


def nano_numpy(x, m, kernel, bias, dbias, nbar, alpha=None, aggregation="sum", relu=True):
    """y_ij^h = act(sum_{c,b} w[c,h,b] A_b^c + beta_h + beta_diag_h delta_ij) m_ij (docs/physics.md)."""
    b_, n, _, c_in = x.shape
    nn = m.sum(1)
    s = x.sum(1)  # S_j = sum_k x_kj
    t = x.sum((1, 2))
    eye = np.eye(n)[None, :, :, None]
    norm = (1 / nbar) * np.ones(b_) if aggregation == "sum" else 1 / np.maximum(nn, 1)
    scale = np.ones((b_, 5, c_in)) if alpha is None else (np.maximum(nn, 1)[:, None, None] / nbar) ** alpha[None]
    a = [
        x,
        eye * (s * (norm[:, None, None] * scale[:, None, 0]))[:, None, :, :],
        (s * norm[:, None, None] * scale[:, None, 1])[:, None, :, :] * np.ones_like(x),
        (s * norm[:, None, None] * scale[:, None, 2])[:, :, None, :] * np.ones_like(x),
        (t * norm[:, None] ** 2 * scale[:, 3])[:, None, None, :] * np.ones_like(x),
        eye * (t * norm[:, None] ** 2 * scale[:, 4])[:, None, None, :],
    ]
    z = sum(np.einsum("bijc,ch->bijh", a[k], kernel[:, :, k]) for k in range(6)) + bias + eye * dbias
    y = np.maximum(z, 0) if relu else z
    return y * (m[:, :, None] * m[:, None, :])[..., None]


def full_numpy(x, m, kernel, bias, dbias, nbar):
    """The 15 linear equivariant ops of Maron et al., sum aggregation, written out one by one."""
    b_, n, _, c = x.shape
    one = np.ones_like(x)
    eye = np.eye(n)[None, :, :, None]
    dg = np.einsum("biic->bic", x)
    r = x.sum(2) / nbar  # R_i = sum_k x_ik
    s = x.sum(1) / nbar  # S_j = sum_k x_kj
    tr = dg.sum(1) / nbar
    tot = x.sum((1, 2)) / nbar**2
    ops = [
        x, np.swapaxes(x, 1, 2),
        eye * dg[:, :, None, :], dg[:, :, None, :] * one, dg[:, None, :, :] * one,
        eye * r[:, :, None, :], eye * s[:, :, None, :],
        r[:, :, None, :] * one, r[:, None, :, :] * one, s[:, :, None, :] * one, s[:, None, :, :] * one,
        eye * tr[:, None, None, :], tr[:, None, None, :] * one,
        eye * tot[:, None, None, :], tot[:, None, None, :] * one,
    ]
    z = sum(np.einsum("bijc,ch->bijh", ops[k], kernel[:, :, k]) for k in range(15)) + bias + eye * dbias
    return z * (m[:, :, None] * m[:, None, :])[..., None]


def apply(layer, *inputs):
    return layer([tf.constant(v, tf.float32) for v in inputs] if len(inputs) > 1 else tf.constant(inputs[0])).numpy()


def pair_input(rng, b=4, n=12, c=1, symmetric=True):
    m = (np.arange(n)[None, :] < rng.integers(3, n + 1, size=(b, 1))).astype(np.float32)
    x = rng.normal(size=(b, n, n, c)).astype(np.float32)
    if symmetric:
        x = x + np.swapaxes(x, 1, 2)
        x = x * (1 - np.eye(n))[None, :, :, None]
    return x * (m[:, :, None] * m[:, None, :])[..., None], m


# --- layers against numpy -------------------------------------------------------------------


def test_lorentz_invariants_match_minkowski_products():
    rng = np.random.default_rng(1)
    p4 = jets(rng)
    d = apply(LorentzInvariants(zero_diagonal=False), p4)[..., 0]
    np.testing.assert_allclose(d, minkowski(p4.astype(np.float64)), rtol=1e-5, atol=1e-2)
    d0 = apply(LorentzInvariants(), p4)[..., 0]
    assert np.all(np.diagonal(d0, axis1=1, axis2=2) == 0)
    # jet mass^2 = sum_ij d_ij (the diagonal is zero for massless constituents)
    m2 = (p4.sum(1)[:, 0] ** 2 - (p4.sum(1)[:, 1:] ** 2).sum(-1))
    np.testing.assert_allclose(d0.sum((1, 2)), m2, rtol=2e-3, atol=1.0)


@pytest.mark.parametrize("aggregation", ["sum", "mean"])
@pytest.mark.parametrize("alpha", [False, True])
def test_nano_lineq_matches_numpy(aggregation, alpha):
    rng = np.random.default_rng(2)
    x, m = pair_input(rng, c=2)
    layer = LinEq2to2(3, basis="nano", aggregation=aggregation, nbar=7.0, alpha=alpha, activation="relu")
    layer([tf.constant(x), tf.constant(m)])
    randomise(layer, rng)
    y = apply(layer, x, m)
    kernel, bias, dbias = (layer.kernel.numpy(), layer.bias.numpy(), layer.diag_bias_weight.numpy())
    a = layer.alphas.numpy() if alpha else None
    ref = nano_numpy(x.astype(np.float64), m, kernel, bias, dbias, 7.0, a, aggregation)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


def test_full_lineq_matches_numpy_on_general_input():
    rng = np.random.default_rng(3)
    x, m = pair_input(rng, c=2, symmetric=False)
    layer = LinEq2to2(3, basis="full", nbar=5.0)
    layer([tf.constant(x), tf.constant(m)])
    randomise(layer, rng)
    y = apply(layer, x, m)
    ref = full_numpy(x.astype(np.float64), m, layer.kernel.numpy(), layer.bias.numpy(),
                     layer.diag_bias_weight.numpy(), 5.0)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


def test_lineq_2to0_matches_numpy():
    rng = np.random.default_rng(4)
    x, m = pair_input(rng, c=3, symmetric=False)
    x = np.abs(x)
    layer = LinEq2to0(2, nbar=6.0, alpha=True)
    layer([tf.constant(x), tf.constant(m)])
    randomise(layer, rng)
    out = apply(layer, x, m)
    n = np.maximum(m.sum(1), 1)
    a = layer.alphas.numpy()[:, 0]
    u1 = x.sum((1, 2)) / 36.0 * ((n / 6.0) ** a[0])[:, None]
    u2 = np.einsum("biic->bc", x) / 6.0 * ((n / 6.0) ** a[1])[:, None]
    v = layer.kernel.numpy()
    ref = u1 @ v[:, 0, :] + u2 @ v[:, 1, :] + layer.bias.numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_masked_batchnorm_uses_real_entries_only():
    rng = np.random.default_rng(5)
    x, m = pair_input(rng, c=2)
    bn = MaskedBatchNorm(momentum=0.0)
    y = bn([tf.constant(x), tf.constant(m)], training=True).numpy()
    mask = (m[:, :, None] * m[:, None, :]).astype(bool)
    real = y[mask]
    np.testing.assert_allclose(real.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(real.std(0), 1, atol=1e-3)
    assert np.all(y[~mask] == 0)
    np.testing.assert_allclose(bn.moving_mean.numpy(), x[mask].mean(0), rtol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), x[mask].var(0), rtol=1e-4)
    # rank 3 (particles): statistics over real particles only
    xp = rng.normal(size=(m.shape[0], m.shape[1], 3)).astype(np.float32) + 2.0
    bn3 = MaskedBatchNorm(momentum=0.0)
    y3 = bn3([tf.constant(xp), tf.constant(m)], training=True).numpy()
    real3 = m.astype(bool)
    np.testing.assert_allclose(bn3.moving_mean.numpy(), xp[real3].mean(0), rtol=1e-5)
    np.testing.assert_allclose(y3[real3].std(0), 1, atol=1e-3)
    assert np.all(y3[~real3] == 0)


# --- symmetries ------------------------------------------------------------------------------


def boost_rotate(p4, rng):
    """The same random rotation and boost (beta ~ 0.6) applied to every constituent."""
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    lam = np.eye(4)
    lam[1:, 1:] = q
    beta = rng.normal(size=3)
    beta *= 0.6 / np.linalg.norm(beta)
    g = 1 / np.sqrt(1 - beta @ beta)
    boost = np.eye(4)
    boost[0, 0] = g
    boost[0, 1:] = boost[1:, 0] = g * beta
    boost[1:, 1:] += (g - 1) * np.outer(beta, beta) / (beta @ beta)
    out = np.einsum("ab,bc,njc->nja", boost, lam, p4.astype(np.float64))
    out[p4[..., 0] == 0] = 0
    return out.astype(np.float32)


@pytest.mark.parametrize("cfg", [{"channels": 2}, {"channels": 3, "alpha": True},
                                 {"architecture": "pelican", "blocks": [4], "embedding": 4, "mlp": [4]}])
def test_lorentz_invariance(cfg):
    rng = np.random.default_rng(6)
    model = build_model({"n_constituents": 20, "scale": 50.0, **cfg})
    randomise(model, rng, 0.3)
    p4 = jets(rng, b=8, n=20)
    a = model.predict(p4, verbose=0)
    b = model.predict(boost_rotate(p4, rng), verbose=0)
    np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-3 * np.abs(a).max())
    assert np.abs(a).max() > 1e-3  # the model is not trivially constant


@pytest.mark.parametrize("quantization", [None, Q8])
def test_permutation_equivariance_and_invariance(quantization):
    rng = np.random.default_rng(7)
    model = build_model({"n_constituents": 16, "channels": 2, "alpha": True, "quantization": quantization})
    randomise(model, rng, 0.3)
    p4 = jets(rng, b=5, n=16, n_real=16)
    perm = rng.permutation(16)
    hidden = tf_keras.Model(model.inputs, model.get_layer("lineq_2to2").output)
    h, hp = hidden.predict(p4, verbose=0), hidden.predict(p4[:, perm], verbose=0)
    np.testing.assert_allclose(hp, h[:, perm][:, :, perm], rtol=1e-5, atol=1e-5)
    out, outp = model.predict(p4, verbose=0), model.predict(p4[:, perm], verbose=0)
    if quantization:  # exact sums: bit-identical under permutation
        np.testing.assert_array_equal(out, outp)
        assert np.abs(h).max() > 0
    else:
        np.testing.assert_allclose(out, outp, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("quantization", [None, Q8])
def test_padding_invariance(quantization):
    rng = np.random.default_rng(8)
    cfg = {"channels": 2, "alpha": True, "quantization": quantization}
    small = build_model({"n_constituents": 20, **cfg})
    randomise(small, rng, 0.3)
    large = build_model({"n_constituents": 33, **cfg})
    large.set_weights(small.get_weights())
    p4 = jets(rng, b=6, n=20)
    padded = np.concatenate([p4, np.zeros((6, 13, 4), np.float32)], axis=1)
    a, b = small.predict(p4, verbose=0), large.predict(padded, verbose=0)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    if quantization:
        np.testing.assert_array_equal(a, b)
    # zero-momentum particles placed between real ones change nothing either
    shuffled = padded[:, rng.permutation(33)]
    np.testing.assert_allclose(large.predict(shuffled, verbose=0), b, rtol=1e-5, atol=1e-6)


# --- parameter counts (paper Tables 1 and 2) ------------------------------------------------


@pytest.mark.parametrize("c,expected,expected_alpha", [(1, 11, 18), (2, 21, 28), (3, 31, 38), (10, 101, 108)])
def test_parameter_counts(c, expected, expected_alpha):
    assert count_parameters(build_model({"channels": c})) == expected
    assert count_parameters(build_model({"channels": c, "alpha": True}), alpha=True) == expected_alpha
    with_bn = build_model({"channels": c, "batchnorm": True, "dropout": 0.05})
    assert count_parameters(with_bn) == expected
    assert count_parameters(with_bn, batchnorm=True) == expected + 2 + 2 * c
    # symmetric: the S_i and S_j ops share one coefficient per channel and one alpha
    assert count_parameters(build_model({"channels": c, "symmetric": True})) == expected - c
    assert count_parameters(build_model({"channels": c, "alpha": True, "symmetric": True}), alpha=True) == \
        expected_alpha - c - 1


def test_symmetric_layer_stays_tied_and_symmetric():
    """model.symmetric: the tied coefficients and alphas stay equal through training (float and
    QAT), and the quantized hidden array is exactly symmetric, h_ij = h_ji."""
    rng = np.random.default_rng(3)
    p4 = jets(rng, b=64, n=12, n_real=np.r_[np.full(32, 12), rng.integers(3, 12, 32)])
    y = rng.integers(0, 2, (64, 1)).astype(np.float32)
    for q in (None, Q8):
        model = build_model({"n_constituents": 12, "nbar": 8, "channels": 3, "alpha": True, "symmetric": True,
                             "quantization": q})
        model.compile(optimizer=tf_keras.optimizers.Adam(0.05), jit_compile=True,
                      loss=tf_keras.losses.BinaryCrossentropy(from_logits=True))
        layer = model.get_layer("lineq_2to2")
        before = layer.kernel.numpy().copy()
        model.fit(p4, y, epochs=3, batch_size=16, verbose=0)
        k, a = layer.kernel.numpy(), layer.alphas.numpy()
        assert not np.array_equal(k, before) and np.any(a != 0), "training moved nothing: the test cannot fail"
        np.testing.assert_array_equal(k[..., 2], k[..., 3])
        np.testing.assert_array_equal(a[1], a[2])
        h = tf_keras.Model(model.inputs, layer.output)(p4).numpy()
        if q is not None:
            np.testing.assert_array_equal(h, h.transpose(0, 2, 1, 3))
        else:
            np.testing.assert_allclose(h, h.transpose(0, 2, 1, 3), atol=1e-5)
    with pytest.raises(QpelicanError, match="symmetric"):
        build_model({"architecture": "pelican", "symmetric": True})


# --- quantization ----------------------------------------------------------------------------


@pytest.mark.parametrize("qstr", ["quantized_bits(8,0,alpha=1)", "quantized_bits(6,2,alpha=1)",
                                  "quantized_bits(4,0,alpha=1)", "quantized_relu(8,3)", "quantized_relu(5,1)"])
def test_quantize_matches_qkeras_exactly(qstr):
    rng = np.random.default_rng(9)
    q = get_quantizer(qstr)
    fmt = fixed_format(q)
    x = np.concatenate([rng.normal(size=4000) * 2 ** fmt.integer,
                        (np.arange(-300, 300) + 0.5) * fmt.lsb]).astype(np.float32)  # exact ties too
    ours = quantize(tf.constant(x), q).numpy()
    np.testing.assert_array_equal(ours, q(tf.constant(x)).numpy())
    ours64 = quantize(tf.constant(x, tf.float64), q).numpy()
    np.testing.assert_array_equal(ours64.astype(np.float32), ours)


def assert_on_grid(values, qstr):
    fmt = fixed_format(qstr)
    v = np.asarray(values, np.float64)
    k = v / fmt.lsb
    np.testing.assert_array_equal(k, np.round(k))
    assert v.min() >= fmt.min and v.max() <= fmt.max


def test_quantized_weights_and_outputs_on_grid():
    rng = np.random.default_rng(10)
    model = build_model({"n_constituents": 24, "channels": 3, "alpha": True, "quantization": Q8})
    randomise(model, rng, 0.7)
    p4 = jets(rng, b=16, n=24)
    l22, l20 = model.get_layer("lineq_2to2"), model.get_layer("lineq_2to0")
    for layer in (l22, l20):
        assert_on_grid(layer.q("coefficient", layer.kernel).numpy(), Q8["coefficients"])
        assert_on_grid(layer.q("bias", layer.bias).numpy(), Q8["biases"])
    names = ["momentum_input", "invariants", "lineq_2to2", "lineq_2to0"]
    outs = tf_keras.Model(model.inputs, [model.get_layer(n).output for n in names]).predict(p4, verbose=0)
    for out, key in zip(outs, ["input", "invariants", "activation", "output"]):
        assert_on_grid(out, Q8[key])
    assert np.count_nonzero(outs[2]) > 0 and np.unique(outs[3]).size > 3
    # the normaliser table holds table_bits-bit integers times a power of two
    table = l22.scale_table().numpy()
    frac = table_frac_bits(table, l22.table_bits)
    ints = table * 2.0 ** frac[None]
    np.testing.assert_array_equal(ints, np.round(ints))
    assert ints.max() < 2 ** l22.table_bits


def test_negative_alpha_keeps_full_jets_in_the_quantized_table():
    """Trained exponents can be strongly negative (t(n) ~ (n/Nbar)^-6.7 was seen after 120 epochs on
    MPI jets): the table entry of a full jet must keep W/2 significant bits, not round to 0."""
    w = 18
    alpha = tf.constant([[-6.65], [-6.0]], tf.float64)
    exact, table = (scale_table(16, 16.0, [2, 1], "sum", alpha, bits)[:, :, 0].numpy() for bits in (None, w))
    assert np.all(np.abs(table[16] / exact[16] - 1) < 2.0 ** -(w // 2 - 1))
    assert np.all(table[1] < exact[1])  # n = 1 saturates at the table's top
    frac = table_frac_bits(table, w)
    np.testing.assert_array_equal(table * 2.0 ** frac, np.round(table * 2.0 ** frac))
    assert np.all(table * 2.0 ** frac < 2 ** w)
    # a quantized layer with these exponents still sees full jets
    model = build_model({"n_constituents": 16, "nbar": 16.0, "channels": 2, "alpha": True, "quantization": Q8})
    randomise(model, np.random.default_rng(3), 0.7)
    model.get_layer("lineq_2to0").alphas.assign(alpha.numpy().astype(np.float32))
    out = predict_logits(model, jets(np.random.default_rng(4), b=64, n=16))
    assert np.unique(out).size > 10


def test_quantized_sums_are_exact_against_float64_reference():
    """The quantized nano layer equals a float64 numpy evaluation of the same rounding steps."""
    rng = np.random.default_rng(11)
    x, m = pair_input(rng, b=8, n=20, c=1)
    x = np.round(np.abs(x) * 64) / 64
    layer = LinEq2to2(2, basis="nano", nbar=7.0, activation="relu", coefficient_quantizer=Q8["coefficients"],
                      bias_quantizer=Q8["biases"], aggregate_quantizer=Q8["aggregates"], output_quantizer=Q8["activation"])
    layer([tf.constant(x), tf.constant(m)])
    randomise(layer, rng, 0.5)
    y = apply(layer, x, m)

    def qz(v, key):
        f = fixed_format(Q8[key])
        return np.clip(np.round(v / f.lsb) * f.lsb, f.min, f.max)

    x64 = x.astype(np.float64)
    t = layer.scale_table().numpy()  # (N+1, 5, 1)
    n = m.sum(1).astype(int)
    s, tot = x64.sum(1)[..., 0], x64.sum((1, 2))[..., 0]
    agg = [qz(s * t[n, k, 0][:, None], "aggregates") for k in range(3)] + \
          [qz(tot * t[n, k, 0], "aggregates") for k in (3, 4)]
    c = qz(layer.kernel.numpy().astype(np.float64), "coefficients")[0]  # (H, 6)
    bias, dbias = qz(layer.bias.numpy(), "biases"), qz(layer.diag_bias_weight.numpy(), "biases")
    eye = np.eye(20)[None, :, :, None]
    z = (x64 * c[:, 0] + eye * agg[0][:, :, None, None] * c[:, 1] + agg[1][:, None, :, None] * c[:, 2]
         + agg[2][:, :, None, None] * c[:, 3] + agg[3][:, None, None, None] * c[:, 4]
         + eye * agg[4][:, None, None, None] * c[:, 5] + bias + eye * dbias)
    ref = qz(np.maximum(z, 0), "activation") * (m[:, :, None] * m[:, None, :])[..., None]
    np.testing.assert_array_equal(y, ref.astype(np.float32))


# --- serialisation and bad input -------------------------------------------------------------


@pytest.mark.parametrize("cfg", [{"channels": 2, "alpha": True, "quantization": Q8},
                                 {"channels": 3, "alpha": True, "symmetric": True, "quantization": Q8},
                                 {"channels": 2, "batchnorm": True, "dropout": 0.1},
                                 {"architecture": "pelican", "blocks": [4], "embedding": 4, "mlp": [4]}])
def test_save_load_round_trip(tmp_path, cfg):
    rng = np.random.default_rng(12)
    model = build_model({"n_constituents": 16, **cfg})
    randomise(model, rng, 0.3)
    p4 = jets(rng, b=8, n=16)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = tf_keras.models.load_model(path, custom_objects=qpelican.custom_objects(), compile=False)
    np.testing.assert_array_equal(model.predict(p4, verbose=0), loaded.predict(p4, verbose=0))
    for layer in model.layers:
        assert layer.get_config() == loaded.get_layer(layer.name).get_config()


def test_wrong_input_layout_fails_at_build():
    with pytest.raises(QpelicanError, match=r"\(B, N, 4\)"):
        MomentumInput()(tf_keras.Input(shape=(30, 3)))
    with pytest.raises(QpelicanError, match=r"\(B, N, 4\)"):
        LorentzInvariants()(tf_keras.Input(shape=(30,)))


def test_prediction_helper_rejects_bad_momenta():
    rng = np.random.default_rng(13)
    model = build_model({"n_constituents": 12})
    p4 = jets(rng, b=3, n=12)
    bad = p4.copy()
    bad[1, 2, 3] = np.nan
    with pytest.raises(DataError, match="NaN or inf"):
        predict_logits(model, bad)
    neg = p4.copy()
    neg[0, 0, 0] = -1
    with pytest.raises(DataError, match="negative energy"):
        predict_logits(model, neg)
    with pytest.raises(DataError, match="model takes N=12"):
        predict_logits(model, jets(rng, b=2, n=20))
    assert predict_logits(model, p4[:, :7]).shape == (3,)  # fewer constituents are zero-padded


def test_bad_quantizer_and_unknown_keys():
    with pytest.raises(QpelicanError, match="cannot parse quantizer"):
        build_model({"quantization": {"coefficients": "quantized_bitz(8,0)"}})
    with pytest.raises(QpelicanError, match="alpha"):
        build_model({"quantization": {"coefficients": "quantized_bits(8,0,alpha='auto')"}})
    with pytest.raises(QpelicanError, match="unknown model key"):
        build_model({"chanels": 2})


def test_import_after_keras3_tensorflow_is_a_clear_error():
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    code = "import tensorflow, keras\nimport qpelican"
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert res.returncode != 0
    assert "TF_USE_LEGACY_KERAS=1" in res.stderr


@pytest.mark.parametrize("channels", [1, 2, 3])
def test_pair_dropout_rate_scale_and_determinism(channels):
    """PairDropout drops round(rate * 2^16) / 2^16 of the entries (every channel, odd C included),
    rescales the rest so the mean is kept, is the identity at inference, and repeats its masks
    after a reseed (what --resume relies on)."""
    from qpelican.nn.layers import PairDropout

    tf_keras.backend.experimental.enable_tf_random_generator()
    layer = PairDropout(0.2)
    x = tf.ones((64, 40, 40, channels))
    tf_keras.utils.set_random_seed(3)
    y = layer(x, training=True).numpy()
    keep = 1.0 - round(0.2 * 65536) / 65536
    for c in range(channels):
        frac = (y[..., c] == 0).mean()  # 102,400 entries: std of the fraction ~0.0013
        assert abs(frac - 0.2) < 0.006, (c, frac)
    assert np.allclose(np.unique(y), [0.0, 1.0 / keep])
    assert not np.array_equal(y[..., 0], y[..., -1]) or channels == 1
    np.testing.assert_array_equal(layer(x, training=False).numpy(), x.numpy())
    layer._random_generator._generator.reset_from_seed(11)
    a = layer(x, training=True).numpy()
    layer._random_generator._generator.reset_from_seed(11)
    np.testing.assert_array_equal(layer(x, training=True).numpy(), a)
    assert PairDropout.from_config(layer.get_config()).threshold == layer.threshold
    model = build_model({"channels": 2, "dropout": 0.05})
    assert sum(isinstance(lay, PairDropout) for lay in model.layers) == 2
