"""Input layers: momentum scaling/quantization, particle mask, pairwise Minkowski dot products."""
import tensorflow as tf

from qpelican.nn.layers.base import MOMENTA, QuantizedLayer, check_particle_shape, pair_output, particle_mask
from qpelican.core.formats import FLOAT32_BITS, check_exact


class MomentumInput(QuantizedLayer):
    """Scales, quantizes and optionally prepends beam particles to constituent 4-momenta.

    ``p_hat = Q_input(p / scale)``; with ``beams`` the two massless beams
    ``(beam_energy, 0, 0, +-beam_energy)`` come first. In firmware, ``p_hat`` is what the
    trigger delivers (fixed point, in units of ``scale`` GeV); the beams are constants.

    Input shape: (B, N, 4), (E, px, py, pz) in GeV, zero-padded.
    Output shape: (B, N + 2*beams, 4) in units of ``scale`` GeV.
    """

    QUANTIZERS = ("input",)

    def __init__(self, scale=1.0, beams=False, beam_energy=1.0, input_quantizer=None, **kwargs):
        super().__init__(**kwargs)
        self.scale = float(scale)
        self.beams = bool(beams)
        self.beam_energy = float(beam_energy)
        self._init_quantizers(input_quantizer=input_quantizer)
        check_exact(self.input_format, "the input quantizer")

    def build(self, input_shape):
        check_particle_shape(input_shape, self.name)
        super().build(input_shape)

    def call(self, p):
        p = self.q("input", p * (1.0 / self.scale))
        if not self.beams:
            return p
        e = self.beam_energy
        beam = tf.constant([[e, 0.0, 0.0, e], [e, 0.0, 0.0, -e]], p.dtype)
        beam = tf.broadcast_to(beam[None], tf.stack([tf.shape(p)[0], 2, 4]))
        return tf.concat([beam, p], axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], None if input_shape[1] is None else input_shape[1] + 2 * self.beams, 4)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(scale=self.scale, beams=self.beams, beam_energy=self.beam_energy, **self._quantizer_config())
        return cfg


class ParticleMask(QuantizedLayer):
    """Particle mask m_i = [E_i != 0] of (quantized) momenta.

    Input shape: (B, N, 4). Output shape: (B, N), 1.0 for real particles, 0.0 for padding.
    """

    KIND = MOMENTA

    def build(self, input_shape):
        check_particle_shape(input_shape, self.name, self.KIND)
        super().build(input_shape)

    def call(self, p):
        return particle_mask(p)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:2])


class LorentzInvariants(QuantizedLayer):
    """Pairwise Minkowski dot products d_ij = E_i E_j - px_i px_j - py_i py_j - pz_i pz_j.

    ``d_ij = Q_invariant(p_i . p_j) * m_i m_j``; with ``zero_diagonal`` d_ii = 0 (massless
    constituents; the nano basis and its firmware rely on it). With an invariant quantizer the
    products are summed exactly (float32 when ``input_quantizer``, the format of the incoming
    momenta, makes that exact, else float64) and rounded once, as the firmware does with a
    full-width product and one cast; the result fits float32 exactly.

    Input shape: (B, N, 4) quantized momenta (output of :class:`MomentumInput`).
    Output shape: (B, N, N, 1).
    """

    QUANTIZERS = ("invariant", "input")

    def __init__(self, zero_diagonal=True, invariant_quantizer=None, input_quantizer=None, **kwargs):
        super().__init__(**kwargs)
        self.zero_diagonal = bool(zero_diagonal)
        self._init_quantizers(invariant_quantizer=invariant_quantizer, input_quantizer=input_quantizer)
        check_exact(self.invariant_format, "the invariant quantizer")

    @property
    def compute_dtype_exact(self):
        """float32 when the products and their sum fit 24 bits (input format known), else float64."""
        fmt = self.input_format
        if self.invariant_format is None or (fmt is not None and 2 * fmt.bits + 2 <= FLOAT32_BITS):
            return tf.float32
        return tf.float64

    def build(self, input_shape):
        check_particle_shape(input_shape, self.name)
        super().build(input_shape)

    def call(self, p, training=None):
        dt = self._dtypes(training)[1]
        p = tf.cast(p, dt)
        # broadcast outer products fuse better than a K=4 batched matmul (XLA on CPU)
        e, px, py, pz = (p[..., k] for k in range(4))
        d = (e[:, :, None] * e[:, None, :] - px[:, :, None] * px[:, None, :]
             - py[:, :, None] * py[:, None, :] - pz[:, :, None] * pz[:, None, :])
        d = pair_output(d, particle_mask(p), self.zero_diagonal)
        return tf.cast(self.q("invariant", d), tf.float32)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1], input_shape[1], 1)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(zero_diagonal=self.zero_diagonal, **self._quantizer_config())
        return cfg
