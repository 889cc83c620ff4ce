"""The train/validation/test jets of a run, read into memory once and shared by seeds and trials."""
import os
from dataclasses import dataclass, field

import numpy as np

from qpelican.core.errors import DataError, QpelicanError
from qpelican.data.l1 import GridCounts, open_input_dataset
from qpelican.data.readers import resolve_splits
from qpelican.data.simulate import default_sample


MIN_JETS = {"train": 20, "val": 2, "test": 2}  # below this a run's numbers mean nothing


@dataclass
class Splits:
    """In-memory train/val/test arrays: each a tuple (p4 float32 (B, N, 4) GeV, labels float32 (B,));
    with ``data.format: l1`` the inputs are Level-1 candidates (B, N, 3) (qpelican.data.l1)."""

    train: tuple
    val: tuple
    test: tuple
    description: dict = field(default_factory=dict)

    def __post_init__(self):
        for name in ("train", "val", "test"):
            p4, y = getattr(self, name)
            p4 = np.ascontiguousarray(p4, dtype=np.float32)
            y = np.asarray(y, dtype=np.float32).reshape(-1)
            if p4.ndim != 3 or p4.shape[-1] not in (3, 4) or len(p4) != len(y):
                raise QpelicanError(f"{name} split: expected (p4 (B, N, 4) or L1 candidates (B, N, 3), labels (B,)), "
                                    f"got {p4.shape}, {y.shape}")
            setattr(self, name, (p4, y))


def check_split(name, path, labels):
    """Refuse a split too small to train or measure on: fewer than MIN_JETS[name] non-empty jets,
    or jets of one class only (a classifier needs both; AUC and rejection are undefined)."""
    y = np.asarray(labels).reshape(-1)
    n_sig = int((y == 1).sum())
    counts = f"{len(y)} jets with constituents ({n_sig} signal, {len(y) - n_sig} background)"
    if len(y) < MIN_JETS[name] or n_sig == 0 or n_sig == len(y):
        raise DataError(f"{name} split {path}: {counts}; training needs at least {MIN_JETS[name]} {name} jets "
                        "and both classes (signal and background) in every split. Use a larger or complete "
                        "dataset, or raise data.train_jets / data.val_jets / data.test_jets.")


def read_split(path, n_constituents, cap, fmt="p4", counts=None):
    """(inputs, labels float32) of the first ``cap`` jets (None: all) of one split file, in input
    format ``fmt``; an L1 read adds its out-of-range candidates to ``counts`` (a GridCounts)."""
    ds = open_input_dataset(path, n_constituents, fmt)
    stop = ds.n_jets if cap is None else min(ds.n_jets, int(cap))
    p4, y = ds.read(0, stop)
    if counts is not None and fmt == "l1":
        counts.add(ds.counts)
    return p4, y.astype(np.float32)


def load_splits(recipe, data=None, progress=True) -> Splits:
    """Read the recipe's train/val/test splits into memory.

    ``data``: None (the recipe's data.path, or the cached simulated sample of ``data.jets`` jets
    when that is null), a path (directory with train/val/test.h5, or files), or a :class:`Splits`
    (returned as is). With a path, ``data.train_jets`` caps the training jets and ``val_jets`` /
    ``test_jets`` cap the other splits (the first rows of each file are read).
    """
    if isinstance(data, Splits):
        return data
    d = recipe.data
    path = data if data is not None else d.path
    simulated = path is None
    if simulated:
        path = default_sample(recipe.simulated_jets(), seed=d.seed, progress=progress, detector=d.detector,
                              matching=d.matching, mpi=d.mpi)
    files = resolve_splits(path)
    missing = [k for k in ("train", "val", "test") if not files.get(k)]
    if missing:
        raise QpelicanError(f"data {path}: no {', '.join(missing)} split found; training needs train, val and test "
                            "files (a directory with train.h5, val.h5 and test.h5).")
    caps = {"train": None if simulated else d.train_jets, "val": d.val_jets, "test": d.test_jets}
    grid = {k: GridCounts() for k in ("train", "val", "test")}
    arrays = {k: read_split(files[k], d.n_constituents, caps[k], d.format, grid[k]) for k in ("train", "val", "test")}
    for k, (_, y) in arrays.items():
        check_split(k, files[k], y)
    desc = {"source": "simulated" if simulated else "files", "path": os.fspath(path),
            "files": {k: os.fspath(v) for k, v in files.items()}, "n_constituents": d.n_constituents,
            "beams": d.beams, "format": d.format}
    if d.format == "l1":  # out-of-range candidates, saturated as the firmware does (reported by fit)
        desc["l1_grid"] = {k: c.as_dict() for k, c in grid.items()}
        desc["l1_grid_summary"] = GridCounts().add(grid["train"]).add(grid["val"]).add(grid["test"]).describe()
    for k, (p4, y) in arrays.items():
        desc[f"{k}_jets"] = int(len(y))
        desc[f"{k}_signal_fraction"] = round(float(np.mean(y)), 4) if len(y) else None
    if simulated:
        desc["simulated_jets"] = recipe.simulated_jets()
        desc["simulation_seed"] = d.seed
        desc["detector"] = d.detector
        desc["matching"] = d.matching
        desc["mpi"] = d.mpi
    return Splits(arrays["train"], arrays["val"], arrays["test"], desc)
