"""The training kernels (qpelican.nn.fasttrain) against the model itself: the same loss and the
same gradients as ``model(x, training=True)`` under a GradientTape (the same dropout masks: the
layers' own seeds), for every option of the nano chain; an epoch through them against an epoch
of ``model.fit``; models outside the chain fall back to ``model.fit``."""
import gc

import numba
import numpy as np
import pytest

import qpelican  # noqa: F401  (selects tf-keras)
import tensorflow as tf
import tf_keras

from qpelican.nn import fasttrain
from qpelican.nn.models import build_model
from qpelican.training.session import reseed, train_epoch, training_path

Q8 = {"input": "quantized_bits(18,12,alpha=1)", "invariants": "quantized_bits(20,14,alpha=1)",
      "coefficients": "quantized_bits(8,2,alpha=1)", "biases": "quantized_bits(8,3,alpha=1)",
      "activation": "quantized_relu(8,7)", "aggregates": "quantized_bits(16,9,alpha=1)",
      "output": "quantized_bits(16,6,alpha=1)"}
L1Q = {**Q8, "input": "quantized_bits(14,12,keep_negative=False,alpha=1)"}


def momenta(rng, b, n):
    p = rng.exponential(10.0, size=(b, n, 3)) * rng.choice([-1, 1], size=(b, n, 3))
    p4 = np.concatenate([np.linalg.norm(p, axis=-1, keepdims=True), p], -1).astype(np.float32)
    p4[np.arange(n)[None, :] >= rng.integers(1, n + 1, size=b)[:, None]] = 0
    p4[0, 3] = 0  # a hole: the kernels compact the real particles, the dropout indexes the layer's rows
    return p4


def candidates(rng, b, n):
    x = np.zeros((b, n, 3), np.float32)
    for j, k in enumerate(rng.integers(1, n + 1, b)):
        x[j, :k, 0] = np.round(rng.exponential(30, k) / 0.25) * 0.25 + 0.25
        x[j, :k, 1:] = rng.integers(-150, 151, (k, 2))
    return x


def compiled(cfg, seed=0):
    tf_keras.backend.experimental.enable_tf_random_generator()
    tf_keras.utils.set_random_seed(seed)
    model = build_model(cfg)
    rng = np.random.default_rng(seed)
    for w in model.trainable_weights:  # off their initial values, so every term of the gradient is exercised
        scale = {"alpha": 0.2, "shift": 0.3, "bias": 0.5}.get(w.name.split("/")[-1].split(":")[0].split("_")[-1], 0.0)
        if scale:
            w.assign(rng.normal(size=w.shape) * scale)
    model.compile(optimizer=tf_keras.optimizers.Adam(1e-3), loss=tf_keras.losses.BinaryCrossentropy(from_logits=True))
    return model


CASES = {
    "float": {"channels": 2},
    "8-bit": {"channels": 2, "quantization": Q8},
    "float, BatchNorm, dropout, beams, alpha": {"channels": 3, "alpha": True, "batchnorm": True, "dropout": 0.05,
                                                "beams": True},
    "float, BatchNorm, mean": {"channels": 2, "batchnorm": True, "aggregation": "mean"},
    "8-bit, folded BatchNorm, dropout, beams, alpha": {"channels": 2, "alpha": True, "batchnorm": True,
                                                       "dropout": 0.05, "beams": True, "nbar": 16, "quantization": Q8},
    "8-bit symmetric, dropout": {"channels": 3, "symmetric": True, "dropout": 0.2, "quantization": Q8},
    "l1 8-bit, beam, dropout, alpha": {"format": "l1", "channels": 2, "alpha": True, "beams": True, "dropout": 0.05,
                                       "quantization": L1Q},
    "l1 float": {"format": "l1", "channels": 2},
}


@pytest.mark.parametrize("name", list(CASES))
def test_loss_and_gradients_equal_the_models(name):
    cfg = {"n_constituents": 20, **CASES[name]}
    model = compiled(cfg)
    rng = np.random.default_rng(1)
    x = (candidates if cfg.get("format") == "l1" else momenta)(rng, 96, 20)
    y = rng.integers(0, 2, (96, 1)).astype(np.float32)
    assert training_path(model) == "kernels"
    reseed(model, 0, 0)
    loss, grads = fasttrain.loss_and_gradients(model)(tf.constant(x), tf.constant(y))
    reseed(model, 0, 0)  # the same dropout seeds
    with tf.GradientTape() as tape:
        ref = model.loss(y, model(tf.constant(x), training=True))
    ref_grads = tape.gradient(ref, model.trainable_variables)
    assert np.isfinite(float(loss)) and float(loss) == pytest.approx(float(ref), rel=1e-6)
    for v, g, r in zip(model.trainable_variables, grads, ref_grads):
        g, r = np.asarray(g), np.asarray(tf.convert_to_tensor(r))
        assert np.abs(r).max() > 0, v.name  # every weight takes part
        np.testing.assert_allclose(g, r, rtol=0, atol=2e-4 * np.abs(r).max(), err_msg=v.name)


def test_the_batchnorms_move_as_in_the_model():
    cfg = {"n_constituents": 16, "channels": 2, "batchnorm": True, "dropout": 0.05, "beams": True}
    fast, ref = compiled(cfg), compiled(cfg)
    x = momenta(np.random.default_rng(2), 64, 16)
    y = np.ones((64, 1), np.float32)
    fasttrain.loss_and_gradients(fast)(tf.constant(x), tf.constant(y))
    ref(tf.constant(x), training=True)
    for a, b in zip(fast.non_trainable_weights, ref.non_trainable_weights):
        if "moving" in a.name:
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, err_msg=a.name)
            assert not np.allclose(a.numpy(), 0.0 if "mean" in a.name else 1.0)  # they moved


def test_an_epoch_follows_model_fit():
    """One epoch of train_epoch (kernels) and one of model.fit from the same weights end at the
    same weights, to the float32 rounding of the two gradients."""
    cfg = {"n_constituents": 16, "channels": 2, "quantization": Q8, "dropout": 0.05, "alpha": True}
    rng = np.random.default_rng(3)
    x, y = momenta(rng, 1200, 16), rng.integers(0, 2, 1200).astype(np.float32)
    fast, slow = compiled(cfg), compiled(cfg)
    slow.set_weights(fast.get_weights())
    for m in (fast, slow):
        reseed(m, 0, 0)
    loss_fast = train_epoch(fast, tf.constant(x), tf.constant(y), 1200, 256, 0, 0)
    assert fasttrain.kernels_ready(fast)  # compiled now: the phase line no longer announces a compile
    fasttrain_plan = fasttrain.train_plan
    try:  # the same epoch through model.fit: no plan, so train_epoch takes the fallback
        fasttrain.train_plan = lambda model: "forced for the test"
        slow._qpelican_train_step = None
        assert training_path(slow).startswith("model.fit")
        loss_slow = train_epoch(slow, tf.constant(x), tf.constant(y), 1200, 256, 0, 0)
    finally:
        fasttrain.train_plan = fasttrain_plan
    assert loss_fast == pytest.approx(loss_slow, rel=1e-4)
    assert int(fast.optimizer.iterations) == int(slow.optimizer.iterations) == 5
    moved = 0
    for a, b, w0 in zip(fast.get_weights(), slow.get_weights(), compiled(cfg).get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)
        moved += not np.allclose(a, w0)
    assert moved >= 5


def test_an_epoch_on_float64_inputs_ends_at_the_same_weights():
    """The kernels read the batch's rows of a float32 training set in place, and keep a tensor's
    per-jet BatchNorm moments from one pass over the whole set; another type is converted a batch
    at a time, to the same values (float64 copies of float32 inputs here), and an array's moments
    are taken per batch: the same weights, bit for bit. Rows outside the set are refused before a
    kernel reads them."""
    cfg = {"n_constituents": 12, "channels": 2, "dropout": 0.05, "batchnorm": True}
    rng = np.random.default_rng(6)
    x, y = momenta(rng, 300, 12), rng.integers(0, 2, 300).astype(np.float32)
    ends = []
    for x_all in (tf.constant(x), tf.constant(x.astype(np.float64)), x.copy()):
        model = compiled(cfg)
        reseed(model, 0, 0)
        train_epoch(model, x_all, tf.constant(y), 300, 64, 0, 0)
        ends.append(model.get_weights())
    for end in ends[1:]:
        for a, b in zip(ends[0], end):
            np.testing.assert_array_equal(a, b)
    kern = fasttrain._Kernels(fasttrain.train_plan(model))
    with pytest.raises(IndexError, match="rows 0..300 of 300 jets"):
        kern.moments(x, np.array([0, 300]))


def test_a_sets_moments_are_taken_once_and_dropped_with_it():
    """The step takes a float32 tensor's per-jet moments in one pass and keeps them for that set
    only: the same set again is not read twice, another set is, and a set's death frees them (not
    those of the set in use)."""
    passes = []

    class Kernels:  # moments = the row numbers, so that each answer says which rows it is
        @staticmethod
        def moments(x, rows):
            passes.append(len(x))
            return np.repeat(np.asarray(rows, np.float64)[:, None], 3, axis=1)

    keep = fasttrain._SetMoments(Kernels())
    a, b = tf.zeros([10, 2, 4]), tf.zeros([7, 2, 4])
    np.testing.assert_array_equal(keep(a, tf.constant([3, 1]))[:, 0], [3, 1])
    np.testing.assert_array_equal(keep(a, tf.constant([9]))[:, 0], [9])
    assert passes == [10]
    np.testing.assert_array_equal(keep(b, tf.constant([6]))[:, 0], [6])
    assert passes == [10, 7]
    del a
    gc.collect()
    assert keep(b, tf.constant([0, 2])).shape == (2, 3) and passes == [10, 7]  # a's death left b's moments
    del b
    gc.collect()
    assert keep.values is None
    assert keep(tf.zeros([5, 2, 4], tf.float64), tf.constant([0])) is None  # per batch, in the step
    assert keep(np.zeros((5, 2, 4), np.float32), tf.constant([0])) is None
    with pytest.raises(IndexError, match="rows 0..5 of 5 jets"):
        keep(tf.zeros([5, 2, 4]), tf.constant([0, 5]))


def test_full_pelican_trains_through_model_fit():
    model = compiled({"architecture": "pelican", "n_constituents": 8, "blocks": [2], "embedding": 2, "mlp": [2]})
    assert "not a LinEq2to0" in training_path(model) and isinstance(fasttrain.train_step(model), str)
    rng = np.random.default_rng(4)
    loss = train_epoch(model, tf.constant(momenta(rng, 64, 8)), tf.constant(np.ones(64, np.float32)), 64, 32, 0, 0)
    assert np.isfinite(loss) and int(model.optimizer.iterations) == 2


@pytest.mark.parametrize("d", [1, 2, 3, 10, 82, 164, 820, 8320, 999_983, 2**30 + 3])
def test_the_dropout_decoding_divides_exactly(d):
    """The multiply-shift division that splits each dropped position: exact for every position below
    2^31, here at the divisor's multiples and their neighbours, at random and at the top."""
    divide = numba.njit(lambda p, d: fasttrain._divmod(p, d, fasttrain._magic(d)))
    rng = np.random.default_rng(d)
    k = rng.integers(0, (2**31 - 1) // d, 300)
    for p in np.concatenate([k * d - 1, k * d, k * d + 1, rng.integers(0, 2**31, 300), 2**31 - 1 - np.arange(50)]):
        if 0 <= p < 2**31:
            assert divide(int(p), d) == divmod(int(p), d)


@pytest.mark.parametrize("spread", [1.0, 1e-3])
def test_the_batchnorm_moments_equal_the_sums_over_the_pairs(spread):
    """The input BatchNorm's per-jet sums of d_ij and d_ij^2 (i != j), taken in O(n) from the
    momenta's moments, against the sums over the pairs. Massless particles; with spread 1e-3 a
    narrow jet off the z axis, whose d_ij are ~1e-6 of E_i E_j: a sum of E^2 - p^2 terms would
    lose the second sum's digits there (~1e-4 relative)."""
    rng = np.random.default_rng(5)
    p4 = momenta(rng, 40, 30).astype(np.float64)
    p4[:, :, 1:3] *= spread
    y, z = p4[:, :, 2].copy(), p4[:, :, 3].copy()
    p4[:, :, 2], p4[:, :, 3] = 0.8 * y - 0.6 * z, 0.6 * y + 0.8 * z
    p4[:, :, 0] = np.linalg.norm(p4[:, :, 1:], axis=-1) * (p4[:, :, 0] != 0)
    p4 = p4.astype(np.float32)
    out = np.zeros((40, 3))
    fasttrain._moments(p4, np.arange(40), False, np.float32(1.0), np.zeros((0, 4), np.float32), np.zeros(6, np.float32), 1.0,
                       np.zeros(4), out)  # no beams, no grid
    for jet, p in enumerate(p4.astype(np.float64)):
        p = p[p[:, 0] != 0]
        d = p[:, :1] * p[:, 0] - p[:, 1:] @ p[:, 1:].T
        np.fill_diagonal(d, 0.0)
        assert out[jet, 0] == len(p)
        e2 = p[:, 0].sum() ** 2  # a scale for a lone particle's sums, 0 up to rounding
        np.testing.assert_allclose(out[jet, 1:], [d.sum(), (d * d).sum()], rtol=1e-8, atol=1e-15 * e2 * (len(p) < 2))


def test_a_backward_pass_reads_only_its_own_forward_passs_drop_lists():
    """The drop lists stay in the kernels' buffer between the two passes of a step: a backward pass
    with another step's ticket is refused before it reads them."""
    model = compiled({"n_constituents": 16, "channels": 2, "dropout": 0.05})
    kern = fasttrain._Kernels(fasttrain.train_plan(model))
    with pytest.raises(RuntimeError, match="forward pass 0, not 1"):
        kern.backward(momenta(np.random.default_rng(0), 4, 16), np.arange(4), np.int64(1), *[None] * 6)


THREADS = """
import os, sys
import qpelican
import tensorflow as tf
from qpelican.config.recipe import recipe_from_dict
from qpelican.training.session import prepare_threads
if sys.argv[2] == "after-start":
    tf.constant(1.0) + 1
took = prepare_threads(recipe_from_dict({"model": {"architecture": sys.argv[1]}}))
tf.function(lambda a: a * 2 + 1)(tf.constant(1.0))
names = [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]
print(took, names.count("tf_Compute"), tf.config.threading.get_intra_op_parallelism_threads())
"""


@pytest.mark.parametrize("arch, when, env, expect", [
    ("nano", "before-start", None, (True, 1, 1)),
    ("pelican", "before-start", None, (False, None, 0)),
    ("nano", "after-start", None, (False, None, 0)),
    ("nano", "before-start", "3", (False, 3, 0)),
])
def test_a_nano_run_gives_tensorflow_one_thread_before_it_starts(arch, when, env, expect):
    """fit and tune give TensorFlow one inter-op worker (threads named tf_Compute) and one intra-op
    thread for a nanoPELICAN, whose steps run on the kernels' numba workers; not for full PELICAN
    (its XLA step uses TensorFlow's pools), not once TensorFlow has started (no error then), and not
    where the user set TF_NUM_INTEROP_THREADS."""
    import os
    import subprocess
    import sys

    env_vars = {k: v for k, v in os.environ.items() if k not in ("TF_NUM_INTEROP_THREADS", "TF_NUM_INTRAOP_THREADS")}
    if env:
        env_vars["TF_NUM_INTEROP_THREADS"] = env
    res = subprocess.run([sys.executable, "-c", THREADS, arch, when], env=env_vars, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    took, workers, intra = res.stdout.split()[-3:]
    assert (took == "True", int(intra)) == (expect[0], expect[2])
    if expect[1] is not None:
        assert int(workers) == expect[1]


SCHEDULE = """
import hashlib, os, sys
import qpelican
import numpy as np
import tensorflow as tf
import tf_keras
sys.path.insert(0, sys.argv[1])
from test_fasttrain import CASES, compiled, momenta
from qpelican.nn import fasttrain
digest = hashlib.sha256()
for case in ("8-bit, folded BatchNorm, dropout, beams, alpha", "float, BatchNorm, dropout, beams, alpha"):
    model = compiled({"n_constituents": 16, **CASES[case]})
    model.compile(optimizer=model.optimizer, loss=model.loss, jit_compile=True)  # the steps' XLA programs
    step = fasttrain.train_step(model)
    x = tf.constant(momenta(np.random.default_rng(1), 96, 16))
    y = tf.constant(np.random.default_rng(2).integers(0, 2, 96).astype(np.float32))
    for k in range(6):
        digest.update(np.float32(step(x, y, tf.range(32 * (k % 3), 32 * (k % 3 + 1)))).tobytes())
    for v in model.variables + model.optimizer.variables():
        digest.update(np.asarray(v.numpy()).tobytes())
print(os.environ["XLA_FLAGS"], digest.hexdigest())
"""


def test_the_xla_schedule_qpelican_asks_for_leaves_every_result_unchanged():
    """Importing qpelican asks XLA:CPU for its memory-optimised schedule (the steps' small XLA
    programs then run in the calling thread), unless the user's XLA_FLAGS chose one; both schedules
    train to the same weights, optimizer state and losses, bit for bit (quantized and float with
    BatchNorm, dropout and beams)."""
    import os
    import subprocess
    import sys

    def run(flags):
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | ({"XLA_FLAGS": flags} if flags else {})
        res = subprocess.run([sys.executable, "-c", SCHEDULE, os.path.dirname(__file__)], env=env, capture_output=True,
                             text=True, timeout=900)
        assert res.returncode == 0, res.stderr[-2000:]
        return res.stdout.split()[-2:]

    ours, theirs = run(None), run("--xla_cpu_enable_concurrency_optimized_scheduler=true")
    assert ours[0] == qpelican.XLA_SCHEDULE_FLAG
    assert theirs[0] == "--xla_cpu_enable_concurrency_optimized_scheduler=true"
    assert ours[1] == theirs[1]
