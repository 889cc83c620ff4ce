"""Pythia 8 + FastJet simulator: physics of the jets, file layout, determinism, resume, CLI, detector."""
import json
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

from qpelican.data import simulate as sim
from qpelican.data.baseline import jet_mass
from qpelican.data.readers import open_dataset
from qpelican.core.errors import DataError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPLITS = ("train", "val", "test")


def _load(sim_dir):
    arrays = {}
    for s in SPLITS:
        with h5py.File(sim_dir / f"{s}.h5", "r") as f:
            arrays[s] = {k: f[k][()] for k in ("Pmu", "Nobj", "is_signal", "truth_Pmu")}
    return {k: np.concatenate([arrays[s][k] for s in SPLITS]) for k in arrays["train"]}, arrays


def test_layout_split_and_balance(sim_dir):
    from conftest import SIM_JETS

    allj, per = _load(sim_dir)
    sizes = [len(per[s]["is_signal"]) for s in SPLITS]
    n_train, n_val = round(0.8 * SIM_JETS), round(0.1 * SIM_JETS)
    assert sizes == [n_train, n_val, SIM_JETS - n_train - n_val]
    assert allj["Pmu"].shape == (SIM_JETS, 200, 4) and allj["Pmu"].dtype == np.float32
    assert int(allj["is_signal"].sum()) == SIM_JETS // 2
    assert set(np.unique(allj["is_signal"]).tolist()) == {0, 1}
    for s in SPLITS:  # each split mixes both classes
        assert 0.2 < per[s]["is_signal"].mean() < 0.8
    ds = open_dataset(sim_dir / "train.h5")
    assert ds.layout == "converted" and ds.n_jets == sizes[0]
    assert not list(sim_dir.glob(".sim-chunks-*")) and not list(sim_dir.glob("*.tmp*"))


def test_jet_physics(sim_dir):
    a, _ = _load(sim_dir)
    p4, nobj, y, truth = a["Pmu"].astype(np.float64), a["Nobj"], a["is_signal"], a["truth_Pmu"]
    real = p4[..., 0] > 0
    # Nobj = number of stored constituents; padding is exactly zero
    np.testing.assert_array_equal(real.sum(1), nobj)
    assert (nobj >= 2).all()
    assert not p4[~real].any()
    assert (real[:, :-1] >= real[:, 1:]).all()  # real constituents first
    # massless constituents: E = |p|
    pabs = np.linalg.norm(p4[..., 1:], axis=-1)
    np.testing.assert_allclose(p4[..., 0][real], pabs[real], rtol=1e-5, atol=1e-4)
    # sorted by pT (descending)
    pt = np.hypot(p4[..., 1], p4[..., 2])
    assert (pt[:, :-1] >= pt[:, 1:] - 1e-3).all()
    # jet kinematics recomputed from the constituents (massless recombination = E-scheme up to rounding)
    s = p4.sum(1)
    jpt = np.hypot(s[:, 1], s[:, 2])
    jeta = np.arcsinh(s[:, 3] / jpt)
    assert (jpt > 549.0).all() and (jpt < 651.0).all()
    assert (np.abs(jeta) < 2.0 + 1e-3).all()
    # jet mass: signal peaks at the top mass, background well below
    m = jet_mass(p4)
    assert 150 < np.median(m[y == 1]) < 195
    assert np.median(m[y == 0]) < 120
    hist, edges = np.histogram(m[y == 1], bins=np.arange(0, 400, 20))
    assert 140 <= edges[np.argmax(hist)] <= 190  # peak bin of the signal mass near 173 GeV
    # truth: the matched top for signal (on shell, within dR 0.8), zeros for background
    assert not truth[y == 0].any()
    t = truth[y == 1].astype(np.float64)
    mt = np.sqrt(np.maximum(t[:, 0] ** 2 - (t[:, 1:] ** 2).sum(1), 0))
    assert abs(np.median(mt) - 172.5) < 2 and np.mean(np.abs(mt - 172.5) < 10) > 0.95  # Breit-Wigner
    teta = np.arcsinh(t[:, 3] / np.hypot(t[:, 1], t[:, 2]))
    dphi = (np.arctan2(t[:, 2], t[:, 1]) - np.arctan2(s[y == 1, 2], s[y == 1, 1]) + np.pi) % (2 * np.pi) - np.pi
    assert np.all(np.hypot(teta - jeta[y == 1], dphi) < 0.8)
    # signal jets have more constituents on average (3-prong vs 1-prong)
    assert nobj[y == 1].mean() > nobj[y == 0].mean()


def _arrays(d):
    return {s: {k: v[()] for k, v in h5py.File(os.path.join(d, f"{s}.h5"), "r").items()} for s in SPLITS}


def _assert_same(a, b):
    for s in SPLITS:
        for k in a[s]:
            np.testing.assert_array_equal(a[s][k], b[s][k])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """20 jets, seed 7, one worker: the reference for determinism and resume tests."""
    d = tmp_path_factory.mktemp("tiny1")
    sim.simulate(20, str(d), seed=7, workers=1, progress=False)
    return str(d)


def test_same_seed_same_jets_any_workers(tiny, tmp_path):
    d2 = tmp_path / "w2"
    sim.simulate(20, str(d2), seed=7, workers=2, progress=False)
    _assert_same(_arrays(tiny), _arrays(str(d2)))
    d3 = tmp_path / "seed8"
    sim.simulate(20, str(d3), seed=8, workers=2, progress=False)
    assert not np.array_equal(_arrays(tiny)["train"]["Pmu"], _arrays(str(d3))["train"]["Pmu"])


def test_interrupted_run_keeps_chunks_and_resumes(tiny, tmp_path, monkeypatch):
    out = tmp_path / "resume"
    real = sim.generate_jets
    calls = []

    def flaky(signal, n, seed, cfg=sim.GenConfig(), report=None):
        calls.append(signal)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C during the second chunk
        return real(signal, n, seed, cfg, report)

    monkeypatch.setattr(sim, "generate_jets", flaky)
    with pytest.raises(KeyboardInterrupt):
        sim.simulate(20, str(out), seed=7, workers=1, progress=False)
    assert not any((out / f"{s}.h5").exists() for s in SPLITS)  # no final file after an interruption
    chunks = list(out.glob(".sim-chunks-*/chunk-*.h5"))
    assert len(chunks) == 1
    calls.clear()
    monkeypatch.setattr(sim, "generate_jets", lambda *a, **k: (calls.append(a[0]), real(*a, **k))[1])
    sim.simulate(20, str(out), seed=7, workers=1, progress=False)
    assert len(calls) == 1  # only the missing chunk was generated
    _assert_same(_arrays(tiny), _arrays(str(out)))
    calls.clear()
    sim.simulate(20, str(out), seed=7, workers=1, progress=False)  # complete: nothing regenerated
    assert calls == []
    sim.simulate(20, str(out), seed=7, workers=1, progress=False, resume=False)  # explicit fresh run
    assert sorted(calls) == [False, True]
    _assert_same(_arrays(tiny), _arrays(str(out)))


def test_default_sample_is_cached(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("QPELICAN_CACHE", str(tmp_path / "cache"))
    d = sim.default_sample(20, seed=7, workers=1, progress=False)
    assert d == str(tmp_path / "cache" / "sim-20-7")
    _assert_same(_arrays(tiny), _arrays(d))
    mtime = os.path.getmtime(os.path.join(d, "train.h5"))
    assert sim.default_sample(20, seed=7, progress=False) == d
    assert os.path.getmtime(os.path.join(d, "train.h5")) == mtime


@pytest.mark.parametrize("mpi", [False, True])
def test_pythia_settings(mpi):
    cfg = sim.GenConfig(mpi=mpi)
    sig = sim._make_pythia(True, 17, cfg)
    assert sig.flag("PartonLevel:MPI") is mpi
    assert sig.flag("Top:gg2ttbar") and sig.flag("Top:qqbar2ttbar") and not sig.flag("HardQCD:all")
    assert sig.flag("PartonLevel:ISR") and sig.flag("PartonLevel:FSR") and sig.flag("HadronLevel:all")
    assert sig.parm("Beams:eCM") == 14000.0 and sig.mode("Random:seed") == 17
    assert sig.parm("PhaseSpace:pTHatMin") < 550 < 650 < sig.parm("PhaseSpace:pTHatMax")
    # W+ decays only to quarks
    w = sig.particleData.particleDataEntryPtr(24)
    on = [abs(w.channel(i).product(0)) for i in range(w.sizeChannels()) if w.channel(i).onMode() > 0]
    assert on and all(1 <= q <= 5 for q in on)
    bkg = sim._make_pythia(False, 18, cfg)
    assert bkg.flag("HardQCD:all") and not bkg.flag("Top:gg2ttbar")


def test_missing_simulator_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pythia8mc", None)
    with pytest.raises(DataError, match=r"pip install -e '\.\[sim\]'"):
        sim.simulate(20, str(tmp_path), seed=1, progress=False)


def test_bad_split_and_size(tmp_path):
    with pytest.raises(DataError, match="summing to 1"):
        sim.simulate(20, str(tmp_path), split=(0.5, 0.1, 0.1), progress=False)
    with pytest.raises(DataError, match="at least 2"):
        sim.simulate(1, str(tmp_path), progress=False)


def test_chunk_plan_depends_only_on_n():
    plan = sim.chunk_plan(1001)
    assert sum(n for c, _, n in plan if c == 1) == 500
    assert sum(n for c, _, n in plan if c == 0) == 501
    assert plan == sim.chunk_plan(1001)
    assert len({sim._pythia_seed(0, c, k) for c, k, _ in plan}) == len(plan)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "qpelican.cli.main", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=300)


def test_cli_simulate(tiny, tmp_path):
    out = tmp_path / "cli"
    r = _cli("data", "simulate", "--jets", "20", "--seed", "7", "--workers", "1", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "jets/s" in r.stdout and "train" in r.stdout
    _assert_same(_arrays(tiny), _arrays(str(out)))
    r = _cli("data", "simulate", "--jets", "20", "--split", "0.8,0.3", "--out", str(out))
    assert r.returncode == 2 and "--split" in r.stderr and "Traceback" not in r.stderr
    r = _cli("data", "simulate", "--jets", "20", "--detector", "full", "--out", str(out))
    assert r.returncode == 2 and "simple" in r.stderr and "Traceback" not in r.stderr


# ------------------------------------------------------------------ simple detector (E-flow)

def _p4(pt, eta, phi, m=0.0):
    px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
    return [np.sqrt(px ** 2 + py ** 2 + pz ** 2 + m ** 2), px, py, pz]


def _tower_grid(p4):
    """(on a tower centre, |eta|, pT) of each real constituent of (jets, 200, 4) momenta."""
    q = p4[p4[..., 0] > 0].astype(np.float64)
    pt = np.hypot(q[:, 1], q[:, 2])
    eta, phi = np.arcsinh(q[:, 3] / pt), np.arctan2(q[:, 2], q[:, 1])
    u = (eta + sim.CALO_ETA_MAX) / sim.TOWER_DETA - 0.5
    v = (phi + np.pi) / (2 * np.pi / sim.TOWER_NPHI) - 0.5
    on = (np.abs(u - np.round(u)) < 1e-4) & (np.abs(v - np.round(v)) < 1e-4)  # float32: ~1e-6 off
    return on, np.abs(eta), pt


def test_eflow_tracks_and_towers():
    rng = np.random.default_rng(0)
    phi0 = sim.tower_centres(0, 10)[1] + 0.01  # inside tower iphi = 10
    parts = [  # (pid, 3 x charge, p4)
        (22, 0, _p4(300.0, 0.52, phi0)), (22, 0, _p4(200.0, 0.53, phi0)),  # one ECAL tower
        (2112, 0, _p4(50.0, 0.52, phi0, 0.94)),                            # + HCAL, same tower
        (211, 3, _p4(100.0, 0.2, 1.0, 0.14)),                              # track
        (211, 3, _p4(0.3, -1.0, 2.0, 0.14)),                               # too soft: tower < 1 GeV
        (-211, -3, _p4(40.0, 3.03, -2.0, 0.14)),                           # outside tracker: HCAL
        (13, -3, _p4(40.0, 3.0, 2.0, 0.106)),                              # muon outside tracker: lost
        (22, 0, _p4(40.0, 5.0, 0.0)),                                      # outside calorimeter
        (211, 3, _p4(80.0, 0.0, 0.0, 0.14)),                               # second event: track
    ]
    ev = np.array([0] * 8 + [1])
    pid = np.array([p[0] for p in parts])
    p4 = np.array([p[2] for p in parts])
    out_ev, out = sim.eflow(ev, pid, np.array([p[1] for p in parts]), p4, rng)
    assert out_ev.tolist() == [0, 0, 0, 1]  # track, tower (500 GeV photons + neutron), HCAL tower; track
    pt = np.hypot(out[:, 1], out[:, 2])
    eta, phi = np.arcsinh(out[:, 3] / pt), np.arctan2(out[:, 2], out[:, 1])
    # tracks: direction kept, pT smeared by ~1%
    np.testing.assert_allclose(eta[[0, 3]], [0.2, 0.0], atol=1e-9)
    np.testing.assert_allclose(phi[[0, 3]], [1.0, 0.0], atol=1e-9)
    assert abs(pt[0] / 100 - 1) < 0.1 and pt[0] != 100.0
    # towers: massless, at their centres, energies summed then smeared
    np.testing.assert_allclose(out[1:3, 0], np.linalg.norm(out[1:3, 1:], axis=1))
    c_eta, c_phi = sim.tower_centres(np.array([54, 79]), np.array([10, 11]))
    np.testing.assert_allclose(eta[1:3], c_eta, atol=1e-9)
    np.testing.assert_allclose(phi[1:3], c_phi, atol=1e-9)
    e_sum = p4[0, 0] + p4[1, 0] + p4[2, 0]
    assert abs(out[1, 0] / e_sum - 1) < 0.15 and out[1, 0] != e_sum
    assert abs(out[2, 0] / p4[5, 0] - 1) < 0.6
    # the same generator state gives the same objects
    again = sim.eflow(ev, pid, np.array([p[1] for p in parts]), p4, np.random.default_rng(0))[1]
    np.testing.assert_array_equal(out, again)


@pytest.fixture(scope="module")
def det_dir(tmp_path_factory):
    """200 jets through the simple detector, seed SIM_SEED: its chunks start from the same Pythia
    events as sim_dir's first chunks (chunk seeds depend on seed, class and chunk only)."""
    from conftest import SIM_SEED

    d = tmp_path_factory.mktemp("det")
    sim.simulate(200, str(d), seed=SIM_SEED, workers=min(2, os.cpu_count() or 1), progress=False,
                 detector="simple")
    return d


def test_detector_jets(det_dir, sim_dir):
    det, _ = _load(det_dir)
    tru, _ = _load(sim_dir)
    for cls in (0, 1):  # towers merge photons, soft particles are lost: fewer constituents
        n_det = det["Nobj"][det["is_signal"] == cls].mean()
        n_tru = tru["Nobj"][tru["is_signal"] == cls].mean()
        assert n_det < 0.85 * n_tru, (cls, n_det, n_tru)
    assert det["Nobj"][det["is_signal"] == 1].mean() > det["Nobj"][det["is_signal"] == 0].mean()
    p4, y = det["Pmu"].astype(np.float64), det["is_signal"]
    real = p4[..., 0] > 0
    np.testing.assert_array_equal(real.sum(1), det["Nobj"])
    np.testing.assert_allclose(p4[..., 0][real], np.linalg.norm(p4[..., 1:], axis=-1)[real], rtol=1e-5, atol=1e-4)
    s = p4.sum(1)
    assert (np.hypot(s[:, 1], s[:, 2]) > 549.0).all() and (np.hypot(s[:, 1], s[:, 2]) < 651.0).all()
    m = jet_mass(p4)
    assert 140 < np.median(m[y == 1]) < 200 and np.median(m[y == 0]) < 120
    # every constituent is a tower (at a tower centre, E > 1 GeV) or a track (|eta| < 2.5, pT > 0.5 GeV)
    on, aeta, pt = _tower_grid(det["Pmu"])
    assert ((aeta < 2.5) & (pt > 0.45))[~on].all()
    assert (p4[real][on, 0] > sim.TOWER_E_MIN - 1e-3).all()
    assert 0.1 < on.mean() < 0.7
    for jet in det["Pmu"][:50]:  # one object per tower: deposits are summed
        j_on, _, _ = _tower_grid(jet[None])
        q = jet[jet[:, 0] > 0][j_on].astype(np.float64)
        keys = np.round(np.c_[np.arcsinh(q[:, 3] / np.hypot(q[:, 1], q[:, 2])), np.arctan2(q[:, 2], q[:, 1])], 3)
        assert len(np.unique(keys, axis=0)) == len(keys)
    # truth-level jets: no grid, and soft particles a detector would not keep as tracks
    on_t, _, pt_t = _tower_grid(tru["Pmu"][:100])
    assert on_t.mean() < 0.01 and (pt_t < 0.45).mean() > 0.05


def test_detector_deterministic_and_cached_apart(tiny, tmp_path):
    with h5py.File(os.path.join(tiny, "train.h5"), "r") as f:
        assert f.attrs["detector"] == "none"
    d1 = tmp_path / "det"
    shutil.copytree(tiny, d1)  # a complete truth-level sample there must not be taken as the answer
    with pytest.raises(DataError, match="--force"):  # another dataset is never overwritten silently
        sim.simulate(20, str(d1), seed=7, workers=1, progress=False, detector="simple")
    sim.simulate(20, str(d1), seed=7, workers=1, progress=False, detector="simple", force=True)
    with h5py.File(d1 / "train.h5", "r") as f:
        assert f.attrs["detector"] == "simple" and json.loads(f.attrs["config"])["detector"] == "simple"
    a = _arrays(str(d1))
    assert not np.array_equal(a["train"]["Pmu"], _arrays(tiny)["train"]["Pmu"])
    d2 = sim.default_sample(20, seed=7, workers=2, progress=False, detector="simple", cache_dir=str(tmp_path / "c"))
    assert d2 == str(tmp_path / "c" / "sim-20-7-simple")
    _assert_same(a, _arrays(d2))  # same jets with 1 and 2 workers


def test_bad_detector(tmp_path):
    with pytest.raises(DataError, match="none, simple"):
        sim.simulate(20, str(tmp_path), progress=False, detector="delphes")
    from qpelican.core.errors import RecipeError
    from qpelican.config.recipe import recipe_from_dict

    assert recipe_from_dict({}).data.detector == "none"
    assert recipe_from_dict({"data": {"detector": "simple"}}).data.detector == "simple"
    with pytest.raises(RecipeError, match=r"data\.detector = 'full'.*'none' or 'simple'"):
        recipe_from_dict({"data": {"detector": "full"}})
