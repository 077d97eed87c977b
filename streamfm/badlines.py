"""The bad-input policy shared by every command that reads samples.

A bad line is counted, reported with its line number and reason (the first
few on stderr, all of them in ``--bad-lines FILE`` as 'LINE<TAB>REASON<TAB>line',
LINE prefixed with 'FILE:' for a command's secondary inputs), then skipped;
with ``--on-error stop`` the first one stops the run.
"""

import os
import threading
from collections import namedtuple

from . import parse
from .errors import BadInputError as BadInputStop  # one class; the commands' name for it
from .output import open_output

__all__ = ["BadInputStop", "BadLineLog", "RunSummary", "printable"]

_opened = set()  # bad-lines files this process has started


_Bad = namedtuple("_Bad", "bad_line bad_reason bad_col")  # some of a parsed block's bad lines


def printable(raw):
    """Line bytes for a terminal: control bytes escaped, never sent raw."""
    text = raw.decode("utf-8", "backslashreplace")
    return "".join(c if c >= " " and c != "\x7f" else "\\x%02x" % ord(c) for c in text)


class RunSummary:
    """What every run over an input counts: ``lines`` read, ``bad`` lines and
    ``bad_description`` (their count per reason, one line), values
    ``clipped`` and ``seconds``. The summaries of fm_train, fm_predict,
    fm_recall and fm_sample (and the API's Report) are these plus their own
    counts, so the policy's numbers are read, and named, one way.
    """

    def __init__(self):
        self.lines = 0
        self.bad = 0
        self.bad_description = ""
        self.clipped = 0
        self.seconds = 0.0

    def take_bad(self, log):
        """The counts of the BadLineLog ``log`` (of this run's input)."""
        self.bad = log.count
        self.bad_description = log.describe()


class BadLineLog:
    """The bad-input policy of one input: counts bad lines, prints the first
    few, keeps them all in the --bad-lines file, stops as the user asked.

    Parameters
    ----------
    opts : streamfm.train.Options
        ``on_error`` ("skip" or "stop"), ``max_bad_fraction`` (None: no
        limit), ``bad_lines`` (a path or None), ``quiet``, ``max_errors_shown``.
    log : callable
        Where the first few bad lines are told (one string each).
    source : str
        The input's name in messages: "input" for the main input, else a
        secondary input (a catalog, a user table), whose lines in the
        --bad-lines file are prefixed 'SOURCE:'.
    file : output.Output, optional
        A --bad-lines file shared with the other inputs of the command (the
        caller closes it); by default the log opens ``opts.bad_lines`` itself.
    """

    def __init__(self, opts, log, source="input", file=None):
        self.opts = opts
        self.log = log
        self.source = source
        self.count = 0
        self.by_reason = {}
        self.first = None
        self.lock = threading.Lock()
        self.file = file
        self._own = False
        if file is None and opts.bad_lines:
            # a command that reads several files (recall: catalog, clicks)
            # keeps one bad-lines file: the first log replaces it (atomically,
            # complete when the log closes), the others add to it
            key = os.path.abspath(opts.bad_lines)
            self.file = open_output(opts.bad_lines, append=key in _opened)
            self._own = True
            _opened.add(key)

    def _record(self, line_no, reason, col, raw):
        self.count += 1
        self.by_reason[reason] = self.by_reason.get(reason, 0) + 1
        if self.first is None or line_no < self.first[0]:
            self.first = (line_no, reason, col)
        shown = self.opts.max_errors_shown
        if not self.opts.quiet and self.count <= shown:
            text = printable(raw.rstrip(b"\r")[:120])
            self.log("%s line %d: %s (column %d): %s" % (self.source, line_no, reason, col + 1, text))
        elif not self.opts.quiet and self.count == shown + 1:
            self.log("%s: more bad lines; the counts follow at the end%s" % (
                self.source, "" if self.file else " (--bad-lines FILE keeps them all)"))
        if self.file:
            where = b"%d" % line_no if self.source == "input" else (
                self.source.encode("utf-8", "surrogateescape") + b":%d" % line_no)
            self.file.write(where + b"\t" + reason.encode("utf-8", "backslashreplace") + b"\t" + raw + b"\n")

    def add(self, block, parsed):
        """Record the bad lines of one parsed block (no stopping: see ``check``)."""
        if not len(parsed.bad_line):
            return
        lines = bytes(block.data).split(b"\n")
        with self.lock:
            for li, reason, col in zip(parsed.bad_line.tolist(), parsed.bad_reason.tolist(),
                                       parsed.bad_col.tolist()):
                self._record(block.first_line + li, parse.REASONS[reason], col,
                             lines[li] if li < len(lines) else b"")

    def check(self, block, parsed, lines, what=""):
        """The policy for one parsed block, ``lines`` read so far in all:
        record its bad lines, then raise BadInputStop under --on-error stop or
        past --max-bad-fraction (``what`` ends the message: ", no model written")."""
        if len(parsed.bad_line):
            if self.opts.on_error == "stop":
                # the run ends at its first bad line: the block's later ones
                # are not read as far as the user is concerned (no warnings
                # for them, no promise of counts that never come)
                first = int(parsed.bad_line.argmin())
                i = slice(first, first + 1)
                self.add(block, _Bad(parsed.bad_line[i], parsed.bad_reason[i], parsed.bad_col[i]))
                raise BadInputStop(self.stop_message(what))
            self.add(block, parsed)
        self.check_fraction(lines, what=what)

    def add_record(self, line_no, reason, col, raw):
        """Record one bad line found outside the line parser (fm_sample's log
        formats: ``reason`` is text); raises BadInputStop under --on-error stop."""
        with self.lock:
            self._record(line_no, reason, col, raw)
        if self.opts.on_error == "stop":
            raise BadInputStop(self.stop_message())

    def check_fraction(self, lines, final=False, what=""):
        """Raise BadInputStop when more than --max-bad-fraction of ``lines``
        were bad. Until the end (``final``) a run waits for 1000 lines: a bad
        line early on is no trend."""
        frac = self.opts.max_bad_fraction
        if frac is not None and (final or lines >= 1000) and self.count > frac * max(lines, 1):
            raise BadInputStop("%s: %d of %d lines were bad (more than --max-bad-fraction %g)%s"
                               % (self.source, self.count, lines, frac, what))

    def stop_message(self, what=""):
        line_no, reason, col = self.first
        return "%s line %d: %s (column %d); stopped (--on-error stop)%s" % (
            self.source, line_no, reason, col + 1, what)

    def close(self):
        """Complete the bad-lines file this log opened (also after a failed
        run: it says why); a shared one is the caller's to close."""
        if self.file and self._own:
            f, self.file = self.file, None
            f.close()

    def describe(self):
        return ", ".join("%s: %d" % (r, c) for r, c in sorted(self.by_reason.items()))
