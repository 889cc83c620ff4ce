"""RTL back end (da4ml -> Verilog): bit-exact against QKeras, convergent rounding, Yosys counts, refusals, CLI.

One Verilator build (about 20-40 s) serves the CLI test and the stress test; two small Yosys runs.
"""
import json

import numpy as np
import pytest
import tensorflow as tf
from da4ml.trace import FixedVariableArrayInput, HWConfig, comb_trace
from da4ml.types import minimal_kif

import qpelican  # noqa: F401  (selects tf-keras)
from qpelican.core.errors import ExportError
from qpelican.hls.verify import firmware_inputs, stress_jets
from qpelican.nn.models import build_model, randomize_on_grids
from qpelican.nn.quant import FixedFormat, quantize
from qpelican.hw.inventory import from_plan
from qpelican.rtl.exporter import export_rtl, inventory_check, restart, rtl_estimate
from qpelican.rtl.rounding import quantize_conv
from qpelican.rtl.synth import synthesize
from qpelican.rtl.timing import dsp_products, dsp_schedule, fabric_lut_estimate, is_dsp_product, pipeline
from qpelican.rtl.trace import DSP_A_BITS, DSP_B_BITS, trace_model
from firmware_models import Q6, Q8, check_bias_tables, folded, nano

# Level-1 candidates with the trigger's 14-bit pT: pT_i pT_j (28 bits) x R_ij (21 bits) is wider than a DSP48E2
QL1 = {**Q8, "input": "quantized_bits(14,12,keep_negative=False,alpha=1)", "invariants": "quantized_bits(16,12,alpha=1)"}


def l1_model(n, seed):
    return randomize_on_grids(build_model({"format": "l1", "n_constituents": n, "quantization": QL1}), seed,
                              bias_scale=0.5)

def grid_jets(rng, model, jets):
    """Momenta on the input grid: half small values (rounding ties downstream), half over the whole
    range (saturating invariants and aggregates), random multiplicities, E >= 0."""
    from qpelican.hls.verify import momentum_layer

    layer = momentum_layer(model)
    fmt, n = layer.input_format, int(model.inputs[0].shape[1])
    lo, hi = round(fmt.min / fmt.lsb), round(fmt.max / fmt.lsb)
    small = rng.integers(-6, 7, (jets // 2, n, 4))
    full = rng.integers(lo, hi + 1, (jets - jets // 2, n, 4))
    steps = np.concatenate([small, full]).astype(np.float64)
    steps[..., 0] = np.abs(steps[..., 0])
    mult = rng.integers(0, n + 1, jets)
    steps[np.arange(n)[None, :] >= mult[:, None]] = 0
    return (steps * fmt.lsb * layer.scale).astype(np.float32)


def assert_bit_exact(model, predict, p4):
    ref = model.predict(p4, verbose=0).reshape(len(p4), -1).astype(np.float64)
    out = predict(firmware_inputs(model, p4))
    assert len(np.unique(ref)) > 10, "degenerate test model: outputs do not vary"
    bad = np.nonzero(np.any(out != ref, axis=1))[0]
    assert bad.size == 0, f"{bad.size} of {len(p4)} jets differ; first {bad[:5]}: keras {ref[bad[:5]].ravel()} " \
                          f"rtl {out[bad[:5]].ravel()}"


@pytest.mark.parametrize("k, i, f", [(1, 3, 2), (0, 2, 1), (1, 2, -1), (1, 4, 5), (0, 7, 0)])
@pytest.mark.parametrize("signed_in", [True, False])
def test_convergent_rounding_matches_tf_round(k, i, f, signed_in):
    """Every value of a 12-bit grid (every tie included) rounds as tf.round / QKeras: half to even, saturate."""
    inp = FixedVariableArrayInput(1, hwconf=HWConfig(1, -1, -1))
    x = inp.quantize(int(signed_in), 5, 6)
    comb = comb_trace(inp, [quantize_conv(x._vars[0], k, i, f)])
    vals = np.arange(-(2 ** 11) if signed_in else 0, 2 ** 11) / 64.0
    out = comb.predict(vals.reshape(-1, 1))[:, 0]
    sc = 2.0 ** f
    ties = vals[(vals * sc) % 1 == 0.5]
    assert ties.size > 10
    ref = np.clip(tf.round(vals * sc).numpy() / sc, -k * 2.0 ** i, 2.0 ** i - 1 / sc)
    np.testing.assert_array_equal(out, ref)
    # and as the model's own quantizer (QKeras semantics) wherever the format is one QKeras has
    if f >= 0 and i >= 0:
        fmt = FixedFormat(k + i + f, i, bool(k))
        np.testing.assert_array_equal(out, quantize(tf.constant(vals), fmt).numpy())
    half_up = np.clip(np.floor(vals * sc + 0.5) / sc, -k * 2.0 ** i, 2.0 ** i - 1 / sc)
    assert np.any(half_up != out), "no tie where half-up and half-to-even differ: the test cannot fail"


@pytest.mark.parametrize("n, q, kw", [
    (8, Q8, {}),  # sum aggregation: constant normalisers (shift-and-add)
    (7, Q8, {"alpha": True}),  # normaliser lookup tables, variable products
    (6, Q6, {"alpha": True, "beams": True, "scale": 16.0, "aggregation": "mean"}),  # beams, float output
    (9, Q8, {"alpha": True, "symmetric": True}),  # one z per unordered pair, the readout doubles them
])
def test_trace_bit_exact_ties_and_saturation(n, q, kw):
    """da4ml's graph (its int64 interpreter) equals QKeras on grid jets (ties, saturation) and stress jets."""
    model = nano(n, q, seed=n, **kw)
    traced = trace_model(model)
    if kw.get("symmetric"):
        assert traced.plan["by_name"]["lineq_2to2"].params["symmetric"]
        assert traced.counts["lineq2to2"]["output quantizers"] == 2 * n * (n + 1) // 2
    rng = np.random.default_rng(n)
    p4 = np.concatenate([grid_jets(rng, model, 1500), stress_jets(rng, model, 500)])
    assert_bit_exact(model, traced.predict, p4)
    assert set(traced.stages) == {"invariants", "lineq2to2", "lineq2to0"}


@pytest.mark.parametrize("symmetric", [False, True])
def test_inventory_hand_count_and_cross_check(symmetric):
    """N = 4, C = 2: 4 x 6 momentum products; the trace's products equal qpelican.hw.inventory's."""
    model = nano(4, Q8, seed=3, alpha=True, symmetric=symmetric)
    chk = inventory_check(trace_model(model))
    inv = chk["stages"]
    assert inv["invariants"]["rtl_variable_products"] == 4 * 6 == inv["invariants"]["inventory_multipliers"]
    for name in ("lineq2to2", "lineq2to0"):
        c = inv[name]
        assert c["rtl_variable_products"] - c["rtl_split_partial_products"] + c["rtl_constant_products"] + \
            c["rtl_zero_coefficients"] == c["inventory_multipliers"], (name, c)
    # 2->2 with alpha: 3 vector aggregates x 4 particles + 2 scalar ones are table products
    c = inv["lineq2to2"]
    # S_j and S_i share their table in a symmetric layer: one vector aggregate fewer
    assert c["rtl_variable_products"] - c["rtl_split_partial_products"] == (2 if symmetric else 3) * 4 + 2
    assert not any(d.startswith("lineq2to2: ") and "products traced" in d for d in chk["differences"])


def test_symmetric_layer_halves_the_pair_logic():
    """model.symmetric: the same model with S_i and S_j tied traces about half the 2->2 and readout
    operations (one pre-activation per unordered pair) and the inventory counts the same saving."""
    luts, adders = {}, {}
    for sym in (False, True):
        model = nano(12, Q8, seed=5, alpha=True, symmetric=sym)
        traced = trace_model(model)
        luts[sym] = {k: fabric_lut_estimate(v) for k, v in traced.stages.items()}
        inv = from_plan(traced.plan)
        adders[sym] = {a.what: a.count for st in inv.stages for a in st.adders if "pairs" in a.what}
    for stage in ("lineq2to2", "lineq2to0"):
        assert luts[True][stage] < 0.65 * luts[False][stage], (stage, luts)
    # C_in = 1, C = 2: z_ij and z_ji (4 additions per pair i < j and channel) become one z_ij (2); the
    # total over 144 pairs (143 additions) one over the 78 pairs i <= j (77)
    assert adders[False]["z_ij, z_ji = w0 d_ij + row + col (pairs i<j)"] == 2 * 66 * 4
    assert adders[True]["z_ij = z_ji = w0 d_ij + row + col (pairs i<j)"] == 2 * 66 * 2
    assert (adders[False]["total sum over pairs"], adders[True]["total sum over pairs i <= j"]) == (2 * 143, 2 * 77)
    assert luts[True]["invariants"] == luts[False]["invariants"]


@pytest.mark.parametrize("fmt", ["p4", "l1"])
def test_folded_batchnorm_bias_tables_traced_bit_exact(fmt):
    """A folded BatchNorm's bias tables over the multiplicity n (far outside the bias format) are traced
    as one lookup per output channel and table: da4ml's interpreter equals QKeras bit for bit, the
    lookups are the inventory's, and the same trace with the tables saturated to the bias format or
    read at a fixed n differs (the jets can tell)."""
    from qpelican.hw.plan import make_plan

    if fmt == "p4":
        model = folded(8, Q8, seed=2, shift_seed=3, alpha=True)
    else:
        model = folded(6, QL1, seed=3, shift_seed=0, shifts=(200.0, 5.0), format="l1", alpha=True)  # entries in the hundreds
    plan = make_plan(model)
    check_bias_tables(model, plan)
    assert plan["keras_exact"]
    traced = trace_model(model, plan)
    rng = np.random.default_rng(9)
    x = stress_jets(rng, model, 600)
    if fmt == "p4":
        x = np.concatenate([grid_jets(rng, model, 600), x])
    assert_bit_exact(model, traced.predict, x)
    chk = inventory_check(traced)
    for stage, layer, tables in (("lineq2to2", "lineq_2to2", 2), ("lineq2to0", "lineq_2to0", 1)):
        co = model.get_layer(layer).channels
        inv = sum(t.count for lay, t in from_plan(traced.plan).lookups if lay == layer and "bias table" in t.what)
        assert chk["stages"][stage]["rtl_trace_counts"]["bias table lookups"] == inv == tables * co
    assert chk["stages"]["lineq2to2"]["rtl_lookups"] == chk["stages"]["lineq2to2"]["inventory_lookups"]
    assert not any("products traced" in d for d in chk["differences"])
    ref = model.predict(x, verbose=0).reshape(len(x), -1).astype(np.float64)
    for wrong in ("saturated", "fixed n"):
        bad = make_plan(model)
        for lp in (bad["by_name"]["lineq_2to2"], bad["by_name"]["lineq_2to0"]):
            fmt_b, rows = model.get_layer(lp.name).bias_format, lp.n + 1
            for key in [k for k in ("b", "bd") if k in lp.weights]:
                t = lp.weights[key][0].reshape(rows, -1)
                t = np.clip(t, fmt_b.min, fmt_b.max) if wrong == "saturated" else np.broadcast_to(t[-1], t.shape)
                lp.weights[key] = (t.reshape(-1), lp.weights[key][1])
        out = trace_model(model, bad).predict(firmware_inputs(model, x))
        assert np.any(out != ref), wrong


def _constant_bias_plan(model):
    """The firmware plan with every bias table read at n = N: constant biases, the same graph otherwise."""
    from qpelican.hw.plan import make_plan

    plan = make_plan(model)
    for lp in (plan["by_name"]["lineq_2to2"], plan["by_name"]["lineq_2to0"]):
        for key in [k for k in ("b", "bd") if k in lp.weights]:
            t = lp.weights[key][0].reshape(lp.n + 1, -1)
            lp.weights[key] = (np.broadcast_to(t[-1], t.shape).reshape(-1), lp.weights[key][1])
    return plan


@pytest.mark.parametrize("fmt, seed", [("p4", 2), ("p4", 3), ("p4", 5), ("l1", 2), ("l1", 3), ("l1", 5)])
def test_folded_batchnorm_bias_lookups_add_no_latency(fmt, seed):
    """A looked-up bias b(n) is ready since the invariants stage: the trace adds it where the sum is early
    (the 2->2 column and diagonal terms), not after the T aggregates, so LinEq 2->2 pipelines as deep as
    with constant biases (added without delay). The flagship's shape (p4, alpha) and l1_c2_16's (l1,
    constant normalisers); before, the lookups added a unit to the critical path of each."""
    from qpelican.hw.plan import make_plan

    if fmt == "p4":
        model = folded(8, Q8, seed=seed, shift_seed=3, alpha=True)
    else:
        model = folded(6, QL1, seed=seed, shift_seed=0, shifts=(200.0, 5.0), format="l1", alpha=False)

    def depth(plan):
        sched, _ = dsp_schedule(restart(trace_model(model, plan).stages["lineq2to2"]), 5)
        return max(sched.ops[i].latency for i in sched.out_idxs)

    assert depth(make_plan(model)) == depth(_constant_bias_plan(model))


@pytest.mark.parametrize("cfg, match", [
    ({"quantization": {**Q8, "aggregates": "float"}}, "aggregates is float"),
    ({"quantization": {k: "float" for k in Q8}}, "float"),
    ({"quantization": {k: "float" for k in Q8}, "batchnorm": True}, "MaskedBatchNorm"),  # quantized: folded
])
def test_unsupported_models_refused(tmp_path, cfg, match):
    model = build_model({"n_constituents": 6, **cfg})
    with pytest.raises(ExportError, match=match):
        export_rtl(model, tmp_path / "x", yosys=False, yosys_nodsp=False)
    with pytest.raises(ExportError, match=match):
        rtl_estimate(model)
    assert not (tmp_path / "x").exists()


def test_level1_front_end_traced():
    """The Level-1 candidate front end is traced too (its bit-exactness: tests/test_l1.py)."""
    q = {**Q8, "input": "quantized_bits(14,12,keep_negative=False,alpha=1)",
         "invariants": "quantized_bits(20,14,alpha=1)"}
    model = build_model({"format": "l1", "n_constituents": 6, "quantization": q})
    est = rtl_estimate(model)
    assert est["luts"] > 0 and est["dsps"] > 0  # pT_i pT_j and the squares go to DSP48E2


def test_lut_estimate_grows_with_width():
    narrow = {**Q8, "input": "quantized_bits(6,3,alpha=1)"}
    wide = {**Q8, "input": "quantized_bits(12,3,alpha=1)"}
    a, b = (rtl_estimate(nano(5, q, seed=1))["luts"] for q in (narrow, wide))
    assert 0 < a < b


def test_yosys_counts_grow_with_width(tmp_path):
    """Yosys (LUTs only) on the invariants stage of a 3-particle model: non-zero LUTs, more when wider."""
    from qpelican.rtl.exporter import _write

    luts = []
    for bits in (4, 8):
        model = nano(3, {**Q8, "input": f"quantized_bits({bits},3,alpha=1)"}, seed=1)
        comb = restart(trace_model(model).stages["invariants"])
        path = tmp_path / f"inv{bits}"
        _write(comb, "inv", path, 5.0, "xcvu13p-flga2577-2-e")
        res = synthesize(path, "inv", dsp=False)
        assert res["dsp"] == 0 and res["lut"] > 0
        luts.append(res["lut"])
    assert luts[1] > luts[0], luts


def _signed_bits(qint):
    _, i, f = minimal_kif(qint)
    return int(i) + int(f) + 1


def test_l1_products_fit_dsp48e2_and_fill_one_stage_each():
    """Level-1 invariants under the dsp schedule: every product fits one DSP48E2 (27 x 18 bits), 5 per
    pair (deta^2, dphi^2, pT_i pT_j and (pT_i pT_j) R_ij in two pieces); each fills exactly one stage
    with registered operands (the squares' subtraction in the pre-adder); P_ij beside R_ij leaves two
    product stages on the critical path: 4 cycles at cutoff 5 (pT_i R_ij first would need 5)."""
    n, cutoff = 4, 5.0
    traced = trace_model(l1_model(n, seed=2))
    comb = restart(traced.stages["invariants"])
    sched, max_op = dsp_schedule(comb, cutoff)
    prods = [op for op in sched.ops if is_dsp_product(sched, op)]
    assert len(prods) == dsp_products(comb) == 5 * n * (n - 1) // 2
    for op in prods:
        a, b = sorted((_signed_bits(sched.ops[op.id0].qint), _signed_bits(sched.ops[op.id1].qint)), reverse=True)
        assert a <= DSP_A_BITS and b <= DSP_B_BITS, (a, b)
        assert op.latency % cutoff == 0
        src = sched.ops[op.id0]
        operands = [sched.ops[i] for i in ((src.id0, src.id1) if op.id0 == op.id1 and src.opcode in (0, 1)
                                           else (op.id0, op.id1))]
        assert all(o.latency <= op.latency - cutoff for o in operands if o.opcode != 5)
    assert max_op <= cutoff
    counts = inventory_check(traced)["stages"]["invariants"]
    assert counts["rtl_split_partial_products"] == n * (n - 1) // 2
    assert len(pipeline(comb, cutoff, "dsp")[0].solutions) == 4
    # da4ml's own model costs a product like a LUT multiplier (one unit per operand bit): many more stages
    assert len(pipeline(comb, cutoff, "lut")[0].solutions) > 6


def test_timing_note_refuses_a_clock_faster_than_the_deepest_stage():
    """The report says when the clock cannot hold a stage: cutoff above the clock, or one operation
    (a LUT-built product under da4ml's own model) deeper than the cutoff."""
    from qpelican.rtl.report import timing_note

    ok = timing_note({"cycles": 10, "latency_ns": 50.0, "max_op_units": 1.0}, 5.0, 5.0, "dsp")
    assert "too fast" not in ok and "DSP48E2" in ok
    assert "use --clock 5" in timing_note({"cycles": 10, "latency_ns": 40.0, "max_op_units": 1.0}, 5.0, 4.0, "dsp")
    assert "use --clock 21" in timing_note({"cycles": 14, "latency_ns": 70.0, "max_op_units": 21.0}, 5.0, 5.0, "lut")


def test_yosys_timeout_skips_the_stage(monkeypatch):
    """A stage on which Yosys times out keeps da4ml's figures and is named as skipped; the export goes on."""
    from qpelican.rtl import exporter
    from qpelican.rtl.synth import YosysTimeout

    def slow(*_, **__):
        raise YosysTimeout("Yosys did not finish within 1 s")

    monkeypatch.setattr(exporter, "synthesize", slow)
    entry = {"da4ml": {"lut": 10, "lut_without_dsp_products": 5, "ff": 3}, "dsp_products": 2}
    logged = []
    exporter._yosys(entry, "unused", "invariants", True, False, 100, logged.append)
    assert "did not finish" in entry["yosys_dsp"]["skipped"] and "skipped" in logged[-1]
    assert exporter.rp.primary(entry) == (5, 3, 2, "da4ml_dsp")


def test_yosys_maps_each_l1_product_to_one_dsp48e2(tmp_path):
    """Yosys with DSP mapping on the Level-1 invariants (N = 3): one DSP48E2 per traced product, and far
    fewer LUTs than da4ml's all-LUT estimate."""
    from qpelican.rtl.exporter import _write

    comb = restart(trace_model(l1_model(3, seed=4)).stages["invariants"])
    pipe, _ = pipeline(comb, 5.0, "dsp")
    _write(pipe, "inv", tmp_path / "inv", 5.0, "xcvu13p-flga2577-2-e")
    res = synthesize(tmp_path / "inv", "inv", dsp=True)
    assert res["dsp"] == dsp_products(comb) == 5 * 3
    assert 0 < res["lut"] < comb.cost / 3, (res["lut"], comb.cost)


@pytest.fixture(scope="module")
def cli_project(sim_dir, tmp_path_factory):
    """`qpelican export-rtl RUN --verify test.h5` on a saved 6-particle model (one Verilator build), with
    folded BatchNorms: its bias tables over n reach beyond the bias format (lookups in the Verilog)."""
    from qpelican.cli.main import main

    tmp = tmp_path_factory.mktemp("rtl")
    model = folded(6, Q8, seed=5, shift_seed=3, alpha=True)
    run = tmp / "run"
    run.mkdir()
    model.save(run / "model.keras")
    out = tmp / "prj"
    rc = main(["export-rtl", str(run), "--out", str(out), "--verify", str(sim_dir), "--jets", "80",
               "--no-yosys", "--no-yosys-nodsp", "--clock", "4", "--latency-cutoff", "3"])
    return model, out, rc


def test_cli_verify_real_jets(cli_project, capsys):
    """Real simulated jets through Verilator: 0 differ, report.json has lut/ff/dsp/latency per stage and total."""
    model, out, rc = cli_project
    assert rc == 0
    ver = json.loads((out / "verify.json").read_text())
    rep = json.loads((out / "report.json").read_text())
    assert ver["jets"] == 80 and ver["differing_jets"] == 0 and ver["max_diff_lsb"] == 0
    assert ver["interpreter_differing_jets"] == 0 and ver["verilator_jets_per_s"] > 0
    assert "auc_rtl" in ver and ver["auc_rtl"] == ver["auc_keras"]
    for entry in [*rep["stages"].values(), rep["total"]]:
        assert entry["lut"] > 0 and entry["ff"] > 0 and entry["latency_ns"] > 0
        assert entry["source"] == "da4ml_dsp" and entry["dsp"] == entry["dsp_products"]
        assert entry["lut"] == entry["da4ml"]["lut_without_dsp_products"]
    inv = rep["stages"]["invariants"]
    assert inv["dsp"] == 4 * 15 and inv["lut"] < inv["da4ml"]["lut"]  # 4 Minkowski products per pair in DSP48E2
    assert rep["settings"]["latency_model"] == "dsp" and "stages x 4 ns" in rep["timing"]
    assert set(rep["stages"]) == {"invariants", "lineq2to2", "lineq2to0"}
    assert rep["total"]["latency_ns"] == 4 * rep["total"]["cycles"]
    assert (out / "src" / "qpelican.v").is_file() and (out / "build_vivado_prj.tcl").is_file()


def test_verilator_bit_exact_ties_and_saturation(cli_project):
    """The compiled Verilog equals QKeras on grid jets (rounding ties, saturation) and stress jets, with
    the bias tables of folded BatchNorms beyond the bias format."""
    from qpelican.hw.plan import make_plan
    from qpelican.rtl.verilator import load_emulator

    model, out, _ = cli_project
    check_bias_tables(model, make_plan(model))
    vm = load_emulator(out)
    rng = np.random.default_rng(11)
    p4 = np.concatenate([grid_jets(rng, model, 3000), stress_jets(rng, model, 1000)])
    assert_bit_exact(model, lambda x: vm.predict(x.reshape(len(x), -1).astype(np.float64), n_threads=1), p4)


def test_cli_refuses_unknown_latency_model_exit_2(tmp_path, capsys):
    from qpelican.cli.main import main

    nano(3, Q8, seed=1).save(tmp_path / "m.keras")
    with pytest.raises(SystemExit) as exc:
        main(["export-rtl", str(tmp_path / "m.keras"), "--out", str(tmp_path / "x"), "--latency-model", "fast"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--latency-model" in err and "dsp" in err and "Traceback" not in err


def test_cli_refuses_batchnorm_exit_2(tmp_path, capsys):
    from qpelican.cli.main import main

    model = build_model({"n_constituents": 6, "batchnorm": True})  # float: a quantized recipe's is folded
    model.save(tmp_path / "bn.keras")
    with pytest.raises(SystemExit) as exc:
        main(["export-rtl", str(tmp_path / "bn.keras"), "--out", str(tmp_path / "x")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "MaskedBatchNorm" in err and "folds it into" in err and "Traceback" not in err
