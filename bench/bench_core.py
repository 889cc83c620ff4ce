"""Forward+backward training throughput of nanoPELICAN through the Keras graph (`model.fit`'s
step, jets/s) and peak memory: the path of models outside the training kernels (full PELICAN), and
the reference the kernels are tested against. `qpelican fit` trains nanoPELICAN through the
kernels of qpelican.nn.fasttrain: `bench/bench_train.py` times that path.

    python bench/bench_core.py [--n 80] [--batch 512] [--channels 2] [--steps 30]

Prints, for float and 8-bit quantization, with and without XLA: jets/s of a full training
step (forward, backward, Adam update) on random massless jets already in memory (wall clock,
and per CPU-second, which stays comparable when other work shares the machine), and peak RSS.
"""
import argparse
import os
import resource
import time

import numpy as np

import qpelican  # noqa: F401
import tensorflow as tf
import tf_keras

from qpelican.nn.models import build_model

Q8 = {
    "input": "quantized_bits(16,7,alpha=1)", "invariants": "quantized_bits(16,9,alpha=1)",
    "coefficients": "quantized_bits(8,0,alpha=1)", "biases": "quantized_bits(8,3,alpha=1)",
    "activation": "quantized_relu(8,3)", "aggregates": "quantized_bits(8,1,alpha=1)",
    "output": "quantized_bits(16,6,alpha=1)",
}


def random_jets(rng, b, n):
    p = rng.normal(size=(b, n, 3)) * 10
    p[..., 2] += 60 * rng.exponential(size=(b, n))
    e = np.linalg.norm(p, axis=-1, keepdims=True)
    out = np.concatenate([e, p], -1).astype(np.float32)
    out[np.arange(n)[None, :] >= rng.integers(20, n, size=(b, 1))] = 0
    return out


def measure(cfg, n, batch, steps, jit):
    rng = np.random.default_rng(0)
    model = build_model({"n_constituents": n, **cfg})
    model.compile(optimizer=tf_keras.optimizers.Adam(1e-3),
                  loss=tf_keras.losses.BinaryCrossentropy(from_logits=True), jit_compile=jit)
    x = random_jets(rng, batch * 8, n)
    y = rng.integers(0, 2, size=(batch * 8, 1)).astype(np.float32)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch, drop_remainder=True).repeat().prefetch(4)
    model.fit(ds, steps_per_epoch=5, epochs=1, verbose=0)  # trace + compile
    t0, c0 = time.perf_counter(), time.process_time()
    model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    return steps * batch / dt, steps * batch / dc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=80)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--channels", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    print(f"nanoPELICAN C={args.channels}, N={args.n}, batch {args.batch}, {tf.config.threading.get_intra_op_parallelism_threads() or 'all'} threads")
    for label, q in (("float", None), ("8-bit", Q8)):
        for jit in (False, True):
            rate, per_cpu = measure({"channels": args.channels, "quantization": q}, args.n, args.batch, args.steps, jit)
            print(f"  {label:6s} xla={str(jit):5s}  {rate:10,.0f} jets/s wall   {per_cpu:10,.0f} jets per CPU-second"
                  "  (train step: forward+backward+update)")
    print(f"  load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (wall figures drop on a shared machine)")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"  peak RSS {peak:,.0f} MiB")


if __name__ == "__main__":
    main()
