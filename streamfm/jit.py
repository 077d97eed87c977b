"""Numba housekeeping: the one-time compile notice and the compiler's memory.

Kernels are compiled on first use and cached on disk (``cache=True``); a
later run only loads them. Loading still maps LLVM (~70 MB of resident
code pages) although nothing is compiled again, so once a command has
loaded every kernel it needs, those pages are dropped from the process
(they stay in the page cache and fault back in if LLVM is ever needed).
"""

import ctypes
import os
import sys

_MADV_DONTNEED = 4
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


def _llvm_mappings():
    """(start, end, droppable) of LLVM's file mappings in this process.

    Droppable: not writable and without a single private (copy-on-write)
    page, i.e. every resident page is an unmodified page of the file, which
    MADV_DONTNEED may discard (it is read back from the file if touched).
    """
    out = []
    cur = None
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(None, 5)
            if "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
                cur = None
                if len(head) == 6 and "llvmlite" in head[5]:
                    lo, hi = (int(x, 16) for x in head[0].split("-"))
                    cur = [lo, hi, "w" not in head[1]]
                    out.append(cur)
            elif cur is not None and head[0] == "Anonymous:" and int(head[1]) != 0:
                cur[2] = False
    return out


def release_compiler_memory():
    """Drop LLVM's code pages from the resident set; a no-op where unsupported."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
        madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        released = 0
        for lo, hi, droppable in _llvm_mappings():
            # PAGEOUT never loses data but skips pages other processes map
            # too; DONTNEED drops them from this process only, safe for
            # pages that are plain copies of the file
            advice = _MADV_DONTNEED if droppable else _MADV_PAGEOUT
            if madvise(lo, hi - lo, advice) == 0:
                released += hi - lo
        return released
    except (OSError, AttributeError, ValueError):
        return 0


# -- prefetch --------------------------------------------------------------
# numba has no prefetch; this emits LLVM's. Used to start loading the model
# rows of the next sample while the current one computes: with a model far
# larger than the caches, training is waiting on memory otherwise.

from llvmlite import ir as _ir  # noqa: E402
from numba import types as _types  # noqa: E402
from numba.core import cgutils as _cgutils  # noqa: E402
from numba.extending import intrinsic as _intrinsic  # noqa: E402


def _emit_prefetch(context, builder, aryty, ary_val, index_vals, index_types):
    ary = context.make_array(aryty)(context, builder, ary_val)
    idx = [context.cast(builder, v, t, _types.intp) for v, t in zip(index_vals, index_types)]
    ptr = _cgutils.get_item_pointer(context, builder, aryty, ary, idx, wraparound=False)
    i8p = builder.bitcast(ptr, _ir.IntType(8).as_pointer())
    i32 = _ir.IntType(32)
    fnty = _ir.FunctionType(_ir.VoidType(), [i8p.type, i32, i32, i32])
    fn = _cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
    # read, high temporal locality, data cache
    builder.call(fn, [i8p, _ir.Constant(i32, 0), _ir.Constant(i32, 3), _ir.Constant(i32, 1)])
    return context.get_dummy_value()


@_intrinsic
def prefetch(typingctx, arr, row, col):
    """Hint the CPU to fetch the cache line of arr[row, col] (a 2-D array)."""
    if not (isinstance(arr, _types.Array) and arr.ndim == 2 and isinstance(row, _types.Integer)
            and isinstance(col, _types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        return _emit_prefetch(context, builder, signature.args[0], args[0], args[1:], signature.args[1:])

    return _types.void(arr, row, col), codegen


@_intrinsic
def prefetch1(typingctx, arr, i):
    """Hint the CPU to fetch the cache line of arr[i] (a 1-D array)."""
    if not (isinstance(arr, _types.Array) and arr.ndim == 1 and isinstance(i, _types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        return _emit_prefetch(context, builder, signature.args[0], args[0], args[1:], signature.args[1:])

    return _types.void(arr, i), codegen


def over_rows(kernel, n, threads=None):
    """Run ``kernel(r0, r1)`` (a nogil kernel's call on rows r0..r1-1, writing
    rows of its own) over 0..n-1 on ``threads`` threads (default: the cores,
    at most 4); returns the calls' results in row order. The rows are cut
    into a few pieces per thread, each taken by the next free thread: rows
    whose work differs (a merge's rows one model trained and rows several
    did) still keep every thread busy to the end. Small jobs run in the
    caller's thread: a thread costs more than it saves there.
    """
    if threads is None:
        threads = min(4, os.cpu_count() or 1)
    if threads <= 1 or n < 1 << 16:
        return [kernel(0, n)]
    from concurrent.futures import ThreadPoolExecutor

    pieces = min(4 * threads, n >> 14)
    cuts = [n * i // pieces for i in range(pieces + 1)]
    with ThreadPoolExecutor(threads, thread_name_prefix="streamfm-rows") as pool:
        return list(pool.map(kernel, cuts[:-1], cuts[1:]))
