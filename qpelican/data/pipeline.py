"""tf.data input pipeline: jets -> (p4 float32 (B, N, 4), label float32 (B, 1)) batches.

Two paths, chosen by size:
- in memory (default when N*16 bytes * jets <= QPELICAN_INMEMORY_GB, 4 GiB): the arrays are read
  once into tensors; each epoch shuffles an index vector (seeded, reshuffled every epoch) and
  gathers whole batches with tf.gather (no per-jet Python, no 2 GB GraphDef constant, no
  element-wise shuffle buffer holding a second copy of the data);
- streaming: a generator reads chunks in a seeded random order, permutes a buffer of
  STREAM_SHUFFLE_BUFFER jets in numpy and yields whole batches. Memory: the buffer + a chunk.

balanced=True draws the two classes alternately from their own shuffled, repeated streams, so
every batch is (within one jet) 50/50; an epoch keeps the number of jets of the source
(the minority class is oversampled, the majority subsampled).
"""
from __future__ import annotations

import os

import numpy as np

import qpelican  # noqa: F401  (selects tf-keras before TensorFlow loads)
from qpelican.core.inputs import fit_constituents

STREAM_SHUFFLE_BUFFER = 65536
STREAM_CHUNK = 16384


def _inmemory_limit_bytes():
    return float(os.environ.get("QPELICAN_INMEMORY_GB", "4")) * 2**30


def _labels_2d(y):
    import tensorflow as tf

    return tf.reshape(tf.cast(y, tf.float32), (-1, 1))


def make_dataset(source, batch_size=512, shuffle=True, seed=0, balanced=False, repeat=False,
                 n_constituents=None, in_memory=None):
    """Build a batched, prefetched tf.data.Dataset of (p4 (B, N, 4) float32, label (B, 1) float32).

    source: a reader Dataset (qpelican.data.readers.open_dataset) or a tuple (p4, labels) of arrays.
    n_constituents: N of the output (default: the source's). in_memory: force a path (None = by size).
    """
    import tensorflow as tf

    if isinstance(source, (tuple, list)):
        p4, y = source
        n = n_constituents or np.asarray(p4).shape[1]
        p4 = fit_constituents(p4, n, "make_dataset input")
        return _from_arrays(p4, np.asarray(y).reshape(-1), batch_size, shuffle, seed, balanced, repeat)
    reader = source
    n = int(n_constituents or reader.n_constituents)
    if in_memory is None:
        in_memory = reader.n_jets * n * 16 <= _inmemory_limit_bytes()
    if in_memory:
        p4, y = reader.read()
        p4 = _fit_sorted(p4, n)
        return _from_arrays(p4, y, batch_size, shuffle, seed, balanced, repeat)
    ds = _stream(reader, n, shuffle, seed, balanced, batch_size)
    if repeat:
        ds = ds.repeat()
    return ds.prefetch(tf.data.AUTOTUNE)


def _fit_sorted(p4, n):
    """Reader output is pT-sorted: truncate or pad without re-sorting."""
    if p4.shape[1] >= n:
        return p4[:, :n]
    return np.concatenate([p4, np.zeros((len(p4), n - p4.shape[1], 4), np.float32)], axis=1)


def _from_arrays(p4, y, batch_size, shuffle, seed, balanced, repeat):
    import tensorflow as tf

    if len(y) != len(p4):
        from qpelican.core.errors import DataError

        raise DataError(f"make_dataset: {len(p4)} jets but {len(y)} labels")
    P = tf.convert_to_tensor(np.ascontiguousarray(p4, dtype=np.float32))
    Y = tf.convert_to_tensor(np.asarray(y, dtype=np.float32))
    n = len(y)
    if balanced:
        idx = _balanced_indices(np.asarray(y), n, seed)
    else:
        idx = tf.data.Dataset.range(n)
        if shuffle:
            idx = idx.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    ds = idx.batch(batch_size).map(lambda i: (tf.gather(P, i), _labels_2d(tf.gather(Y, i))),
                                   num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if repeat:
        ds = ds.repeat()
    return ds.prefetch(tf.data.AUTOTUNE)


def _balanced_indices(y, n, seed):
    """Index stream alternating class 0 and class 1, each from its own reshuffled repeat; n per epoch."""
    import tensorflow as tf

    streams = []
    for c in (0, 1):
        ic = np.nonzero(y == c)[0].astype(np.int64)
        if ic.size == 0:
            from qpelican.core.errors import DataError

            raise DataError(f"balanced=True but the data has no jets of class {c}")
        streams.append(tf.data.Dataset.from_tensor_slices(ic)
                       .shuffle(ic.size, seed=seed + c, reshuffle_each_iteration=True).repeat())
    choice = tf.data.Dataset.range(2).repeat()
    return tf.data.Dataset.choose_from_datasets(streams, choice).take(n)


def _stream(reader, n, shuffle, seed, balanced, batch_size):
    """Streaming path. Unbalanced: numpy does the shuffling (random chunk order, then a seeded
    permutation of a buffer of ~STREAM_SHUFFLE_BUFFER jets) and the generator yields whole
    batches, so TensorFlow never handles single jets. Balanced: per-class filtered streams
    (C++ element ops) alternate, each with its own shuffle buffer."""
    import tensorflow as tf

    n_rows = reader.n_jets
    starts = np.arange(0, n_rows, STREAM_CHUNK)
    state = {"epoch": 0}

    def chunks(rng):
        order = starts.copy()
        if shuffle:
            rng.shuffle(order)
        for a in order:
            for p4, y in reader.iter_chunks(chunk_size=STREAM_CHUNK, start=int(a), stop=int(a) + STREAM_CHUNK):
                yield _fit_sorted(p4, n), y.astype(np.float32)

    def batches():
        rng = np.random.default_rng([seed, state["epoch"]])
        state["epoch"] += 1
        buf_p, buf_y, held = [], [], 0

        def drain(final):
            p, y = np.concatenate(buf_p), np.concatenate(buf_y)
            if shuffle:
                perm = rng.permutation(len(y))
                p, y = p[perm], y[perm]
            stop = len(y) if final else len(y) - len(y) % batch_size
            for a in range(0, stop, batch_size):
                yield p[a:a + batch_size], y[a:a + batch_size, None]
            return p[stop:], y[stop:]

        for p4, y in chunks(rng):
            buf_p.append(p4)
            buf_y.append(y)
            held += len(y)
            if held >= (STREAM_SHUFFLE_BUFFER if shuffle else batch_size):
                rest_p, rest_y = yield from drain(final=False)
                buf_p, buf_y, held = [rest_p], [rest_y], len(rest_y)
        if held:
            yield from drain(final=True)

    if not balanced:
        sig = (tf.TensorSpec((None, n, 4), tf.float32), tf.TensorSpec((None, 1), tf.float32))
        return tf.data.Dataset.from_generator(batches, output_signature=sig)

    def jets_gen():
        rng = np.random.default_rng([seed, state["epoch"]])
        state["epoch"] += 1
        yield from chunks(rng)

    counts = np.bincount(reader.labels(), minlength=2)
    if counts.min() == 0:
        from qpelican.core.errors import DataError

        raise DataError(f"{reader.path}: balanced=True but the file has no jets of class {int(np.argmin(counts))}")
    sig = (tf.TensorSpec((None, n, 4), tf.float32), tf.TensorSpec((None,), tf.float32))
    jets = tf.data.Dataset.from_generator(jets_gen, output_signature=sig).unbatch()
    streams = []
    for c in (0.0, 1.0):
        s = jets.filter(lambda p, y, c=c: tf.equal(y, c))
        if shuffle:
            s = s.shuffle(STREAM_SHUFFLE_BUFFER // 2, seed=seed + int(c), reshuffle_each_iteration=True)
        streams.append(s.repeat())
    jets = tf.data.Dataset.choose_from_datasets(streams, tf.data.Dataset.range(2).repeat()).take(n_rows)
    return jets.batch(batch_size).map(lambda p, y: (p, tf.reshape(y, (-1, 1))))
