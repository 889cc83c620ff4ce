"""Files a physicist keeps: atomic writes, directory swaps and the per-directory lock.

Every file qpelican writes for a user appears complete or not at all:

* :func:`atomic_path` gives a temporary name beside the target (same extension, so savers that
  pick the format by suffix keep working) and moves it over the target with ``os.replace`` only
  when the block succeeds; :func:`write_json` and :func:`write_text` use it.
* :func:`swap_dir` replaces a whole directory by a freshly built one (build beside, then two
  renames), so a failed build leaves the previous directory untouched.
* :func:`dir_lock` is the exclusive lock of a run, tune or export directory
  (``fcntl.flock`` on ``DIR/.qpelican.lock``). The kernel drops the lock when its process ends,
  however it ends, so a lock left by a dead process never blocks; the file records who holds it
  (pid, host, command, start time) for the message a second process gets.
"""
import contextlib
import datetime
import fcntl
import json
import os
import shutil
import socket
import sys

from qpelican.core.errors import QpelicanError

LOCK_NAME = ".qpelican.lock"


def json_default(o):
    """numpy scalars and arrays as plain JSON; anything else by its string form."""
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def tmp_name(path, tag=None):
    """A temporary name beside ``path`` keeping its extension(s): ``dir/model.keras`` ->
    ``dir/model.tmp<pid>.keras``, ``best.weights.h5`` -> ``best.tmp<pid>.weights.h5``."""
    path = os.fspath(path)
    head, base = os.path.split(path)
    lead = len(base) - len(base.lstrip("."))
    stem, dot, ext = base[lead:].partition(".")
    tag = f"tmp{os.getpid()}" if tag is None else tag
    return os.path.join(head, base[:lead] + stem + f".{tag}" + (dot + ext if dot else ""))


@contextlib.contextmanager
def atomic_path(path):
    """``with atomic_path(p) as tmp: save(tmp)``: ``p`` appears complete (``os.replace``) when the
    block succeeds; on any error the temporary file is removed and ``p`` is left as it was."""
    path = os.fspath(path)
    tmp = tmp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            if os.path.isdir(tmp) and not os.path.islink(tmp):
                shutil.rmtree(tmp)
            else:
                os.remove(tmp)
        raise


def write_text(path, text):
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)


def write_json(path, obj):
    """Write ``obj`` as indented JSON to ``path`` atomically (never a half-written file)."""
    write_text(path, json.dumps(obj, indent=2, default=json_default) + "\n")


def swap_dir(new_dir, final_dir):
    """Put the finished directory ``new_dir`` in place of ``final_dir`` (which may not exist).

    Two renames on one file system: ``final_dir`` -> a hidden ``.old`` name, ``new_dir`` ->
    ``final_dir``; then the old one is deleted. An interruption between the renames leaves both
    complete directories on disk (the old one under ``.<name>.old<pid>``), never a half-written one.
    """
    new_dir, final_dir = os.fspath(new_dir), os.fspath(final_dir).rstrip(os.sep)
    old = None
    if os.path.lexists(final_dir):
        head, base = os.path.split(final_dir)
        old = os.path.join(head, f".{base}.old{os.getpid()}")
        if os.path.lexists(old):
            shutil.rmtree(old, ignore_errors=True)
        os.replace(final_dir, old)
    os.replace(new_dir, final_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def check_out_dir(path, option="--out"):
    """Refuse an output directory path that is an existing file (or below one)."""
    p = os.fspath(path)
    probe = p
    while probe and not os.path.exists(probe):
        parent = os.path.dirname(probe.rstrip(os.sep))
        if parent == probe:
            break
        probe = parent
    if probe and os.path.exists(probe) and not os.path.isdir(probe):
        where = "is" if probe == p else f"is below {probe}, which is"
        raise QpelicanError(f"{option} {p} {where} an existing file, not a directory; choose a directory path "
                            f"(new or existing), e.g. {option} {os.path.splitext(p)[0] or p}_out.")
    return p


def _holder_text(info):
    if not info:
        return "another process"
    cmd = info.get("command") or "?"
    return (f"pid {info.get('pid', '?')} on host {info.get('host', '?')} (started {info.get('started', '?')}, "
            f"command: {cmd})")


def lock_holder(directory):
    """Who holds ``directory``'s lock as recorded in its lock file (a dict), or None."""
    try:
        with open(os.path.join(os.fspath(directory), LOCK_NAME)) as f:
            info = json.loads(f.read() or "null")
        return info if isinstance(info, dict) else None
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def dir_lock(directory, what="directory", option="--out"):
    """Exclusive lock of a run / tune / export directory for the duration of the block.

    Creates the directory. Raises :class:`QpelicanError` naming the process holding the lock
    (pid, host, command) when another process has it. Locks of processes that ended (killed,
    crashed) are released by the kernel and do not block.
    """
    directory = check_out_dir(directory, option)
    created = not os.path.isdir(directory)
    try:
        os.makedirs(directory, exist_ok=True)
        fd = os.open(os.path.join(directory, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise QpelicanError(f"{option} {directory}: cannot create the {what} or its lock file ({exc.strerror}); "
                            "choose a writable location.") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            info = lock_holder(directory)
            raise QpelicanError(
                f"{what} {directory} is in use by {_holder_text(info)}. Two qpelican processes must not write "
                f"the same directory; wait for that process to finish (or stop it), or choose another {option}."
            ) from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv),
                "started": datetime.datetime.now().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        try:
            yield directory
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            if created:  # a directory this lock made and nothing filled (a command that failed early)
                with contextlib.suppress(OSError):
                    if os.listdir(directory) == [LOCK_NAME]:
                        os.remove(os.path.join(directory, LOCK_NAME))
                        os.rmdir(directory)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def run_model_path(run, error=None, what="model"):
    """``RUN`` (a ``qpelican fit`` directory holding model.keras) or a .keras file -> the model path.

    Raises ``error`` (default :class:`qpelican.core.errors.QpelicanError`) naming the fix when absent.
    """
    error = error or QpelicanError
    p = os.fspath(run)
    path = os.path.join(p, "model.keras") if os.path.isdir(p) else p
    if not os.path.isfile(path):
        raise error(f"{what} {p}: no {'model.keras in this directory' if os.path.isdir(p) else 'such file or directory'}; "
                    "give a run directory written by `qpelican fit` or a .keras model file.")
    return path
