"""Firmware export benchmark: export + g++ compile time and C-simulation throughput (jets/s).

    python bench/bench_export.py [--n 80] [--channels 2] [--jets 2000] [--model RUN_OR_KERAS] [--data H5]

Default model: an 8-bit c2 nanoPELICAN at N = 80 (8-bit coefficients/activations/aggregates,
16-bit momenta and invariants, as recipes/c2_8bit.yaml) with random weights on the quantizer
grids; ``--model`` takes a trained run instead. Jets: qpelican.hls.verify.stress_jets (random
massless jets, padded, full, saturating) or the first ``--jets`` of ``--data``.
Prints export and compile seconds, C-simulation and QKeras jets/s, and the bit-exactness check.
"""
import argparse
import tempfile
import time

import numpy as np

import qpelican  # noqa: F401
from qpelican.hls import compile_model, export_model
from qpelican.hls.verify import compare, read_jets, stress_jets
from qpelican.nn.models import build_model, model_constituents, randomize_on_grids

Q8 = {
    "input": "quantized_bits(16,7,alpha=1)", "invariants": "quantized_bits(16,9,alpha=1)",
    "coefficients": "quantized_bits(8,0,alpha=1)", "biases": "quantized_bits(8,3,alpha=1)",
    "activation": "quantized_relu(8,3)", "aggregates": "quantized_bits(8,1,alpha=1)",
    "output": "quantized_bits(16,6,alpha=1)",
}


def random_model(n, channels, alpha, seed=0):
    model = build_model({"n_constituents": n, "channels": channels, "alpha": alpha, "quantization": Q8})
    return randomize_on_grids(model, seed)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=80)
    ap.add_argument("--channels", type=int, default=2)
    ap.add_argument("--alpha", action="store_true")
    ap.add_argument("--jets", type=int, default=2000)
    ap.add_argument("--model", default=None, help="run directory or .keras file (default: random 8-bit c2)")
    ap.add_argument("--data", default=None, help="HDF5 jets (default: synthetic stress jets)")
    ap.add_argument("--reuse", type=int, default=1)
    args = ap.parse_args()

    if args.model:
        from qpelican.hls.exporter import load_for_export

        model, _ = load_for_export(args.model)
    else:
        model = random_model(args.n, args.channels, args.alpha)
    n = model_constituents(model)
    if args.data:
        p4, labels = read_jets(args.data, n, args.jets)
    else:
        p4, labels = stress_jets(np.random.default_rng(1), model, args.jets), None

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        hls_model, plan = export_model(model, f"{tmp}/prj", reuse=args.reuse)
        t_export = time.perf_counter() - t0
        t_compile = compile_model(hls_model)
        # warm-up (loads the shared library) before timing
        compare(model, hls_model, plan, p4[:50])
        ver, _, _ = compare(model, hls_model, plan, p4, labels)

    print(f"model            {model.name}: N={n}, {'trained ' + args.model if args.model else 'random 8-bit weights'}")
    print(f"export           {t_export:.2f} s (hls4ml conversion + project write)")
    print(f"compile          {t_compile:.1f} s (g++ C simulation)")
    print(f"C simulation     {ver['csim_jets_per_s']:.0f} jets/s ({ver['jets']} jets, one core, "
          f"including hls4ml's per-jet ctypes call)")
    print(f"QKeras predict   {ver['jets'] / ver['keras_seconds']:.0f} jets/s")
    print(f"bit-exactness    {ver['differing_jets']} of {ver['jets']} jets differ, max {ver['max_diff_lsb']:g} LSB")
    if "auc_hls" in ver:
        print(f"AUC              QKeras {ver['auc_keras']:.5f}  firmware {ver['auc_hls']:.5f}")


if __name__ == "__main__":
    main()
