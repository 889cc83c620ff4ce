"""Level-1 candidate input layers: (pT, eta_rel, phi_rel) on the trigger's grid and the pair invariants.

The invariants are computed from integer angle differences in the collider form

    d_ij = Q_invariant( pT_i pT_j (deta_ij^2 + dphi_ij^2) * 2^-shift ) * m_i m_j,   d_ii = 0

with deta_ij = eta_i - eta_j and dphi_ij = phi_i - phi_j integers (steps of pi/720), their
squares exact, and the whole product exact before the one rounding (docs/l1.md). Because only
pT and integer differences enter, permuting the candidates, shifting every eta (a boost along the
beam) or every phi (a rotation about it) by whole steps leaves d, and so the model's output,
bit-identical. For massless candidates d_ij = pT_i pT_j (cosh deta - cos dphi) ~= pT_i pT_j dR^2 / 2;
with the step pi/720 and the default shift 17 the layer's unit is 2^-16 / (pi/720)^2 = 0.80 of that
(one constant factor, absorbed by the learned coefficients).
"""
import math

import tensorflow as tf

from qpelican.core.errors import QpelicanError
from qpelican.core.formats import check_exact
from qpelican.nn.layers.base import CANDIDATES, QuantizedLayer, check_particle_shape, pair_output, particle_mask
from qpelican.nn.layers.lorentz import ParticleMask

ANGLE_BITS = 10  # eta_rel, phi_rel: signed integers within a jet (Level-1 format)
SHIFT = 17       # d_ij unit: 2^-17 GeV^2 per (step^2): 0.80 x pT_i pT_j dR^2 / 2
ANGLE_STEP = math.pi / 720.0
FORMS = ("collider", "massless")
BEAM_PT = 1.0    # the beam row's pT marker: d_bj = BEAM_PT * pT_j (docs/l1.md, "The beam")


class L1CandidateInput(QuantizedLayer):
    """Puts Level-1 candidates on the firmware's grid.

    ``pT_hat = Q_input(pT)`` (the trigger's ``ap_ufixed<14,12>``, 0.25 GeV steps, or a coarser
    recipe format); ``eta_hat, phi_hat = clip(round(.), -2^(angle_bits-1), 2^(angle_bits-1) - 1)``
    (signed ``angle_bits``-bit integers, saturating as ``ap_int`` with ``AP_SAT``). The firmware
    receives these values; the layer makes any float input land on the same grid.

    With ``beams`` one constant beam row ``(BEAM_PT, 0, 0)`` comes first: the beam axis in its
    Level-1 form (:class:`L1Invariants` gives it the products ``d_bj = pT_j``).

    Input shape: (B, N, 3), (pT in GeV, eta_rel, phi_rel in steps of pi/720), zero rows for padding.
    Output shape: (B, N + beams, 3), same layout, on the grid.
    """

    QUANTIZERS = ("input",)

    def __init__(self, angle_bits=ANGLE_BITS, beams=False, input_quantizer=None, **kwargs):
        super().__init__(**kwargs)
        self.angle_bits = int(angle_bits)
        self.beams = bool(beams)
        if not 2 <= self.angle_bits <= 16:
            raise QpelicanError(f"{self.name}: angle_bits = {angle_bits}; allowed: 2 to 16 (Level-1: 10).")
        self._init_quantizers(input_quantizer=input_quantizer)
        check_exact(self.input_format, "the pT quantizer")

    @property
    def angle_range(self):
        """(lowest, highest) integer angle."""
        return -(2 ** (self.angle_bits - 1)), 2 ** (self.angle_bits - 1) - 1

    def build(self, input_shape):
        check_particle_shape(input_shape, self.name, CANDIDATES)
        super().build(input_shape)

    def call(self, x):
        lo, hi = self.angle_range
        pt = self.q("input", x[..., :1])
        ang = tf.clip_by_value(x[..., 1:], float(lo), float(hi))
        ang = ang + tf.stop_gradient(tf.round(ang) - ang)
        c = tf.concat([pt, ang], axis=-1)
        if not self.beams:
            return c
        beam = tf.broadcast_to(tf.constant([[BEAM_PT, 0.0, 0.0]], c.dtype)[None], tf.stack([tf.shape(c)[0], 1, 3]))
        return tf.concat([beam, c], axis=1)

    def compute_output_shape(self, input_shape):
        n = input_shape[1]
        return (input_shape[0], None if n is None else n + int(self.beams), input_shape[2])

    def get_config(self):
        cfg = super().get_config()
        cfg.update(angle_bits=self.angle_bits, beams=self.beams, **self._quantizer_config())
        return cfg


class CandidateMask(ParticleMask):
    """Candidate mask m_i = [pT_i != 0] of gridded candidates.

    Input shape: (B, N, 3). Output shape: (B, N), 1.0 for real candidates, 0.0 for padding.
    """

    KIND = CANDIDATES


class L1Invariants(QuantizedLayer):
    """Pair invariants of Level-1 candidates in the collider form, exact on the integer grid.

    ``d_ij = Q_invariant(pT_i pT_j R_ij 2^-shift) m_i m_j`` with the exact integer
    ``R_ij = (eta_i - eta_j)^2 + (phi_i - phi_j)^2``; ``d_ii = 0``. With an invariant quantizer
    the product is computed exactly (float64: at most 2 W_pT + 2 angle_bits + 1 <= 53 bits) and
    rounded once, as the firmware's full-width product and one cast; the result fits float32.
    ``input_quantizer`` names the pT format of the incoming candidates (for the exactness check
    and the firmware's widths); ``angle_bits`` their signed angle width.

    ``form="massless"`` computes the exact massless product instead,
    ``pT_i pT_j (cosh(deta step) - cos(dphi step)) 2 / step^2 * 2^-shift`` (same unit), in float:
    it is the reference that docs/l1.md compares the collider form with, and the exporter
    refuses it (its firmware would need cosh/cos tables, see docs/l1.md).

    With ``beams`` row 0 is the beam (:class:`L1CandidateInput`'s ``(BEAM_PT, 0, 0)``) and its
    products are ``d_bj = d_jb = BEAM_PT pT_j`` (``R_bj`` taken as ``2^shift``): in the frame where the
    jet axis has eta = 0, a beam's product with a massless candidate is ``E_b pT_j exp(-+eta_j)``, which
    at the collider form's order in the angles is ``E_b pT_j`` for both beams. It is unchanged by eta
    and phi shifts, so the symmetries above stay exact; the two beams coincide there, so one is kept.

    Input shape: (B, N, 3) gridded candidates (output of :class:`L1CandidateInput`).
    Output shape: (B, N, N, 1).
    """

    QUANTIZERS = ("invariant", "input")

    def __init__(self, shift=SHIFT, angle_bits=ANGLE_BITS, form="collider", beams=False, invariant_quantizer=None,
                 input_quantizer=None, **kwargs):
        super().__init__(**kwargs)
        self.beams = bool(beams)
        if form not in FORMS:
            raise QpelicanError(f"{self.name}: form {form!r} is not known; allowed: {', '.join(FORMS)}.")
        self.form = form
        self.shift = int(shift)
        self.angle_bits = int(angle_bits)
        self._init_quantizers(invariant_quantizer=invariant_quantizer, input_quantizer=input_quantizer)
        check_exact(self.invariant_format, "the invariant quantizer")
        fmt = self.input_format
        if self.invariant_format is not None and fmt is not None and self.product_bits > 53:
            raise QpelicanError(f"{self.name}: pT_i pT_j R_ij needs {self.product_bits} bits, more than float64's "
                                "53 hold exactly; use a pT quantizer of at most 16 bits.")

    @property
    def product_bits(self):
        """Bits of the exact product pT_i pT_j R_ij (R_ij: 2 angle_bits + 1 bits unsigned)."""
        w = self.input_format.bits if self.input_format is not None else 24
        return 2 * w + 2 * self.angle_bits + 1

    @property
    def compute_dtype_exact(self):
        """float32 when the exact product fits 24 bits, else float64 (any realistic format)."""
        if self.invariant_format is None or self.product_bits <= 24:
            return tf.float32
        return tf.float64

    def build(self, input_shape):
        check_particle_shape(input_shape, self.name, CANDIDATES)
        super().build(input_shape)

    def call(self, x, training=None):
        dt = self._dtypes(training)[1]
        x = tf.cast(x, dt)
        pt, eta, phi = x[..., 0], x[..., 1], x[..., 2]
        deta = eta[:, :, None] - eta[:, None, :]
        dphi = phi[:, :, None] - phi[:, None, :]
        if self.form == "collider":
            r = deta * deta + dphi * dphi
        else:
            r = (tf.cosh(deta * ANGLE_STEP) - tf.cos(dphi * ANGLE_STEP)) * (2.0 / ANGLE_STEP**2)
        if self.beams:
            r = tf.where(beam_pairs(tf.shape(x)[1]), tf.constant(2.0 ** self.shift, dt), r)
        d = pair_output((pt[:, :, None] * pt[:, None, :]) * r * (2.0 ** -self.shift), particle_mask(x))
        return tf.cast(self.q("invariant", d), tf.float32)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1], input_shape[1], 1)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(shift=self.shift, angle_bits=self.angle_bits, form=self.form, beams=self.beams,
                   **self._quantizer_config())
        return cfg


def beam_pairs(n):
    """(n, n) bool: the pairs (0, j) and (j, 0), j > 0, of a beam in row 0."""
    i = tf.range(n)
    edge = tf.logical_or(tf.equal(i, 0)[:, None], tf.equal(i, 0)[None, :])
    return tf.logical_and(edge, tf.not_equal(i[:, None], i[None, :]))
