"""Convert a qpelican model to an hls4ml project (io_parallel, Latency) and compile its C simulation."""
import contextlib
import io
import os
import shutil
import time

from qpelican.core.errors import ExportError
from qpelican.hw.plan import make_plan
from qpelican.core.io import write_json as _write_json

BACKENDS = {"vitis": "Vitis", "vivado": "Vivado"}
DEFAULT_PART = "xcvu13p-flga2577-2-e"
DEFAULT_CLOCK = 5.0


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


def export_model(model, out_dir, backend="Vitis", part=None, clock=None, reuse=1, project_name="qpelican",
                 write=True, quiet=True):
    """Write the hls4ml project of a qpelican model.

    Args:
      model: a quantized nanoPELICAN tf-keras model (``qpelican.load_model`` / ``build_model``).
      out_dir: project folder (created; an existing hls4ml project there is replaced).
      backend: "Vitis" (default) or "Vivado".
      part, clock: FPGA part and clock period in ns.
      reuse: hls4ml reuse factor (1: fully parallel; R limits multipliers to ceil(count / R)).
      project_name: top-level function name.

    Returns ``(hls_model, plan)``. Raises ExportError for models the firmware cannot reproduce.
    """
    import hls4ml
    from hls4ml.converters import keras_v2_to_hls
    from hls4ml.utils.config import create_config

    from qpelican.hls import extension

    if int(reuse) < 1:
        raise ExportError(f"--reuse must be a positive integer, got {reuse}.")
    model = _hls4ml_view(model)
    plan = make_plan(model)
    extension.register()
    bname = _backend_name(backend)
    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        if not os.path.exists(os.path.join(out_dir, "hls4ml_config.yml")) and not os.path.exists(
                os.path.join(out_dir, "build_prj.tcl")):
            raise ExportError(f"{out_dir} exists and is not an hls4ml project; choose an empty or new --out folder.")
        shutil.rmtree(out_dir)
    cfg = create_config(output_dir=out_dir, project_name=project_name, backend=bname,
                        part=part or DEFAULT_PART, clock_period=clock or DEFAULT_CLOCK, io_type="io_parallel")
    cfg["KerasModel"] = model
    first = plan["layers"][0]
    cfg["HLSConfig"] = {
        "Model": {"Precision": "ap_fixed<16,6>", "ReuseFactor": int(reuse), "Strategy": "Latency", "BitExact": False},
        "LayerName": {plan["input"]["name"]: {"Precision": {"result": first.types["input"]}}},
    }
    extension.PLANS[id(model)] = plan
    try:
        with _quiet(quiet):
            hls_model = keras_v2_to_hls(cfg)
            if write:
                hls_model.write()
    finally:
        extension.PLANS.pop(id(model), None)
    del hls4ml
    return hls_model, plan


def compile_model(hls_model, quiet=True):
    """Compile the C simulation with g++ (``hls_model.compile()``); returns seconds taken."""
    t0 = time.perf_counter()
    with _quiet(quiet):
        try:
            hls_model.compile()
        except Exception as exc:
            raise ExportError(f"the C simulation did not compile ({exc}); see the g++ output above. "
                              "Check that g++ is installed (the C simulation needs no Vivado).") from None
    return time.perf_counter() - t0


def resolve_model_path(run):
    """RUN directory (``qpelican fit`` output: RUN/model.keras) or a model file -> model path."""
    from qpelican.core.io import run_model_path

    return run_model_path(run, error=ExportError)


def load_for_export(run):
    """Load the model of a run directory or file with all qpelican custom objects."""
    import qpelican

    path = resolve_model_path(run)
    try:
        return qpelican.load_model(path), path
    except Exception as exc:
        raise ExportError(f"{path}: cannot load the model ({exc}); pass a model saved by qpelican.") from None






def export_run(run_or_model, out_dir, backend="Vitis", part=None, clock=None, reuse=1, verify=None, jets=10000,
               synth=False, project_name="qpelican", log=print):
    """The whole ``qpelican export-hls`` flow; returns ``{"report": ..., "verify": ...}``.

    Writes the project to ``out_dir`` plus ``report.json`` (and ``verify.json`` with ``verify``).
    """
    from qpelican.hls import report as rp

    if isinstance(run_or_model, (str, os.PathLike)):
        model, src = load_for_export(run_or_model)
    else:
        model, src = run_or_model, "<in-memory model>"
    bname = _backend_name(backend)
    if synth and shutil.which(rp.HLS_TOOLS[bname]) is None:
        rp.synthesize(None, bname)  # raises the clear "tool not on PATH" error before any work
    t0 = time.perf_counter()
    hls_model, plan = export_model(model, out_dir, backend=bname, part=part, clock=clock, reuse=reuse,
                                   project_name=project_name)
    t_export = time.perf_counter() - t0
    settings = {"model": os.fspath(src), "out": os.path.abspath(out_dir), "backend": bname,
                "part": part or DEFAULT_PART, "clock": clock or DEFAULT_CLOCK, "reuse": int(reuse),
                "io_type": "io_parallel", "strategy": "Latency", "project_name": project_name,
                "export_seconds": round(t_export, 3)}
    rep = rp.build_report(model, plan, hls_model, settings)
    result = {"report": rep, "verify": None}
    if verify is not None:
        from qpelican.hls.verify import compare, read_jets
        from qpelican.nn.models import model_constituents

        p4, labels = read_jets(verify, model_constituents(model), jets)
        if len(p4) < int(jets):
            log(f"note: {verify} holds {len(p4)} jets, fewer than --jets {jets}; verifying all {len(p4)}")
        log("compiling the C simulation (g++) ...")
        rep["settings"]["compile_seconds"] = round(compile_model(hls_model), 3)
        log(f"running {len(p4)} jets through QKeras and the C simulation ...")
        ver, _, _ = compare(model, hls_model, plan, p4, labels)
        ver["data"] = os.fspath(verify)
        ver["compile_seconds"] = rep["settings"]["compile_seconds"]
        _write_json(os.path.join(out_dir, "verify.json"), ver)
        result["verify"] = ver
    if synth:
        rep["synthesis"] = rp.synthesize(hls_model, bname)
    _write_json(os.path.join(out_dir, "report.json"), rep)
    return result
