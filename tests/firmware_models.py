"""Models shared by the firmware tests (hls4ml and RTL): small nanoPELICANs on their quantizer grids."""
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
