"""`qpelican data inspect`: what is in a jet file (streamed, so any size works).

Summary: jets, layout, signal fraction, skipped empty jets, and per class the multiplicity
(constituents with E > 0 among the kept N) and jet-mass quantiles; optional PNG with both
distributions for signal and background. It also converts every jet to the Level-1 grid
(``data.format: l1``, :mod:`qpelican.data.l1`) and counts the candidates among the ``l1_n``
highest-pT ones that would saturate or drop there. Files written by ``qpelican data simulate``
also show how they were simulated: seed, detector, signal matching (contained | top) and MPI.
"""
from __future__ import annotations

import json
import os

import h5py
import numpy as np

from qpelican.core.io import atomic_path
from qpelican.data.baseline import jet_mass
from qpelican.data.l1 import GridCounts, to_l1
from qpelican.data.readers import open_dataset

QUANTILES = (0.1, 0.5, 0.9)


def simulation_settings(path):
    """{seed, detector, matching, mpi} of a file written by ``qpelican data simulate``, else None.

    Files simulated before ``--matching`` existed used the "contained" definition."""
    try:
        with h5py.File(path, "r") as f:
            attrs = dict(f.attrs)
    except OSError:
        return None
    if not str(attrs.get("generator", "")).startswith("qpelican"):
        return None
    try:
        cfg = json.loads(attrs.get("config", "{}"))
    except (TypeError, ValueError):
        cfg = {}
    return {"seed": int(attrs.get("seed", -1)),
            "detector": str(attrs.get("detector", cfg.get("detector", "none"))),
            "matching": str(attrs.get("matching", cfg.get("matching", "contained"))),
            "mpi": bool(attrs.get("mpi", cfg.get("mpi", False)))}


def summarize(path, n_constituents=200, max_jets=None, chunk_size=32768, l1_n=16):
    """Stream the file; returns a dict with counts, per-class arrays and quantile summaries.

    Multiplicity is counted among the first `n_constituents` (200 = everything the layouts hold).
    ``l1``: the :class:`~qpelican.data.l1.GridCounts` of the jets on the Level-1 grid, N = ``l1_n``.
    """
    ds = open_dataset(path, n_constituents=n_constituents)
    mult, mass, lab = [], [], []
    grid = GridCounts()
    for p4, y in ds.iter_chunks(chunk_size=chunk_size, stop=max_jets):
        grid.add(to_l1(p4, l1_n)[1])
        mult.append((p4[..., 0] > 0).sum(axis=1).astype(np.int32))
        mass.append(jet_mass(p4).astype(np.float32))
        lab.append(y)
    mult = np.concatenate(mult) if mult else np.zeros(0, np.int32)
    mass = np.concatenate(mass) if mass else np.zeros(0, np.float32)
    lab = np.concatenate(lab) if lab else np.zeros(0, np.int8)
    classes = {}
    for name, c in (("signal", 1), ("background", 0)):
        sel = lab == c
        classes[name] = {
            "jets": int(sel.sum()),
            "multiplicity_mean": float(mult[sel].mean()) if sel.any() else float("nan"),
            "multiplicity_q": [float(x) for x in np.quantile(mult[sel], QUANTILES)] if sel.any() else [],
            "mass_mean": float(mass[sel].mean()) if sel.any() else float("nan"),
            "mass_q": [float(x) for x in np.quantile(mass[sel], QUANTILES)] if sel.any() else [],
        }
    return {
        "path": ds.path, "layout": ds.layout, "rows": ds.n_jets, "jets": int(len(lab)),
        "skipped_empty": ds.skipped_empty, "max_constituents": ds.max_constituents,
        "signal_fraction": float(lab.mean()) if len(lab) else float("nan"),
        "classes": classes, "multiplicity": mult, "mass": mass, "labels": lab,
        "l1": dict(grid.as_dict(), n_constituents=int(l1_n), summary=grid.describe()),
        "simulation": simulation_settings(ds.path),
    }


def render_table(summary):
    """A rich Table of the summary."""
    from rich.table import Table

    t = Table(title=f"{os.path.basename(summary['path'])}  ({summary['layout']} layout)")
    t.add_column("quantity")
    t.add_column("signal", justify="right")
    t.add_column("background", justify="right")
    s, b = summary["classes"]["signal"], summary["classes"]["background"]
    q = "/".join(f"q{int(x * 100)}" for x in QUANTILES)

    def fmt(vals):
        return " / ".join(f"{v:.0f}" for v in vals) if vals else "-"

    t.add_row("jets", f"{s['jets']}", f"{b['jets']}")
    t.add_row("multiplicity mean", f"{s['multiplicity_mean']:.1f}", f"{b['multiplicity_mean']:.1f}")
    t.add_row(f"multiplicity {q}", fmt(s["multiplicity_q"]), fmt(b["multiplicity_q"]))
    t.add_row("jet mass mean [GeV]", f"{s['mass_mean']:.1f}", f"{b['mass_mean']:.1f}")
    t.add_row(f"jet mass {q} [GeV]", fmt(s["mass_q"]), fmt(b["mass_q"]))
    t.caption = (f"{summary['jets']} jets, signal fraction {summary['signal_fraction']:.3f}, "
                 f"up to {summary['max_constituents']} constituents per jet stored, "
                 f"{summary['skipped_empty']} empty jets skipped")
    sim = summary.get("simulation")
    if sim:
        t.caption += (f"\nsimulated by qpelican: seed {sim['seed']}, detector {sim['detector']}, "
                      f"matching {sim['matching']}, MPI {'on' if sim['mpi'] else 'off'}")
    return t


def write_png(summary, out_png):
    """Multiplicity and jet-mass histograms, signal vs background; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lab, mult, mass = summary["labels"], summary["multiplicity"], summary["mass"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    step = max(1, int(np.ceil(mult.max(initial=1) / 50)))
    mbins = np.arange(0, mult.max(initial=1) + step + 1, step) - 0.5
    kbins = np.linspace(0, 400, 81)
    for c, name, color in ((1, "signal (top)", "tab:red"), (0, "background (QCD)", "tab:blue")):
        sel = lab == c
        axes[0].hist(mult[sel], bins=mbins, histtype="step", density=True, color=color, label=name)
        axes[1].hist(np.clip(mass[sel], 0, 399.9), bins=kbins, histtype="step", density=True, color=color, label=name)
    axes[0].set_xlabel("constituent multiplicity")
    axes[1].set_xlabel("jet mass [GeV]")
    axes[1].axvline(172.5, color="gray", ls=":", lw=1)
    for ax in axes:
        ax.set_ylabel("normalised")
        ax.legend()
    fig.suptitle(os.path.basename(summary["path"]))
    fig.tight_layout()
    try:
        with atomic_path(out_png) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        plt.close(fig)
    return out_png
