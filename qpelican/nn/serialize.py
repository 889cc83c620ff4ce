"""Loading saved models without running code from the file.

tf-keras can execute code stored in a model file: a legacy HDF5 model (or a SavedModel) is read
by the old loader, which unmarshals the bytecode of ``Lambda`` layers; tf-keras's ``safe_mode``
guards only the zip ``.keras`` format. :func:`load_model` therefore accepts only

* a zip ``.keras`` archive, recognised by its magic bytes (not by its name);
* whose ``config.json`` names only qpelican's layers, QKeras's layers and quantizers, and the
  handful of plain tf-keras objects a qpelican model is made of (the functional container, the
  input layer, initializers, regularizers, constraints); ``Lambda``, serialized functions and any
  other class are refused before anything is deserialized;

and then loads it with tf-keras's safe mode on. Everything else raises
:class:`qpelican.core.errors.QpelicanError` (exit status 2 on the command line).
"""
import ast
import json
import os
import zipfile

import tf_keras

from qpelican.core.errors import QpelicanError
from qpelican.nn.compat import qkeras_objects
from qpelican.nn.layers import LAYERS

ZIP_MAGIC = b"PK\x03\x04"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
MAX_CONFIG_BYTES = 64 << 20

# plain tf-keras objects a qpelican model is built from: containers, input, and data-only objects
KERAS_CLASSES = frozenset({
    "Functional", "Model", "Sequential", "InputLayer",
    # initializers
    "Zeros", "Ones", "Constant", "RandomNormal", "RandomUniform", "TruncatedNormal", "VarianceScaling",
    "GlorotUniform", "GlorotNormal", "HeNormal", "HeUniform", "LecunNormal", "LecunUniform", "Orthogonal",
    "Identity",
    # regularizers and constraints
    "L1", "L2", "L1L2", "OrthogonalRegularizer", "MaxNorm", "MinMaxNorm", "NonNeg", "UnitNorm",
    "RadialConstraint",
    # plain data markers of the v3 format
    "__tuple__", "__numpy__", "__keras_tensor__",
})
TRUSTED_MODULES = ("keras", "tf_keras", "qkeras", "qpelican")
QUANTIZER_CLASSES = frozenset(name for name, obj in qkeras_objects().items()
                              if isinstance(obj, type) and obj.__module__.startswith("qkeras.quantizers"))


def custom_objects():
    """All qpelican layers and QKeras objects, for ``tf_keras.models.load_model(..., custom_objects=...)``."""
    objs = qkeras_objects()
    objs.update({cls.__name__: cls for cls in LAYERS})
    return objs


def allowed_classes():
    """The class names a loadable model file may contain."""
    return frozenset(custom_objects()) | KERAS_CLASSES


def _refuse(path, why, fix="pass a model saved by qpelican (`qpelican fit` writes RUN/model.keras)"):
    raise QpelicanError(f"{path}: {why}; {fix}. qpelican loads only .keras archives of qpelican and QKeras "
                        "layers, so that a model file can never run code.")


def file_kind(path):
    """'keras' (zip archive), 'hdf5', 'directory', 'empty' or 'unknown', from the file's first bytes."""
    if os.path.isdir(path):
        return "directory"
    with open(path, "rb") as f:
        head = f.read(8)
    if not head:
        return "empty"
    if head.startswith(ZIP_MAGIC):
        return "keras"
    if head == HDF5_MAGIC:
        return "hdf5"
    return "unknown"


def _classes(obj, found):
    """Collect (class_name, module) of every serialized object in a config tree."""
    if isinstance(obj, dict):
        if "class_name" in obj:
            found.append((obj.get("class_name"), obj.get("module")))
        for v in obj.values():
            _classes(v, found)
    elif isinstance(obj, list):
        for v in obj:
            _classes(v, found)
    return found


def read_config(path):
    """``config.json`` of a .keras archive, checked against the allowed classes; returns the dict."""
    try:
        with zipfile.ZipFile(path) as z:
            try:
                info = z.getinfo("config.json")
            except KeyError:
                _refuse(path, "the .keras archive has no config.json (not a Keras model, or damaged)")
            if info.file_size > MAX_CONFIG_BYTES:
                _refuse(path, f"its config.json is {info.file_size} bytes, far more than any qpelican model's")
            if "model.weights.h5" not in z.namelist():
                _refuse(path, "the .keras archive has no model.weights.h5 (damaged or not written by Keras)")
            config = json.loads(z.read(info).decode("utf-8"))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, UnicodeDecodeError, ValueError) as exc:
        _refuse(path, f"the file is a damaged .keras archive ({type(exc).__name__}: {exc})",
                "rerun the `qpelican fit` that wrote it, or copy the file again")
    allowed = allowed_classes()
    bad = []
    # compile_config (optimizer, loss, LR schedule) is never deserialized: models load with compile=False
    model_part = {k: v for k, v in config.items() if k != "compile_config"} if isinstance(config, dict) else config
    for name, module in _classes(model_part, []):
        trusted_module = module is None or (isinstance(module, str)
                                            and module.split(".")[0] in TRUSTED_MODULES)
        if not isinstance(name, str) or name not in allowed or not trusted_module:
            bad.append(f"{name}" + (f" (module {module})" if module and not trusted_module else ""))
    if bad:
        names = ", ".join(sorted(set(map(str, bad))))
        _refuse(path, f"it contains {names}, which is not a qpelican or QKeras layer"
                      + (" (a Lambda layer holds Python code)" if any("lambda" in b.lower() for b in bad) else ""))
    # QKeras turns strings such as "quantized_bits(8,0)" into calls of names in its module: allow only
    # calls of its quantizer classes with literal arguments
    calls = [t for t in _strings(model_part, []) if "(" in t and not _quantizer_call(t)]
    if calls:
        _refuse(path, f"its config holds {calls[0][:80]!r}, which is not a QKeras quantizer with literal arguments")
    return config


def _strings(obj, found):
    """Every string value in a config tree."""
    if isinstance(obj, dict):
        for v in obj.values():
            _strings(v, found)
    elif isinstance(obj, list):
        for v in obj:
            _strings(v, found)
    elif isinstance(obj, str):
        found.append(obj)
    return found


def _quantizer_call(text):
    """True for ``name(literal, ..., key=literal)`` with ``name`` a QKeras quantizer class."""
    try:
        call = ast.parse(text.strip(), mode="eval").body
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
                and call.func.id in QUANTIZER_CLASSES and all(k.arg for k in call.keywords)):
            return False
        for node in list(call.args) + [k.value for k in call.keywords]:
            ast.literal_eval(node)
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
        return False
    return True


def load_model(path):
    """Load a qpelican model from a zip ``.keras`` file without running any code stored in it.

    Refuses (:class:`QpelicanError`) legacy HDF5 models, SavedModel directories, damaged archives
    and archives with classes other than qpelican's, QKeras's and plain tf-keras containers.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise QpelicanError(f"{path}: no such model file; give a run directory written by `qpelican fit` "
                            "or its model.keras.")
    kind = file_kind(path)
    if kind == "hdf5":
        _refuse(path, "this is a legacy HDF5 Keras model, which tf-keras loads by running the Python code it "
                      "may contain (Lambda layers), so qpelican does not open it",
                "if you trust the file, convert it once yourself (tf_keras.models.load_model, then "
                "model.save('model.keras')), or retrain it with `qpelican fit`")
    if kind == "directory":
        _refuse(path, "this is a directory (a SavedModel?), not a .keras model file")
    if kind != "keras":
        _refuse(path, "not a .keras model (" + ("the file is empty" if kind == "empty" else
                                                "unrecognised content, not a zip archive") + ")")
    if not path.endswith(".keras"):
        _refuse(path, "a .keras archive must be named *.keras (tf-keras picks the loader by the name)",
                "rename it to end in .keras")
    read_config(path)
    try:
        return tf_keras.models.load_model(path, custom_objects=custom_objects(), compile=False, safe_mode=True)
    except QpelicanError:
        raise
    except Exception as exc:  # damaged weights, mismatched shapes, a layer config that does not validate
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        _refuse(path, f"the .keras archive cannot be loaded ({type(exc).__name__}: {msg[:300]})",
                "rerun the `qpelican fit` that wrote it, or copy the file again")
