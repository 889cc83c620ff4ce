"""The hardware cost model against hand-counted values."""
import qpelican  # noqa: F401
from qpelican.hw.cost import format_cost, model_cost
from qpelican.nn.models import build_model

Q8 = {k: "quantized_bits(8,2,alpha=1)" for k in ("input", "invariants", "coefficients", "biases", "aggregates", "output")}
Q8["activation"] = "quantized_relu(8,3)"


def test_nano_cost_hand_counted():
    """nanoPELICAN C=1, N=4, 8-bit everywhere, 18-bit normaliser table, no alpha."""
    cost = model_cost(build_model({"n_constituents": 4, "channels": 1, "quantization": Q8}))
    # Lorentz: 6 pairs x 4 products of 8x8, 6 x 3 additions of 18 bits
    lorentz = 6 * 4 * 64 + 6 * 3 * 18
    # sums: S_j 4 x 2 additions of 8+2 bits, T 3 additions of 8+4 bits
    sums = 8 * 10 + 3 * 12
    # one aggregate vector (4 products 10x18) and one scalar (12x18)
    aggregates = 4 * 10 * 18 + 12 * 18
    # c1 d_ij on 6 pairs, 14 coefficient products (3 per particle + 2), all 8x8
    products = 6 * 64 + 14 * 64
    # z width 8+8 + 3 carry bits = 19: 16 row/col/diag additions, 2*4*3 + 2*4 pair additions
    z_adds = 16 * 19 + 32 * 19
    # readout: 15 additions of 12 bits, 3 of 10, 2 products 12x18, 2 products 8x8, 2 additions of 18
    readout = 15 * 12 + 3 * 10 + 2 * 12 * 18 + 2 * 64 + 2 * 18
    assert cost["bops"] == lorentz + sums + aggregates + products + z_adds + readout == 5910
    assert cost["n_multipliers"] == 24 + 4 + 1 + 6 + 14 + 2 + 2
    assert "total BOPs 5,910" in format_cost(cost)


def test_cost_grows_with_width_and_alpha_and_float_is_32_bit():
    base = model_cost(build_model({"n_constituents": 16, "quantization": Q8}))["bops"]
    q6 = {**Q8, "coefficients": "quantized_bits(6,1,alpha=1)", "invariants": "quantized_bits(6,2,alpha=1)"}
    assert model_cost(build_model({"n_constituents": 16, "quantization": q6}))["bops"] < base
    assert model_cost(build_model({"n_constituents": 16, "quantization": Q8, "alpha": True}))["bops"] > base
    assert model_cost(build_model({"n_constituents": 16}))["bops"] > 10 * base
    # N^2 scaling dominates: doubling N multiplies the cost by about 4
    big = model_cost(build_model({"n_constituents": 32, "quantization": Q8}))["bops"]
    assert 3.5 < big / base < 4.3
