"""The Level-1 candidate format (data.format: l1): grid conversion, saturation, exact symmetries.

Everything here runs on hand-made jets or on the session's small simulated sample (conftest), so
the file takes well under a minute on two cores.
"""
import json
import math

import numpy as np
import pytest

from qpelican.config.recipe import recipe_from_dict
from qpelican.core.errors import DataError, QpelicanError, RecipeError
from qpelican.data.l1 import (ANGLE_MAX, ANGLE_MIN, ANGLE_STEP, PT_MAX, GridCounts, L1Dataset, input_mass, l1_to_p4,
                              to_l1)
from qpelican.nn.layers import LAYERS, CandidateMask, L1CandidateInput, L1Invariants
from qpelican.nn.models import build_model, model_format, predict, predict_logits
from qpelican.nn.serialize import allowed_classes, load_model

Q8 = {"input": "quantized_bits(14,12,keep_negative=False,alpha=1)", "invariants": "quantized_bits(20,14,alpha=1)",
      "coefficients": "quantized_bits(8,2,alpha=1)", "biases": "quantized_bits(8,3,alpha=1)",
      "activation": "quantized_relu(8,7)", "aggregates": "quantized_bits(16,9,alpha=1)",
      "output": "quantized_bits(16,6,alpha=1)"}


def massless(pt, eta, phi):
    pt, eta, phi = (np.asarray(a, np.float64) for a in (pt, eta, phi))
    return np.stack([pt * np.cosh(eta), pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)], axis=-1)


def jets(rng, n_jets=64, m=24, eta0=0.3, phi0=1.0):
    """Random collimated massless jets (n_jets, m, 4), the last few constituents padding."""
    pt = rng.exponential(25.0, (n_jets, m)) + 0.5
    eta = eta0 + rng.normal(0, 0.25, (n_jets, m))
    phi = phi0 + rng.normal(0, 0.25, (n_jets, m))
    p4 = massless(pt, eta, phi)
    p4[:, -3:] = 0.0
    return p4


# ------------------------------------------------------------------------------------------ the grid
def test_hand_made_jet_lands_on_the_grid():
    step = ANGLE_STEP
    # jet axis at eta = 100 steps, phi = -40 steps (two equal constituents symmetric about it)
    pt = [100.1, 100.1, 30.3, 0.6, 0.0]
    eta = [(100 + 10) * step, (100 - 10) * step, (100 + 3.2) * step, (100 - 50.7) * step, 0.0]
    phi = [(-40 + 20) * step, (-40 - 20) * step, (-40 - 7.6) * step, (-40 + 0.4) * step, 0.0]
    p4 = massless(pt, eta, phi)[None]
    p4[0, 4] = 0.0  # padding
    x, counts = to_l1(p4, 6)
    assert x.shape == (1, 6, 3) and x.dtype == np.float32
    # pT to 0.25 GeV (half to even), eta/phi relative integers, sorted by pT, zero-padded
    assert x[0, :, 0].tolist() == [100.0, 100.0, 30.25, 0.5, 0.0, 0.0]
    axis_eta = round(math.asinh(p4[0, :, 3].sum() / math.hypot(p4[0, :, 1].sum(), p4[0, :, 2].sum())) / step)
    assert x[0, 2, 1] == 103 - axis_eta and x[0, 3, 1] == 49 - axis_eta
    assert sorted(x[0, :2, 1].tolist()) == [90 - axis_eta, 110 - axis_eta]
    axis_phi = round(math.atan2(p4[0, :, 2].sum(), p4[0, :, 1].sum()) / step)
    assert axis_phi == -41  # the softer constituents pull the axis by one step
    assert sorted(x[0, :2, 2].tolist()) == [-60 - axis_phi, -20 - axis_phi]
    assert x[0, 2, 2] == -48 - axis_phi and x[0, 3, 2] == -40 - axis_phi
    assert (x[0, 4:] == 0).all()
    assert counts == GridCounts(jets=1, candidates=4)


def test_keeps_the_n_highest_pt_and_the_axis_uses_all_constituents():
    rng = np.random.default_rng(1)
    p4 = jets(rng, 8, 30)
    x16, _ = to_l1(p4, 16)
    x30, _ = to_l1(p4, 30)
    assert np.array_equal(x16, x30[:, :16])  # same axis (all constituents), the 16 hardest
    assert (np.diff(x16[..., 0], axis=1) <= 0).all()
    pt = np.hypot(p4[..., 1], p4[..., 2])
    assert np.allclose(x16[:, 0, 0], pt.max(axis=1), atol=0.125)


def test_phi_wraps_across_pi():
    step = ANGLE_STEP
    phi = np.array([math.pi - 5.3 * step, -math.pi + 7.2 * step])  # both sides of the branch cut
    x, counts = to_l1(massless([50.0, 40.0], [0.1, 0.1], phi)[None], 2)
    assert np.abs(x[0, :, 2]).max() < 10 and counts.out_of_range == 0
    assert x[0, 0, 2] - x[0, 1, 2] == -12  # 715 - (-713) wrapped by one turn of 1440 steps


def test_out_of_range_candidates_saturate_and_are_counted():
    step = ANGLE_STEP
    pt = [5000.0, 40.0, 30.0, 20.0, 0.1, 0.05]
    eta = [0.0, 600 * step, -700 * step, 0.0, 0.0, 0.0]
    phi = [0.0, 0.0, 0.0, -650 * step, 0.0, 0.0]
    p4 = massless(pt, eta, phi)[None]
    x, c = to_l1(p4, 6)
    axis = (round(math.asinh(p4[0, :, 3].sum() / math.hypot(*p4[0, :, 1:3].sum(axis=0))) / step),
            round(math.atan2(p4[0, :, 2].sum(), p4[0, :, 1].sum()) / step))
    assert abs(axis[0]) <= 3 and axis[1] == 0  # the 5 TeV constituent dominates the axis
    assert x[0, 0, 0] == PT_MAX                                   # pT saturates at 4095.75
    assert x[0, 1, 1] == ANGLE_MAX and x[0, 2, 1] == ANGLE_MIN     # eta_rel clipped, not wrapped
    assert x[0, 3, 2] == ANGLE_MIN
    assert x[0, 4, 0] == 0.0 and (x[0, 4:] == 0).all()            # 0.1 and 0.05 GeV round to 0: dropped
    assert (c.pt_saturated, c.eta_saturated, c.phi_saturated, c.below_lsb) == (1, 2, 1, 2)
    assert c.jets_affected == 1 and c.candidates == 4 and c.out_of_range == 6
    assert "saturated" in c.describe() and "4095.75" in c.describe()
    # the model saturates the same way: feeding unsaturated values gives the saturated output
    model = build_model({"format": "l1", "n_constituents": 6, "quantization": Q8})
    raw = x.copy()
    raw[0, 0, 0], raw[0, 1, 1], raw[0, 2, 1] = 6000.0, 900.0, -2000.0
    assert np.array_equal(predict(model, raw), predict(model, x))


def test_check_candidates_refuses_off_grid_input():
    model = build_model({"format": "l1", "n_constituents": 4})
    with pytest.raises(DataError, match="multiple of 0.25"):
        predict_logits(model, np.full((1, 4, 3), 1.1, np.float32))
    with pytest.raises(DataError, match=r"\(jets, N, 3\)"):
        predict_logits(model, np.zeros((1, 4, 4), np.float32))
    with pytest.raises(DataError, match="integers"):
        predict_logits(model, np.array([[[1.0, 0.5, 0.0]]], np.float32))


# --------------------------------------------------------------------------------- the symmetries
def random_quantized_model(n, seed=0, alpha=False, beams=False):
    model = build_model({"format": "l1", "n_constituents": n, "quantization": Q8, "alpha": alpha, "scale": 1.0,
                         "beams": beams})
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0, 0.8, w.shape).astype(np.float32) for w in model.get_weights()])
    return model


def grid_jets(rng, n_jets, n):
    x = np.zeros((n_jets, n, 3), np.float32)
    k = rng.integers(3, n + 1, n_jets)
    for j in range(n_jets):
        x[j, :k[j], 0] = np.sort(np.round(rng.exponential(30, k[j]) / 0.25) * 0.25 + 0.25)[::-1]
        x[j, :k[j], 1:] = rng.integers(-150, 151, (k[j], 2))
    return x


@pytest.mark.parametrize("alpha, beams", [(False, False), (True, False), (False, True)])
def test_permutation_eta_and_phi_shifts_are_bit_identical(alpha, beams):
    rng = np.random.default_rng(3)
    n = 16
    model = random_quantized_model(n, seed=4, alpha=alpha, beams=beams)
    x = grid_jets(rng, 256, n)
    ref = predict(model, x)
    assert np.unique(ref).size > 50  # a model that says something
    perm = rng.permutation(n)
    shifted_eta = x.copy()
    shifted_phi = x.copy()
    real = x[..., 0] > 0
    shifted_eta[..., 1] += np.where(real, 97.0, 0.0)   # a boost along the beam
    shifted_phi[..., 2] -= np.where(real, 211.0, 0.0)  # a rotation about it
    for name, other in (("permutation", x[:, perm]), ("eta shift", shifted_eta), ("phi shift", shifted_phi)):
        assert np.array_equal(predict(model, other), ref), name


def test_boosted_and_rotated_jets_convert_to_the_same_model_output():
    """End to end: boost (eta shift) and rotate (phi by a whole number of steps) the 4-momenta,
    convert to the grid again: the quantized model's output does not move by one bit (the
    boosted jet axis may move by a different whole number of steps: a constant eta_rel shift)."""
    rng = np.random.default_rng(5)
    p4 = jets(rng, 200, 24)
    pt = np.hypot(p4[..., 1], p4[..., 2])
    eta = np.arcsinh(np.divide(p4[..., 3], pt, out=np.zeros_like(pt), where=pt > 0))
    phi = np.arctan2(p4[..., 2], p4[..., 1])
    moved = massless(pt, eta + 167 * ANGLE_STEP, phi + 173 * ANGLE_STEP)
    moved[pt == 0] = 0.0
    x, _ = to_l1(p4, 16)
    y, _ = to_l1(moved, 16)
    assert np.array_equal(x[..., [0, 2]], y[..., [0, 2]])  # pT and phi_rel identical
    model = random_quantized_model(16, seed=6)
    assert np.array_equal(predict(model, x), predict(model, y))


def test_invariants_are_the_collider_form_exactly():
    x = np.array([[[100.0, 10.0, -3.0], [40.25, -7.0, 12.0], [0.0, 0.0, 0.0]]], np.float32)
    layer = L1Invariants(invariant_quantizer="quantized_bits(24,18,alpha=1)", input_quantizer=Q8["input"])
    d = layer(x).numpy()[0, :, :, 0]
    want = 100.0 * 40.25 * (17**2 + 15**2) * 2.0**-17
    assert d[0, 1] == d[1, 0] == np.round(want * 32) / 32
    assert (np.diag(d) == 0).all() and (d[2] == 0).all()
    # the massless reference in the same unit agrees at small angles
    ref = L1Invariants(form="massless")(x).numpy()[0, 0, 1, 0]
    assert abs(ref / want - 1) < 1e-3


def test_the_beam_row_is_pt_and_leaves_the_candidates_unchanged():
    """With beams, row 0 is the beam: d_bj = d_jb = pT_j on the invariants' grid, d_bb = 0, padding 0;
    the candidates' own pairs are those of the model without beams, one row and column down."""
    x = np.array([[[100.0, 10.0, -3.0], [40.25, -7.0, 12.0], [0.0, 0.0, 0.0]]], np.float32)
    kw = dict(invariant_quantizer="quantized_bits(16,12,alpha=1)", input_quantizer=Q8["input"])
    c = L1CandidateInput(beams=True, input_quantizer=Q8["input"])(x)
    assert c.shape == (1, 4, 3) and c.numpy()[0, 0].tolist() == [1.0, 0.0, 0.0]
    d = L1Invariants(beams=True, **kw)(c).numpy()[0, :, :, 0]
    plain = L1Invariants(**kw)(x).numpy()[0, :, :, 0]
    assert d[0].tolist() == d[:, 0].tolist() == [0.0, 100.0, 40.25, 0.0]
    assert np.array_equal(d[1:, 1:], plain)
    assert CandidateMask()(c).numpy()[0].tolist() == [1.0, 1.0, 1.0, 0.0]


def test_mass_of_the_same_candidates():
    rng = np.random.default_rng(7)
    p4 = jets(rng, 32, 20)
    x, _ = to_l1(p4, 20)
    m_grid, m_p4 = input_mass(x), input_mass(p4)
    assert np.allclose(m_grid, m_p4, rtol=0.02)  # the grid moves the mass by the rounding only
    assert np.allclose(input_mass(l1_to_p4(x)), m_grid)


# ----------------------------------------------------------------------- serialisation and recipes
def test_layers_round_trip_and_are_allowed_by_the_safe_loader(tmp_path):
    for layer in (L1CandidateInput(angle_bits=9, beams=True, input_quantizer=Q8["input"]), CandidateMask(),
                  L1Invariants(shift=15, form="massless", beams=True, invariant_quantizer=Q8["invariants"],
                               input_quantizer=Q8["input"])):
        cfg = layer.get_config()
        again = type(layer).from_config(cfg)
        assert again.get_config() == cfg
        assert type(layer) in LAYERS and type(layer).__name__ in allowed_classes()
    model = random_quantized_model(8, seed=8)
    path = tmp_path / "l1.keras"
    model.save(path)
    loaded = load_model(path)
    x = grid_jets(np.random.default_rng(9), 64, 8)
    assert model_format(loaded) == "l1"
    assert np.array_equal(predict(loaded, x), predict(model, x))


def test_recipe_format_key_is_validated():
    r = recipe_from_dict({"data": {"format": "l1", "n_constituents": 16}})
    assert r.to_model_config()["format"] == "l1"
    assert recipe_from_dict({}).data.format == "p4"
    with pytest.raises(RecipeError, match=r"data\.format = 'l2' is not allowed; allowed values: 'p4' or 'l1'"):
        recipe_from_dict({"data": {"format": "l2"}})
    assert recipe_from_dict({"data": {"format": "l1", "beams": True}}).to_model_config()["beams"]
    with pytest.raises(RecipeError, match="l1_form"):
        recipe_from_dict({"data": {"format": "l1"}, "model": {"l1_form": "exact"}})
    with pytest.raises(QpelicanError, match=r"\(B, N, 3\)"):
        L1Invariants()(np.zeros((1, 4, 4), np.float32))


def test_readers_convert_simulated_jets(sim_dir):
    ds = L1Dataset(sim_dir / "test.h5", 16)
    x, y = ds.read()
    assert x.shape == (len(y), 16, 3) and ds.counts.jets == len(y)
    assert ds.counts.candidates == int((x[..., 0] > 0).sum())
    assert (np.abs(x[..., 1:]) <= 512).all() and (x[..., 0] % 0.25 == 0).all()
    # the jet axis sits inside the jet: the leading candidates are within R = 0.8 of it
    assert np.percentile(np.hypot(x[:, 0, 1], x[:, 0, 2]) * ANGLE_STEP, 95) < 0.8


def test_fit_and_evaluate_in_the_l1_format(sim_dir, tmp_path):
    from qpelican.training.results import evaluate_run
    from qpelican.training.train import fit_recipe

    recipe = recipe_from_dict({"name": "l1_tiny", "data": {"format": "l1", "n_constituents": 8},
                               "quantization": Q8,
                               "training": {"epochs": 1, "batch_size": 256, "jit_compile": False}})
    lines = []
    res = fit_recipe(recipe, tmp_path / "run", data=sim_dir, progress=True, log=lines.append)
    assert any(line.startswith("L1 grid:") for line in lines)
    assert res["data"]["format"] == "l1" and "l1_grid" in res["data"]
    assert 0.5 < res["baseline"]["auc"] <= 1.0
    ev, path = evaluate_run(tmp_path / "run", sim_dir / "test.h5")
    assert ev["data"]["format"] == "l1" and ev["l1_grid"]["jets"] == ev["jets"]
    assert json.load(open(path))["auc"] == ev["auc"]


# ---------------------------------------------------------------------------------------------- firmware
def test_hls_c_simulation_is_bit_exact(tmp_path, sim_dir):
    """export-hls of an alpha-scaled 8-bit l1 model with the beam and random weights: the C simulation
    equals the QKeras model on stress candidates (saturating pT and angles, every multiplicity, ties)
    and on simulated jets; the report names the Level-1 front end and sizes its product exactly."""
    from qpelican.hls import compile_model, export_model, predict_phat
    from qpelican.hls.verify import compare, firmware_inputs, read_jets, stress_jets

    model = random_quantized_model(16, seed=11, alpha=True, beams=True)
    hls_model, plan = export_model(model, tmp_path / "prj")
    assert (tmp_path / "prj" / "firmware" / "nnet_utils" / "nnet_qp_l1.h").exists()
    inv = plan["by_name"]["invariants"]
    assert inv.types["prod_t"].width == 49 and plan["keras_exact"]
    compile_model(hls_model)
    x = stress_jets(np.random.default_rng(12), model, 400)
    assert (x[..., 0] == PT_MAX).any() or (x[..., 0] > PT_MAX).any()
    assert (np.abs(x[..., 1:]) > ANGLE_MAX).any()
    ref = predict(model, x).astype(np.float64)
    out = predict_phat(hls_model, firmware_inputs(model, x))[:, 0]
    assert np.unique(ref).size > 50
    assert np.array_equal(out, ref), f"{int((out != ref).sum())} of {len(x)} jets differ"
    sim, labels, _ = read_jets(sim_dir, 16, 200, fmt="l1")
    ver, _, _ = compare(model, hls_model, plan, sim, labels)
    assert ver["jets"] == len(sim) and ver["differing_jets"] == 0


def test_exporter_refuses_the_massless_form():
    from qpelican.core.errors import ExportError
    from qpelican.hw.plan import make_plan

    model = build_model({"format": "l1", "n_constituents": 4, "quantization": Q8, "l1_form": "massless"})
    with pytest.raises(ExportError, match="l1_form: collider"):
        make_plan(model)


def test_data_inspect_reports_out_of_range_candidates(tmp_path):
    import h5py
    from typer.testing import CliRunner

    from qpelican.cli.main import app
    from qpelican.data.inspect import summarize

    step = ANGLE_STEP
    jet = massless([5000.0, 40.0, 30.0, 20.0, 0.1], [0.0, 600 * step, 0.0, 0.0, 0.0],
                   [0.0, 0.0, 0.0, -650 * step, 0.0])
    pmu = np.zeros((4, 8, 4))
    pmu[0, :5] = jet
    pmu[1:, :3] = massless([100.0, 50.0, 20.0], [0.1, 0.2, 0.0], [0.0, 0.1, -0.1])
    path = tmp_path / "odd.h5"
    with h5py.File(path, "w") as f:
        f["Pmu"] = pmu
        f["is_signal"] = np.array([1, 0, 1, 0])
    s = summarize(str(path), l1_n=16)["l1"]
    assert (s["pt_saturated"], s["eta_saturated"], s["phi_saturated"], s["below_lsb"]) == (1, 1, 1, 1)
    assert s["jets_affected"] == 1 and s["jets"] == 4
    res = CliRunner().invoke(app, ["data", "inspect", str(path)])
    assert res.exit_code == 0, res.output
    assert "4 of 13 candidates out of range in 1 of 4 jets" in " ".join(res.output.split())


@pytest.mark.parametrize("beams", [False, True])
def test_explain_reproduces_an_l1_model_bit_for_bit(beams):
    from qpelican.analysis.explain import explain_model

    model = random_quantized_model(8, seed=13, alpha=True, beams=beams)
    lines = []
    check = explain_model(model, grid_jets(np.random.default_rng(14), 200, 8), log=lines.append)
    assert check["ok"] and check["jets_differing"] == 0
    assert any("Level-1 candidates" in line for line in lines)


def test_symmetric_model_with_the_beam_traces_one_z_per_pair_bit_exactly():
    """model.symmetric with the beam: the beam's row and column are a symmetric pair too, so the RTL
    computes one pre-activation per unordered pair of the N + 1 particles, and stays bit-exact."""
    from qpelican.hls.verify import firmware_inputs, stress_jets
    from qpelican.nn.models import randomize_on_grids
    from qpelican.rtl.trace import trace_model

    n = 8
    model = randomize_on_grids(build_model({"format": "l1", "n_constituents": n, "quantization": Q8, "beams": True,
                                            "symmetric": True, "alpha": True}), 19, bias_scale=0.5)
    traced = trace_model(model)
    assert traced.plan["by_name"]["lineq_2to2"].params["symmetric"]
    assert traced.counts["lineq2to2"]["output quantizers"] == 2 * (n + 1) * (n + 2) // 2
    x = stress_jets(np.random.default_rng(20), model, 400)
    ref = predict(model, x).astype(np.float64)
    assert np.unique(ref).size > 20
    assert np.array_equal(traced.predict(firmware_inputs(model, x))[:, 0], ref)


def test_rtl_trace_and_verilator_are_bit_exact(tmp_path, sim_dir):
    """export-rtl of Level-1 models with the beam: da4ml's interpreter (N = 16, alpha) and the Verilog
    compiled with Verilator (N = 6) equal the QKeras model on stress candidates and simulated jets;
    the beam's products take no multiplier."""
    from qpelican.hls.verify import firmware_inputs, read_jets, stress_jets
    from qpelican.rtl.exporter import export_rtl, inventory_check
    from qpelican.rtl.trace import trace_model
    from qpelican.rtl.verilator import load_emulator

    model = random_quantized_model(16, seed=15, alpha=True, beams=True)
    traced = trace_model(model)
    x = np.concatenate([stress_jets(np.random.default_rng(16), model, 300), read_jets(sim_dir, 16, 100, fmt="l1")[0]])
    ref = predict(model, x).astype(np.float64)
    assert np.array_equal(traced.predict(firmware_inputs(model, x))[:, 0], ref)
    check = inventory_check(traced)["stages"]["invariants"]
    # (pT_i pT_j) R_ij, 28 x 21 bits, is traced as two DSP48E2-sized pieces
    assert check["rtl_variable_products"] - check["rtl_split_partial_products"] == check["inventory_multipliers"] \
        == 4 * 16 * 15 // 2
    small = random_quantized_model(6, seed=17, beams=True)
    x6 = np.concatenate([stress_jets(np.random.default_rng(18), small, 200), read_jets(sim_dir, 6, 60, fmt="l1")[0]])
    res = export_rtl(small, tmp_path / "rtl", yosys=False, yosys_nodsp=False, p4=x6, log=lambda *_: None)
    assert res["verify"]["differing_jets"] == 0 and res["verify"]["interpreter_differing_jets"] == 0
    vm = load_emulator(tmp_path / "rtl")
    out = vm.predict(firmware_inputs(small, x6).reshape(len(x6), -1).astype(np.float64), n_threads=1)
    assert np.array_equal(np.asarray(out, np.float64).reshape(-1), predict(small, x6).astype(np.float64))
