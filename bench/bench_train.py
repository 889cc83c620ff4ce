"""Training throughput of nanoPELICAN: jets/s and seconds per epoch, float and 8-bit.

Uses exactly the training path of `qpelican fit` (same model build, optimizer, XLA choice and
tf.data pipeline) on N constituents per jet (default 80, the paper's), batch 512.

    python bench/bench_train.py                       # c2_float and c2_8bit recipes, synthetic jets
    python bench/bench_train.py --data /tmp/sim125k   # real jets (train split)
    python bench/bench_train.py --recipes recipes/c10_float.yaml --steps 40

Synthetic jets: 30-79 massless constituents with exponential momenta (throughput does not depend
on the physics). Prints one line per recipe and writes JSON with --out.
"""
import argparse
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import qpelican  # noqa: E402,F401

import numpy as np  # noqa: E402


def synthetic(n_jets, n, seed=0):
    rng = np.random.default_rng(seed)
    p = rng.exponential(10.0, size=(n_jets, n, 3)).astype(np.float32) * rng.choice([-1, 1], size=(n_jets, n, 3))
    e = np.linalg.norm(p, axis=-1, keepdims=True)
    p4 = np.concatenate([e, p], -1)
    mult = rng.integers(30, n, size=n_jets)
    p4[np.arange(n)[None, :] >= mult[:, None]] = 0
    return p4, rng.integers(0, 2, n_jets).astype(np.float32)


def bench(recipe_path, p4, y, steps, warmup):
    import tensorflow as tf

    from qpelican.config.recipe import load_recipe
    from qpelican.training.session import build_training, epoch_dataset

    r = load_recipe(recipe_path)
    bs = r.training.batch_size
    quantized = r.quantized
    n_train = len(y)
    spe = math.ceil(n_train / bs)
    model, opt, _, jit = build_training(r, quantized, 0, spe, r.training.epochs, r.training.learning_rate)
    p4_t, y_t = tf.constant(p4), tf.constant(y)
    ds = epoch_dataset(p4_t, y_t, n_train, bs, 0, 0).repeat()
    t0 = time.perf_counter()
    model.fit(ds, steps_per_epoch=warmup, epochs=1, verbose=0)
    t_compile = time.perf_counter() - t0
    t0 = time.perf_counter()
    model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
    dt = time.perf_counter() - t0
    rate = steps * bs / dt
    return {"recipe": os.path.basename(recipe_path), "quantized": quantized, "xla": jit, "batch": bs,
            "n_constituents": int(p4.shape[1]), "jets_per_second": round(rate, 1),
            "ms_per_batch": round(1000 * dt / steps, 2), "seconds_per_epoch_100k": round(100_000 / rate, 2),
            "first_steps_seconds": round(t_compile, 2), "threads": os.cpu_count()}


def main():
    here = os.path.join(os.path.dirname(__file__), "..", "recipes")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", nargs="+", default=[os.path.join(here, "c2_float.yaml"), os.path.join(here, "c2_8bit.yaml")])
    ap.add_argument("--data", default=None, help="dataset dir/file (train split used); default synthetic jets")
    ap.add_argument("--jets", type=int, default=20480)
    ap.add_argument("--n", type=int, default=80, help="constituents per jet")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="recipe override for every recipe, e.g. model.batchnorm=false or training.jit_compile=false")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    if a.data:
        from qpelican.data.readers import open_dataset, resolve_splits

        ds = open_dataset(resolve_splits(a.data)["train"], a.n)
        p4, y = ds.read(0, min(a.jets, ds.n_jets))
        y = y.astype(np.float32)
    else:
        p4, y = synthetic(a.jets, a.n)
    rows = []
    for r in a.recipes:
        from qpelican.config.recipe import load_recipe

        rec = load_recipe(r)
        if rec.data.n_constituents != a.n or a.set:
            # bench at the requested N whatever the recipe says, with the --set overrides
            import yaml

            d = rec.with_overrides(sets=[*a.set, f"data.n_constituents={a.n}"]).to_dict()
            tmp = f"/tmp/bench_{os.getpid()}_{os.path.basename(r)}"
            with open(tmp, "w") as f:
                yaml.safe_dump(d, f)
            r = tmp
        row = bench(r, p4, y, a.steps, a.warmup)
        row["overrides"] = a.set
        rows.append(row)
        print(f"{row['recipe'][:22]:<22} {' '.join(a.set)} {'8bit' if row['quantized'] else 'float'} XLA={row['xla']!s:<5} N={row['n_constituents']} "
              f"batch {row['batch']}: {row['jets_per_second']:>8.0f} jets/s, {row['ms_per_batch']:.1f} ms/batch, "
              f"{row['seconds_per_epoch_100k']:.1f} s per epoch of 100k jets", flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
