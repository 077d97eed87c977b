"""The one pipeline every reading command runs: reader -> worker threads.

A BlockReader thread cuts the input into blocks of whole lines; each worker
takes the next block, parses and handles it (trains on it, scores it), and
takes another. The kernels release the GIL (``nogil``), so the workers run in
parallel. fm_train, fm_predict and the Python API all run their blocks here,
so stopping, error propagation and progress behave the same everywhere.
"""

import threading

__all__ = ["run_workers"]

_TICK = 0.2  # seconds between the caller's progress calls


def run_workers(reader, handlers, tick=None, stop=None, name="streamfm"):
    """Hand every block of ``reader`` to ``handlers``, one thread per handler.

    Parameters
    ----------
    reader : streamfm.reader.BlockReader
        The block source; ``get()`` returns the next block or None at the end.
    handlers : list of callables
        ``handler(block)``: one worker thread each, called with every block
        that worker takes (blocks go to whichever worker is free).
    tick : callable, optional
        Called in the calling thread about five times a second while the
        workers run (progress lines).
    stop : threading.Event, optional
        Set it (a signal handler does) to end early: each worker finishes the
        block in hand and takes no other; the reader stops reading.
    name : str
        Prefix of the threads' names (seen in debuggers and ``py-spy``).

    The first exception of a worker stops the others and is raised here once
    every worker has left; then a reading error of the reader. An exception in
    the calling thread (KeyboardInterrupt in a library call) also stops and
    joins the workers before it propagates: no worker outlives the call.

    >>> import io
    >>> from streamfm.reader import BlockReader
    >>> seen = []
    >>> run_workers(BlockReader(io.BytesIO(b"1 a\\n0 b\\n")), [lambda blk: seen.append(blk.n_lines)])
    >>> seen
    [2]
    """
    stop = threading.Event() if stop is None else stop
    errors = []

    def loop(handle):
        try:
            while not stop.is_set():
                blk = reader.get()
                if blk is None or stop.is_set():
                    return
                handle(blk)
        except BaseException as e:  # raised by the calling thread below
            errors.append(e)
            stop.set()

    threads = [threading.Thread(target=loop, args=(h,), name="%s-%d" % (name, i), daemon=True)
               for i, h in enumerate(handlers)]
    try:
        for th in threads:
            th.start()
        while any(th.is_alive() for th in threads):
            for th in threads:
                th.join(_TICK)
            if tick is not None:
                tick()
    finally:
        reader.stop()
        stop.set()
        for th in threads:
            if th.is_alive():
                th.join()
    if errors:
        raise errors[0]
    if reader.error is not None:
        raise reader.error
