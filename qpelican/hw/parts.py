"""FPGA parts qpelican sizes designs against: the default target and each part's resources.

The one home of the default part and clock of ``export-hls`` and ``export-rtl``, and of the
resource counts their reports express usage against (Xilinx UltraScale+ data sheets, DS890).
"""

DEFAULT_PART = "xcvu13p-flga2577-2-e"
DEFAULT_CLOCK_NS = 5.0  # 200 MHz
DEFAULT_LATENCY_CUTOFF = 5.0  # RTL: da4ml delay units (about one adder, ~1 ns) per pipeline stage
# RTL: Yosys (WebAssembly, one core) takes minutes per 10^5 LUTs on a 2-core machine; stages whose
# da4ml estimate of the LUTs Yosys maps is larger are skipped unless --yosys-max-luts is raised
# (100k covers every stage of the N = 16 recipes: the l1_c2_16 LinEq 2->2 maps ~62k)
DEFAULT_YOSYS_MAX_LUTS = 100_000

# device (part name prefix) -> resources: 6-input LUTs, flip-flops, DSP48E2 slices, 36 kb block RAMs
RESOURCES = {
    "xcvu13p": {"lut": 1_728_000, "ff": 3_456_000, "dsp": 12_288, "bram": 2_688},
    "xcvu9p": {"lut": 1_182_240, "ff": 2_364_480, "dsp": 6_840, "bram": 2_160},
    "xcku15p": {"lut": 522_720, "ff": 1_045_440, "dsp": 1_968, "bram": 984},
}


def part_resources(part):
    """Resources of ``part`` (matched by its device prefix, e.g. ``xcvu13p-flga2577-2-e``), or None."""
    device = str(part).lower().split("-")[0]
    return RESOURCES.get(device)


def percent_of_part(usage, part):
    """{resource: percent of the part} for the resources both know; {} for an unknown part."""
    total = part_resources(part) or {}
    return {k: round(100.0 * usage[k] / total[k], 3) for k in total if usage.get(k) is not None}
