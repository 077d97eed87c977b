"""The FM model in memory and its files (docs/design.md, "File formats").

Text (alphaFM's layout)::

    bias w w_n w_z
    name w v_1..v_k w_n w_z v_n_1..v_n_k v_z_1..v_z_k

and its stripped form for serving (``bias w`` / ``name w v_1..v_k``). Numbers
are written with the fewest digits that read back to the same float, so an
incremental run continues from exactly the state the last one stopped at.

Binary: the container of ``container.py`` (MAGIC ``"\\x89SFMBIN\\n"``, a
64 KiB header reserve) holding the name bytes, the name offsets and either
``params`` (the FTRL rows as the trainer holds them: a full model) or
``weights`` (w, v: a stripped model), or both (a full model converted from
text, whose v are stated outright), each with its own crc32. The header
also keeps k, dtype, n_rows, the hyper-parameters and the feature table's
random hash key (``hash_key``, 16 bytes; absent: a fresh key is drawn on
load, as for text models).

Every file is written by ``output.open_output``: a regular file goes to a
temporary file beside the target, fsynced and renamed over it, so a crash
never leaves a half-written model; a device or pipe is written in place.
"""

import contextlib
import os
import re

import numpy as np
from numba import njit

from . import container, ffm, floatfmt, ftrl
from .errors import ModelFormatError as ModelError  # one class; the commands' name for it
from .output import open_output
from .table import (KEY_BYTES, DuplicateName, FeatureTable, init_hash_bytes, key_from_bytes, lookup_one,
                    place, same_bytes)

MAGIC = b"\x89SFMBIN\n"
FORMAT_NAME = "streamfm-bin"
FORMAT_VERSION = 1
FFM_VERSION = 2  # an FFM's binary file says version 2: a streamfm without FFMs refuses it
KIND = container.Kind(MAGIC, FORMAT_NAME, FORMAT_VERSION, reserve=1 << 16, what="binary model", error=ModelError)
# what this streamfm reads (versions up to 2), and writes for an FFM
FFM_KIND = container.Kind(MAGIC, FORMAT_NAME, FFM_VERSION, reserve=1 << 16, what="binary model", error=ModelError)
# the binary format's FTRL rows: ftrl.py's layout (v is kept while v_n == 0)
PARAMS_COLUMNS = "w w_n w_z v_n[k] v_z[k]"
CHUNK_ROWS = 1 << 13  # rows converted per step when writing: bounded extra memory
_NO_FIELDS = np.zeros(0, dtype=np.int64)  # an FM's add_features: no row fields to write


def dtype_of(mnt):
    if mnt in (None, "", "double", "float64"):
        return np.dtype(np.float64)
    if mnt in ("float", "float32"):
        return np.dtype(np.float32)
    raise ValueError("-mnt must be 'double' or 'float', not %r" % (mnt,))


def dtype_name(dtype):
    return "float32" if np.dtype(dtype) == np.float32 else "float64"


# ----------------------------------------------------------------------------
# In-memory model


class Model:
    """A trainable FM: a feature table plus one FTRL state row per feature.

    ``params`` has spare capacity beyond ``n_rows``; ``reserve`` grows it
    (callers pause threads that run kernels on the arrays around it).
    """

    def __init__(self, k, dtype=np.float64, hp=None, fvs=False, seed=0,
                 row_capacity=1 << 16, arena_capacity=1 << 20, hash_key=None):
        self.k = int(k)
        self.dtype = np.dtype(dtype)
        self.hp = np.array(ftrl.HP_DEFAULTS if hp is None else hp, dtype=np.float64)
        self.fvs = bool(fvs)
        self.seed = int(seed)
        self.samples_seen = 0
        self.table = FeatureTable(row_capacity, arena_capacity, key=hash_key)
        self.params = np.zeros((self.table.row_capacity, ftrl.n_cols(self.k)), dtype=self.dtype)

    @property
    def n_rows(self):
        return self.table.n_rows

    has_state = True
    kind = "fm"
    row_field = _NO_FIELDS  # a field-aware FM's rows' fields (FFMModel); an FM has none

    def hyper(self):
        return {name: float(v) for name, v in zip(ftrl.HP_NAMES, self.hp)}

    def reserve(self, new_rows, new_bytes):
        self.table.reserve(new_rows, new_bytes)
        cap = self.table.row_capacity
        if cap > self.params.shape[0]:
            params = np.zeros((cap, self.params.shape[1]), dtype=self.dtype)
            params[: self.n_rows] = self.params[: self.n_rows]
            self.params = params

    # the model-file view -------------------------------------------------
    def meta(self):
        return {"k": self.k, "dtype": dtype_name(self.dtype), "n_rows": self.n_rows,
                "hyper": self.hyper(), "fvs": self.fvs, "seed": self.seed,
                "samples_seen": int(self.samples_seen), "hash_key": self.table.key_bytes()}

    def chunks(self, weights=True, state=True, rows=CHUNK_ROWS):
        """Yield (r0, r1, weights|None, state|None) in file columns, chunk by chunk."""
        return _param_chunks(self.params, self.n_rows, self.k, self.hp, self.fvs, weights, state, rows)

    @property
    def file_params(self):
        """The FTRL state rows as the binary format stores them."""
        return self.params[: self.n_rows]

    explicit_weights = None

    @classmethod
    def from_arrays(cls, arrays, hp, fvs, seed, dtype=None, extra_rows=1 << 16):
        """A trainable Model continuing the FTRL state held in ``arrays``."""
        n = arrays.n_rows
        m = cls.__new__(cls)
        m.k = arrays.k
        m.dtype = np.dtype(dtype or arrays.dtype)
        m.hp = np.array(hp, dtype=np.float64)
        m.fvs = bool(fvs)
        m.seed = int(seed)
        m.samples_seen = int(arrays.info.get("samples_seen", 0))
        table = getattr(arrays, "train_table", None)  # one built already (merge.Base.fm)
        if table is not None and table.n_rows == n:
            arrays.train_table = None
            m.table = table
        else:
            m.table = table_for(arrays, row_capacity=n + extra_rows,
                                arena_capacity=int(arrays.name_off[n]) + (1 << 20))
        m.params = arrays.training_params(m.table.row_capacity, m.dtype)
        return m

    def names(self):
        return self.table.names_view()

    def add_unknown(self, parsed, data, pause=contextlib.nullcontext):
        """Rows for the features of a parsed block the table does not know.

        ``data`` is the block the names were parsed from; ``pause()`` is
        entered around growing the arrays (trainers in other threads must be
        out of their kernels then). Callers serialise calls.
        """
        self._add_rows(parsed, data, pause, _NO_FIELDS)

    def _add_rows(self, parsed, data, pause, tok_field):
        """add_unknown's rows; ``tok_field``: the new names' fields (a field-aware FM's; else
        empty). Its ``row_field`` is read after ``reserve``, which may grow it."""
        new_bytes = int(parsed.name_len[parsed.rows < 0].sum())
        if self.table.needs_growth(parsed.n_unknown, new_bytes):
            with pause():
                self.reserve(parsed.n_unknown, new_bytes)
        t = self.table
        add_features(t.slots, t.row_hash, t.row_init, t.name_off, t.arena, t.meta, parsed.hashes,
                     parsed.rows, data, parsed.name_start, parsed.name_len, parsed.nnz, self.params,
                     self.k, self.seed, self.hp[ftrl.HP_INIT_STDEV], tok_field, self.row_field)


class FFMModel(Model):
    """A trainable field-aware FM (ffm.py): an FM row of K = F * k factors per
    feature, the field list (``fields``, an ffm.Fields) and each row's field id
    (``row_field``), written when the row is made. ``k`` is K, the file
    machinery's factor count; ``field_k`` the factors per field."""

    kind = "ffm"

    def __init__(self, k, dtype=np.float64, hp=None, seed=0, fields=None,
                 row_capacity=1 << 16, arena_capacity=1 << 20, hash_key=None):
        self.field_k = int(k)
        self.fields = ffm.Fields() if fields is None else fields
        Model.__init__(self, self.field_k * self.fields.capacity, dtype, hp=hp, fvs=False, seed=seed,
                       row_capacity=row_capacity, arena_capacity=arena_capacity, hash_key=hash_key)
        self.row_field = np.zeros(self.table.row_capacity, dtype=np.int64)

    def reserve(self, new_rows, new_bytes):
        Model.reserve(self, new_rows, new_bytes)
        cap = self.table.row_capacity
        if cap > self.row_field.shape[0]:
            rf = np.zeros(cap, dtype=np.int64)
            rf[: self.n_rows] = self.row_field[: self.n_rows]
            self.row_field = rf

    def meta(self):
        out = Model.meta(self)
        out.update(ffm_info(self.field_k, self.fields))
        return out

    @classmethod
    def from_arrays(cls, arrays, hp, fvs=False, seed=0, dtype=None, extra_rows=1 << 16):
        info = arrays.info
        m = Model.from_arrays.__func__(cls, arrays, hp, False, seed, dtype=dtype, extra_rows=extra_rows)
        m.field_k = int(info["field_k"])
        m.fields = fields_of_info(info)
        m.row_field = np.zeros(m.table.row_capacity, dtype=np.int64)
        row_fields(arrays, m.fields, m.row_field)
        return m

    def screen(self, parsed, data):
        """Give each new name of a parsed block its field (``parsed.tok_field``), adding
        the block's new fields to the list; a line that would need more than the field
        capacity becomes a bad line (rolled back). Callers serialise calls (insert lock)."""
        f = self.fields
        nnz = parsed.nnz
        tok = np.full(nnz, -1, dtype=np.int64)
        n = parsed.n_samples
        new_start = np.empty(f.capacity + 1, dtype=np.int64)
        new_len = np.empty(f.capacity + 1, dtype=np.int64)
        bad = np.zeros(n, dtype=np.int64)
        bad_pos = np.zeros(n, dtype=np.int64)
        nn = ffm.screen_block(parsed.buf, parsed.indptr, parsed.rows, parsed.name_start, parsed.name_len, n,
                              f.sep_arr, f.arena, f.off, len(f), f.capacity, tok, new_start, new_len, bad, bad_pos)
        for t in range(nn):
            f.add(bytes(parsed.buf[new_start[t]:new_start[t] + new_len[t]]))
        if bad.any():
            from .parse import FIELD_CAPACITY, remove

            which = {int(s): (FIELD_CAPACITY, int(bad_pos[s])) for s in np.flatnonzero(bad)}
            tok = tok[remove(parsed, [], which, bytes(parsed.buf))]
        parsed.tok_field = tok

    def add_unknown(self, parsed, data, pause=contextlib.nullcontext):
        tok = getattr(parsed, "tok_field", None)
        if tok is None or tok.shape[0] != parsed.nnz:
            self.screen(parsed, data)
        self._add_rows(parsed, data, pause, parsed.tok_field)


def ffm_info(field_k, fields):
    """What an FFM's files say of it besides an FM's (header entries, text header line)."""
    return {"model": "ffm", "field_k": int(field_k), "max_fields": int(fields.capacity),
            "field_sep": bytes(fields.sep), "fields": [bytes(n) for n in fields.names]}


def is_ffm(info):
    return info.get("model", "fm") == "ffm"


def fields_of_info(info):
    return ffm.Fields(info["field_sep"], info["max_fields"], info["fields"])


def row_fields(arrays, fields, out):
    """out[r] = the field id of every row of a model file (ModelError if one is not in its list)."""
    path = getattr(arrays, "path", "model")
    n = arrays.n_rows
    bad = ffm.fields_of_rows(arrays.arena, arrays.name_off, 1, n, fields.sep_arr, fields.arena, fields.off,
                             len(fields), out)
    out[0] = -1
    if bad >= 0:
        raise ModelError("%s: corrupted: the field of feature %r is not in the model's field list"
                         % (path, arrays.name(bad)))
    return out


def refuse_ffm(info, path, what="this command"):
    """ModelError when ``info`` is an FFM's: ``what`` needs an FM."""
    if is_ffm(info):
        raise ModelError("%s: holds a field-aware FM (ffm) model; %s needs an FM model (fm_train --model fm)"
                         % (path, what))


@njit(cache=True, nogil=True)
def add_features(slots, row_hash, row_init, name_off, arena, meta, hashes, rows, src, name_start,
                 name_len, n, params, k, seed, stdev, tok_field, row_field):
    """Rows for the entries with rows[j] == -1, creating rows for new names.

    A new row's name, hashes, initial state and, for a field-aware FM
    (``row_field`` not empty), its field (tok_field[j]) are written before the row is
    published in the index, so a concurrent lookup never sees it half made.
    Its initial factors come from the name's unkeyed init hash (table.py).
    A name whose table hash is already indexed under a different name (a
    true 64-bit collision) shares that row and is counted in meta[2].
    The caller holds the insert lock and has reserved capacity for n rows.
    """
    for j in range(n):
        if rows[j] >= 0:
            continue
        h = hashes[j]
        ln = name_len[j]
        s = name_start[j]
        r = lookup_one(slots, row_hash, h)
        if r < 0:
            r = meta[0]
            a = meta[1]
            for t in range(ln):
                arena[a + t] = src[s + t]
            name_off[r + 1] = a + ln
            meta[1] = a + ln
            row_hash[r] = h
            row_init[r] = init_hash_bytes(src, s, s + ln)
            if row_field.shape[0] > 0:
                row_field[r] = tok_field[j]
            ftrl.init_row(params, r, row_init[r], k, seed, stdev)
            meta[0] = r + 1
            place(slots, row_hash, r)
        elif not same_bytes(arena, name_off[r], name_off[r + 1], src, s, s + ln):
            meta[2] += 1
        rows[j] = r
    return 0


def _param_chunks(params, n, k, hp, fvs, weights, state, rows):
    """(r0, r1, weights|None, state|None) in model-file columns from FTRL rows."""
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        p = params[r0:r1]
        w = s = None
        if weights:
            w = np.empty((r1 - r0, 1 + k), dtype=params.dtype)
            ftrl.serving_weights(p, r1 - r0, k, hp, fvs, w)
        if state:
            s = np.empty((r1 - r0, 2 + 2 * k), dtype=params.dtype)
            ftrl.file_state(p, r1 - r0, k, s)
        yield r0, r1, w, s


def _hp_of(info):
    hyper = info.get("hyper") or {}
    return np.array([float(hyper.get(name, d)) for name, d in zip(ftrl.HP_NAMES, ftrl.HP_DEFAULTS)])


class ModelArrays:
    """A model file's content in memory.

    Its training state is either ``params`` (FTRL rows in the trainer's
    layout, as the binary format keeps them) or ``state`` (alphaFM's columns
    w_n, w_z, v_n, v_z, from a text model). ``explicit_weights`` are the
    (w, v) a file states outright (text models, stripped models); without
    them ``weights`` are derived from ``params`` as the trainer would use them.
    """

    def __init__(self, arena, name_off, weights, state, info, params=None):
        self.arena = arena
        self.name_off = name_off
        self.info = info
        self.explicit_weights = weights
        self.state = state
        self.params = params
        self.k = int(info["k"])
        self._derived = None
        src = params if params is not None else weights
        self.dtype = src.dtype

    @property
    def n_rows(self):
        return (self.params if self.params is not None else self.explicit_weights).shape[0]

    @property
    def has_state(self):
        return self.params is not None or self.state is not None

    @property
    def weights(self):
        """(w, v_1..v_k) per row, as predictions use them."""
        if self.explicit_weights is not None:
            return self.explicit_weights
        if self._derived is None:
            self._derived = np.empty((self.n_rows, 1 + self.k), dtype=self.dtype)
            ftrl.serving_weights(self.params, self.n_rows, self.k, _hp_of(self.info),
                                 bool(self.info.get("fvs", False)), self._derived)
        return self._derived

    @property
    def file_params(self):
        """The FTRL rows (from a text model's columns if need be)."""
        if self.params is not None:
            return self.params
        return self.training_params(self.n_rows, self.dtype)

    def training_params(self, capacity, dtype):
        """FTRL rows in an array of ``capacity`` rows (zeros after n_rows)."""
        n = self.n_rows
        p = self.params
        if p is not None and p.base is not None and p.base.shape[0] >= capacity and (
                p.base.dtype == dtype and p.base.ndim == 2 and p.base.flags.c_contiguous):
            return p.base  # read with spare rows behind it (read_bin extra_rows)
        out = np.zeros((capacity, ftrl.n_cols(self.k)), dtype=dtype)
        if p is not None:
            out[:n] = p
        else:
            ftrl.state_from_file(self.explicit_weights, self.state, n, self.k, out)
        return out

    def meta(self):
        return dict(self.info, n_rows=self.n_rows, dtype=dtype_name(self.dtype))

    def names(self):
        return self.arena, self.name_off

    def chunks(self, weights=True, state=True, rows=CHUNK_ROWS):
        if self.params is not None and self.explicit_weights is None:
            yield from _param_chunks(self.params, self.n_rows, self.k, _hp_of(self.info),
                                     bool(self.info.get("fvs", False)), weights, state, rows)
            return
        n = self.n_rows
        for r0 in range(0, n, rows):
            r1 = min(n, r0 + rows)
            w = self.weights[r0:r1] if weights else None
            s = None
            if state and self.state is not None:
                s = self.state[r0:r1]
            elif state and self.params is not None:
                s = np.empty((r1 - r0, 2 + 2 * self.k), dtype=self.dtype)
                ftrl.file_state(self.params[r0:r1], r1 - r0, self.k, s)
            yield r0, r1, w, s

    def name_bytes(self, r):
        return bytes(self.arena[self.name_off[r]:self.name_off[r + 1]])

    def name(self, r):
        return self.name_bytes(r).decode("utf-8", "backslashreplace")

    def select(self, keep):
        """The rows where ``keep`` is true (row 0, the bias, always stays)."""
        keep = np.asarray(keep, dtype=bool).copy()
        keep[0] = True
        idx = np.flatnonzero(keep)
        lens = np.diff(self.name_off)[idx]
        off = np.zeros(len(idx) + 1, dtype=np.int64)
        np.cumsum(lens, out=off[1:])
        arena = np.empty(int(off[-1]), dtype=np.uint8)
        _gather_names(self.arena, self.name_off, idx, off, arena)

        def take(a):
            return None if a is None else a[idx]
        return ModelArrays(arena, off, take(self.explicit_weights), take(self.state), dict(self.info),
                           params=take(self.params))


@njit(cache=True, nogil=True)
def _gather_names(arena, name_off, idx, off, out):
    for j in range(idx.shape[0]):
        s = name_off[idx[j]]
        ln = off[j + 1] - off[j]
        for t in range(ln):
            out[off[j] + t] = arena[s + t]


# ----------------------------------------------------------------------------
# Text format


@njit(cache=True, nogil=True)
def _format_rows(arena, name_off, r0, weights, state, start, out, f32):
    """Write rows r0+start.. as text lines into out; returns (next, nbytes).

    Stops before a row that might not fit (each number takes <= 26 bytes).
    """
    m = weights.shape[0]
    kw = weights.shape[1]
    ks = state.shape[1]
    pos = 0
    cap = out.shape[0]
    i = start
    while i < m:
        r = r0 + i
        a = name_off[r]
        b = name_off[r + 1]
        if pos + (b - a) + 27 * (kw + ks) + 2 > cap:
            break
        for t in range(a, b):
            out[pos] = arena[t]
            pos += 1
        if r == 0:
            ncols_w = 1
            ncols_s = 2 if ks > 0 else 0
        else:
            ncols_w = kw
            ncols_s = ks
        for c in range(ncols_w):
            out[pos] = 32
            pos += 1
            if f32:
                pos = floatfmt.write_f32(weights[i, c], out, pos)
            else:
                pos = floatfmt.write_f64(weights[i, c], out, pos)
        for c in range(ncols_s):
            out[pos] = 32
            pos += 1
            if f32:
                pos = floatfmt.write_f32(state[i, c], out, pos)
            else:
                pos = floatfmt.write_f64(state[i, c], out, pos)
        out[pos] = 10
        pos += 1
        i += 1
    return i, pos


def write_txt(src, path, state=True, threads=2):
    """Write ``src`` (Model or ModelArrays) as an alphaFM text model.

    Chunks of rows are formatted on ``threads`` threads (the kernel releases
    the GIL) and written in order; a few chunks in flight bound the memory.
    """
    from concurrent.futures import ThreadPoolExecutor

    arena, name_off = src.names()
    f32 = np.dtype(src.dtype) == np.float32
    per_row = 27 * (3 + 3 * src.k) + 2  # each number takes <= 26 bytes and a space

    def fmt(job):
        r0, r1, w, s = job
        if s is None:
            s = np.empty((r1 - r0, 0), dtype=src.dtype)
        out = np.empty(int(name_off[r1] - name_off[r0]) + (r1 - r0) * per_row, dtype=np.uint8)
        i, nb = _format_rows(arena, name_off, r0, w, s, 0, out, f32)
        assert i == r1 - r0
        return out[:nb]

    head = ffm_header_line(src.meta())
    with open_output(path) as f, ThreadPoolExecutor(threads) as pool:
        if head:
            f.write(head)
        pending = []
        for job in src.chunks(state=state and src.has_state, rows=CHUNK_ROWS // 2):
            pending.append(pool.submit(fmt, job))
            if len(pending) > threads:
                f.write(pending.pop(0).result())
        for fut in pending:
            f.write(fut.result())


def write_embeddings_txt(arrays, path):
    """'name v_1 .. v_k' for every row but the bias."""
    arena, name_off = arrays.names()
    v = np.ascontiguousarray(arrays.weights[:, 1:])
    f32 = np.dtype(arrays.dtype) == np.float32
    empty_state = np.empty((v.shape[0], 0), dtype=v.dtype)
    n = v.shape[0]
    with open_output(path) as f:
        for r0 in range(1, n, CHUNK_ROWS):
            r1 = min(n, r0 + CHUNK_ROWS)
            out = np.empty(int(name_off[r1] - name_off[r0]) + (r1 - r0) * (27 * v.shape[1] + 2),
                           dtype=np.uint8)
            _, nb = _format_rows(arena, name_off, r0, v[r0:r1], empty_state[r0:r1], 0, out, f32)
            f.write(memoryview(out)[:nb])


_TXT_OK, _TXT_FIELDS, _TXT_NUMBER, _TXT_NONFINITE, _TXT_BIAS, _TXT_NEGATIVE_N = 0, 1, 2, 3, 4, 5


@njit(cache=True, nogil=True)
def _parse_model_text(buf, n, first_line, k, full, want_state, arena, name_off, a0,
                      weights, state, row0, slow_row, slow_col, slow_start, slow_end, slow_line):
    """Parse model lines in buf[:n] into rows row0.. of weights/state.

    ``first_line`` says buf starts with the bias line. Returns
    (rows, arena_used, nslow, err, err_line, err_field, fields_found).
    """
    pos = 0
    line = 0
    r = row0
    a = a0
    nslow = 0
    kw = 1 + k
    while pos < n:
        # one line
        field = 0
        is_bias = first_line and line == 0
        if is_bias:
            expect = 4 if full else 2
        else:
            expect = 3 * k + 4 if full else k + 2
        while True:
            while pos < n and (buf[pos] == 32 or buf[pos] == 9):
                pos += 1
            if pos >= n or buf[pos] == 10 or (buf[pos] == 13 and (pos + 1 >= n or buf[pos + 1] == 10)):
                break
            ts = pos
            while pos < n and buf[pos] != 32 and buf[pos] != 9 and buf[pos] != 10 and not (
                    buf[pos] == 13 and (pos + 1 >= n or buf[pos + 1] == 10)):
                pos += 1
            if field >= expect:
                field += 1
                continue
            if field == 0:
                if is_bias:
                    if not (pos - ts == 4 and buf[ts] == 98 and buf[ts + 1] == 105
                            and buf[ts + 2] == 97 and buf[ts + 3] == 115):
                        return r - row0, a, nslow, _TXT_BIAS, line, 0, 0
                for t in range(ts, pos):
                    arena[a] = buf[t]
                    a += 1
                name_off[r + 1] = a
            else:
                c = field - 1
                if is_bias:
                    # bias line: w [w_n w_z]
                    if c == 0:
                        col, is_w = 0, True
                    else:
                        col, is_w = c - 1, False
                elif c < kw:
                    col, is_w = c, True
                else:
                    col, is_w = c - kw, False
                if is_w or want_state:
                    x, st = floatfmt.parse_f64(buf, ts, pos)
                    if st == floatfmt.BAD:
                        return r - row0, a, nslow, _TXT_NUMBER, line, field, 0
                    if st == floatfmt.NONFINITE:
                        return r - row0, a, nslow, _TXT_NONFINITE, line, field, 0
                    if st == floatfmt.SLOW:
                        slow_row[nslow] = r
                        slow_col[nslow] = col if is_w else -1 - col
                        slow_start[nslow] = ts
                        slow_end[nslow] = pos
                        slow_line[nslow] = line
                        nslow += 1
                        x = 0.0
                    if not is_w and x < 0.0 and (col == 0 or (not is_bias and 2 <= col < 2 + k)):
                        # an accumulator of squared gradients cannot be negative:
                        # the columns are not where a full model has them
                        return r - row0, a, nslow, _TXT_NEGATIVE_N, line, field, 0
                    if is_w:
                        weights[r, col] = x
                    else:
                        state[r, col] = x
            field += 1
        if field == 0 and not is_bias:
            pass  # blank line
        elif field != expect:
            return r - row0, a, nslow, _TXT_FIELDS, line, field, field
        else:
            if is_bias:
                for c in range(1, kw):
                    weights[r, c] = 0.0
                if want_state:
                    for c in range(2, state.shape[1]):
                        state[r, c] = 0.0
            r += 1
        while pos < n and buf[pos] != 10:
            pos += 1
        pos += 1
        line += 1
    return r - row0, a, nslow, _TXT_OK, line, 0, 0


def _read_blocks(f, size=8 << 20, line_no=1):
    """(first line number, uint8 block of complete lines) over a binary file."""
    carry = b""
    while True:
        chunk = f.read(size)
        if not chunk:
            break
        data = carry + chunk if carry else chunk
        cut = data.rfind(b"\n")
        if cut < 0:
            carry = data
            continue
        carry = data[cut + 1:]
        block = np.frombuffer(data, dtype=np.uint8, count=cut + 1)
        yield line_no, block
        line_no += data.count(b"\n", 0, cut + 1)
    if carry:
        yield line_no, np.frombuffer(carry, dtype=np.uint8)


def _fields(line):
    """A model line's fields, split as the loader splits them (spaces, tabs)."""
    if line.endswith(b"\n"):
        line = line[:-1]
    if line.endswith(b"\r"):
        line = line[:-1]
    return [t for t in re.split(rb"[ \t]+", line) if t]


def _txt_shape(path, skip=0):
    """(k or None, full, lines) from the bias line and the first feature line
    (``skip``: bytes before the bias line, an FFM's header line)."""
    with open(path, "rb") as f:
        f.seek(skip)
        first = f.readline(1 << 16)
        second = f.readline()
        lines = first.count(b"\n") + second.count(b"\n")
        while True:
            b = f.read(8 << 20)
            if not b:
                break
            lines += b.count(b"\n")
    if not first:
        raise ModelError("%s: empty file, not a model" % path)
    bias = _fields(first)
    if not bias or bias[0] != b"bias" or len(bias) not in (2, 4):
        raise ModelError("%s: not an FM model: the first line must be 'bias w w_n w_z' "
                         "(or 'bias w' in a stripped model)" % path)
    full = len(bias) == 4
    k = None
    fields = _fields(second)
    if fields:
        t = len(fields) - 1
        if full:
            if (t - 3) % 3 or t < 3:
                raise ModelError("%s line 2: %d fields is not a full model line "
                                 "(name w v_1..v_k w_n w_z v_n_1..v_n_k v_z_1..v_z_k)"
                                 % (path, len(fields)))
            k = (t - 3) // 3
        else:
            k = t - 1
    return k, full, lines + 1


def _field_desc(k, full, is_bias):
    if is_bias:
        return "bias w w_n w_z" if full else "bias w"
    if full:
        return "name w v_1..v_%d w_n w_z v_n_1..v_n_%d v_z_1..v_z_%d" % (k, k, k)
    return "name w v_1..v_%d" % k


FFM_TXT = b"ffm"  # the first word of an FFM's text model


def ffm_header_line(meta):
    """An FFM's text models start with this line (b"" for an FM)::

        ffm k=K max_fields=F field_sep=SEP fields NAME_1 .. NAME_n
    """
    if not is_ffm(meta):
        return b""
    return b"%s k=%d max_fields=%d field_sep=%s fields%s\n" % (
        FFM_TXT, meta["field_k"], meta["max_fields"], meta["field_sep"],
        b"".join(b" " + n for n in meta["fields"]))


def _txt_ffm_header(path):
    """(the FFM entries of a text model's header line, its length in bytes), or (None, 0) for an FM."""
    with open(path, "rb") as f:
        line = f.readline(1 << 20)
    words = _fields(line)
    if not words or words[0] != FFM_TXT:
        return None, 0
    if not line.endswith(b"\n"):
        raise ModelError("%s line 1: the ffm header line is cut off" % path)
    info = {"model": "ffm"}
    try:
        i = 1
        while i < len(words) and words[i] != b"fields":
            key, eq, val = words[i].partition(b"=")
            if not eq:
                raise ValueError(words[i])
            info[key.decode()] = val
            i += 1
        if i == len(words):
            raise ValueError("no 'fields'")
        info["fields"] = words[i + 1:]
        info["field_k"] = int(info["k"])
        del info["k"]
        info["max_fields"] = int(info["max_fields"])
        fields = fields_of_info(info)
    except (KeyError, ValueError, UnicodeDecodeError) as e:
        raise ModelError("%s line 1: not an ffm header line 'ffm k=K max_fields=F field_sep=SEP fields "
                         "NAME...' (%s)" % (path, e)) from None
    if not 0 <= info["field_k"] <= MAX_K or not 1 <= info["max_fields"] <= MAX_FIELDS or (
            info["field_k"] * info["max_fields"] > MAX_K):
        raise ModelError("%s line 1: ffm k=%d max_fields=%d out of range" % (path, info["field_k"],
                                                                             info["max_fields"]))
    info["field_sep"] = fields.sep
    return info, len(line)


def read_txt(path, k=None, state=True, dtype=None):
    """Read an alphaFM/streamfm text model into ModelArrays.

    ``k``: the expected factor count (-dim); checked against the file.
    ``state``: True requires the FTRL columns, False skips them (enough for
    prediction), None reads them when the file has them.
    """
    head, skip = _txt_ffm_header(path)
    fk, full, n_lines = _txt_shape(path, skip)
    if head is not None:
        want = head["field_k"] * head["max_fields"]
        if fk is not None and fk != want:
            raise ModelError("%s line 2: %d factors per line, but the ffm header says k=%d x max_fields=%d"
                             % (path, fk, head["field_k"], head["max_fields"]))
        fk = want
    if fk is None:
        fk = 0 if k is None else int(k)
    if k is not None and int(k) != fk:
        raise ModelError("%s: model has %d factors (-dim ...,%d) but %d were asked for"
                         % (path, fk, fk, int(k)))
    if state and not full:
        raise ModelError("%s: stripped model (w and v only) has no training state; "
                         "it can be used for prediction, not for -im" % path)
    want_state = full if state is None else (state and full)
    dtype = np.dtype(dtype or np.float64)
    cap = n_lines + 1
    weights = np.zeros((cap, 1 + fk), dtype=dtype)
    st = np.zeros((cap if want_state else 0, 2 + 2 * fk), dtype=dtype)
    name_off = np.zeros(cap + 1, dtype=np.int64)
    arena = np.zeros(max(os.path.getsize(path), 16), dtype=np.uint8)
    rows = 0
    a = 0
    with open(path, "rb") as f:
        first = True
        f.seek(skip)
        for line_no, block in _read_blocks(f, line_no=2 if skip else 1):
            nb = block.shape[0]
            slow = [np.empty(nb // 2 + 2, np.int64) for _ in range(5)]
            got, a, nslow, err, eline, efield, found = _parse_model_text(
                block, nb, first, fk, full, want_state, arena, name_off, a,
                weights, st, rows, *slow)
            if err != _TXT_OK:
                cut = block[-1] != 10 and eline == int(np.count_nonzero(block == 10))
                _raise_txt_error(path, line_no + eline, err, efield, found, fk, full,
                                 first and eline == 0, block, eline, cut)
            for j in range(nslow):
                text = bytes(block[slow[2][j]:slow[3][j]])
                x = float(text)
                if abs(x) == float("inf"):
                    raise ModelError("%s line %d: %r is not a finite number"
                                     % (path, line_no + slow[4][j], text.decode()))
                col = slow[1][j]
                if col >= 0:
                    weights[slow[0][j], col] = x
                else:
                    st[slow[0][j], -1 - col] = x
            rows += got
            first = False
            if block.shape[0] and block[-1] != 10:
                # writers end every line; a last line without one lost its tail
                raise ModelError("%s line %d: truncated: the last line has no end of line"
                                 % (path, line_no + int(np.count_nonzero(block == 10))))
    if rows == 0:
        raise ModelError("%s: no bias line" % path)
    meta = {"k": fk, "dtype": dtype_name(dtype), "n_rows": rows, "format": "txt", "full": full}
    if head is not None:
        meta.update(head)
    return ModelArrays(arena[:a], name_off[: rows + 1], weights[:rows],
                       st[:rows] if want_state else None, meta)


def duplicate_error(arrays, path):
    """The ModelError for a name that appears twice in a model file (one line
    would silently shadow the other); building the feature table finds it."""
    first, second = _first_duplicate(arrays)
    where = " (lines %d and %d)" % (first + 1, second + 1) if arrays.info.get("format") == "txt" else ""
    return ModelError("%s: feature %r appears twice%s" % (path, arrays.name(second), where))


def _first_duplicate(arrays):
    seen = {}
    for r in range(1, arrays.n_rows):
        name = arrays.name_bytes(r)
        if name in seen:
            return seen[name], r
        seen[name] = r
    return 0, 0


def _raise_txt_error(path, line_no, err, field, found, k, full, is_bias, block, eline, cut):
    msg = _txt_error(path, line_no, err, field, found, k, full, is_bias, block, eline)
    if cut and not (err == _TXT_FIELDS and found < _expected_fields(k, full, is_bias)):
        msg += "; the last line has no end of line: the file looks truncated"
    raise ModelError(msg)


def _expected_fields(k, full, is_bias):
    return (4 if full else 2) if is_bias else (3 * k + 4 if full else k + 2)


def _txt_error(path, line_no, err, field, found, k, full, is_bias, block, eline):
    """The one-line message for a text model error."""
    if err == _TXT_BIAS:
        return "%s: not an FM model: the first line must be the bias line (%s)" % (
            path, _field_desc(k, full, True))
    if err == _TXT_FIELDS:
        expect = _expected_fields(k, full, is_bias)
        return "%s line %d: %d fields, expected %d (%s)%s" % (
            path, line_no, found, expect, _field_desc(k, full, is_bias),
            "; the file may be truncated" if found < expect else "")
    where = "%s line %d field %d: %r" % (path, line_no, field + 1, _line_field(block, eline, field))
    if err == _TXT_NEGATIVE_N:
        return "%s is negative where the model needs an n (a sum of squares): not a %s line" % (
            where, _field_desc(k, full, is_bias))
    if err == _TXT_NONFINITE:
        return "%s is not a finite number" % where
    return "%s is not a number" % where


def _line_field(block, eline, field):
    lines = bytes(block).split(b"\n")
    fields = _fields(lines[eline]) if eline < len(lines) else []
    return fields[field].decode("utf-8", "backslashreplace")[:40] if field < len(fields) else ""


# ----------------------------------------------------------------------------
# Binary format


def write_bin(src, path, state=True):
    """Write ``src`` (Model or ModelArrays) in streamfm's binary format (container.py).

    A full model keeps its FTRL rows as the trainer holds them (``params``),
    so continuing it is one read; (w, v) are stored as ``weights`` only when
    the source states them outright (a stripped model, or one converted from
    text, whose v may be alphaFM's last-used values rather than derived ones);
    otherwise they are derived a chunk of rows at a time as they are written.
    """
    arena, name_off = src.names()
    n = src.n_rows
    k = src.k
    has_state = bool(state) and src.has_state
    arrays = [container.Array("names", np.uint8, (int(name_off[n]),), arena[: name_off[n]]),
              container.Array("name_off", np.int64, (n + 1,), name_off[: n + 1])]
    if has_state:
        arrays.append(container.Array("params", src.dtype, (n, ftrl.n_cols(k)), src.file_params))
    if not has_state or src.explicit_weights is not None:
        arrays.append(container.Array("weights", src.dtype, (n, 1 + k),
                                      lambda: (c[2] for c in src.chunks(weights=True, state=False))))
    header = dict(src.meta())
    header.update({"format": FORMAT_NAME, "version": FORMAT_VERSION, "k": k,
                   "dtype": dtype_name(src.dtype), "n_rows": n, "has_state": has_state,
                   "params_columns": PARAMS_COLUMNS})
    container.write(FFM_KIND if is_ffm(header) else KIND, path, header, arrays)


def read_bin_header(path):
    """The header dict of a binary model, every number in it checked."""
    return _read_bin_header(path)[0]


def _read_bin_header(path):
    """(header, {name: container.Spec}) of a binary model, checked."""
    header, size = container.read_header(FFM_KIND, path)
    return header, _check_bin_header(path, header, size)


# What a binary model's header may say. Its dtype strings are looked up
# here, never handed to numpy: np.dtype('O') or a structured dtype from a
# crafted file would make numpy read pointers from the file.
_FLOAT_DTYPES = {"float32": np.dtype("<f4"), "float64": np.dtype("<f8")}
MAX_K = 1 << 16  # factors a model may have (-dim checks it too)
MAX_FIELDS = 1 << 12  # an FFM's field capacity (--max-fields checks it too)


def _check_bin_header(path, header, size):
    """Every number the reader trusts, checked against the others before any
    array is read; returns the arrays' specs (container.array_specs)."""
    k, n, dtype = header.get("k"), header.get("n_rows"), header.get("dtype")
    if not container.is_int(k) or not 0 <= k <= MAX_K:
        raise ModelError("%s: corrupted header: k = %r is not a factor count (0 to %d)" % (path, k, MAX_K))
    if not container.is_int(n) or n < 1:
        raise ModelError("%s: corrupted header: n_rows = %r (at least the bias row)" % (path, n))
    if dtype not in _FLOAT_DTYPES:
        raise ModelError("%s: corrupted header: dtype %r (float32 or float64)" % (path, dtype))
    ft = _FLOAT_DTYPES[dtype]
    specs = container.array_specs(KIND, path, header, size, {
        "names": (np.dtype(np.uint8), (None,)), "name_off": (np.dtype("<i8"), (n + 1,)),
        "params": (ft, (n, ftrl.n_cols(k))), "weights": (ft, (n, 1 + k))})
    for name in ("names", "name_off"):
        if name not in specs:
            raise ModelError("%s: corrupted header: no %r array" % (path, name))
    if "params" not in specs and "weights" not in specs:
        raise ModelError("%s: corrupted header: neither FTRL rows nor weights" % path)
    if "has_state" in header and bool(header["has_state"]) != ("params" in specs):
        raise ModelError("%s: corrupted header: has_state disagrees with its arrays" % path)
    hyper = header.get("hyper")
    if hyper is not None:
        if not isinstance(hyper, dict):
            raise ModelError("%s: corrupted header: hyper-parameters %r" % (path, hyper))
        for name in ftrl.HP_NAMES:
            why = ftrl.hp_error(name, hyper[name]) if name in hyper else None
            if why:
                raise ModelError("%s: corrupted header: %s %s" % (path, name, why))
    if header.get("fvs", 0) not in (0, 1):  # True == 1, False == 0
        raise ModelError("%s: corrupted header: fvs %r" % (path, header.get("fvs")))
    seed = header.get("seed")
    if seed is not None and not (container.is_int(seed) and -(1 << 63) <= seed < 1 << 63):
        raise ModelError("%s: corrupted header: seed %r is not a 64-bit integer" % (path, seed))
    seen = header.get("samples_seen")
    if seen is not None and not (container.is_int(seen) and seen >= 0):
        raise ModelError("%s: corrupted header: samples_seen %r" % (path, seen))
    if header.get("model", "fm") not in ("fm", "ffm"):
        raise ModelError("%s: corrupted header: model %r (fm or ffm)" % (path, header.get("model")))
    if is_ffm(header):
        fk, nf, names = header.get("field_k"), header.get("max_fields"), header.get("fields")
        if not (container.is_int(fk) and container.is_int(nf) and 1 <= nf <= MAX_FIELDS and fk * nf == k
                and isinstance(names, list) and len(names) <= nf and all(isinstance(x, bytes) for x in names)
                and isinstance(header.get("field_sep"), bytes)):
            raise ModelError("%s: corrupted header: ffm field_k %r, max_fields %r, fields or field_sep"
                             % (path, fk, nf))
        try:
            fields_of_info(header)
        except ValueError as e:
            raise ModelError("%s: corrupted header: %s" % (path, e)) from None
    return specs


def read_bin(path, k=None, state=True, verify=True, extra_rows=0, mmap=False, keep_pages=False):
    """Read a binary model into ModelArrays.

    ``state``: True requires the FTRL rows, False reads only what prediction
    needs, None reads everything. ``extra_rows``: spare capacity behind the
    FTRL rows, so a continued model needs no second copy of them.
    ``mmap``: map the arrays read-only instead of reading them
    (``container.MappedFile``): the pages come from the page cache, shared
    by every process that maps the file, and only those touched become
    resident. The arrays are read-only: for prediction, or for reading the
    FTRL rows (``state=True``: the merge); never with ``extra_rows`` (a
    model that will train). The file must then be replaced by
    renaming a new one over it (as every streamfm writer does), never
    rewritten in place. ``keep_pages``: with ``mmap``, the pages the checks
    read stay resident (``container.read_arrays``): for a caller about to
    read every row.
    """
    if mmap and extra_rows:
        raise ValueError("a memory-mapped model is read-only: it cannot keep training (extra_rows)")
    header, specs = _read_bin_header(path)
    mk = int(header["k"])
    if k is not None and int(k) != mk:
        raise ModelError("%s: model has %d factors (-dim ...,%d) but %d were asked for"
                         % (path, mk, mk, int(k)))
    if "params" in specs and header.get("params_columns") != PARAMS_COLUMNS:
        raise ModelError("%s: FTRL rows in an unknown layout (%r)" % (path, header.get("params_columns")))
    if state and "params" not in specs:
        raise ModelError("%s: stripped model (w and v only) has no training state; "
                         "it can be used for prediction, not for -im" % path)
    want = ["names", "name_off"]
    if "params" in specs and (state is not False or "weights" not in specs):
        want.append("params")
    if "weights" in specs:
        want.append("weights")
    mapped = container.MappedFile(path) if mmap else None
    out = container.read_arrays(KIND, path, [specs[name] for name in want], verify=verify, mapped=mapped,
                                spare_rows={"params": extra_rows}, keep_pages=keep_pages)
    n = int(header["n_rows"])
    off = out["name_off"]
    if off.shape[0] != n + 1 or off[0] != 0 or off[-1] != out["names"].shape[0] or np.any(np.diff(off) < 0):
        raise ModelError("%s: corrupted: inconsistent name offsets" % path)
    if mmap and not keep_pages:
        mapped.drop(off)  # that check touched every page: only what is used stays resident
    meta = {key: header[key] for key in header if key not in ("arrays", "params_columns")}
    meta["format"] = "bin"
    arrays = ModelArrays(out["names"], off, out.get("weights"), None, meta, params=out.get("params"))
    if mmap:
        arrays.mapped = mapped
    return arrays


# ----------------------------------------------------------------------------
# Entry points


def detect_format(path):
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except FileNotFoundError:
        raise ModelError("%s: no such model file" % path) from None
    except IsADirectoryError:
        raise ModelError("%s: is a directory, not a model file" % path) from None
    except OSError as e:
        raise ModelError("%s: cannot read: %s" % (path, e.strerror or e)) from None
    if not head:
        raise ModelError("%s: empty file, not a model" % path)
    # a binary model cut inside its magic number is still a binary model
    return "bin" if MAGIC.startswith(head) else "txt"


def read_ffm_header(path):
    """The FFM entries of a model file's header (field_k, max_fields, field_sep, fields), or None for an FM."""
    info = _txt_ffm_header(path)[0] if detect_format(path) == "txt" else read_bin_header(path)
    return info if info is not None and is_ffm(info) else None


def read_model(path, k=None, state=True, fmt=None, dtype=None, extra_rows=0, table=False, mmap=False,
               ffm=False, keep_pages=False):
    """ModelArrays from a txt or bin model file (format detected from its bytes).

    ``fmt`` (the -mf/-imf flag) is accepted for alphaFM compatibility; the
    file's bytes decide. ``dtype`` converts the numbers; ``extra_rows`` leaves
    spare FTRL rows for a model that will keep training (binary files).
    ``table``: also build the feature table (``arrays.table``), which is how
    a name that appears twice is found; callers that build their own table
    pass False and get the same error from ``table_for``.
    ``mmap``: memory-map a binary model's arrays (``read_bin``; read-only);
    text models are read as usual. ``keep_pages``: see ``read_bin``.
    ``ffm``: a field-aware FM's file is read too (``k`` is then its factors
    per field); without it, such a file raises ModelError (the caller needs an FM).
    """
    real = detect_format(path)
    kind = read_ffm_header(path)
    if kind is not None:
        if not ffm:
            refuse_ffm(kind, path)
        if k is not None and int(k) != kind["field_k"]:
            raise ModelError("%s: ffm model has %d factors per field (-dim ...,%d) but %d were asked for"
                             % (path, kind["field_k"], kind["field_k"], int(k)))
        k = None
    if real == "txt":
        arrays = read_txt(path, k=k, state=state, dtype=dtype)
    else:
        arrays = read_bin(path, k=k, state=state, extra_rows=extra_rows,
                          mmap=mmap and (dtype is None or np.dtype(dtype) == file_dtype(path)), keep_pages=keep_pages)
        if dtype is not None and np.dtype(dtype) != arrays.dtype:
            def conv(a):
                return None if a is None else a.astype(dtype)
            arrays = ModelArrays(arrays.arena, arrays.name_off, conv(arrays.explicit_weights), None,
                                 arrays.info, params=conv(arrays.params))
    arrays.path = path
    if table:
        arrays.table = table_for(arrays)
    return arrays


def table_for(arrays, row_capacity=0, arena_capacity=0, share=False):
    """The FeatureTable of a model file's names (ModelError on a duplicate).

    A binary model's hash key is reused, so a continued run keeps it; a
    text model has none and gets a fresh one (table.py).
    ``share``: a lookup-only table over the file's own name arrays (no copy;
    e.g. read-only views of a memory-mapped model).
    """
    path = getattr(arrays, "path", "model")
    try:
        return FeatureTable.from_names(arrays.arena, arrays.name_off, arrays.n_rows,
                                       row_capacity=row_capacity, arena_capacity=arena_capacity,
                                       key=stored_key(arrays.info, path), share=share)
    except DuplicateName:
        raise duplicate_error(arrays, path) from None
    except ValueError as e:
        raise ModelError("%s: %s" % (path, e)) from None


def stored_key(info, path="model"):
    """The table hash key a model file holds (uint64[2]), or None (text models)."""
    b = info.get("hash_key")
    if b is None:
        return None
    try:
        return key_from_bytes(b)
    except ValueError:
        raise ModelError("%s: corrupted header: hash_key is not %d bytes" % (path, KEY_BYTES)) from None


def file_dtype(path):
    """The number type a model file holds (text models load as float64)."""
    if detect_format(path) == "bin":
        return _FLOAT_DTYPES[read_bin_header(path)["dtype"]]
    return np.dtype(np.float64)


def model_has_state(path):
    """Whether a binary model holds the FTRL state (False: stripped, w and v only)."""
    return bool(read_bin_header(path).get("has_state", True))


def write_model(src, path, fmt="txt", state=True):
    if fmt == "bin":
        write_bin(src, path, state=state)
    elif fmt == "txt":
        write_txt(src, path, state=state)
    else:
        raise ValueError("model format must be 'txt' or 'bin', not %r" % (fmt,))
