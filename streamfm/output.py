"""Every write streamfm makes to a file or standard output.

One writer, ``open_output(path)``, for models, indexes, predictions, query
results, bad-lines files, dumps and reports; it decides how by what the path
is *now*:

- ``-``: standard output (descriptor 1), written in place, never closed.
- a regular file, or nothing yet: a temporary file beside the target (beside
  the file a symlink points to: the link stays a link), fsynced, given the
  old file's mode (a new file: 0644) and owner, and renamed over the target
  only when every byte is out; a failed or interrupted write removes it.
- anything else (character or block device, FIFO, socket, ``/dev/stdout``,
  ``/proc/self/fd/N``): opened ``O_WRONLY`` and written in place, never
  renamed over, truncated or fsynced.

Every write checks what the system call took and writes the rest; an error
raises ``OutputError`` naming the output. ``check_distinct`` refuses an
output that is one of the command's inputs (same device and inode), before
anything is opened for writing.
"""

import errno
import os
import re
import select
import socket
import stat
import sys
import tempfile
import zlib

from .errors import OutputError, SameFileError  # the writers' errors, re-exported

STDOUT = "-"
NEW_FILE_MODE = 0o644
_BUFFER = 1 << 16       # small writes (bad lines) are gathered up to this size
_FD_DIR = re.compile(r"^/proc/(self|thread-self|\d+)(/task/\d+)?/fd$")

_stdout_closed = False  # set by protect_standard_streams


def describe(path):
    """The name of an output in messages."""
    return "standard output" if path == STDOUT else str(path)


def _error(name, e, what="cannot write"):
    return OutputError("%s: %s: %s" % (name, what, e.strerror or e), getattr(e, "errno", None))


def write_all(fd, data, name):
    """Write every byte of ``data`` (bytes-like) to descriptor ``fd``.

    A short write is continued where it stopped; a non-blocking descriptor
    that is full is waited on; any error raises OutputError naming ``name``.
    """
    view = memoryview(data)
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    while len(view):
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [])
            continue
        except OSError as e:
            raise _error(name, e) from None
        if n <= 0:  # never for a file or pipe; do not spin if a device says so
            raise OutputError("%s: cannot write: the device takes no more data" % name, errno.EIO)
        view = view[n:]


# ----------------------------------------------------------------------------
# What a path is


def _resolve(path):
    """(target, kind) for an output path.

    kind: 'fd' (a descriptor path such as /dev/stdout: write in place),
    'new' (nothing there yet), 'file' (a regular file), 'dir', or 'special'
    (device, FIFO, socket). Symlinks are followed one at a time, so a link
    into /proc/<pid>/fd is seen as what it is, not as the text it reads as.
    """
    p = os.path.abspath(path)
    for _ in range(64):
        d = os.path.realpath(os.path.dirname(p))
        p = os.path.join(d, os.path.basename(p))
        if _FD_DIR.match(d) or d == "/dev/fd":
            return p, "fd"
        try:
            link = os.readlink(p)
        except OSError:
            break
        p = os.path.normpath(os.path.join(d, link))
    else:
        raise OutputError("%s: cannot write: %s" % (path, os.strerror(errno.ELOOP)), errno.ELOOP)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        return p, "new"
    except OSError as e:
        raise _error(path, e) from None
    if stat.S_ISREG(st.st_mode):
        return p, "file"
    if stat.S_ISDIR(st.st_mode):
        return p, "dir"
    return p, "special"


def check_writable(path):
    """Fail early (OutputError), not after hours of work, when ``path`` cannot be written."""
    if path == STDOUT:
        if _stdout_closed:
            raise OutputError("standard output is closed", errno.EBADF)
        return
    target, kind = _resolve(path)
    if kind == "dir":
        raise OutputError("cannot write %s: it is a directory" % path, errno.EISDIR)
    if kind in ("fd", "special"):
        if not os.access(target, os.W_OK):
            raise OutputError("cannot write %s: permission denied" % path, errno.EACCES)
        return
    d = os.path.dirname(target)
    if not os.path.isdir(d):
        raise OutputError("cannot write %s: directory %s does not exist" % (path, d), errno.ENOENT)
    if not os.access(d, os.W_OK):
        raise OutputError("cannot write %s: directory %s is not writable" % (path, d), errno.EACCES)


# ----------------------------------------------------------------------------
# The writer


class Output:
    """A binary output (see the module doc); use ``open_output``.

    ``write`` takes bytes-like objects and checks every byte out. ``tell``
    counts the bytes written; ``seek`` works on the temporary file of a
    regular-file target only (``seekable()``). Used as a context manager it
    completes the output on success and discards it on an exception.
    """

    def __init__(self, path, append=False, durable=True):
        self.path = path
        self.durable = durable
        self.name = describe(path)
        self.fd = None
        self.tmp = None
        self.target = None
        self.pos = 0
        self.done = False
        self._buf = bytearray()
        if path == STDOUT:
            if _stdout_closed:
                raise OutputError("standard output is closed", errno.EBADF)
            self.mode = "stdout"
            self.fd = 1
            return
        target, kind = _resolve(path)
        self.target = target
        if kind == "dir":
            raise OutputError("%s: cannot write: it is a directory" % path, errno.EISDIR)
        own = _own_fd(target) if kind == "fd" else None
        if own == 1 and _stdout_closed:
            raise OutputError("%s: cannot write: standard output is closed" % path, errno.EBADF)
        if own is not None:
            # one of this process's descriptors: share it (its offset, O_APPEND), do not reopen it
            self.mode = "direct"
            try:
                self.fd = os.dup(own)
            except OSError as e:
                raise _error(path, e) from None
            return
        if kind in ("fd", "special") or append:
            # in place: a device is never replaced or truncated, an append only adds
            self.mode = "direct"
            flags = os.O_WRONLY | os.O_CLOEXEC | (os.O_APPEND | os.O_CREAT if append else 0)
            try:
                self.fd = os.open(target, flags, NEW_FILE_MODE)
            except OSError as e:
                raise _error(path, e) from None
            return
        self.mode = "atomic"
        try:
            old = os.stat(target) if kind == "file" else None
        except FileNotFoundError:
            old = None
        except OSError as e:
            raise _error(path, e) from None
        self.old = old
        d = os.path.dirname(target)
        base = "." + os.path.basename(target) + "."
        remove_orphans(d, base)
        try:
            self.fd, self.tmp = tempfile.mkstemp(prefix=base + "%d-%s." % (os.getpid(), pid_space()),
                                                 suffix=".tmp", dir=d)
        except OSError as e:
            raise _error(path, e) from None

    # writing -------------------------------------------------------------
    def write(self, data):
        """Write ``data``; returns its length (all of it is written, or OutputError)."""
        if self.fd is None:
            raise OutputError("%s: cannot write: already closed" % self.name, errno.EBADF)
        view = memoryview(data)
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast("B")
        n = len(view)
        if self.mode == "atomic" and n < _BUFFER:
            self._buf += view
            if len(self._buf) >= _BUFFER:
                self._drain()
        else:
            self._drain()
            write_all(self.fd, view, self.name)
        self.pos += n
        return n

    def _drain(self):
        if self._buf:
            buf = self._buf
            self._buf = bytearray()
            write_all(self.fd, buf, self.name)

    def flush(self):
        self._drain()

    def tell(self):
        return self.pos

    def seekable(self):
        return self.mode == "atomic"

    def seek(self, pos):
        if self.mode != "atomic":
            raise OutputError("%s: cannot seek" % self.name, errno.ESPIPE)
        self._drain()
        try:
            os.lseek(self.fd, pos, os.SEEK_SET)
        except OSError as e:
            raise _error(self.name, e) from None
        self.pos = pos

    # completing ----------------------------------------------------------
    def close(self):
        """Complete the output: flush, and for a regular file fsync, set the
        old file's mode and owner, rename over the target, fsync its directory."""
        if self.done:
            return
        try:
            self._drain()
            if self.mode == "atomic":
                self._commit()
            elif self.mode == "direct":
                fd, self.fd = self.fd, None
                try:
                    os.close(fd)
                except OSError as e:
                    raise _error(self.name, e) from None
        except BaseException:
            self.abort()
            raise
        self.done = True

    def _commit(self):
        fd = self.fd
        try:
            if self.old is not None:
                if (self.old.st_uid, self.old.st_gid) != _owner(fd):
                    try:
                        os.fchown(fd, self.old.st_uid, self.old.st_gid)
                    except OSError:
                        pass  # not ours to give away: the replacement is the writer's
                os.fchmod(fd, stat.S_IMODE(self.old.st_mode))
            else:
                os.fchmod(fd, NEW_FILE_MODE)
            if self.durable:
                os.fsync(fd)
        except OSError as e:
            raise _error(self.name, e) from None
        self.fd = None
        try:
            os.close(fd)
            os.replace(self.tmp, self.target)
        except OSError as e:
            raise _error(self.name, e) from None
        self.tmp = None
        if self.durable:
            fsync_dir(os.path.dirname(self.target))

    def abort(self):
        """Discard the output: close it, remove the temporary file (nothing replaced)."""
        self.done = True
        self._buf = bytearray()
        if self.fd is not None and self.mode != "stdout":
            try:
                os.close(self.fd)
            except OSError:
                pass
        self.fd = None
        if self.tmp is not None:
            try:
                os.unlink(self.tmp)
            except OSError:
                pass
            self.tmp = None

    def __enter__(self):
        return self

    def __exit__(self, et, ev, tb):
        if et is None:
            self.close()
        else:
            self.abort()
        return False


def _owner(fd):
    st = os.fstat(fd)
    return st.st_uid, st.st_gid


def _own_fd(target):
    """N when ``target`` is /proc/self/fd/N (or this pid's, or /dev/fd/N), else None."""
    d, n = os.path.split(target)
    m = _FD_DIR.match(d)
    own = d == "/dev/fd" or (m is not None and m.group(1) in ("self", "thread-self", str(os.getpid())))
    return int(n) if own and n.isdigit() else None


def open_output(path, append=False, durable=True):
    """An Output on ``path`` ('-' is standard output); ``append`` adds to a
    file in place instead of replacing it; ``durable=False`` skips the fsyncs
    (a scratch file that a crash may lose: it is still complete or absent
    under its name). Raises OutputError."""
    return Output(path, append=append, durable=durable)


# what follows ``<base>`` in a temporary file's name: the writer's pid and pid space,
# then mkstemp's random part (letters, digits, '_': never a dot)
_TEMP_TAIL = re.compile(r"^(\d+)-([0-9a-f]{8})\.[A-Za-z0-9_]+\.tmp$")
_PID_SPACE = None


def pid_space():
    """8 hex digits naming the space this process's pid is a pid in: this kernel
    boot and its pid namespace (a container has its own; the host's initial
    namespace has the same inode on every machine, hence the boot id). Two
    writers of one directory (a shared volume, NFS) are told apart by it: a pid
    means something only within its space."""
    global _PID_SPACE
    if _PID_SPACE is None:
        parts = []
        try:
            with open("/proc/sys/kernel/random/boot_id", "rb") as f:
                parts.append(f.read().strip())
        except OSError:
            parts.append(socket.gethostname().encode("utf-8", "surrogateescape"))
        try:
            parts.append(b"%d" % os.stat("/proc/self/ns/pid").st_ino)
        except OSError:
            pass
        _PID_SPACE = "%08x" % zlib.crc32(b"/".join(parts))
    return _PID_SPACE


def remove_orphans(d, base):
    """Remove temporary files ``<base><pid>-<space>.<random>.tmp`` in ``d`` whose writer is dead.

    Only names of exactly that form, and only this process's pid space
    (``pid_space``): a writer in another container or on another machine
    sharing the directory has pids this process cannot check, and its file
    is left alone (so is a temporary of another form, such as an older
    version's ``<base><pid>.<random>.tmp``). Another target whose name
    extends this one's (``pred.txt.20261201`` beside ``pred.txt``) has
    temporary files ``.pred.txt.20261201.<pid>-<space>.<random>.tmp``, with
    more fields, and a running writer of it must never lose its file.
    """
    try:
        names = os.listdir(d)
    except OSError:
        return
    space = pid_space()
    for name in names:
        if not name.startswith(base):
            continue
        m = _TEMP_TAIL.match(name[len(base):])
        if m is None or m.group(2) != space:
            continue
        pid = m.group(1)
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            try:
                os.unlink(os.path.join(d, name))
            except OSError:
                pass
        except OSError:
            pass  # alive (or not ours to signal): leave it


def fsync_dir(d):
    """Make a rename in ``d`` durable (best effort: not every file system can)."""
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text(path, text):
    """Write a whole str (UTF-8) to ``path`` or standard output, checked."""
    with open_output(path) as out:
        out.write(text.encode("utf-8", "surrogateescape"))


# ----------------------------------------------------------------------------
# Outputs are not inputs


def _identity(path, is_output):
    """(st_dev, st_ino) of the regular file ``path`` names now, else None.

    '-' is standard output for an output, standard input for an input.
    Devices, FIFOs and sockets are not compared: writing one destroys nothing.
    """
    try:
        st = os.fstat(1 if is_output else 0) if path == STDOUT else os.stat(path)
    except (OSError, ValueError):
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISREG(st.st_mode) else None


def _label(flag, path, is_output):
    if path == STDOUT:
        return "standard output" if is_output else "standard input"
    return "%s %s" % (flag, path) if flag else str(path)


def check_distinct(outputs, inputs, allow=()):
    """Refuse (SameFileError) an output that is an input or another output.

    ``outputs``, ``inputs``: (flag, path) pairs (path None: not given; '-':
    standard output / standard input). Files are compared by device and inode
    as they are now, so a hard link or a symlink to an input is caught; outputs
    that do not exist yet are compared by the path they resolve to. ``allow``:
    (output flag, input flag) pairs that may name the same file (``-im X -m X``:
    the model is read whole before its replacement is renamed over it).
    """
    outs = [(f, p) for f, p in outputs if p is not None]
    ins = [(f, p) for f, p in inputs if p is not None]
    in_ids = [(f, p, _identity(p, False)) for f, p in ins]
    seen = []
    for f, p in outs:
        ident = _identity(p, True)
        if ident is not None:
            for fi, pi, idi in in_ids:
                if idi == ident and (f, fi) not in allow:
                    raise SameFileError(
                        "%s is the same file as %s: an output never overwrites an input"
                        % (_label(f, p, True), _label(fi, pi, False)), errno.EINVAL)
        key = ident if p != STDOUT else ident or "standard output"
        if key is None:
            try:
                target, kind = _resolve(p)
            except OutputError:
                target, kind = None, None
            key = target if kind == "new" else None
        if key is not None:
            for fo, po, ko in seen:
                if ko == key:
                    raise SameFileError("%s and %s are the same file: give each output its own"
                                        % (_label(fo, po, True), _label(f, p, True)), errno.EINVAL)
            seen.append((f, p, key))


# ----------------------------------------------------------------------------
# Commands


def protect_standard_streams():
    """For a command started with descriptor 0, 1 or 2 closed (``>&-``).

    Keeps the descriptor taken (by /dev/null, read-only), so no file a
    command opens later becomes its 'standard output', and remembers that
    standard output was closed: writing to it then fails with a message.
    """
    global _stdout_closed
    if sys.__stdout__ is None:
        _stdout_closed = True
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        if fd == 1:
            _stdout_closed = True
        try:
            nfd = os.open(os.devnull, os.O_RDONLY)
        except OSError:
            continue
        if nfd != fd:
            os.dup2(nfd, fd, inheritable=False)
            os.close(nfd)
