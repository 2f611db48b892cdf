"""Atomic file writes: a reader never sees a half-written checkpoint, image or download.

Everything minivae writes goes to a temporary file in the same directory, is flushed to disk,
and is then renamed over the target (os.replace is atomic on POSIX and Windows). If anything
fails midway, the temporary file is removed and the old target, if any, is left untouched.
"""
import contextlib
import json
import os
import tempfile


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
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_json(path, obj):
    """Write `obj` as indented JSON, atomically."""
    with atomic_writer(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
