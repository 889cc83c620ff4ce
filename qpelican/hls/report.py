"""Firmware report without Vivado: operators and their widths, BOPs, arrays, pragmas; synthesis parsing.

Operator counts follow the dataflow of ``export/nnet_qp_*.h`` exactly (what the C++ computes
per jet, fully unrolled); widths are the exact operand and accumulator widths of the plan.
BOPs of a product a x b = a*b, of an addition = result width (as :mod:`qpelican.hw.cost`, whose
own estimate, the tuner's cost axis, is included under ``cost_model``).
"""
import os
import shutil

from qpelican.hw.fixed import Fx
from qpelican.hw.plan import type_str

PRAGMAS = {
    "MomentumInput": ["INLINE", "UNROLL (copy; beams are constants)"],
    "ParticleMask": ["INLINE", "UNROLL (one comparison E_i != 0 per particle)"],
    "LorentzInvariants": ["PIPELINE II=reuse_factor", "ALLOCATION mul limit=multiplier_limit",
                          "ARRAY_PARTITION complete (mask)", "UNROLL (pairs i<j)"],
    "LinEq2to2": ["PIPELINE II=reuse_factor", "ALLOCATION mul limit=multiplier_limit",
                  "function_instantiate (w, b, bd)", "ARRAY_PARTITION complete (weights, S, T, aggregates, terms)",
                  "UNROLL (all loops)"],
    "LinEq2to0": ["PIPELINE II=reuse_factor", "ALLOCATION mul limit=multiplier_limit", "function_instantiate (w, b)",
                  "ARRAY_PARTITION complete (weights, aggregates)", "UNROLL (all loops)"],
}
TOP_PRAGMAS = ["PIPELINE (top function, io_parallel)", "ARRAY_RESHAPE complete (inputs/outputs)",
               "ARRAY_PARTITION complete (layer outputs)", "INTERFACE ap_vld"]


def _w(t):
    if isinstance(t, Fx):
        return t.width
    import re

    m = re.search(r"<(\d+)", str(t))
    return int(m.group(1)) if m else 1


def operations(plan):
    """[{layer, op, kind: mult|add, count, widths|width}] per jet, from the plan's exact types."""
    ops = []

    def mult(layer, what, count, a, b):
        if count:
            ops.append({"layer": layer, "op": what, "kind": "mult", "count": int(count), "widths": [int(a), int(b)]})

    def add(layer, what, count, width):
        if count:
            ops.append({"layer": layer, "op": what, "kind": "add", "count": int(count), "width": int(width)})

    for lp in plan["layers"]:
        n, t, p = lp.n, lp.types, lp.params
        if lp.keras_class == "LorentzInvariants":
            pairs = n * (n - 1) // 2 if p["zero_diagonal"] else n * (n + 1) // 2
            wp = _w(plan["layers"][0].out_type)
            mult(lp.name, "p_i,mu * p_j,mu (pairs i<j)", 4 * pairs, wp, wp)
            add(lp.name, "Minkowski sum (3 per pair)", 3 * pairs, _w(t["dot_t"]))
        elif lp.keras_class == "LinEq2to2":
            ci, co, al = p["n_in"], p["n_out"], p["alias"]
            add(lp.name, "column sums S_j (= row sums)", ci * n * max(n - 2, 0), _w(t["sum_t"]))
            add(lp.name, "total T = sum_j S_j", ci * (n - 1), _w(t["total_t"]))
            for k in range(5):
                if al[k] == k:
                    src = "S_j" if k < 3 else "T"
                    cnt = ci * (n if k < 3 else 1)
                    mult(lp.name, f"{src} x table{k}[n] -> aggregate", cnt, _w(t["sum_t" if k < 3 else "total_t"]),
                         _w(t[f"table{k}_t"]))
            wc, wa, wacc = _w(lp.weights["w"][1]), _w(t["agg_t"]), _w(t["accum_t"])
            pairs = n * (n - 1) // 2
            mult(lp.name, "w0 * d_ij (once per unordered pair)", ci * co * pairs, wc, _w(t["x"]))
            mult(lp.name, "row/column/diagonal coefficients", ci * co * 3 * n, wc, wa)
            mult(lp.name, "scalar coefficients", ci * co * 2, wc, wa)
            add(lp.name, "per-particle terms (row, column, diagonal)", co * (3 * n * ci + 2 * ci), wacc)
            add(lp.name, "z_ij = w0 d_ij + row_i + col_j (+ diag_i)", co * (4 * pairs + 2 * n + (ci - 1) * pairs), wacc)
        elif lp.keras_class == "LinEq2to0":
            ci, co = p["n_in"], p["n_out"]
            add(lp.name, "total sum over pairs", ci * (n * n - 1), _w(t["total_t"]))
            add(lp.name, "trace", ci * (n - 1), _w(t["trace_t"]))
            mult(lp.name, "total x table0[n]", ci, _w(t["total_t"]), _w(t["table0_t"]))
            mult(lp.name, "trace x table1[n]", ci, _w(t["trace_t"]), _w(t["table1_t"]))
            mult(lp.name, "output coefficients", 2 * ci * co, _w(lp.weights["w"][1]), _w(t["agg_t"]))
            add(lp.name, "output sum", 2 * ci * co, _w(t["accum_t"]))
    return ops


def _layer_entry(lp, hls_layer=None):
    size = 1
    for d in lp.out_shape:
        size *= int(d)
    entry = {
        "name": lp.name,
        "keras_class": lp.keras_class,
        "hls_function": {"MomentumInput": "qp_momentum_input", "ParticleMask": "qp_particle_mask",
                         "LorentzInvariants": "qp_lorentz_invariants", "LinEq2to2": "qp_lineq2to2_nano",
                         "LinEq2to0": "qp_lineq2to0"}[lp.keras_class],
        "output": {"shape": list(lp.out_shape), "elements": size, "type": lp.out_type, "bits": size * _w(lp.out_type)},
        "types": {k: (v.describe() if isinstance(v, Fx) else {"type": str(v)}) for k, v in lp.types.items()},
        "weights": {k: {"elements": int(len(v[0])), "type": v[1]} for k, v in lp.weights.items()},
        "params": {k: v for k, v in lp.params.items() if k != "alias"} | (
            {"aggregate_alias": lp.params["alias"]} if "alias" in lp.params else {}),
        "pragmas": PRAGMAS[lp.keras_class],
        "notes": lp.notes,
    }
    if hls_layer is not None:
        entry["reuse_factor"] = int(hls_layer.get_attr("reuse_factor", 1) or 1)
    return entry


def build_report(model, plan, hls_model=None, settings=None):
    """The report dict (report.json)."""
    settings = dict(settings or {})
    first = plan["layers"][0]

    mi = first.params
    fmt_range = first.types["input"]
    ops = operations(plan)
    bops_m = sum(o["count"] * o["widths"][0] * o["widths"][1] for o in ops if o["kind"] == "mult")
    bops_a = sum(o["count"] * o["width"] for o in ops if o["kind"] == "add")
    hls_layers = {}
    if hls_model is not None:
        for layer in hls_model.get_layers():
            hls_layers[layer.name] = layer
    inp_layer = model.get_layer(first.name)
    fmt = inp_layer.input_format
    rep = {
        "settings": settings,
        "input": {
            "tensor": plan["input"]["name"],
            "constituents": mi["n_in"],
            "beams": mi["beams"],
            "type": fmt_range,
            "scale_gev": mi["scale"],
            "declared_range_gev": [fmt.min * mi["scale"], fmt.max * mi["scale"]],
            "lsb_gev": fmt.lsb * mi["scale"],
            "what_the_firmware_expects": "p_hat = Q_input(p / scale) per component (E, px, py, pz), zero-padded; "
                                         "the widths below hold for every input in the declared range (no overflow)",
        },
        "layers": [_layer_entry(lp, hls_layers.get(lp.name)) for lp in plan["layers"]],
        "operations": ops,
        "totals": {
            "multipliers": int(sum(o["count"] for o in ops if o["kind"] == "mult")),
            "adders": int(sum(o["count"] for o in ops if o["kind"] == "add")),
            "bops": int(bops_m + bops_a),
            "bops_multipliers": int(bops_m),
            "bops_adders": int(bops_a),
            "array_bits": int(sum(_layer_entry(lp)["output"]["bits"] for lp in plan["layers"])),
        },
        "top_pragmas": TOP_PRAGMAS,
        "keras_reference_exact": plan["keras_exact"],
    }
    try:
        from qpelican.hw.cost import model_cost

        cost = model_cost(model, reuse=int(settings.get("reuse", 1) or 1))
        rep["cost_model"] = {k: cost[k] for k in ("bops", "bops_multipliers", "bops_adders", "n_multipliers",
                                                  "n_adders", "dsp_estimate", "lut_estimate", "reuse")}
    except Exception as exc:  # the cost model is optional for the report
        rep["cost_model"] = {"error": str(exc)}
    return rep


def format_report(rep):
    """Plain-text tables of a report (printed by the CLI)."""
    lines = []
    s = rep["settings"]
    i = rep["input"]
    lines.append(f"project {s.get('out', '')}  backend {s.get('backend')}  part {s.get('part')}  clock {s.get('clock')} ns  "
                 f"reuse {s.get('reuse')}  io_parallel / Latency")
    lines.append(f"input: {i['constituents']} x 4 {i['type']} (p / {i['scale_gev']:g} GeV; range "
                 f"[{i['declared_range_gev'][0]:g}, {i['declared_range_gev'][1]:g}] GeV, LSB {i['lsb_gev']:g} GeV)"
                 + ("  + 2 beams" if i["beams"] else ""))
    lines.append("")
    lines.append(f"{'layer':14s} {'function':22s} {'output':>12s} {'type':34s} intermediates")
    for ly in rep["layers"]:
        inter = ", ".join(f"{k} {v['type'].replace(',AP_RND_CONV,AP_SAT', '')}" for k, v in ly["types"].items()
                          if k.endswith("_t") and k not in ("n_t",))
        shape = "x".join(str(d) for d in ly["output"]["shape"])
        lines.append(f"{ly['name']:14s} {ly['hls_function']:22s} {shape:>12s} {ly['output']['type']:34s} {inter}")
    lines.append("")
    lines.append(f"{'operation':48s} {'layer':12s} {'count':>8s} {'widths':>8s} {'BOPs':>10s}")
    for o in rep["operations"]:
        if o["kind"] == "mult":
            a, b = o["widths"]
            lines.append(f"{'x ' + o['op']:48s} {o['layer']:12s} {o['count']:8d} {f'{a}x{b}':>8s} {o['count'] * a * b:10d}")
        else:
            lines.append(f"{'+ ' + o['op']:48s} {o['layer']:12s} {o['count']:8d} {o['width']:8d} {o['count'] * o['width']:10d}")
    t = rep["totals"]
    lines.append(f"total: {t['multipliers']:,} multipliers, {t['adders']:,} adders, {t['bops']:,} BOPs; "
                 f"layer outputs {t['array_bits']:,} bits")
    c = rep.get("cost_model", {})
    if "bops" in c:
        lines.append(f"cost model (qpelican.hw.cost): {c['bops']:,} BOPs, ~{c['dsp_estimate']} DSP, ~{c['lut_estimate']:,} LUT "
                     f"(estimates; synthesis is the truth)")
    if not rep.get("keras_reference_exact", True):
        lines.append("warning: some widths exceed float64's 53 bits; the QKeras reference is not exact there")
    syn = rep.get("synthesis")
    if syn:
        lines.append("")
        lines.append("synthesis: " + ", ".join(f"{k} {v}" for k, v in syn.items() if not isinstance(v, dict)))
    return "\n".join(lines)


HLS_TOOLS = {"Vitis": "vitis-run", "Vivado": "vivado_hls"}  # what hls4ml 1.3.0 build() calls


def synthesize(hls_model, backend):
    """Run hls4ml ``build()`` (C synthesis) and parse its report; ExportError without the HLS tool."""
    from qpelican.core.errors import ExportError

    tool = HLS_TOOLS[backend]
    if shutil.which(tool) is None:
        raise ExportError(
            f"--synth needs {tool} on PATH (Xilinx {backend} HLS), which this machine lacks. Source the tool's "
            f"settings64.sh and rerun, or synthesise the written project later: see export/README.md "
            "(section 'Synthesis').")
    result = hls_model.build(csim=False, synth=True, vsynth=False)
    out = {}
    if isinstance(result, dict):
        csyn = result.get("CSynthesisReport", result)
        for k, v in csyn.items():
            out[k] = v
    out["project"] = os.path.abspath(hls_model.config.get_output_dir())
    return out
