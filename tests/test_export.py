"""Firmware export: hls4ml project + g++ C simulation bit-exact against the QKeras model.

Each C-simulation compile takes 5-15 s; three models are compiled (two small N, one N = 80).
"""
import json
import os
import re

import numpy as np
import pytest

import qpelican  # noqa: F401  (selects tf-keras)
from qpelican.core.errors import ExportError
from qpelican.hls import compile_model, export_model, predict_phat
from qpelican.hls.verify import firmware_inputs, stress_jets
from qpelican.nn.models import build_model
from firmware_models import Q6, Q8, check_bias_tables, folded, nano

def check_bit_exact(model, hls_model, plan, p4):
    ref = model.predict(p4, verbose=0).reshape(len(p4), -1).astype(np.float64)
    out = predict_phat(hls_model, firmware_inputs(model, p4))
    assert np.std(ref) > 0 and len(np.unique(ref)) > 10, "degenerate test model: outputs do not vary"
    differing = np.nonzero(np.any(out != ref, axis=1))[0]
    assert differing.size == 0, (f"{differing.size} of {len(p4)} jets differ; first {differing[:5]}: "
                                 f"keras {ref[differing[:5]].ravel()} hls {out[differing[:5]].ravel()}")


@pytest.fixture(scope="module")
def exported8(tmp_path_factory):
    model = nano(16, Q8, seed=1, dropout=0.05)  # PairDropout layers must vanish in the firmware
    out = tmp_path_factory.mktemp("hls8") / "prj"
    hls_model, plan = export_model(model, out)
    compile_model(hls_model)
    return model, hls_model, plan, out


def test_nano_8bit_bit_exact(exported8):
    model, hls_model, plan, _ = exported8
    p4 = stress_jets(np.random.default_rng(0), model, 1200)
    check_bit_exact(model, hls_model, plan, p4)


def test_project_files(exported8):
    _, hls_model, plan, out = exported8
    for f in ("build_prj.tcl", "firmware/qpelican.cpp", "firmware/qpelican.h", "firmware/parameters.h",
              "firmware/defines.h", "firmware/nnet_utils/nnet_qp_lorentz.h", "firmware/nnet_utils/nnet_qp_lineq.h",
              "qpelican_bridge.cpp", "build_lib.sh"):
        assert (out / f).is_file(), f
    top = (out / "firmware/qpelican.cpp").read_text()
    for fn in ("qp_lorentz_invariants", "qp_lineq2to2_nano", "qp_lineq2to0", "qp_particle_mask"):
        assert f"nnet::{fn}<" in top
    params = (out / "firmware/parameters.h").read_text()
    assert "AP_RND_CONV,AP_SAT" in (out / "firmware/defines.h").read_text()
    assert "multiplier_limit" in params and "typedef ap_fixed<" in params
    weights = os.listdir(out / "firmware/weights")
    assert any(w.startswith("t0_l") for w in weights) and any(w.startswith("w_l") for w in weights)


def test_report_reads_the_inventory(exported8):
    """The multiplier limits in parameters.h, the report's totals and the cost model all read the
    one inventory; where the cost model's widths differ from the firmware's, the operator is named."""
    from qpelican.hls.report import build_report, format_report
    from qpelican.hw.cost import model_cost, summarize
    from qpelican.hw.inventory import EXACT, from_plan

    model, hls_model, plan, out = exported8
    inv = from_plan(plan, EXACT)
    limits = [int(v) for v in re.findall(r"multiplier_limit = (\d+);", (out / "firmware/parameters.h").read_text())]
    assert sorted(limits) == sorted(s.n_multipliers for s in inv.stages)
    rep = build_report(model, plan, hls_model, {"reuse": 1})
    exact, cost = summarize(inv), model_cost(model)
    assert rep["totals"]["bops"] == exact["bops"] and rep["totals"]["multipliers"] == exact["n_multipliers"]
    assert rep["cost_model"]["bops"] == cost["bops"] == exact["bops"] + sum(d["bops"] for d in rep["cost_model"]["differences"])
    text = format_report(rep)
    assert all(f"{d['layer']} {d['op']}:" in text for d in rep["cost_model"]["differences"])


def test_nano_6bit_alpha_mean_beams_float_output(tmp_path):
    model = nano(20, Q6, seed=2, alpha=True, beams=True, scale=16.0, aggregation="mean")
    # a strongly negative exponent (seen after training): the small-n entries of its table saturate
    l20 = model.get_layer("lineq_2to0")
    l20.alphas.assign(np.full(l20.alphas.shape, -6.5, np.float32))
    hls_model, plan = export_model(model, tmp_path / "prj6")
    first = plan["layers"][0]
    # the beams (E = 1) do not fit the input format [-1, 1): the momentum array is widened to hold them
    assert first.n == 22 and first.out_type != first.types["input"]
    compile_model(hls_model)
    p4 = stress_jets(np.random.default_rng(3), model, 800)
    check_bit_exact(model, hls_model, plan, p4)


def test_cli_n80_simulated_jets(sim_dir, tmp_path, capsys):
    """The CLI on a saved 8-bit c2 model at N = 80, verified on simulated jets: 0 differing jets."""
    from qpelican.cli.main import main

    model = nano(80, Q8, seed=4)
    run = tmp_path / "run"
    run.mkdir()
    model.save(run / "model.keras")
    out = tmp_path / "prj80"
    assert main(["export-hls", str(run), "--out", str(out), "--verify", str(sim_dir / "train.h5"), "--jets", "300",
                 "--reuse", "2", "--backend", "Vivado"]) == 0
    ver = json.loads((out / "verify.json").read_text())
    rep = json.loads((out / "report.json").read_text())
    assert ver["jets"] == 300 and ver["differing_jets"] == 0 and ver["max_diff_lsb"] == 0
    assert "auc_hls" in ver and ver["auc_hls"] == ver["auc_keras"]
    assert rep["settings"]["reuse"] == 2 and rep["settings"]["backend"] == "Vivado"
    assert rep["totals"]["multipliers"] > 0 and rep["cost_model"].get("bops", 0) > 0
    assert rep["totals"]["bops"] + rep["cost_model"]["bops_difference"] == rep["cost_model"]["bops"]
    assert "0 of 300 jets differ" in capsys.readouterr().out


def test_folded_batchnorm_bias_tables_bit_exact(tmp_path):
    """A quantized nano model with batchnorm has its BatchNorms folded into the LinEq layers: biases
    tabulated over the multiplicity n, far outside the bias format. The firmware reads b[n][h] and
    bd[n][h] (config flag bias_tables) from types fitted to the entries, and the C simulation equals
    Keras bit for bit."""
    model = folded(8, Q8, seed=2, shift_seed=3, alpha=True)
    hls_model, plan = export_model(model, tmp_path / "prj")
    check_bias_tables(model, plan)
    assert plan["keras_exact"]
    for name in ("lineq_2to2", "lineq_2to0"):  # the fitted type holds every entry; the bias format does not
        lp = plan["by_name"][name]
        assert lp.weights["b"][1] == lp.types["bias_t"].ap_type() != model.get_layer(name).bias_format.ap_type()
    params = (tmp_path / "prj/firmware/parameters.h").read_text()
    assert params.count("static const bool bias_tables = true;") == 2
    compile_model(hls_model)
    check_bit_exact(model, hls_model, plan, stress_jets(np.random.default_rng(4), model, 400))


def test_folded_batchnorm_inventory_and_recipe_cost():
    """The bias tables are read once per output channel (two tables in 2->2, one in 2->0), counted by the
    inventory; the recipe's cost does not depend on the folded shift (it has no grid), the firmware's
    exact widths do."""
    from qpelican.hw.cost import model_cost
    from qpelican.hw.inventory import EXACT, from_plan
    from qpelican.hw.plan import make_plan

    model = folded(5, Q8, seed=1, shift_seed=2, shifts=(0.0, 0.0))
    before = model_cost(model)
    exact_before = from_plan(make_plan(model), EXACT)
    for layer, s in ((model.get_layer("lineq_2to2"), 40.0), (model.get_layer("lineq_2to0"), -6.0)):
        layer.shift.assign(np.full(layer.shift.shape, s, np.float32))
    plan = make_plan(model)
    check_bias_tables(model, plan, factor=8.0)
    exact = from_plan(plan, EXACT)
    assert model_cost(model) == before
    lookups = {(layer, t.what): t for layer, t in exact.lookups if "bias table" in t.what}
    assert {k: (t.count, t.entries) for k, t in lookups.items()} == {
        ("lineq_2to2", "bias table b[n]"): (2, 6), ("lineq_2to2", "diagonal bias table bd[n]"): (2, 6),
        ("lineq_2to0", "bias table b[n]"): (1, 6)}
    assert lookups["lineq_2to2", "bias table b[n]"].width == plan["by_name"]["lineq_2to2"].types["bias_t"].width > 8
    accum = {s.layer: max(a.width for a in s.adders if "scalar terms" in a.what or "output sum" in a.what)
             for s in exact.stages if s.kind in ("2to2", "2to0")}
    accum_before = {s.layer: max(a.width for a in s.adders if "scalar terms" in a.what or "output sum" in a.what)
                    for s in exact_before.stages if s.kind in ("2to2", "2to0")}
    assert all(accum[k] > accum_before[k] for k in accum), (accum, accum_before)


@pytest.mark.parametrize("cfg, cause, fix", [
    ({"architecture": "pelican", "quantization": Q8}, "full PELICAN", "use a quantized nano recipe"),
    # a float model's BatchNorm is refused; a quantized recipe's is folded (test_folded_batchnorm_*)
    ({"batchnorm": True, "quantization": {k: "float" for k in Q8}}, "MaskedBatchNorm", "folds it into"),
    ({"quantization": {**Q8, "aggregates": "float"}}, "aggregates is float", "set quantization.aggregates"),
])
def test_unsupported_models_fail_clearly(tmp_path, cfg, cause, fix):
    """Each refusal names its cause and the fix for that cause."""
    model = build_model({"n_constituents": 8, "quantization": Q8, **cfg})
    with pytest.raises(ExportError, match=cause) as exc:
        export_model(model, tmp_path / "x")
    assert fix in str(exc.value)


def test_cli_unsupported_exit_2(tmp_path, capsys):
    from qpelican.cli.main import main

    model = build_model({"n_constituents": 8, "architecture": "pelican", "quantization": Q8})
    model.save(tmp_path / "full.keras")
    with pytest.raises(SystemExit) as exc:
        main(["export-hls", str(tmp_path / "full.keras"), "--out", str(tmp_path / "x")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "EdgeDense" in err and "Traceback" not in err
