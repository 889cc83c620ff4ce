"""Firmware report without Vivado: operators and their widths, BOPs, arrays, pragmas; synthesis parsing.

The operators are the firmware's inventory (:func:`qpelican.hw.inventory.from_plan`, exact widths:
the types the C++ is generated with) and their BOPs and DSP/LUT estimates come from
:func:`qpelican.hw.cost.summarize`, so the report and the cost model count the same operators the
same way. ``cost_model`` is :func:`qpelican.hw.cost.model_cost`'s figure (what fit and tune record:
widths that hold for any weights on the recipe's grids); ``cost_model.differences`` names each
operator whose width or count differs from the firmware's, with its BOPs.
"""
import math
import os
import shutil

from qpelican.core.errors import ExportError
from qpelican.hw.cost import differences, summarize
from qpelican.hw.fixed import Fx
from qpelican.hw.inventory import EXACT, RECIPE, Adder, from_plan, width_of

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
    "L1CandidateInput": ["INLINE", "UNROLL (casts to the pT and angle types)"],
    "CandidateMask": ["INLINE", "UNROLL (one comparison pT_i != 0 per candidate)"],
    "L1Invariants": ["PIPELINE II=reuse_factor", "ALLOCATION mul limit=multiplier_limit",
                     "ARRAY_PARTITION complete (pT, eta, phi, mask)", "UNROLL (pairs i<j)"],
}
HLS_FUNCTIONS = {"MomentumInput": "qp_momentum_input", "ParticleMask": "qp_particle_mask",
                 "LorentzInvariants": "qp_lorentz_invariants", "LinEq2to2": "qp_lineq2to2_nano",
                 "LinEq2to0": "qp_lineq2to0", "L1CandidateInput": "qp_l1_candidate_input",
                 "CandidateMask": "qp_candidate_mask", "L1Invariants": "qp_l1_invariants"}
TOP_PRAGMAS = ["PIPELINE (top function, io_parallel)", "ARRAY_RESHAPE complete (inputs/outputs)",
               "ARRAY_PARTITION complete (layer outputs)", "INTERFACE ap_vld"]
COST_KEYS = ("bops", "bops_multipliers", "bops_adders", "n_multipliers", "n_adders", "dsp_estimate", "lut_estimate",
             "reuse", "widths")


def operations(inv):
    """[{layer, op, kind: mult|add, count, widths|width}] per jet of an inventory."""
    ops = []
    for s in inv.stages:
        for o in s.multipliers + s.adders:
            if isinstance(o, Adder):
                ops.append({"layer": s.layer, "op": o.what, "kind": "add", "count": o.count, "width": o.width})
            else:
                ops.append({"layer": s.layer, "op": o.what, "kind": "mult", "count": o.count, "widths": list(o.widths)})
    return ops


def _layer_entry(lp, hls_layer=None):
    size = 1
    for d in lp.out_shape:
        size *= int(d)
    entry = {
        "name": lp.name,
        "keras_class": lp.keras_class,
        "hls_function": HLS_FUNCTIONS[lp.keras_class],
        "output": {"shape": list(lp.out_shape), "elements": size, "type": lp.out_type, "bits": size * width_of(lp.out_type)},
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


def _totals(inv, reuse, plan):
    """Totals of the firmware's exact inventory (cost.summarize: the cost model's arithmetic)."""
    c = summarize(inv, reuse)
    return {"multipliers": c["n_multipliers"], "adders": c["n_adders"], "table_lookups": c["n_lookups"],
            "bops": c["bops"], "bops_multipliers": c["bops_multipliers"], "bops_adders": c["bops_adders"],
            "dsp_estimate": c["dsp_estimate"], "lut_estimate": c["lut_estimate"],
            "array_bits": int(sum(_layer_entry(lp)["output"]["bits"] for lp in plan["layers"]))}


def _cost_model(plan, reuse, exact):
    """model_cost's figure (RECIPE widths, the same plan) and the operators where it differs from ``exact``."""
    recipe = from_plan(plan, RECIPE)
    cost = summarize(recipe, reuse)
    out = {k: cost[k] for k in COST_KEYS}
    out["differences"] = differences(exact, recipe)
    out["bops_difference"] = cost["bops"] - summarize(exact, reuse)["bops"]
    return out


def _input_entry(model, plan):
    mi = plan["layers"][0].params
    fmt = model.get_layer(plan["layers"][0].name).input_format
    if plan["layers"][0].keras_class == "L1CandidateInput":
        a = mi["angle_bits"]
        return {
            "tensor": plan["input"]["name"], "constituents": mi["n_in"], "beams": mi["beams"], "format": "l1",
            "type": plan["layers"][0].types["input"], "pt_type": plan["layers"][0].types["pt_t"],
            "scale_gev": 1.0, "declared_range_gev": [fmt.min, fmt.max], "lsb_gev": fmt.lsb,
            "angle_bits": a, "angle_range_steps": [-(2 ** (a - 1)), 2 ** (a - 1) - 1], "angle_step_rad": math.pi / 720,
            "what_the_firmware_expects": "Level-1 candidates (pT, eta_rel, phi_rel) per constituent, zero-padded: pT "
                                         "in GeV on the pT format, eta and phi relative to the jet axis as signed "
                                         "integers in steps of pi/720; the widths below hold for every input "
                                         "(no overflow)",
        }
    return {
        "tensor": plan["input"]["name"],
        "constituents": mi["n_in"],
        "beams": mi["beams"],
        "type": plan["layers"][0].types["input"],
        "scale_gev": mi["scale"],
        "declared_range_gev": [fmt.min * mi["scale"], fmt.max * mi["scale"]],
        "lsb_gev": fmt.lsb * mi["scale"],
        "what_the_firmware_expects": "p_hat = Q_input(p / scale) per component (E, px, py, pz), zero-padded; "
                                     "the widths below hold for every input in the declared range (no overflow)",
    }


def build_report(model, plan, hls_model=None, settings=None):
    """The report dict (report.json).

    Args:
      model: the Keras model the plan was made from.
      plan: its firmware plan (``make_plan``).
      hls_model: the hls4ml model (reuse factors per layer), optional.
      settings: export settings (``reuse`` is read for the DSP/LUT estimates).
    """
    settings = dict(settings or {})
    reuse = int(settings.get("reuse", 1) or 1)
    hls_layers = {layer.name: layer for layer in hls_model.get_layers()} if hls_model is not None else {}
    inv = from_plan(plan, EXACT)
    return {
        "settings": settings,
        "input": _input_entry(model, plan),
        "layers": [_layer_entry(lp, hls_layers.get(lp.name)) for lp in plan["layers"]],
        "operations": operations(inv),
        "totals": _totals(inv, reuse, plan),
        "cost_model": _cost_model(plan, reuse, inv),
        "top_pragmas": TOP_PRAGMAS,
        "keras_reference_exact": plan["keras_exact"],
    }


def _cost_lines(c):
    """The cost model's figure against the report's, every difference named."""
    head = (f"cost model (qpelican.hw.cost.model_cost, as fit and tune record it): {c['bops']:,} BOPs, "
            f"~{c['dsp_estimate']} DSP, ~{c['lut_estimate']:,} LUT (estimates; synthesis is the truth)")
    if not c["differences"]:
        return [head, "  same operators and widths as above"]
    lines = [head, f"  {c['bops_difference']:+,} BOPs vs the firmware above: the cost model sizes these for any "
                   "weights on the recipe's grids, the firmware for these weights:"]
    for d in c["differences"]:
        key = "widths" if "widths" in d else "width"
        fw, cm = (f"{n} x {w if key == 'width' else 'x'.join(map(str, w or []))}" for n, w in zip(d["count"], d[key]))
        lines.append(f"    {d['layer']} {d['op']}: firmware {fw}, cost model {cm} ({d['bops']:+,} BOPs)")
    return lines


def format_report(rep):
    """Plain-text tables of a report (printed by the CLI)."""
    lines = []
    s = rep["settings"]
    i = rep["input"]
    lines.append(f"project {s.get('out', '')}  backend {s.get('backend')}  part {s.get('part')}  clock {s.get('clock')} ns  "
                 f"reuse {s.get('reuse')}  io_parallel / Latency")
    if i.get("format") == "l1":
        lines.append(f"input: {i['constituents']} x 3 Level-1 candidates {i['type']} (pT {i['pt_type']}: "
                     f"[{i['declared_range_gev'][0]:g}, {i['declared_range_gev'][1]:g}] GeV, LSB {i['lsb_gev']:g} GeV; "
                     f"eta_rel, phi_rel {i['angle_bits']}-bit integers, steps of pi/720)"
                     + ("  + the beam" if i["beams"] else ""))
    else:
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
    lines += _cost_lines(rep["cost_model"])
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
