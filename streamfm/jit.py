"""Numba housekeeping: the one-time compile notice and the compiler's memory.

Kernels are compiled on first use and cached on disk (``cache=True``); a
later run only loads them. Loading still maps LLVM (~70 MB of resident
code pages) although nothing is compiled again, so once a command has
loaded every kernel it needs, those clean file-backed pages are handed back
to the kernel (MADV_PAGEOUT; they fault back in if LLVM is ever needed).
"""

import ctypes
import os
import sys

_MADV_PAGEOUT = 21


def cache_is_cold(dispatchers):
    """True when any of these njit functions has no on-disk cache index yet."""
    for d in dispatchers:
        try:
            cache = d._cache  # numba's FunctionCache; private but stable for years
            index = os.path.join(cache._cache_path, cache._index_name)
        except AttributeError:
            return False
        if not os.path.exists(index):
            return True
    return False


def compile_notice(dispatchers, log, quiet=False):
    """Say once, before a slow first run, that it compiles."""
    if not quiet and cache_is_cold(dispatchers):
        log("streamfm: compiling numba kernels (first run only, about a minute; cached afterwards)")


def release_compiler_memory():
    """Page out LLVM's code pages; a no-op where that is not supported."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
        madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        released = 0
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 6 or "llvmlite" not in parts[5]:
                    continue
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                if madvise(lo, hi - lo, _MADV_PAGEOUT) == 0:
                    released += hi - lo
        return released
    except (OSError, AttributeError, ValueError):
        return 0
