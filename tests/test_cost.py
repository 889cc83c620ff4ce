"""The operator inventory and the cost model against hand-counted values; cost and report agree."""
from pathlib import Path

import numpy as np
import pytest

import qpelican  # noqa: F401  (selects tf-keras)
from qpelican.config.recipe import load_recipe
from qpelican.hls.report import build_report, format_report
from qpelican.hw.cost import differences, format_cost, model_cost, summarize
from qpelican.hw.inventory import EXACT, RECIPE, estimate, from_plan, model_inventory
from qpelican.hw.plan import make_plan
from qpelican.nn.models import build_model

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
Q8 = {k: "quantized_bits(8,2,alpha=1)" for k in ("input", "invariants", "coefficients", "biases", "aggregates", "output")}
Q8["activation"] = "quantized_relu(8,3)"


def ops(stage):
    """{what: (count, widths or width)} of a stage."""
    out = {m.what: (m.count, m.widths) for m in stage.multipliers}
    out.update({a.what: (a.count, a.width) for a in stage.adders})
    return out


@pytest.fixture(scope="module")
def tiny():
    """nanoPELICAN N = 4, C = 2, 8-bit (8,2) everywhere, Nbar = 4 (tables 1/4 and 1/16: 1 bit wide);
    every coefficient 1 and every bias 0, so the exact accumulators can be counted by hand."""
    model = build_model({"n_constituents": 4, "channels": 2, "nbar": 4.0, "quantization": Q8})
    for layer in model.layers:
        for w in layer.weights:
            w.assign(np.ones(w.shape) if "kernel" in w.name else np.zeros(w.shape))
    return model


def test_inventory_hand_counted(tiny):
    """Widths by hand (ranges of the (8,2) grid, [-4, 127/32], 5 fractional bits):
    p_i.p_j: 4 products in [-15.875, 16] -> dot in [-63.875, 63.625] on 2^-10: 17 bits;
    S_j (3 terms) 10 bits, T (12 terms) 12 bits, multiplicity 0..4 3 bits;
    2to2 accumulator, any weights: 6 products [-15.875, 16] + 2 biases: [-103.25, 103.94] -> 18 bits,
    these weights (w = 1, b = 0): 6 terms [-4, 3.97] -> [-24, 23.8] -> 16 bits;
    2to0 input relu(8,3) [0, 7.97]: total (16 terms) 12 bits, trace (4) 10 bits; accumulator of
    4 products + bias: any weights [-67.5, 67.97] -> 18 bits, these weights [-16, 15.875] -> 15 bits."""
    inv = from_plan(make_plan(tiny), EXACT)
    assert [(s.layer, s.kind) for s in inv.stages] == [("invariants", "invariants"), ("lineq_2to2", "2to2"),
                                                       ("lineq_2to0", "2to0")]
    assert [s.layer for s in inv.of_kind("2to2")] == ["lineq_2to2"]
    # 6 pairs i<j: 4 products and 3 additions each
    assert ops(inv.stage("invariants")) == {"p_i,mu * p_j,mu (pairs i<j)": (24, (8, 8)),
                                            "Minkowski sum (3 per pair)": (18, 17)}
    # C_in = 1, C_out = 2; tables 0-2 and 3-4 are equal: one vector and one scalar aggregate
    assert ops(inv.stage("lineq_2to2")) == {
        "multiplicity n = sum_i m_i": (3, 3),
        "column sums S_j (= row sums)": (4 * 2, 10),  # 3 terms each
        "total T = sum_j S_j": (3, 12),
        "S_j x table0[n] -> aggregate": (4, (10, 1)),
        "T x table3[n] -> aggregate": (1, (12, 1)),
        "w0 * d_ij (once per unordered pair)": (2 * 6, (8, 8)),
        "row/column/diagonal coefficients": (2 * 3 * 4, (8, 8)),
        "scalar coefficients": (2 * 2, (8, 8)),
        "scalar terms (bias + T aggregates)": (2 * 2, 16),
        "per-particle terms (row, column, diagonal)": (2 * 4 * 2, 16),  # diag 1, row 1, column 0 per (i, h)
        "z_ii = row_i + col_i + diag_i": (2 * 4 * 2, 16),
        "z_ij, z_ji = w0 d_ij + row + col (pairs i<j)": (2 * 6 * 4, 16),
    }
    assert [(t.what, t.count, t.entries) for t in inv.stage("lineq_2to2").lookups] == [("table0[n]", 1, 5),
                                                                                      ("table3[n]", 1, 5)]
    # C_in = 2, C_out = 1
    assert ops(inv.stage("lineq_2to0")) == {
        "multiplicity n = sum_i m_i": (3, 3),
        "total sum over pairs": (2 * 15, 12),
        "trace": (2 * 3, 10),
        "total x table0[n]": (2, (12, 1)),
        "trace x table1[n]": (2, (10, 1)),
        "output coefficients": (4, (8, 8)),
        "output sum": (4, 15),
    }
    cost = summarize(inv)
    lorentz = 24 * 64 + 18 * 17
    lineq2 = 9 + 8 * 10 + 3 * 12 + 4 * 10 + 12 + (12 + 24 + 4) * 64 + (4 + 16 + 16 + 48) * 16
    lineq0 = 9 + 30 * 12 + 6 * 10 + 2 * 12 + 2 * 10 + 4 * 64 + 4 * 15
    assert cost["bops"] == lorentz + lineq2 + lineq0 == 6712
    assert cost["n_multipliers"] == 24 + 4 + 1 + 12 + 24 + 4 + 2 + 2 + 4
    assert inv.stage("lineq_2to0").n_adders == 3 + 30 + 6 + 4
    assert cost["n_lookups"] == 2 + 4


def test_recipe_widths_hold_for_any_weights(tiny):
    """model_cost sizes the accumulators for any weights on the grids (18 bits by hand, see above):
    the same before and after the weights change; the difference to the firmware is named."""
    cost = model_cost(tiny)
    assert cost["widths"] == RECIPE and cost["source"] == "plan"
    assert cost["bops"] == 6712 + 84 * (18 - 16) + 4 * (18 - 15) == 6892
    diff = differences(from_plan(make_plan(tiny), EXACT), model_inventory(tiny, RECIPE))
    assert {(d["layer"], d["op"]) for d in diff} == {
        ("lineq_2to2", "scalar terms (bias + T aggregates)"), ("lineq_2to2", "per-particle terms (row, column, diagonal)"),
        ("lineq_2to2", "z_ii = row_i + col_i + diag_i"), ("lineq_2to2", "z_ij, z_ji = w0 d_ij + row + col (pairs i<j)"),
        ("lineq_2to0", "output sum")}
    assert sum(d["bops"] for d in diff) == 6892 - 6712
    assert "total BOPs 6,892" in format_cost(cost)
    fresh = build_model({"n_constituents": 4, "channels": 2, "nbar": 4.0, "quantization": Q8})
    assert model_cost(fresh)["bops"] == 6892


def test_c2_8bit_cost_and_report_agree():
    """recipes/c2_8bit.yaml (built, not trained): the report's totals are the firmware inventory's,
    its cost_model is model_cost's, and every BOP between them is a named operator."""
    model = build_model(load_recipe(RECIPES / "c2_8bit.yaml").to_model_config())
    plan = make_plan(model)
    rep = build_report(model, plan, settings={"reuse": 1})
    exact = summarize(from_plan(plan, EXACT))
    cost = model_cost(model)
    t, c = rep["totals"], rep["cost_model"]
    assert (t["bops"], t["multipliers"], t["adders"]) == (exact["bops"], exact["n_multipliers"], exact["n_adders"])
    assert sum(o["count"] for o in rep["operations"]) == exact["n_multipliers"] + exact["n_adders"]
    assert c["bops"] == cost["bops"] and c["dsp_estimate"] == cost["dsp_estimate"]
    assert t["bops"] + sum(d["bops"] for d in c["differences"]) == cost["bops"] == t["bops"] + c["bops_difference"]
    # every operator the cost model counts beyond the firmware is named: the flagship is alpha-scaled,
    # and at initialisation its tables coincide in the firmware (one aggregate of each kind) while the
    # cost model assumes all of them (test_alpha_recipe_bound_has_no_aliases)
    extra = cost["n_multipliers"] + cost["n_adders"] - exact["n_multipliers"] - exact["n_adders"]
    assert extra == sum(d["count"][1] - d["count"][0] for d in c["differences"]) >= 0
    text = format_report(rep)
    assert f"{cost['bops']:,} BOPs" in text and f"{t['bops']:,} BOPs" in text
    assert all(f"{d['layer']} {d['op']}:" in text for d in c["differences"])


def test_alpha_recipe_bound_has_no_aliases():
    """With alpha the tables follow trained exponents: at initialisation (alpha = 0) they coincide and
    the firmware computes one aggregate of each kind, the cost model assumes all of them."""
    model = build_model({"n_constituents": 6, "quantization": Q8, "alpha": True})
    exact, recipe = from_plan(make_plan(model), EXACT), model_inventory(model, RECIPE)
    kinds = {m.what for m in recipe.stage("lineq_2to2").multipliers if "table" in m.what}
    assert len(kinds) == 5 and len([m for m in exact.stage("lineq_2to2").multipliers if "table" in m.what]) == 2
    assert any(d["count"][0] != d["count"][1] for d in differences(exact, recipe))
    # trained exponents and coefficients change the firmware, not the recipe's cost
    before = model_cost(model)["bops"]
    rng = np.random.default_rng(0)
    for w in model.weights:
        w.assign(rng.uniform(-0.9, 0.9, w.shape))
    assert model_cost(model)["bops"] == before
    assert len([m for m in from_plan(make_plan(model), EXACT).stage("lineq_2to2").multipliers if "table" in m.what]) == 5


def test_models_without_firmware_are_estimated():
    """Float and full PELICAN models have no plan: nominal widths, the reason kept."""
    flt = model_cost(build_model({"n_constituents": 8}))
    assert flt["source"] == "estimate" and "float" in flt["reason"]
    assert "nominal widths" in format_cost(flt)
    full = model_inventory(build_model({"n_constituents": 8, "architecture": "pelican", "quantization": Q8}))
    assert full.source == "estimate" and {"dense", "2to2_full", "2to0"} <= {s.kind for s in full.stages}
    # a nano model the plan accepts and its estimate count the same operators
    nano = build_model({"n_constituents": 8, "quantization": Q8})
    # the Level-1 front end: planned like the momentum front end; a float one is estimated, every layer counted
    l1 = model_cost(build_model({"n_constituents": 8, "format": "l1", "quantization": Q8}))
    assert l1["source"] == "plan" and any(m["what"].startswith("pT_i * R_ij") for m in l1["multipliers"])
    assert {a["width"] for a in l1["adders"] if a["what"] == "column sums S_j (= row sums)"} == {8 + 3}
    l1_float = model_cost(build_model({"n_constituents": 8, "format": "l1"}))
    assert l1_float["source"] == "estimate" and not l1_float["uncounted"]

    def counts(inv):
        return [(s.layer, [o.count for o in s.multipliers + s.adders]) for s in inv.stages]

    assert counts(model_inventory(nano)) == counts(estimate(nano))


def test_cost_grows_with_width_and_alpha_and_float_is_32_bit():
    base = model_cost(build_model({"n_constituents": 16, "quantization": Q8}))["bops"]
    q6 = {**Q8, "coefficients": "quantized_bits(6,1,alpha=1)", "invariants": "quantized_bits(6,2,alpha=1)"}
    assert model_cost(build_model({"n_constituents": 16, "quantization": q6}))["bops"] < base
    assert model_cost(build_model({"n_constituents": 16, "quantization": Q8, "alpha": True}))["bops"] > base
    assert model_cost(build_model({"n_constituents": 16}))["bops"] > 8 * base  # float: 32-bit operators
    # N^2 scaling dominates: doubling N multiplies the cost by about 4
    big = model_cost(build_model({"n_constituents": 32, "quantization": Q8}))["bops"]
    assert 3.5 < big / base < 4.3
