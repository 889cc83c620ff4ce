"""Checks on 4-momentum arrays where data enters qpelican (readers, prediction helpers).

Layout everywhere: (jets, N, 4) with (E, px, py, pz) in GeV, zero-padded, sorted by pT; Level-1
candidates (``data.format: l1``, qpelican.data.l1): (jets, N, 3) with (pT in GeV, eta_rel, phi_rel).
"""
import numpy as np

from qpelican.core.errors import DataError

L1_PT_LSB = 0.25  # GeV: the Level-1 candidates' pT step (ap_ufixed<14,12>; qpelican.data.l1)


def check_momenta(p4, source="input array"):
    """Validate a (B, N, 4) momentum array; raise DataError naming the cause and the fix.

    Rejects a wrong rank or last dimension, NaN or inf entries and negative energies.
    Returns the array as float32.
    """
    p4 = np.asarray(p4)
    if p4.ndim != 3 or p4.shape[-1] != 4:
        raise DataError(
            f"{source}: momenta have shape {p4.shape}; expected (jets, N, 4) with (E, px, py, pz) "
            "in GeV on the last axis."
        )
    if not np.issubdtype(p4.dtype, np.number):
        raise DataError(f"{source}: momenta have dtype {p4.dtype}; expected floating-point numbers.")
    finite = np.isfinite(p4)
    if not finite.all():
        bad = np.unique(np.nonzero(~finite)[0])
        raise DataError(
            f"{source}: {bad.size} jet(s) contain NaN or inf momenta (first: jet {bad[0]}); "
            "remove or repair them before using the data."
        )
    neg = p4[..., 0] < 0
    if neg.any():
        bad = np.unique(np.nonzero(neg)[0])
        raise DataError(
            f"{source}: {bad.size} jet(s) have constituents with negative energy (first: jet {bad[0]}); "
            "energies must be >= 0 (zero marks padding)."
        )
    return p4.astype(np.float32, copy=False)


def fit_constituents(p4, n, source="input array"):
    """Return momenta with exactly `n` constituents: zero-pad, or keep the n highest-pT ones.

    Constituents are re-sorted by pT (descending) so that truncation keeps the hardest ones.
    """
    p4 = check_momenta(p4, source)
    pt2 = p4[..., 1] ** 2 + p4[..., 2] ** 2
    order = np.argsort(-pt2, axis=1, kind="stable")
    p4 = np.take_along_axis(p4, order[..., None], axis=1)
    if p4.shape[1] >= n:
        return np.ascontiguousarray(p4[:, :n])
    pad = np.zeros((p4.shape[0], n - p4.shape[1], 4), np.float32)
    return np.concatenate([p4, pad], axis=1)


def check_candidates(x, source="input array"):
    """Validate an L1 candidate array (jets, N, 3); returns it as float32 or raises DataError.

    Values must be finite, pT >= 0 on its 0.25 GeV grid and eta_rel, phi_rel integers. Values
    outside the formats' ranges are legal input: the model saturates them as the firmware does."""
    x = np.asarray(x)
    if x.ndim != 3 or x.shape[-1] != 3:
        raise DataError(f"{source}: L1 candidates have shape {x.shape}; expected (jets, N, 3) with (pT in GeV, "
                        "eta_rel, phi_rel in steps of pi/720). Convert momenta with qpelican.data.l1.to_l1(p4, N).")
    if not np.isfinite(x).all():
        raise DataError(f"{source}: L1 candidates contain NaN or inf; remove or repair those jets.")
    pt = x[..., 0]
    if (pt < 0).any() or (np.round(pt / L1_PT_LSB) * L1_PT_LSB != pt).any():
        raise DataError(f"{source}: L1 pT must be >= 0 and a multiple of {L1_PT_LSB} GeV; convert momenta with "
                        "qpelican.data.l1.to_l1(p4, N).")
    if (np.round(x[..., 1:]) != x[..., 1:]).any():
        raise DataError(f"{source}: L1 eta_rel and phi_rel must be integers (steps of pi/720); convert momenta "
                        "with qpelican.data.l1.to_l1(p4, N).")
    return x.astype(np.float32, copy=False)
