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
