"""Shared fixtures.

`sim_dir`: a small real Pythia 8 + FastJet sample (train/val/test.h5, converted layout), simulated
once per test session with the Python API, for any test that needs physical jets (data,
training, export). 800 jets, 2 workers: about 6 s on a 2-core machine.
"""
import os

import pytest

import qpelican  # noqa: F401  (selects tf-keras before anything imports TensorFlow)

SIM_JETS = 800
SIM_SEED = 12345


@pytest.fixture(scope="session")
def sim_dir(tmp_path_factory):
    """Directory with train.h5 / val.h5 / test.h5 (80/10/10) of SIM_JETS simulated jets, half top."""
    from qpelican.data.simulate import simulate

    out = tmp_path_factory.mktemp("sim")
    simulate(SIM_JETS, str(out), seed=SIM_SEED, workers=min(2, os.cpu_count() or 1), progress=False)
    return out
