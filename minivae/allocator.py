"""reuse_freed_memory: a process-wide C allocator setting that the training scripts make at start-up."""
import ctypes
import ctypes.util

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers, from glibc's malloc.h


def reuse_freed_memory():
    """Ask the C allocator to keep freed memory for the next arrays; True if it could (glibc).

    Every op returns a new array, and a training step makes the same large ones again and
    again. glibc hands out blocks above its mmap threshold (at most 32 MB) straight from the
    kernel and gives a freed heap back once more than twice that threshold lies free at its top,
    so each step's big temporaries (the text VAE's (32, 22, 2000) logits are 5.6 MB) arrive as
    fresh pages, each page faulted in by the kernel. Keeping blocks up to 32 MB on the heap and
    trimming it only above 256 MB free avoids those faults without changing any number
    (docs/speed.md measures the difference). A process-wide setting, so only the training
    scripts call it; on other C libraries (macOS, Windows, musl) it does nothing and returns False.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    mallopt = getattr(ctypes.CDLL(name), "mallopt", None)
    if mallopt is None:  # not glibc
        return False
    if not mallopt(M_MMAP_THRESHOLD, 32 << 20):  # blocks up to 32 MB come from the heap
        return False
    return bool(mallopt(M_TRIM_THRESHOLD, 256 << 20))  # the heap is trimmed only above 256 MB free
