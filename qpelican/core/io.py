"""Atomic writes of the files a physicist keeps (results, settings): tmp file + os.replace."""
import json
import os


def json_default(o):
    """numpy scalars and arrays as plain JSON; anything else by its string form."""
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def write_json(path, obj):
    """Write ``obj`` as indented JSON to ``path`` atomically (never a half-written file)."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=json_default)
        f.write("\n")
    os.replace(tmp, path)


def run_model_path(run, error=None, what="model"):
    """``RUN`` (a ``qpelican fit`` directory holding model.keras) or a .keras file -> the model path.

    Raises ``error`` (default :class:`qpelican.core.errors.QpelicanError`) naming the fix when absent.
    """
    from qpelican.core.errors import QpelicanError

    error = error or QpelicanError
    p = os.fspath(run)
    path = os.path.join(p, "model.keras") if os.path.isdir(p) else p
    if not os.path.isfile(path):
        raise error(f"{what} {p}: no {'model.keras in this directory' if os.path.isdir(p) else 'such file or directory'}; "
                    "give a run directory written by `qpelican fit` or a .keras model file.")
    return path
