"""Checks on 4-momentum arrays where data enters qpelican (readers, prediction helpers).

Layout everywhere: (jets, N, 4) with (E, px, py, pz) in GeV, zero-padded, sorted by pT.
"""
import numpy as np

from qpelican.core.errors import DataError


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
