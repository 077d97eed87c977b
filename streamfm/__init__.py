"""streamfm: a streaming FTRL Factorization Machine learner (alphaFM-compatible)."""

import hashlib
import os
import sys
import tempfile

__version__ = "0.1.0"


def _numba_cache_dir():
    """A numba cache directory keyed by the hash of streamfm's sources.

    numba checks a cached kernel only against its own file's timestamp, not
    against the functions it inlined from other files; after an upgrade a
    kernel could silently run stale math. A directory per source hash rules
    that out (and works where site-packages is read-only).
    """
    here = os.path.dirname(os.path.abspath(__file__))
    h = hashlib.sha1(__version__.encode())
    for root, dirs, files in os.walk(here):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith(".py"):
                with open(os.path.join(root, name), "rb") as f:
                    h.update(name.encode())
                    h.update(f.read())
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = os.path.join(base, "streamfm", "numba-" + h.hexdigest()[:16])
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        path = os.path.join(tempfile.gettempdir(), "streamfm-numba-" + h.hexdigest()[:16])
    return path


if not os.environ.get("NUMBA_CACHE_DIR"):
    _dir = _numba_cache_dir()
    if "numba" in sys.modules:
        sys.modules["numba"].config.CACHE_DIR = _dir
    else:
        os.environ["NUMBA_CACHE_DIR"] = _dir
