"""`qpelican export-rtl`: pipelined Verilog through da4ml, resources and latency, bit-exact check in Verilator."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from qpelican.hw.parts import DEFAULT_CLOCK_NS, DEFAULT_LATENCY_CUTOFF, DEFAULT_PART, DEFAULT_YOSYS_MAX_LUTS


def register(app: typer.Typer):
    app.command("export-rtl")(export_rtl)


def export_rtl(
    run: Path = typer.Argument(..., help="run directory written by `qpelican fit` (RUN/model.keras) or a .keras file"),
    out: Path = typer.Option(..., "--out", "-o", help="project folder to write (replaced if it holds an RTL project)"),
    clock: Optional[float] = typer.Option(None, "--clock", help=f"clock period in ns (default {DEFAULT_CLOCK_NS:g})"),
    part: Optional[str] = typer.Option(None, "--part", help="FPGA part for the build script and the percentages "
                                                            f"(default {DEFAULT_PART})"),
    latency_cutoff: float = typer.Option(DEFAULT_LATENCY_CUTOFF, "--latency-cutoff", help="da4ml delay units (one adder each, assumed "
                                                                      "~1 ns) per pipeline stage: smaller = more "
                                                                      "stages; keep it <= --clock in ns"),
    latency_model: str = typer.Option("dsp", "--latency-model",
                                      help="dsp: each variable x variable product is one pipeline stage in a DSP48E2 "
                                           "(Yosys/Vivado DSP mapping); lut: da4ml's own delays, products as LUT "
                                           "multipliers"),
    verify: Optional[Path] = typer.Option(None, "--verify", help="HDF5 jets (file or dir): compile with Verilator "
                                                                  "and compare with the QKeras model"),
    jets: int = typer.Option(10000, "--jets", min=1, help="jets for --verify"),
    yosys: bool = typer.Option(True, "--yosys/--no-yosys", help="Yosys counts with DSP mapping, per stage"),
    yosys_nodsp: bool = typer.Option(True, "--yosys-nodsp/--no-yosys-nodsp",
                                     help="Yosys counts with every product in LUTs (-nodsp), per stage"),
    yosys_max_luts: int = typer.Option(DEFAULT_YOSYS_MAX_LUTS, "--yosys-max-luts", min=1,
                                       help="skip Yosys on a stage whose da4ml estimate of the LUTs it maps is "
                                            "larger (products that go to DSP48E2 not counted with DSP mapping; "
                                            "minutes per 10^5 LUTs on 2 cores)"),
    project: str = typer.Option("qpelican", "--project", help="Verilog top module / project name"),
):
    """Write pipelined Verilog (da4ml) of a quantized nanoPELICAN, with LUT/FF/DSP and latency per stage.

    Writes OUT/src/*.v (+ Vivado/Quartus build scripts, constraints), OUT/stages/ (one project per
    stage) and OUT/report.json; with --verify also OUT/verify.json (differing jets, largest
    difference in LSBs, Verilator jets/s, AUC of both). Exit 1 if any jet differs, 2 for a model
    it cannot export. Yosys figures are open-tool estimates, not Vivado's.
    """
    import time

    from rich.console import Console

    from qpelican.cli.hls import finish_export
    from qpelican.core.io import dir_lock
    from qpelican.rtl.exporter import export_run
    from qpelican.rtl.report import format_report

    con = Console(highlight=False, soft_wrap=True)
    t0 = time.perf_counter()
    with dir_lock(out, "RTL project folder"):
        res = export_run(run, out, clock=clock, part=part, latency_cutoff=latency_cutoff, latency_model=latency_model,
                         verify=verify, jets=jets,
                         yosys=yosys, yosys_nodsp=yosys_nodsp, yosys_max_luts=yosys_max_luts, project_name=project,
                         log=con.print)
    con.print(format_report(res["report"]), markup=False)
    ver = res["verify"]
    if ver is not None:
        line = (f"verify: {ver['differing_jets']} of {ver['jets']} jets differ from QKeras in Verilator "
                f"(max {ver['max_diff_lsb']:g} LSB; da4ml interpreter: {ver['interpreter_differing_jets']} differ); "
                f"Verilator {ver['verilator_jets_per_s']:,.0f} jets/s, compile {ver['compile_seconds']:.1f} s")
        if "auc_rtl" in ver:
            line += f"; AUC QKeras {ver['auc_keras']:.5f}, RTL {ver['auc_rtl']:.5f}"
    finish_export(con, out, ver, line if ver is not None else None, time.perf_counter() - t0)
