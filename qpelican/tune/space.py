"""The search space of ``qpelican tune``: Keras Tuner hyperparameters and the recipe each point is.

The bounds come from the recipe's ``search:`` section (:mod:`qpelican.config.search`); a point of
the space (hyperparameter values) becomes a recipe variant with the sampled formats, C and N.
"""
import keras_tuner as kt
import tf_keras

from qpelican.config.recipe import first_phase_epochs, recipe_from_dict, rescale_start_epochs
from qpelican.config.search import DEFAULT_COST_AXIS, TENSORS, base_format, parse_search
from qpelican.core.formats import quantizer_string
from qpelican.hw.cost import model_cost
from qpelican.nn.models import build_model
from qpelican.rtl.exporter import rtl_estimate

SHORT = {"input": "in", "invariants": "inv", "coefficients": "w", "biases": "b", "activation": "act",
         "aggregates": "agg", "output": "out"}


def search_space(recipe):
    """The recipe's full search space (its ``search`` section over the defaults)."""
    return parse_search(getattr(recipe, "search", None), recipe, source=f"recipe {recipe.name or ''}".strip())


def hyperparameters(space):
    """A ``keras_tuner.HyperParameters`` declaring the whole space (fixed ranges as Fixed)."""
    hp = kt.HyperParameters()
    for t in TENSORS:
        spec = space["tensors"][t]
        if spec is None:
            continue
        for k in ("bits", "integer"):
            lo, hi = spec[k]
            if lo == hi:
                hp.Fixed(f"{t}_{k}", lo)
            else:
                hp.Int(f"{t}_{k}", lo, hi)
    if space["channels"]:
        (hp.Fixed if len(space["channels"]) == 1 else hp.Choice)("channels", *(
            [space["channels"][0]] if len(space["channels"]) == 1 else [space["channels"]]))
    if space["n_constituents"]:
        (hp.Fixed if len(space["n_constituents"]) == 1 else hp.Choice)("n_constituents", *(
            [space["n_constituents"][0]] if len(space["n_constituents"]) == 1 else [space["n_constituents"]]))
    return hp


def variant(recipe, space, values, epochs=None, name=None):
    """(recipe variant, widths) for hyperparameter ``values``: the recipe with the sampled formats,
    C and N, no search section; ``widths`` = {tensor: [bits, integer] | None (float)}."""
    d = recipe.model_dump()
    d.pop("search", None)
    widths = {}
    for t in TENSORS:
        spec = space["tensors"][t]
        if spec is None:
            q = d["quantization"][t]
            if q is None:
                widths[t] = None
            else:
                _, b, i, _ = base_format(recipe, t)
                widths[t] = [b, i]
            continue
        b = int(values.get(f"{t}_bits", spec["bits"][1]))
        i = int(values.get(f"{t}_integer", spec["integer"][1]))
        i = max(0, min(i, b - 1) if spec["signed"] else i)
        d["quantization"][t] = quantizer_string(spec["kind"], b, i, spec["signed"])
        widths[t] = [b, i]
    if "channels" in values:
        d["model"]["channels"] = int(values["channels"])
    if "n_constituents" in values:
        d["data"]["n_constituents"] = int(values["n_constituents"])
    if epochs is not None:
        first = first_phase_epochs(d["training"])
        d["training"]["epochs"] = int(epochs)
        rescale_start_epochs(d["training"], first)
    d["seeds"] = 1
    if name:
        d["name"] = name
    m = d["model"]
    if m.get("batchnorm") and (d["training"].get("qat") != "finetune" or (m.get("architecture") or "nano") != "nano"):
        m["batchnorm"] = False  # a quantized variant folds BatchNorm only after float pre-training (nano, finetune)
    return recipe_from_dict(d, source="search variant"), widths


def widths_label(widths):
    return " ".join(f"{SHORT[t]} {w[0]},{w[1]}" if w else f"{SHORT[t]} f" for t, w in widths.items())


def model_cost_on(model, axis):
    """model_cost of a model, with ``cost``, its value on the tuner's cost ``axis`` (and ``luts``,
    ``dsps`` for the LUT axis: the model is traced to RTL, which takes seconds at N = 16)."""
    cost = dict(model_cost(model))
    if axis == "luts":
        cost.update(rtl_estimate(model))
    cost["cost"] = int(cost[axis])
    return cost


def recipe_cost(recipe, axis=DEFAULT_COST_AXIS):
    """:func:`model_cost_on` of a recipe's model, built and not trained (its weights at their
    initial values: the LUT estimate of a trained model differs, since zero and power-of-two
    coefficients cost less)."""
    model = build_model(recipe.to_model_config())
    try:
        return model_cost_on(model, axis)
    finally:
        del model
        tf_keras.backend.clear_session()
