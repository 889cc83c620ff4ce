"""The README stays true: its quick start runs as written, and its Commands table matches the CLI.

- `test_readme_quick_start`: every line of the ```bash block under "## Quick start" runs exactly as
  written (through bash, in a temporary directory holding a `recipes` link to the repository's
  recipes/), exits 0, and leaves the files the next line and the reader expect. A few minutes.
- `test_help`: `qpelican --help` and every subcommand's `--help` exit 0 and describe every option.
- `test_commands_table_matches_cli`: the commands of the README's table are exactly the CLI's, and
  the flags the table names exist on those commands.
"""
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

# every command a user can run, as typed after `qpelican`
COMMANDS = ["fit", "evaluate", "explain", "tune", "export-hls", "export-rtl", "data simulate", "data inspect"]


def _section(title):
    """Text of the README section `## title` (up to the next `## `)."""
    text = README.read_text()
    m = re.search(rf"^## {re.escape(title)}\s*$(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    assert m, f"README.md has no '## {title}' section"
    return m.group(1)


def quick_start_commands():
    """The lines of the first ```bash block of the README's quick start (comments and blanks dropped)."""
    m = re.search(r"^```bash\s*\n(.*?)^```", _section("Quick start"), flags=re.M | re.S)
    assert m, "the README quick start has no ```bash block"
    return [ln.strip() for ln in m.group(1).splitlines() if ln.strip() and not ln.strip().startswith("#")]


def _qpelican():
    """argv prefix for the installed `qpelican` entry point (or the module, if not on PATH)."""
    exe = Path(sys.executable).with_name("qpelican")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "qpelican.cli.main"]


def _env(tmp_path=None):
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if tmp_path is not None:  # a fit that names no dataset must not touch the user's cache
        env["QPELICAN_CACHE"] = str(tmp_path / "cache")
    return env


def _opt(argv, name):
    """Value of option `name` in argv (None if absent)."""
    return argv[argv.index(name) + 1] if name in argv else None


def _check_outputs(cwd, argv, stdout):
    """Files each quick-start command is documented to write (README Commands table)."""
    assert argv[0] == "qpelican", argv
    cmd = argv[1]
    if cmd == "data" and argv[2] == "simulate":
        out = cwd / _opt(argv, "--out")
        for split in ("train", "val", "test"):
            assert (out / f"{split}.h5").stat().st_size > 0, split
    elif cmd == "fit":
        out = cwd / (_opt(argv, "--out") or f"runs/{Path(argv[2]).stem}")
        for f in ("recipe.yaml", "model.keras", "results.json", "roc.png"):
            assert (out / f).exists(), f"fit did not write {out / f}"
        res = json.loads((out / "results.json").read_text())
        assert 0.0 <= res["auc"] <= 1.0 and res["n_params"] > 0, res
    elif cmd == "evaluate":
        written = list((cwd / argv[2]).glob("evaluate_*.json")) if _opt(argv, "--out") is None \
            else [cwd / _opt(argv, "--out")]
        assert written and all(p.exists() for p in written), "evaluate wrote no JSON"
        res = json.loads(written[0].read_text())
        assert 0.0 <= res["auc"] <= 1.0, res
    elif cmd == "explain":
        assert stdout.strip(), "explain printed nothing"
    elif cmd == "tune":
        out = cwd / (_opt(argv, "--out") or f"tunes/{Path(argv[2]).stem}")
        for f in ("pareto.json", "pareto.png", "trials.csv"):
            assert (out / f).exists(), f"tune did not write {out / f}"
        assert list((out / "pareto").glob("*.yaml")), "tune wrote no Pareto-point recipe"
        ntrials = int(_opt(argv, "--trials") or 0)
        if ntrials:
            rows = json.loads((out / "trials.json").read_text())
            assert len(rows) == ntrials, (len(rows), ntrials)
    elif cmd == "export-hls":
        out = cwd / _opt(argv, "--out")
        assert (out / "report.json").exists(), "export-hls wrote no report.json"
        if "--verify" in argv:
            verify = json.loads((out / "verify.json").read_text())
            if _opt(argv, "--jets"):
                assert verify["jets"] == int(_opt(argv, "--jets")), verify["jets"]
            assert verify["differing_jets"] == 0, f"C simulation not bit-exact: {verify}"


@pytest.mark.slow
def test_readme_quick_start(tmp_path):
    lines = quick_start_commands()
    assert len(lines) >= 5, lines
    (tmp_path / "recipes").symlink_to(REPO / "recipes", target_is_directory=True)
    env = _env(tmp_path)
    timings = []
    for line in lines:
        t0 = time.time()
        p = subprocess.run(["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True, text=True)
        timings.append((time.time() - t0, line))
        assert p.returncode == 0, (f"README quick-start command failed (exit {p.returncode}):\n  {line}\n"
                                   f"--- stdout (tail) ---\n{p.stdout[-3000:]}\n--- stderr (tail) ---\n{p.stderr[-3000:]}")
        _check_outputs(tmp_path, shlex.split(line, comments=True), p.stdout)
    print("\n".join(f"{s:6.1f} s  {line}" for s, line in timings))


def _run_help(args):
    return subprocess.run(_qpelican() + args + ["--help"], capture_output=True, text=True, env=_env(),
                          timeout=120)


@pytest.mark.parametrize("command", [""] + COMMANDS + ["data"])
def test_help(command):
    args = command.split()
    p = _run_help(args)
    assert p.returncode == 0, p.stderr
    assert "Usage:" in p.stdout and "--help" in p.stdout, p.stdout


def _cli_commands():
    """{'fit': click.Command, 'data simulate': ...} from the Typer app (groups expanded)."""
    import typer

    from qpelican.cli.main import app

    root = typer.main.get_command(app)
    found = {}

    def walk(group, prefix):
        for name, cmd in group.commands.items():
            full = f"{prefix}{name}"
            if getattr(cmd, "commands", None):  # a group (typer may vendor its own click)
                walk(cmd, full + " ")
            else:
                found[full] = cmd

    walk(root, "")
    return root, found


def test_every_command_documented_in_help():
    """Each command and each of its parameters carries a help text."""
    _, cmds = _cli_commands()
    assert sorted(cmds) == sorted(COMMANDS), sorted(cmds)
    for name, cmd in cmds.items():
        assert (cmd.help or "").strip(), f"`qpelican {name}` has no help text"
        for p in cmd.params:
            assert (getattr(p, "help", None) or "").strip(), f"`qpelican {name}`: {p.name} has no help"


def _readme_table():
    """{command: row text} from the README's Commands table."""
    rows = {}
    for line in _section("Commands").splitlines():
        m = re.match(r"\|\s*`qpelican ([^`]*)`\s*\|(.*)", line)
        if not m:
            continue
        words = []
        for w in m.group(1).split():
            if w.startswith("-") or not w.islower():  # arguments (RUN, DATA) and options end the name
                break
            words.append(w)
        rows[" ".join(words)] = m.group(0)
    return rows


def test_commands_table_matches_cli():
    table = _readme_table()
    assert table, "no commands found in the README's Commands table"
    _, cmds = _cli_commands()
    assert sorted(table) == sorted(cmds), (f"README table: {sorted(table)}\nCLI: {sorted(cmds)}")

    # the top-level --help lists every top-level command, `data --help` its subcommands
    top = _run_help([]).stdout
    data = _run_help(["data"]).stdout
    for name in table:
        parts = name.split()
        assert re.search(rf"\b{re.escape(parts[-1])}\b", data if len(parts) > 1 else top), name

    # every flag the table names exists on that command
    for name, row in table.items():
        opts = {o for p in cmds[name].params for o in getattr(p, "opts", [])}
        for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", row):
            assert flag in opts, f"README table names `{flag}` for `qpelican {name}`, which has {sorted(opts)}"


def test_quick_start_flags_exist():
    """Cheap early warning (no training): each quick-start flag exists on its command."""
    _, cmds = _cli_commands()
    for line in quick_start_commands():
        argv = shlex.split(line, comments=True)
        assert argv[0] == "qpelican", line
        name = argv[1] if argv[1] != "data" else f"data {argv[2]}"
        assert name in cmds, f"README quick start uses unknown command `qpelican {name}`"
        opts = {o for p in cmds[name].params for o in getattr(p, "opts", [])}
        for a in argv[2:]:
            if a.startswith("--"):
                assert a.split("=")[0] in opts, f"`{line}`: `qpelican {name}` has no option {a}"
