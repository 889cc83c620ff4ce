"""qpelican: quantized PELICAN / nanoPELICAN jet taggers for FPGAs.

Importing qpelican selects tf-keras (Keras 2) for TensorFlow, which QKeras and hls4ml's
Keras-v2 converter need. This must happen before TensorFlow is imported.
"""
import os
import sys

__version__ = "0.1.0"


def _select_tf_keras():
    tf_mod = sys.modules.get("tensorflow")
    if tf_mod is not None and os.environ.get("TF_USE_LEGACY_KERAS") != "1":
        keras_mod = sys.modules.get("keras")
        version = getattr(keras_mod, "__version__", "") if keras_mod is not None else ""
        if version.startswith("3") or keras_mod is None:
            from qpelican.core.errors import QpelicanError

            raise QpelicanError(
                "TensorFlow was imported before qpelican without TF_USE_LEGACY_KERAS=1, so it uses "
                "Keras 3, which QKeras cannot use. Fix: `import qpelican` before tensorflow, or set "
                "the environment variable TF_USE_LEGACY_KERAS=1 before starting Python."
            )
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


_select_tf_keras()


def custom_objects():
    """All qpelican layers and QKeras objects (see :func:`qpelican.nn.serialize.custom_objects`)."""
    from qpelican.nn import serialize  # after _select_tf_keras: importing nn imports TensorFlow

    return serialize.custom_objects()


def load_model(path):
    """Load a saved qpelican model (see :func:`qpelican.nn.serialize.load_model`)."""
    from qpelican.nn import serialize  # after _select_tf_keras: importing nn imports TensorFlow

    return serialize.load_model(path)
