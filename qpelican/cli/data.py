"""`qpelican data simulate | inspect`. Heavy imports (Pythia, matplotlib) live inside the commands."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from qpelican.core.errors import DataError

data_app = typer.Typer(help="Simulate (Pythia 8 + FastJet) and inspect top-tagging jet files.",
                       no_args_is_help=True)


def _parse_split(text: str):
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3:
        raise DataError(f"--split {text!r}: expected three comma-separated fractions train,val,test, e.g. 0.8,0.1,0.1")
    return parts


@data_app.command()
def simulate(
    jets: int = typer.Option(100_000, "--jets", "-n", help="Total jets (half top, half QCD)."),
    out: Path = typer.Option(Path("data/sim"), "--out", "-o", help="Output directory for train/val/test.h5."),
    seed: int = typer.Option(0, "--seed", help="Same seed and --jets give the same jets."),
    workers: Optional[int] = typer.Option(None, "--workers", "-j", help="Processes (default: all cores)."),
    split: str = typer.Option("0.8,0.1,0.1", "--split", help="train,val,test fractions."),
    mpi: bool = typer.Option(False, "--mpi/--no-mpi", help="Multi-parton interactions (off in the reference)."),
    resume: bool = typer.Option(True, "--resume/--no-resume",
                                help="Reuse chunks of an interrupted run with the same settings (default)."),
    detector: str = typer.Option("none", "--detector",
                                 help="none | simple. none: truth particles; simple: Delphes-like E-flow "
                                      "(smeared tracks + calorimeter towers)."),
    matching: str = typer.Option("contained", "--matching",
                                 help="contained | top. Which top jets count as signal: contained (default) = the "
                                      "top and its b and W decay quarks within dR < 0.8 of the jet; top = the top "
                                      "alone within dR < 0.8."),
    force: bool = typer.Option(False, "--force",
                               help="Replace a different dataset already in --out (its files stay until the new "
                                    "ones are complete). Without it such a directory is refused."),
):
    """Generate jets with Pythia 8 + FastJet into the converted layout (Pmu, Nobj, is_signal, truth_Pmu).

    An interrupted run keeps finished chunks; rerun the same command to resume.
    A directory holding another dataset is never overwritten unless --force is given.
    MPI on is about 2-3x slower per jet and adds underlying-event particles.
    --detector simple clusters tracks and calorimeter towers instead of the particles.
    --matching top keeps top jets whose decay products spill out of the jet (broader mass peak).
    """
    import time

    from rich.console import Console

    from qpelican.data.simulate import simulate as run

    from qpelican.core.io import dir_lock

    fractions = _parse_split(split)
    t0 = time.perf_counter()
    with dir_lock(out, "dataset directory"):
        paths = run(jets, str(out), seed=seed, workers=workers, split=fractions, mpi=mpi, progress=True,
                    resume=resume, detector=detector, force=force, matching=matching)
    dt = time.perf_counter() - t0
    con = Console()
    for name, p in paths.items():
        con.print(f"{name:5s} {p}")
    con.print(f"{jets} jets in {dt:.1f} s ({jets / max(dt, 1e-9):.0f} jets/s)")


@data_app.command()
def inspect(
    file: Path = typer.Argument(..., help="HDF5 jet file (pandas or converted layout)."),
    png: Optional[Path] = typer.Option(None, "--png", help="Write multiplicity and jet-mass histograms here."),
    max_jets: Optional[int] = typer.Option(None, "--max-jets", help="Only the first N rows."),
    l1_n: int = typer.Option(16, "--l1-n", min=1, max=200,
                             help="N of the Level-1 grid check: candidates out of range among the N highest-pT."),
):
    """Jets, signal fraction, multiplicity and jet-mass summaries (and a PNG of the distributions).

    Also counts the candidates that would saturate or drop on the Level-1 grid (data.format: l1)."""
    from rich.console import Console

    from qpelican.data.inspect import render_table, summarize, write_png

    s = summarize(str(file), max_jets=max_jets, l1_n=l1_n)
    if s["jets"] == 0:
        raise DataError(f"{file}: no jets to inspect (the file is empty or every jet has no constituents)")
    con = Console()
    con.print(render_table(s))
    con.print(f"as Level-1 candidates (data.format: l1), {s['l1']['n_constituents']} highest-pT per jet: "
              f"{s['l1']['summary']}", soft_wrap=True)
    if png is not None:
        png.parent.mkdir(parents=True, exist_ok=True)
        con.print(f"wrote {write_png(s, str(png))}")


def register(app: typer.Typer):
    """Attach `data` to the main qpelican app."""
    app.add_typer(data_app, name="data")
