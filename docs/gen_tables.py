"""Regenerate the measured tables of the docs from the JSON files the measurements wrote.

    python docs/gen_tables.py                      # rewrite every generated block
    python docs/gen_tables.py --check              # exit 1 if a block is out of date (CI, tests)
    python docs/gen_tables.py --record-export DIR  # copy DIR/report.json + DIR/verify.json of a
                                                   # `qpelican export-hls --verify` run into
                                                   # bench/results/export_c2_8bit.json

A generated block in a Markdown file is everything between the two lines

    <!-- BEGIN GENERATED name -->
    <!-- END GENERATED name -->

and is replaced as a whole by ``BLOCKS[name]`` rendered from its JSON source. Write the
interpretation outside the block, and the numbers inside it. Then the table always matches the
JSON, and a new measurement updates it. Only the standard library is used (no TensorFlow).
"""
import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXPORT_RECORD = REPO / "bench" / "results" / "export_c2_8bit.json"


def _load(path):
    return json.loads((REPO / path).read_text())


def _num(x, digits=0):
    return f"{x:,.{digits}f}"


def _type(t):
    return str(t).replace(",AP_RND_CONV,AP_SAT", "")


# ------------------------------------------------------------------------------ renderers
def export_table(path=EXPORT_RECORD.relative_to(REPO)):
    """The firmware figures of one recorded `qpelican export-hls --verify` run."""
    rec = _load(path)
    rep, ver, src = rec["report"], rec.get("verify") or {}, rec.get("source", {})
    s, inp, tot, cost = rep["settings"], rep["input"], rep["totals"], rep.get("cost_model", {})
    lines = [f"Recorded {src.get('date', '?')} on {src.get('machine', '?')} (g++ {src.get('gxx', '?')}, "
             f"hls4ml {src.get('hls4ml', '?')}): {src.get('model', 'model')}; backend {s.get('backend')}, "
             f"part {s.get('part')}, clock {s.get('clock')} ns, reuse {s.get('reuse')}.",
             "",
             "| layer | HLS function | output | output type | exact intermediates |",
             "| --- | --- | --- | --- | --- |"]
    lines.append(f"| (input) | | {inp['constituents']}x4 | `{_type(inp['type'])}` | p / {inp['scale_gev']:g} GeV, "
                 f"LSB {inp['lsb_gev']:g} GeV, range ±{max(abs(v) for v in inp['declared_range_gev']):g} GeV |")
    for ly in rep["layers"]:
        inter = ", ".join(f"{k} `{_type(v['type'])}`" for k, v in ly.get("types", {}).items()
                          if k.endswith("_t") and not k.startswith("table") and k != "n_t")
        shape = "x".join(str(d) for d in ly["output"]["shape"])
        lines.append(f"| {ly['name']} | `{ly['hls_function']}` | {shape} | `{_type(ly['output']['type'])}` | {inter} |")
    mults = [o for o in rep.get("operations", []) if o["kind"] == "mult"]
    big = max(mults, key=lambda o: o["count"] * o["widths"][0] * o["widths"][1]) if mults else None
    lines += ["", "| | |", "| --- | --- |",
              f"| operators per jet (report.json) | {_num(tot['multipliers'])} multipliers, {_num(tot['adders'])} "
              f"adders, {tot['bops'] / 1e6:.2f} M BOPs |"]
    if big:
        lines.append(f"| largest operator | {_num(big['count'])} products {big['widths'][0]}x{big['widths'][1]} bits "
                     f"({big['op']}, {big['layer']}) |")
    if "bops" in cost:
        lines.append(f"| cost model (`qpelican.hw.cost`) | {cost['bops'] / 1e6:.2f} M BOPs; estimates "
                     f"~{_num(cost['dsp_estimate'])} DSP, ~{_num(cost['lut_estimate'])} LUT at reuse {cost.get('reuse', 1)} |")
    if cost.get("differences"):
        ops = "; ".join(f"{d['op']} ({d['layer']}): {d['width'][0]} vs {d['width'][1]} bits"
                        for d in cost["differences"])
        lines.append(f"| report vs cost model | {_num(cost.get('bops_difference', 0))} BOPs: the firmware sizes these "
                     f"adders for the trained weights, the cost model for any weights on the recipe's grids "
                     f"(firmware vs cost model): {ops} |")
    lines.append(f"| QKeras reference exact (float64 suffices) | {'yes' if rep.get('keras_reference_exact') else 'no'} |")
    if ver:
        lines.append(f"| differing jets / outputs | **{ver['differing_jets']} / {ver['differing_outputs']}** of "
                     f"{_num(ver['jets'])} (max difference {ver['max_diff_lsb']:g} LSB of the output) |")
        if "auc_hls" in ver:
            lines.append(f"| AUC QKeras / C simulation | {ver['auc_keras']:.5f} / {ver['auc_hls']:.5f} |")
        sat = ver.get("input_saturation", {})
        if "constituents" in sat:
            lines.append(f"| saturated input constituents | {sat['constituents']} |")
    if "export_seconds" in s:
        lines.append(f"| export (conversion + write) | {s['export_seconds']:.1f} s |")
    if "compile_seconds" in s:
        lines.append(f"| C-simulation compile (g++) | {s['compile_seconds']:.1f} s |")
    if ver.get("csim_jets_per_s"):
        lines.append(f"| C-simulation throughput | {_num(ver['csim_jets_per_s'])} jets/s (one core, hls4ml's "
                     f"per-jet ctypes call included) |")
    if ver.get("keras_seconds"):
        lines.append(f"| QKeras predict (exact dtypes) | {_num(ver['jets'] / ver['keras_seconds'])} jets/s |")
    if src.get("note"):
        lines += ["", src["note"]]
    return "\n".join(lines)


def tune_front(path):
    """The Pareto front of one recorded `qpelican tune` search (its pareto.json)."""
    d = _load(path)
    lines = [f"`{path}`: oracle {d['oracle']}, {d['epochs_per_trial']} QAT epochs per trial, trials "
             + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in d["trials"].items())
             + (f", budget {_num(d['max_cost'])} BOPs" if d.get("max_cost") else "")
             + f", cost weight {d['cost_weight']:g}.",
             "",
             "| point | val AUC | test AUC | 1/eps_B 0.3 (test) | BOPs | N | in | inv | coef | bias | act | agg | out |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for p in d["front"]:
        w = p["widths"]
        cols = " | ".join(f"{w[k][0]},{w[k][1]}" for k in ("input", "invariants", "coefficients", "biases",
                                                           "activation", "aggregates", "output"))
        lines.append(f"| {p['point']} | {p['val_auc']:.4f} | {p['test_auc']:.4f} | {p['test_rej30']:.1f} | "
                     f"{_num(p['bops'])} | {p['n_constituents']} | {cols} |")
    for r in d.get("float_reference", []):
        lines.append(f"| float C={r['channels']} ({r['epochs']} epochs) | {r['val_auc']:.4f} | {r['test_auc']:.4f} | "
                     f"{r['test_rej30']:.1f} | {_num(r['bops'])} | | | | | | | | |")
    lines += ["", "Widths are (bits, integer bits) of each tensor's quantizer; the float row is the shared "
              "pre-training the trials fine-tune."]
    return "\n".join(lines)


def tune_bench(path):
    """The figures of `bench/bench_tune.py --json FILE`."""
    d = _load(path)
    return "\n".join([
        "| recipe | N | train / val jets | epochs per trial | trials | wall | trials per hour | median trial |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| `{d['recipe']}` | {d['n_constituents']} | {_num(d['train_jets'])} / {_num(d['val_jets'])} | "
        f"{d['epochs_per_trial']} | {d['trials']} | {d['wall_seconds']:.0f} s | **{d['trials_per_hour']:.0f}** | "
        f"{d['median_trial_seconds']:.0f} s |",
        "",
        f"Machine: {d.get('machine', '?')}. {d.get('note', '')}".rstrip(),
    ])


# name -> (Markdown file, renderer)
BLOCKS = {
    "export-c2_8bit": ("export/README.md", export_table),
    "tune-front-search1": ("docs/tuning.md", lambda: tune_front("docs/tuning/search1_pareto.json")),
    "tune-front-search3": ("docs/tuning.md", lambda: tune_front("docs/tuning/search3_pareto.json")),
    "tune-bench": ("docs/tuning.md", lambda: tune_bench("docs/tuning/bench_tune.json")),
}


def _block_re(name):
    return re.compile(rf"(<!-- BEGIN GENERATED {re.escape(name)} -->\n)(.*?)(<!-- END GENERATED {re.escape(name)} -->)",
                      re.S)


def regenerate(check=False):
    """Rewrite (or, with ``check``, compare) every block; returns the names of out-of-date blocks."""
    texts, stale = {}, []
    for name, (doc, render) in BLOCKS.items():
        text = texts.setdefault(doc, (REPO / doc).read_text())
        m = _block_re(name).search(text)
        if m is None:
            raise SystemExit(f"{doc} has no block '{name}' (<!-- BEGIN GENERATED {name} --> ... "
                             f"<!-- END GENERATED {name} -->)")
        body = render().rstrip("\n") + "\n"
        if m.group(2) != body:
            stale.append(f"{doc}: {name}")
            texts[doc] = text[:m.start(2)] + body + text[m.end(2):]
    if not check:
        for doc, text in texts.items():
            if (REPO / doc).read_text() != text:
                (REPO / doc).write_text(text)
                print(f"wrote {doc}")
    return stale


def _tool_version(argv):
    try:
        return subprocess.run(argv, capture_output=True, text=True).stdout.splitlines()[0].split()[-1]
    except (OSError, IndexError):
        return "?"


def record_export(out_dir, model_note, note):
    """bench/results/export_c2_8bit.json from an export-hls project folder."""
    out_dir = Path(out_dir)
    report = json.loads((out_dir / "report.json").read_text())
    verify_path = out_dir / "verify.json"
    verify = json.loads(verify_path.read_text()) if verify_path.exists() else None
    report["settings"].pop("out", None)  # a local path
    try:
        from importlib.metadata import version

        hls4ml_version = version("hls4ml")
    except Exception:
        hls4ml_version = "?"
    rec = {"source": {"date": datetime.date.today().isoformat(),
                      "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                      "gxx": _tool_version(["g++", "-dumpfullversion"]), "hls4ml": hls4ml_version,
                      "model": model_note, "note": note},
           "report": report, "verify": verify}
    EXPORT_RECORD.parent.mkdir(parents=True, exist_ok=True)
    EXPORT_RECORD.write_text(json.dumps(rec, indent=1) + "\n")
    print(f"wrote {EXPORT_RECORD.relative_to(REPO)}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only report out-of-date blocks (exit 1 if any)")
    ap.add_argument("--record-export", metavar="DIR", help="record an export-hls project (report.json, verify.json)")
    ap.add_argument("--model-note", default="recipes/c2_8bit.yaml model", help="what model was exported (with --record-export)")
    ap.add_argument("--note", default="", help="a sentence printed under the table (with --record-export)")
    args = ap.parse_args(argv)
    if args.record_export:
        record_export(args.record_export, args.model_note, args.note)
    stale = regenerate(check=args.check)
    if args.check and stale:
        print("out of date (run python docs/gen_tables.py):\n  " + "\n  ".join(stale))
        return 1
    if not stale:
        print("generated blocks are up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
