"""Readers: both layouts round-trip, truncation/padding, chunking, bad input, split resolution, inspect CLI."""
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from qpelican.config.recipe import load_recipe
from qpelican.data.readers import open_dataset, resolve_splits
from qpelican.core.errors import DataError
from qpelican.training.splits import load_splits

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------ helpers writing test files

def random_jets(n_jets, m, rng, min_mult=1, shuffle_order=True):
    """Massless jets with random multiplicities in [min_mult, m], zero-padded to m.

    With shuffle_order the stored constituents are NOT pT-sorted (the readers must sort)."""
    p4 = np.zeros((n_jets, m, 4), np.float32)
    mult = rng.integers(min_mult, m + 1, n_jets)
    for j, k in enumerate(mult):
        p3 = rng.normal(0, 20, (k, 3)).astype(np.float32)
        p3[:, 0] += 300.0
        e = np.linalg.norm(p3.astype(np.float64), axis=1)
        rows = np.concatenate([e[:, None], p3], axis=1)
        if not shuffle_order:
            rows = rows[np.argsort(-(rows[:, 1] ** 2 + rows[:, 2] ** 2), kind="stable")]
        p4[j, :k] = rows
    labels = rng.integers(0, 2, n_jets).astype(np.int8)
    return p4, labels, mult


def expected_top_n(p4, n):
    """Reference: per jet, sort real constituents by pT descending, keep n, zero-pad."""
    out = np.zeros((len(p4), n, 4), np.float32)
    for j, jet in enumerate(p4):
        real = jet[jet[:, 0] > 0]
        real = real[np.argsort(-(real[:, 1].astype(np.float64) ** 2 + real[:, 2].astype(np.float64) ** 2),
                               kind="stable")][:n]
        out[j, :len(real)] = real
    return out


def write_converted(path, p4, labels, **extra):
    with h5py.File(path, "w") as f:
        f["Pmu"] = p4
        f["Nobj"] = (p4[..., 0] > 0).sum(1).astype(np.int16)
        f["is_signal"] = labels
        f["truth_Pmu"] = np.zeros((len(p4), 4), np.float32)
        for k, v in extra.items():
            f[k] = v


def write_pandas_fixed(path, p4, labels, column_order=None, single_block=False):
    """The HDF5 structure pandas `DataFrame.to_hdf(key="table", format="fixed")` writes:
    group /table (attrs pandas_type='frame', ndim=2, nblocks), axis0 = column names,
    axis1 = row index, block{k}_items = names of block k, block{k}_values = (rows, cols of block k),
    stored transposed (attr transposed=True). Float columns in one block, int columns in another."""
    n_jets, m = p4.shape[:2]
    mom_cols = [f"{c}_{i}" for i in range(m) for c in ("E", "PX", "PY", "PZ")]
    cols = mom_cols + ["truthE", "truthPX", "truthPY", "truthPZ", "ttv", "is_signal_new"]
    flat = p4.reshape(n_jets, 4 * m)
    data = {c: flat[:, i] for i, c in enumerate(mom_cols)}
    for c in ("truthE", "truthPX", "truthPY", "truthPZ"):
        data[c] = np.zeros(n_jets, np.float32)
    data["ttv"] = np.zeros(n_jets, np.int64)
    data["is_signal_new"] = labels.astype(np.int64)
    float_cols = [c for c in cols if data[c].dtype.kind == "f"]
    int_cols = [c for c in cols if data[c].dtype.kind != "f"]
    if column_order is not None:
        float_cols = [float_cols[i] for i in column_order(len(float_cols))]
    blocks = [float_cols + int_cols] if single_block else [float_cols, int_cols]
    with h5py.File(path, "w") as f:
        g = f.create_group("table")
        for k, v in {"pandas_type": b"frame", "pandas_version": b"0.15.2", "encoding": b"UTF-8",
                     "errors": b"strict", "ndim": 2, "nblocks": len(blocks)}.items():
            g.attrs[k] = v
        g["axis0"] = np.array(cols, dtype="S")
        g["axis0"].attrs["kind"] = b"string"
        g["axis1"] = np.arange(n_jets, dtype=np.int64)
        g["axis1"].attrs["kind"] = b"integer"
        for k, names in enumerate(blocks):
            dtype = np.float64 if single_block else data[names[0]].dtype
            g[f"block{k}_items"] = np.array(names, dtype="S")
            g[f"block{k}_values"] = np.stack([data[c].astype(dtype) for c in names], axis=1)
            g[f"block{k}_values"].attrs["transposed"] = True
    return cols


# ------------------------------------------------------------------ round trips

@pytest.mark.parametrize("layout", ["converted", "pandas"])
def test_round_trip_truncates_to_highest_pt(tmp_path, layout):
    rng = np.random.default_rng(1)
    p4, labels, mult = random_jets(57, 30, rng)
    path = str(tmp_path / "jets.h5")
    if layout == "converted":
        write_converted(path, p4, labels)
    else:
        write_pandas_fixed(path, p4, labels)
    ds = open_dataset(path, n_constituents=12)
    assert ds.layout == layout and ds.n_jets == 57 and ds.max_constituents == 30
    got, lab = ds.read()
    assert got.dtype == np.float32 and got.shape == (57, 12, 4)
    np.testing.assert_array_equal(lab, labels)
    np.testing.assert_allclose(got, expected_top_n(p4, 12), rtol=0, atol=0)
    # multiplicities above N were cut to N, the others kept and zero-padded
    np.testing.assert_array_equal((got[..., 0] > 0).sum(1), np.minimum(mult, 12))


def test_pandas_layout_806_columns_mixed_blocks_and_order(tmp_path):
    rng = np.random.default_rng(2)
    p4, labels, _ = random_jets(20, 200, rng, min_mult=150, shuffle_order=False)
    path = str(tmp_path / "ref.h5")
    cols = write_pandas_fixed(path, p4, labels, column_order=lambda k: rng.permutation(k))
    assert len(cols) == 806
    got, lab = open_dataset(path, n_constituents=80).read()
    np.testing.assert_array_equal(got, expected_top_n(p4, 80))
    np.testing.assert_array_equal(lab, labels)
    single = str(tmp_path / "single.h5")
    write_pandas_fixed(single, p4, labels, single_block=True)
    got2, lab2 = open_dataset(single, n_constituents=80).read()
    np.testing.assert_array_equal(got2, got)
    np.testing.assert_array_equal(lab2, labels)


@pytest.mark.parametrize("layout", ["converted", "pandas"])
def test_padding_when_n_exceeds_stored(tmp_path, layout):
    rng = np.random.default_rng(3)
    p4, labels, mult = random_jets(9, 6, rng, shuffle_order=False)
    path = str(tmp_path / "small.h5")
    (write_converted if layout == "converted" else write_pandas_fixed)(path, p4, labels)
    got, _ = open_dataset(path, n_constituents=10).read()
    assert got.shape == (9, 10, 4)
    np.testing.assert_array_equal(got[:, :6], p4)
    assert not got[:, 6:].any()


@pytest.mark.parametrize("layout", ["converted", "pandas"])
def test_chunks_equal_full_read_and_slices(tmp_path, layout):
    rng = np.random.default_rng(4)
    p4, labels, _ = random_jets(103, 25, rng)
    path = str(tmp_path / "c.h5")
    (write_converted if layout == "converted" else write_pandas_fixed)(path, p4, labels)
    ds = open_dataset(path, n_constituents=16)
    full_p4, full_y = ds.read()
    chunks = list(ds.iter_chunks(chunk_size=10))
    assert [len(y) for _, y in chunks] == [10] * 10 + [3]
    np.testing.assert_array_equal(np.concatenate([c[0] for c in chunks]), full_p4)
    np.testing.assert_array_equal(np.concatenate([c[1] for c in chunks]), full_y)
    part, party = ds.read(start=17, stop=45)
    np.testing.assert_array_equal(part, full_p4[17:45])
    np.testing.assert_array_equal(party, full_y[17:45])
    np.testing.assert_array_equal(ds.labels(), labels)


def test_empty_jets_are_skipped_and_counted(tmp_path, capsys):
    rng = np.random.default_rng(5)
    p4, labels, _ = random_jets(30, 10, rng)
    p4[[3, 11, 29]] = 0.0
    path = str(tmp_path / "empty.h5")
    write_converted(path, p4, labels)
    ds = open_dataset(path, n_constituents=10)
    got, lab = ds.read(chunk_size=8)
    keep = np.setdiff1d(np.arange(30), [3, 11, 29])
    assert ds.skipped_empty == 3 and len(got) == 27
    np.testing.assert_array_equal(lab, labels[keep])
    np.testing.assert_array_equal(got, expected_top_n(p4[keep], 10))
    err = capsys.readouterr().err
    assert "skipped" in err and "empty jet" in err


# ------------------------------------------------------------------ bad input

def _good(tmp_path, name="bad.h5", m=8, n=10):
    rng = np.random.default_rng(6)
    p4, labels, _ = random_jets(n, m, rng)
    return str(tmp_path / name), p4, labels


def _expect(path, *words, n=8):
    with pytest.raises(DataError) as exc:
        ds = open_dataset(path, n_constituents=n)
        ds.read()
    msg = str(exc.value)
    assert os.path.basename(path) in msg
    for w in words:
        assert w in msg, msg
    assert "\n" not in msg


def test_not_hdf5(tmp_path):
    path = tmp_path / "notes.h5"
    path.write_text("this is not HDF5\n")
    _expect(str(path), "not an HDF5 file")


def test_missing_file(tmp_path):
    _expect(str(tmp_path / "nope.h5"), "not found")


def test_missing_keys(tmp_path):
    path, p4, labels = _good(tmp_path)
    with h5py.File(path, "w") as f:
        f["jets"] = p4
    _expect(path, "'Pmu'", "'table'", "jets")
    with h5py.File(path, "w") as f:
        f["Pmu"] = p4
    _expect(path, "'is_signal'")


def test_wrong_shapes(tmp_path):
    path, p4, labels = _good(tmp_path)
    write_converted(path, p4[..., :3].copy(), labels)
    _expect(path, "'Pmu'", "shape", "(jets, constituents, 4)")
    write_converted(path, p4, labels[:-1])
    _expect(path, "'is_signal'", "shape")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("layout", ["converted", "pandas"])
def test_non_finite_momenta(tmp_path, bad, layout):
    path, p4, labels = _good(tmp_path)
    p4[4, 0, 2] = bad
    (write_converted if layout == "converted" else write_pandas_fixed)(path, p4, labels)
    _expect(path, "NaN or inf", "rows 0-9", "'Pmu'" if layout == "converted" else "'table'")


def test_negative_energy(tmp_path):
    path, p4, labels = _good(tmp_path)
    p4[2, 1, 0] = -5.0
    write_converted(path, p4, labels)
    _expect(path, "negative energy")


@pytest.mark.parametrize("layout", ["converted", "pandas"])
def test_labels_not_binary(tmp_path, layout):
    path, p4, labels = _good(tmp_path)
    labels = labels.astype(np.int8)
    labels[7] = 2
    (write_converted if layout == "converted" else write_pandas_fixed)(path, p4, labels)
    _expect(path, "row 7", "label 2", "expected 0 (background) or 1 (signal)",
            "'is_signal'" if layout == "converted" else "is_signal_new")


def test_pandas_table_without_label_or_momenta(tmp_path):
    path, p4, labels = _good(tmp_path)
    with h5py.File(path, "w") as f:
        g = f.create_group("table")
        g["block0_items"] = np.array(["a", "b"], dtype="S")
        g["block0_values"] = np.zeros((4, 2))
    _expect(path, "E_0")


# ------------------------------------------------------------------ splits

def test_resolve_splits(tmp_path):
    rng = np.random.default_rng(7)
    p4, labels, _ = random_jets(5, 4, rng)
    for name in ("train", "valid", "test"):
        write_converted(str(tmp_path / f"{name}.h5"), p4, labels)
    s = resolve_splits(str(tmp_path))
    assert s == {"train": str(tmp_path / "train.h5"), "val": str(tmp_path / "valid.h5"),
                 "test": str(tmp_path / "test.h5")}
    files = [str(tmp_path / "test.h5"), str(tmp_path / "train.h5")]
    assert resolve_splits(files) == {"train": files[1], "val": None, "test": files[0]}
    assert resolve_splits(str(tmp_path / "train.h5"))["train"] == str(tmp_path / "train.h5")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="train.h5"):
        resolve_splits(str(empty))
    with pytest.raises(DataError, match="not found"):
        resolve_splits([str(tmp_path / "missing.h5")])


# ------------------------------------------------------------------ inspect

def _cli(*args):
    return subprocess.run([sys.executable, "-m", "qpelican.cli.main", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=120)


def test_inspect_summary_and_cli(tmp_path):
    from qpelican.data.inspect import summarize

    rng = np.random.default_rng(8)
    p4, labels, mult = random_jets(40, 20, rng)
    path = str(tmp_path / "test.h5")
    write_pandas_fixed(path, p4, labels)
    s = summarize(path)
    assert s["jets"] == 40 and s["layout"] == "pandas"
    assert s["signal_fraction"] == pytest.approx(labels.mean())
    assert s["classes"]["signal"]["multiplicity_mean"] == pytest.approx(mult[labels == 1].mean())

    png = tmp_path / "out" / "inspect.png"
    r = _cli("data", "inspect", path, "--png", str(png))
    assert r.returncode == 0, r.stderr
    assert "signal" in r.stdout and "jet mass" in r.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    bad = tmp_path / "bad.h5"
    bad.write_text("nope")
    r = _cli("data", "inspect", str(bad))
    assert r.returncode == 2
    err = " ".join(r.stderr.split())  # rich wraps long lines
    assert "not an HDF5 file" in err and "bad.h5" in err and "Traceback" not in err


def test_recipe_sample_size_never_caps_a_dataset(sim_dir):
    """A recipe's data.jets (the simulated sample's size) does not cap the jets of a dataset
    given by path; data.train_jets (--jets with --data) does."""
    rec = load_recipe(os.path.join(REPO, "recipes", "c2_8bit.yaml")).with_overrides(sets=["data.jets=100"])
    with h5py.File(sim_dir / "train.h5") as f:
        n_file = len(f["is_signal"])
    assert len(load_splits(rec, sim_dir, progress=False).train[1]) == n_file > 100
    capped = rec.with_overrides(data=sim_dir, jets=300)
    assert len(load_splits(capped, progress=False).train[1]) == 300
