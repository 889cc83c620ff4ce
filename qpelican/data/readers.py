"""Streaming readers for the top-tagging datasets (docs/physics.md, section 9), h5py only.

Two layouts are detected automatically:

(a) pandas "fixed" table, key "table" (the original reference files): a group with
    block{k}_items (column names) and block{k}_values (rows, columns of block k; pandas stores
    blocks transposed, attribute `transposed`), axis0 (all column names) and axis1 (row index).
    Columns E_i, PX_i, PY_i, PZ_i (i < 200), truthE..truthPZ, ttv, is_signal_new.
(b) converted: "Pmu" (jets, M, 4) (E, px, py, pz), "is_signal" (jets,), optional "Nobj", "truth_Pmu".

Output of every read: p4 float32 (B, N, 4) with the N highest-pT constituents, sorted by pT
descending, zero-padded; labels int8 (B,) in {0, 1}.

Jets without any constituent are skipped (they carry no information and break per-jet
normalisation); their count is kept in `Dataset.skipped_empty` and a warning line is printed.
Everything else that is wrong (missing key, wrong shape, not HDF5, NaN/inf, negative energy,
labels not 0/1) raises DataError naming the file, the key and what was expected.
"""
from __future__ import annotations

import os
import re
import sys

import h5py
import numpy as np

try:  # registers extra HDF5 compression filters (blosc, lz4, ...) when installed
    import hdf5plugin  # noqa: F401
except ImportError:
    pass

from qpelican.core.errors import DataError
from qpelican.core.inputs import check_momenta, fit_constituents

DEFAULT_CHUNK = 16384
_PANDAS_COL = re.compile(r"^(E|PX|PY|PZ)_(\d+)$")
SPLIT_ALIASES = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}


def _warn(msg):
    print(f"warning: {msg}", file=sys.stderr)


def _decode(names):
    return [n.decode() if isinstance(n, bytes) else str(n) for n in np.asarray(names).tolist()]


class Dataset:
    """One HDF5 file of jets. Rows are read lazily, `chunk_size` jets at a time.

    Attributes: path, layout ("pandas" | "converted"), n_jets (rows in the file, before
    skipping empty jets), n_constituents (N of the output), skipped_empty (empty jets skipped
    by reads so far).
    """

    def __init__(self, path, n_constituents=80):
        self.path = os.fspath(path)
        self.n_constituents = int(n_constituents)
        if self.n_constituents < 1:
            raise DataError(f"n_constituents={n_constituents}: expected a positive number of constituents")
        self.skipped_empty = 0
        if not os.path.exists(self.path):
            raise DataError(f"{self.path}: file not found; pass an HDF5 file or a directory with train/val/test.h5")
        if os.path.isdir(self.path):
            raise DataError(f"{self.path}: is a directory; pass an HDF5 file of jets, or give the directory "
                            "where a command takes one (train.h5, val.h5, test.h5)")
        if not h5py.is_hdf5(self.path):
            raise DataError(f"{self.path}: not an HDF5 file; expected a top-tagging .h5 file "
                            "(pandas table under key 'table' or converted datasets 'Pmu' + 'is_signal')")
        with self._open() as f:
            try:
                self._init_layout(f)
            except (OSError, KeyError, ValueError, RuntimeError) as exc:  # damaged metadata
                raise DataError(damaged(self.path, exc)) from None

    def _init_layout(self, f):
        if "Pmu" in f:
            self._init_converted(f)
        elif "table" in f:
            self._init_pandas(f)
        else:
            raise DataError(f"{self.path}: found keys {sorted(f.keys())}; expected 'Pmu' (converted layout) "
                            "or 'table' (pandas layout of the top-tagging reference dataset)")

    def _open(self):
        """The file opened read-only; a damaged or truncated file is a DataError naming the fix."""
        try:
            return h5py.File(self.path, "r")
        except OSError as exc:
            raise DataError(damaged(self.path, exc)) from None

    # -- layout detection ---------------------------------------------------------------
    def _init_converted(self, f):
        self.layout = "converted"
        pmu = f["Pmu"]
        if not isinstance(pmu, h5py.Dataset) or pmu.ndim != 3 or pmu.shape[-1] != 4:
            raise DataError(f"{self.path}: key 'Pmu' has shape {getattr(pmu, 'shape', None)}; "
                            "expected (jets, constituents, 4) with (E, px, py, pz)")
        label_key = next((k for k in ("is_signal", "label", "labels") if k in f), None)
        if label_key is None:
            raise DataError(f"{self.path}: key 'is_signal' missing; expected a (jets,) array of 0/1 labels "
                            "next to 'Pmu'")
        lab = f[label_key]
        if lab.ndim != 1 or lab.shape[0] != pmu.shape[0]:
            raise DataError(f"{self.path}: key '{label_key}' has shape {lab.shape}; expected ({pmu.shape[0]},) "
                            "to match 'Pmu'")
        self.n_jets = int(pmu.shape[0])
        self.max_constituents = int(pmu.shape[1])
        self._label_key = label_key

    def _init_pandas(self, f):
        self.layout = "pandas"
        g = f["table"]
        if not isinstance(g, h5py.Group) or "block0_values" not in g:
            raise DataError(f"{self.path}: key 'table' is not a pandas fixed-format frame (no 'table/block0_values'); "
                            "expected the reference dataset's pandas table or the converted layout")
        where = {}  # column name -> (block, column within block)
        self._blocks = []
        n_rows = None
        k = 0
        while f"block{k}_values" in g:
            vals, items = g[f"block{k}_values"], g.get(f"block{k}_items")
            if items is None or vals.ndim != 2:
                raise DataError(f"{self.path}: key 'table/block{k}_values' has shape {vals.shape} without items; "
                                "expected a 2-d pandas block with 'block{k}_items'")
            names = _decode(items[()])
            # pandas writes blocks as (rows, columns) with attr transposed=True; decide by shape,
            # falling back to the attribute only when the block is square
            if vals.shape[1] == len(names) and vals.shape[0] != len(names):
                transposed = True
            elif vals.shape[0] == len(names) and vals.shape[1] != len(names):
                transposed = False
            elif vals.shape[1] == len(names):
                try:
                    transposed = bool(vals.attrs.get("transposed", True))
                except Exception:  # an attribute type h5py cannot decode
                    transposed = True
            else:
                raise DataError(f"{self.path}: key 'table/block{k}_values' has shape {vals.shape} but "
                                f"'block{k}_items' names {len(names)} columns; expected (rows, {len(names)})")
            rows = vals.shape[0] if transposed else vals.shape[1]
            if n_rows is not None and rows != n_rows:
                raise DataError(f"{self.path}: pandas blocks disagree on the number of rows ({rows} vs {n_rows})")
            n_rows = rows
            for c, name in enumerate(names):
                where[name] = (k, c)
            self._blocks.append((f"table/block{k}_values", transposed))
            k += 1
        idx = {}
        for name in where:
            m = _PANDAS_COL.match(name)
            if m:
                idx.setdefault(int(m.group(2)), {})[m.group(1)] = where[name]
        n_const = 0
        while n_const in idx and len(idx[n_const]) == 4:
            n_const += 1
        if n_const == 0:
            raise DataError(f"{self.path}: key 'table' has no columns E_0, PX_0, PY_0, PZ_0; expected the "
                            "reference dataset's columns E_i, PX_i, PY_i, PZ_i")
        label = "is_signal_new" if "is_signal_new" in where else ("is_signal" if "is_signal" in where else None)
        if label is None:
            raise DataError(f"{self.path}: key 'table' has no column 'is_signal_new'; expected the 0/1 label "
                            "column of the reference dataset")
        # momentum columns: (block, col) for i < n_const in (E, PX, PY, PZ) order
        self._mom_cols = [idx[i][c] for i in range(n_const) for c in ("E", "PX", "PY", "PZ")]
        self._label_col = where[label]
        self._label_key = f"table/{label}"
        self.n_jets = int(n_rows)
        self.max_constituents = n_const

    def __repr__(self):
        return (f"Dataset({self.path!r}, layout={self.layout}, n_jets={self.n_jets}, "
                f"n_constituents={self.n_constituents})")

    def __len__(self):
        return self.n_jets

    # -- raw access ---------------------------------------------------------------------
    def _raw(self, f, a, b):
        """Rows [a, b): raw momenta (b-a, M, 4) and labels, unvalidated."""
        if self.layout == "converted":
            return f["Pmu"][a:b], f[self._label_key][a:b]
        blocks = {}
        needed = {blk for blk, _ in self._mom_cols} | {self._label_col[0]}
        for k in needed:
            key, transposed = self._blocks[k]
            ds = f[key]
            blocks[k] = ds[a:b] if transposed else ds[:, a:b].T
        p4 = np.empty((b - a, len(self._mom_cols)), dtype=np.float32)
        for k in sorted({blk for blk, _ in self._mom_cols}):
            sel = [i for i, (blk, _) in enumerate(self._mom_cols) if blk == k]
            cols = [self._mom_cols[i][1] for i in sel]
            if sel == list(range(sel[0], sel[0] + len(sel))) and cols == list(range(cols[0], cols[0] + len(cols))):
                p4[:, sel[0]:sel[0] + len(sel)] = blocks[k][:, cols[0]:cols[0] + len(cols)]  # contiguous: no gather
            else:
                p4[:, sel] = blocks[k][:, cols]
        labels = blocks[self._label_col[0]][:, self._label_col[1]]
        return p4.reshape(b - a, -1, 4), labels

    def _labels(self, raw, a, b):
        lab = np.asarray(raw)
        if lab.dtype.kind == "f":
            bad = ~np.isin(lab, (0.0, 1.0))
        elif lab.dtype.kind in "iub":
            bad = ~np.isin(lab, (0, 1))
        else:
            raise DataError(f"{self.path}: key '{self._label_key}' has dtype {lab.dtype}; expected 0/1 numbers")
        if bad.any():
            i = int(np.nonzero(bad)[0][0])
            raise DataError(f"{self.path}: key '{self._label_key}' row {a + i} has label {lab[i].item()!r}; "
                            "expected 0 (background) or 1 (signal)")
        return lab.astype(np.int8)

    def _prepare(self, raw_p4, raw_lab, a, b):
        """Validate and shape one slice; returns (p4 (B', N, 4) float32, labels int8, n skipped)."""
        src = f"{self.path}: key '{'Pmu' if self.layout == 'converted' else 'table'}' rows {a}-{b - 1}"
        p4 = check_momenta(raw_p4, src)  # NaN/inf, negative E -> DataError with the row
        labels = self._labels(raw_lab, a, b)
        nonempty = (p4[..., 0] > 0).any(axis=1)
        skipped = int((~nonempty).sum())
        if skipped:
            p4, labels = p4[nonempty], labels[nonempty]
        n = self.n_constituents
        pt2 = p4[..., 1] ** 2 + p4[..., 2] ** 2
        if np.all(pt2[:, 1:] <= pt2[:, :-1]):  # already pT-ordered (the usual case): slice, no sort
            if p4.shape[1] >= n:
                p4 = np.ascontiguousarray(p4[:, :n])
            else:
                p4 = np.concatenate([p4, np.zeros((p4.shape[0], n - p4.shape[1], 4), np.float32)], axis=1)
        else:
            p4 = fit_constituents(p4, n, src)
        return p4, labels, skipped

    def _count_skipped(self, k):
        if k:
            self.skipped_empty += k
            _warn(f"{self.path}: skipped {k} empty jet(s) (no constituents)")

    # -- public API ---------------------------------------------------------------------
    def _range(self, start, stop):
        start = int(start or 0)
        stop = self.n_jets if stop is None else min(int(stop), self.n_jets)
        if start < 0 or start > stop:
            raise DataError(f"{self.path}: row range [{start}, {stop}) is outside the file's {self.n_jets} jets")
        return start, stop

    def iter_chunks(self, chunk_size=DEFAULT_CHUNK, start=0, stop=None):
        """Yield (p4 float32 (B, N, 4), labels int8 (B,)) for consecutive slices of `chunk_size` rows.

        Memory is one chunk, independent of the file size. Empty jets are dropped (counted).
        """
        start, stop = self._range(start, stop)
        with self._open() as f:
            for a in range(start, stop, int(chunk_size)):
                b = min(a + int(chunk_size), stop)
                try:
                    raw = self._raw(f, a, b)
                except (OSError, KeyError, ValueError) as exc:  # truncated file, missing filter (blosc), ...
                    raise DataError(f"{self.path}: cannot read rows {a}-{b - 1} ({exc}); the file is truncated or "
                                    "damaged (copy or regenerate it), or it uses a compression filter such as "
                                    "blosc that this h5py lacks (`pip install hdf5plugin` and retry)") from None
                p4, labels, k = self._prepare(*raw, a, b)
                self._count_skipped(k)
                if len(labels):
                    yield p4, labels

    def read(self, start=0, stop=None, chunk_size=DEFAULT_CHUNK):
        """Read rows [start, stop) into memory: (p4 (B, N, 4) float32, labels (B,) int8)."""
        start, stop = self._range(start, stop)
        p4 = np.empty((stop - start, self.n_constituents, 4), np.float32)
        labels = np.empty(stop - start, np.int8)
        i = 0
        for cp4, clab in self.iter_chunks(chunk_size, start, stop):
            p4[i:i + len(clab)] = cp4
            labels[i:i + len(clab)] = clab
            i += len(clab)
        return p4[:i], labels[:i]

    def labels(self, start=0, stop=None):
        """Labels of rows [start, stop) without reading momenta (empty jets not removed)."""
        start, stop = self._range(start, stop)
        with self._open() as f:
            try:
                if self.layout == "converted":
                    raw = f[self._label_key][start:stop]
                else:
                    key, transposed = self._blocks[self._label_col[0]]
                    ds = f[key]
                    raw = ds[start:stop, self._label_col[1]] if transposed else ds[self._label_col[1], start:stop]
            except (OSError, KeyError, ValueError) as exc:
                raise DataError(damaged(self.path, exc)) from None
        return self._labels(raw, start, stop)


def damaged(path, exc):
    """The message for an HDF5 file that h5py cannot read (truncated download, interrupted copy)."""
    return (f"{path}: cannot be read as HDF5 ({str(exc).strip() or type(exc).__name__}); the file is truncated "
            "or damaged, e.g. by an interrupted download or copy. Copy or download it again, or regenerate it "
            "with `qpelican data simulate`.")


def open_dataset(path, n_constituents=80):
    """Open one HDF5 file of either layout; see `Dataset`."""
    return Dataset(path, n_constituents)


def resolve_splits(path):
    """Map a user's data argument to {"train": path|None, "val": path|None, "test": path|None}.

    Accepts a directory (train.h5, val.h5 or valid.h5, test.h5), a single file (assigned by its
    name; an unrecognised name counts as "test"), a list/tuple of files (assigned by name, else
    in train, val, test order) or a dict with those keys.
    """
    out = {"train": None, "val": None, "test": None}
    if isinstance(path, dict):
        for k, v in path.items():
            key = _split_of(k)
            if key is None:
                raise DataError(f"data split {k!r}: expected one of train, val (valid), test")
            out[key] = None if v is None else _existing(v)
        return out
    if isinstance(path, (list, tuple)):
        files = [_existing(p) for p in path]
        named = [_split_of(os.path.splitext(os.path.basename(p))[0]) for p in files]
        if all(n is not None for n in named) and len(set(named)) == len(named):
            return {**out, **dict(zip(named, files))}
        if len(files) > 3:
            raise DataError(f"{len(files)} data files given; expected at most 3 (train, val, test)")
        return {**out, **dict(zip(("train", "val", "test"), files))}
    p = os.fspath(path)
    if os.path.isdir(p):
        for split, names in SPLIT_ALIASES.items():
            for name in names:
                for ext in (".h5", ".hdf5"):
                    cand = os.path.join(p, name + ext)
                    if os.path.isfile(cand) and out[split] is None:
                        out[split] = cand
        if not any(out.values()):
            raise DataError(f"{p}: directory has no train.h5, val.h5 (or valid.h5) or test.h5; "
                            "point at such a directory or at the files themselves")
        return out
    p = _existing(p)
    out[_split_of(os.path.splitext(os.path.basename(p))[0]) or "test"] = p
    return out


def evaluation_file(path, warn=None):
    """The file to evaluate a model on, for a user's data argument: a file is used as given; of a
    directory the test split, else the validation split (said through ``warn``), never the
    training split (metrics on training jets would overstate the model)."""
    if not isinstance(path, (str, os.PathLike)) or not os.path.isdir(os.fspath(path)):
        files = resolve_splits(path)
        return next(v for v in (files["test"], files["val"], files["train"]) if v)
    files = resolve_splits(path)
    if files["test"]:
        return files["test"]
    if files["val"]:
        (warn or _warn)(f"{os.fspath(path)} has no test.h5; using the validation split {files['val']}")
        return files["val"]
    raise DataError(f"{os.fspath(path)}: the directory has no test.h5 (or val.h5), only {files['train']}; "
                    "metrics on training jets would overstate the model. Pass a test file or a directory "
                    "with test.h5 (or name the training file itself if that is really what you want).")


def _split_of(name):
    name = str(name).lower()
    for split, names in SPLIT_ALIASES.items():
        if name in names:
            return split
    return None


def _existing(p):
    p = os.fspath(p)
    if not os.path.isfile(p):
        raise DataError(f"{p}: file not found; expected an HDF5 file of jets (train/val/test.h5)")
    return p
