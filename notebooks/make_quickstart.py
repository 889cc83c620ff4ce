"""Write notebooks/quickstart.ipynb (outputs cleared) from the cells below.

    python notebooks/make_quickstart.py

Edit the cells here, not in the .ipynb, so the notebook in git stays reviewable and output-free.
tests/test_notebook.py executes the result top to bottom.
"""
import os

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

CELLS = [
    ("md", """\
# qpelican quick start: from simulated jets to bit-exact firmware

This notebook walks the whole path of a nanoPELICAN top tagger in about five minutes on a laptop CPU
(two cores):

1. simulate a small sample of top and QCD jets (Pythia 8 + FastJet),
2. train the 21-parameter nanoPELICAN (2 hidden channels) in **float** and with **8-bit**
   quantization-aware training (QKeras),
3. compare their ROC curves with the **jet-mass baseline**,
4. run a short **bit-width search** (Keras Tuner) and look at the AUC-vs-BOPs Pareto front,
5. **export** the 8-bit model with hls4ml and check that the C simulation of the firmware
   reproduces the trained model **bit for bit**,
6. print the trained model as the paper's **analytic formula**.

Every step is one `qpelican` command (the same ones as in the README quick start) or a few lines of
Python. The sample and the epochs are tiny so that it all fits in minutes: the numbers show the
workflow, not the physics reach (drop `--epochs` and use the recipe's 40k-jet sample, or the
reference dataset, for real figures).

Files go to the current directory: `data/`, `runs/`, `fw/`. Set `QPELICAN_REPO` to the repository
root if you run the notebook from elsewhere (default: the parent of this notebook's folder)."""),
    ("code", """\
import json
import os
import time
from pathlib import Path

import qpelican  # selects tf-keras (TF_USE_LEGACY_KERAS=1) before TensorFlow is imported

REPO = Path(os.environ.get("QPELICAN_REPO", "..")).resolve()
RECIPES = REPO / "recipes"
assert (RECIPES / "c2_8bit.yaml").exists(), f"recipes not found in {RECIPES}: set QPELICAN_REPO"
os.environ["RECIPES"] = str(RECIPES)  # for the %%bash cells below
CORES = os.cpu_count() or 1
T0 = time.time()
print(f"recipes: {RECIPES}\\nworking directory: {Path.cwd()}\\ncores: {CORES}")"""),
    ("md", """\
## 1. Simulate jets

`qpelican data simulate` generates hadronic ttbar (signal) and QCD dijets (background) at 14 TeV,
clusters anti-kT R = 0.8 jets with 550 < pT < 650 GeV and |eta| < 2, matches signal jets to a
hadronically decaying top, and writes `train.h5`, `val.h5`, `test.h5` (80/10/10) in the layout of
the Top Quark Tagging Reference Dataset (`Pmu`, `Nobj`, `is_signal`). There is no detector
simulation, so the multiplicities are higher than in the reference (~70 vs ~49 constituents).

About 160 (top) to 250 (QCD) jets/s per core; 4000 jets take under a minute on two cores. The same from the command line:
`qpelican data simulate --jets 4000 --out data/sim4k --seed 1`."""),
    ("code", """\
from qpelican.data.simulate import simulate

simulate(4000, "data/sim4k", seed=1, workers=CORES, progress=False)
print(sorted(os.listdir("data/sim4k")))"""),
    ("md", """\
## 2. Train nanoPELICAN in float and at 8 bits

A recipe (YAML) fixes the data, the model, the quantizer of every tensor and the training schedule;
command-line flags override a few of them. `recipes/c2_float.yaml` is nanoPELICAN with C = 2 hidden
channels in float32 on 80 constituents; `recipes/c2_8bit.yaml`, the flagship, takes the 16 leading
constituents with (n/Nbar)^alpha-scaled aggregators and quantizes coefficients, biases and hidden
activations to 8 bits (inputs, Lorentz invariants, aggregates and output wider), with a float
pre-training followed by quantization-aware fine-tuning. With `--epochs 4` the 8-bit run does 24 float + 4 QAT epochs.

Each run directory holds `model.keras`, `results.json` (accuracy, AUC, background rejection
1/eps_B at eps_S = 0.3 and 0.5, parameter count, bit operations) and `roc.png`."""),
    ("code", """\
%%bash
qpelican fit $RECIPES/c2_float.yaml --data data/sim4k --epochs 24 --out runs/c2_float"""),
    ("code", """\
%%bash
qpelican fit $RECIPES/c2_8bit.yaml --data data/sim4k --epochs 4 --out runs/c2_8bit"""),
    ("md", """\
## 3. ROC curves: float, 8-bit and the jet-mass baseline

Top tagging is usually quoted as background rejection 1/eps_B at a fixed signal efficiency eps_S.
The baseline is the best one can do with the jet mass alone (a likelihood ratio of the mass
distributions, fitted on the training jets). Here we load both models and score the test jets, each
on the number of leading constituents it takes.
Without detector smearing the simulated jet mass is a very strong variable, and a few thousand jets
and a few epochs are not enough for nanoPELICAN to overtake it: train longer and on more jets
(the recipe's defaults) for the real comparison."""),
    ("code", """\
%matplotlib inline
import matplotlib.pyplot as plt
import numpy as np

from qpelican.data.baseline import MassWindow
from qpelican.data.readers import open_dataset
from qpelican.core.metrics import roc_curve, roc_metrics
from qpelican.nn.models import model_constituents, predict

train_p4, train_y = open_dataset("data/sim4k/train.h5").read()
test_p4, test_y = open_dataset("data/sim4k/test.h5").read()

scores = {}
for name in ("c2_float", "c2_8bit"):
    model = qpelican.load_model(f"runs/{name}/model.keras")
    p4, _ = open_dataset("data/sim4k/test.h5", model_constituents(model)).read()  # its N leading constituents
    scores[name] = predict(model, p4)
scores["jet-mass baseline"] = MassWindow().fit(train_p4, train_y).score(test_p4)

fig, ax = plt.subplots(figsize=(6, 4.5))
for name, s in scores.items():
    m = roc_metrics(test_y, s)
    fpr, tpr = roc_curve(test_y, s)
    ok = fpr > 0
    ax.plot(tpr[ok], 1 / fpr[ok], label=f"{name}: AUC {m['auc']:.3f}, 1/eps_B(0.3) = {m['rej30']:.0f}")
ax.set_yscale("log")
ax.set_xlabel("signal efficiency $\\\\epsilon_S$")
ax.set_ylabel("background rejection $1/\\\\epsilon_B$")
ax.axvline(0.3, color="grey", ls=":", lw=0.8)
ax.grid(alpha=0.3, which="both")
ax.legend()
ax.set_title(f"{len(test_y)} test jets")
plt.show()

for name in ("c2_float", "c2_8bit"):
    r = json.load(open(f"runs/{name}/results.json"))
    print(f"{name:9s} parameters {r['n_params']:3d}  test AUC {r['auc']:.4f}  BOPs {r['bops']}")"""),
    ("md", """\
## 4. Bit-width search

`qpelican tune` lets Keras Tuner choose the fixed-point widths (coefficients, activations, ...). Each
trial is trained and scored by validation AUC and by its hardware cost in bit operations (BOPs: a
product of a- and b-bit operands costs a*b, an addition its result width). The output is the Pareto
front of AUC against BOPs (`pareto.json`, `pareto.png`) and a ready-to-run recipe for each point on
it (`pareto/point_<k>.yaml`). The trials of an 8-bit recipe start from one shared float
pre-training (`--pretrain-epochs`, here 24 as in the 8-bit fit above). Three one-epoch trials
only show the mechanics; a real search uses `--trials 50` or more (and can run distributed)."""),
    ("code", """\
%%bash
qpelican tune $RECIPES/c2_8bit.yaml --data data/sim4k --epochs 1 --trials 3 --pretrain-epochs 24 --out runs/tune_c2"""),
    ("code", """\
from IPython.display import Image, display

display(Image(filename="runs/tune_c2/pareto.png"))"""),
    ("md", """\
## 5. Export to hls4ml and verify bit-exactness

`qpelican export-hls` writes an hls4ml project (io_parallel, Latency strategy) with our HLS layers
for the Lorentz invariants and the permutation-equivariant aggregations. `--verify` compiles the C
simulation with g++ and compares its output with the QKeras model on real jets: every quantizer of
the training graph is exactly where the firmware rounds, so the two must agree **bit for bit**
(`differing_jets` = 0). Synthesis (`--synth`) needs Vitis HLS, which this notebook does not."""),
    ("code", """\
%%bash
qpelican export-hls runs/c2_8bit --out fw/c2_8bit --verify data/sim4k/test.h5 --jets 400"""),
    ("code", """\
verify = json.load(open("fw/c2_8bit/verify.json"))
print(f"jets compared: {verify['jets']}")
print(f"jets where the C simulation differs from QKeras: {verify['differing_jets']}"
      f"  (largest difference {verify['max_diff_lsb']:g} LSB)")
if "auc_hls" in verify:
    print(f"AUC QKeras {verify['auc_keras']:.4f}   AUC firmware C simulation {verify['auc_hls']:.4f}")
assert verify["differing_jets"] == 0, "the firmware is not bit-exact"
"""),
    ("md", """\
## 6. The trained model as a formula

nanoPELICAN is small enough to write down: `qpelican explain` prints the paper's analytic form
(eq. 1) with the trained numbers, the effective parameter count after absorbing one positive factor
per hidden channel, and checks that the formula reproduces the model's output on test jets."""),
    ("code", """\
%%bash
qpelican explain runs/c2_8bit"""),
    ("code", """\
print(f"notebook ran in {time.time() - T0:.0f} s")"""),
]


def build():
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for kind, src in CELLS:
        src = src.strip("\n")
        nb.cells.append(new_markdown_cell(src) if kind == "md" else new_code_cell(src))
    return nb


if __name__ == "__main__":
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "quickstart.ipynb")
    nb = build()
    nbformat.validate(nb)
    # stable cell ids so regenerating gives the same file
    for i, c in enumerate(nb.cells):
        c["id"] = f"cell-{i:02d}"
    nbformat.write(nb, path)
    print(f"wrote {path} ({len(nb.cells)} cells)")
