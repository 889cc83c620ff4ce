"""The cost of the pair dropout in fit's training step: the same recipe with dropout 0 and with the
given rate, their steps interleaved in one process.

Two processes timed one after the other (as `bench_train.py --set model.dropout=...` does) differ by
whatever else the machine ran meanwhile; here each step of one setting is followed by a step of the
other, in alternating order, so that both see the same machine. The steps are exactly fit's
(`qpelican.nn.fasttrain.train_step`: the numba training kernels, the model's optimizer), on
synthetic jets (bench_train's), per phase of the recipe (a float pre-training is timed on its own).

    python bench/bench_dropout.py                                   # c2 float and c2 8-bit, rate 0.05
    python bench/bench_dropout.py --recipes recipes/c10_float.yaml --rate 0.1 --steps 500

Prints, per recipe and phase, the mean, median and fastest step and the CPU time per step of each
setting, their ratios (the cost of dropout) and the 1-minute load average before and after.
"""
import argparse
import os
import sys
import tempfile
import time

import qpelican  # noqa: F401  (tf-keras before TensorFlow)
import numpy as np
import tensorflow as tf
import yaml

from qpelican.config.recipe import load_recipe
from qpelican.nn import fasttrain
from qpelican.training.session import XLA_MIN_STEPS, build_training, phases_of, prepare_threads

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_train import synthetic  # noqa: E402  (the bench's own jets, not a package)

BATCHES = 4  # distinct batches the steps cycle through


def steps_of(recipe, n, rate, tmp):
    """{phase: {rate: fit's training step}} of the recipe at N = n for dropout 0 and ``rate``."""
    out = {}
    for r_drop in (0.0, rate):
        rec = load_recipe(recipe).with_overrides(sets=[f"data.n_constituents={n}", f"model.dropout={r_drop}"])
        path = os.path.join(tmp, f"{r_drop}_{os.path.basename(recipe)}")
        with open(path, "w") as f:
            yaml.safe_dump(rec.to_dict(), f)
        r = load_recipe(path)
        for name, quantized, _, lr in phases_of(r):
            model = build_training(r, quantized, 0, XLA_MIN_STEPS, 1, lr)[0]  # XLA as in a fit of 500+ steps
            step = fasttrain.train_step(model)
            if isinstance(step, str):
                raise SystemExit(f"{recipe}: the model trains through model.fit ({step}); nothing to compare")
            out.setdefault(name, {})[r_drop] = step
    return out


def interleaved(steps, x, y, batch, count):
    """Per setting: the wall and CPU seconds of ``count`` steps, interleaved in alternating order."""
    idx = [tf.range(batch * k, batch * (k + 1)) for k in range(BATCHES)]
    for step in steps.values():
        for k in range(5):  # the first calls trace and load the kernels
            step(x, y, idx[k % BATCHES])
    wall, cpu = {r: [] for r in steps}, {r: [] for r in steps}
    order = list(steps)
    for k in range(count):
        for r in (order if k % 2 else order[::-1]):
            c0, t0 = time.process_time(), time.perf_counter()
            steps[r](x, y, idx[k % BATCHES])
            wall[r].append(time.perf_counter() - t0)
            cpu[r].append(time.process_time() - c0)
    return {r: (np.array(wall[r]) * 1e3, np.array(cpu[r]) * 1e3) for r in steps}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", nargs="+", default=[os.path.join(HERE, "..", "recipes", f"{r}.yaml")
                                                      for r in ("c2_float", "c2_8bit")])
    ap.add_argument("--rate", type=float, default=0.05, help="the dropout rate against none (default 0.05)")
    ap.add_argument("--n", type=int, default=80, help="constituents per jet (default 80)")
    ap.add_argument("--steps", type=int, default=300, help="timed steps per setting (default 300)")
    a = ap.parse_args()
    if not 0.0 < a.rate < 1.0:
        ap.error(f"--rate {a.rate}: a dropout rate is above 0 and below 1")
    for recipe in a.recipes:  # before TensorFlow's first op, as fit does (every recipe here trains on the kernels)
        prepare_threads(load_recipe(recipe))
    with tempfile.TemporaryDirectory() as tmp:
        for recipe in a.recipes:
            batch = load_recipe(recipe).training.batch_size
            p4, y = synthetic(batch * BATCHES, a.n)
            x, y = tf.constant(p4), tf.constant(y)
            for phase, steps in steps_of(recipe, a.n, a.rate, tmp).items():
                load = os.getloadavg()[0]
                t = interleaved(steps, x, y, batch, a.steps)
                print(f"{os.path.basename(recipe)}, {phase} phase, N={a.n}, batch {batch}, {a.steps} steps each "
                      f"(1-min load {load:.1f} -> {os.getloadavg()[0]:.1f})")
                for r, (wall, cpu) in t.items():
                    print(f"  dropout {r:<5}: mean {wall.mean():.2f}  median {np.median(wall):.2f}  "
                          f"fastest {wall.min():.2f}  CPU {cpu.mean():.2f} ms a step")
                (w0, c0), (w1, c1) = t[0.0], t[a.rate]
                print(f"  cost of dropout {a.rate}: mean {w1.mean() / w0.mean():.3f}x  "
                      f"median {np.median(w1) / np.median(w0):.3f}x  fastest {w1.min() / w0.min():.3f}x  "
                      f"CPU {c1.mean() / c0.mean():.3f}x", flush=True)


if __name__ == "__main__":
    main()
