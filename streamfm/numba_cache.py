"""Where numba caches streamfm's kernels: one directory per hash of the sources.

numba checks a cached kernel only against its own file, not against the
functions it inlined from other files; after an upgrade a kernel could
silently run stale math. Keeping streamfm's kernels in a directory named
after a hash of all of streamfm's sources rules that out (and works where
site-packages is read-only).

This is done with a cache locator of streamfm's own, put first in numba's
list of locators. It answers only for functions defined in streamfm's files,
so every other library's kernels are cached exactly where they were before:
importing streamfm sets no environment variable and changes no numba option.

The directory is ``$XDG_CACHE_HOME/streamfm/numba-<hash>`` (``~/.cache`` when
XDG_CACHE_HOME is unset), or ``$NUMBA_CACHE_DIR/streamfm-numba-<hash>`` when
the user chose a cache directory for numba; if neither can be written, a
directory of the same name under the system's temporary directory.
"""

import functools
import os
import tempfile
import zlib

from numba.core import caching, config

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_PACKAGE_REAL = os.path.realpath(PACKAGE_DIR)


@functools.lru_cache(maxsize=None)
def source_tag():
    """16 hex digits hashing the version and every .py file of the package."""
    from . import __version__

    # zlib, not hashlib: hashlib would map libcrypto into every process
    crc, adler = zlib.crc32(__version__.encode()), zlib.adler32(__version__.encode())
    for root, dirs, files in os.walk(PACKAGE_DIR):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        rel = os.path.relpath(root, PACKAGE_DIR)
        for name in sorted(files):
            if name.endswith(".py"):
                with open(os.path.join(root, name), "rb") as f:
                    data = os.path.join(rel, name).encode() + b"\0" + f.read()
                crc, adler = zlib.crc32(data, crc), zlib.adler32(data, adler)
    return "%08x%08x" % (crc, adler)


def cache_dirs():
    """The directories tried for the cache, in order (the first writable one is used)."""
    tag = source_tag()
    if config.CACHE_DIR:
        first = os.path.join(config.CACHE_DIR, "streamfm-numba-" + tag)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        first = os.path.join(base, "streamfm", "numba-" + tag)
    return [first, os.path.join(tempfile.gettempdir(), "streamfm-numba-" + tag)]


def is_streamfm_file(path):
    real = os.path.realpath(path)
    return real.startswith(_PACKAGE_REAL + os.sep)


class StreamfmCacheLocator(caching._SourceFileBackedLocatorMixin, caching._CacheLocator):
    """numba cache locator for functions in streamfm's files (None for any other)."""

    def __init__(self, py_func, py_file, root):
        self._py_file = py_file
        self._lineno = py_func.__code__.co_firstlineno
        # files of one name in two packages (cli.py, synth.py) get their own directory
        rel = os.path.relpath(os.path.dirname(os.path.realpath(py_file)), _PACKAGE_REAL)
        self._cache_path = root if rel == "." else os.path.join(root, rel)

    def get_cache_path(self):
        return self._cache_path

    @classmethod
    def from_function(cls, py_func, py_file):
        if not (os.path.exists(py_file) and is_streamfm_file(py_file)):
            return None
        for root in cache_dirs():
            self = cls(py_func, py_file, root)
            try:
                self.ensure_cache_path()
            except OSError:
                continue
            return self
        return None  # numba's own locators take over


def install():
    """Put the locator first in numba's list (once; other files fall through to numba's)."""
    classes = caching.CacheImpl._locator_classes
    if StreamfmCacheLocator not in classes:
        classes.insert(0, StreamfmCacheLocator)
