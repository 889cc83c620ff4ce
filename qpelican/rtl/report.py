"""The RTL report: resources and latency per stage and in total, the operator cross-check, the table.

Which figure to trust for what (also written into report.json as ``guide``):

* ``da4ml`` LUT/FF: da4ml's own estimate of the traced graph with every product built from LUTs
  (da4ml has no DSP model). It came within 0.97-1.13x of Vivado's post-route LUTs on published
  adder-tree designs; use it for designs whose products are narrow (LUT-built) and to compare designs;
* ``yosys_dsp`` LUT/FF/CARRY/DSP: Yosys ``synth_xilinx -family xcup`` (open tool, UltraScale+), wide
  products mapped to DSP48E2: the closest open-tool figure for "does it fit"; not Vivado's;
* ``yosys_nodsp``: the same with every product in LUTs (``-nodsp``): the all-LUT cost;
* latency: pipeline stages (clock cycles) at ``latency_cutoff`` times the clock period, scheduled by
  ``latency_model`` (:mod:`qpelican.rtl.timing`): ``dsp`` gives each variable product one whole
  stage in a DSP48E2, ``lut`` is da4ml's own model (products as LUT multipliers). Vivado's timing
  closure is not checked here; ``timing`` in report.json states what the clock assumes.

``lut``, ``ff``, ``dsp`` of each stage and of the total take the Yosys DSP-mapped figures when Yosys
ran; else da4ml's estimate, with the DSP48E2 products taken out of the LUTs and counted as ``dsp``
under the ``dsp`` latency model, all in LUTs (``dsp`` 0) under ``lut``; ``source`` names which.
"""
from qpelican.hw.parts import part_resources, percent_of_part

GUIDE = {
    "da4ml": "da4ml estimate of the traced graph, products in LUTs (no DSP model); 0.97-1.13x of Vivado "
             "post-route LUTs on published adder-tree designs. lut_without_dsp_products: the same without the "
             "products that go to DSP48E2 (dsp_products of them, one slice each): what Yosys maps to LUTs",
    "yosys_dsp": "Yosys synth_xilinx -family xcup (open-tool estimate, not Vivado), wide products in DSP48E2",
    "yosys_nodsp": "Yosys synth_xilinx -family xcup -nodsp (open-tool estimate), every product in LUTs",
    "latency": "pipeline stages (cycles) times the clock period. latency_model dsp: every variable x variable "
               "product that Yosys maps to a DSP48E2 (both operands >= 2 bits, result >= 9; the trace cuts wider "
               "ones into 27x18-bit pieces) takes one whole stage, registered operands in and result out (the "
               "slice's A/B and P registers); the square of a difference (<= 18 bits) includes the subtraction, "
               "done by the DSP48E2 pre-adder; every other operation keeps da4ml's delay (1 unit per adder, any "
               "width; constant additions and rounding truncations 0) and starts at the next stage boundary if "
               "it would cross one, so a stage holds at most latency_cutoff units of fabric logic. latency_model "
               "lut: da4ml's own pipeliner and delays (a product = max(operand bits) units, placed whole in the "
               "stage where it ends: that stage is max_op_units deep). Timing not closed: see timing",
    "cycles": "clock cycles from input to output of the pipelined design (stages counted alone per stage; the "
              "whole design, pipelined as one, in total)",
    "max_op_units": "the longest single operation in delay units; above latency_cutoff it alone sets the stage "
                    "depth",
}
# the delay of one da4ml unit (an adder, LUT plus carry chain plus routing) assumed when the
# clock is compared with latency_cutoff; an assumption, not a timing analysis
NS_PER_UNIT = 1.0


def primary(stage, latency_model="dsp"):
    """(lut, ff, dsp, source) of a stage entry: Yosys with DSP mapping when it ran, else da4ml's
    estimate (its DSP48E2 products out of the LUTs and counted as DSPs under the dsp model)."""
    y = stage.get("yosys_dsp") or {}
    if "lut" in y:
        return y["lut"], y["ff"], y["dsp"], "yosys_dsp"
    d = stage["da4ml"]
    if latency_model == "dsp":
        return d["lut_without_dsp_products"], d["ff"], stage["dsp_products"], "da4ml_dsp"
    return d["lut"], d["ff"], 0, "da4ml"


def fill_primary(entry, part, latency_model="dsp"):
    """Set ``lut``, ``ff``, ``dsp``, ``source`` and ``percent_of_part`` of a stage or total entry."""
    lut, ff, dsp, source = primary(entry, latency_model)
    entry.update(lut=int(lut), ff=int(ff), dsp=int(dsp), source=source)
    entry["percent_of_part"] = percent_of_part({"lut": lut, "ff": ff, "dsp": dsp}, part)
    return entry


def fits(total, part):
    """One sentence: does the design fit the part (on the primary figures)?"""
    res = part_resources(part)
    if not res:
        return f"part {part}: resources unknown, no fit check"
    over = [k for k in ("lut", "ff", "dsp") if total.get(k, 0) > res[k]]
    if over:
        return (f"does NOT fit {part}: " + ", ".join(f"{k.upper()} {total[k]:,} > {res[k]:,}" for k in over)
                + f" ({total['source']})")
    return f"fits {part} ({total['source']}: " + ", ".join(
        f"{k.upper()} {total['percent_of_part'].get(k, 0):.1f}%" for k in ("lut", "ff", "dsp")) + ")"


def timing_note(total, cutoff, clock, latency_model):
    """What the reported clock assumes, and whether the schedule's stage depth supports it."""
    need = max(cutoff, total["max_op_units"]) * NS_PER_UNIT
    text = (f"{total['cycles']} stages x {clock:g} ns = {total['latency_ns']:g} ns. The deepest stage holds "
            f"{max(cutoff, total['max_op_units']):g} delay units of fabric logic, about {need:g} ns at "
            f"{NS_PER_UNIT:g} ns per unit (an adder with its routing; an assumption, not a timing analysis)")
    if latency_model == "dsp":
        text += "; each DSP48E2 product (registered in and out) must also fit one clock period"
    if need > clock:
        text += f". This clock is too fast for that depth: use --clock {need:g} or a smaller --latency-cutoff"
    return text + ". Vivado's timing report decides."


def _num(v):
    return "-" if v is None else f"{v:,}" if isinstance(v, int) else str(v)


def format_report(rep):
    """Plain-text table of a report dict (what ``qpelican export-rtl`` prints)."""
    s = rep["settings"]
    lines = [f"RTL (da4ml {s['da4ml']}): N = {s['n']}, clock {s['clock']:g} ns, latency_cutoff {s['latency_cutoff']:g}, "
             f"latency model {s.get('latency_model', 'lut')}, part {s['part']}",
             f"{'stage':18s} {'da4ml LUT':>10s} {'da4ml FF':>9s} {'Yosys LUT':>10s} {'FF':>8s} {'CARRY':>7s} "
             f"{'DSP':>6s} {'LUT nodsp':>10s} {'cycles':>6s} {'ns':>6s}"]
    rows = [(name, st) for name, st in rep["stages"].items()] + [("total", rep["total"])]
    for name, st in rows:
        y = st.get("yosys_dsp") or {}
        yn = st.get("yosys_nodsp") or {}
        lines.append(f"{st.get('title', name):18s} {_num(st['da4ml']['lut']):>10s} {_num(st['da4ml']['ff']):>9s} "
                     f"{_num(y.get('lut')):>10s} {_num(y.get('ff')):>8s} {_num(y.get('carry')):>7s} "
                     f"{_num(y.get('dsp')):>6s} {_num(yn.get('lut')):>10s} {_num(st['cycles']):>6s} "
                     f"{st['latency_ns']:>6g}")
    t = rep["total"]
    pct = t["percent_of_part"]
    lines.append(f"total ({t['source']}): {t['lut']:,} LUT, {t['ff']:,} FF, {t['dsp']:,} DSP"
                 + (f" = {pct.get('lut', 0):.2f}% / {pct.get('ff', 0):.2f}% / {pct.get('dsp', 0):.2f}% of {s['part']}"
                    if pct else "") + f"; latency {t['cycles']} cycles = {t['latency_ns']:g} ns; "
                 f"{t.get('dsp_products', 0):,} products in DSP48E2 in the trace")
    lines.append(rep["fit"])
    if rep.get("timing"):
        lines.append("timing: " + rep["timing"])
    if rep.get("yosys_note"):
        lines.append(rep["yosys_note"])
    lines.append("Yosys figures are open-tool estimates (synth_xilinx -family xcup), not Vivado's; "
                 "da4ml's LUT estimate builds every product from LUTs.")
    inv = rep.get("inventory_check")
    if inv:
        lines.append("operators (RTL trace vs qpelican.hw.inventory):")
        for name, c in inv["stages"].items():
            split = c.get("rtl_split_partial_products", 0)
            pieces = f" (incl. {split:,} extra pieces of split products)" if split else ""
            lines.append(f"  {name:12s} products: RTL {c['rtl_variable_products']:,} variable x variable{pieces} + "
                         f"{c['rtl_constant_products']:,} constant + {c['rtl_zero_coefficients']:,} with a zero "
                         f"coefficient (no logic); inventory {c['inventory_multipliers']:,} multipliers")
        for d in inv["differences"]:
            lines.append(f"  - {d}")
    return "\n".join(lines)
