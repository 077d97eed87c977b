"""The bad-input policy shared by every command that reads samples.

A bad line is counted, reported with its line number and reason (the first
few on stderr, all of them in ``--bad-lines FILE`` as 'LINE<TAB>REASON<TAB>line',
LINE prefixed with 'FILE:' for a command's secondary inputs), then skipped;
with ``--on-error stop`` the first one stops the run.
"""

import os
import threading

from . import parse
from .errors import BadInputError as BadInputStop  # one class; the commands' name for it
from .output import open_output

__all__ = ["BadInputStop", "BadLineLog", "printable"]

_opened = set()  # bad-lines files this process has started


def printable(raw):
    """Line bytes for a terminal: control bytes escaped, never sent raw."""
    text = raw.decode("utf-8", "backslashreplace")
    return "".join(c if c >= " " and c != "\x7f" else "\\x%02x" % ord(c) for c in text)


class BadLineLog:
    """Counts bad lines, prints the first few, optionally saves them all."""

    def __init__(self, opts, log, source="input"):
        self.opts = opts
        self.log = log
        self.source = source
        self.count = 0
        self.by_reason = {}
        self.first = None
        self.lock = threading.Lock()
        self.file = None
        if opts.bad_lines:
            # a command that reads several files (recall: catalog, clicks)
            # keeps one bad-lines file: the first log replaces it (atomically,
            # complete when the log closes), the others add to it
            key = os.path.abspath(opts.bad_lines)
            self.file = open_output(opts.bad_lines, append=key in _opened)
            _opened.add(key)

    def add(self, block, parsed):
        """Record the bad lines of one parsed block."""
        if not len(parsed.bad_line):
            return
        lines = bytes(block.data).split(b"\n")
        with self.lock:
            for li, reason, col in zip(parsed.bad_line.tolist(), parsed.bad_reason.tolist(),
                                       parsed.bad_col.tolist()):
                line_no = block.first_line + li
                self.count += 1
                self.by_reason[reason] = self.by_reason.get(reason, 0) + 1
                raw = lines[li] if li < len(lines) else b""
                if self.first is None or line_no < self.first[0]:
                    self.first = (line_no, reason, col)
                shown = self.opts.max_errors_shown
                if not self.opts.quiet and self.count <= shown:
                    text = printable(raw.rstrip(b"\r")[:120])
                    self.log("%s line %d: %s (column %d): %s" % (
                        self.source, line_no, parse.REASONS[reason], col + 1, text))
                elif not self.opts.quiet and self.count == shown + 1:
                    self.log("%s: more bad lines; the counts follow at the end%s" % (
                        self.source, "" if self.file else " (--bad-lines FILE keeps them all)"))
                if self.file:
                    where = b"%d" % line_no if self.source == "input" else (
                        self.source.encode("utf-8", "surrogateescape") + b":%d" % line_no)
                    self.file.write(where + b"\t%s\t" % parse.REASONS[reason].encode() + raw + b"\n")

    def stop_message(self, what):
        line_no, reason, col = self.first
        return "line %d: %s (column %d); stopped (--on-error stop)%s" % (
            line_no, parse.REASONS[reason], col + 1, what)

    def close(self):
        """Complete the bad-lines file (also after a failed run: it says why)."""
        if self.file:
            f, self.file = self.file, None
            f.close()

    def describe(self):
        return ", ".join("%s: %d" % (parse.REASONS[r], c) for r, c in sorted(self.by_reason.items()))
