"""Atomic file writes, and the lock file that keeps a folder to one run.

Everything minivae writes goes to a temporary file in the same directory, is flushed to disk,
and is then renamed over the target (os.replace is atomic on POSIX and Windows). If anything
fails midway, the temporary file is removed and the old target, if any, is left untouched.
"""
import contextlib
import json
import os
import re
import socket
import tempfile
import time

# The temporary file of atomic_writer(".../name") is ".../.name.XXXXXXXX.tmp": mkstemp's 8 random
# characters between our prefix and suffix. Nothing else we know writes names of this form.
TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp$")


@contextlib.contextmanager
def atomic_writer(path, mode="wb"):
    """Open a temporary file next to `path`; on success rename it to `path`, on error delete it."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes owner-only files; give the usual mode
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        if isinstance(err, OSError) and err.errno is not None and err.filename is None:
            err.filename = path  # a failed write names no file: name the target
        raise


def remove_stale_temp_files(directory, targets=lambda name: True):
    """Delete the temporary files atomic_writer left in `directory`; return their names, sorted.

    A process killed with SIGKILL (or a power cut) during a save cannot remove its temporary
    file; the target itself is untouched, so the file is pure garbage. Only names matching
    TEMP_NAME whose target name passes `targets` are removed, so a file being written by another
    program (a log of the run, say) can be spared by leaving its name out.
    """
    removed = []
    for name in sorted(os.listdir(directory)):
        match = TEMP_NAME.match(name)
        if match and targets(match["target"]) and os.path.isfile(os.path.join(directory, name)):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(directory, name))
                removed.append(name)
    return removed


def write_json(path, obj):
    """Write `obj` as indented JSON, atomically."""
    with atomic_writer(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


# ------------------------------------------------------------------ one process per folder
class LockHeld(RuntimeError):
    """The lock file is held by a process that is still running (or on another host); `owner` is its content."""

    def __init__(self, path, owner):
        super().__init__(f"{path} is held by PID {owner.get('pid')} on {owner.get('host')}")
        self.path, self.owner = path, owner


def _read_lock(path):
    """The owner a lock file names ({"pid", "host", ...}), or None if it is empty or unreadable."""
    try:
        with open(path) as f:
            owner = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(owner, dict) or not isinstance(owner.get("pid"), int):
        return None
    return owner


def _is_running(pid):
    """Whether process `pid` exists on this host (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, and belongs to another user
        return True
    return True


def take_lock(path, **about):
    """Create the lock file `path` naming this process (PID, host, and `about`); return a note or None.

    The file is created with O_CREAT | O_EXCL, which the kernel makes atomic: of two processes
    that try at once, exactly one succeeds. If it already exists, its owner is read: a process
    on this host that no longer runs (killed before it could remove the file) left a stale lock,
    which is taken over, and the returned note says so. Otherwise LockHeld is raised. A lock
    being written at that instant (empty for a moment) is read again; one left empty or
    unreadable for 5 seconds counts as stale.
    """
    me = {"pid": os.getpid(), "host": socket.gethostname(), **about}
    note = None
    for _ in range(50):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _read_lock(path)
            stale = None
            if owner is None:
                with contextlib.suppress(FileNotFoundError):
                    if time.time() - os.path.getmtime(path) > 5:
                        stale = "its lock file is empty or unreadable"
            elif owner.get("host") != me["host"] or _is_running(owner["pid"]):
                raise LockHeld(path, owner) from None
            else:
                stale = f"PID {owner['pid']} on {owner['host']} no longer runs"
            if stale is None:
                time.sleep(0.1)
                continue
            _take_over(path, owner)
            note = f"took over the lock {path} of a run that ended without removing it ({stale})"
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return note
    raise LockHeld(path, _read_lock(path) or {})


def _take_over(path, owner):
    """Remove the stale lock `path`, unless another process has replaced it since `owner` was read.

    The file is first renamed to a name of this process's own, so that of two processes taking
    over at once only one gets it; if what it got is not the stale lock that was read, it is put back.
    """
    claimed = f"{path}.{os.getpid()}.stale"
    try:
        os.rename(path, claimed)
    except FileNotFoundError:  # another process took it over first
        return
    if _read_lock(claimed) != owner:
        os.replace(claimed, path)
        return
    os.remove(claimed)


def release_lock(path):
    """Remove the lock file `path` if this process holds it."""
    owner = _read_lock(path)
    if owner is not None and owner["pid"] == os.getpid() and owner.get("host") == socket.gethostname():
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
