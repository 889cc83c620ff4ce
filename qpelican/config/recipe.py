"""YAML training recipes: schema, validation and conversion to a model config.

A recipe has five sections and two top-level keys; every key is optional except where noted::

    name: c2_8bit                  # defaults to the file stem
    description: free text
    data:
      path: null                   # directory with train.h5/val.h5/test.h5 (or one file); null = simulated sample
      jets: null                   # simulated sample size (train+val+test) when path is null (null = 40000);
                                   # ignored with a path (a recipe's sample size never caps a user's dataset)
      train_jets: null             # with a path: cap on training jets read into memory (null = all)
      val_jets: null               # cap on validation jets (null = all of the split)
      test_jets: null              # cap on test jets (null = all of the split)
      n_constituents: 80           # N, highest-pT constituents per jet
      format: p4                   # p4: (E, px, py, pz) | l1: Level-1 candidates (pT, eta_rel, phi_rel)
                                   # on the trigger grid, converted by the readers (docs/l1.md)
      beams: false                 # p4: prepend the two beam particles; l1: the beam in its Level-1
                                   # form (one row, d_bj = pT_j; docs/l1.md)
      seed: 0                      # seed of the simulated sample
      detector: none               # simulated sample: none (truth particles) | simple (Delphes-like
                                   # E-flow); ignored with a path
      matching: contained          # simulated top jets: contained (top, b and W quarks within dR < 0.8
                                   # of the jet) | top (the top alone); ignored with a path
      mpi: false                   # simulated sample: multi-parton interactions; ignored with a path
    model:                         # keys and defaults of qpelican.config.model.DEFAULTS (null/absent = default)
      architecture: nano           # nano | pelican
      channels: 2
      aggregation: sum             # sum | mean
      nbar: 49.0
      alpha: false                 # (n/Nbar)^alpha scaled aggregators (nPELICAN_N)
      symmetric: false             # nano: h_ij = h_ji (S_i, S_j share a coefficient): half the 2->2 firmware
      scale: 8.0                   # input momenta enter as p / scale (GeV)
      batchnorm: false             # masked BatchNorm; quantized: folded (see below)
      dropout: 0.0
      table_bits: 18
      l1_form: collider            # data.format l1: collider (exported) | massless (float reference)
      embedding: 8                 # full PELICAN widths
      blocks: [8, 8]
      eq2to0_channels: 8
      mlp: [16]
    quantization:                  # QKeras quantizer strings or "float", per tensor
      input: float
      invariants: float
      coefficients: float
      biases: float
      activation: float
      aggregates: float
      output: float
    training:
      epochs: 140
      batch_size: 512
      optimizer: adamw             # adamw | adam
      learning_rate: 2.5e-3
      weight_decay: 0.0
      schedule: paper              # paper | constant | cosine
      lr_final: 1.0e-5             # cosine floor of the paper schedule
      qat: from_scratch            # from_scratch | finetune (float pre-training, then QAT)
      pretrain_epochs: 0           # float epochs before QAT when qat = finetune
      finetune_learning_rate: null # initial LR of the QAT phase (null = learning_rate / 4)
      jit_compile: auto            # auto (XLA for phases of >= 500 steps) | true | false
      init_from: null              # run directory or .keras model whose weights start the training
                                   # (e.g. a float run, for QAT fine-tuning with pretrain_epochs: 0)
      starts: 1                    # initialisations tried per seed: each trains start_epochs epochs,
      start_epochs: 0              # the one of lowest validation loss then trains to the end
    seeds: 1                       # number of seeds; seed k uses seed + k
    seed: 0                        # first training seed

BatchNorm: a float recipe runs it in inference mode with its moving statistics, exactly as
evaluated. A quantized nanoPELICAN recipe with ``batchnorm: true`` trains it in the float
pre-training (``qat: finetune``) and folds it into the fixed-point layers when QAT starts
(:mod:`qpelican.nn.fold`): its scale into the coefficients, its shift into biases tabulated over
the multiplicity n, which the firmware stores as constants.

Unknown keys and wrong types raise :class:`qpelican.core.errors.RecipeError` naming the key and the
allowed keys or values.
"""
from __future__ import annotations

import copy
import os
from typing import List, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from qpelican.config.model import INPUT_FORMATS, MAX_CONSTITUENTS, QUANTIZED_TENSORS, model_config
from qpelican.config.search import parse_search
from qpelican.core.errors import QpelicanError, RecipeError
from qpelican.core.formats import is_float, parse_format

DEFAULT_SIMULATED_JETS = 40000
DETECTORS = ("none", "simple")  # simulated samples: truth particles | Delphes-like E-flow
MATCHINGS = ("contained", "top")  # simulated top jets: top + decay quarks in the jet | the top alone


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataSection(_Section):
    path: Optional[str] = None
    jets: Optional[int] = Field(default=None, ge=30)
    train_jets: Optional[int] = Field(default=None, ge=30)
    val_jets: Optional[int] = Field(default=None, ge=1)
    test_jets: Optional[int] = Field(default=None, ge=1)
    n_constituents: int = Field(default=80, ge=2, le=MAX_CONSTITUENTS)
    format: Literal[INPUT_FORMATS] = "p4"  # p4 | l1 (Level-1 candidates, docs/l1.md)
    beams: bool = False
    seed: int = 0
    detector: Literal[DETECTORS] = "none"  # simulated sample only (ignored with a path)
    matching: Literal[MATCHINGS] = "contained"  # simulated sample only (ignored with a path)
    mpi: bool = False  # simulated sample only (ignored with a path)


class ModelSection(_Section):
    architecture: Optional[Literal["nano", "pelican"]] = None
    channels: Optional[int] = Field(default=None, ge=1)
    aggregation: Optional[Literal["sum", "mean"]] = None
    nbar: Optional[float] = Field(default=None, gt=0)
    alpha: Optional[bool] = None
    symmetric: Optional[bool] = None
    scale: Optional[float] = Field(default=None, gt=0)
    batchnorm: Optional[bool] = None
    dropout: Optional[float] = Field(default=None, ge=0, lt=1)
    table_bits: Optional[int] = Field(default=None, ge=2, le=32)
    l1_form: Optional[Literal["collider", "massless"]] = None
    embedding: Optional[int] = Field(default=None, ge=1)
    blocks: Optional[List[int]] = None
    eq2to0_channels: Optional[int] = Field(default=None, ge=1)
    mlp: Optional[List[int]] = None


class QuantizationSection(_Section):
    input: Optional[str] = None
    invariants: Optional[str] = None
    coefficients: Optional[str] = None
    biases: Optional[str] = None
    activation: Optional[str] = None
    aggregates: Optional[str] = None
    output: Optional[str] = None

    @field_validator(*QUANTIZED_TENSORS, mode="before")
    @classmethod
    def _check_quantizer(cls, v, info):
        if v is None:
            return None
        if not isinstance(v, str):
            raise ValueError(f"expected a quantizer string such as 'quantized_bits(8,0,alpha=1)' or 'float', got {v!r}")
        try:
            parse_format(v)
        except QpelicanError as exc:
            raise ValueError(str(exc)) from None
        return None if is_float(v) else v.strip()


class TrainingSection(_Section):
    epochs: int = Field(default=140, ge=1)
    batch_size: int = Field(default=512, ge=1)
    optimizer: Literal["adamw", "adam"] = "adamw"
    learning_rate: float = Field(default=2.5e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    schedule: Literal["paper", "constant", "cosine"] = "paper"
    lr_final: float = Field(default=1e-5, ge=0)
    qat: Literal["from_scratch", "finetune"] = "from_scratch"
    pretrain_epochs: int = Field(default=0, ge=0)
    finetune_learning_rate: Optional[float] = Field(default=None, gt=0)
    jit_compile: Union[Literal["auto"], bool] = "auto"
    init_from: Optional[str] = None
    starts: int = Field(default=1, ge=1)
    start_epochs: int = Field(default=0, ge=0)

    def first_phase_epochs(self) -> int:
        """Epochs of the first phase: the float pre-training of a finetune recipe, else all."""
        return self.pretrain_epochs if self.qat == "finetune" and self.pretrain_epochs > 0 else self.epochs


def first_phase_epochs(training: dict) -> int:
    """Epochs of the first phase of a training section (dict): see TrainingSection.first_phase_epochs."""
    return TrainingSection.model_validate(training).first_phase_epochs()


def rescale_start_epochs(training: dict, first_before: int) -> None:
    """Keep the starts' share of the first phase after its length changed from ``first_before``
    (a training section dict, changed in place; left as is when the section is invalid, which
    the recipe's validation then reports)."""
    if not (training.get("start_epochs") and first_before):
        return
    try:
        first = first_phase_epochs(training)
    except ValidationError:
        return
    training["start_epochs"] = max(1, round(training["start_epochs"] * first / first_before))


class Recipe(_Section):
    name: Optional[str] = None
    description: Optional[str] = None
    data: DataSection = Field(default_factory=DataSection)
    model: ModelSection = Field(default_factory=ModelSection)
    quantization: QuantizationSection = Field(default_factory=QuantizationSection)
    training: TrainingSection = Field(default_factory=TrainingSection)
    seeds: int = Field(default=1, ge=1)
    seed: int = Field(default=0, ge=0)
    search: Optional[dict] = None  # bit-width search bounds for `qpelican tune` (validated by qpelican.config.search)

    # ------------------------------------------------------------------ helpers
    @property
    def quantized(self) -> bool:
        """True when any tensor has a quantizer."""
        return any(getattr(self.quantization, k) is not None for k in QUANTIZED_TENSORS)

    def to_model_config(self, quantized: bool = True) -> dict:
        """The ``qpelican.nn.models.build_model`` dict: only keys the recipe sets (the rest come
        from ``qpelican.config.model.DEFAULTS``), plus ``n_constituents``/``format``/``beams`` from the data section.
        ``quantized=False`` drops the quantizers (float pre-training of a finetune recipe)."""
        cfg = {k: v for k, v in self.model.model_dump().items() if v is not None}
        cfg["n_constituents"] = self.data.n_constituents
        cfg["format"] = self.data.format
        cfg["beams"] = self.data.beams
        cfg["quantization"] = {k: (getattr(self.quantization, k) if quantized else None) for k in QUANTIZED_TENSORS}
        return cfg

    def resolved_model_config(self, quantized: bool = True) -> dict:
        """``to_model_config`` merged over ``qpelican.config.model.DEFAULTS`` (what is actually built)."""
        return model_config(self.to_model_config(quantized))

    def simulated_jets(self) -> int:
        """Size of the simulated sample used when data.path is null."""
        return self.data.jets or DEFAULT_SIMULATED_JETS

    def seed_list(self) -> list:
        return [self.seed + k for k in range(self.seeds)]

    def to_dict(self, resolved: bool = False) -> dict:
        """Plain dict (for YAML/JSON), float quantizers written as 'float'. ``resolved=True`` fills
        the model section from ``qpelican.config.model.DEFAULTS`` and data.jets of a simulated sample (the recipe
        as run; it loads back to the same recipe)."""
        d = self.model_dump()
        if resolved:
            full = self.resolved_model_config()
            d["model"] = {k: full[k] for k in ModelSection.model_fields}
            if d["data"]["path"] is None:
                d["data"]["jets"] = self.simulated_jets()
            if not d.get("name"):
                d["name"] = "recipe"
        d["quantization"] = {k: (v if v is not None else "float") for k, v in d["quantization"].items()}
        if d.get("search") is None:
            d.pop("search", None)
        if d["data"].get("format") == "p4":  # the default: run directories written before the key resume
            d["data"].pop("format")
            if d["model"].get("l1_form") in (None, "collider"):  # l1 only
                d["model"].pop("l1_form")
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def with_overrides(self, epochs=None, data=None, seeds=None, jets=None, sets=()) -> "Recipe":
        """A copy with the CLI's common overrides applied (and validated).

        ``epochs`` sets training.epochs; for a ``qat: finetune`` recipe with float pre-training it
        sets the QAT epochs and scales pretrain_epochs by the same factor (c2_8bit: 120 + 20 epochs;
        ``--epochs 4`` gives 24 + 4), unless ``sets`` names ``training.pretrain_epochs`` itself,
        which is then kept as given. ``sets`` are ``"section.key=value"`` strings (``--set``), the
        value read as YAML (``model.dropout=0``, ``quantization.input=float``), applied first."""
        d = self.model_dump()
        first_before = self.training.first_phase_epochs()
        explicit = set()
        for kv in sets:
            key, eq, val = str(kv).partition("=")
            if eq and key.strip() in _TOP_LEVEL_SETS:  # --set seed=3
                try:
                    d[key.strip()] = yaml.safe_load(val)
                except yaml.YAMLError:
                    raise RecipeError(f"--set {kv!r}: the value is not valid YAML.") from None
                continue
            sec, dot, k = key.strip().partition(".")
            if not eq or not dot or not k:
                raise RecipeError(f"--set {kv!r}: expected SECTION.KEY=VALUE (e.g. model.dropout=0) or seed=S / seeds=K.")
            if sec not in _SECTIONS:
                raise RecipeError(f"--set {kv!r}: unknown section {sec!r}; allowed: {', '.join(_SECTIONS)}.")
            try:
                d[sec][k] = yaml.safe_load(val)
            except yaml.YAMLError:
                raise RecipeError(f"--set {kv!r}: the value is not valid YAML.") from None
            explicit.add(f"{sec}.{k.strip()}")
        if epochs is not None:
            t = d["training"]
            scale = "training.pretrain_epochs" not in explicit and isinstance(t["pretrain_epochs"], int)
            if scale and t["qat"] == "finetune" and t["pretrain_epochs"] > 0 and isinstance(t["epochs"], int) \
                    and t["epochs"] > 0:
                # keep the float : QAT proportion of the recipe
                t["pretrain_epochs"] = max(1, round(t["pretrain_epochs"] * epochs / t["epochs"]))
            t["epochs"] = epochs
        if "training.start_epochs" not in explicit:  # the starts keep their share of a changed first phase
            rescale_start_epochs(d["training"], first_before)
        if data is not None:
            d["data"]["path"] = str(data)
        if seeds is not None:
            d["seeds"] = seeds
        if jets is not None:  # --jets: the simulated sample's size, or the training cap on a dataset
            d["data"]["train_jets" if d["data"]["path"] is not None else "jets"] = jets
        return recipe_from_dict(d, source="command-line overrides")


# ---------------------------------------------------------------------- loading / errors
_TOP_LEVEL_SETS = ("seed", "seeds")
_SECTIONS = {"data": DataSection, "model": ModelSection, "quantization": QuantizationSection,
             "training": TrainingSection}


def _allowed_at(loc):
    """Allowed keys at a location tuple (for unknown-key errors)."""
    cls = Recipe
    for part in loc[:-1]:
        cls = _SECTIONS.get(part) if cls is Recipe else None
        if cls is None:
            return []
    return list(cls.model_fields)


def _format_error(err, source):
    loc = tuple(str(p) for p in err["loc"])
    key = ".".join(loc) or "(top level)"
    kind = err["type"]
    got = err.get("input")
    if kind == "extra_forbidden":
        allowed = ", ".join(_allowed_at(loc))
        return f"{source}: unknown key {key!r}; allowed keys here: {allowed}."
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        return f"{source}: {key} = {got!r} is not allowed; allowed values: {expected}."
    if kind == "value_error":
        return f"{source}: {key} = {got!r}: {err['msg'].removeprefix('Value error, ')}"
    if kind == "model_type" or kind == "dict_type":
        return f"{source}: {key} must be a mapping of keys (got {got!r}); allowed keys: {', '.join(_allowed_at(loc + ('x',)))}."
    return f"{source}: {key} = {got!r}: {err['msg']}."


def recipe_from_dict(d, source="recipe", name=None) -> Recipe:
    """Validate a dict as a recipe; raise RecipeError naming the key(s) and the allowed values."""
    if d is None:
        d = {}
    if not isinstance(d, dict):
        raise RecipeError(f"{source}: a recipe must be a YAML mapping of sections (data, model, quantization, "
                          f"training, seeds), got {type(d).__name__}.")
    d = copy.deepcopy(d)
    try:
        recipe = Recipe.model_validate(d)
    except ValidationError as exc:
        msgs = [_format_error(e, source) for e in exc.errors()]
        raise RecipeError("\n".join(msgs)) from None
    if name and not recipe.name:
        recipe.name = name
    _check_semantics(recipe, source)
    return recipe


def _check_semantics(recipe, source):
    t = recipe.training
    if recipe.quantized and recipe.model.batchnorm:
        arch = recipe.model.architecture or "nano"
        if arch != "nano":
            raise RecipeError(f"{source}: model.batchnorm is true in a quantized {arch} recipe; "
                              "only nanoPELICAN folds BatchNorm into its fixed-point layers. Set model.batchnorm: false.")
        if t.qat != "finetune":
            raise RecipeError(f"{source}: model.batchnorm is true in a quantized recipe with qat: {t.qat}. The "
                              "BatchNorm is trained in the float pre-training and folded into the fixed-point layers "
                              "when QAT starts; use qat: finetune with pretrain_epochs >= 1 (or init_from a float run).")
    t = recipe.training
    if t.qat == "finetune":
        if not recipe.quantized:
            raise RecipeError(f"{source}: training.qat = 'finetune' needs at least one quantizer in the "
                              "quantization section; use qat: from_scratch for float recipes.")
        if t.pretrain_epochs < 1 and not t.init_from:
            raise RecipeError(f"{source}: training.qat = 'finetune' needs training.pretrain_epochs >= 1 "
                              "(float epochs before quantization-aware fine-tuning).")
    if t.starts > 1 and not 1 <= t.start_epochs <= t.first_phase_epochs():
        raise RecipeError(f"{source}: training.starts = {t.starts} needs training.start_epochs between 1 and "
                          f"{t.first_phase_epochs()} (the epochs of the first phase, after which the best start is "
                          "kept); set start_epochs, or starts: 1.")
    try:
        model_config(recipe.to_model_config())
    except QpelicanError as exc:
        raise RecipeError(f"{source}: {exc}") from None
    if recipe.search is not None:  # the `qpelican tune` section: bounds per tensor, C, N
        parse_search(recipe.search, recipe, source)


def load_recipe(path) -> Recipe:
    """Read and validate a YAML recipe file (``yaml.safe_load``)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise RecipeError(f"recipe file {path!r} does not exist; pass a YAML file such as recipes/c2_8bit.yaml.")
    try:
        with open(path) as f:
            d = yaml.safe_load(f)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RecipeError(f"{path}: not valid YAML{where} ({problem}); fix the syntax (indentation, colons, quotes).") from None
    stem = os.path.splitext(os.path.basename(path))[0]
    return recipe_from_dict(d, source=path, name=stem)
