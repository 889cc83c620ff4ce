"""`qpelican export-hls`: hls4ml firmware project, report, bit-exact C-simulation check, synthesis."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from qpelican.hw.parts import DEFAULT_CLOCK_NS, DEFAULT_PART


def register(app: typer.Typer):
    app.command("export-hls")(export_hls)


def export_hls(
    run: Path = typer.Argument(..., help="run directory written by `qpelican fit` (RUN/model.keras) or a .keras file"),
    out: Path = typer.Option(..., "--out", "-o", help="project folder to write (an hls4ml project there is replaced only once the new one is complete; files you added to it are kept)"),
    backend: str = typer.Option("Vitis", "--backend", help="Vitis or Vivado"),
    part: Optional[str] = typer.Option(None, "--part", help=f"FPGA part (default {DEFAULT_PART})"),
    clock: Optional[float] = typer.Option(None, "--clock", help=f"clock period in ns (default {DEFAULT_CLOCK_NS:g})"),
    reuse: int = typer.Option(1, "--reuse", min=1, help="hls4ml reuse factor: multipliers limited to ceil(count/R)"),
    verify: Optional[Path] = typer.Option(None, "--verify", help="HDF5 jets (file or dir): compile the C simulation "
                                                                  "and compare it with the QKeras model"),
    jets: int = typer.Option(10000, "--jets", min=1, help="jets for --verify"),
    synth: bool = typer.Option(False, "--synth", help="run C synthesis (needs vitis-run (Vitis) or vivado_hls (Vivado) on PATH)"),
    project: str = typer.Option("qpelican", "--project", help="top-level function / project name"),
):
    """Write an hls4ml project (io_parallel, Latency) whose C simulation reproduces the model bit for bit.

    Writes OUT/report.json (operators, widths, BOPs, arrays, pragmas); with --verify also
    OUT/verify.json (differing jets, largest difference in LSBs, AUC of both).
    """
    import time

    from rich.console import Console

    from qpelican.core.io import dir_lock
    from qpelican.hls.exporter import check_out, check_settings, export_run
    from qpelican.hls.report import format_report

    con = Console(highlight=False, soft_wrap=True)
    t0 = time.perf_counter()
    check_settings(backend, clock, reuse, project)
    check_out(out)  # before the lock file goes into a folder that is not ours
    with dir_lock(out, "export folder"):
        res = export_run(run, out, backend=backend, part=part, clock=clock, reuse=reuse, verify=verify, jets=jets,
                         synth=synth, project_name=project, log=con.print)
    con.print(format_report(res["report"]), markup=False)
    ver = res["verify"]
    if ver is not None:
        line = (f"verify: {ver['differing_jets']} of {ver['jets']} jets differ from QKeras "
                f"(max {ver['max_diff_lsb']:g} LSB); C simulation {ver['csim_jets_per_s']:.0f} jets/s, "
                f"compile {ver['compile_seconds']:.1f} s")
        if "auc_hls" in ver:
            line += f"; AUC QKeras {ver['auc_keras']:.5f}, firmware {ver['auc_hls']:.5f}"
    finish_export(con, out, ver, line if ver is not None else None, time.perf_counter() - t0)


def finish_export(con, out, ver, line, seconds):
    """Print the --verify line (green when no jet differs) and what was written; exit 1 if any jet differs."""
    if ver is not None:
        con.print(("[green]" if ver["differing_jets"] == 0 else "[red]") + line + "[/]")
    con.print(f"wrote {out}/ (report.json{', verify.json' if ver is not None else ''}) in {seconds:.1f} s")
    if ver is not None and ver["differing_jets"]:
        raise SystemExit(1)
