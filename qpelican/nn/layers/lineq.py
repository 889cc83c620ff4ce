"""Linear permutation-equivariant layers LinEq(2->2) and LinEq(2->0) (docs/physics.md, 3-5).

Fixed-point contract (what the firmware reproduces bit for bit), for a quantized layer:

1. the input x is already on its grid (float32, at most 24 bits);
2. every sum over particles (row/column sums S, R, trace, total T) is exact (float64 here,
   a full-width accumulator in HLS);
3. each aggregate is multiplied by its normaliser t(n) from a table indexed by the multiplicity
   n (``1/Nbar^p``, or ``1/n^p`` for mean aggregation, times ``(n/Nbar)^alpha``), stored with
   ``table_bits`` significant bits, and the exact product is rounded once by the aggregate
   quantizer;
4. coefficients and biases are rounded by their quantizers; the pre-activation
   ``z = sum_b c_b A_b + beta + beta_diag delta_ij`` is exact; the activation is applied and the
   result rounded once by the output quantizer (round half to even, saturate);
5. padded entries are zeroed by the edge mask m_i m_j.
6. with ``input_shift`` (a BatchNorm folded into the layer: its scale into the coefficients, its
   shift s into the biases) the biases are tables over the multiplicity n, ``b(n) = beta + sum_b
   w_b s K_b(n) t_b(n)``, each entry rounded once to the bias step (integer bits as needed).

Without quantizers the same graph runs in float32.
"""
import math

import tensorflow as tf
import tf_keras

from qpelican.core.errors import QpelicanError
from qpelican.nn.layers.base import QuantizedLayer, edge_mask, scale_table
from qpelican.core.formats import FLOAT32_BITS
from qpelican.nn.quant import float32_exact, max_abs, quantize

# (source, placement, normalisation power). Sources: x, xT (transpose), dg (diagonal x_ii),
# R (R_i = sum_k x_ik), S (S_j = sum_k x_kj), tr (trace), T (total sum).
# Placements: elem (ij), row (depends on i), col (depends on j), diag (delta_ij * v_i),
# scalar (everywhere), diagscalar (delta_ij * s).
FULL_BASIS = (
    ("x", "elem", 0), ("xT", "elem", 0),
    ("dg", "diag", 0), ("dg", "row", 0), ("dg", "col", 0),
    ("R", "diag", 1), ("S", "diag", 1),
    ("R", "row", 1), ("R", "col", 1), ("S", "row", 1), ("S", "col", 1),
    ("tr", "diagscalar", 1), ("tr", "scalar", 1),
    ("T", "diagscalar", 2), ("T", "scalar", 2),
)
# nano basis A1..A6 for symmetric input with zero diagonal: x_ij, delta_ij S_j/Nbar, S_j/Nbar,
# S_i/Nbar, T/Nbar^2, delta_ij T/Nbar^2.
NANO_BASIS = (
    ("x", "elem", 0), ("S", "diag", 1), ("S", "col", 1),
    ("S", "row", 1), ("T", "scalar", 2), ("T", "diagscalar", 2),
)
BASES = {"nano": NANO_BASIS, "full": FULL_BASIS}
# symmetric nano layer: ops 2 (S_j) and 3 (S_i) share a coefficient, and their normalisers (rows 1 and
# 2 of the alpha exponents, which exist for ops 1..5) share an exponent
SYMMETRIC_OPS, SYMMETRIC_ALPHAS = (2, 3), (1, 2)


class TiedSlices(tf_keras.constraints.Constraint):
    """Keeps slices ``a`` and ``b`` of a weight along ``axis`` equal, at their mean.

    Two equal slices get equal gradients where the layer is symmetric, so the mean only removes
    float rounding differences between the two sums that computed them; it leaves equal slices
    exactly as they are ((v + v) / 2 = v).
    """

    def __init__(self, axis, a, b):
        self.axis, self.a, self.b = int(axis), int(a), int(b)

    def __call__(self, w):
        parts = tf.unstack(w, axis=self.axis)
        parts[self.a] = parts[self.b] = (parts[self.a] + parts[self.b]) / 2
        return tf.stack(parts, axis=self.axis)

    def tie(self, var):
        """Copy slice ``a`` into slice ``b`` (an untrained weight: no rounding to undo)."""
        parts = tf.unstack(var, axis=self.axis)
        parts[self.b] = parts[self.a]
        var.assign(tf.stack(parts, axis=self.axis))

    def get_config(self):
        return {"axis": self.axis, "a": self.a, "b": self.b}


AGGREGATIONS = ("sum", "mean")


def pair_preactivation(x, w, r, c, d):
    """``z^h_ij = sum_c x^c_ij w[c,h] + r^h_i + c^h_j + delta_ij d^h_i``, channels first: x (B, C, N, N),
    w (C, H), r, c, d (B, H, N) -> (B, H, N, N). Contiguous N x N planes vectorise far better on
    CPU than a trailing channel axis of 1-10 (about 3x for a training step)."""
    e = x * w[0][None, :, None, None] if x.shape[1] == 1 else tf.einsum("bcij,ch->bhij", x, w)
    eye = tf.eye(int(x.shape[-1]), dtype=x.dtype)
    return e + r[:, :, :, None] + c[:, :, None, :] + eye * d[:, :, :, None]


def relu_pair_map(x, w, r, c, d, m, out_format, training=False):
    """``y = Q_out(relu(pair_preactivation(x, w, r, c, d))) * m_i m_j``, the hidden array of
    LinEq2to2, with x (B, N, N, C) and r, c, d (B, N, H) -> y (B, N, N, H); computed channels first.

    In training the gradient recomputes ``z`` from the inputs instead of storing it: autodiff
    would keep the (B, H, N, N) pre-activation, its ReLU mask and the quantizer's clip mask for
    the backward pass; here the backward pass reads only x and the O(N) vectors, so XLA streams
    the pair array through the cache. The forward value is computed by the same operations with or
    without the custom gradient (quantized inference: bit for bit). The gradient is autodiff's:
    straight through the quantizer where ``lo <= relu(z) <= hi`` (QKeras's clip), ReLU's where
    ``z > 0``, times the edge mask.
    """
    xf = tf.transpose(x, [0, 3, 1, 2]) if x.shape[-1] != 1 else tf.expand_dims(x[..., 0], 1)
    r, c, d = (tf.transpose(v, [0, 2, 1]) for v in (r, c, d))
    mm = tf.cast(edge_mask(m)[..., 0], x.dtype)[:, None]
    hi = None if out_format is None else out_format.max

    def forward(xf, w, r, c, d):
        return quantize(tf.nn.relu(pair_preactivation(xf, w, r, c, d)), out_format) * mm

    if not training:
        y = forward(xf, w, r, c, d)
    else:
        @tf.custom_gradient
        def f(xf, w, r, c, d):
            def grad(g):
                z = pair_preactivation(xf, w, r, c, d)
                keep = z > 0 if hi is None else tf.logical_and(z > 0, z <= hi)
                dz = tf.where(keep, g * mm, tf.zeros_like(g))
                if xf.shape[1] == 1:
                    dw = tf.reduce_sum(dz * xf, axis=[0, 2, 3])[None, :]
                    dx = tf.reduce_sum(dz * w[0][None, :, None, None], axis=1, keepdims=True)
                else:
                    dw = tf.einsum("bcij,bhij->ch", xf, dz)
                    dx = tf.einsum("bhij,ch->bcij", dz, w)
                dd = tf.reduce_sum(dz * tf.eye(int(dz.shape[-1]), dtype=dz.dtype), axis=3)
                return dx, dw, tf.reduce_sum(dz, axis=3), tf.reduce_sum(dz, axis=2), dd

            return forward(xf, w, r, c, d), grad

        y = f(xf, w, r, c, d)
    return tf.transpose(y, [0, 2, 3, 1])


def _check_common(aggregation, nbar):
    if aggregation not in AGGREGATIONS:
        raise QpelicanError(f"aggregation {aggregation!r} is not supported; use one of {AGGREGATIONS}.")
    if not nbar or nbar <= 0:
        raise QpelicanError(f"nbar must be a positive number (paper: 49), got {nbar!r}.")


class _EquivariantBase(QuantizedLayer):
    # ``input`` is the quantizer of the incoming array; it only decides whether the O(N^2)
    # arithmetic is exact in float32 (faster) or needs float64.
    QUANTIZERS = ("coefficient", "bias", "aggregate", "output", "input")

    def __init__(self, channels, aggregation="sum", nbar=49.0, alpha=False, activation=None,
                 table_bits=18, input_shift=False, coefficient_quantizer=None, bias_quantizer=None,
                 aggregate_quantizer=None, output_quantizer=None, input_quantizer=None, **kwargs):
        super().__init__(**kwargs)
        _check_common(aggregation, nbar)
        self.channels = int(channels)
        self.input_shift = bool(input_shift)
        self.aggregation = aggregation
        self.nbar = float(nbar)
        self.alpha = bool(alpha)
        self.activation = tf_keras.activations.get(activation)
        self.table_bits = int(table_bits)
        self._init_quantizers(coefficient_quantizer=coefficient_quantizer, bias_quantizer=bias_quantizer,
                              aggregate_quantizer=aggregate_quantizer, output_quantizer=output_quantizer,
                              input_quantizer=input_quantizer)

    @property
    def quantized(self):
        return any(q is not None for q in (self.coefficient_quantizer, self.bias_quantizer,
                                           self.aggregate_quantizer, self.output_quantizer))

    def _formats_known(self):
        return None not in (self.input_format, self.coefficient_format, self.bias_format, self.aggregate_format)

    def _build_common(self, input_shape, kernel_shape, n_ops, kernel_tie=None):
        """Check inputs [(B, N, N, C_in), (B, N)]; make kernel (C_in first; "channels" = C_out) and bias
        (``kernel_tie``: a :class:`TiedSlices` the kernel starts and stays under)."""
        x_shape, m_shape = input_shape
        if len(x_shape) != 4 or len(m_shape) != 2:
            raise QpelicanError(f"{self.name}: expected inputs [(B, N, N, C), (B, N)], got {input_shape}.")
        self.n_max = int(x_shape[1])
        c_in = int(x_shape[-1])
        shape = tuple(c_in if d is None else self.channels if d == "channels" else d for d in kernel_shape)
        bound = 1.0 / math.sqrt(c_in * n_ops)
        self.kernel = self.add_weight(name="kernel", shape=shape, constraint=kernel_tie,
                                      initializer=tf_keras.initializers.RandomUniform(-bound, bound))
        if kernel_tie is not None:
            kernel_tie.tie(self.kernel)
        self.bias = self.add_weight(name="bias", shape=(self.channels,), initializer="zeros")
        self.shift = (self.add_weight(name="shift", shape=(c_in,), initializer="zeros")
                      if self.input_shift else None)
        return c_in

    def _build_alpha(self, shape, tie=None):
        self.alphas = (self.add_weight(name="alpha", shape=shape, initializer="zeros", trainable=True, constraint=tie)
                       if self.alpha else None)

    def scale_table(self):
        """Normalisers t(n) for n = 0..N: (N+1, K, C) float64, quantized to ``table_bits`` when quantized."""
        return scale_table(self.n_max, self.nbar, self.powers, self.aggregation, self.alphas,
                           self.table_bits if self.quantized else None)

    def _multiplicity(self, m):
        return tf.cast(tf.reduce_sum(m, axis=1), tf.int32)

    def _bias_table(self, bias, t, kernel, ops, dt):
        """Bias of each multiplicity n = 0..N, (N+1, C_out), with the input shift s folded in.

        Shifting every real entry of the input by s_c adds ``s_c K_b(n)`` to op b's source
        (K = 1 for an entry, n for a row/column sum or the trace, n^2 for the total), so op b adds
        ``w[c, h, b] s_c K_b(n) t_b(n)``: a bias that depends on n alone. ``ops`` lists (kernel
        index, source, table column or None) of the ops counted; ``kernel`` is (C_in, C_out, ops). Quantized, the sum is rounded
        once to the bias quantizer's step with the integer bits it needs (the firmware stores the
        table as constants: a folded BatchNorm's shift is far outside the bias range).
        """
        n = tf.range(self.n_max + 1, dtype=dt)[:, None]
        k_of = {"x": 1.0, "xT": 1.0, "dg": 1.0, "S": n, "R": n, "tr": n, "T": n * n}
        s = tf.cast(self.shift, dt)
        z = tf.broadcast_to(tf.cast(bias, dt)[None, :], [self.n_max + 1, self.channels])
        for b, src, col in ops:
            k = k_of[src] * (t[:, col, :] if col is not None else 1.0)  # (N+1, C_in)
            z = z + tf.matmul(k * s[None, :], kernel[:, :, b])
        if self.bias_format is None:
            return z
        step = tf.constant(2.0 ** self.bias_format.frac, dt)
        return z + tf.stop_gradient(tf.round(z * step) / step - z)

    def _finish(self, z):
        y = self.activation(z) if self.activation is not None else z
        return self.q("output", y)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(channels=self.channels, aggregation=self.aggregation, nbar=self.nbar, alpha=self.alpha,
                   activation=tf_keras.activations.serialize(self.activation), table_bits=self.table_bits,
                   input_shift=self.input_shift, **self._quantizer_config())
        return cfg


class LinEq2to2(_EquivariantBase):
    """Linear permutation-equivariant map of rank-2 arrays, with masking and quantization.

    ``y_ij^h = Q_out(act( sum_{c,b} Q_coef(w[c,h,b]) A_b^c + Q_bias(beta_h)
    + Q_bias(beta_diag_h) delta_ij )) * m_i m_j`` where the aggregates ``A_b`` are the ``nano``
    basis (6 ops, symmetric input with zero diagonal) or the ``full`` basis (15 ops of Maron et al.);
    see the module docstring for where rounding happens.

    Args:
      channels: output channels C_out.
      basis: "nano" or "full".
      aggregation: "sum" (divide sums by nbar) or "mean" (divide by the multiplicity n).
      nbar: normaliser Nbar (paper: 49).
      alpha: if True, each aggregating op b and input channel c is scaled by (n/Nbar)^alpha[b,c].
      diag_bias: add the diagonal bias beta_diag.
      symmetric: nano basis only: ops S_j (column) and S_i (row) share their coefficient and alpha,
        so that y_ij = y_ji for a symmetric input (:class:`TiedSlices` keeps them equal).
      activation: Keras activation applied before the output quantizer.
      table_bits: significant bits of the normaliser table (quantized layers only).
      input_shift: learn an offset s_c added to every real entry of input channel c (a folded
        BatchNorm's shift); the biases then become tables over the multiplicity n (``bias_tables``).
      *_quantizer: QKeras quantizers (strings/objects) or None.

    Inputs: ``[x, m]`` with x of shape (B, N, N, C_in) and particle mask m of shape (B, N).
    Output shape: (B, N, N, C_out).
    """

    def __init__(self, channels, basis="nano", diag_bias=True, symmetric=False, **kwargs):
        if basis not in BASES:
            raise QpelicanError(f"basis {basis!r} is not supported; use 'nano' (6 ops) or 'full' (15 ops).")
        if symmetric and basis != "nano":
            raise QpelicanError("symmetric=True ties the nano basis's S_i and S_j ops; the full basis has no such pair.")
        super().__init__(channels, **kwargs)
        self.basis = basis
        self.symmetric = bool(symmetric)
        self.diag_bias = bool(diag_bias)
        self.ops = BASES[basis]
        self.powers = [p for _, _, p in self.ops if p > 0]

    def build(self, input_shape):
        ties = (TiedSlices(2, *SYMMETRIC_OPS), TiedSlices(0, *SYMMETRIC_ALPHAS)) if self.symmetric else (None, None)
        c_in = self._build_common(input_shape, (None, "channels", len(self.ops)), len(self.ops), kernel_tie=ties[0])
        self.diag_bias_weight = (self.add_weight(name="diag_bias", shape=(self.channels,), initializer="zeros")
                                 if self.diag_bias else None)
        self._build_alpha((len(self.powers), c_in), tie=ties[1])
        super().build(input_shape)

    @property
    def elementwise_dtype(self):
        """dtype of the O(N^2) pre-activation: float32 if every sum is provably exact in it."""
        if not self.quantized:
            return tf.float32
        if not self._formats_known():
            return tf.float64
        fx, fc, fa, fb = self.input_format, self.coefficient_format, self.aggregate_format, self.bias_format
        c_in = self.kernel.shape[0]
        n_elem = sum(1 for _, p, w in self.ops if w == 0)
        n_agg = len(self.ops) - n_elem
        if self.input_shift:  # the bias tables are not bounded by the bias format (nor known while tracing)
            return tf.float64
        terms = [(c_in * n_elem, max_abs(fc) * max_abs(fx)), (c_in * n_agg, max_abs(fc) * max_abs(fa)),
                 (2, max_abs(fb))]
        frac = max(fc.frac + fx.frac, fc.frac + fa.frac, fb.frac)
        return tf.float32 if float32_exact(terms, frac) else tf.float64

    def call(self, inputs, training=None):
        x, m = inputs
        dt, et = self._dtypes(training)  # O(N) aggregates: float64 when quantized (cheap)
        x32 = x
        x = tf.cast(x, dt)
        m = tf.cast(m, dt)
        n_size = tf.shape(x)[1]
        src = {"x": x}
        needs = {s for s, _, _ in self.ops}
        if needs & {"S", "T"}:
            src["S"] = tf.reduce_sum(x, axis=1)  # S_j = sum_k x_kj: (B, N, C)
        if "T" in needs:
            src["T"] = tf.reduce_sum(src["S"], axis=1)  # (B, C)
        if "R" in needs:
            src["R"] = tf.reduce_sum(x, axis=2)
        if "xT" in needs:
            src["xT"] = tf.transpose(x, [0, 2, 1, 3])
        if needs & {"dg", "tr"}:
            src["dg"] = tf.transpose(tf.linalg.diag_part(tf.transpose(x, [0, 3, 1, 2])), [0, 2, 1])
            src["tr"] = tf.reduce_sum(src["dg"], axis=1)
        t = tf.gather(tf.cast(self.scale_table(), dt), self._multiplicity(m))  # (B, K, C_in or 1)
        kernel = tf.cast(self.q("coefficient", self.kernel), dt)
        acc = {}

        def add(place, value):
            value = tf.cast(value, et)
            acc[place] = value if place not in acc else acc[place] + value

        j = 0
        for b, (name, place, power) in enumerate(self.ops):
            v = src[name]
            if power > 0:
                tj = t[:, j, :]
                v = self.q("aggregate", v * (tj[:, None, :] if v.shape.rank == 3 else tj))
                j += 1
            w = kernel[:, :, b]
            if place == "elem":
                acc.setdefault("elem", []).append((x32 if name == "x" else tf.cast(v, tf.float32), w))
            elif v.shape.rank == 3:
                add(place, tf.einsum("bnc,ch->bnh", v, w))
            else:
                add(place, tf.einsum("bc,ch->bh", v, w))
        if self.input_shift:  # biases of multiplicity n: a folded BatchNorm (see _bias_table)
            n_j = self._multiplicity(m)
            b_all, b_diag = self.bias_tables(dt)
            bias = tf.cast(tf.gather(b_all, n_j), et)
            diag_bias = tf.cast(tf.gather(b_diag, n_j), et)[:, None, :]
        else:
            bias = tf.cast(self.q("bias", self.bias), et)[None, :]
            diag_bias = (tf.cast(self.q("bias", self.diag_bias_weight), et)[None, None, :]
                         if self.diag_bias_weight is not None else 0.0)
        zero = tf.zeros_like(bias)
        # z_ij = sum_c x_ij^c w_c + r_i + c_j + delta_ij d_i: every term but the first is O(N) per jet
        r = acc.get("row", 0.0) + (bias + acc.get("scalar", zero))[:, None, :]
        d = acc.get("diag", 0.0) + acc.get("diagscalar", zero)[:, None, :] + diag_bias
        shape = tf.stack([tf.shape(x)[0], n_size, self.channels])
        r, c, d = (tf.broadcast_to(tf.cast(v, et), shape) for v in (r, acc.get("col", zero[:, None, :]), d))
        elems = acc["elem"]
        xe = tf.concat([tf.cast(v, et) for v, _ in elems], -1) if len(elems) > 1 else tf.cast(elems[0][0], et)
        we = tf.concat([tf.cast(w, et) for _, w in elems], 0) if len(elems) > 1 else tf.cast(elems[0][1], et)
        if self.activation is tf_keras.activations.relu:
            y = relu_pair_map(xe, we, r, c, d, m, self.output_format, training=bool(training))
        else:
            xf = tf.transpose(xe, [0, 3, 1, 2])
            r, c, d = (tf.transpose(v, [0, 2, 1]) for v in (r, c, d))
            y = tf.transpose(self._finish(pair_preactivation(xf, we, r, c, d)), [0, 2, 3, 1]) * tf.cast(edge_mask(m), et)
        return tf.cast(y, tf.float32)

    def bias_tables(self, dt=tf.float64):
        """(bias off the diagonal, bias on it) of each multiplicity n = 0..N, each (N+1, C_out),
        of a layer with ``input_shift`` (see ``_bias_table``)."""
        tab = tf.cast(self.scale_table(), dt)
        kernel = tf.cast(self.q("coefficient", self.kernel), dt)
        ops, col = {False: [], True: []}, 0
        for b, (src, place, power) in enumerate(self.ops):
            ops[place in ("diag", "diagscalar")].append((b, src, col if power > 0 else None))
            col += power > 0
        diag_bias = self.diag_bias_weight if self.diag_bias_weight is not None else tf.zeros_like(self.bias)
        return (self._bias_table(self.bias, tab, kernel, ops[False], dt),
                self._bias_table(diag_bias, tab, kernel, ops[True], dt))

    def multiplicity_biases(self, dt=tf.float64):
        """(bias off the diagonal, bias on it) of each multiplicity n = 0..N, each (N+1, C_out), as
        ``call`` adds them: the rounded biases, the same for every n, or with ``input_shift`` the
        tables of :meth:`bias_tables`."""
        if self.input_shift:
            return self.bias_tables(dt)
        rows = [self.n_max + 1, 1]
        bias = tf.cast(self.q("bias", self.bias), dt)
        dbias = (tf.cast(self.q("bias", self.diag_bias_weight), dt) if self.diag_bias_weight is not None
                 else tf.zeros_like(bias))
        return tf.tile(bias[None], rows), tf.tile(dbias[None], rows)

    def compute_output_shape(self, input_shape):
        x_shape = input_shape[0]
        return (x_shape[0], x_shape[1], x_shape[2], self.channels)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(basis=self.basis, diag_bias=self.diag_bias, symmetric=self.symmetric)
        return cfg


class LinEq2to0(_EquivariantBase):
    """Permutation-invariant readout of a rank-2 array: total sum and trace aggregators.

    ``U1^c = Q_agg(t_1(n) sum_ij x_ij^c)``, ``U2^c = Q_agg(t_2(n) sum_i x_ii^c)`` with
    ``t_1 = 1/Nbar^2``, ``t_2 = 1/Nbar`` (times ``(n/Nbar)^alpha`` with ``alpha``, one exponent
    per aggregator shared by all channels: the paper's 7 extra parameters of nPELICAN_N with the
    2->2 layer's 5), then ``out_h = Q_out(act(sum_c Q_coef(v[c,k,h]) U_k^c + Q_bias(b_h)))``.
    With ``input_shift`` (a folded BatchNorm) the bias is a table over the multiplicity n
    (``bias_table``). Other arguments: as LinEq2to2.

    Inputs: ``[x, m]``, x of shape (B, N, N, C_in), m of shape (B, N). Output shape: (B, C_out).
    """

    powers = (2, 1)

    def build(self, input_shape):
        self._build_common(input_shape, (None, 2, "channels"), 2)
        self._build_alpha((2, 1))
        super().build(input_shape)

    @property
    def elementwise_dtype(self):
        """dtype of the sums over N^2: float32 when they are provably exact in it."""
        fx = self.input_format
        exact32 = not self.quantized or (fx is not None and fx.bits + 2 * math.ceil(math.log2(self.n_max)) <= FLOAT32_BITS)
        return tf.float32 if exact32 else tf.float64

    def call(self, inputs, training=None):
        x, m = inputs
        dt, et = self._dtypes(training)
        exact32 = et == tf.float32
        x = tf.cast(x, tf.float32 if exact32 else dt)
        total = tf.cast(tf.reduce_sum(x, axis=[1, 2]), dt)  # (B, C), exact
        trace = tf.cast(tf.reduce_sum(tf.linalg.diag_part(tf.transpose(x, [0, 3, 1, 2])), axis=-1), dt)
        return tf.cast(self.readout(total, trace, self._multiplicity(m), dt), tf.float32)

    def readout(self, total, trace, n, dt=tf.float64):
        """The output (B, C_out) from each jet's sums over its array, ``total`` = sum_ij x_ij and
        ``trace`` = sum_i x_ii (B, C_in), and its multiplicity ``n`` (B,) int: the layer past its
        O(N^2) part (``call``, and the training fast path of :mod:`qpelican.nn.fasttrain`)."""
        total, trace = tf.cast(total, dt), tf.cast(trace, dt)
        t = tf.gather(tf.cast(self.scale_table(), dt), n)  # (B, 2, 1)
        u1 = self.q("aggregate", total * t[:, 0, :])
        u2 = self.q("aggregate", trace * t[:, 1, :])
        kernel = tf.cast(self.q("coefficient", self.kernel), dt)
        if self.input_shift:  # bias of multiplicity n: a folded BatchNorm (see _bias_table)
            bias = tf.gather(self.bias_table(dt), n)
        else:
            bias = tf.cast(self.q("bias", self.bias), dt)
        z = tf.einsum("bc,ch->bh", u1, kernel[:, 0, :]) + tf.einsum("bc,ch->bh", u2, kernel[:, 1, :]) + bias
        return self._finish(z)

    def bias_table(self, dt=tf.float64):
        """Bias of each multiplicity n = 0..N, (N+1, C_out), of a layer with ``input_shift``."""
        kernel = tf.transpose(tf.cast(self.q("coefficient", self.kernel), dt), [0, 2, 1])  # (C_in, C_out, 2)
        return self._bias_table(self.bias, tf.cast(self.scale_table(), dt), kernel, [(0, "T", 0), (1, "tr", 1)], dt)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], self.channels)
