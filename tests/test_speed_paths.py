"""The fast paths against straightforward reference implementations: the XLA inference function
(bit for bit on quantized models), the recomputing gradient of the hidden array, the hashed pair
dropout (its mask, its gradient, its determinism)."""
import numpy as np
import pytest

import qpelican  # noqa: F401  (selects tf-keras)
import tensorflow as tf
import tf_keras

from qpelican.nn.compat import layer_generator
from qpelican.nn.layers import PairDropout
from qpelican.nn.layers.dropout import keep_mask
from qpelican.nn.layers.lineq import relu_pair_map
from qpelican.nn.models import build_model, predict, xla_predict
from qpelican.nn.quant import quantize
from qpelican.core.formats import parse_format

Q8 = {"input": "quantized_bits(18,12,alpha=1)", "invariants": "quantized_bits(20,14,alpha=1)",
      "coefficients": "quantized_bits(8,2,alpha=1)", "biases": "quantized_bits(8,3,alpha=1)",
      "activation": "quantized_relu(8,7)", "aggregates": "quantized_bits(16,9,alpha=1)",
      "output": "quantized_bits(16,6,alpha=1)"}  # recipes/c2_8bit.yaml: float64 pair sums


def jets(rng, b, n):
    p = rng.exponential(10.0, size=(b, n, 3)) * rng.choice([-1, 1], size=(b, n, 3))
    p4 = np.concatenate([np.linalg.norm(p, axis=-1, keepdims=True), p], -1).astype(np.float32)
    p4[np.arange(n)[None, :] >= rng.integers(1, n + 1, size=b)[:, None]] = 0
    return p4


def randomise(model, rng, scale=0.5):
    for w in model.weights:
        x = rng.normal(size=w.shape).astype(np.float32) * (0.05 if "alpha" in w.name else scale)
        w.assign(np.abs(x) + 0.5 if "moving_variance" in w.name else x)  # a variance is positive


@pytest.mark.parametrize("cfg", [
    {"channels": 2, "quantization": Q8},
    {"channels": 3, "alpha": True, "quantization": Q8},
    {"channels": 2, "alpha": True, "aggregation": "mean", "quantization": {**Q8, "input": "quantized_bits(10,7,alpha=1)",
                                                                         "invariants": "quantized_bits(16,12,alpha=1)"}},
    {"channels": 2},
    {"channels": 2, "alpha": True, "batchnorm": True, "dropout": 0.05},
    {"architecture": "pelican", "blocks": [3], "embedding": 3, "mlp": [4]},
])
@pytest.mark.parametrize("path", [xla_predict, predict])
def test_predict_paths_equal_the_eager_model(cfg, path):
    """xla_predict (padded last batch) and predict (the fused fast path for nano models) == the
    model run op by op: bit for bit when quantized, 1e-5 relative in float."""
    rng = np.random.default_rng(0)
    model = build_model({"n_constituents": 40, **cfg})
    randomise(model, rng, 0.3)
    p4 = jets(rng, 300, 40)
    ref = np.concatenate([model(tf.constant(p4[a:a + 64]), training=False).numpy().reshape(-1)
                          for a in range(0, len(p4), 64)])
    got = path(model, p4, batch_size=128)  # 128, 128 and a 44-jet batch (XLA: padded to 64)
    assert got.shape == (300,) and np.count_nonzero(got) > 0 and np.isfinite(got).all()
    if "quantization" in cfg:
        np.testing.assert_array_equal(got, ref)
    else:
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    assert path(model, p4[:0]).shape == (0,)


def reference_hidden(x, w, r, c, d, m, fmt):
    """The hidden array written out with plain autodiff ops, channels last."""
    n = x.shape[1]
    z = (tf.einsum("bijc,ch->bijh", x, w) + r[:, :, None, :] + c[:, None, :, :]
         + tf.eye(n)[None, :, :, None] * d[:, :, None, :])
    return quantize(tf.nn.relu(z), fmt) * (m[:, :, None] * m[:, None, :])[..., None]


@pytest.mark.parametrize("c_in, q", [(1, "quantized_relu(8,3)"), (2, "quantized_relu(6,2)"), (1, None)])
def test_recomputing_gradient_equals_autodiff(c_in, q):
    """relu_pair_map: same forward values as the reference (bit for bit), same gradients to float
    tolerance for every input, saturation and padding included."""
    rng = np.random.default_rng(1)
    b, n, h = 5, 12, 3
    fmt = parse_format(q)
    m = tf.constant((np.arange(n)[None] < rng.integers(2, n + 1, (b, 1))).astype(np.float32))
    x = tf.constant(rng.normal(size=(b, n, n, c_in)).astype(np.float32) * 4)
    w = tf.constant(rng.normal(size=(c_in, h)).astype(np.float32))
    r, c, d = (tf.constant(rng.normal(size=(b, n, h)).astype(np.float32) * 3) for _ in range(3))
    up = tf.constant(rng.normal(size=(b, n, n, h)).astype(np.float32))  # an arbitrary upstream gradient
    grads = []
    for fn in (lambda *a: relu_pair_map(*a, training=True), reference_hidden):
        with tf.GradientTape() as tape:
            tape.watch([x, w, r, c, d])
            y = fn(x, w, r, c, d, m, fmt)
            loss = tf.reduce_sum(y * up)
        grads.append((y.numpy(), [g.numpy() for g in tape.gradient(loss, [x, w, r, c, d])]))
    (y_fast, g_fast), (y_ref, g_ref) = grads
    np.testing.assert_array_equal(y_fast, y_ref)
    np.testing.assert_array_equal(relu_pair_map(x, w, r, c, d, m, fmt).numpy(), y_ref)
    if fmt is not None:
        assert (y_ref == fmt.max).any(), "test data should saturate somewhere"
    for a, e in zip(g_fast, g_ref):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5 * np.abs(e).max())


@pytest.mark.parametrize("cfg", [{"channels": 2, "quantization": Q8}, {"channels": 2, "alpha": True}])
def test_training_step_gradients_equal_autodiff_of_the_plain_graph(cfg):
    """The whole model's trainable-weight gradients in training mode, fast layers vs the same model
    with the hidden array computed by the reference ops (monkeypatched)."""
    import qpelican.nn.layers.lineq as lineq

    rng = np.random.default_rng(2)
    model = build_model({"n_constituents": 24, **cfg})
    randomise(model, rng, 0.3)
    p4 = tf.constant(jets(rng, 32, 24))
    y = tf.constant(rng.integers(0, 2, (32, 1)).astype(np.float32))
    loss_fn = tf_keras.losses.BinaryCrossentropy(from_logits=True)

    def grads():
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(p4, training=True))
        return [g.numpy() for g in tape.gradient(loss, model.trainable_variables)]

    fast = grads()
    orig = lineq.relu_pair_map
    lineq.relu_pair_map = lambda x, w, r, c, d, m, fmt, training=False: reference_hidden(x, w, r, c, d, m, fmt)
    try:
        ref = grads()
    finally:
        lineq.relu_pair_map = orig
    for a, e in zip(fast, ref):
        np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-5 * max(np.abs(e).max(), 1e-6))


def test_hashed_dropout_mask_and_gradient():
    """keep_mask is a pure function of (seeds, shape): independent of batch composition, about the
    rate dropped per jet and per channel, the gradient is the same mask times the scale."""
    seeds = tf.constant([1, 2, 3, -7], tf.int32)
    shape = (4, 30, 30, 2)
    k = keep_mask(seeds, shape, round(0.05 * 65536)).numpy()
    np.testing.assert_array_equal(k[1:3], keep_mask(seeds[1:3], (2, 30, 30, 2), round(0.05 * 65536)).numpy())
    assert set(np.unique(k)) == {0.0, 1.0}
    assert abs((1 - k).mean() - 0.05) < 0.01
    assert not np.array_equal(k[0], k[1]) and not np.array_equal(k[..., 0], k[..., 1])
    tf_keras.backend.experimental.enable_tf_random_generator()
    layer = PairDropout(0.25)
    x = tf.constant(np.random.default_rng(3).normal(size=shape).astype(np.float32))
    layer_generator(layer).reset_from_seed(5)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
    g = tape.gradient(y, x).numpy()
    scale = 65536 / (65536 - layer.threshold)
    np.testing.assert_array_equal(g, (y.numpy() != 0) * np.float32(scale))
    np.testing.assert_allclose(y.numpy(), x.numpy() * (g != 0) * scale, rtol=1e-6)
