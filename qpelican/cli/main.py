"""The `qpelican` command line.

Each command family lives in its own module of `qpelican.cli` exposing `register(app)`; heavy imports
(TensorFlow, hls4ml, Pythia) happen inside the commands so that `--help` stays fast.
User errors (`QpelicanError`) print one paragraph and exit with status 2, no traceback.
"""
import sys

import typer
from rich.console import Console
from rich.markup import escape

from qpelican.cli import data, hls, rtl, train, tune
from qpelican.core.errors import QpelicanError

app = typer.Typer(
    name="qpelican",
    help="Train, tune and export quantized Lorentz-invariant PELICAN / nanoPELICAN jet taggers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Command families, in the order data flows: data -> fit/evaluate/explain -> tune -> export.
for _family in (data, train, tune, hls, rtl):
    _family.register(app)


def main(argv=None):
    """Entry point: run the app, turning user errors into a short message and exit code 2."""
    err = Console(stderr=True)
    try:
        rv = app(args=argv, standalone_mode=False)
        if isinstance(rv, int) and rv:
            if rv == 130:  # typer returns 130 for Ctrl-C when not in standalone mode
                err.print("interrupted: finished work is kept; rerun with --resume to continue")
            sys.exit(rv)
    except QpelicanError as exc:
        err.print("[bold red]error:[/] " + escape(str(exc)), highlight=False)  # file names, compiler output: text
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted: finished work is kept; rerun with --resume to continue")
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:
        # usage errors (bad option values, missing arguments) are click exceptions: from click itself
        # or, with typer >= 0.24, from the copy of click that typer bundles (typer._click)
        if callable(getattr(exc, "show", None)) and isinstance(getattr(exc, "exit_code", None), int):
            exc.show()
            sys.exit(exc.exit_code)
        if type(exc).__name__ == "Abort":
            sys.exit(1)
        raise
    return 0


if __name__ == "__main__":
    main()
