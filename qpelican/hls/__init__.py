"""Firmware export of nanoPELICAN through hls4ml (``qpelican export-hls``).

* :func:`export_model` — hls4ml project (io_parallel, Latency) of a quantized nano model;
* :func:`compile_model`, :func:`predict_phat` — C simulation (g++, no Vivado needed);
* :func:`export_run` — the CLI flow: project + report.json (+ verify.json, + synthesis);
* :func:`make_plan` — firmware plan (types, widths, constants) without hls4ml.

The HLS C++ lives in the top-level ``export/`` folder (installed as ``qpelican.export``).
"""


def __getattr__(name):
    if name == "predict_phat":
        from qpelican.hls.verify import predict_phat

        return predict_phat
    if name in ("export_model", "compile_model", "export_run"):
        from qpelican.hls import exporter

        return getattr(exporter, name)
    if name == "make_plan":
        from qpelican.hw.plan import make_plan

        return make_plan
    raise AttributeError(name)


__all__ = ["export_model", "compile_model", "predict_phat", "export_run", "make_plan"]
