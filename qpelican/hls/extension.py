"""hls4ml extension for qpelican layers: Keras-v2 handlers, IR layers, config/function templates.

Registered once per process by :func:`register` (idempotent), following hls4ml 1.3.0's extension
API (``register_keras_v2_layer_handler``, ``hls4ml.model.layers.register_layer``,
``backend.register_template``, ``backend.register_source``):

* the Keras-v2 handlers map each qpelican layer to an IR layer carrying its
  :class:`~qpelican.hw.plan.LayerPlan` (types and quantized constants, see ``plan.py``) and its
  :class:`~qpelican.hw.inventory.Stage` (operator counts: the multiplier limits). As in hls4ml's
  extension-API example (``test/pytest/test_extensions.py``), a handler reads its layer from what
  the converter passes it: the layer's config and the reader of the Keras model. A layer's plan
  depends on the layers before it (input ranges, beams), so the handler plans the reader's model
  (:func:`~qpelican.hw.plan.make_plan`, a pure function: the exporter's plan, recomputed) and
  takes its layer; no state is handed over outside hls4ml's call;
* the IR layers declare their output array and their weights (coefficients, biases and the
  normaliser tables become hls4ml weight variables, written to ``firmware/weights``; a folded
  BatchNorm's bias tables over the multiplicity n replace the bias vectors, flagged by the config
  struct's ``bias_tables``);
* the templates write one config struct per layer and the call of the HLS function in
  ``export/nnet_qp_*.h`` (copied to ``firmware/nnet_utils``).
"""
import importlib.resources
import math
from pathlib import Path

import hls4ml
from hls4ml.backends.template import FunctionCallTemplate, LayerConfigTemplate
from hls4ml.converters.keras_v2_to_hls import get_layer_handlers
from hls4ml.model.layers import Layer

from qpelican.hw.inventory import stage_of
from qpelican.hw.plan import IR_NAMES, make_plan, type_str

BACKENDS = ("Vivado", "Vitis")
HEADERS = ("nnet_qp_lorentz.h", "nnet_qp_lineq.h", "nnet_qp_l1.h")

_registered = False


def header_dir():
    """Folder of the HLS C++ headers shipped in the installed package (``qpelican.export``)."""
    return Path(str(importlib.resources.files("qpelican.export")))


# ------------------------------------------------------------------------------------------------
# Keras-v2 handlers


def _handler(keras_layer, input_names, _input_shapes, data_reader, *args):
    """hls4ml Keras-v2 handler of a qpelican layer: (IR layer dict, output shape).

    Args:
      keras_layer: the layer's entry of the model config (its name is read).
      input_names, _input_shapes: as hls4ml passes them (the shapes follow from the plan).
      data_reader: hls4ml's KerasModelReader; its ``model`` is planned.
    """
    name = keras_layer["config"]["name"]
    model = getattr(data_reader, "model", None)  # a KerasModelReader; files (KerasH5) have none
    if model is None:
        raise RuntimeError(f"qpelican layer {name!r}: convert in-memory qpelican models with "
                           "qpelican.hls.export_model().")
    lp = make_plan(model)["by_name"][name]
    layer = {"class_name": lp.ir_class, "name": name, "qp_plan": lp, "qp_stage": stage_of(lp)}
    if input_names is not None:
        layer["inputs"] = list(input_names)
    return layer, [None, *lp.out_shape]


# ------------------------------------------------------------------------------------------------
# IR layers


def _ir_layers():
    class _QPLayer(Layer):
        def initialize(self):
            lp = self.get_attr("qp_plan")
            backend = self.model.config.backend
            self.add_output_variable(list(lp.out_shape), precision=backend.convert_precision_string(lp.out_type))
            for wname, (data, typ) in lp.weights.items():
                self.add_weights_variable(name=wname, var_name=f"{wname}_l{{index}}", type_name=f"{wname}_l{{index}}_t",
                                          precision=backend.convert_precision_string(typ), data=data)

    classes = {}
    for ir in IR_NAMES.values():
        classes[ir] = type(ir, (_QPLayer,), {})
    return classes


# ------------------------------------------------------------------------------------------------
# templates


def _multiplier_limit(node, reuse):
    """ceil(multipliers / reuse): the layer's multipliers counted by its inventory stage."""
    return math.ceil(node.get_attr("qp_stage").n_multipliers / reuse)


def _cfg_lines(lp, node):
    """Lines of the config struct of one layer."""
    p = lp.params
    t = lp.types
    reuse = int(node.get_attr("reuse_factor", 1) or 1)
    b = lambda v: "true" if v else "false"  # noqa: E731
    n = lp.n
    lines = []
    if lp.keras_class == "MomentumInput":
        lines += [f"static const unsigned n_in = {p['n_in']};", f"static const unsigned n_out = {p['n_out']};",
                  f"static const bool beams = {b(p['beams'])};",
                  f"static double beam_energy() {{ return {p['beam_energy']!r}; }}"]
        base = "qp_momentum_config"
    elif lp.keras_class == "ParticleMask":
        lines += [f"static const unsigned n = {n};"]
        base = "qp_mask_config"
    elif lp.keras_class == "LorentzInvariants":
        lines += [f"static const unsigned n = {n};", f"static const bool zero_diagonal = {b(p['zero_diagonal'])};",
                  f"static const unsigned reuse_factor = {reuse};",
                  f"static const unsigned multiplier_limit = {_multiplier_limit(node, reuse)};",
                  f"typedef {type_str(t['dot_t'])} dot_t;"]
        base = "qp_invariants_config"
    elif lp.keras_class == "L1CandidateInput":
        lines += [f"static const unsigned n_in = {p['n_in']};", f"static const unsigned n = {n};",
                  f"static const bool beams = {b(p['beams'])};", f"static double beam_pt() {{ return {p['beam_pt']!r}; }}",
                  f"typedef {t['pt_t']} pt_t;", f"typedef {t['angle_t']} angle_t;"]
        base = "qp_l1_input_config"
    elif lp.keras_class == "CandidateMask":
        lines += [f"static const unsigned n = {n};"]
        base = "qp_candidate_mask_config"
    elif lp.keras_class == "L1Invariants":
        lines += [f"static const unsigned n = {n};", f"static const bool beams = {b(p['beams'])};",
                  f"static const unsigned reuse_factor = {reuse};",
                  f"static const unsigned multiplier_limit = {_multiplier_limit(node, reuse)};"]
        for k in ("pt_t", "angle_t", "diff_t", "adiff_t", "r_t", "ptr_t", "prod_t", "dot_t"):
            lines.append(f"typedef {type_str(t[k])} {k};")
        base = "qp_l1_invariants_config"
    elif lp.keras_class == "LinEq2to2":
        ci, co, al = p["n_in"], p["n_out"], p["alias"]
        lines += [f"static const unsigned n = {n};", f"static const unsigned n_in = {ci};",
                  f"static const unsigned n_out = {co};", f"static const bool relu = {b(p['relu'])};",
                  f"static const unsigned alias_1 = {al[1]};", f"static const unsigned alias_2 = {al[2]};",
                  f"static const unsigned alias_4 = {al[4]};",
                  f"static const bool bias_tables = {b(p['bias_tables'])};",
                  f"static const unsigned reuse_factor = {reuse};",
                  f"static const unsigned multiplier_limit = {_multiplier_limit(node, reuse)};"]
        for k in ("n_t", "sum_t", "total_t", "agg_t", "accum_t"):
            lines.append(f"typedef {type_str(t[k])} {k};")
        lines += [f"typedef {node.get_weights('w').type.name} coef_t;", f"typedef {node.get_weights('b').type.name} bias_t;"]
        for k in range(5):
            lines.append(f"typedef {node.get_weights(f't{k}').type.name} table{k}_t;")
        base = "qp_lineq2to2_config"
    elif lp.keras_class == "LinEq2to0":
        ci, co = p["n_in"], p["n_out"]
        lines += [f"static const unsigned n = {n};", f"static const unsigned n_in = {ci};",
                  f"static const unsigned n_out = {co};", f"static const bool relu = {b(p['relu'])};",
                  f"static const bool bias_tables = {b(p['bias_tables'])};",
                  f"static const unsigned reuse_factor = {reuse};",
                  f"static const unsigned multiplier_limit = {_multiplier_limit(node, reuse)};"]
        for k in ("n_t", "total_t", "trace_t", "agg_t", "accum_t"):
            lines.append(f"typedef {type_str(t[k])} {k};")
        lines += [f"typedef {node.get_weights('w').type.name} coef_t;", f"typedef {node.get_weights('b').type.name} bias_t;",
                  f"typedef {node.get_weights('t0').type.name} table0_t;",
                  f"typedef {node.get_weights('t1').type.name} table1_t;"]
        base = "qp_lineq2to0_config"
    else:  # pragma: no cover
        raise RuntimeError(lp.keras_class)
    return base, lines


def _function_call(lp, node):
    def var(i):
        return node.get_input_variable(node.inputs[i])

    out = node.get_output_variable()
    cfg = f"config{node.index}"
    if lp.keras_class == "MomentumInput":
        return f"nnet::qp_momentum_input<{var(0).type.name}, {out.type.name}, {cfg}>({var(0).name}, {out.name});"
    if lp.keras_class == "ParticleMask":
        return f"nnet::qp_particle_mask<{var(0).type.name}, {out.type.name}, {cfg}>({var(0).name}, {out.name});"
    if lp.keras_class == "LorentzInvariants":
        return f"nnet::qp_lorentz_invariants<{var(0).type.name}, {out.type.name}, {cfg}>({var(0).name}, {out.name});"
    l1_functions = {"L1CandidateInput": "qp_l1_candidate_input", "CandidateMask": "qp_candidate_mask",
                    "L1Invariants": "qp_l1_invariants"}
    if lp.keras_class in l1_functions:
        fn = l1_functions[lp.keras_class]
        return f"nnet::{fn}<{var(0).type.name}, {out.type.name}, {cfg}>({var(0).name}, {out.name});"
    w = {k: node.get_weights(k).name for k in lp.weights}
    if lp.keras_class == "LinEq2to2":
        args = ", ".join([var(0).name, var(1).name, out.name, w["w"], w["b"], w["bd"]] + [w[f"t{k}"] for k in range(5)])
        return f"nnet::qp_lineq2to2_nano<{var(0).type.name}, {var(1).type.name}, {out.type.name}, {cfg}>({args});"
    args = ", ".join([var(0).name, var(1).name, out.name, w["w"], w["b"], w["t0"], w["t1"]])
    return f"nnet::qp_lineq2to0<{var(0).type.name}, {var(1).type.name}, {out.type.name}, {cfg}>({args});"


def _templates(classes):
    layer_classes = tuple(classes.values())
    includes = [f"nnet_utils/{h}" for h in HEADERS]

    class QPConfigTemplate(LayerConfigTemplate):
        def __init__(self):
            super().__init__(layer_classes)

        def format(self, node):
            lp = node.get_attr("qp_plan")
            base, lines = _cfg_lines(lp, node)
            body = "".join(f"    {line}\n" for line in lines)
            return f"struct config{node.index} : nnet::{base} {{\n{body}}};\n"

    class QPFunctionTemplate(FunctionCallTemplate):
        def __init__(self):
            super().__init__(layer_classes, include_header=includes)

        def format(self, node):
            return _function_call(node.get_attr("qp_plan"), node)

    return QPConfigTemplate, QPFunctionTemplate


def register():
    """Register the qpelican extension with hls4ml (once per process)."""
    global _registered
    if _registered:
        return
    handlers = get_layer_handlers()
    for keras_name in IR_NAMES:
        if keras_name not in handlers:
            hls4ml.converters.register_keras_v2_layer_handler(keras_name, _handler)
    classes = _ir_layers()
    for name, cls in classes.items():
        hls4ml.model.layers.register_layer(name, cls)
    cfg_t, fn_t = _templates(classes)
    hdir = header_dir()
    for bname in BACKENDS:
        backend = hls4ml.backends.get_backend(bname)
        backend.register_template(cfg_t)
        backend.register_template(fn_t)
        for h in HEADERS:
            backend.register_source(hdir / h)
    _registered = True
