"""Pipeline schedule of a traced graph whose variable products sit in DSP48E2 slices.

da4ml 0.6.0 costs every operation in delay units of one adder (``HWConfig(1, -1, ...)``: any
width) and a variable product ``a * b`` as max(bits(a), bits(b)) units, as if it were built from
LUTs. Its pipeliner (``to_pipeline``) places each operation in the stage where it *ends*, with only
registers in the stages before, and writes the product as one Verilog ``*`` (``multiplier.v``). A
28 x 21-bit product therefore counts as 28 units (six stages at cutoff 5) while the stage that
holds it is 28 units of combinational logic deep: the registers in front of it shorten no path.

With DSP mapping (Yosys ``synth_xilinx``, Vivado alike) such a product is a DSP48E2 multiply. The
``dsp`` schedule here gives each one a whole pipeline stage: its operands come from the register
at the start of the stage (the slice's A/B input registers absorb it), its result goes to the
register at the end (the P register). What this claims: one DSP48E2 multiply with registered
inputs and output fits the clock period (Vivado's timing must confirm it). Every other operation
keeps da4ml's delay; one that would cross a stage boundary starts at the boundary (da4ml's own
rule), so no stage holds more than ``cutoff`` units of fabric logic unless one operation alone is
longer (``max_op_units``). One exception: the square of a sum or difference of at most 18 bits
(deta^2, dphi^2 of the Level-1 invariants) starts where the subtraction starts, in the same stage,
because the DSP48E2's pre-adder computes it (D - A, with the multiplier fed AD on both ports, a
DSP48E2 feature; UG579). The trace (:func:`qpelican.rtl.trace.dsp_mul`) cuts products wider
than one DSP48E2 into pieces, so each product here is one slice.
"""
from math import ceil

from da4ml.trace import to_pipeline
from da4ml.types import minimal_kif

MUL_OPCODE, CONST_OPCODE = 7, 5
ADD_OPCODES = (0, 1)
# the pre-adder's result feeds the 18-bit port as well when the multiplier squares it
PREADD_SQUARE_BITS = 18
# Yosys synth_xilinx -family xcup (mul2dsp): a product goes to DSP48E2 when both operands have at
# least 2 bits and the result at least 9; smaller ones stay in LUTs
DSP_MIN_IN_BITS, DSP_MIN_OUT_BITS = 2, 9
_EPS = 1e-9


def _bits(qint):
    return int(sum(minimal_kif(qint)))


def _deps(op):
    """Indices of the operations ``op`` reads (see da4ml.types.Op for the opcodes)."""
    if op.opcode in (-1, 5):  # input copy, constant
        return []
    ids = [op.id0]
    if op.opcode in (0, 1, 6, -6, MUL_OPCODE, 10):
        ids.append(op.id1)
    if op.opcode in (6, -6):  # multiplexer: the select is packed into data
        ids.append(op.data & 0xFFFFFFFF)
    return [i for i in ids if i >= 0]


def is_dsp_product(comb, op):
    """Whether ``op`` of ``comb`` is a variable product that DSP mapping puts in a DSP48E2."""
    if op.opcode != MUL_OPCODE:
        return False
    a, b = comb.ops[op.id0].qint, comb.ops[op.id1].qint
    return min(_bits(a), _bits(b)) >= DSP_MIN_IN_BITS and _bits(op.qint) >= DSP_MIN_OUT_BITS


def dsp_products(comb):
    """Number of variable products that go to DSP48E2 slices (one each, see the module docstring)."""
    return sum(1 for op in comb.ops if is_dsp_product(comb, op))


def fabric_lut_estimate(comb):
    """da4ml's LUT estimate without the products that go to DSP48E2 slices (what Yosys maps to LUTs)."""
    return float(sum(op.cost for op in comb.ops if not is_dsp_product(comb, op)))


def _preadded(comb, op):
    """The add/subtract a DSP product squares through the DSP48E2 pre-adder, or None."""
    if op.id0 != op.id1:
        return None
    src = comb.ops[op.id0]
    if src.opcode in ADD_OPCODES and _bits(src.qint) <= PREADD_SQUARE_BITS:
        return op.id0
    return None


def _delays(comb):
    """da4ml's delay of each operation: its latency minus its latest operand's (constants: 0).

    da4ml gives a constant operand the latency of the operation that reads it, so constants are
    left out of "latest operand".
    """
    lat = [0.0 if op.opcode == CONST_OPCODE else op.latency for op in comb.ops]
    return [0.0 if op.opcode in (-1, CONST_OPCODE) else op.latency - max((lat[i] for i in _deps(op)), default=0.0)
            for op in comb.ops]


def _place_constants(comb, lat):
    """Each constant at the latency of its first reader, so that it needs no pipeline registers."""
    first = {}
    for k, op in enumerate(comb.ops):
        for i in _deps(op):
            if comb.ops[i].opcode == CONST_OPCODE:
                first[i] = min(first.get(i, lat[k]), lat[k])
    return [first.get(k, 0.0) if op.opcode == CONST_OPCODE else t for k, (op, t) in enumerate(zip(comb.ops, lat))]


def dsp_schedule(comb, cutoff):
    """``comb`` with every operation's latency set by the ``dsp`` model (module docstring).

    Args:
      comb: a da4ml CombLogic traced without a cutoff (latencies = da4ml's delays, summed).
      cutoff: delay units per pipeline stage (> 0).
    Returns (CombLogic with new latencies, the largest single fabric operation delay in units).
    """
    lat, bases = [], []
    max_op = 0.0
    for op, delay in zip(comb.ops, _delays(comb)):
        base = max((lat[i] for i in _deps(op) if comb.ops[i].opcode != CONST_OPCODE), default=0.0)
        dsp = is_dsp_product(comb, op)
        pre = _preadded(comb, op) if dsp else None
        if pre is not None:
            base = bases[pre]  # the pre-adder works in the product's own stage
        bases.append(base)
        start = ceil(base / cutoff - _EPS) * cutoff  # the next stage boundary
        if op.opcode in (-1, CONST_OPCODE):
            t = 0.0 if op.opcode == CONST_OPCODE else op.latency
        elif dsp:
            t = start + cutoff
        else:
            t = base + delay
            if ceil(t / cutoff - _EPS) > ceil(base / cutoff - _EPS):
                t = start + delay
            max_op = max(max_op, delay)
        lat.append(t)
    lat = _place_constants(comb, lat)
    return comb._replace(ops=[op._replace(latency=t) for op, t in zip(comb.ops, lat)]), max_op


def pipeline(comb, cutoff, model):
    """Pipeline of ``comb`` at ``cutoff`` under latency ``model`` ("dsp" or "lut").

    "lut" is da4ml's own: products as LUT multipliers, with its retiming. Returns
    (da4ml Pipeline, largest single operation delay in units).
    """
    if model == "lut":
        return to_pipeline(comb, cutoff, verbose=False), max(_delays(comb), default=0.0)
    sched, max_op = dsp_schedule(comb, cutoff)
    return to_pipeline(sched, cutoff, retiming=False, verbose=False), max_op
