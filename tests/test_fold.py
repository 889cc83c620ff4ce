"""BatchNorm folded into the fixed-point nanoPELICAN: the input shift's bias tables, the fold of a
float model's masked BatchNorms, and a quantized recipe with batchnorm trained end to end."""
import json

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
import yaml

from qpelican.cli.main import main
from qpelican.config.recipe import recipe_from_dict
from qpelican.core.errors import RecipeError
from qpelican.nn import layers as qlayers
from qpelican.nn.fold import fold_batchnorm, transfer_weights
from qpelican.nn.layers import LinEq2to0, LinEq2to2
from qpelican.nn.models import build_model, count_parameters, predict
from qpelican.nn.serialize import load_model

Q8 = {"input": "quantized_bits(18,12,alpha=1)", "invariants": "quantized_bits(20,14,alpha=1)",
      "coefficients": "quantized_bits(8,2,alpha=1)", "biases": "quantized_bits(8,3,alpha=1)",
      "activation": "quantized_relu(8,7)", "aggregates": "quantized_bits(16,9,alpha=1)",
      "output": "quantized_bits(16,6,alpha=1)"}
N = 10


def _pairs(rng, batch=64, n=N, channels=1):
    """Symmetric pair arrays with zero diagonal on real particles, and masks of 3..n particles."""
    mult = rng.integers(3, n + 1, batch)
    m = (np.arange(n)[None, :] < mult[:, None]).astype(np.float32)
    x = rng.uniform(0, 40, (batch, n, n, channels)).astype(np.float32)
    x = (x + x.transpose(0, 2, 1, 3)) * (1 - np.eye(n, dtype=np.float32))[None, :, :, None]
    return x * (m[:, :, None] * m[:, None, :])[..., None], m


def _layer_pair(cls, channels, **kw):
    """(layer with input_shift, the same layer without) sharing weights; the shift set at random."""
    a, b = cls(channels, input_shift=True, alpha=True, nbar=8, **kw), cls(channels, alpha=True, nbar=8, **kw)
    return a, b


@pytest.mark.parametrize("cls,c_in,h", [(LinEq2to2, 2, 3), (LinEq2to0, 3, 2)])
def test_input_shift_is_a_shift_of_every_real_entry(cls, c_in, h):
    """The defining equation: layer(x; shift s) = layer(x + s on every real entry, diagonal included)."""
    rng = np.random.default_rng(1)
    x, m = _pairs(rng, channels=c_in)
    a, b = _layer_pair(cls, h, activation="relu" if cls is LinEq2to2 else None)
    a([x, m]), b([x, m])
    for w in a.weights:
        w.assign(rng.normal(0, 0.5, w.shape))
    b.set_weights([w.numpy() for w in a.weights if "shift" not in w.name])
    s = a.shift.numpy()
    shifted = x + s[None, None, None, :] * (m[:, :, None] * m[:, None, :])[..., None]
    np.testing.assert_allclose(a([x, m]).numpy(), b([shifted, m]).numpy(), rtol=2e-5, atol=2e-4)


def test_quantized_bias_tables_on_the_bias_step_beyond_its_range():
    layer = LinEq2to2(2, input_shift=True, alpha=True, nbar=8, activation="relu", coefficient_quantizer="quantized_bits(8,2,alpha=1)",
                      bias_quantizer="quantized_bits(8,3,alpha=1)", aggregate_quantizer="quantized_bits(16,9,alpha=1)",
                      output_quantizer="quantized_relu(8,7)")
    x, m = _pairs(np.random.default_rng(2))
    layer([x, m])
    layer.kernel.assign(np.full(layer.kernel.shape, 0.75, np.float32))
    layer.shift.assign([-300.0])
    for t in layer.bias_tables():
        t = t.numpy()
        assert t.shape == (N + 1, 2)
        np.testing.assert_array_equal(t * 16, np.round(t * 16))  # the bias LSB: 2^-4
    assert np.abs(layer.bias_tables()[0].numpy()).max() > 8  # not saturated to the bias range
    cfg = layer.get_config()
    assert cfg["input_shift"] is True and LinEq2to2.from_config(cfg).input_shift


def _float_bn_model(rng, p4):
    """A float alpha nanoPELICAN with BatchNorm, its statistics learned from ``p4`` in training mode."""
    f = build_model({"n_constituents": N, "nbar": N, "alpha": True, "batchnorm": True, "scale": 1.0})
    for w in f.trainable_weights:
        w.assign(rng.normal(0, 0.6, w.shape) if "alpha" not in w.name else rng.uniform(-1, 1, w.shape))
    for _ in range(40):  # moving averages (momentum 0.9) converge to the batch statistics
        f(p4, training=True)
    return f


def _jets(rng, n_jets=600):
    p = rng.exponential(3.0, (n_jets, N, 3)).astype(np.float32) * rng.choice([-1, 1], (n_jets, N, 3))
    p4 = np.concatenate([np.linalg.norm(p, axis=-1, keepdims=True), p], -1)
    p4[np.arange(N)[None, :] >= rng.integers(4, N + 1, n_jets)[:, None]] = 0
    return p4


def test_fold_reproduces_the_batchnorm_model():
    """Folded (scale into coefficients, shift into the n tables, hidden rescaled) the float model is
    unchanged to float rounding; its 8-bit twin follows it closely from the first step of QAT."""
    rng = np.random.default_rng(3)
    p4 = _jets(rng)
    f = _float_bn_model(rng, p4)
    q = build_model({"n_constituents": N, "nbar": N, "alpha": True, "batchnorm": True, "scale": 1.0, "quantization": Q8})
    assert not any(isinstance(layer, qlayers.MaskedBatchNorm) for layer in q.layers)
    transfer_weights(f, q, p4[:300])
    assert np.all(q.get_layer("lineq_2to2").shift.numpy() != 0)
    twin_cfg = q.get_config()
    for layer in twin_cfg["layers"]:
        for k in layer["config"]:
            if k.endswith("_quantizer"):
                layer["config"][k] = None
    twin = tf_keras.Model.from_config(twin_cfg, custom_objects={c.__name__: c for c in vars(qlayers).values()
                                                                if isinstance(c, type)})
    twin.set_weights(q.get_weights())
    ref, folded, quant = predict(f, p4), predict(twin, p4), predict(q, p4)
    np.testing.assert_allclose(folded, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    assert np.corrcoef(ref, quant)[0, 1] > 0.95
    assert count_parameters(q) == count_parameters(f)  # folded shifts count as BatchNorm, not parameters


@pytest.mark.parametrize("n_q", [6, 14])
def test_fold_into_another_n(n_q):
    """tune folds the shared float pre-training (one N) into trials of another N: the weights carry
    over (they do not depend on N). Into a smaller N the fold equals that of the float model rebuilt
    at that N (the activations are sampled on the same particles); into a larger one (the samples cut
    to the float model's N) the folded model follows the float model at N'."""
    rng = np.random.default_rng(5)
    p4 = _jets(rng)
    f = _float_bn_model(rng, p4)
    x = np.zeros((len(p4), n_q, 4), np.float32)
    x[:, :min(N, n_q)] = p4[:, :n_q]
    cfg = {"n_constituents": n_q, "nbar": N, "alpha": True, "batchnorm": True, "scale": 1.0}
    f_n = build_model(cfg)
    f_n.set_weights(f.get_weights())
    q, q_n = build_model(dict(cfg, quantization=Q8)), build_model(dict(cfg, quantization=Q8))
    transfer_weights(f, q, x[:300])
    transfer_weights(f_n, q_n, x[:300])
    if n_q < N:
        assert all(np.array_equal(a, b) for a, b in zip(q.get_weights(), q_n.get_weights()))
    else:
        assert np.corrcoef(predict(f_n, x), predict(q, x))[0, 1] > 0.95


def test_fold_refuses_a_model_without_input_shift():
    rng = np.random.default_rng(4)
    p4 = _jets(rng, 50)
    f = _float_bn_model(rng, p4)
    q = build_model({"n_constituents": N, "nbar": N, "alpha": True, "quantization": Q8})
    with pytest.raises(Exception, match="input_shift"):
        fold_batchnorm(f, q, p4)


@pytest.mark.parametrize("over,match", [
    ({"model": {"architecture": "pelican"}}, "only nanoPELICAN"),
    ({"training": {"qat": "from_scratch"}}, "qat: finetune"),
])
def test_recipe_refuses_unfoldable_batchnorm(over, match):
    d = {"model": {"batchnorm": True}, "quantization": Q8, "training": {"qat": "finetune", "pretrain_epochs": 1}}
    for k, v in over.items():
        d[k].update(v)
    with pytest.raises(RecipeError, match=match):
        recipe_from_dict(d)


def test_quantized_batchnorm_recipe_trains_and_folds(tmp_path, sim_dir, capsys):
    """fit: float epochs with BatchNorm, folded at the change to QAT; the saved model has no
    BatchNorm layer, its shifts are the fold's, and it scores what the run reports."""
    d = {"data": {"path": str(sim_dir), "n_constituents": 16},
         "model": {"channels": 2, "nbar": 16, "alpha": True, "batchnorm": True, "scale": 1.0},
         "quantization": Q8,
         "training": {"epochs": 1, "pretrain_epochs": 2, "qat": "finetune", "batch_size": 128}}
    recipe = tmp_path / "bn.yaml"
    recipe.write_text(yaml.safe_dump(d))
    run = tmp_path / "run"
    try:
        main(["fit", str(recipe), "--out", str(run)])
    except SystemExit as exc:
        pytest.fail(f"fit exited {exc.code}: {capsys.readouterr().err[-2000:]}")
    model = load_model(run / "model.keras")
    assert not any(isinstance(layer, qlayers.MaskedBatchNorm) for layer in model.layers)
    assert all(np.any(model.get_layer(n).shift.numpy() != 0) for n in ("lineq_2to2", "lineq_2to0"))
    res = json.loads((run / "results.json").read_text())
    hist = json.loads((run / "seeds" / "0" / "history.json").read_text())
    assert [h["phase"] for h in hist] == ["float", "float", "qat"]
    assert 0.6 < res["auc"] <= 1.0 and hist[-1]["val_auc"] > 0.6  # not a dead (constant) fixed-point model
    assert tf.reduce_all(tf.math.is_finite(model.get_layer("lineq_2to0").bias_table())).numpy()
