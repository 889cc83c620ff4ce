"""Metrics and the jet-mass baseline."""
import numpy as np
import pytest
from scipy.stats import norm

import qpelican  # noqa: F401
from qpelican.data.baseline import MassWindow, jet_mass, mass_window_metrics, mass_window_scores
from qpelican.data.readers import open_dataset
from qpelican.core.errors import DataError
from qpelican.core.metrics import roc_curve, roc_metrics


def test_metrics_gaussian_reference():
    rng = np.random.default_rng(0)
    n, d = 200_000, 1.5
    y = np.r_[np.ones(n), np.zeros(n)]
    s = np.r_[rng.normal(d, 1, n), rng.normal(0, 1, n)]
    m = roc_metrics(y, s, threshold=d / 2)
    assert m["auc"] == pytest.approx(norm.cdf(d / np.sqrt(2)), abs=2e-3)
    assert m["accuracy"] == pytest.approx(norm.cdf(d / 2), abs=3e-3)
    for eff, key in ((0.3, "rej30"), (0.5, "rej50")):
        t = d + norm.ppf(1 - eff)  # cut passing a fraction eff of signal
        assert m[key] == pytest.approx(1 / norm.sf(t), rel=0.05)
    fpr, tpr = roc_curve(y, s)
    assert fpr[0] <= fpr[-1] and tpr[-1] == 1.0 and np.all(np.diff(tpr) >= 0)


def test_metrics_edge_cases():
    y = np.array([0, 0, 1, 1])
    perfect = roc_metrics(y, np.array([-2.0, -1.0, 1.0, 2.0]))
    assert perfect["auc"] == 1.0 and perfect["accuracy"] == 1.0 and perfect["rej30"] == float("inf")
    inverted = roc_metrics(y, np.array([2.0, 1.0, -1.0, -2.0]))
    assert inverted["auc"] == 0.0 and inverted["accuracy"] == 0.0 and inverted["rej50"] == 1.0
    assert roc_metrics(y, np.array([0.1, 0.2, 0.7, 0.9]), threshold=0.5)["accuracy"] == 1.0
    with pytest.raises(DataError, match="both classes"):
        roc_metrics(np.ones(4), np.arange(4.0))
    with pytest.raises(DataError, match="length"):
        roc_metrics(y, np.arange(3.0))


# ------------------------------------------------------------------ baseline

def test_jet_mass_two_massless_particles():
    e1, e2, theta = 300.0, 200.0, 0.4
    p4 = np.zeros((1, 3, 4))
    p4[0, 0] = [e1, e1, 0, 0]
    p4[0, 1] = [e2, e2 * np.cos(theta), e2 * np.sin(theta), 0]
    assert jet_mass(p4)[0] == pytest.approx(np.sqrt(2 * e1 * e2 * (1 - np.cos(theta))), rel=1e-12)
    assert mass_window_scores(p4, center=100.0)[0] == pytest.approx(-abs(jet_mass(p4)[0] - 100.0))


def test_mass_baseline_on_simulated_jets(sim_dir):
    train = open_dataset(sim_dir / "train.h5").read()
    val, test = open_dataset(sim_dir / "val.h5").read(), open_dataset(sim_dir / "test.h5").read()
    hold = (np.concatenate([val[0], test[0]]), np.concatenate([val[1], test[1]]))
    m = mass_window_metrics(*train, *hold)
    assert set(m) == {"auc", "accuracy", "rej30", "rej50"}
    assert m["auc"] > 0.8 and m["accuracy"] > 0.7 and m["rej30"] > 5
    win = MassWindow("window").fit(*train)
    assert 150 <= win.center_ <= 195 and 5 <= win.half_width_ <= 60
    mw = roc_metrics(hold[1], win.score(hold[0]))
    assert mw["auc"] > 0.8 and mw["accuracy"] > 0.7
    # the baseline must not be a label leak: shuffled labels give chance-level AUC
    rng = np.random.default_rng(0)
    shuffled = MassWindow().fit(train[0], rng.permutation(train[1]))
    assert abs(roc_metrics(hold[1], shuffled.score(hold[0]))["auc"] - 0.5) < 0.2
