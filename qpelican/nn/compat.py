"""The framework internals qpelican relies on, each in one place with the reason it is needed.

Nothing else in the package reaches into private attributes of TensorFlow, tf-keras or QKeras;
when one of them changes, this module is the only one to adapt.
"""
import tensorflow as tf
from qkeras.utils import _add_supported_quantized_objects


def qkeras_objects():
    """{name: class} of every QKeras layer and quantizer.

    QKeras publishes this registry only through a private helper; tf-keras needs it to deserialise
    the quantizers stored in a layer's config.
    """
    objs = {}
    _add_supported_quantized_objects(objs)
    return objs


def smart_cond(pred, true_fn, false_fn):
    """``true_fn()`` or ``false_fn()`` for a Python or tensor ``training`` flag.

    tf-keras layers receive ``training`` as either; tf-keras's own dropout branches through this
    internal helper, which folds a constant flag at trace time instead of building a ``tf.cond``.
    """
    return tf.__internal__.smart_cond.smart_cond(pred, true_fn, false_fn)


def layer_generator(layer):
    """The ``tf.random.Generator`` behind a tf-keras layer's random draws, or None.

    With ``enable_tf_random_generator()`` a layer's ``_random_generator`` wraps a stateful generator
    whose state is a variable: it is checkpointed with the model and can be reseeded per epoch,
    which is what makes a resumed run draw the same dropout masks. tf-keras creates it lazily
    (``_maybe_init``) and exposes it only as the private ``_generator``.
    """
    rng = getattr(layer, "_random_generator", None)
    if rng is None:
        return None
    rng._maybe_init()
    return getattr(rng, "_generator", None)
