"""Data benchmarks: simulation jets/s (one core, all cores) and reader throughput + peak memory.

    python bench/bench_data.py                     # 400-jet simulations, 2 GB reader file
    python bench/bench_data.py --size-gb 4 --sim-jets 1000 --dir /scratch/qpelican-bench

The reader file is in the converted layout (Pmu float32 (jets, 200, 4), is_signal), built by
replicating simulated jets (or random massless jets with --no-sim), so it is written at disk
speed. Reading is measured in a fresh subprocess so its peak RSS (VmHWM) belongs to the
reader alone; the file was just written, so the page cache is warm (a disk-bound cold read is
slower: divide the file size by the disk bandwidth).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import h5py
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def bench_simulation(n_jets, workdir):
    from qpelican.data.simulate import GenConfig, generate_jets, simulate

    out = {}
    for signal, name in ((True, "signal"), (False, "background")):
        t = time.perf_counter()
        generate_jets(signal, n_jets // 2, seed=11, cfg=GenConfig())
        out[f"1 core, {name} only"] = (n_jets // 2) / (time.perf_counter() - t)
    cores = os.cpu_count() or 1
    for workers in sorted({1, cores}):
        t = time.perf_counter()
        simulate(n_jets, os.path.join(workdir, f"sim-w{workers}"), seed=5, workers=workers, progress=False)
        dt = time.perf_counter() - t
        out[f"{workers} worker(s), end to end"] = n_jets / dt
    return out


def write_big_file(path, size_gb, seed_jets):
    """Converted-layout file of about size_gb GB from replicated seed jets (rotated in phi)."""
    per_jet = 200 * 4 * 4 + 1
    n = int(size_gb * 1e9 / per_jet)
    block = len(seed_jets[0])
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    with h5py.File(path + ".tmp", "w") as f:
        pmu = f.create_dataset("Pmu", (n, 200, 4), np.float32)
        lab = f.create_dataset("is_signal", (n,), np.int8)
        for a in range(0, n, block):
            b = min(a + block, n)
            phi = rng.uniform(0, 2 * np.pi)
            c, s = np.cos(phi), np.sin(phi)
            p = seed_jets[0][: b - a].copy()
            p[..., 1], p[..., 2] = c * p[..., 1] - s * p[..., 2], s * p[..., 1] + c * p[..., 2]
            pmu[a:b] = p
            lab[a:b] = seed_jets[1][: b - a]
    os.replace(path + ".tmp", path)
    return n, time.perf_counter() - t


def seed_block(sim_dir, size=8192):
    rng = np.random.default_rng(1)
    if sim_dir is not None:
        with h5py.File(os.path.join(sim_dir, "train.h5"), "r") as f:
            p, y = f["Pmu"][()], f["is_signal"][()]
        idx = rng.integers(0, len(y), size)
        return p[idx], y[idx]
    p = np.zeros((size, 200, 4), np.float32)
    mult = rng.integers(20, 120, size)
    for j, k in enumerate(mult):
        p3 = rng.normal(0, 15, (k, 3)).astype(np.float32)
        p3[:, 0] += 600.0 / k
        p3 = p3[np.argsort(-np.hypot(p3[:, 0], p3[:, 1]))]
        p[j, :k, 0], p[j, :k, 1:] = np.linalg.norm(p3, axis=1), p3
    return p, rng.integers(0, 2, size).astype(np.int8)


def peak_rss_kb():
    """High-water RSS of this process in kB. /proc's VmHWM starts afresh at exec, whereas Linux
    carries ru_maxrss over from the parent that forked us, so prefer VmHWM."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def read_worker(path, n_const, chunk, mode):
    """Runs in a subprocess: stream the file, print JSON with jets/s and peak RSS."""
    rss0 = peak_rss_kb()
    from qpelican.data.readers import open_dataset

    ds = open_dataset(path, n_const)
    t = time.perf_counter()
    n = 0
    for p, y in ds.iter_chunks(chunk_size=chunk):
        n += len(y)
    dt = time.perf_counter() - t
    rss = peak_rss_kb()
    print(json.dumps({"jets": n, "seconds": dt, "jets_per_s": n / dt, "peak_rss_mb": rss / 1024,
                      "rss_before_mb": rss0 / 1024}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sim-jets", type=int, default=400, help="jets per simulation run")
    ap.add_argument("--size-gb", type=float, default=2.0, help="size of the reader test file")
    ap.add_argument("--n-constituents", type=int, default=80)
    ap.add_argument("--chunk", type=int, default=16384)
    ap.add_argument("--dir", default=None, help="work directory (default: a temporary one)")
    ap.add_argument("--no-sim", action="store_true", help="skip the simulation benchmark")
    ap.add_argument("--_read", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._read:
        path, n_const, chunk, mode = args._read
        return read_worker(path, int(n_const), int(chunk), mode)

    workdir = args.dir or tempfile.mkdtemp(prefix="qpelican-bench-")
    os.makedirs(workdir, exist_ok=True)
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; work dir {workdir}")
    sim_dir = None
    if not args.no_sim:
        rates = bench_simulation(args.sim_jets, workdir)
        print(f"\nsimulation ({args.sim_jets} jets, MPI off, incl. Pythia init):")
        for k, v in rates.items():
            print(f"  {k:32s} {v:8.0f} jets/s")
        sim_dir = os.path.join(workdir, f"sim-w{os.cpu_count() or 1}")
    big = os.path.join(workdir, "big.h5")
    n, dt = write_big_file(big, args.size_gb, seed_block(sim_dir))
    size = os.path.getsize(big) / 1e9
    print(f"\nreader file: {n} jets, {size:.2f} GB written in {dt:.1f} s ({size / dt:.2f} GB/s)")
    modes = ["reader"]
    for mode in modes:
        r = subprocess.run([sys.executable, __file__, "--_read", big, str(args.n_constituents), str(args.chunk), mode],
                           capture_output=True, text=True, check=True)
        res = json.loads(r.stdout.strip().splitlines()[-1])
        print(f"{mode:8s} N={args.n_constituents}: {res['jets']} jets in {res['seconds']:.1f} s = "
              f"{res['jets_per_s']:.0f} jets/s ({res['jets_per_s'] * 3.2e3 / 1e9:.2f} GB/s of Pmu), "
              f"peak RSS {res['peak_rss_mb']:.0f} MB (before reading {res['rss_before_mb']:.0f} MB; "
              f"file {size * 1e3:.0f} MB)")
    if args.dir is None:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
