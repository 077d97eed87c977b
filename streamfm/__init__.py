"""streamfm: a streaming FTRL Factorization Machine learner (alphaFM-compatible).

The Python API (docs/design.md, "The Python API"):

- ``FM``: the model as a Python object (``partial_fit``, ``predict_proba``,
  ``learn_one``/``predict_proba_one``, ``explain``, ``embeddings``, ``save``, ``load``);
- ``FMClassifier``: the same as a scikit-learn style estimator;
- ``Recall``: FM recall (train on clicks, build an index, search);
- the exceptions of ``streamfm.errors``.

Importing streamfm changes no global state of numba or of any other library;
the classes above are imported on first use, so the commands start fast.
"""

import logging as _logging

from . import numba_cache as _numba_cache
from .errors import (BadInputError, ModelFormatError, NotFittedError, OutputError, ParameterError,
                     SameFileError, StreamFMError)

__version__ = "0.1.0"

# the library's warnings (bad input lines) reach stderr only through the
# application's logging configuration, never logging's last-resort handler
_logging.getLogger("streamfm").addHandler(_logging.NullHandler())

# before any kernel is defined: streamfm's kernels cache per source hash
_numba_cache.install()

_LAZY = {"FM": ".fm", "Report": ".fm", "BadLine": ".fm", "PassMetrics": ".fm", "GridResult": ".fm",
         "CacheError": ".cache", "FMClassifier": ".estimator",
         "Recall": ".recall.api"}

__all__ = ["FM", "FMClassifier", "Recall", "Report", "BadLine", "PassMetrics", "GridResult", "CacheError", "StreamFMError", "BadInputError",
           "ModelFormatError", "OutputError", "SameFileError", "ParameterError", "NotFittedError",
           "__version__"]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError("module 'streamfm' has no attribute %r" % name)


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
