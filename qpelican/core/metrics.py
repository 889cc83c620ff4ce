"""Tagger metrics: ROC curve, AUC, accuracy and background rejection (numpy / scikit-learn only).

Background rejection 1/eps_B at signal efficiency eps_S (0.3 and 0.5 as in the paper) is read off
the ROC curve by linear interpolation of eps_B at the requested eps_S; it is inf when no
background passes there.
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as _roc

from qpelican.core.errors import DataError


def _inputs(labels, scores):
    y = np.asarray(labels).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise DataError(f"labels ({y.size}) and scores ({s.size}) differ in length")
    if not np.isfinite(s).all():
        raise DataError("scores contain NaN or inf")
    y = y.astype(np.int64)
    classes = np.unique(y)
    if not (set(classes.tolist()) <= {0, 1}) or classes.size < 2:
        raise DataError(f"labels must contain both classes 0 and 1 (got {classes.tolist()})")
    return y, s


def roc_curve(labels, scores):
    """(fpr, tpr): background and signal efficiencies for thresholds from high to low score."""

    y, s = _inputs(labels, scores)
    fpr, tpr, _ = _roc(y, s, drop_intermediate=False)
    return fpr, tpr


def rejection_at(fpr, tpr, eff):
    """1/eps_B at signal efficiency `eff`, eps_B interpolated linearly on the ROC."""
    # tpr is non-decreasing; np.interp needs increasing x, ties resolved by taking the lowest fpr
    tpr_u, first = np.unique(tpr, return_index=True)
    eps_b = float(np.interp(eff, tpr_u, fpr[first]))
    return float("inf") if eps_b <= 0 else 1.0 / eps_b


def roc_metrics(labels, scores, threshold=0.0):
    """{"auc", "accuracy", "rej30", "rej50"} for labels in {0,1} and scores (higher = more signal).

    `threshold` is the decision cut for accuracy: 0 for logits, 0.5 for probabilities.
    """

    y, s = _inputs(labels, scores)
    fpr, tpr = roc_curve(y, s)
    return {
        "auc": float(roc_auc_score(y, s)),
        "accuracy": float(np.mean((s > threshold) == (y == 1))),
        "rej30": rejection_at(fpr, tpr, 0.3),
        "rej50": rejection_at(fpr, tpr, 0.5),
    }


def bce_from_logits(y, logits):
    """Mean binary cross-entropy (float64) of labels y in {0,1} and logits."""
    z = np.asarray(logits, np.float64).reshape(-1)
    y = np.asarray(y, np.float64).reshape(-1)
    return float(np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))))


def monitor_metrics(y, logits):
    """{"loss", "accuracy", "auc"} of logits for per-epoch validation: NaN, never an error, when the
    model diverged or one class is missing (training goes on and the best epoch ignores NaN)."""

    y = np.asarray(y).reshape(-1)
    logits = np.asarray(logits, np.float64).reshape(-1)
    ok = np.isfinite(logits).all()
    return {
        "loss": bce_from_logits(y, logits) if ok else float("nan"),
        "accuracy": float(np.mean((logits > 0) == (y > 0.5))) if ok else float("nan"),
        "auc": float(roc_auc_score(y, logits)) if ok and 0 < y.mean() < 1 else float("nan"),
    }


def logit_metrics(y, logits):
    """:func:`roc_metrics` of logits (decision at 0) plus the cross-entropy ``loss``."""
    m = roc_metrics(y, logits, threshold=0.0)
    m["loss"] = bce_from_logits(y, logits)
    return m
