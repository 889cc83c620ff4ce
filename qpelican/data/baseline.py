"""Jet-mass baseline: the non-parametric reference point every tagger's AUC is quoted beside.

Two scores, both fitted on training jets only:

- "likelihood" (default): log of the ratio of the signal and background jet-mass densities,
  estimated by histograms with quantile bins (equal background+signal population per bin) and
  a +0.5 pseudo-count. By Neyman-Pearson this is the best any cut on the jet mass alone can do
  (it contains every mass window, symmetric or not), so it is the honest floor for a tagger
  that sees more than the mass. Accuracy uses score > 0 (equal priors).
- "window": score = w - |m - c|, the classic top-mass window [c - w, c + w]; c maximises the
  training AUC of -|m - c| (its ROC is the scan over window widths), w maximises the training
  accuracy at score > 0.

The paper quotes AUC 0.906 for the jet-mass cut on the reference (Delphes) dataset.
"""
from __future__ import annotations

import numpy as np

from qpelican.core.metrics import roc_metrics

TOP_MASS = 172.5  # GeV, Pythia's default m_t


def jet_mass(p4):
    """Invariant mass (GeV) of the constituent sum: p4 (B, N, 4) (E, px, py, pz) -> (B,) float64."""
    s = np.asarray(p4, dtype=np.float64).sum(axis=1)
    m2 = s[:, 0] ** 2 - s[:, 1] ** 2 - s[:, 2] ** 2 - s[:, 3] ** 2
    return np.sqrt(np.maximum(m2, 0.0))


def mass_window_scores(p4, center=None, half_width=None, masses=None):
    """Window score w - |m - c| (higher = more top-like). c defaults to the top mass; with
    w = None the score is -|m - c| (same ROC; its sign is not a decision)."""
    m = jet_mass(p4) if masses is None else np.asarray(masses, np.float64)
    c = TOP_MASS if center is None else float(center)
    return (0.0 if half_width is None else float(half_width)) - np.abs(m - c)


def mass_window_metrics(train_p4, train_y, test_p4, test_y, method="likelihood"):
    """Fit the jet-mass baseline on train jets, score test jets: roc_metrics dict."""
    mw = MassWindow(method).fit(train_p4, train_y)
    return roc_metrics(test_y, mw.score(test_p4), threshold=0.0)
