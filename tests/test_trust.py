"""Trust (issue 16), through the command line: files from others run no code, nothing a user made is
destroyed, every user error is exit 2 with one message (never a traceback), no silent surprises.

Models are built and saved without training (evaluate / explain / export need a model, not a good
one); data files are written with h5py; the few `fit` runs stop at the data or model check.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import zipfile

import h5py
import numpy as np
import pytest
import yaml

import qpelican
from qpelican.cli.main import main
from qpelican.core.errors import QpelicanError
from qpelican.core.io import dir_lock

Q8 = {"input": "quantized_bits(16,7,alpha=1)", "invariants": "quantized_bits(16,9,alpha=1)",
      "coefficients": "quantized_bits(8,1,alpha=1)", "biases": "quantized_bits(8,3,alpha=1)",
      "activation": "quantized_relu(8,3)", "aggregates": "quantized_bits(16,5,alpha=1)",
      "output": "quantized_bits(16,6,alpha=1)"}
N = 16


def run_cli(argv, capsys):
    """The CLI in-process: (exit code, stdout + stderr)."""
    code = 0
    try:
        rv = main([str(a) for a in argv])
        code = rv or 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, " ".join((out.out + out.err).split())  # rich wraps long lines


def user_error(argv, capsys, *needles):
    """Assert exit 2, no traceback, and the message names each needle; return the output."""
    code, text = run_cli(argv, capsys)
    assert "Traceback" not in text, text
    assert code == 2, (code, text)
    for n in needles:
        assert n.lower() in text.lower(), (n, text)
    return text


def write_jets(path, p4, labels):
    with h5py.File(path, "w") as f:
        f["Pmu"] = np.asarray(p4, np.float32)
        f["Nobj"] = (np.asarray(p4)[..., 0] > 0).sum(1).astype(np.int16)
        f["is_signal"] = np.asarray(labels, np.int8)


def recipe_file(tmp_path, data, name="tiny", **over):
    d = {"data": {"path": str(data), "n_constituents": N}, "model": {"channels": 2},
         "training": {"epochs": 1, "batch_size": 128}}
    for k, v in over.items():
        d.setdefault(k, {}).update(v)
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory with an (untrained) 8-bit nanoPELICAN model.keras."""
    from qpelican.nn.models import build_model

    d = tmp_path_factory.mktemp("run")
    build_model({"n_constituents": N, "channels": 2, "quantization": Q8}).save(d / "model.keras")
    return d


@pytest.fixture(scope="module")
def bad_data(tmp_path_factory, sim_dir):
    """Damaged and degenerate jet files next to good ones."""
    d = tmp_path_factory.mktemp("bad")
    good = sim_dir / "test.h5"
    raw = good.read_bytes()
    (d / "truncated.h5").write_bytes(raw[: len(raw) // 3])
    rng = np.random.default_rng(0)
    write_jets(d / "empty_jets.h5", np.zeros((50, N, 4)), rng.integers(0, 2, 50))
    write_jets(d / "zero_rows.h5", np.zeros((0, N, 4)), np.zeros(0))
    with h5py.File(good, "r") as f:
        p4, y = f["Pmu"][:, :N], f["is_signal"][:]
    write_jets(d / "one_class.h5", p4[y == 1], y[y == 1])
    write_jets(d / "three.h5", p4[:3], np.array([0, 1, 0]))
    for name, train in (("trunc_ds", "truncated.h5"), ("empty_ds", "empty_jets.h5"), ("zero_ds", "zero_rows.h5"),
                        ("oneclass_ds", "one_class.h5"), ("three_ds", "three.h5")):
        (d / name).mkdir()
        shutil.copy(d / train, d / name / "train.h5")
        shutil.copy(sim_dir / "val.h5", d / name / "val.h5")
        shutil.copy(sim_dir / "test.h5", d / name / "test.h5")
    (d / "only_train").mkdir()
    shutil.copy(sim_dir / "train.h5", d / "only_train" / "train.h5")
    (d / "train_val").mkdir()
    shutil.copy(sim_dir / "train.h5", d / "train_val" / "train.h5")
    shutil.copy(sim_dir / "val.h5", d / "train_val" / "val.h5")
    return d


# ------------------------------------------------------------------ 1. no code from a model file runs
@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """Model files whose Lambda layer writes a marker file when tf-keras deserializes it."""
    import tf_keras

    d = tmp_path_factory.mktemp("hostile")
    marker = d / "PWNED"
    ns = {}
    exec(f"f = lambda x: (open({str(marker)!r}, 'w').write('code ran'), x)[1]", ns)  # the payload
    inp = tf_keras.Input((N, 4))
    model = tf_keras.Model(inp, tf_keras.layers.Lambda(ns["f"])(inp))
    marker.unlink()  # building the model ran it once; the files must not run it again
    (d / "legacy").mkdir()
    model.save(d / "legacy.h5")  # legacy HDF5: the Lambda's bytecode is marshalled into the file
    shutil.copy(d / "legacy.h5", d / "legacy" / "model.keras")  # ... under the name qpelican reads
    (d / "ziplambda").mkdir()
    model.save(d / "ziplambda" / "model.keras")  # zip .keras with a Lambda layer
    assert zipfile.is_zipfile(d / "ziplambda" / "model.keras")
    assert not marker.exists()
    return d, marker


@pytest.mark.parametrize("kind, needle", [("legacy", "legacy HDF5"), ("ziplambda", "Lambda")])
@pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")
def test_hostile_models_run_no_code(hostile, kind, needle, sim_dir, tmp_path, capsys):
    d, marker = hostile
    run = d / kind
    user_error(["evaluate", run, sim_dir], capsys, needle)
    user_error(["explain", run], capsys, needle)
    user_error(["export-hls", run, "--out", tmp_path / "fw"], capsys, needle)
    recipe = recipe_file(tmp_path, sim_dir, training={"init_from": str(run)})
    user_error(["fit", recipe, "--out", tmp_path / "r"], capsys, needle)
    assert not marker.exists(), "code from the model file ran"
    assert not (tmp_path / "fw").exists()


def test_hostile_legacy_file_is_really_hostile(hostile):
    """The check above means something: plain tf-keras runs the legacy file's code."""
    import tf_keras

    d, marker = hostile
    try:
        tf_keras.models.load_model(d / "legacy.h5", safe_mode=True)
    except Exception:
        pass
    assert marker.exists()
    marker.unlink()


def test_loader_accepts_qpelican_models_and_refuses_damaged_ones(run_dir, tmp_path, sim_dir, capsys):
    model = qpelican.load_model(run_dir / "model.keras")
    assert any(type(layer).__name__ == "LinEq2to2" for layer in model.layers)
    bad = tmp_path / "bad"
    bad.mkdir()
    raw = (run_dir / "model.keras").read_bytes()
    (bad / "model.keras").write_bytes(raw[: len(raw) // 2])  # truncated zip
    user_error(["evaluate", bad, sim_dir], capsys, "damaged")
    (bad / "model.keras").write_bytes(b"not a model at all")
    user_error(["explain", bad], capsys, "not a .keras model")
    (bad / "model.keras").write_bytes(b"")
    user_error(["export-hls", bad, "--out", tmp_path / "fw"], capsys, "empty")
    # a string QKeras would turn into a call of another function of its module
    with zipfile.ZipFile(run_dir / "model.keras") as z:
        parts = {n: z.read(n) for n in z.namelist()}
    cfg = json.loads(parts["config.json"])
    cfg["config"]["layers"][-1]["config"]["output_quantizer"] = "safe_eval('x', {})"
    parts["config.json"] = json.dumps(cfg).encode()
    with zipfile.ZipFile(bad / "model.keras", "w") as z:
        for n, data in parts.items():
            z.writestr(n, data)
    user_error(["evaluate", bad, sim_dir], capsys, "not a QKeras quantizer")


# ------------------------------------------------------------------ 2. nothing a user made is destroyed
def test_simulate_refuses_another_dataset(tmp_path, capsys):
    out = tmp_path / "data"
    out.mkdir()
    (out / "train.h5").write_bytes(b"the reference dataset")
    (out / "valid.h5").write_bytes(b"its validation split")
    user_error(["data", "simulate", "--jets", "20", "--out", out, "--workers", "1"], capsys, "--force")
    assert (out / "train.h5").read_bytes() == b"the reference dataset"
    code, text = run_cli(["data", "simulate", "--jets", "20", "--out", out, "--workers", "1", "--force"], capsys)
    assert code == 0, text
    assert h5py.is_hdf5(out / "train.h5") and not (out / "valid.h5").exists()
    # the same simulation again is no overwrite: it finds the complete files
    assert run_cli(["data", "simulate", "--jets", "20", "--out", out, "--workers", "1"], capsys)[0] == 0
    user_error(["data", "simulate", "--jets", "20", "--seed", "3", "--out", out, "--workers", "1"], capsys,
               "another --out")


def test_failed_export_keeps_the_previous_project(run_dir, sim_dir, tmp_path, capsys):
    fw = tmp_path / "fw"
    code, text = run_cli(["export-hls", run_dir, "--out", fw], capsys)
    assert code == 0, text
    (fw / "notes.txt").write_text("my synthesis notes")
    before = {p: p.read_bytes() for p in fw.rglob("*") if p.is_file()}
    user_error(["export-hls", run_dir, "--out", fw, "--verify", tmp_path / "tset.h5"], capsys, "tset.h5")
    user_error(["export-hls", run_dir, "--out", fw, "--clock", "-5"], capsys, "--clock")
    user_error(["export-hls", run_dir, "--out", fw, "--project", "my-top"], capsys, "C identifier")
    user_error(["export-hls", run_dir, "--out", fw, "--verify", sim_dir / "nope"], capsys, "nope")
    after = {p: p.read_bytes() for p in fw.rglob("*") if p.is_file()}
    assert after == before
    # a successful export replaces the project and keeps the user's file
    code, text = run_cli(["export-hls", run_dir, "--out", fw, "--reuse", "2"], capsys)
    assert code == 0, text
    assert json.loads((fw / "report.json").read_text())["settings"]["reuse"] == 2
    assert (fw / "notes.txt").read_text() == "my synthesis notes" and "notes.txt" in text
    assert str(fw) in (fw / "hls4ml_config.yml").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no build folder left behind


@pytest.mark.parametrize("cmd", ["fit", "tune", "export-hls"])
def test_directory_lock_names_the_holder(cmd, run_dir, sim_dir, tmp_path, capsys):
    out = tmp_path / "out"
    recipe = recipe_file(tmp_path, sim_dir)
    argv = {"fit": ["fit", recipe, "--out", out], "tune": ["tune", recipe, "--out", out, "--trials", "1"],
            "export-hls": ["export-hls", run_dir, "--out", out]}[cmd]
    with dir_lock(out):
        text = user_error(argv, capsys, "in use", f"pid {os.getpid()}")
    assert "command:" in text


def test_lock_of_a_killed_process_does_not_block(tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from qpelican.core.io import dir_lock
        with dir_lock({str(out)!r}):
            print("locked", flush=True)
            time.sleep(600)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(QpelicanError, match=f"pid {holder.pid}"):
            with dir_lock(out):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with dir_lock(out):  # the kernel dropped the dead process's lock
        pass


def test_resume_with_nothing_to_resume(sim_dir, tmp_path, capsys):
    recipe = recipe_file(tmp_path, sim_dir)
    user_error(["fit", recipe, "--out", tmp_path / "new", "--resume"], capsys, "no run to continue")
    user_error(["tune", recipe, "--out", tmp_path / "newt", "--resume", "--trials", "1"], capsys,
               "no search to continue")


# ------------------------------------------------------------------ 3. impossible settings
@pytest.mark.parametrize("q", ["quantized_bits(8,9)", "quantized_bits(0,0)", "quantized_bits(-4,0)",
                               "quantized_bits(8.5,2)"])
def test_impossible_quantizers_are_refused(q, sim_dir, tmp_path, capsys):
    recipe = recipe_file(tmp_path, sim_dir, quantization={**Q8, "input": q})
    user_error(["fit", recipe, "--out", tmp_path / "r"], capsys, "quantization.input")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("ds, needle", [("oneclass_ds", "both classes"), ("three_ds", "3 jets")])
def test_degenerate_training_sets_are_refused(ds, needle, bad_data, tmp_path, capsys):
    recipe = recipe_file(tmp_path, bad_data / ds)
    user_error(["fit", recipe, "--out", tmp_path / "r"], capsys, "train split", needle)
    assert not (tmp_path / "r" / "results.json").exists()


def test_set_pretrain_epochs_is_kept_with_epochs():
    from qpelican.config.recipe import load_recipe

    r = load_recipe(os.path.join(os.path.dirname(__file__), "..", "recipes", "c2_8bit.yaml"))
    assert r.with_overrides(epochs=4).training.pretrain_epochs == 24  # scaled with the QAT epochs
    r2 = r.with_overrides(epochs=4, sets=["training.pretrain_epochs=3"])
    assert (r2.training.pretrain_epochs, r2.training.epochs) == (3, 4)


# ------------------------------------------------------------------ 4. one message, never a traceback
def test_user_errors_are_one_message(run_dir, bad_data, sim_dir, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    recipe = recipe_file(tmp_path, sim_dir)
    trunc = bad_data / "truncated.h5"
    cases = [
        # truncated HDF5 in every command that reads jets
        (["fit", recipe_file(tmp_path, bad_data / "trunc_ds", name="t"), "--out", tmp_path / "r1"], "truncated"),
        (["data", "inspect", trunc], "truncated"),
        (["evaluate", run_dir, trunc], "truncated"),
        (["explain", run_dir, "--data", trunc], "truncated"),
        (["export-hls", run_dir, "--out", tmp_path / "fw1", "--verify", trunc], "truncated"),
        # all-empty and zero-row training files
        (["fit", recipe_file(tmp_path, bad_data / "empty_ds", name="e"), "--out", tmp_path / "r2"], "train split"),
        (["fit", recipe_file(tmp_path, bad_data / "zero_ds", name="z"), "--out", tmp_path / "r3"], "train split"),
        # --verify and explain on all-empty jets
        (["export-hls", run_dir, "--out", tmp_path / "fw2", "--verify", bad_data / "empty_jets.h5"], "empty"),
        (["explain", run_dir, "--data", bad_data / "empty_jets.h5"], "empty"),
        (["evaluate", run_dir, bad_data / "empty_jets.h5"], "both classes"),
        # --out that is an existing file
        (["fit", recipe, "--out", a_file], "existing file"),
        (["tune", recipe, "--out", a_file, "--trials", "1"], "existing file"),
        (["export-hls", run_dir, "--out", a_file], "existing file"),
        (["data", "simulate", "--jets", "20", "--out", a_file], "existing file"),
        (["evaluate", run_dir, sim_dir, "--out", tmp_path], "directory"),
        # a --project that is not a C identifier, a negative clock
        (["export-hls", run_dir, "--out", tmp_path / "fw3", "--project", "2fast"], "C identifier"),
        (["export-hls", run_dir, "--out", tmp_path / "fw4", "--project", "int"], "C identifier"),
        (["export-hls", run_dir, "--out", tmp_path / "fw5", "--clock", "0"], "--clock"),
    ]
    for argv, needle in cases:
        user_error(argv, capsys, needle)
    assert not any((tmp_path / f"fw{i}").exists() for i in range(1, 6))


# ------------------------------------------------------------------ 5. no silent surprises
def test_evaluate_never_uses_train_silently(run_dir, bad_data, capsys):
    user_error(["evaluate", run_dir, bad_data / "only_train"], capsys, "test.h5", "training jets")
    code, text = run_cli(["evaluate", run_dir, bad_data / "train_val", "--out", bad_data / "ev.json"], capsys)
    assert code == 0, text
    assert "no test.h5" in text and "val.h5" in text
    assert json.loads((bad_data / "ev.json").read_text())["data"]["file"].endswith("val.h5")


def test_failed_compile_shows_the_compiler_output(run_dir, sim_dir, tmp_path, capsys, monkeypatch):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "g++").write_text("#!/bin/sh\necho 'fake-g++: error: the compiler said no' >&2\nexit 1\n")
    (fake / "g++").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "fw"
    user_error(["export-hls", run_dir, "--out", out, "--verify", sim_dir / "test.h5", "--jets", "20"], capsys,
               "did not compile", "fake-g++: error: the compiler said no")
    assert not out.exists()
