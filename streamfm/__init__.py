"""streamfm: a streaming FTRL Factorization Machine learner (alphaFM-compatible)."""

import os
import sys
import tempfile
import zlib

__version__ = "0.1.0"


def _numba_cache_dir():
    """A numba cache directory keyed by the hash of streamfm's sources.

    numba checks a cached kernel only against its own file's timestamp, not
    against the functions it inlined from other files; after an upgrade a
    kernel could silently run stale math. A directory per source hash rules
    that out (and works where site-packages is read-only).
    """
    # zlib, not hashlib: hashlib would map libcrypto into every process
    here = os.path.dirname(os.path.abspath(__file__))
    crc, adler = zlib.crc32(__version__.encode()), zlib.adler32(__version__.encode())
    for root, dirs, files in os.walk(here):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith(".py"):
                with open(os.path.join(root, name), "rb") as f:
                    data = name.encode() + b"\0" + f.read()
                crc, adler = zlib.crc32(data, crc), zlib.adler32(data, adler)
    tag = "%08x%08x" % (crc, adler)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = os.path.join(base, "streamfm", "numba-" + tag)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        path = os.path.join(tempfile.gettempdir(), "streamfm-numba-" + tag)
    return path


if not os.environ.get("NUMBA_CACHE_DIR"):
    _dir = _numba_cache_dir()
    if "numba" in sys.modules:
        sys.modules["numba"].config.CACHE_DIR = _dir
    else:
        os.environ["NUMBA_CACHE_DIR"] = _dir
