"""The exceptions streamfm raises, in one place.

Every library call raises one of these (or a plain ``TypeError`` for an
argument of the wrong kind); the commands turn them into their exit codes:
``BadInputError`` exits 3, the others 1, a bad flag 2. ``str(e)`` is always a
one-line explanation fit for a user.

- ``StreamFMError``: the base; ``except StreamFMError`` catches them all.
- ``BadInputError``: bad input lines stopped a run (``on_error="stop"`` met a
  bad line, or more than ``max_bad_fraction`` of the lines were bad). Raised
  by the API with ``.report``, the run's report up to the stop.
- ``ModelFormatError``: a model or index file that cannot be used (missing,
  truncated, corrupted, another factor count, a stripped model where the
  training state is needed) or cannot be written.
- ``OutputError``: an output that cannot be written (full disk, closed
  standard output, no permission); ``SameFileError``, one of them: an output
  that is an input of the same command (the commands exit 2 on it).
- ``ParameterError``: a hyper-parameter or option out of its range (also a
  ``ValueError``).
- ``NotFittedError``: a model asked to predict before it has learnt anything
  (also a ``ValueError`` and ``AttributeError``, as scikit-learn's is).
"""


class StreamFMError(Exception):
    """Base of every exception streamfm raises on purpose."""


class BadInputError(StreamFMError):
    """A run stopped because of bad input (``on_error="stop"``, ``max_bad_fraction``)."""

    report = None


class ModelFormatError(StreamFMError):
    """A model (or index) file that cannot be used; str() is a one-line explanation."""


class OutputError(StreamFMError):
    """An output that cannot be written; str() is a one-line message naming it."""

    def __init__(self, msg, code=None):
        super().__init__(msg)
        self.errno = code


class SameFileError(OutputError):
    """An output that is an input (or another output) of the same command."""


class ParameterError(StreamFMError, ValueError):
    """A hyper-parameter or option outside its range."""


class NotFittedError(StreamFMError, ValueError, AttributeError):
    """The model has not been trained (or loaded) yet."""
