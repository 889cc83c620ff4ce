"""Convert a qpelican model to an hls4ml project (io_parallel, Latency) and compile its C simulation."""
import contextlib
import io
import json
import math
import os
import re
import shutil
import time

from hls4ml.converters import keras_v2_to_hls
from hls4ml.utils.config import create_config

from qpelican.core.errors import ExportError, QpelicanError
from qpelican.core.io import LOCK_NAME, check_out_dir, run_model_path, swap_dir, write_json, write_text
from qpelican.hls import extension
from qpelican.hls import report as rp
from qpelican.hls.verify import compare, read_jets
from qpelican.hw.parts import DEFAULT_CLOCK_NS, DEFAULT_PART
from qpelican.hw.plan import make_plan
from qpelican.nn.models import model_constituents, model_format
from qpelican.nn.serialize import load_model

BACKENDS = {"vitis": "Vitis", "vivado": "Vivado"}
MANIFEST = ".qpelican-export.json"  # top-level names an export wrote (the rest of the folder is the user's)
HLS4ML_NAMES = {"build_lib.sh", "build_opt.tcl", "build_prj.tcl", "firmware", "hls4ml_config.yml", "project.tcl",
                "vivado_synth.tcl", "tb_data", "report.json", "verify.json"}
COMPILER_LINES = 40
C_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
CPP_KEYWORDS = frozenset("""alignas alignof and and_eq asm auto bitand bitor bool break case catch char char16_t char32_t
class compl const constexpr const_cast continue decltype default delete do double dynamic_cast else enum explicit
export extern false float for friend goto if inline int long mutable namespace new noexcept not not_eq nullptr
operator or or_eq private protected public register reinterpret_cast return short signed sizeof static
static_assert static_cast struct switch template this thread_local throw true try typedef typeid typename union
unsigned using virtual void volatile wchar_t while xor xor_eq main""".split())


def _backend_name(backend):
    key = str(backend).lower()
    if key not in BACKENDS:
        raise ExportError(f"backend {backend!r} is not supported; use Vitis or Vivado.")
    return BACKENDS[key]


@contextlib.contextmanager
def _quiet(enabled=True):
    """hls4ml prints its layer table and progress; keep the CLI output readable."""
    if not enabled:
        yield
        return
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        yield


def _hls4ml_view(model):
    """The same model with PairDropout as plain Dropout, which hls4ml's converter skips (both are
    the identity at inference); weights are shared, nothing is copied."""
    import tf_keras

    if not any(type(layer).__name__ == "PairDropout" for layer in model.layers):
        return model

    def clone(layer):
        if type(layer).__name__ == "PairDropout":
            return tf_keras.layers.Dropout(layer.rate, name=layer.name)
        return layer

    return tf_keras.models.clone_model(model, clone_function=clone)


def check_settings(backend="Vitis", clock=None, reuse=1, project_name="qpelican"):
    """Validate the export options before any work; returns the backend's canonical name."""
    bname = _backend_name(backend)
    if clock is not None and not (isinstance(clock, (int, float)) and math.isfinite(clock) and clock > 0):
        raise ExportError(f"--clock {clock}: the clock period must be a positive number of nanoseconds "
                          f"(e.g. --clock 5 for 200 MHz; default {DEFAULT_CLOCK_NS:g}).")
    if int(reuse) < 1:
        raise ExportError(f"--reuse must be a positive integer, got {reuse}.")
    if not isinstance(project_name, str) or not C_IDENTIFIER.fullmatch(project_name) \
            or project_name in CPP_KEYWORDS:
        raise ExportError(f"--project {project_name!r} is not a C identifier; the project name becomes the "
                          "top-level C++ function, so use letters, digits and underscores, not starting with a "
                          "digit and not a C++ keyword (e.g. --project qpelican_c2).")
    return bname


def check_out(out_dir):
    """Refuse an --out that is a file or a non-empty folder that holds no hls4ml project."""
    out_dir = check_out_dir(os.path.abspath(os.fspath(out_dir)))
    if os.path.isdir(out_dir) and not _is_project(out_dir) and _user_entries(out_dir, manifest=None):
        raise ExportError(f"--out {out_dir} exists and is not an hls4ml project; choose an empty or new --out "
                          "folder (an existing project there is replaced once the new one is complete).")
    return out_dir


def _is_project(d):
    return any(os.path.exists(os.path.join(d, f)) for f in ("hls4ml_config.yml", "build_prj.tcl", MANIFEST))


def _written_before(d):
    """Top-level names a previous export wrote into ``d`` (its manifest; hls4ml's names without one)."""
    try:
        with open(os.path.join(d, MANIFEST)) as f:
            names = json.load(f)
        if isinstance(names, list):
            return set(map(str, names))
    except (OSError, ValueError):
        pass
    return None


def _user_entries(d, manifest):
    """Entries of ``d`` that no export wrote (kept when a project is replaced)."""
    out = []
    for name in sorted(os.listdir(d)):
        if name in (LOCK_NAME, MANIFEST) or name.startswith(".qpelican-build"):
            continue
        if manifest is not None:
            if name not in manifest:
                out.append(name)
        elif not (name in HLS4ML_NAMES or name.endswith(("_prj", "_test.cpp", "_bridge.cpp", ".log"))):
            out.append(name)
    return out


def _build_dir(out_dir):
    parent, base = os.path.split(out_dir)
    os.makedirs(parent or ".", exist_ok=True)
    return os.path.join(parent, f".{base}.qpelican-build{os.getpid()}")


def _publish(hls_model, build, out_dir, log=None):
    """Move the finished project ``build`` into ``out_dir``: files a user put into the previous
    project folder and the directory's lock file are carried over, the rest of it is replaced."""
    names = sorted(os.listdir(build))
    text = os.path.join(build, "hls4ml_config.yml")
    if os.path.isfile(text):  # hls4ml records its output folder: point it at the final one
        with open(text) as f:
            body = f.read()
        write_text(text, body.replace(build, out_dir))
    write_json(os.path.join(build, MANIFEST), names)
    if os.path.isdir(out_dir):
        kept = _user_entries(out_dir, _written_before(out_dir))
        for name in kept:
            if not os.path.lexists(os.path.join(build, name)):
                os.replace(os.path.join(out_dir, name), os.path.join(build, name))
        if kept and log is not None:
            log(f"kept {len(kept)} file(s) in {out_dir} that no export wrote: {', '.join(kept[:8])}"
                + (" ..." if len(kept) > 8 else ""))
        lock = os.path.join(out_dir, LOCK_NAME)
        if os.path.exists(lock):  # same inode: a lock held on it stays held
            os.replace(lock, os.path.join(build, LOCK_NAME))
    swap_dir(build, out_dir)
    if hls_model is not None:
        hls_model.config.config["OutputDir"] = out_dir


def build_project(model, build, backend="Vitis", part=None, clock=None, reuse=1, project_name="qpelican",
                  write=True, quiet=True):
    """Write the hls4ml project of ``model`` into the new folder ``build``; returns ``(hls_model, plan)``."""
    bname = check_settings(backend, clock, reuse, project_name)
    model = _hls4ml_view(model)
    plan = make_plan(model)
    extension.register()
    cfg = create_config(output_dir=build, project_name=project_name, backend=bname,
                        part=part or DEFAULT_PART, clock_period=clock or DEFAULT_CLOCK_NS, io_type="io_parallel")
    cfg["KerasModel"] = model
    first = plan["layers"][0]
    cfg["HLSConfig"] = {
        "Model": {"Precision": "ap_fixed<16,6>", "ReuseFactor": int(reuse), "Strategy": "Latency", "BitExact": False},
        "LayerName": {plan["input"]["name"]: {"Precision": {"result": first.types["input"]}}},
    }
    with _quiet(quiet):  # the extension's handlers plan cfg["KerasModel"] themselves
        hls_model = keras_v2_to_hls(cfg)
        if write:
            hls_model.write()
    return hls_model, plan


def export_model(model, out_dir, backend="Vitis", part=None, clock=None, reuse=1, project_name="qpelican",
                 write=True, quiet=True, log=None):
    """Write the hls4ml project of a qpelican model.

    Args:
      model: a quantized nanoPELICAN tf-keras model (``qpelican.load_model`` / ``build_model``).
      out_dir: project folder. The project is built in a folder beside it and moved in place only
        once complete: an existing hls4ml project there is replaced then (files a user added to it
        are kept), and a failed export leaves it untouched.
      backend: "Vitis" (default) or "Vivado".
      part, clock: FPGA part and clock period in ns.
      reuse: hls4ml reuse factor (1: fully parallel; R limits multipliers to ceil(count / R)).
      project_name: top-level function name (a C identifier).

    Returns ``(hls_model, plan)``. Raises ExportError for models the firmware cannot reproduce.
    """
    check_settings(backend, clock, reuse, project_name)
    out_dir = check_out(out_dir)
    if not write:
        return build_project(model, out_dir, backend, part, clock, reuse, project_name, write=False, quiet=quiet)
    build = _build_dir(out_dir)
    shutil.rmtree(build, ignore_errors=True)
    try:
        hls_model, plan = build_project(model, build, backend, part, clock, reuse, project_name, quiet=quiet)
        _publish(hls_model, build, out_dir, log)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return hls_model, plan


def compile_model(hls_model, quiet=True):
    """Compile the C simulation with g++ (``hls_model.compile()``); returns seconds taken.

    A failed compile raises ExportError quoting the end of the compiler's output (hls4ml prints
    it to stdout, which ``quiet`` captures)."""
    t0 = time.perf_counter()
    buf = io.StringIO()
    try:
        if quiet:
            with contextlib.redirect_stdout(buf):
                hls_model.compile()
        else:
            hls_model.compile()
    except Exception as exc:
        lines = [ln for ln in buf.getvalue().splitlines() if ln.strip()]
        shown = "\n".join(lines[-COMPILER_LINES:])
        more = f" (last {COMPILER_LINES} of {len(lines)} lines)" if len(lines) > COMPILER_LINES else ""
        detail = (f"; the compiler said{more}:\n{shown}\n" if shown else
                  "; the compiler printed nothing (see the output above). ")
        raise ExportError(f"the C simulation did not compile ({exc}){detail}"
                          "Check that g++ is installed and on PATH (the C simulation needs no Vivado); "
                          "if it is, this is a qpelican bug: please report it with the lines above.") from None
    return time.perf_counter() - t0


def resolve_model_path(run):
    """RUN directory (``qpelican fit`` output: RUN/model.keras) or a model file -> model path."""
    return run_model_path(run, error=ExportError)


def load_for_export(run):
    """Load the model of a run directory or file (:func:`qpelican.load_model`: no code from the file runs)."""
    path = resolve_model_path(run)
    try:
        return load_model(path), path
    except QpelicanError as exc:
        raise ExportError(str(exc)) from None


def export_run(run_or_model, out_dir, backend="Vitis", part=None, clock=None, reuse=1, verify=None, jets=10000,
               synth=False, project_name="qpelican", log=print):
    """The whole ``qpelican export-hls`` flow; returns ``{"report": ..., "verify": ...}``.

    Every option and the --verify jets are checked before anything is written. The project, its
    ``report.json`` (and ``verify.json`` with ``verify``) are built in a folder beside ``out_dir``
    and moved in place only when everything succeeded, so a failed export leaves a previous
    project in ``out_dir`` as it was.
    """
    bname = check_settings(backend, clock, reuse, project_name)
    out_dir = check_out(out_dir)
    if synth and shutil.which(rp.HLS_TOOLS[bname]) is None:
        rp.synthesize(None, bname)  # raises the clear "tool not on PATH" error before any work
    if isinstance(run_or_model, (str, os.PathLike)):
        model, src = load_for_export(run_or_model)
    else:
        model, src = run_or_model, "<in-memory model>"
    p4 = labels = None
    if verify is not None:
        p4, labels, verify_file = read_jets(verify, model_constituents(model), jets, log=log, fmt=model_format(model))
        if len(p4) < int(jets):
            log(f"note: {verify_file} holds {len(p4)} jets with constituents, fewer than --jets {jets}; "
                f"verifying all {len(p4)}")
    build = _build_dir(out_dir)
    shutil.rmtree(build, ignore_errors=True)
    try:
        t0 = time.perf_counter()
        hls_model, plan = build_project(model, build, backend=bname, part=part, clock=clock, reuse=reuse,
                                        project_name=project_name)
        t_export = time.perf_counter() - t0
        settings = {"model": os.fspath(src), "out": out_dir, "backend": bname,
                    "part": part or DEFAULT_PART, "clock": clock or DEFAULT_CLOCK_NS, "reuse": int(reuse),
                    "io_type": "io_parallel", "strategy": "Latency", "project_name": project_name,
                    "export_seconds": round(t_export, 3)}
        rep = rp.build_report(model, plan, hls_model, settings)
        result = {"report": rep, "verify": None}
        if verify is not None:
            log("compiling the C simulation (g++) ...")
            rep["settings"]["compile_seconds"] = round(compile_model(hls_model), 3)
            log(f"running {len(p4)} jets through QKeras and the C simulation ...")
            ver, _, _ = compare(model, hls_model, plan, p4, labels)
            ver["data"] = verify_file
            ver["compile_seconds"] = rep["settings"]["compile_seconds"]
            write_json(os.path.join(build, "verify.json"), ver)
            result["verify"] = ver
        if synth:
            rep["synthesis"] = rp.synthesize(hls_model, bname)
            rep["synthesis"]["project"] = out_dir
        write_json(os.path.join(build, "report.json"), rep)
        _publish(hls_model, build, out_dir, log)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return result
