"""Hardware cost model: bit operations (BOPs) and rough DSP/LUT estimates, from the operator inventory.

:func:`model_cost` is used by ``qpelican fit`` (results.json) and ``qpelican tune`` (the cost axis of
the Pareto front); :func:`summarize` turns any
:class:`~qpelican.hw.inventory.Inventory` into the same figures (the export report uses it on the
firmware's exact inventory). Operators are never counted here: :mod:`qpelican.hw.inventory` does.

* ``model_cost(model)`` costs the inventory of the model's firmware plan with RECIPE widths: the
  operators the exported firmware computes, each sized for any weights on the recipe's quantizer
  grids. A recipe therefore costs the same before and after training (tune ranks recipes before
  training them, fit records the trained model). The firmware itself sizes its accumulators for
  the trained weights: the export report gives both and names every operator where they differ.
* A model the plan rejects (a float tensor, BatchNorm, full PELICAN: no firmware) is costed from
  :func:`qpelican.hw.inventory.estimate`, nominal widths (float = 32 bits); ``source`` says
  "estimate" and ``reason`` why.

A product of an a-bit by a b-bit operand costs a*b BOPs; an addition costs its result width; table
reads cost none. DSP/LUT estimates (labelled as estimates; synthesis is the truth): a product whose
narrower operand has more than 10 bits uses ceil(a/27)*ceil(b/18) DSP48 slices, narrower ones are
built from about a*b/2 LUTs; an adder costs about one LUT per result bit. ``reuse`` divides the
number of parallel operators (hls4ml's reuse factor).
"""
import math

from qpelican.hw.inventory import RECIPE, Adder, model_inventory

LUT_MULT_MAX = 10  # widest narrower operand of a product built from LUTs


def op_bops(op):
    """BOPs of all instances of one :class:`Multiplier` or :class:`Adder`."""
    if isinstance(op, Adder):
        return op.count * op.width
    return op.count * op.widths[0] * op.widths[1]


def _dsp_lut(inv):
    """(DSP48, LUT) estimates at reuse 1."""
    dsp = lut = 0.0
    for _, m in inv.multipliers:
        a, b = sorted(m.widths)
        if a > LUT_MULT_MAX:
            dsp += m.count * math.ceil(b / 27) * math.ceil(a / 18)
        else:
            lut += m.count * a * b / 2
    lut += sum(op_bops(a) for _, a in inv.adders)
    return dsp, lut


def summarize(inv, reuse=1):
    """Cost figures of an :class:`~qpelican.hw.inventory.Inventory`.

    Args:
      inv: the inventory (``model_inventory``, ``from_plan``).
      reuse: hls4ml reuse factor (divides the DSP/LUT estimates).

    Returns a dict: ``bops``, ``bops_multipliers``, ``bops_adders``, ``n_multipliers``, ``n_adders``,
    ``n_lookups``, ``dsp_estimate``, ``lut_estimate``, ``reuse``, ``per_layer`` (BOPs),
    ``multipliers`` / ``adders`` (what, layer, count, widths | width), ``widths``, ``source``
    and, for estimates, ``reason`` and ``uncounted`` (layers without a count).
    """
    mults = [{"what": m.what, "layer": layer, "count": m.count, "widths": list(m.widths)} for layer, m in inv.multipliers]
    adds = [{"what": a.what, "layer": layer, "count": a.count, "width": a.width} for layer, a in inv.adders]
    bops_m = sum(op_bops(m) for _, m in inv.multipliers)
    bops_a = sum(op_bops(a) for _, a in inv.adders)
    dsp, lut = _dsp_lut(inv)
    out = {
        "bops": int(bops_m + bops_a),
        "bops_multipliers": int(bops_m),
        "bops_adders": int(bops_a),
        "n_multipliers": int(sum(m.count for _, m in inv.multipliers)),
        "n_adders": int(sum(a.count for _, a in inv.adders)),
        "n_lookups": int(sum(t.count for _, t in inv.lookups)),
        "dsp_estimate": int(math.ceil(dsp / reuse)),
        "lut_estimate": int(math.ceil(lut / reuse)),
        "reuse": int(reuse),
        "per_layer": {s.layer: int(sum(op_bops(o) for o in s.multipliers + s.adders)) for s in inv.stages},
        "multipliers": mults,
        "adders": adds,
        "widths": inv.widths,
        "source": inv.source,
    }
    if inv.source == "estimate":
        out.update(reason=inv.reason, uncounted=list(inv.uncounted))
    return out


def model_cost(model, reuse=1):
    """Cost sheet of a qpelican model (see the module docstring for which widths).

    Args:
      model: a qpelican tf-keras model, trained or not, quantized or float.
      reuse: hls4ml reuse factor.

    Returns the dict of :func:`summarize`.
    """
    return summarize(model_inventory(model, RECIPE), reuse)


def _ops_by_key(inv):
    return {(layer, op.what): op for layer, op in inv.multipliers + inv.adders}


def differences(inv, other):
    """Operators whose count or width differ between two inventories (``other`` minus ``inv``).

    Returns [{layer, op, count: [inv, other], widths | width: [inv, other], bops}] where ``bops``
    is other's BOPs minus inv's; an operator missing from one side counts 0 there.
    """
    a, b = _ops_by_key(inv), _ops_by_key(other)
    out = []
    for key in list(a) + [k for k in b if k not in a]:
        x, y = a.get(key), b.get(key)
        if x == y:
            continue
        attr = "width" if isinstance(x or y, Adder) else "widths"
        out.append({"layer": key[0], "op": key[1], "count": [x.count if x else 0, y.count if y else 0],
                    attr: [_shape(x, attr), _shape(y, attr)],
                    "bops": (op_bops(y) if y else 0) - (op_bops(x) if x else 0)})
    return out


def _shape(op, attr):
    if op is None:
        return None
    return list(op.widths) if attr == "widths" else op.width


def format_cost(cost):
    """A plain-text table of a cost sheet (for terminals and reports)."""
    lines = [f"{'operation':44s} {'layer':14s} {'count':>9s} {'widths':>9s} {'BOPs':>11s}"]
    for m in cost["multipliers"]:
        a, b = m["widths"]
        lines.append(f"{'x ' + m['what']:44s} {m['layer']:14s} {m['count']:9d} {f'{a}x{b}':>9s} {m['count'] * a * b:11d}")
    for s in cost["adders"]:
        lines.append(f"{'+ ' + s['what']:44s} {s['layer']:14s} {s['count']:9d} {s['width']:9d} {s['count'] * s['width']:11d}")
    lines.append(f"total BOPs {cost['bops']:,}  (multipliers {cost['n_multipliers']:,}, adders {cost['n_adders']:,}; "
                 f"estimates: {cost['dsp_estimate']} DSP, {cost['lut_estimate']:,} LUT at reuse {cost['reuse']})")
    if cost.get("source") == "estimate":
        lines.append(f"nominal widths (no firmware plan: {cost.get('reason', '')})")
        if cost.get("uncounted"):
            lines.append(f"not counted: {', '.join(cost['uncounted'])}")
    return "\n".join(lines)
