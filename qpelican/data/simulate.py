"""Pythia 8 + FastJet top-tagging sample in the converted layout (docs/physics.md, section 9).

Signal: hadronic ttbar (W -> quarks only); background: QCD dijets (HardQCD:all); 14 TeV,
MPI off by default, ISR/FSR and hadronisation on. Final-state visible particles (neutrinos
removed) are clustered with anti-kT R = 0.8; jets with 550 < pT < 650 GeV and |eta| < 2 are kept.
detector="none" (default) clusters the particles themselves (truth level); detector="simple"
clusters a Delphes-like E-flow instead: smeared tracks plus smeared calorimeter towers
(see `eflow`). matching="contained" (default): a signal jet must contain the hadronically
decaying top, its b and both W decay quarks within dR < 0.8 (quarks taken at the top/W decay
vertices, before showering); matching="top": only the top itself must lie within dR < 0.8, its
decay products need not (more signal jets miss part of the top's mass).
Constituents are made massless (E = |p|), sorted by pT, at most 200 per jet, zero-padded.

Output per split (train.h5 / val.h5 / test.h5):
    Pmu (jets, 200, 4) float32 (E, px, py, pz) GeV, Nobj (jets,) int16, is_signal (jets,) int8,
    truth_Pmu (jets, 4) float32 (matched top 4-momentum, zeros for background).

Reproducibility: the sample is cut into chunks whose size depends only on n_jets; chunk k of
class c gets a Pythia seed derived from (seed, c, k), so the jets do not depend on the number
of workers. Chunks go to `<out>/.sim-chunks-<tag>/` (atomic writes); a rerun skips finished
chunks, and the final files appear only through os.replace.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass

import h5py
import numpy as np

from qpelican.config.recipe import DETECTORS, MATCHINGS
from qpelican.core.errors import DataError
from qpelican.core.io import atomic_path, check_out_dir

MAX_CONSTITUENTS = 200
SPLIT_NAMES = ("train", "val", "test")
FORMAT_VERSION = 1  # bump when the generator changes: invalidates cached chunks


@dataclass(frozen=True)
class GenConfig:
    """Generator and selection settings (all energies in GeV)."""

    ecm: float = 14000.0
    pthat_min: float = 500.0   # parton pT window that feeds 550 < pT_jet < 650 efficiently
    pthat_max: float = 750.0
    mpi: bool = False
    radius: float = 0.8
    pt_min: float = 550.0
    pt_max: float = 650.0
    eta_max: float = 2.0
    match_dr: float = 0.8
    events_per_batch: int = 50
    detector: str = "none"     # "none" (truth particles) | "simple" (E-flow, see `eflow`)
    matching: str = "contained"  # "contained" (top + b, q, q' within match_dr) | "top" (the top alone)

    def __post_init__(self):
        if self.detector not in DETECTORS:
            raise DataError(f"detector {self.detector!r}: expected one of {', '.join(DETECTORS)}")
        if self.matching not in MATCHINGS:
            raise DataError(f"matching {self.matching!r}: expected one of {', '.join(MATCHINGS)} (contained: the "
                            "top and its decay quarks within dR < 0.8 of the jet; top: the top alone)")


def _require_sim():
    """Import the optional simulator packages, or say which extra to install."""
    try:
        import awkward  # noqa: F401  (fastjet's vectorised interface and Pythia's nextBatch)
        import fastjet  # noqa: F401
        import pythia8mc  # noqa: F401
    except ImportError as exc:
        raise DataError(
            f"the jet simulator needs pythia8mc, fastjet and awkward ({exc.name} is missing); "
            "install the simulator extra: pip install -e '.[sim]'"
        ) from None


@contextlib.contextmanager
def _quiet_stdout():
    """Silence C++ writes to fd 1 (Pythia/FastJet banners) without touching Python's sys.stdout."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _pythia_seed(seed: int, cls: int, chunk: int) -> int:
    """Pythia accepts seeds in [1, 900000000]; derive one per (seed, class, chunk)."""
    state = np.random.SeedSequence([int(seed), int(cls), int(chunk)]).generate_state(1)[0]
    return int(state % 900_000_000) + 1


def _make_pythia(signal: bool, seed: int, cfg: GenConfig):
    import pythia8mc

    with _quiet_stdout():
        py = pythia8mc.Pythia("", False)
        settings = [
            "Print:quiet = on",
            "Next:numberCount = 0",
            f"Beams:eCM = {cfg.ecm}",
            f"PhaseSpace:pTHatMin = {cfg.pthat_min}",
            f"PhaseSpace:pTHatMax = {cfg.pthat_max}",
            f"PartonLevel:MPI = {'on' if cfg.mpi else 'off'}",
            "PartonLevel:ISR = on",
            "PartonLevel:FSR = on",
            "HadronLevel:all = on",
            "Random:setSeed = on",
            f"Random:seed = {seed}",
        ]
        if signal:
            settings += ["Top:gg2ttbar = on", "Top:qqbar2ttbar = on",
                         "24:onMode = off", "24:onIfAny = 1 2 3 4 5"]
        else:
            settings += ["HardQCD:all = on"]
        for s in settings:
            if not py.readString(s):
                raise RuntimeError(f"Pythia rejected setting {s!r}")
        if not py.init():
            raise RuntimeError("Pythia initialisation failed")
    return py


def _eta_phi(px, py, pz):
    pt = np.hypot(px, py)
    return np.arcsinh(pz / np.maximum(pt, 1e-12)), np.arctan2(py, px)


def _dr(eta1, phi1, eta2, phi2):
    dphi = (phi1 - phi2 + np.pi) % (2 * np.pi) - np.pi
    return np.hypot(eta1 - eta2, dphi)


def _last_copy(i, pid, d1, d2):
    """Follow a particle's carbon copies (recoil, shower) down to the copy that decays."""
    while True:
        a, b = d1[i], d2[i]
        if a > 0 and pid[a] == pid[i]:
            i = a
        elif b > 0 and pid[b] == pid[i]:
            i = b
        else:
            return i


def _daughters(i, d1, d2):
    a, b = d1[i], d2[i]
    if a <= 0:
        return []
    if b >= a:
        return list(range(a, b + 1))
    return [a] if b <= 0 else [a, b]


def _hadronic_tops(pid, d1, d2, mom):
    """Return [(top p4 (E,px,py,pz), partons (k,4) = b, q, q')] for tops decaying to b + W(qq')."""
    out = []
    seen = set()
    for i in np.nonzero(np.abs(pid) == 6)[0]:
        t = _last_copy(int(i), pid, d1, d2)
        if t in seen:
            continue
        seen.add(t)
        dau = _daughters(t, d1, d2)
        b = [j for j in dau if abs(pid[j]) == 5]
        w = [j for j in dau if abs(pid[j]) == 24]
        if not b or not w:
            continue
        wl = _last_copy(w[0], pid, d1, d2)
        qs = [j for j in _daughters(wl, d1, d2) if 1 <= abs(pid[j]) <= 5]
        if len(qs) != 2:
            continue
        out.append((mom[t], mom[[b[0]] + qs]))
    return out


def _matched_top(tops, jet_eta, jet_phi, cfg):
    """The 4-momentum of the first top in ``tops`` that matches the jet, or None.

    matching "contained": the top, its b and both W quarks lie within cfg.match_dr of the jet axis;
    "top": the top alone does."""
    for tp4, partons in tops:
        if cfg.matching == "top":
            partons = partons[:0]
        eta_p, phi_p = _eta_phi(np.r_[tp4[1], partons[:, 1]], np.r_[tp4[2], partons[:, 2]],
                                np.r_[tp4[3], partons[:, 3]])
        if np.all(_dr(jet_eta, jet_phi, eta_p, phi_p) < cfg.match_dr):
            return tp4
    return None


# ------------------------------------------------------------ simple detector (Delphes-like E-flow)
# Delphes ATLAS-card-like numbers: tracks inside the tracker, towers of 0.1 x 2pi/64 up to |eta| 4.9.
TRACK_ETA_MAX, TRACK_PT_MIN = 2.5, 0.5
CALO_ETA_MAX, TOWER_DETA, TOWER_NPHI = 4.9, 0.1, 64
TOWER_NETA = round(2 * CALO_ETA_MAX / TOWER_DETA)
TOWER_E_MIN = 1.0


def _charge3(pid, pdata, cache):
    """Three times the electric charge of each PDG id (Pythia's table, looked up once per id)."""
    ids, inv = np.unique(pid, return_inverse=True)
    for i in ids.tolist():
        if i not in cache:
            cache[i] = pdata.chargeType(i)
    return np.array([cache[i] for i in ids.tolist()], np.int64)[inv.reshape(-1)]


def _track_resolution(pt):
    return np.sqrt(0.01 ** 2 + (5e-4 * pt) ** 2)


def _ecal_resolution(e):
    return np.sqrt(0.01 ** 2 + 0.10 ** 2 / e)


def _hcal_resolution(e):
    return np.sqrt(0.0302 ** 2 + 0.5205 ** 2 / e + 1.59 ** 2 / e ** 2)


def _lognormal(mean, rel_sigma, rng):
    """Log-normal draws with the given mean and relative width: energies stay positive (as Delphes)."""
    s2 = np.log1p(rel_sigma ** 2)
    return mean * np.exp(np.sqrt(s2) * rng.standard_normal(mean.shape) - s2 / 2)


def tower_centres(ieta, iphi):
    """(eta, phi) of the centres of towers (ieta, iphi)."""
    return (-CALO_ETA_MAX + (ieta + 0.5) * TOWER_DETA,
            -np.pi + (iphi + 0.5) * (2 * np.pi / TOWER_NPHI))


def _towers(ev, e, eta, phi, hcal, rng):
    """Sum energies per (event, tower, ECAL/HCAL), smear each sum, return massless towers.

    Returns (event index, (m, 4) E px py pz) of the towers whose smeared ECAL + HCAL energy
    exceeds TOWER_E_MIN; each points at its tower centre."""
    ieta = np.clip(np.floor((eta + CALO_ETA_MAX) / TOWER_DETA).astype(np.int64), 0, TOWER_NETA - 1)
    iphi = np.floor((phi + np.pi) / (2 * np.pi / TOWER_NPHI)).astype(np.int64) % TOWER_NPHI
    key = (ev.astype(np.int64) * TOWER_NETA + ieta) * TOWER_NPHI + iphi
    tower, inv = np.unique(key, return_inverse=True)  # sparse: only hit towers
    inv = inv.reshape(-1)
    total = np.zeros(len(tower))
    for part, resolution in ((~hcal, _ecal_resolution), (hcal, _hcal_resolution)):
        esum = np.bincount(inv[part], weights=e[part], minlength=len(tower))
        hit = esum > 0
        total[hit] += _lognormal(esum[hit], resolution(esum[hit]), rng)
    keep = total > TOWER_E_MIN
    tower, total = tower[keep], total[keep]
    t_ev, rest = np.divmod(tower, TOWER_NETA * TOWER_NPHI)
    c_eta, c_phi = tower_centres(*np.divmod(rest, TOWER_NPHI))
    pt = total / np.cosh(c_eta)
    return t_ev, np.stack([total, pt * np.cos(c_phi), pt * np.sin(c_phi), pt * np.sinh(c_eta)], axis=1)


def eflow(ev, pid, charge3, p4, rng):
    """Delphes-like energy flow of one batch of events (all arrays flat over the batch).

    ev: event index per particle, pid: PDG id, charge3: 3 x charge, p4: (n, 4) E px py pz of the
    stable visible particles. Charged particles with |eta| < 2.5 and pT > 0.5 GeV are tracks with
    a gaussian pT smearing (direction kept); everything else within |eta| < 4.9 (photons and e+-
    in ECAL, hadrons in HCAL; muons outside the tracker are lost) is summed in towers.
    Returns (event index, (m, 4) p4), ordered by event.
    """
    e, px, py, pz = p4.T
    pt = np.hypot(px, py)
    eta, phi = _eta_phi(px, py, pz)
    apid = np.abs(pid)
    track = (charge3 != 0) & (np.abs(eta) < TRACK_ETA_MAX) & (pt > TRACK_PT_MIN)
    scale = 1 + _track_resolution(pt[track]) * rng.standard_normal(int(track.sum()))
    tr_p4 = p4[track] * scale[:, None]  # whole 4-vector: pT smeared, direction kept
    tr_ev = ev[track][scale > 0]  # a (rare) negative smeared pT is a lost track, as in Delphes
    tr_p4 = tr_p4[scale > 0]
    calo = ~track & (np.abs(eta) < CALO_ETA_MAX) & (apid != 13)
    hcal = (apid != 22) & (apid != 11)
    to_ev, to_p4 = _towers(ev[calo], e[calo], eta[calo], phi[calo], hcal[calo], rng)
    out_ev = np.concatenate([tr_ev, to_ev])
    order = np.argsort(out_ev, kind="stable")
    return out_ev[order], np.concatenate([tr_p4, to_p4])[order]


def _eflow_batch(final, pdata, rng, charge_cache):
    """The awkward (events, objects) {px, py, pz, E} array of a batch's E-flow, for FastJet."""
    import awkward as ak

    counts = ak.to_numpy(ak.num(final))
    ev = np.repeat(np.arange(len(counts)), counts)
    pid = ak.to_numpy(ak.flatten(final.id))
    p4 = np.stack([ak.to_numpy(ak.flatten(final.p[f])) for f in ("e", "px", "py", "pz")], axis=1)
    out_ev, out_p4 = eflow(ev, pid, _charge3(pid, pdata, charge_cache), p4, rng)
    n = np.bincount(out_ev, minlength=len(counts))
    return ak.unflatten(ak.zip({"px": out_p4[:, 1], "py": out_p4[:, 2], "pz": out_p4[:, 3], "E": out_p4[:, 0]}), n)


def generate_jets(signal: bool, n_jets: int, seed: int, cfg: GenConfig = GenConfig(), report=None):
    """Generate exactly `n_jets` selected jets of one class.

    Returns (Pmu (n,200,4) float32, Nobj (n,) int16, truth (n,4) float32).
    `report(k)` is called with the number of new jets after each event batch.
    """
    import awkward as ak
    import fastjet

    py = _make_pythia(signal, seed, cfg)
    # detector randomness follows the Pythia seed, itself a function of (seed, class, chunk)
    rng = np.random.default_rng([int(seed), 17])
    charge_cache = {}
    jetdef = fastjet.JetDefinition(fastjet.antikt_algorithm, cfg.radius)
    pmu = np.zeros((n_jets, MAX_CONSTITUENTS, 4), np.float32)
    nobj = np.zeros(n_jets, np.int16)
    truth = np.zeros((n_jets, 4), np.float32)
    got = 0
    while got < n_jets:
        with _quiet_stdout():
            batch = py.nextBatch(cfg.events_per_batch)
        prt = batch.prt
        final = prt[(prt.status > 0) & (abs(prt.id) != 12) & (abs(prt.id) != 14) & (abs(prt.id) != 16)]
        if cfg.detector == "simple":
            parts = _eflow_batch(final, py.particleData, rng, charge_cache)
        else:
            parts = ak.zip({"px": final.p.px, "py": final.p.py, "pz": final.p.pz, "E": final.p.e})
        with _quiet_stdout():  # FastJet prints its banner on first use
            cs = fastjet.ClusterSequence(parts, jetdef)
            jets = cs.inclusive_jets(cfg.pt_min)
            cons = cs.constituents(cfg.pt_min)
        jpx, jpy, jpz = (ak.to_numpy(ak.flatten(jets[f])) for f in ("px", "py", "pz"))
        counts = ak.to_numpy(ak.num(jets))
        ev_of_jet = np.repeat(np.arange(len(counts)), counts)
        jpt = np.hypot(jpx, jpy)
        jeta, jphi = _eta_phi(jpx, jpy, jpz)
        sel = np.nonzero((jpt > cfg.pt_min) & (jpt < cfg.pt_max) & (np.abs(jeta) < cfg.eta_max))[0]
        if sel.size == 0:
            continue
        got_before = got
        # One awkward -> numpy conversion per batch; per-jet work below is plain numpy.
        flat_cons = ak.flatten(cons, axis=1)  # (jets in batch, var constituents)
        c_off = np.concatenate([[0], np.cumsum(ak.to_numpy(ak.num(flat_cons)))])
        c_p3 = np.stack([ak.to_numpy(ak.flatten(flat_cons[f])) for f in ("px", "py", "pz")], axis=1)
        if signal:
            e_off = np.concatenate([[0], np.cumsum(ak.to_numpy(ak.num(prt)))])
            r_id = ak.to_numpy(ak.flatten(prt.id))
            r_d1 = ak.to_numpy(ak.flatten(prt.daughter1))
            r_d2 = ak.to_numpy(ak.flatten(prt.daughter2))
            r_mom = np.stack([ak.to_numpy(ak.flatten(prt.p[f])) for f in ("e", "px", "py", "pz")], axis=1)
        tops_cache = {}
        for j in sel:
            if got >= n_jets:
                break
            ev = int(ev_of_jet[j])
            top_p4 = np.zeros(4)
            if signal:
                if ev not in tops_cache:
                    a, b = e_off[ev], e_off[ev + 1]
                    tops_cache[ev] = _hadronic_tops(r_id[a:b], r_d1[a:b], r_d2[a:b], r_mom[a:b])
                matched = _matched_top(tops_cache[ev], jeta[j], jphi[j], cfg)
                if matched is None:
                    continue
                top_p4 = matched
            p3 = c_p3[c_off[j]:c_off[j + 1]]
            order = np.argsort(-(p3[:, 0] ** 2 + p3[:, 1] ** 2), kind="stable")[:MAX_CONSTITUENTS]
            p3 = p3[order]
            k = len(p3)
            pmu[got, :k, 0] = np.linalg.norm(p3, axis=1)  # massless: E = |p|
            pmu[got, :k, 1:] = p3
            nobj[got] = k
            truth[got] = top_p4
            got += 1
        if report is not None and got > got_before:
            report(got - got_before)
    return pmu, nobj, truth


# ---------------------------------------------------------------- chunked, parallel driver

def chunk_plan(n_jets: int):
    """[(cls, chunk index, jets)] interleaving signal and background; depends on n_jets only."""
    n_sig = n_jets // 2
    per_class = {1: n_sig, 0: n_jets - n_sig}
    # >= 100 jets per chunk keeps Pythia's ~0.15 s initialisation small; <= 1000 keeps resume fine-grained
    size = int(min(1000, max(100, math.ceil(n_jets / 16))))
    plans = {}
    for cls, n in per_class.items():
        plans[cls] = [(cls, k, min(size, n - k * size)) for k in range(math.ceil(n / size))]
    out = []
    for k in range(max(len(plans[0]), len(plans[1]))):
        for cls in (1, 0):
            if k < len(plans[cls]):
                out.append(plans[cls][k])
    return out


_QUEUE = None


def _init_worker(queue):
    global _QUEUE
    _QUEUE = queue
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C


def _run_chunk(args):
    """Generate one chunk and write it atomically; returns its path."""
    cls, k, n, seed, cfg_dict, chunk_dir = args
    cfg = GenConfig(**cfg_dict)
    report = (lambda m: _QUEUE.put(m)) if _QUEUE is not None else None
    pmu, nobj, truth = generate_jets(bool(cls), n, _pythia_seed(seed, cls, k), cfg, report)
    path = os.path.join(chunk_dir, f"chunk-{cls}-{k:05d}.h5")
    _write_chunk(path, pmu, nobj, truth)
    return path


def _tag(n_jets, seed, cfg):
    cfg_dict = asdict(cfg)
    if cfg_dict["detector"] == "none":  # truth-level tags as before the option: caches stay valid
        del cfg_dict["detector"]
    if cfg_dict["matching"] == "contained":  # likewise for the default matching
        del cfg_dict["matching"]
    blob = json.dumps({"n": n_jets, "seed": seed, "cfg": cfg_dict, "v": FORMAT_VERSION}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def _split_sizes(n, split):
    split = tuple(float(s) for s in split)
    if len(split) != 3 or any(s < 0 for s in split) or not math.isclose(sum(split), 1.0, abs_tol=1e-6):
        raise DataError(f"split {split}: expected three non-negative fractions (train, val, test) summing to 1, "
                        "e.g. 0.8,0.1,0.1")
    n_train = int(round(split[0] * n))
    n_val = int(round(split[1] * n))
    return {"train": n_train, "val": n_val, "test": n - n_train - n_val}


def _is_complete(path, tag):
    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("sim_tag") == tag
    except (OSError, KeyError):
        return False


def _progress(total, done, enabled):
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    cols = [TextColumn("simulating"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} jets/s"), TimeElapsedColumn(), TextColumn("ETA"),
            TimeRemainingColumn()]
    prog = Progress(*cols, disable=not enabled, transient=False)
    task = prog.add_task("sim", total=total, completed=done, rate="-")
    return prog, task


def simulate(n_jets, out_dir, seed=0, workers=None, split=(0.8, 0.1, 0.1), mpi=False, progress=True,
             config: GenConfig | None = None, resume=True, detector: str | None = None, force=False,
             matching: str | None = None):
    """Simulate `n_jets` jets (half signal) into out_dir/{train,val,test}.h5; returns {split: path}.

    Splits with zero jets are not written. Re-running with the same arguments reuses finished
    chunks and returns at once when the final files are complete; resume=False regenerates.
    `detector` ("none" | "simple") overrides the config's (default "none": truth particles);
    `matching` ("contained" | "top") likewise (default "contained").

    A directory that already holds a different dataset (any train/val/test file that is not this
    very simulation: the reference dataset, another seed, size or split) is refused with a
    DataError unless ``force``; with ``force`` the old files stay until the new ones are complete,
    then the new files replace them (and old split files the new run does not write are removed).
    """
    n_jets = int(n_jets)
    if n_jets < 2:
        raise DataError(f"--jets {n_jets}: need at least 2 jets (one per class)")
    sizes = _split_sizes(n_jets, split)
    check_out_dir(out_dir)
    _require_sim()
    cfg = config or GenConfig(mpi=bool(mpi))
    if config is not None and mpi != cfg.mpi:
        cfg = GenConfig(**{**asdict(cfg), "mpi": bool(mpi)})
    if detector is not None and detector != cfg.detector:
        cfg = GenConfig(**{**asdict(cfg), "detector": detector})
    if matching is not None and matching != cfg.matching:
        cfg = GenConfig(**{**asdict(cfg), "matching": matching})
    tag = _tag(n_jets, seed, cfg)
    paths = {s: os.path.join(out_dir, f"{s}.h5") for s, n in sizes.items() if n > 0}
    final_tag = f"{tag}-{_split_sizes_tag(sizes)}"
    other = _other_dataset(out_dir, paths, final_tag, force)
    os.makedirs(out_dir, exist_ok=True)
    chunk_dir = os.path.join(out_dir, f".sim-chunks-{tag}")
    if not resume:
        shutil.rmtree(chunk_dir, ignore_errors=True)
    elif all(_is_complete(p, final_tag) for p in paths.values()):
        return paths
    os.makedirs(chunk_dir, exist_ok=True)
    plan = chunk_plan(n_jets)
    todo, done_jets = [], 0
    for cls, k, n in plan:
        p = os.path.join(chunk_dir, f"chunk-{cls}-{k:05d}.h5")
        if os.path.exists(p):
            done_jets += n
        else:
            todo.append((cls, k, n, int(seed), asdict(cfg), chunk_dir))
    workers = max(1, min(int(workers or os.cpu_count() or 1), max(1, len(todo))))

    prog, task = _progress(n_jets, done_jets, progress)
    t0, new = time.perf_counter(), 0
    with prog:
        if todo and workers == 1:
            def report(m):
                nonlocal new
                new += m
                prog.update(task, advance=m, rate=f"{new / (time.perf_counter() - t0):.0f}")
            for cls, k, n, s, c, d in todo:
                pmu, nobj, truth = generate_jets(bool(cls), n, _pythia_seed(s, cls, k), cfg, report)
                _write_chunk(os.path.join(d, f"chunk-{cls}-{k:05d}.h5"), pmu, nobj, truth)
        elif todo:
            import multiprocessing as mp
            import queue as queue_mod

            ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
            q = ctx.Queue()
            with ctx.Pool(workers, initializer=_init_worker, initargs=(q,)) as pool:
                pending = pool.map_async(_run_chunk, todo, chunksize=1)
                while True:
                    try:
                        m = q.get(timeout=0.2)
                        new += m
                        while True:  # drain what is there before redrawing
                            try:
                                m = q.get_nowait()
                                new += m
                            except queue_mod.Empty:
                                break
                        prog.update(task, completed=done_jets + new,
                                    rate=f"{new / (time.perf_counter() - t0):.0f}")
                    except queue_mod.Empty:
                        pass
                    if pending.ready() and q.empty():
                        break
                pending.get()  # re-raise a worker's exception
        prog.update(task, completed=n_jets)

    _merge(plan, chunk_dir, paths, sizes, seed, final_tag, cfg)
    shutil.rmtree(chunk_dir, ignore_errors=True)
    for p in set(other) - set(paths.values()):  # --force: old split files not replaced would mix in
        with contextlib.suppress(OSError):
            os.remove(p)
    return paths


def _other_dataset(out_dir, paths, final_tag, force):
    """Split files in ``out_dir`` that are not this simulation; a DataError unless ``force``."""
    other = [p for p in _dataset_files(out_dir) if not _is_complete(p, final_tag) or p not in paths.values()]
    if other and not force:
        raise DataError(f"--out {out_dir} already holds a dataset ({', '.join(os.path.basename(p) for p in other)}) "
                        "that is not this simulation (other jets, seed, split or settings); qpelican does not "
                        "overwrite it. Choose another --out directory, or pass --force to replace it once the new "
                        "files are complete.")
    return other


def _dataset_files(out_dir):
    """The train/val/test files a reader would find in ``out_dir``."""
    if not os.path.isdir(out_dir):
        return []
    names = [n + ext for n in ("train", "val", "valid", "validation", "test") for ext in (".h5", ".hdf5")]
    return [os.path.join(out_dir, n) for n in names if os.path.lexists(os.path.join(out_dir, n))]


def _split_sizes_tag(sizes):
    return "-".join(str(sizes[s]) for s in SPLIT_NAMES)


def _write_chunk(path, pmu, nobj, truth):
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f["Pmu"] = pmu
        f["Nobj"] = nobj
        f["truth_Pmu"] = truth


def _merge(plan, chunk_dir, paths, sizes, seed, final_tag, cfg, group=16):
    """Stream chunks into the split files: a seeded global assignment of jets to splits and a
    shuffle within groups of `group` consecutive chunks (memory: one group, not the sample)."""
    n = sum(c[2] for c in plan)
    rng = np.random.default_rng([int(seed), 7919])
    split_of = np.repeat(np.arange(3, dtype=np.int8), [sizes[s] for s in SPLIT_NAMES])
    rng.shuffle(split_of)
    with contextlib.ExitStack() as commit:  # all split files appear (os.replace) only when all are complete
        tmp = {s: commit.enter_context(atomic_path(p)) for s, p in paths.items()}
        pos = _merge_into(plan, chunk_dir, tmp, sizes, seed, final_tag, cfg, rng, split_of, group)
    assert pos == n


def _merge_into(plan, chunk_dir, tmp, sizes, seed, final_tag, cfg, rng, split_of, group):
    """Write the split files ``tmp`` ({split: path}); returns the number of jets distributed."""
    files = {s: h5py.File(t, "w") for s, t in tmp.items()}
    try:
        for s, f in files.items():
            m = sizes[s]
            f.create_dataset("Pmu", (m, MAX_CONSTITUENTS, 4), np.float32)
            f.create_dataset("Nobj", (m,), np.int16)
            f.create_dataset("is_signal", (m,), np.int8)
            f.create_dataset("truth_Pmu", (m, 4), np.float32)
        offset = {s: 0 for s in files}
        pos = 0
        for g in range(0, len(plan), group):
            parts = {"Pmu": [], "Nobj": [], "truth_Pmu": [], "is_signal": []}
            for cls, k, m in plan[g:g + group]:
                with h5py.File(os.path.join(chunk_dir, f"chunk-{cls}-{k:05d}.h5"), "r") as c:
                    for key in ("Pmu", "Nobj", "truth_Pmu"):
                        parts[key].append(c[key][:m])
                parts["is_signal"].append(np.full(m, cls, np.int8))
            block = {key: np.concatenate(v) for key, v in parts.items()}
            perm = rng.permutation(len(block["Nobj"]))
            which = split_of[pos:pos + len(perm)]
            pos += len(perm)
            for si, s in enumerate(SPLIT_NAMES):
                if s not in files:
                    continue
                idx = perm[which == si]
                a, b = offset[s], offset[s] + len(idx)
                for key, arr in block.items():
                    files[s][key][a:b] = arr[idx]
                offset[s] = b
        for s, f in files.items():
            f.attrs["generator"] = "qpelican Pythia8+FastJet"
            f.attrs["config"] = json.dumps(asdict(cfg))
            f.attrs["detector"] = cfg.detector
            f.attrs["matching"] = cfg.matching
            f.attrs["mpi"] = bool(cfg.mpi)
            f.attrs["seed"] = int(seed)
            f.attrs["sim_tag"] = final_tag  # written last: marks the file complete
    finally:
        for f in files.values():
            f.close()
    return pos


def default_sample(n_jets, seed=0, cache_dir=None, workers=None, progress=True, detector="none",
                   matching="contained", mpi=False):
    """Simulate once and cache: $QPELICAN_CACHE (or ~/.cache/qpelican)/
    sim-<n>-<seed>[-<detector>][-top][-mpi] (no suffix for detector "none", matching "contained"
    and MPI off, so existing caches stay valid); returns the dir."""
    root = cache_dir or os.environ.get("QPELICAN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "qpelican")
    suffix = "" if detector == "none" else f"-{detector}"  # own dir: truth and detector samples coexist
    if matching != "contained":
        suffix += f"-{matching}"
    if mpi:
        suffix += "-mpi"
    out = os.path.join(root, f"sim-{int(n_jets)}-{int(seed)}{suffix}")
    simulate(n_jets, out, seed=seed, workers=workers, progress=progress, detector=detector, matching=matching,
             mpi=mpi, force=True)  # the cache directory is qpelican's own
    return out
