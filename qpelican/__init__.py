"""qpelican: quantized PELICAN / nanoPELICAN jet taggers for FPGAs.

Importing qpelican selects tf-keras (Keras 2) for TensorFlow, which QKeras and hls4ml's
Keras-v2 converter need, and XLA:CPU's memory-optimised schedule (:func:`_xla_cpu_schedule`).
This must happen before TensorFlow is imported.
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


XLA_SCHEDULE_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


def _xla_cpu_schedule():
    """Ask XLA:CPU for its memory-optimised schedule, unless XLA_FLAGS already sets one.

    A training step of the fast path (qpelican.nn.fasttrain) runs three small XLA programs of
    10-100 tiny fusions. Under the default concurrency-optimised schedule their fusions are
    independent, so XLA hands half of them to a thread of TensorFlow's pool and waits for it: a
    wake-up of ~0.1-0.3 ms per program on a 2-core virtual machine, more than the program's own
    work. The memory-optimised schedule reuses buffers, which chains the fusions, and XLA runs a
    chain in the calling thread (c2 8-bit QAT step: the readout and loss 0.50 -> 0.14 ms). The
    schedule orders the same fusions; the arithmetic, and so every result, is the same. XLA reads
    XLA_FLAGS at its first compilation, so this takes effect when qpelican is imported first."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_enable_concurrency_optimized_scheduler" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {XLA_SCHEDULE_FLAG}".strip()


_select_tf_keras()
_xla_cpu_schedule()


def custom_objects():
    """All qpelican layers and QKeras objects (see :func:`qpelican.nn.serialize.custom_objects`)."""
    from qpelican.nn import serialize  # after _select_tf_keras: importing nn imports TensorFlow

    return serialize.custom_objects()


def load_model(path):
    """Load a saved qpelican model (see :func:`qpelican.nn.serialize.load_model`)."""
    from qpelican.nn import serialize  # after _select_tf_keras: importing nn imports TensorFlow

    return serialize.load_model(path)
