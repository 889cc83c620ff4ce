"""The ``search:`` section of a recipe: the bounds ``qpelican tune`` searches, and their validation.

One pair of ranges per quantized tensor (total bits, integer bits), and optional choices of the
hidden channels C and the number of constituents N. Bounds default to cheaper formats than the
recipe's own (``DEFAULT_BOUNDS``); ``DEFAULT_FORMATS`` stand in for tensors the recipe leaves
float. :func:`parse_search` validates a section against a recipe and returns the full space; the
tuner (:mod:`qpelican.tune`) reads nothing else.
"""
from qpelican.config.model import MAX_CONSTITUENTS, QUANTIZED_TENSORS as TENSORS
from qpelican.core.errors import RecipeError
from qpelican.core.formats import parse_format, quantizer_kind


# Formats searched below when the recipe leaves a tensor float: (kind, bits, integer, signed).
DEFAULT_FORMATS = {
    "input": ("bits", 16, 7, True),
    "invariants": ("bits", 16, 9, True),
    "coefficients": ("bits", 8, 2, True),
    "biases": ("bits", 8, 3, True),
    "activation": ("relu", 8, 7, False),
    "aggregates": ("bits", 10, 3, True),
    "output": ("bits", 16, 6, True),
}
# default bounds relative to the recipe's (bits b, integer i): (bits_lo(b), int_lo(i), int_hi(i))
DEFAULT_BOUNDS = {
    "input": (lambda b: max(4, b // 2), lambda i: i - 2, lambda i: i),
    "invariants": (lambda b: max(4, b // 2), lambda i: i - 4, lambda i: i),
    "coefficients": (lambda b: 2, lambda i: i - 1, lambda i: i + 1),
    "biases": (lambda b: 3, lambda i: i - 2, lambda i: i),
    "activation": (lambda b: 2, lambda i: i - 1, lambda i: i + 1),
    "aggregates": (lambda b: 3, lambda i: i - 1, lambda i: i + 1),
    "output": (lambda b: max(4, b // 2), lambda i: i - 2, lambda i: i),
}
SEARCH_KEYS = TENSORS + ("channels", "n_constituents")
# `qpelican tune` settings, shared by the command line and the library
ORACLES = ("random", "bayesian", "hyperband")
DEFAULT_ORACLE = "random"
DEFAULT_TRIALS = 20
DEFAULT_COST_WEIGHT = 0.002  # halving the cost is worth 0.002 validation AUC
# the tuner's hardware-cost axis: name -> (unit, what measures it)
COST_AXES = {"bops": ("BOPs", "bit operations per jet, qpelican.hw.cost"),
             "luts": ("LUTs", "da4ml LUT estimate of the traced RTL, qpelican.rtl")}
DEFAULT_COST_AXIS = "bops"


# ------------------------------------------------------------------------------ search space
def bounds(value, key, lo_allowed, hi_allowed, source):
    """[lo, hi] from an int or a 2-list; RecipeError naming the key otherwise."""
    if isinstance(value, bool):
        value = None
    if isinstance(value, int):
        value = [value, value]
    ok = (isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                                         for v in value))
    if not ok or not (lo_allowed <= value[0] <= value[1] <= hi_allowed):
        raise RecipeError(f"{source}: search.{key} = {value!r} is not allowed; expected an integer or [min, max] "
                          f"with {lo_allowed} <= min <= max <= {hi_allowed}.")
    return int(value[0]), int(value[1])


def choices(value, key, lo_allowed, hi_allowed, source):
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if (not isinstance(value, (list, tuple)) or not value
            or not all(isinstance(v, int) and not isinstance(v, bool) and lo_allowed <= v <= hi_allowed for v in value)):
        raise RecipeError(f"{source}: search.{key} = {value!r} is not allowed; expected a list of integers "
                          f"between {lo_allowed} and {hi_allowed} (the choices to search), e.g. [1, 2, 3].")
    return sorted(set(int(v) for v in value))


def base_format(recipe, tensor):
    """(kind, bits, integer, signed) of a tensor in the recipe, DEFAULT_FORMATS when it is float."""
    q = getattr(recipe.quantization, tensor)
    if q is None:
        return DEFAULT_FORMATS[tensor]
    f = parse_format(q)
    return (quantizer_kind(q), f.bits, f.integer, f.signed)


def parse_search(section, recipe=None, source="recipe"):
    """Validate a ``search:`` section (dict or None) and return the full search space.

    Returns {"tensors": {tensor: None (fixed) | {"kind", "signed", "bits": (lo, hi), "integer": (lo, hi)}},
    "channels": [..] | None, "n_constituents": [..] | None}. Raises RecipeError naming the key and
    the allowed keys/values. With ``recipe=None`` only the section's own syntax is checked.
    """
    section = {} if section is None else section
    if not isinstance(section, dict):
        raise RecipeError(f"{source}: search must be a mapping with keys {', '.join(SEARCH_KEYS)} "
                          f"(got {section!r}).")
    for key in section:
        if key not in SEARCH_KEYS:
            raise RecipeError(f"{source}: unknown key 'search.{key}'; allowed keys here: {', '.join(SEARCH_KEYS)}.")
    space = {"tensors": {}, "channels": None, "n_constituents": None}
    if section.get("channels") is not None:
        space["channels"] = choices(section["channels"], "channels", 1, 64, source)
    if section.get("n_constituents") is not None:
        space["n_constituents"] = choices(section["n_constituents"], "n_constituents", 2, MAX_CONSTITUENTS, source)
    for t in TENSORS:
        spec = section.get(t)
        if isinstance(spec, str) and spec.strip() == "fixed":
            space["tensors"][t] = None
            continue
        if spec is not None and not isinstance(spec, dict):
            raise RecipeError(f"{source}: search.{t} = {spec!r} is not allowed; use 'fixed' (keep the recipe's "
                              "quantizer) or a mapping with keys bits, integer, e.g. {bits: [2, 8], integer: [0, 2]}.")
        spec = spec or {}
        for k in spec:
            if k not in ("bits", "integer"):
                raise RecipeError(f"{source}: unknown key 'search.{t}.{k}'; allowed keys here: bits, integer.")
        bits = bounds(spec["bits"], f"{t}.bits", 2, 32, source) if spec.get("bits") is not None else None
        integer = bounds(spec["integer"], f"{t}.integer", 0, 31, source) if spec.get("integer") is not None else None
        if recipe is None:
            space["tensors"][t] = {"bits": bits, "integer": integer}
            continue
        kind, b, i, signed = base_format(recipe, t)
        blo_f, ilo_f, ihi_f = DEFAULT_BOUNDS[t]
        if bits is None:
            bits = (min(blo_f(b), b), b)
        if integer is None:
            integer = (max(0, ilo_f(i)), max(0, ihi_f(i)))
        if signed and integer[0] > bits[1] - 1:
            raise RecipeError(f"{source}: search.{t}: integer >= {integer[0]} does not fit in at most {bits[1]} bits "
                              f"(signed: integer <= bits - 1); lower "
                              f"search.{t}.integer or raise search.{t}.bits.")
        space["tensors"][t] = {"kind": kind, "signed": bool(signed), "bits": bits, "integer": integer}
    return space
