"""`qpelican tune`: Keras Tuner bit-width search, validation AUC against bit operations."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Optional

import typer

from qpelican.config.search import (COST_AXES, DEFAULT_COST_AXIS, DEFAULT_COST_WEIGHT, DEFAULT_ORACLE,
                                   DEFAULT_TRIALS, ORACLES)


def register(app: typer.Typer):
    app.command("tune")(tune)


def tune(
    recipe: Path = typer.Argument(..., help="YAML recipe, e.g. recipes/c2_8bit.yaml (optional `search:` section)"),
    out: Optional[Path] = typer.Option(None, "--out", help="tune directory (default tunes/<recipe stem>)"),
    data: Optional[Path] = typer.Option(None, "--data", help="dataset directory/file, overrides data.path"),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="training epochs per trial; scales a finetune "
                                         "recipe's float pre-training as in fit (the front's recipes keep "
                                         "the recipe's epochs)"),
    jets: Optional[int] = typer.Option(None, "--jets", min=30,
                                       help="simulated sample size (or cap on training jets with a dataset)"),
    trials: int = typer.Option(DEFAULT_TRIALS, "--trials", min=1, help="number of trials (Keras Tuner max_trials)"),
    oracle: str = typer.Option(DEFAULT_ORACLE, "--oracle", help=" | ".join(ORACLES)),
    cost: str = typer.Option(DEFAULT_COST_AXIS, "--cost",
                             help="hardware-cost axis: " + "; ".join(f"{k} = {u}, {src}" for k, (u, src) in COST_AXES.items())),
    max_cost: Optional[int] = typer.Option(None, "--max-cost", min=1,
                                           help="budget on the cost axis: trials above it are not trained and get a "
                                                "penalised score"),
    cost_weight: float = typer.Option(DEFAULT_COST_WEIGHT, "--cost-weight", min=0.0,
                                      help="objective = val AUC - W * log2(cost / recipe's cost)"),
    resume: bool = typer.Option(False, "--resume", help="continue an interrupted search in --out"),
    seed: int = typer.Option(0, "--seed", help="oracle seed (training uses the recipe's seed)"),
    pretrain_epochs: Optional[int] = typer.Option(None, "--pretrain-epochs", min=1,
                                                  help="float pre-training epochs of a qat: finetune recipe, "
                                                       "shared by all trials (default: the recipe's, scaled "
                                                       "by --epochs)"),
    retrain_seeds: Optional[int] = typer.Option(None, "--retrain-seeds", min=1,
                                                help="after the search, retrain every Pareto point with K seeds "
                                                     "(its recipe's epochs) and write mean ± std and best of its "
                                                     "test AUC and 1/eps_B into pareto.json (with --resume: the "
                                                     "front of a finished search)"),
    retrain_epochs: Optional[int] = typer.Option(None, "--retrain-epochs", min=1,
                                                 help="epochs of the --retrain-seeds runs (default: the recipe's)"),
):
    """Search fixed-point widths with Keras Tuner; write the AUC-vs-BOPs Pareto front and one recipe per point.

    Distributed: set KERASTUNER_TUNER_ID (chief / tuner0, tuner1, ...), KERASTUNER_ORACLE_IP and
    KERASTUNER_ORACLE_PORT and run the same command once per process (docs/tuning.md).

    --retrain-seeds K retrains the front's points with K seeds each (into OUT/retrain/trial_<id>/),
    so a chosen point's AUC is known with its spread; `--resume --retrain-seeds 5` does it for a
    search that has already finished.
    """
    from rich.console import Console

    from qpelican.config.recipe import load_recipe

    con = Console(highlight=False, soft_wrap=True)
    r = load_recipe(recipe)
    out = out or Path("tunes") / recipe.stem
    con.print(f"[bold]qpelican tune[/] {recipe} -> {out}  ({oracle}, {trials} trials, "
              f"{epochs or r.training.epochs} epochs per trial"
              + f", cost axis {cost}" + (f", budget {max_cost:,}" if max_cost else "") + ")")
    from qpelican.core.io import dir_lock
    from qpelican.tune import search as tune_mod

    # one search per directory; a distributed search (chief + workers) shares it by design
    lock = contextlib.nullcontext() if os.environ.get("KERASTUNER_TUNER_ID") else dir_lock(out, "tune directory")
    try:
        with lock:
            tune_mod.tune(r, out, data=data, epochs=epochs, jets=jets, trials=trials, oracle=oracle,
                          max_cost=max_cost, cost_weight=cost_weight, resume=resume, seed=seed, log=con.print,
                          pretrain_epochs=pretrain_epochs, cost=cost)
            if retrain_seeds and "chief" in os.environ.get("KERASTUNER_TUNER_ID", "chief"):
                from qpelican.tune.retrain import retrain_front

                retrain_front(out, seeds=retrain_seeds, epochs=retrain_epochs, log=con.print)
    except KeyboardInterrupt as exc:
        detail = f" ({exc})" if str(exc) else ""
        typer.echo(f"interrupted{detail}: finished trials are kept in {out}; rerun the same command with --resume "
                   "to continue.", err=True)
        raise SystemExit(130)
