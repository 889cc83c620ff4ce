"""`qpelican tune`: search space, Pareto front, CLI end to end, budget, resume, bad sections, distributed.

The searches are tiny (a few trials, the session's simulated jets, 20 constituents, 1 epoch): they
test the plumbing (Keras Tuner oracle, run_trial, outputs), not the tagger's quality.
"""
import json
import os
import socket
import subprocess
import sys
import time

import pytest
import yaml

import qpelican  # noqa: F401
from qpelican.cli.main import main
from qpelican.core.errors import RecipeError
from qpelican.tune.search import tune

Q8 = {"input": "quantized_bits(16,7,alpha=1)", "invariants": "quantized_bits(16,9,alpha=1)",
      "coefficients": "quantized_bits(8,1,alpha=1)", "biases": "quantized_bits(8,3,alpha=1)",
      "activation": "quantized_relu(8,3)", "aggregates": "quantized_bits(10,3,alpha=1)",
      "output": "quantized_bits(16,6,alpha=1)"}


def _recipe(tmp_path, sim_dir, name="tiny", search=None, epochs=3):
    d = {"data": {"path": str(sim_dir), "n_constituents": 20}, "model": {"channels": 2},
         "quantization": dict(Q8), "training": {"epochs": epochs, "batch_size": 64, "schedule": "constant"}}
    if search is not None:
        d["search"] = search
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def _run(argv, capsys=None):
    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = exc.code
    return rc or 0


# ------------------------------------------------------------------------------ unit level
def test_default_space_and_variant(tmp_path):
    from qpelican.config.recipe import recipe_from_dict
    from qpelican.tune.space import search_space, variant

    r = recipe_from_dict({"quantization": dict(Q8), "search": {"coefficients": {"bits": [2, 6], "integer": [0, 3]},
                                                               "biases": "fixed", "channels": [1, 3]}})
    space = search_space(r)
    assert space["tensors"]["input"]["bits"] == (8, 16) and space["tensors"]["input"]["integer"] == (5, 7)
    assert space["tensors"]["coefficients"]["bits"] == (2, 6)
    assert space["tensors"]["biases"] is None
    assert space["tensors"]["activation"]["kind"] == "relu" and not space["tensors"]["activation"]["signed"]
    assert space["channels"] == [1, 3]
    # signed integer bits that do not fit are clipped to bits - 1; the relu activation keeps its range
    rec, widths = variant(r, space, {"coefficients_bits": 2, "coefficients_integer": 3, "activation_bits": 2,
                                     "activation_integer": 4, "channels": 3}, epochs=1)
    assert widths["coefficients"] == [2, 1]
    assert rec.quantization.coefficients == "quantized_bits(2,1,alpha=1)"
    assert widths["activation"] == [2, 4] and rec.quantization.activation == "quantized_relu(2,4)"
    assert rec.quantization.biases == Q8["biases"] and widths["biases"] == [8, 3]
    assert rec.model.channels == 3 and rec.training.epochs == 1 and rec.search is None


def test_pareto_front():
    from qpelican.tune.front import pareto_front

    rows = [{"trial_id": str(i), "status": s, "val_auc": a, "cost": b} for i, (s, a, b) in enumerate([
        ("completed", 0.90, 100), ("completed", 0.92, 200), ("completed", 0.91, 300), ("completed", 0.95, 400),
        ("over_budget", None, 50), ("failed", None, None), ("completed", 0.89, 150)])]
    assert [r["trial_id"] for r in pareto_front(rows)] == ["0", "1", "3"]


@pytest.mark.parametrize("section, words", [
    ({"coefficient": {"bits": [2, 8]}}, ["search.coefficient", "allowed keys", "coefficients"]),
    ({"coefficients": {"bits": [8, 2]}}, ["search.coefficients.bits", "min <= max"]),
    ({"coefficients": {"bits": [2, 8], "frac": 3}}, ["search.coefficients.frac", "bits, integer"]),
    ({"coefficients": {"bits": [2, 4], "integer": [5, 6]}}, ["search.coefficients", "integer"]),
    ({"coefficients": "8 bits"}, ["search.coefficients", "fixed"]),
    ({"channels": [0, 2]}, ["search.channels", "between 1 and 64"]),
    ("all", ["search must be a mapping"]),
])
def test_bad_search_section_messages(section, words):
    from qpelican.config.recipe import recipe_from_dict

    with pytest.raises(RecipeError) as err:
        recipe_from_dict({"quantization": dict(Q8), "search": section})
    for w in words:
        assert w in str(err.value), str(err.value)


def test_bad_search_section_cli_exit_2(tmp_path, sim_dir):
    path = _recipe(tmp_path, sim_dir, search={"coefficients": {"bits": [1, 40]}})
    p = subprocess.run([sys.executable, "-m", "qpelican.cli.main", "tune", str(path), "--out", str(tmp_path / "t")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert "search.coefficients.bits" in p.stderr and "2 <= min <= max <= 32" in p.stderr
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "t" / "kt").exists()


# ------------------------------------------------------------------------------ end to end
def test_tune_cli_end_to_end(tmp_path, sim_dir):
    from qpelican.config.recipe import load_recipe

    path = _recipe(tmp_path, sim_dir, search={"biases": "fixed", "coefficients": {"bits": [3, 8]}})
    out = tmp_path / "tune"
    rc = _run(["tune", str(path), "--out", str(out), "--trials", "3", "--epochs", "1", "--seed", "3"])
    assert rc == 0
    rows = json.loads((out / "trials.json").read_text())
    assert len(rows) == 3 and all(r["status"] == "completed" for r in rows)
    for r in rows:
        for k in ("val_auc", "val_accuracy", "val_rej30", "test_auc", "test_rej30", "bops"):
            assert r[k] is not None, k
        assert 3 <= r["widths"]["coefficients"][0] <= 8 and r["widths"]["biases"] == [8, 3]
        assert r["epochs"] == 1 and r["tuner_id"] == "tuner0"
    csv_lines = (out / "trials.csv").read_text().strip().splitlines()
    assert len(csv_lines) == 4 and csv_lines[0].startswith("trial_id,status")
    # different widths -> different cost, from the one cost model
    assert len({r["bops"] for r in rows}) > 1
    summary = json.loads((out / "pareto.json").read_text())
    front = summary["front"]
    assert front and summary["trials"] == {"completed": 3}
    assert [p["bops"] for p in front] == sorted(p["bops"] for p in front)
    assert all(b["val_auc"] > a["val_auc"] for a, b in zip(front, front[1:]))
    assert (out / "pareto.png").stat().st_size > 5000
    for p in front:
        rec = load_recipe(out / p["recipe"])
        assert rec.search is None and rec.training.epochs == 3  # the recipe's epochs, not the search's
        assert rec.quantization.coefficients == p["quantization"]["coefficients"]
    assert len(list((out / "pareto").glob("point_*.yaml"))) == len(front)
    # a front point is a ready-to-run recipe for `qpelican fit`
    assert _run(["fit", str(out / front[0]["recipe"]), "--out", str(tmp_path / "fit"), "--epochs", "1"]) == 0
    fitted = json.loads((tmp_path / "fit" / "results.json").read_text())
    assert fitted["bops"] == front[0]["bops"]
    # a second search into the same directory must be explicit
    assert _run(["tune", str(path), "--out", str(out), "--trials", "3", "--epochs", "1"]) == 2


def test_budget_trials_are_not_trained(tmp_path, sim_dir, capsys):
    path = _recipe(tmp_path, sim_dir)
    out = tmp_path / "tune"
    rc = _run(["tune", str(path), "--out", str(out), "--trials", "2", "--epochs", "1", "--max-cost", "1000"])
    assert rc == 0
    rows = json.loads((out / "trials.json").read_text())
    assert [r["status"] for r in rows] == ["over_budget", "over_budget"]
    assert all(r["score"] < -1 and r["bops"] > 1000 and r["val_auc"] is None for r in rows)
    assert not any((out / "kt" / f"trial_{r['trial_id']}" / "run").exists() for r in rows)
    assert json.loads((out / "pareto.json").read_text())["front"] == []


def test_lut_cost_axis(tmp_path, sim_dir):
    """--cost luts: each trained trial costs the da4ml LUT estimate of its own trained model (DSP48E2 products apart), and the
    front, its table and pareto.json follow that axis."""
    from qpelican.nn.serialize import load_model
    from qpelican.rtl.exporter import rtl_estimate

    path = _recipe(tmp_path, sim_dir)
    d = yaml.safe_load(path.read_text())
    d["data"]["n_constituents"] = 8
    path.write_text(yaml.safe_dump(d))
    out = tmp_path / "luts"
    assert _run(["tune", str(path), "--out", str(out), "--trials", "2", "--epochs", "1", "--cost", "luts"]) == 0
    rows = [r for r in json.loads((out / "trials.json").read_text()) if r["status"] == "completed"]
    assert rows and all(r["cost"] > 0 and r["cost"] != r["bops"] for r in rows)
    for r in rows:
        model = load_model(out / "kt" / f"trial_{r['trial_id']}" / "run" / "model.keras")
        assert {"luts": r["cost"], "dsps": r["dsps"]} == rtl_estimate(model)
    pareto = json.loads((out / "pareto.json").read_text())
    assert pareto["cost"] == "luts" and pareto["cost_unit"] == "LUTs"
    assert [p["cost"] for p in pareto["front"]] == sorted(p["cost"] for p in pareto["front"])
    # a search keeps its axis: resuming it on another axis is refused
    assert _run(["tune", str(path), "--out", str(out), "--trials", "2", "--epochs", "1", "--resume"]) == 2


def test_unknown_cost_axis_exit_2(tmp_path, sim_dir):
    path = _recipe(tmp_path, sim_dir)
    assert _run(["tune", str(path), "--out", str(tmp_path / "x"), "--cost", "watts"]) == 2


@pytest.mark.parametrize("oracle", ["bayesian", "hyperband"])
def test_other_oracles(tmp_path, sim_dir, oracle):
    path = _recipe(tmp_path, sim_dir)
    out = tmp_path / oracle
    rc = _run(["tune", str(path), "--out", str(out), "--trials", "2", "--epochs", "2", "--oracle", oracle,
               "--cost-weight", "0"])
    assert rc == 0
    rows = json.loads((out / "trials.json").read_text())
    assert 1 <= len(rows) <= 2 and all(r["status"] == "completed" for r in rows)
    # --cost-weight 0: the objective is the validation AUC itself
    assert all(abs(r["score"] - r["val_auc"]) < 1e-9 for r in rows)
    if oracle == "hyperband":
        assert all(r["hyperparameters"]["tuner/epochs"] == r["epochs"] <= 2 for r in rows)
    oracle_state = json.loads((out / "kt" / "oracle.json").read_text())
    assert len(oracle_state["end_order"]) == len(rows)


def test_resume_does_not_repeat_finished_trials(tmp_path, sim_dir, monkeypatch):
    path = _recipe(tmp_path, sim_dir)
    out = tmp_path / "tune"
    argv = ["tune", str(path), "--out", str(out), "--trials", "3", "--epochs", "1"]
    def stop_after_one(finished):
        raise KeyboardInterrupt(f"stopped after {finished} trial(s)")

    with pytest.raises(KeyboardInterrupt):  # as Ctrl-C after the first trial
        tune(str(path), out, trials=3, epochs=1, on_trial_end=stop_after_one, log=lambda *a, **k: None)
    kt = out / "kt"
    finished = sorted(p.parent.name for p in kt.glob("trial_*/qpelican.json"))
    assert finished == ["trial_0"]
    stamps = {(name, f): (kt / name / f).stat().st_mtime_ns for name in finished
              for f in ("qpelican.json", "run/model.keras")}
    assert _run(argv + ["--resume"]) == 0
    rows = json.loads((out / "trials.json").read_text())
    assert sorted(r["trial_id"] for r in rows) == ["0", "1", "2"]
    assert all(r["status"] == "completed" for r in rows)
    # the finished trial was not run again
    assert {(name, f): (kt / name / f).stat().st_mtime_ns for name in finished
            for f in ("qpelican.json", "run/model.keras")} == stamps
    oracle = json.loads((kt / "oracle.json").read_text())
    assert sorted(oracle["end_order"]) == ["0", "1", "2"] and len(oracle["end_order"]) == 3
    # resuming a finished search runs nothing new
    assert _run(argv + ["--resume"]) == 0
    assert (kt / "trial_0" / "run" / "model.keras").stat().st_mtime_ns == stamps[("trial_0", "run/model.keras")]
    assert len(json.loads((out / "trials.json").read_text())) == 3


# ------------------------------------------------------------------------------ distributed
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_distributed_chief_and_workers(tmp_path, sim_dir):
    """Keras Tuner's chief/worker mode on 127.0.0.1: the chief serves the oracle (and writes the
    outputs), the workers run trials; every worker must contribute at least one trial."""
    path = _recipe(tmp_path, sim_dir)
    out = tmp_path / "dist"
    port = _free_port()
    cmd = [sys.executable, "-m", "qpelican.cli.main", "tune", str(path), "--out", str(out), "--trials", "4",
           "--epochs", "1"]
    procs = {}
    base_env = dict(os.environ, KERASTUNER_ORACLE_IP="127.0.0.1", KERASTUNER_ORACLE_PORT=str(port))
    t0 = time.time()
    for tid in ("chief", "tuner0", "tuner1"):
        log = open(tmp_path / f"{tid}.log", "w")
        procs[tid] = (subprocess.Popen(cmd, env=dict(base_env, KERASTUNER_TUNER_ID=tid), stdout=log,
                                       stderr=subprocess.STDOUT), log)
    try:
        for tid, (p, log) in procs.items():
            p.wait(timeout=max(1, 200 - (time.time() - t0)))
    finally:
        for tid, (p, log) in procs.items():
            if p.poll() is None:
                p.kill()
            log.close()
    logs = {tid: (tmp_path / f"{tid}.log").read_text() for tid in procs}
    for tid, (p, _) in procs.items():
        assert p.returncode == 0, f"{tid} exited {p.returncode}:\n{logs[tid][-3000:]}"
    rows = json.loads((out / "trials.json").read_text())
    assert len(rows) == 4 and all(r["status"] == "completed" for r in rows)
    by = {}
    for r in rows:
        by.setdefault(r["tuner_id"], []).append(r["trial_id"])
    assert set(by) == {"tuner0", "tuner1"}, by
    assert "serving the Keras Tuner oracle" in logs["chief"] and "Pareto front" in logs["chief"]
    assert (out / "pareto.json").exists()
