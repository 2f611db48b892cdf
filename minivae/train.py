"""What the training scripts share: process set-up, and (one by one) the helpers both scripts use.

The training loops themselves stay in scripts/, visible top to bottom.
"""
import ctypes
import ctypes.util


def reuse_freed_memory():
    """Ask the C allocator to keep freed memory for the next arrays; True if it could (glibc).

    Every op returns a new array, and a training step makes the same large ones again and
    again. glibc hands out blocks above its mmap threshold (at most 32 MB) straight from the
    kernel and gives a freed heap back once more than twice that threshold lies free at its top,
    so each step's big temporaries (the text VAE's (32, 22, 2000) logits are 5.6 MB) arrive as
    fresh pages: about 1,200 page faults and 2 ms of kernel time per step there. Keeping blocks
    up to 32 MB on the heap and trimming it only above 256 MB free removes them (~10% faster, the
    same numbers). A process-wide setting, so only the training scripts call it; on other C
    libraries (macOS, Windows, musl) it does nothing and returns False.
    """
    name = ctypes.util.find_library("c")
    mallopt = getattr(ctypes.CDLL(name), "mallopt", None) if name else None
    if mallopt is None:
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # from glibc's malloc.h
    return bool(mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(M_TRIM_THRESHOLD, 256 << 20))
