"""Execute notebooks/quickstart.ipynb top to bottom (nbclient) so the quick-start path cannot rot.

The notebook runs in a temporary directory (its data/, runs/, fw/ land there) and finds the recipes
through QPELICAN_REPO. Several minutes on a 2-core CPU: the slowest test of the suite.
"""
import json
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "quickstart.ipynb"


def _kernel_name():
    """python3 if a kernel spec exists, else install one for this interpreter (user scope)."""
    from jupyter_client.kernelspec import find_kernel_specs

    if "python3" not in find_kernel_specs():
        import subprocess

        subprocess.run([sys.executable, "-m", "ipykernel", "install", "--user", "--name", "python3"], check=True)
    return "python3"


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), \
        "commit the notebook with outputs cleared (python notebooks/make_quickstart.py)"
    monkeypatch.setenv("QPELICAN_REPO", str(REPO))
    # the kernel inherits this process's environment: keep TensorFlow quiet and on the CPU
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    client = NotebookClient(nb, kernel_name=_kernel_name(), timeout=900,
                            resources={"metadata": {"path": str(tmp_path)}})
    t0 = time.time()
    try:
        client.execute()
    finally:  # keep the executed notebook for debugging a failure
        nbformat.write(nb, tmp_path / "quickstart.executed.ipynb")
    print(f"notebook executed in {time.time() - t0:.0f} s ({tmp_path})")

    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors, errors

    for run in ("c2_float", "c2_8bit"):
        res = json.loads((tmp_path / "runs" / run / "results.json").read_text())
        assert 0.5 < res["auc"] <= 1.0, (run, res["auc"])
        assert (tmp_path / "runs" / run / "model.keras").exists()
    assert (tmp_path / "runs" / "tune_c2" / "pareto.png").stat().st_size > 0
    assert (tmp_path / "runs" / "tune_c2" / "pareto.json").exists()
    verify = json.loads((tmp_path / "fw" / "c2_8bit" / "verify.json").read_text())
    assert verify["jets"] == 400  # the whole test split (10% of 4000)
    assert verify["differing_jets"] == 0

    # the ROC plot and the Pareto PNG are displayed as images
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert len(images) >= 2
    # the explain cell printed the formula
    cell = next(c for c in nb.cells if c.cell_type == "code" and "qpelican explain" in c.source)
    text = "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")
    assert text.strip(), "qpelican explain printed nothing"
