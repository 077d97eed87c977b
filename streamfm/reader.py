"""A background thread that cuts a byte stream into blocks of whole lines.

The reader only reads and cuts after the last '\\n' it has; parsing and
everything after it happen in the worker threads, in numba. Blocks carry
their sequence number and first line number so results can be put back in
input order and bad lines reported with their line numbers.

A block is handed out when it reaches ``block_size`` bytes, or, when the
input pauses (a slow pipe, ``tail -f``; a short read from a stream without
a descriptor), as soon as it holds complete lines and no more data came for
``linger`` seconds. The thread waits with
``select``, so ``stop`` takes effect within a tenth of a second even while
the pipe is silent.

A UTF-8 byte order mark at the very start of the stream (what some Windows
editors and exporters write) is dropped here, for every command that reads
samples: it is not part of the first line's label.
"""

import os
import queue
import select
import threading
import time

import numpy as np

# Small enough that a block's parse arrays stay under numpy's 4 MB huge-page
# threshold (a 1 MB block costs ~10 MB more resident memory); large enough
# that the per-block Python work is noise.
BLOCK_SIZE = 1 << 18
_POLL = 0.1
BOM = b"\xef\xbb\xbf"


class Block:
    __slots__ = ("seq", "first_line", "data", "n_lines")

    def __init__(self, seq, first_line, data, n_lines):
        self.seq = seq
        self.first_line = first_line
        self.data = data
        self.n_lines = n_lines


def _fileno(stream):
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None
    # data already buffered inside a Python file object would be invisible
    # to select/os.read: only take the descriptor while that buffer is empty
    peek = getattr(stream, "peek", None)
    if peek is not None:
        try:
            raw = getattr(stream, "raw", None)
            if raw is not None and stream.tell() != raw.tell():
                return None
        except (OSError, ValueError):
            pass  # pipes cannot tell; nothing has been read from them yet
    return fd


class BlockReader:
    """Iterate blocks from ``stream`` (a binary file object) read in a thread.

    Several consumers may call ``get`` concurrently; each gets None once the
    stream is exhausted or ``stop`` was called. ``error`` holds an exception
    raised while reading, if any.
    """

    def __init__(self, stream, block_size=BLOCK_SIZE, queue_blocks=3, linger=0.2, stop=None):
        self.stream = stream
        self.block_size = block_size
        self.linger = linger
        self.q = queue.Queue(maxsize=queue_blocks)
        self.error = None
        self.bytes_read = 0
        # ``stop``: an Event of the caller's (set by a signal handler) that
        # also stops reading; ``stop()`` below never sets it
        self._stop = threading.Event()
        self._outer = stop
        self._done = False
        self.thread = threading.Thread(target=self._run, name="streamfm-reader", daemon=True)
        self.thread.start()

    def _stopped(self):
        return self._stop.is_set() or (self._outer is not None and self._outer.is_set())

    def _put(self, item):
        while not self._stopped():
            try:
                self.q.put(item, timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False

    def _chunks(self):
        """Yield byte chunks, or None when the input is idle for a poll period."""
        fd = _fileno(self.stream)
        while not self._stopped():
            if fd is None:
                chunk = self.stream.read(self.block_size)
                if chunk and len(chunk) < self.block_size:
                    # a short read: the source has no more for now (the API's
                    # iterables of lines return what came within a moment)
                    yield chunk
                    yield None
                    continue
            else:
                try:
                    ready, _, _ = select.select([fd], [], [], _POLL)
                except (OSError, ValueError):
                    ready = [fd]  # not selectable (some special files): plain blocking reads
                if not ready:
                    yield None
                    continue
                chunk = os.read(fd, self.block_size)
            if not chunk:
                return
            yield chunk

    def _run(self):
        seq = 0
        line_no = 1
        buf = bytearray()
        scanned = 0      # buf[:scanned] holds no '\n' after the last cut
        last_nl = -1     # position of the last '\n' in buf, or -1
        first_byte = 0.0
        at_start = True  # the stream's first bytes may be a byte order mark

        def emit(cut):
            nonlocal seq, line_no, scanned, last_nl, first_byte
            data = bytes(buf[:cut])
            del buf[:cut]
            scanned = len(buf)
            last_nl = -1
            first_byte = time.time()  # the linger of what is left starts now
            n_lines = data.count(b"\n")
            if data and not data.endswith(b"\n"):
                n_lines += 1
            ok = self._put(Block(seq, line_no, np.frombuffer(data, dtype=np.uint8), n_lines))
            seq += 1
            line_no += n_lines
            return ok

        try:
            for chunk in self._chunks():
                if chunk is None:
                    if last_nl >= 0 and time.time() - first_byte >= self.linger:
                        if not emit(last_nl + 1):
                            return
                    continue
                if not buf:
                    first_byte = time.time()
                self.bytes_read += len(chunk)
                buf += chunk
                if at_start:
                    if len(buf) < len(BOM) and BOM.startswith(bytes(buf)):
                        continue  # a pipe may hand the mark over byte by byte
                    if buf[:len(BOM)] == BOM:
                        del buf[:len(BOM)]
                    at_start = False
                nl = buf.rfind(b"\n", scanned)
                if nl >= 0:
                    last_nl = nl
                scanned = len(buf)
                if last_nl >= 0 and len(buf) >= self.block_size:
                    if not emit(last_nl + 1):
                        return
            if buf and not self._stopped():
                # the last line may lack its '\n'; it is still a line
                emit(len(buf))
        except Exception as e:  # surfaced by the consumer, never lost
            self.error = e
        finally:
            self._put(None)

    def get(self):
        """The next block, or None at the end (for every consumer)."""
        if self._done:
            return None
        while True:
            if self._stopped():
                return None
            try:
                item = self.q.get(timeout=_POLL)
                break
            except queue.Empty:
                continue
        if item is None:
            self._done = True
            self.q.put(None)  # wake the other consumers
        return item

    def stop(self):
        """Stop reading; consumers get None from now on."""
        self._stop.set()
