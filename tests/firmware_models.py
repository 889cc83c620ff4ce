"""Models shared by the firmware tests (hls4ml and RTL): small nanoPELICANs on their quantizer grids."""
import numpy as np

from qpelican.nn.models import build_model, randomize_on_grids

Q8 = {"input": "quantized_bits(8,3,alpha=1)", "invariants": "quantized_bits(8,4,alpha=1)",
      "coefficients": "quantized_bits(8,0,alpha=1)", "biases": "quantized_bits(8,0,alpha=1)",
      "activation": "quantized_relu(8,3)", "aggregates": "quantized_bits(8,3,alpha=1)",
      "output": "quantized_bits(12,4,alpha=1)"}
Q6 = {"input": "quantized_bits(6,0,alpha=1)", "invariants": "quantized_bits(6,3,alpha=1)",
      "coefficients": "quantized_bits(6,0,alpha=1)", "biases": "quantized_bits(6,1,alpha=1)",
      "activation": "quantized_relu(6,2)", "aggregates": "quantized_bits(6,2,alpha=1)",
      "output": "float"}


def nano(n, q, seed, **kw):
    """A nano model with random weights on the quantizer grids (and random alphas), so tests can fail."""
    model = build_model({"n_constituents": n, "channels": 2, "quantization": q, "nbar": 0.6 * n, **kw})
    return randomize_on_grids(model, seed, bias_scale=0.5)


def folded(n, q, seed, shift_seed, shifts=(8.0, 5.0), **kw):
    """A quantized nano model with its BatchNorms folded into the LinEq layers (``input_shift``): random
    weights on the grids and random shifts, uniform in [-shifts[0], shifts[0]] on the invariants (the
    input of lineq_2to2) and [-shifts[1], shifts[1]] on the hidden channels. Its bias tables over the
    multiplicity n then reach far beyond the bias format's range."""
    model = nano(n, q, seed, batchnorm=True, **kw)
    rng = np.random.default_rng(shift_seed)
    for name, scale in zip(("lineq_2to2", "lineq_2to0"), shifts):
        layer = model.get_layer(name)
        layer.shift.assign(rng.uniform(-scale, scale, layer.shift.shape).astype(np.float32))
    return model


def check_bias_tables(model, plan, factor=2.0):
    """The plan's bias tables are the Keras layers' (laid out [n][h]) and reach beyond ``factor`` times
    the bias format's range in both layers: firmware that saturated them, or kept Q_bias(beta), would differ."""
    for name in ("lineq_2to2", "lineq_2to0"):
        layer, lp = model.get_layer(name), plan["by_name"][name]
        assert lp.params["bias_tables"] and layer.input_shift
        tables = layer.bias_tables() if name == "lineq_2to2" else (layer.bias_table(),)
        for key, table in zip(("b", "bd"), tables):
            assert table.shape == (lp.n + 1, layer.channels)
            np.testing.assert_array_equal(lp.weights[key][0], table.numpy().reshape(-1))
        fmt = layer.bias_format
        assert np.abs(lp.weights["b"][0]).max() > factor * max(-fmt.min, fmt.max), (name, lp.weights["b"][0])
