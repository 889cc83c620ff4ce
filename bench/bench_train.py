"""Training and inference throughput of nanoPELICAN, with peak memory and the machine load.

Uses exactly the paths of `qpelican fit` and `tune` (same model build, optimizer and epoch loop,
`qpelican.training.session.train_epoch`: the numba training kernels for nanoPELICAN, `model.fit`
otherwise) and of fit's / tune's / evaluate's scoring (`qpelican.nn.models.predict`: the numba fast
path for nanoPELICAN), on N constituents per jet (default 80, the paper's), the recipe's batch
(512). Inference is also timed through the XLA path (`xla_predict`, what predict used before the
fast path and still uses for other models), on the same jets, for comparison. The fast path's
figure is the fastest of three calls over all the jets; XLA's, slower and steadier, one call.
Training is timed over --epochs epochs of --steps steps (after --warmup steps); the median epoch
is printed, the fastest and slowest are in the JSON (an epoch of 30 steps takes a few tenths of a
second, so one stall of a shared machine moves a single epoch's figure by tens of percent).

    python bench/bench_train.py                 # c2, c10, alpha; float and 8-bit; synthetic jets
    python bench/bench_train.py --data /tmp/sim125k      # real jets (train split)
    python bench/bench_train.py --recipes recipes/c2_8bit.yaml --set model.dropout=0.05
    python bench/bench_train.py --compare /tmp/old      # alternate with another checkout (before/after)
    python bench/bench_train.py --no-train              # inference only (fast path vs XLA), untrained weights

A recipe with a float pre-training (`qat: finetune`, e.g. c2_8bit) is timed in both phases: the
"train" columns are its quantized phase, "float phase" its float pre-training (with the masked
BatchNorm where the recipe has one). Each recipe runs in its own process, so the peak RSS printed is that recipe's. The machines this
is run on are shared: every row prints the 1-minute load average before it, and the CPU seconds
the process used (jets per CPU-second is far steadier than jets per second when other jobs take
the cores). With --compare the two checkouts alternate, recipe by recipe, --rounds times.

Synthetic jets: 30-79 massless constituents with exponential momenta, float32 as the readers give
them (throughput does not depend on the physics, but float64 inputs would cost a conversion of
every batch). Writes JSON with --out.
"""
import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RECIPES = [os.path.join(HERE, "..", "recipes", f"{r}.yaml")
           for r in ("c2_float", "c2_8bit", "c10_float", "c10_8bit", "c2_alpha_float", "c2_alpha_8bit")]


def synthetic(n_jets, n, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    p = rng.exponential(10.0, size=(n_jets, n, 3)).astype(np.float32) * rng.choice([-1, 1], size=(n_jets, n, 3))
    e = np.linalg.norm(p, axis=-1, keepdims=True)
    p4 = np.concatenate([e, p], -1)
    mult = rng.integers(30, n, size=n_jets)
    p4[np.arange(n)[None, :] >= mult[:, None]] = 0
    return p4.astype(np.float32), rng.integers(0, 2, n_jets).astype(np.float32)  # float32, as the readers give


INFER_CALLS = 3  # predict is timed as the fastest of this many calls: one call of ~0.1 s swings by 1.5x


def _timed(fn):
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def bench_one(a):
    """One recipe in this process: train and inference figures (a dict)."""
    sys.path.insert(0, a.repo)
    import qpelican  # noqa: F401
    import numpy as np
    import tensorflow as tf
    import yaml

    from qpelican.config.recipe import load_recipe
    from qpelican.nn.models import build_model, predict
    from qpelican.training.session import build_training, epoch_dataset, phases_of

    try:
        from qpelican.training.session import train_epoch, training_path
    except ImportError:  # a checkout from before the training kernels (--compare)
        train_epoch = training_path = None

    try:
        from qpelican.nn import fastpath
        from qpelican.nn.models import xla_predict
    except ImportError:  # a checkout from before the fast path (--compare): its predict is the XLA path
        fastpath, xla_predict = None, predict

    if a.data:
        from qpelican.data.readers import open_dataset, resolve_splits

        ds = open_dataset(resolve_splits(a.data)["train"], a.n)
        p4, y = ds.read(0, min(a.jets, ds.n_jets))
        y = y.astype(np.float32)
    else:
        p4, y = synthetic(a.jets, a.n)
    rec = load_recipe(a.one).with_overrides(sets=[*a.set, f"data.n_constituents={a.n}"])
    path = f"/tmp/bench_{os.getpid()}_{os.path.basename(a.one)}"
    with open(path, "w") as f:
        yaml.safe_dump(rec.to_dict(), f)
    r = load_recipe(path)
    try:  # before TensorFlow's first op, as fit and tune do
        from qpelican.training.session import prepare_threads
    except ImportError:  # a checkout from before it (--compare): TensorFlow's default pools
        prepare_threads = None
    one_tf_thread = bool(prepare_threads and prepare_threads(r))
    bs, quantized = r.training.batch_size, r.quantized
    if not a.no_train and max(a.steps, a.warmup) * bs > len(y):  # an epoch's jets are drawn from the dataset
        raise SystemExit(f"--steps {a.steps} (or --warmup {a.warmup}) batches of {bs} need more than the {len(y)} "
                         f"jets of the dataset: raise --jets or lower --steps")
    load = os.getloadavg()[0]
    row = {"recipe": os.path.basename(a.one), "repo": os.path.abspath(a.repo), "quantized": quantized, "batch": bs,
           "n_constituents": a.n, "overrides": a.set, "load_before": load}
    infer = build_model(r.to_model_config(quantized=quantized))
    if not a.no_train:
        p4_t, y_t = tf.constant(p4), tf.constant(y)
        for pname, pquant, _, lr in phases_of(r):  # finetune recipes: the float pre-training, then QAT
            model, _, _, jit = build_training(r, pquant, 0, math.ceil(len(y) / bs), r.training.epochs, lr)
            if train_epoch is None:  # a checkout from before train_epoch (--compare): its fit was model.fit
                ds = epoch_dataset(p4_t, y_t, len(y), bs, 0, 0).repeat()
                compile_s, _ = _timed(lambda: model.fit(ds, steps_per_epoch=a.warmup, epochs=1, verbose=0))
                epochs = [_timed(lambda: model.fit(ds, steps_per_epoch=a.steps, epochs=1, verbose=0))
                          for _ in range(a.epochs)]
                path = f"model.fit (XLA {'on' if jit else 'off'})"
            else:  # what qpelican fit and tune run
                compile_s, _ = _timed(lambda: train_epoch(model, p4_t, y_t, a.warmup * bs, bs, 0, 0))
                epochs = [_timed(lambda e=e: train_epoch(model, p4_t, y_t, a.steps * bs, bs, 0, e))
                          for e in range(1, 1 + a.epochs)]
                path = training_path(model)
            trained, epochs = a.steps * bs, sorted(epochs)
            train_s, train_cpu = epochs[len(epochs) // 2]
            key = "" if pquant == quantized else f"{pname}_phase_"
            row.update({f"{key}train_path": path, f"{key}train_jets_per_second": round(trained / train_s, 1),
                        f"{key}train_jets_per_cpu_second": round(trained / train_cpu, 1),
                        f"{key}ms_per_batch": round(1000 * train_s / a.steps, 2),
                        f"{key}first_steps_seconds": round(compile_s, 2),
                        f"{key}train_jets_per_second_range": [round(trained / epochs[-1][0], 1),
                                                               round(trained / epochs[0][0], 1)]})
        row["peak_rss_mb_train"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        infer.set_weights(model.get_weights())  # inference: a fresh model of the recipe with the trained weights
    plan = fastpath.model_plan(infer) if fastpath else "no fast path in this checkout"
    if isinstance(plan, str):
        row["infer_path"] = f"xla ({plan})"
    else:  # a checkout from before the float32 pair loops has no such field
        row["infer_path"] = "fast (float32 pair loops)" if getattr(plan, "float32", False) else "fast"
    for name, fn, calls in (("infer", predict, INFER_CALLS), ("xla_infer", xla_predict, 1)):  # predict's, then XLA's
        fn(infer, p4[:4096])
        fn(infer, p4[:len(p4) % 4096 or 4096])  # compile the padded last batch's shape too
        row[f"load_{name}"] = os.getloadavg()[0]
        s, cpu = min(_timed(lambda: fn(infer, p4)) for _ in range(calls))
        row[f"{name}_jets_per_second"] = round(len(p4) / s, 1)
        row[f"{name}_jets_per_cpu_second"] = round(len(p4) / cpu, 1)
    row.update(peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
               load_after=os.getloadavg()[0], cpus=os.cpu_count(), one_tf_thread=one_tf_thread,
               threads=fastpath.threads() if fastpath else None)
    return row


def _fmt(row, key, width):
    v = row.get(key)
    return f"{'-':>{width}}" if v is None else f"{v:>{width},.0f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", nargs="+", default=RECIPES)
    ap.add_argument("--data", default=None, help="dataset dir/file (train split used); default synthetic jets")
    ap.add_argument("--jets", type=int, default=20480, help="jets in the dataset (inference runs over all of them)")
    ap.add_argument("--n", type=int, default=80, help="constituents per jet")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=5, help="timed epochs of --steps steps (the median is printed)")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="recipe override for every recipe, e.g. model.dropout=0.05 or training.jit_compile=false")
    ap.add_argument("--compare", default=None, metavar="REPO",
                    help="another checkout of qpelican (e.g. `git worktree add /tmp/old HEAD~5`) run in alternation")
    ap.add_argument("--rounds", type=int, default=1, help="alternations with --compare")
    ap.add_argument("--no-train", action="store_true", help="inference only (untrained weights)")
    ap.add_argument("--repo", default=os.path.join(HERE, ".."), help=argparse.SUPPRESS)
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(bench_one(a)))
        return
    repos = [a.repo] + ([a.compare] if a.compare else [])
    rows = []
    print(f"{'recipe':<22} {'code':<10} {'load':>5}  {'train jets/s':>12} {'(per CPU-s)':>11} {'float phase':>11}  "
          f"{'load':>5}  "
          f"{'infer jets/s':>12} {'(per CPU-s)':>11}  {'XLA jets/s':>10} {'(per CPU-s)':>11}  {'peak RSS':>8}")
    for _ in range(a.rounds if a.compare else 1):
        for recipe in a.recipes:
            for repo in repos:
                cmd = [sys.executable, os.path.abspath(__file__), "--one", recipe, "--repo", repo, "--n", str(a.n),
                       "--jets", str(a.jets), "--steps", str(a.steps), "--warmup", str(a.warmup),
                       "--epochs", str(a.epochs)]
                cmd += ["--no-train"] if a.no_train else []
                cmd += [f"--set={s}" for s in a.set] + (["--data", a.data] if a.data else [])
                res = subprocess.run(cmd, capture_output=True, text=True)
                if res.returncode != 0:
                    print(f"{os.path.basename(recipe)} ({repo}) failed:\n{res.stderr[-2000:]}", flush=True)
                    continue
                row = json.loads(res.stdout.strip().splitlines()[-1])
                rows.append(row)
                code = "this" if repo == a.repo else os.path.basename(os.path.normpath(repo))
                path = "" if row["infer_path"] == "fast" else row["infer_path"]
                path += ", TF 1 thread" if row.get("one_tf_thread") else ""
                print(f"{row['recipe'][:22]:<22} {code[:10]:<10} {row['load_before']:>5.1f}  "
                      f"{_fmt(row, 'train_jets_per_second', 12)} {_fmt(row, 'train_jets_per_cpu_second', 11)} "
                      f"{_fmt(row, 'float_phase_train_jets_per_second', 11)}  "
                      f"{row['load_infer']:>5.1f}  "
                      f"{row['infer_jets_per_second']:>12,.0f} {row['infer_jets_per_cpu_second']:>11,.0f}  "
                      f"{row['xla_infer_jets_per_second']:>10,.0f} {row['xla_infer_jets_per_cpu_second']:>11,.0f}  "
                      f"{row['peak_rss_mb']:>6,.0f} MB {' '.join(a.set)} {path}", flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
