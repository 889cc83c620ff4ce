"""`qpelican explain`: the analytic formula (paper eq. 1) reproduces the model; 9C+1 parameters."""
import numpy as np
import pytest

from qpelican.cli.main import main
from qpelican.nn.models import retie

N = 24
Q8 = {"input": "quantized_bits(16,7,alpha=1)", "invariants": "quantized_bits(16,9,alpha=1)",
      "coefficients": "quantized_bits(8,1,alpha=1)", "biases": "quantized_bits(8,3,alpha=1)",
      "activation": "quantized_relu(8,3)", "aggregates": "quantized_bits(16,5,alpha=1)",
      "output": "quantized_bits(16,6,alpha=1)"}


@pytest.fixture(scope="module")
def jets(sim_dir):
    from qpelican.data.readers import open_dataset

    p4, _ = open_dataset(str(sim_dir / "test.h5"), N).read(0, 60)
    return p4


def _model(seed=0, **cfg):
    from qpelican.nn.models import build_model

    model = build_model(dict(dict(channels=2, n_constituents=N, scale=8.0), **cfg))
    rng = np.random.default_rng(seed)
    ws = []
    for v in model.weights:  # weights that keep both ReLU regimes busy on real jets
        w = rng.uniform(-1.0, 1.0, v.shape) * (0.3 if len(v.shape) == 1 else 0.6)
        if "moving_variance" in v.name or "gamma" in v.name:
            w = 0.5 + np.abs(w)
        ws.append(w.astype(np.float32))
    model.set_weights(ws)
    return retie(model)  # model.symmetric: tied slices stay tied


@pytest.mark.parametrize("cfg", [
    {},
    {"quantization": Q8},
    {"alpha": True, "quantization": Q8},
    {"channels": 3, "aggregation": "mean", "alpha": True},
    {"beams": True, "quantization": Q8},
    {"batchnorm": True},
    {"batchnorm": True, "alpha": True, "quantization": Q8},
    {"symmetric": True, "alpha": True, "quantization": Q8},
], ids=["float", "8bit", "alpha-8bit", "c3-mean-alpha", "beams-8bit", "batchnorm", "batchnorm-folded-8bit",
        "symmetric-alpha-8bit"])
def test_formula_reproduces_model(cfg, jets):
    from qpelican.analysis.explain import explain_model

    model = _model(**cfg)
    lines = []
    check = explain_model(model, jets, log=lines.append)
    text = "\n".join(lines)
    C = cfg.get("channels", 2)
    assert check["ok"], text
    tied = C if cfg.get("symmetric") else 0  # S_i and S_j share one coefficient per channel
    assert check["effective_parameters"]["effective"] == 9 * C + 1 - tied + (3 if cfg.get("batchnorm") else 0)
    assert check["max_abs_logit"] > 0.01  # a non-trivial model: the check means something
    if "quantization" in cfg:
        assert check["max_abs_diff_formula_vs_model"] == 0.0 and check["jets_differing"] == 0
    else:
        assert check["max_abs_diff_formula_vs_model"] < 1e-4 * max(1.0, check["max_abs_logit"])
    assert "Σ_ij ReLU(z1_ij)" in text
    if cfg.get("symmetric"):
        assert f"{9 * C + 1} trained (9C+1) -> {8 * C + 1} effective" in text
    elif not cfg.get("batchnorm"):
        assert f"{10 * C + 1} trained (10C+1) -> {9 * C + 1} effective" in text
    else:
        assert "22 effective" in text and "BatchNorm" in text  # 9C+4 for C=2 (paper section 3)
    if cfg.get("batchnorm") and "quantization" in cfg:
        assert "β1(n)" in text and "tabulated over the multiplicity n" in text
    if cfg.get("alpha"):
        assert check["effective_parameters"]["alpha"] == (6 if cfg.get("symmetric") else 7)


def test_canonical_form_has_unit_total_sum_weights(jets):
    from qpelican.analysis.explain import canonical, formula_logits, nano_parts

    p = nano_parts(_model(3))
    cp, lam, dead = canonical(p)
    assert np.all(lam > 0) and not dead.any()
    np.testing.assert_allclose(np.abs(cp["v"][:, 0]), 1.0)
    np.testing.assert_allclose(formula_logits(cp, jets, rounding=False), formula_logits(p, jets, rounding=False),
                               rtol=1e-12, atol=1e-12)


def test_check_detects_a_wrong_formula(jets):
    """The comparison can fail: a perturbed coefficient or the real-valued formula of a quantized model differ."""
    from qpelican.analysis.explain import formula_logits, nano_parts
    from qpelican.nn.models import predict

    model = _model(quantization=Q8)
    keras = predict(model, jets)
    p = nano_parts(model)
    assert np.array_equal(formula_logits(p, jets), keras)
    p["c"] = p["c"].copy()
    p["c"][0, 2] += 2.0**-6
    assert not np.array_equal(formula_logits(p, jets), keras)


def test_explain_cli(tmp_path, sim_dir, capsys):
    model = _model(quantization=Q8)
    path = tmp_path / "model.keras"
    model.save(str(path))
    code = 0
    try:
        main(["explain", str(path), "--data", str(sim_dir), "--jets", "50"])
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr().out
    assert code in (0, None)
    assert "19 effective" in out and "OK" in out and "w = " in out


def test_explain_rejects_full_pelican(tmp_path, capsys):
    from qpelican.nn.models import build_model

    path = tmp_path / "p.keras"
    build_model({"architecture": "pelican", "n_constituents": N}).save(str(path))
    with pytest.raises(SystemExit) as exc:
        main(["explain", str(path), "--jets", "5"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "nanoPELICAN" in err and "Traceback" not in err
