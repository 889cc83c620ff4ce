"""Saving and loading qpelican models (tf-keras ``.keras`` archives with qpelican and QKeras layers)."""
import tf_keras

from qpelican.nn.compat import qkeras_objects
from qpelican.nn.layers import LAYERS


def custom_objects():
    """All qpelican layers and QKeras objects, for ``tf_keras.models.load_model(..., custom_objects=...)``."""
    objs = qkeras_objects()
    objs.update({cls.__name__: cls for cls in LAYERS})
    return objs


def load_model(path):
    """Load a saved qpelican model with all custom objects."""
    return tf_keras.models.load_model(path, custom_objects=custom_objects(), compile=False)
