"""RTL back end benchmark: trace + da4ml estimate seconds, Verilog size, Verilator build and jets/s.

    python bench/bench_rtl.py [--n 16 32 80] [--recipe recipes/c2_8bit.yaml] [--set SECTION.KEY=VALUE]
                              [--jets 2000] [--no-verilator-above 32] [--yosys]

The model is the recipe's (default ``recipes/c2_8bit.yaml``, c2 with 18-bit momenta) with
``data.n_constituents`` set to each N (as ``qpelican fit --set data.n_constituents=N``) and random
weights on its quantizer grids (the hardware does not depend on training, only on the widths and on
which coefficients are zero). Jets: ``qpelican.hls.verify.stress_jets``. Prints one line per N.
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import qpelican  # noqa: E402,F401

import numpy as np  # noqa: E402


def recipe_model(recipe, n, sets=(), seed=0):
    """The recipe's quantized model at N constituents (plus ``--set`` overrides), random weights on its grids."""
    from qpelican.config.recipe import load_recipe
    from qpelican.nn.models import build_model, randomize_on_grids

    rec = load_recipe(recipe).with_overrides(sets=[*sets, f"data.n_constituents={n}"])
    model = build_model(rec.to_model_config())
    return randomize_on_grids(model, seed)


def bench_n(recipe, n, jets, verilator, yosys, cutoff, sets=()):
    from da4ml.codegen import VerilogModel

    from qpelican.hls.verify import firmware_inputs, stress_jets
    from qpelican.rtl.exporter import restart
    from qpelican.rtl.synth import synthesize
    from qpelican.rtl.timing import pipeline
    from qpelican.rtl.trace import trace_model
    from qpelican.rtl.verilator import compile_model

    model = recipe_model(recipe, n, sets)
    row = {"n": n}
    t0 = time.perf_counter()
    traced = trace_model(model)
    row["trace_s"] = time.perf_counter() - t0
    row["lut_da4ml"] = int(round(traced.comb.cost))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        pipe, _ = pipeline(traced.comb, cutoff, "dsp")  # the export-rtl default schedule
        vm = VerilogModel(pipe, "qpelican", f"{tmp}/prj")
        vm.write()
        row["write_s"] = time.perf_counter() - t0
        row["ff_da4ml"], row["cycles"] = int(pipe.reg_bits), len(pipe.solutions)
        row["verilog_mb"] = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(f"{tmp}/prj/src")
                                for f in fs if f.endswith(".v")) / 1e6
        if yosys:
            for name, comb in traced.stages.items():
                fresh = restart(comb)
                path = f"{tmp}/{name}"
                VerilogModel(pipeline(fresh, cutoff, "dsp")[0], name, path).write()
                row[f"yosys_{name}"] = synthesize(path, name, dsp=True)
        if verilator:
            t0 = time.perf_counter()
            compile_model(vm)
            row["compile_s"] = time.perf_counter() - t0
            p4 = stress_jets(np.random.default_rng(1), model, jets)
            x = firmware_inputs(model, p4).reshape(len(p4), -1).astype(np.float64)
            vm.predict(x[:10], n_threads=1)
            t0 = time.perf_counter()
            out = vm.predict(x, n_threads=1)
            row["verilator_jets_per_s"] = len(x) / (time.perf_counter() - t0)
            row["differing_vs_interpreter"] = int(np.any(out != traced.predict(x.reshape(len(x), -1, 4)), axis=1).sum())
        shutil.rmtree(f"{tmp}/prj", ignore_errors=True)
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default=os.path.join(os.path.dirname(__file__), "..", "recipes", "c2_8bit.yaml"))
    ap.add_argument("--n", type=int, nargs="+", default=[16, 32, 80])
    ap.add_argument("--jets", type=int, default=2000)
    ap.add_argument("--no-verilator-above", type=int, default=32, help="skip the Verilator build above this N")
    ap.add_argument("--yosys", action="store_true", help="also Yosys (DSP mapping) per stage")
    ap.add_argument("--latency-cutoff", type=float, default=5.0)
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="recipe override, as `qpelican fit --set` (repeatable)")
    a = ap.parse_args()
    for n in a.n:
        r = bench_n(a.recipe, n, a.jets, n <= a.no_verilator_above, a.yosys, a.latency_cutoff, a.set)
        line = (f"N={n:3d}  trace+estimate {r['trace_s']:6.1f} s  da4ml {r['lut_da4ml']:>10,} LUT {r['ff_da4ml']:>9,} FF "
                f"{r['cycles']:3d} cycles  write {r['write_s']:5.1f} s  Verilog {r['verilog_mb']:6.1f} MB")
        if "compile_s" in r:
            line += (f"  Verilator build {r['compile_s']:5.0f} s, {r['verilator_jets_per_s']:>9,.0f} jets/s "
                     f"(one thread), {r['differing_vs_interpreter']} differ from da4ml's interpreter")
        else:
            line += "  Verilator not run (--no-verilator-above)"
        for k, v in r.items():
            if k.startswith("yosys_"):
                line += f"\n       {k[6:]:12s} Yosys {v['lut']:,} LUT {v['ff']:,} FF {v['carry']:,} CARRY {v['dsp']:,} DSP ({v['seconds']:.0f} s)"
        print(line, flush=True)


if __name__ == "__main__":
    main()
