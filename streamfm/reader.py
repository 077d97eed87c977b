"""A background thread that cuts a byte stream into blocks of whole lines.

The reader only reads and cuts at the last '\\n' of each chunk; parsing and
everything after it happen in the worker threads, in numba. Blocks carry
their sequence number and first line number so results can be put back in
input order and bad lines reported with their line numbers.
"""

import queue
import threading

import numpy as np

BLOCK_SIZE = 1 << 20


class Block:
    __slots__ = ("seq", "first_line", "data", "n_lines")

    def __init__(self, seq, first_line, data, n_lines):
        self.seq = seq
        self.first_line = first_line
        self.data = data
        self.n_lines = n_lines


class BlockReader:
    """Iterate blocks from ``stream`` (a binary file object) read in a thread.

    Several consumers may call ``get`` concurrently; each gets None once the
    stream is exhausted or ``stop`` was called. ``error`` holds an exception
    raised while reading, if any.
    """

    def __init__(self, stream, block_size=BLOCK_SIZE, queue_blocks=4):
        self.stream = stream
        self.block_size = block_size
        self.q = queue.Queue(maxsize=queue_blocks)
        self.error = None
        self.bytes_read = 0
        self.lines_read = 0
        self._stop = threading.Event()
        self._done = False
        self.thread = threading.Thread(target=self._run, name="streamfm-reader", daemon=True)
        self.thread.start()

    def _put(self, item):
        while not self._stop.is_set():
            try:
                self.q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self):
        seq = 0
        line_no = 1
        carry = b""
        try:
            while not self._stop.is_set():
                chunk = self.stream.read(self.block_size)
                if not chunk:
                    break
                self.bytes_read += len(chunk)
                data = carry + chunk if carry else chunk
                cut = data.rfind(b"\n")
                if cut < 0:
                    carry = data
                    continue
                carry = data[cut + 1:]
                n_lines = data.count(b"\n", 0, cut + 1)
                block = Block(seq, line_no, np.frombuffer(data, dtype=np.uint8, count=cut + 1), n_lines)
                if not self._put(block):
                    return
                seq += 1
                line_no += n_lines
                self.lines_read = line_no - 1
            if carry and not self._stop.is_set():
                # a last line without '\n' is still a line
                self._put(Block(seq, line_no, np.frombuffer(carry, dtype=np.uint8), 1))
                self.lines_read = line_no
        except Exception as e:  # surfaced by the consumer, never lost
            self.error = e
        finally:
            self._put(None)

    def get(self):
        """The next block, or None at the end (for every consumer)."""
        if self._done:
            return None
        while True:
            try:
                item = self.q.get(timeout=0.1)
                break
            except queue.Empty:
                if self._stop.is_set():
                    return None
        if item is None:
            self._done = True
            self.q.put(None)  # wake the other consumers
        return item

    def stop(self):
        """Stop reading; consumers get None after the blocks already queued."""
        self._stop.set()
