"""Folding a float nanoPELICAN's masked BatchNorms into its quantized twin (``input_shift`` layers).

In inference a masked BatchNorm is ``y = a x + b`` per channel on real entries, with
``a = gamma / sqrt(var + eps)`` and ``b = beta - mean a``. The equivariant layer after it is linear
in y, so it equals the same layer with coefficients ``w a`` acting on x shifted by ``s = b / a``:
the shift becomes a bias that depends on the multiplicity n (``LinEq2to2.bias_tables``). Folded
this way the float model and its folded twin agree up to float rounding, before any quantizer.

The scales a BatchNorm removes are then put back where the fixed-point formats want them: ReLU
commutes with a positive scale (``relu(k z) = k relu(z)``), so each hidden channel h is multiplied
by a ``k_h`` and the readout's coefficients on channel h are divided by it; the logit does not
change. ``k_h`` makes the largest coefficient on channel h the same size in both layers (both then
keep as many significant bits on the coefficient grid), unless that would saturate the activations
or the coefficients.
"""
import numpy as np
import tf_keras

from qpelican.core.errors import QpelicanError
from qpelican.nn.layers import LinEq2to0, LinEq2to2, MaskedBatchNorm

# BatchNorm layer -> the equivariant layer it feeds (names given by qpelican.nn.models)
FOLDS = (("bn_in", "lineq_2to2"), ("bn_hidden", "lineq_2to0"))
ACTIVATION_FILL = 0.5  # the 99.9th percentile of a hidden channel goes to half the activation range
COEFFICIENT_FILL = 0.99  # ... unless its largest coefficient would leave the coefficient range
PERCENTILE = 99.9
FOLD_SAMPLE = 2048  # training jets whose hidden activations set k_h


def has_folded_batchnorm(model):
    return any(getattr(layer, "input_shift", False) for layer in model.layers)


def transfer_weights(src, dst, x_sample):
    """Copy the weights of ``src`` into ``dst``: as they are when both have the same layout, by
    :func:`fold_batchnorm` when ``dst`` folds the BatchNorms ``src`` has (float -> QAT)."""
    if has_folded_batchnorm(dst):
        fold_batchnorm(src, dst, x_sample)
        return
    a, b = src.get_weights(), dst.get_weights()
    if [w.shape for w in a] != [w.shape for w in b]:
        raise QpelicanError(f"cannot copy weights {[w.shape for w in a]} into a model with {[w.shape for w in b]}; "
                            "use a model of the same architecture (channels, alpha, batchnorm, ...).")
    dst.set_weights(a)


def batchnorm_affine(model, name):
    """(a, b) of BatchNorm ``name`` in inference (identity when the model has none)."""
    try:
        bn = model.get_layer(name)
    except ValueError:
        return None
    if not isinstance(bn, MaskedBatchNorm):
        raise QpelicanError(f"layer {name!r} is a {type(bn).__name__}, not a MaskedBatchNorm.")
    a = 1.0 / np.sqrt(bn.moving_variance.numpy().astype(np.float64) + bn.epsilon)
    if bn.gamma is not None:
        a = a * bn.gamma.numpy()
    b = -bn.moving_mean.numpy() * a
    if bn.beta is not None:
        b = b + bn.beta.numpy()
    a = np.where(np.abs(a) < 1e-12, 1e-12, a)  # a dead channel: any tiny scale keeps s = b / a finite
    return a, b


def _eq_weights(layer):
    """The folded weights of one equivariant layer as float64 arrays, by name."""
    w = {"kernel": layer.kernel.numpy().astype(np.float64), "bias": layer.bias.numpy().astype(np.float64)}
    if getattr(layer, "diag_bias_weight", None) is not None:
        w["diag_bias"] = layer.diag_bias_weight.numpy().astype(np.float64)
    if layer.alphas is not None:
        w["alpha"] = layer.alphas.numpy()
    return w


def _hidden_scales(src, w22, w20, dst22, x_sample):
    """k_h of each hidden channel (see the module docstring): the scale that gives the two layers'
    largest coefficients on channel h the same size (each then has as many significant bits as the
    other), lowered where the 99.9th percentile of the activations would pass ACTIVATION_FILL of the
    activation range or a coefficient would leave the coefficient range."""
    h = tf_keras.Model(src.inputs, src.get_layer("lineq_2to2").output).predict(
        _constituents(x_sample, src.inputs[0].shape[1]), batch_size=512, verbose=0)
    h = h.reshape(-1, h.shape[-1])
    fmt_a, fmt_c = dst22.output_format, dst22.coefficient_format
    k = np.ones(h.shape[-1])
    for c in range(h.shape[-1]):
        w_in, w_out = np.max(np.abs(w22["kernel"][:, c, :])), np.max(np.abs(w20["kernel"][c]))
        if w_in > 0 and w_out > 0:
            k[c] = np.sqrt(w_out / w_in)
        pos = h[:, c][h[:, c] > 0]
        if fmt_a is not None and pos.size:
            k[c] = min(k[c], ACTIVATION_FILL * fmt_a.max / np.percentile(pos, PERCENTILE))
        if fmt_c is not None and w_in > 0:
            k[c] = min(k[c], COEFFICIENT_FILL * fmt_c.max / w_in)
    return k


def _constituents(x, n):
    """x (jets, N', F) cut or zero-padded to n constituents: the tuner folds a float model trained at
    one N into trials of another (the weights do not depend on N; the activations' range is sampled
    on the float model's own N)."""
    if n is None or x.shape[1] == n:
        return x
    if x.shape[1] > n:
        return x[:, :n]
    return np.concatenate([x, np.zeros((x.shape[0], n - x.shape[1], x.shape[2]), x.dtype)], axis=1)


def fold_batchnorm(src, dst, x_sample):
    """Set ``dst`` (quantized nanoPELICAN with ``input_shift`` layers) from ``src`` (its float twin
    with masked BatchNorms, or without: then the shifts are 0), folding each BatchNorm into the layer
    after it and rescaling the hidden channels. ``x_sample``: some training inputs (the hidden
    activations' range). Returns ``dst``."""
    w = {}
    for bn_name, eq_name in FOLDS:
        layer, target = src.get_layer(eq_name), dst.get_layer(eq_name)
        if not isinstance(target, (LinEq2to2, LinEq2to0)) or not target.input_shift:
            raise QpelicanError(f"layer {eq_name!r} of the quantized model takes no folded BatchNorm (input_shift).")
        w[eq_name] = _eq_weights(layer)
        a, b = batchnorm_affine(src, bn_name) or (np.ones(layer.kernel.shape[0]), np.zeros(layer.kernel.shape[0]))
        w[eq_name]["kernel"] *= a[:, None, None]  # the input channel is the kernel's first axis in both layers
        w[eq_name]["shift"] = b / a
    k = _hidden_scales(src, w["lineq_2to2"], w["lineq_2to0"], dst.get_layer("lineq_2to2"), x_sample)
    w22, w20 = w["lineq_2to2"], w["lineq_2to0"]
    w22["kernel"] *= k[None, :, None]
    w22["bias"] *= k
    if "diag_bias" in w22:
        w22["diag_bias"] *= k
    w20["kernel"] /= k[:, None, None]
    w20["shift"] *= k
    for name, ws in w.items():
        layer = dst.get_layer(name)
        layer.kernel.assign(ws["kernel"])
        layer.bias.assign(ws["bias"])
        layer.shift.assign(ws["shift"])
        if "diag_bias" in ws:
            layer.diag_bias_weight.assign(ws["diag_bias"])
        if "alpha" in ws:
            layer.alphas.assign(ws["alpha"])
    return dst
