"""The checkpoint of one seed's training: what is committed after each epoch, and how it resumes.

A seed's directory holds ``state.json`` (the commit point: epochs done, phase, best-so-far,
history, timing, name of the checkpoint directory), ``ckpt-<epoch>/`` (a ``tf.train.Checkpoint``
of model and optimizer) and ``best.weights.h5`` (weights of the best epoch so far). An epoch is
committed by renaming its checkpoint directory into place and then replacing state.json, so a
kill at any moment leaves the previous commit intact.
"""
import json
import os
import shutil

from qpelican.core.errors import QpelicanError
from qpelican.core.io import atomic_path, swap_dir, tmp_name, write_json

STATE = "state.json"
BEST = "best.weights.h5"
OUTPUTS = ("state.json", "best.weights.h5", "results.json", "model.keras", "history.json")


def new_state(seed, total_epochs, n_train):
    """The state of a seed that has trained no epoch."""
    return {"seed": seed, "total_epochs": total_epochs, "n_train": n_train, "epochs_done": 0,
            "checkpoint": None, "best_val_loss": None, "best_epoch": None, "history": [],
            "train_seconds": 0.0, "eval_seconds": 0.0}


def open_state(out_dir, seed, total_epochs, n_train, resume):
    """The committed state to continue from (resume), or a fresh one after clearing old outputs.

    Raises QpelicanError when the checkpoint belongs to another seed, schedule or training set.
    """
    path = os.path.join(out_dir, STATE)
    if resume and os.path.exists(path):
        with open(path) as f:
            state = json.load(f)
        if state.get("seed") != seed or state.get("total_epochs") != total_epochs or state.get("n_train") != n_train:
            raise QpelicanError(
                f"{out_dir}: the checkpoint was written for seed {state.get('seed')}, {state.get('total_epochs')} "
                f"epochs, {state.get('n_train')} training jets; this run has seed {seed}, {total_epochs} epochs, "
                f"{n_train} jets. Resume with the same recipe and data, or start a new --out directory.")
        return state
    if not resume:
        clear_outputs(out_dir)
    return new_state(seed, total_epochs, n_train)


def clear_outputs(out_dir):
    """Remove a seed's checkpoints and outputs (a fresh run in an old directory)."""
    for name in os.listdir(out_dir):
        p = os.path.join(out_dir, name)
        if name.startswith("ckpt-"):
            shutil.rmtree(p, ignore_errors=True)
        elif name in OUTPUTS:
            os.remove(p)


def save_best(model, out_dir):
    """Weights of a new best epoch, replacing the previous best atomically."""
    with atomic_path(os.path.join(out_dir, BEST)) as tmp:
        model.save_weights(tmp)


def commit_epoch(out_dir, state, ckpt, epoch, phase_index, row, t_train, t_eval):
    """Commit a finished epoch: its checkpoint directory (atomic rename), then state.json."""
    name = f"ckpt-{epoch + 1:04d}"
    tmpdir = tmp_name(os.path.join(out_dir, "." + name))
    shutil.rmtree(tmpdir, ignore_errors=True)
    ckpt.write(os.path.join(tmpdir, "ckpt"))
    swap_dir(tmpdir, os.path.join(out_dir, name))
    old = state["checkpoint"]
    state.update(epochs_done=epoch + 1, checkpoint=name, phase_index=phase_index)
    state["history"].append(row)
    state["train_seconds"] += t_train
    state["eval_seconds"] += t_eval
    write_json(os.path.join(out_dir, STATE), state)
    if old and old != name:
        shutil.rmtree(os.path.join(out_dir, old), ignore_errors=True)


def checkpoint_path(out_dir, state):
    """Prefix of the committed tf.train.Checkpoint, for ``ckpt.read``."""
    return os.path.join(out_dir, state["checkpoint"], "ckpt")


def save_model(model, path):
    """model.keras, written beside and renamed into place."""
    with atomic_path(path) as tmp:
        model.save(tmp)
