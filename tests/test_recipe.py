"""Recipe validation, recipe files, the paper LR schedule."""
import glob
import os

import pytest
import yaml

import qpelican  # noqa: F401
from qpelican.core.errors import RecipeError
from qpelican.config.recipe import load_recipe, recipe_from_dict

ROOT = os.path.join(os.path.dirname(__file__), "..")
RECIPES = sorted(glob.glob(os.path.join(ROOT, "recipes", "*.yaml")))


def _write(tmp_path, text, name="r.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_recipe_files_exist():
    names = {os.path.basename(p)[:-5] for p in RECIPES}
    for c in (1, 2, 3, 10):
        assert f"c{c}_float" in names and f"c{c}_8bit" in names
    for n in ("c2_alpha_float", "c2_alpha_8bit", "c2_6bit", "c2_4bit", "pelican_float"):
        assert n in names


@pytest.mark.parametrize("path", RECIPES, ids=[os.path.basename(p) for p in RECIPES])
def test_recipe_files_load_and_build(path):
    from qpelican.nn.models import build_model, count_parameters

    r = load_recipe(path)
    assert r.name == os.path.basename(path)[:-5]
    cfg = r.to_model_config()
    model = build_model(cfg)
    if r.model.architecture == "nano":
        assert count_parameters(model) == 10 * r.model.channels + 1
    # the recipe as run (resolved) loads back to the same recipe
    again = recipe_from_dict(yaml.safe_load(yaml.safe_dump(r.to_dict(resolved=True))))
    assert again.resolved_model_config() == r.resolved_model_config()
    assert again.training == r.training and again.quantization == r.quantization


def test_flagship_is_8bit():
    r = load_recipe(os.path.join(ROOT, "recipes", "c2_8bit.yaml"))
    from qpelican.nn.quant import fixed_format

    for k in ("coefficients", "biases", "activation"):
        assert fixed_format(getattr(r.quantization, k)).bits == 8
    assert r.model.channels == 2 and r.quantized


def test_model_config_only_set_keys():
    from qpelican.config.model import DEFAULTS

    r = recipe_from_dict({"model": {"channels": 3}})
    cfg = r.to_model_config()
    assert cfg["channels"] == 3 and "nbar" not in cfg  # defaults come from models.DEFAULTS
    assert r.resolved_model_config()["nbar"] == DEFAULTS["nbar"]
    assert all(v is None for v in cfg["quantization"].values())


@pytest.mark.parametrize("text, needles", [
    ("model: {chanels: 2}\n", ["model.chanels", "channels", "aggregation"]),
    ("modle: {}\n", ["'modle'", "training", "quantization"]),
    ("model: {channels: two}\n", ["model.channels", "integer"]),
    ("training: {qat: sometimes}\n", ["training.qat", "from_scratch", "finetune"]),
    ("training: {optimizer: sgd}\n", ["training.optimizer", "adamw"]),
    ("quantization: {coefficients: 'quantized_bits(8,0'}\n", ["quantization.coefficients", "quantized_bits(8,0,alpha=1)"]),
    ("quantization: {coefficients: 'quantized_bits(8,0,alpha=\"auto\")'}\n", ["quantization.coefficients", "alpha=1"]),
    ("quantization: {output: 8}\n", ["quantization.output", "quantizer string"]),
    ("model: {batchnorm: true}\nquantization: {coefficients: 'quantized_bits(8,0,alpha=1)'}\n", ["batchnorm", "finetune"]),
    ("training: {qat: finetune}\n", ["finetune", "quantizer"]),
    ("model: 5\n", ["model", "mapping"]),
    ("- a\n- b\n", ["mapping"]),
    ("seeds: 0\n", ["seeds", "greater than or equal to 1"]),
])
def test_bad_recipes(tmp_path, text, needles):
    with pytest.raises(RecipeError) as exc:
        load_recipe(_write(tmp_path, text))
    msg = str(exc.value)
    for n in needles:
        assert n in msg, msg


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(RecipeError, match="not valid YAML at line"):
        load_recipe(_write(tmp_path, "model:\n  channels: [2\n"))
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(str(tmp_path / "nope.yaml"))


def test_overrides_validate():
    r = recipe_from_dict({}).with_overrides(epochs=3, seeds=2, jets=500, data="/x")
    assert (r.training.epochs, r.seeds, r.data.train_jets, r.data.jets, r.data.path) == (3, 2, 500, None, "/x")
    assert recipe_from_dict({}).with_overrides(jets=500).data.jets == 500  # the simulated sample's size
    with pytest.raises(RecipeError, match="training.epochs"):
        recipe_from_dict({}).with_overrides(epochs=0)
    flag = load_recipe(os.path.join(ROOT, "recipes", "c2_8bit.yaml"))
    short = flag.with_overrides(epochs=4)  # QAT epochs; the float pre-training keeps its proportion
    assert short.training.epochs == 4
    assert short.training.pretrain_epochs == round(4 * flag.training.pretrain_epochs / flag.training.epochs)
    # the starts keep their share of the float pre-training (the flagship: 24 of 120 epochs)
    assert flag.training.starts > 1 and short.training.starts == flag.training.starts
    assert short.training.start_epochs == round(flag.training.start_epochs * short.training.pretrain_epochs
                                                / flag.training.pretrain_epochs)
    assert flag.with_overrides(epochs=1).training.start_epochs >= 1
    pre = flag.with_overrides(epochs=4, sets=["training.pretrain_epochs=3"])  # scaled with the named length
    assert (pre.training.pretrain_epochs, pre.training.start_epochs) == (3, 1)
    kept = flag.with_overrides(epochs=4, sets=["training.start_epochs=3"])
    assert kept.training.start_epochs == 3  # named on the command line: kept as given
    with pytest.raises(RecipeError, match="start_epochs between 1 and"):
        flag.with_overrides(sets=["training.start_epochs=121"])


def test_paper_schedule_shape():
    from qpelican.training.schedule import paper_lr

    lr, lrf = 2.5e-3, 1e-5
    f = lambda t, e=140: float(paper_lr(t, lr, e, lrf))  # noqa: E731
    assert f(0) < 0.01 * lr and abs(f(2) - lr / 2) < 1e-9 and abs(f(4) - lr) < 1e-9  # linear warm-up
    # cosine cycles of 4, 8, 16, 32, 64 epochs after the warm-up: restarts at 8, 16, 32, 64
    for start, length in ((4, 4), (8, 8), (16, 16), (32, 32), (64, 64)):
        assert abs(f(start + 1e-9) - lr) < 1e-6 * lr
        assert abs(f(start + length / 2) - (lrf + lr) / 2) < 1e-6
        assert f(start + length - 1e-6) < 1.01 * lrf
    assert abs(f(128 + 2) - lrf * 0.25) < 1e-12  # exponential decay, gamma 0.5 per epoch
    assert abs(f(140) - lrf * 0.5**12) < 1e-15
    # scaled to 70 epochs: the same shape at half the times
    for t in (1.0, 3.0, 10.0, 50.0, 66.0, 69.0):
        assert abs(f(t, 70) - f(2 * t)) < 1e-12


def test_tf_schedule_matches_numpy():
    from qpelican.training.schedule import make_schedule, paper_lr

    steps = 7
    s = make_schedule("paper", 2.5e-3, 20, steps, 1e-5)
    for step in (0, 3, 10, 30, 77, 100, 139, 140):
        assert abs(float(s(step)) - float(paper_lr(step / steps, 2.5e-3, 20, 1e-5))) < 1e-9
    assert make_schedule("constant", 1e-3, 10, 5) == 1e-3


def test_set_overrides_apply_and_fail_clearly():
    r = load_recipe("recipes/c2_8bit.yaml").with_overrides(
        sets=["model.dropout=0", "quantization.activation=quantized_relu(6,3)", "training.batch_size=256"])
    assert r.model.dropout == 0 and r.training.batch_size == 256
    s = load_recipe("recipes/c2_8bit.yaml").with_overrides(sets=["seed=3", "seeds=2"])
    assert (s.seed, s.seed_list()) == (3, [3, 4])
    assert "quantized_relu(6,3)" in str(r.quantization.activation)
    for bad, match in [("model.dropout", "SECTION.KEY=VALUE"), ("dropout=0", "SECTION.KEY=VALUE"),
                       ("seed=-1", "seed"), ("seed=[1", "not valid YAML"),
                       ("modle.dropout=0", "unknown section 'modle'"), ("model.dropuot=0", "unknown key 'model.dropuot'"),
                       ("model.channels=[1", "not valid YAML"), ("training.batch_size=big", "batch_size")]:
        with pytest.raises(RecipeError, match=match):
            load_recipe("recipes/c2_8bit.yaml").with_overrides(sets=[bad])
