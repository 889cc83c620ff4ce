"""Jet data: readers (both reference layouts), the Pythia 8 + FastJet simulator, the jet-mass
baseline and `qpelican data` commands. Submodules import lazily:

    from qpelican.data.readers import open_dataset, resolve_splits
    from qpelican.data.simulate import simulate, default_sample
    from qpelican.data.baseline import MassWindow, mass_window_metrics
"""
