"""`qpelican fit / evaluate` end to end on a few hundred simulated jets, resume, CLI errors."""
import json

import numpy as np
import pytest
import yaml

import qpelican
from qpelican.cli.main import main

Q8 = {"input": "quantized_bits(16,7,alpha=1)", "invariants": "quantized_bits(16,9,alpha=1)",
      "coefficients": "quantized_bits(8,1,alpha=1)", "biases": "quantized_bits(8,3,alpha=1)",
      "activation": "quantized_relu(8,3)", "aggregates": "quantized_bits(16,5,alpha=1)",
      "output": "quantized_bits(16,6,alpha=1)"}

RESULT_KEYS = {"accuracy", "auc", "rej30", "rej50", "loss", "n_params", "bops", "seed", "timing", "baseline",
               "data", "seeds", "val_loss", "best_epoch"}


def _recipe(tmp_path, sim_dir, name="tiny", **over):
    d = {"data": {"path": str(sim_dir), "n_constituents": 24},
         "model": {"channels": 2, "dropout": 0.05},
         "training": {"epochs": 2, "batch_size": 128}}
    for k, v in over.items():
        d.setdefault(k, {})
        if isinstance(v, dict):
            d[k].update(v)
        else:
            d[k] = v
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(d))
    return str(p)


def _run(argv, capsys):
    """Run the CLI in-process; return (exit code, stdout, stderr)."""
    code = 0
    try:
        main(argv)
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_fit_end_to_end_two_seeds_and_evaluate(tmp_path, sim_dir, capsys):
    recipe = _recipe(tmp_path, sim_dir, model={"batchnorm": True})
    run = tmp_path / "run"
    code, out, err = _run(["fit", recipe, "--out", str(run), "--seeds", "2"], capsys)
    assert code == 0, err
    assert "epoch   2/2" in out and "baseline" in out
    for f in ("recipe.yaml", "model.keras", "results.json", "roc.png"):
        assert (run / f).exists(), f
    res = json.loads((run / "results.json").read_text())
    assert RESULT_KEYS <= set(res)
    assert len(res["seeds"]) == 2 and res["seeds_summary"]["n_seeds"] == 2
    assert res["seed"] == min(res["seeds"], key=lambda m: m["val_loss"])["seed"]
    aucs = [m["auc"] for m in res["seeds"]]
    assert res["seeds_summary"]["auc"]["mean"] == pytest.approx(np.mean(aucs))
    assert res["seeds_summary"]["auc"]["std"] == pytest.approx(np.std(aucs))
    assert 0.0 <= res["auc"] <= 1.0 and 0.0 <= res["baseline"]["auc"] <= 1.0
    # the window is one function of the mass: never better than the likelihood ratio by more than noise
    assert res["baseline_window"]["method"].startswith("mass window") and res["baseline_window"]["auc"] <= res["baseline"]["auc"] + 0.02
    assert res["n_params"] == 21 and res["bops"] > 0
    assert res["data"]["test_jets"] == res["test_jets"] > 0
    assert res["timing"]["train_seconds"] > 0 and res["timing"]["jets_per_second"] > 0
    for seed in (0, 1):
        sd = run / "seeds" / str(seed)
        for f in ("model.keras", "history.json", "results.json", "state.json"):
            assert (sd / f).exists(), f
        hist = json.loads((sd / "history.json").read_text())
        assert [h["epoch"] for h in hist] == [1, 2]
    # recipe as run: after overrides, loadable
    as_run = yaml.safe_load((run / "recipe.yaml").read_text())
    assert as_run["seeds"] == 2 and as_run["model"]["nbar"] == 49.0
    from qpelican.config.recipe import load_recipe

    load_recipe(str(run / "recipe.yaml"))
    # the saved model is loadable by plain tf-keras and reproduces the reported test AUC via `evaluate`
    import tf_keras

    model = tf_keras.models.load_model(str(run / "model.keras"), custom_objects=qpelican.custom_objects(),
                                       compile=False)
    assert model.count_params() > 0
    ev = tmp_path / "ev.json"
    code, out, err = _run(["evaluate", str(run), str(sim_dir), "--out", str(ev)], capsys)
    assert code == 0, err
    e = json.loads(ev.read_text())
    assert {"accuracy", "auc", "rej30", "rej50", "loss", "jets"} <= set(e)
    assert e["auc"] == pytest.approx(res["auc"], abs=1e-6) and e["jets"] == res["test_jets"]
    assert "AUC" in out
    # rerunning into a finished run without --resume refuses (no earlier result is lost)
    code, out, err = _run(["fit", recipe, "--out", str(run)], capsys)
    assert code == 2 and "--resume" in err and "Traceback" not in err


@pytest.mark.parametrize("jit", [False, True])
def test_resume_gives_same_weights(tmp_path, sim_dir, capsys, monkeypatch, jit):
    """float pre-training (1 epoch) + QAT (2 epochs) with dropout; interrupted after epoch 2 (across the
    phase change) and resumed: same final weights as an uninterrupted run. With XLA (the TensorFlow
    side of the step and the optimizer compiled, as in runs of 500 steps or more) and without."""
    from qpelican.config.recipe import load_recipe
    from qpelican.training.train import fit_recipe, load_splits, train_one

    recipe = _recipe(tmp_path, sim_dir, quantization=Q8,
                     training={"qat": "finetune", "pretrain_epochs": 1, "epochs": 2, "jit_compile": jit})
    r = load_recipe(recipe)
    ref, _ = train_one(r, load_splits(r), 0, str(tmp_path / "ref"), progress=False)
    run = tmp_path / "run"

    def stop_after_two(row):  # as Ctrl-C right after epoch 2 was committed
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit_recipe(r, run, progress=False, on_epoch=stop_after_two)
    state = json.loads((run / "seeds" / "0" / "state.json").read_text())
    assert state["epochs_done"] == 2 and not (run / "model.keras").exists()
    # a run written before a model key existed (here model.symmetric) resumes with the key at its default
    written = yaml.safe_load((run / "recipe.yaml").read_text())
    assert written["model"].pop("symmetric") is False
    (run / "recipe.yaml").write_text(yaml.safe_dump(written, sort_keys=False))
    code, out, err = _run(["fit", recipe, "--out", str(run), "--resume"], capsys)
    assert code == 0, err
    assert "epoch   3/3 [qat]" in out and "epoch   1/3" not in out
    got = qpelican.load_model(str(run / "model.keras"))
    for a, b in zip(ref.get_weights(), got.get_weights()):
        np.testing.assert_array_equal(a, b)
    hist = json.loads((run / "seeds" / "0" / "history.json").read_text())
    assert [h["phase"] for h in hist] == ["float", "qat", "qat"]
    # resuming with a different recipe is refused
    code, out, err = _run(["fit", recipe, "--out", str(run), "--resume", "--epochs", "5"], capsys)
    assert code == 2 and "training.epochs" in err


@pytest.mark.parametrize("text, needle", [
    ("model:\n  channels: [2\n", "not valid YAML"),
    ("model: {chanels: 2}\n", "model.chanels"),
    ("training: {epochs: many}\n", "training.epochs"),
    ("quantization: {activation: 'quantized_relu(8,'}\n", "quantization.activation"),
])
def test_cli_recipe_errors(tmp_path, capsys, text, needle):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    code, out, err = _run(["fit", str(p), "--out", str(tmp_path / "run")], capsys)
    assert code == 2
    assert needle in err and "Traceback" not in err + out
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv,match", [
    (["fit", "recipes/c2_float.yaml", "--jets", "abc"], "Invalid value for '--jets'"),
    (["fit"], "Missing argument"),
    (["fit", "recipes/c2_float.yaml", "--set", "model.dropout"], "SECTION.KEY=VALUE"),
    (["no-such-command"], "No such command"),
])
def test_usage_errors_exit_2_without_traceback(argv, match, capsys):
    code, out, err = _run(argv, capsys)
    assert code == 2 and match in out + err and "Traceback" not in out + err


def test_starts_keep_the_best_initialisation(tmp_path, sim_dir, capsys):
    """training.starts 3, start_epochs 1: each start trains 1 float epoch, the one of lowest validation
    loss trains on, and ends with exactly the weights of a plain run of its seed. Interrupted during the
    second start and resumed, the run reaches the same choice and weights."""
    from qpelican.config.recipe import load_recipe
    from qpelican.training.train import fit_recipe, load_splits, start_seed, train_one

    recipe = _recipe(tmp_path, sim_dir, quantization=Q8, model={"batchnorm": True, "dropout": 0.0},
                     training={"qat": "finetune", "pretrain_epochs": 2, "epochs": 1, "starts": 3, "start_epochs": 1,
                               "jit_compile": False})  # 8 short trainings: compiling each would dominate
    r = load_recipe(recipe)
    run = tmp_path / "run"
    seen = []

    def stop_in_second_start(row):
        seen.append(row["seed"])
        if row["seed"] == start_seed(0, 1):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit_recipe(r, run, progress=False, on_epoch=stop_in_second_start)
    assert seen == [0, start_seed(0, 1)] and not (run / "seeds" / "0" / "starts" / "chosen.json").exists()
    code, out, err = _run(["fit", recipe, "--out", str(run), "--resume"], capsys)
    assert code == 0, err
    assert "start 2 of starts 0-2" in out
    chosen = json.loads((run / "seeds" / "0" / "starts" / "chosen.json").read_text())
    losses = [s["val_loss"] for s in chosen["starts"]]
    assert len(losses) == 3 and len(set(losses)) == 3, "the starts should differ"
    k = chosen["start"]
    assert losses[k] == min(losses) and f"start {k} continues" in out
    res = json.loads((run / "results.json").read_text())
    assert res["seed"] == 0 and res["seeds"][0]["start"] == k and res["seeds"][0]["start_seed"] == start_seed(0, k)
    hist = json.loads((run / "seeds" / "0" / "history.json").read_text())
    assert [h["phase"] for h in hist] == ["float", "float", "qat"] and hist[0]["val_loss"] == losses[k]
    plain = r.model_copy(update={"training": r.training.model_copy(update={"starts": 1, "start_epochs": 0})})
    ref, _ = train_one(plain, load_splits(plain), start_seed(0, k), str(tmp_path / "ref"), progress=False)
    got = qpelican.load_model(str(run / "model.keras"))
    for a, b in zip(ref.get_weights(), got.get_weights()):
        np.testing.assert_array_equal(a, b)
    # starts without start_epochs: a short error naming both keys
    bad = _recipe(tmp_path, sim_dir, name="bad", training={"starts": 2})
    code, out, err = _run(["fit", bad, "--out", str(tmp_path / "bad")], capsys)
    assert code == 2 and "start_epochs" in err and "Traceback" not in err
