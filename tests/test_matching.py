"""Signal matching of the simulator (contained | top), recorded in the files and recipes; seed statistics
of `fit --seeds 3`; `tune --retrain-seeds` (front points retrained with K seeds, figures in pareto.json)."""
import json

import h5py
import numpy as np
import pytest
import yaml

from qpelican.cli.main import main
from qpelican.config.recipe import recipe_from_dict
from qpelican.core.errors import DataError, RecipeError
from qpelican.data import simulate as sim
from qpelican.data.baseline import jet_mass
from qpelican.data.inspect import render_table, summarize

JETS = 400  # 200 top jets per matching: the mean masses differ by far more than their errors


def _signal_masses(d):
    out = []
    for s in ("train", "val", "test"):
        with h5py.File(d / f"{s}.h5", "r") as f:
            y = f["is_signal"][()] == 1
            out.append(jet_mass(f["Pmu"][()][y].astype(np.float64)))
    return np.concatenate(out)


@pytest.fixture(scope="module")
def matched(tmp_path_factory):
    root = tmp_path_factory.mktemp("matching")
    dirs = {}
    for m in ("contained", "top"):
        dirs[m] = root / m
        sim.simulate(JETS, str(dirs[m]), seed=11, workers=2, progress=False, matching=m)
    return dirs


def test_contained_jets_are_heavier_than_top_matched(matched):
    m_con, m_top = _signal_masses(matched["contained"]), _signal_masses(matched["top"])
    assert len(m_con) == len(m_top) == JETS // 2
    # contained: the whole top decay is in the jet, the mass peaks at m_t; top-matched jets often
    # miss a decay quark (W or b outside R = 0.8) and lose mass
    assert m_con.mean() > m_top.mean() + 5.0
    assert np.mean(m_top < 140) > np.mean(m_con < 140)
    # the QCD jets do not depend on the matching (same seeds, same chunks)
    with h5py.File(matched["contained"] / "train.h5") as a, h5py.File(matched["top"] / "train.h5") as b:
        ya, yb = a["is_signal"][()] == 0, b["is_signal"][()] == 0
        assert np.array_equal(np.sort(jet_mass(a["Pmu"][()][ya])), np.sort(jet_mass(b["Pmu"][()][yb])))


def test_files_and_inspect_record_the_matching(matched):
    for m, d in matched.items():
        for s in ("train", "val", "test"):
            with h5py.File(d / f"{s}.h5", "r") as f:
                assert f.attrs["matching"] == m and not f.attrs["mpi"]
                assert json.loads(f.attrs["config"])["matching"] == m
        summ = summarize(str(d / "test.h5"))
        assert summ["simulation"] == {"seed": 11, "detector": "none", "matching": m, "mpi": False}
        from rich.console import Console

        con = Console(record=True, width=200)
        con.print(render_table(summ))
        assert f"matching {m}, MPI off" in " ".join(con.export_text().split())


def test_matching_is_cached_apart_and_validated(tmp_path, monkeypatch):
    made = []
    monkeypatch.setattr(sim, "simulate", lambda n, out, **kw: made.append((out, kw)))
    root = str(tmp_path)
    assert sim.default_sample(100, seed=3, cache_dir=root) == f"{root}/sim-100-3"  # unchanged: old caches stay valid
    assert sim.default_sample(100, seed=3, cache_dir=root, matching="top") == f"{root}/sim-100-3-top"
    assert sim.default_sample(100, seed=3, cache_dir=root, matching="top", mpi=True) == f"{root}/sim-100-3-top-mpi"
    assert [(kw["matching"], kw["mpi"]) for _, kw in made] == [("contained", False), ("top", False), ("top", True)]
    # the chunk tag of the default matching is the one from before the option (finished chunks stay valid)
    base = sim.GenConfig()
    assert sim._tag(100, 3, base) != sim._tag(100, 3, sim.GenConfig(matching="top"))
    with pytest.raises(DataError, match="matching 'all': expected one of contained, top"):
        sim.GenConfig(matching="all")
    assert recipe_from_dict({}).data.matching == "contained" and recipe_from_dict({}).data.mpi is False
    r = recipe_from_dict({"data": {"matching": "top", "mpi": True}})
    assert (r.data.matching, r.data.mpi) == ("top", True)
    with pytest.raises(RecipeError, match=r"data\.matching.*'contained' or 'top'"):
        recipe_from_dict({"data": {"matching": "partial"}})


def test_cli_simulate_matching_help():
    from typer.testing import CliRunner

    from qpelican.cli.main import app

    res = CliRunner().invoke(app, ["data", "simulate", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "--matching" in res.output and "contained" in res.output


# ----------------------------------------------------------------------------- seed statistics
def _run(argv):
    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = exc.code
    return rc or 0


def test_fit_three_seeds_reports_mean_std_and_best(tmp_path, sim_dir, capsys):
    d = {"data": {"path": str(sim_dir), "n_constituents": 16},
         "model": {"channels": 2}, "training": {"epochs": 1, "batch_size": 128}}
    recipe = tmp_path / "three.yaml"
    recipe.write_text(yaml.safe_dump(d))
    assert _run(["fit", str(recipe), "--out", str(tmp_path / "run"), "--seeds", "3"]) == 0
    out = capsys.readouterr().out
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    seeds = res["seeds"]
    assert [m["seed"] for m in seeds] == [0, 1, 2]
    best = min(seeds, key=lambda m: m["val_loss"])  # selection by validation loss, not by test AUC
    ss = res["seeds_summary"]
    assert ss["n_seeds"] == 3 and ss["best_seed"] == best["seed"] == res["seed"]
    for k in ("auc", "accuracy"):
        vals = [m[k] for m in seeds]
        assert ss[k]["mean"] == pytest.approx(np.mean(vals))
        assert ss[k]["std"] == pytest.approx(np.std(vals))
        assert ss[k]["best"] == best[k] == res[k]
    assert "3 seeds" in out and "mean±std" in out  # the printed table (its label may wrap)


def test_tune_retrain_seeds_writes_spread_into_pareto(tmp_path, sim_dir):
    d = {"data": {"path": str(sim_dir), "n_constituents": 12}, "model": {"channels": 1},
         "quantization": {"coefficients": "quantized_bits(8,1,alpha=1)", "biases": "quantized_bits(8,3,alpha=1)"},
         "training": {"epochs": 1, "batch_size": 128, "schedule": "constant"},
         "search": {"biases": "fixed", "coefficients": {"bits": [4, 8]}}}
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(d))
    out = tmp_path / "tune"
    assert _run(["tune", str(recipe), "--out", str(out), "--trials", "2", "--epochs", "1"]) == 0
    front = json.loads((out / "pareto.json").read_text())["front"]
    assert front and all("retrain" not in p for p in front)
    # a finished search: --resume --retrain-seeds K trains every front point with K seeds
    assert _run(["tune", str(recipe), "--out", str(out), "--trials", "2", "--epochs", "1", "--resume",
                 "--retrain-seeds", "2"]) == 0
    front = json.loads((out / "pareto.json").read_text())["front"]
    for p in front:
        rt = p["retrain"]
        res = json.loads((out / rt["run"] / "results.json").read_text())
        aucs = [m["auc"] for m in res["seeds"]]
        assert rt["seeds"] == 2 and len(aucs) == 2 and rt["epochs"] == 1
        assert rt["auc"]["mean"] == pytest.approx(np.mean(aucs)) and rt["auc"]["std"] == pytest.approx(np.std(aucs))
        assert rt["auc"]["best"] == res["auc"] and rt["best_seed"] == res["seed"]
        assert res["bops"] == p["bops"]
    # the figures survive a rewrite of the outputs (another --resume)
    assert _run(["tune", str(recipe), "--out", str(out), "--trials", "2", "--epochs", "1", "--resume"]) == 0
    assert all("retrain" in p for p in json.loads((out / "pareto.json").read_text())["front"])
