"""tf.data pipeline, metrics and the jet-mass baseline."""
import h5py
import numpy as np
import pytest
from scipy.stats import norm

import qpelican  # noqa: F401
from qpelican.data import pipeline
from qpelican.data.baseline import MassWindow, jet_mass, mass_window_metrics, mass_window_scores
from qpelican.data.readers import open_dataset
from qpelican.core.errors import DataError
from qpelican.core.metrics import roc_curve, roc_metrics


def tagged_jets(n, m=6, signal_fraction=0.5, seed=0):
    """Jets whose leading-constituent energy encodes the jet index (ids survive sorting by pT)."""
    rng = np.random.default_rng(seed)
    p4 = np.zeros((n, m, 4), np.float32)
    p4[:, :, 1] = np.linspace(50, 10, m)  # pT descending
    p4[:, :, 0] = 100.0
    p4[:, 0, 0] = 1000.0 + np.arange(n)  # id in E (pT untouched)
    y = (rng.random(n) < signal_fraction).astype(np.int8)
    return p4, y


def epochs(ds, k=1):
    out = []
    for _ in range(k):
        ids, ys = [], []
        for p, y in ds:
            ids.append(p.numpy()[:, 0, 0] - 1000.0)
            ys.append(y.numpy())
        out.append((np.concatenate(ids).astype(int), np.concatenate(ys)))
    return out


def test_arrays_batches_shapes_and_each_jet_once():
    p4, y = tagged_jets(1000)
    first = next(iter(pipeline.make_dataset((p4, y), batch_size=128, seed=3)))
    assert first[0].shape == (128, 6, 4) and first[0].dtype.name == "float32"
    assert first[1].shape == (128, 1) and first[1].dtype.name == "float32"
    ds = pipeline.make_dataset((p4, y), batch_size=128, seed=3)
    (ids, ys), (ids2, _) = epochs(ds, 2)
    assert sorted(ids) == list(range(1000))  # a permutation: every jet exactly once
    np.testing.assert_array_equal(ys[:, 0], y[ids])  # labels travel with their jets
    assert not np.array_equal(ids, np.arange(1000))  # shuffled
    assert not np.array_equal(ids, ids2)  # reshuffled each epoch
    again = epochs(pipeline.make_dataset((p4, y), batch_size=128, seed=3), 2)
    np.testing.assert_array_equal(again[0][0], ids)  # same seed: same order, epoch by epoch
    np.testing.assert_array_equal(again[1][0], ids2)
    other = epochs(pipeline.make_dataset((p4, y), batch_size=128, seed=4))[0][0]
    assert not np.array_equal(other, ids)
    ordered = epochs(pipeline.make_dataset((p4, y), batch_size=128, shuffle=False))[0][0]
    np.testing.assert_array_equal(ordered, np.arange(1000))


def test_balanced_resampling():
    p4, y = tagged_jets(1000, signal_fraction=0.2, seed=1)
    ds = pipeline.make_dataset((p4, y), batch_size=100, seed=0, balanced=True)
    ids, ys = epochs(ds)[0]
    assert len(ids) == 1000
    for b in range(10):  # every batch is exactly 50/50
        assert ys[b * 100:(b + 1) * 100].mean() == 0.5
    np.testing.assert_array_equal(ys[:, 0], y[ids])
    # the minority class is oversampled, the majority subsampled
    assert len(set(ids[ys[:, 0] == 1])) == int(y.sum())
    assert len(set(ids[ys[:, 0] == 0])) == 500


def test_n_constituents_and_repeat():
    p4, y = tagged_jets(64, m=6)
    ds = pipeline.make_dataset((p4, y), batch_size=32, n_constituents=4, repeat=True)
    batches = list(ds.take(5))  # repeat: more batches than one epoch holds
    assert len(batches) == 5 and batches[0][0].shape == (32, 4, 4)
    ds = pipeline.make_dataset((p4, y), batch_size=32, n_constituents=9)
    p, _ = next(iter(ds))
    assert p.shape == (32, 9, 4) and not p.numpy()[:, 6:].any()


@pytest.mark.parametrize("balanced", [False, True])
def test_reader_in_memory_and_streaming_agree(tmp_path, monkeypatch, balanced):
    p4, y = tagged_jets(300, m=10, seed=2)
    path = str(tmp_path / "jets.h5")
    with h5py.File(path, "w") as f:
        f["Pmu"] = p4
        f["is_signal"] = y
    reader = open_dataset(path, n_constituents=8)
    monkeypatch.setattr(pipeline, "STREAM_CHUNK", 64)  # several chunks
    mem = epochs(pipeline.make_dataset(reader, batch_size=50, seed=1, balanced=balanced, in_memory=True))[0]
    stream = epochs(pipeline.make_dataset(reader, batch_size=50, seed=1, balanced=balanced, in_memory=False))[0]
    first = next(iter(pipeline.make_dataset(reader, batch_size=50, in_memory=False)))
    assert first[0].shape == (50, 8, 4) and first[1].shape == (50, 1)
    for ids, ys in (mem, stream):
        assert len(ids) == 300
        np.testing.assert_array_equal(ys[:, 0], y[ids])
        if balanced:
            assert ys.mean() == 0.5
        else:
            assert sorted(ids) == list(range(300))
    if not balanced:
        assert not np.array_equal(stream[0], np.arange(300))  # streaming shuffles too
    again = epochs(pipeline.make_dataset(reader, batch_size=50, seed=1, balanced=balanced, in_memory=False))[0]
    np.testing.assert_array_equal(again[0], stream[0])


def test_pipeline_bad_input():
    p4, y = tagged_jets(10)
    p4[3, 2, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        pipeline.make_dataset((p4, y))
    p4, y = tagged_jets(10)
    with pytest.raises(DataError, match="labels"):
        pipeline.make_dataset((p4, y[:5]))
    with pytest.raises(DataError, match="class 1"):
        pipeline.make_dataset((p4, np.zeros(10)), balanced=True)


# ------------------------------------------------------------------ metrics

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
