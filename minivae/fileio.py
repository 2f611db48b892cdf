"""Atomic file writes: a reader never sees a half-written checkpoint, image or download.

Everything minivae writes goes to a temporary file in the same directory, is flushed to disk,
and is then renamed over the target (os.replace is atomic on POSIX and Windows). If anything
fails midway, the temporary file is removed and the old target, if any, is left untouched.
"""
import contextlib
import json
import os
import re
import tempfile

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
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
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
