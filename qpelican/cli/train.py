"""`qpelican fit`, `qpelican evaluate`, `qpelican explain` (heavy imports inside the commands)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from qpelican.core.errors import QpelicanError


def register(app: typer.Typer):
    app.command("fit")(fit)
    app.command("evaluate")(evaluate)
    app.command("explain")(explain)


def _console():
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def fit(
    recipe: Path = typer.Argument(..., help="YAML recipe, e.g. recipes/c2_8bit.yaml"),
    out: Optional[Path] = typer.Option(None, "--out", help="run directory (default runs/<recipe stem>)"),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="override training.epochs (finetune recipes: QAT epochs; the float pre-training scales along)"),
    data: Optional[Path] = typer.Option(None, "--data", help="dataset directory/file, overrides data.path"),
    seeds: Optional[int] = typer.Option(None, "--seeds", min=1, help="train K seeds (override seeds)"),
    jets: Optional[int] = typer.Option(None, "--jets", min=30,
                                       help="simulated sample size (or cap on training jets with a dataset)"),
    resume: bool = typer.Option(False, "--resume", help="continue an interrupted run in --out"),
    sets: Optional[list[str]] = typer.Option(None, "--set", metavar="SECTION.KEY=VALUE",
                                             help="override any recipe key, e.g. --set model.dropout=0 or --set seed=3 (repeatable)"),
):
    """Train a model (or several seeds) from a YAML recipe and write the run directory."""
    from qpelican.config.recipe import load_recipe

    from qpelican.core.io import check_out_dir, dir_lock

    r = load_recipe(recipe).with_overrides(epochs=epochs, data=data, seeds=seeds, jets=jets, sets=sets or ())
    out = out or Path("runs") / recipe.stem
    check_out_dir(out)
    if resume and not _has_run(out):
        raise QpelicanError(f"--resume: run directory {out} holds no run to continue (no seeds/ checkpoint); "
                            "drop --resume to start a new run there, or give the --out of the interrupted run.")
    with dir_lock(out, "run directory"):  # one writer per run directory
        if not resume and _has_run(out):
            raise QpelicanError(f"run directory {out} already holds a run; pass --resume to continue it, "
                                "or --out NEW_DIR to start another (delete the directory to start over).")
        con = _console()
        con.print(f"[bold]qpelican fit[/] {recipe} -> {out}  ({r.seeds} seed(s), {r.training.epochs} epochs"
                  + (", quantized" if r.quantized else ", float") + ")", markup=True)
        import qpelican.training.train as train

        try:
            res = train.fit_recipe(r, out, resume=resume, progress=True,
                                   log=lambda line: con.print(line, markup=False))  # "[qat]" is text, not markup
        except KeyboardInterrupt as exc:  # Ctrl-C or the test hook: the last committed epoch is kept
            detail = f" ({exc})" if str(exc) else ""
            typer.echo(f"interrupted{detail}: finished epochs are checkpointed in {out}; rerun the same command "
                       "with --resume to continue.", err=True)
            raise SystemExit(130)
    _print_metrics(con, res, title=f"results ({out}/results.json)")


def _has_run(out):
    seeds = Path(out) / "seeds"
    return seeds.is_dir() and any(seeds.iterdir())


def _fmt(x, spec):
    return "-" if x is None else format(x, spec)


def _print_metrics(con, res, title="results"):
    from rich.table import Table

    t = Table(title=title, show_header=True)
    for c in ("", "accuracy", "AUC", "1/eps_B @0.3", "1/eps_B @0.5"):
        t.add_column(c)
    t.add_row("model", _fmt(res.get("accuracy"), ".4f"), _fmt(res.get("auc"), ".4f"), _fmt(res.get("rej30"), ".1f"),
              _fmt(res.get("rej50"), ".1f"))
    ss = res.get("seeds_summary")
    if ss:
        def ms(k, spec):
            v = ss[k]
            return f"{_fmt(v['mean'], spec)} ± {_fmt(v['std'], spec)}"
        t.add_row(f"{ss['n_seeds']} seeds mean±std", ms("accuracy", ".4f"), ms("auc", ".4f"), ms("rej30", ".1f"),
                  ms("rej50", ".1f"))
    for key, name in (("baseline", "jet-mass baseline"), ("baseline_window", "mass-window baseline")):
        b = res.get(key)
        if b:
            t.add_row(name, _fmt(b.get("accuracy"), ".4f"), _fmt(b.get("auc"), ".4f"),
                      _fmt(b.get("rej30"), ".1f"), _fmt(b.get("rej50"), ".1f"))
    con.print(t)
    extra = []
    if res.get("n_params") is not None:
        extra.append(f"parameters {res['n_params']}")
    if res.get("bops") is not None:
        extra.append(f"BOPs {res['bops']:,}")
    tm = res.get("timing") or {}
    if tm.get("jets_per_second"):
        extra.append(f"training {tm['train_seconds']:.0f} s, {tm['jets_per_second']:.0f} jets/s, "
                     f"{tm['seconds_per_epoch']:.2f} s/epoch")
    if extra:
        con.print(", ".join(extra))


def evaluate(
    run: Path = typer.Argument(..., help="run directory (uses RUN/model.keras) or a .keras model file"),
    data: Path = typer.Argument(..., help="HDF5 file, or a directory (its test split is used)"),
    out: Optional[Path] = typer.Option(None, "--out", help="JSON file (default RUN/evaluate_<data name>.json)"),
    jets: Optional[int] = typer.Option(None, "--jets", min=2, help="evaluate only the first K jets"),
):
    """Evaluate a trained model on a dataset: accuracy, AUC, 1/eps_B at eps_S = 0.3 and 0.5."""
    from qpelican.training.results import evaluate_run

    con = _console()
    res, path = evaluate_run(run, data, out=out, jets=jets)
    _print_metrics(con, res, title=f"{res['data']['file']} ({res['jets']} jets)")
    if "l1_grid" in res:  # Level-1 candidates: what saturated on the grid
        con.print(res["l1_grid"]["summary"], soft_wrap=True)
    con.print(f"written {path}")


def explain(
    run: Path = typer.Argument(..., help="run directory (uses RUN/model.keras) or a .keras model file"),
    data: Optional[Path] = typer.Option(None, "--data", help="jets for the numerical check (default: the run's test split)"),
    jets: int = typer.Option(1000, "--jets", min=1, help="jets used for the numerical check"),
):
    """Print a nanoPELICAN as the paper's analytic formula (eq. 1) and check it reproduces the model."""
    from qpelican.analysis.explain import explain_run

    explain_run(run, data=data, jets=jets, log=_console().print)
