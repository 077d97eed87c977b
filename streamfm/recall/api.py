"""``streamfm.Recall``: FM recall from Python (fm_recall train / index / query).

A thin layer over the recall modules, doing what the fm_recall commands do,
with Python objects in and out: samples are any input ``streamfm.FM``
takes as lines (bytes, a path, a file object, an iterable of lines);
models are ``streamfm.FM`` objects; an index is a ``recall.index.Index``
(``save_index``/``load_index`` for its file). Library calls print nothing
and install no signal handlers; errors are streamfm's typed exceptions.
"""

import logging
import numbers
import os

import numpy as np

from .. import parse
from ..badlines import RunSummary
from ..errors import ParameterError
from ..fm import FM, run_options
from ..inputs import as_stream
from .embed import embed
from .index import FaissMissing, Index, PairTable, Searcher, model_fingerprint, read_index, write_index
from .keys import KeyIndex
from .query import MODES, QueryRunner, QuerySummary, run_queries
from .records import RecordReader
from .defaults import RECALL_HP
from .trainer import Catalog, Config, HardModel, drop_untrained, train

logger = logging.getLogger("streamfm")


def _records(data, mode, opts, source, table=None, model=None, progress=None):
    """(Records, the RecordReader that read them: lines, bad) of ``data``."""
    src = as_stream(data, need_labels=False)
    with src:
        reader = RecordReader(src.stream, mode, opts, logger.warning, source, table=table, model=model,
                              progress=progress)
        return reader.read_all(), reader


class IndexReport(RunSummary):
    """What ``Recall.index`` read and built: ``lines``, ``bad`` and
    ``bad_description`` (the bad lines, skipped), ``records`` indexed,
    ``duplicates`` (repeated keys; the first line of each is kept),
    ``features`` and ``unknown_features`` (feature occurrences, and those the
    model does not know: they contribute nothing), ``empty`` (records with no
    known feature: vector 0)."""

    def __init__(self, reader, recs, duplicates, empty):
        RunSummary.__init__(self)
        self.lines = reader.lines
        self.take_bad(reader.bad)
        self.records = recs.n
        self.duplicates = int(duplicates)
        self.features = int(recs.rows.shape[0])
        self.unknown_features = int((recs.rows < 0).sum())
        self.empty = int(empty)

    def __repr__(self):
        return "IndexReport(%d records, %d lines, %d bad)" % (self.records, self.lines, self.bad)


class Recall:
    r"""u2i, i2i, u2u and i2u retrieval with one FM (docs/design.md, "Recall").

    With a sample's features split into a user part U and an item part I,
    the FM score is

    .. math::

        \hat{y} = w_0 + \mathrm{lin}(U) + \mathrm{lin}(I) + \mathrm{inter}(U) + \mathrm{inter}(I)
                  + \langle V_U, V_I \rangle, \quad V_S = \sum_{f \in S} v_f x_f,

    so an item is indexed as :math:`[V_I, \mathrm{lin}(I) + \mathrm{inter}(I)]`
    and a user queries with :math:`[V_U, 1]`: ranking by the inner product is
    ranking by the FM score. i2i and u2u rank by the cosine of V.

    ``Recall(fm)`` wraps a trained ``streamfm.FM``; ``Recall.train`` trains one
    on clicks. Files: items ``ITEM_KEY NAME:VALUE ...``, users
    ``USER_KEY NAME:VALUE ...``, clicks ``USER_KEY NAME:VALUE ... | ITEM_KEY``.

    Examples
    --------
    >>> from streamfm import Recall
    >>> items = [b"i%d item=%d cat=%d" % (i, i, i % 3) for i in range(30)]
    >>> clicks = [b"u%d user=%d | i%d" % (u, u, (u * 7 + j) % 30) for u in range(20) for j in range(3)]
    >>> rec = Recall.train(clicks, items, k=4, epochs=5, seed=1)
    >>> rec.report.clicks
    60
    >>> index = rec.index(items)
    >>> index.n, index.k
    (30, 4)
    >>> results = rec.search([b"u3 user=3"], index, mode="u2i", topn=3)
    >>> results[0][0], len(results[0][1])
    ('u3', 3)
    """

    def __init__(self, fm):
        if not isinstance(fm, FM):
            raise TypeError("Recall wraps a streamfm.FM, not a %s" % type(fm).__name__)
        fm.require_fm("Recall")
        self.fm = fm
        self.report = None

    @staticmethod
    def read_catalog(items, fm, *, on_error="skip", max_bad_fraction=None, bad_lines=None, source="items",
                     progress=None):
        """The catalog negatives are drawn from: ``items`` lines ``ITEM_KEY NAME:VALUE ...``.

        Their features become rows of ``fm`` (which is then trained on them).
        A key given twice keeps its first line (``catalog.duplicates`` counts
        the others). ``source`` names the input in bad-line messages and the
        ``bad_lines`` file; ``progress(reader)`` is called after each block
        (``reader.lines``, ``reader.bad.count``). Give the result to ``train``
        as its ``items``, e.g. to report on the catalog before training.
        """
        fm.require_fm("Recall.read_catalog")
        opts = run_options(fm.k0, fm.k1, 1, on_error, max_bad_fraction, bad_lines)
        recs, _ = _records(items, parse.KEYED, opts, source, model=fm.training_model(), progress=progress)
        return Catalog(recs)

    @classmethod
    def train(cls, clicks, items, *, fm=None, epochs=None, neg=None, neg_dist=None, pop_suppress=None,
              hard_neg=None, loss=None, margin=None, max_sampled=None, refresh=None, seen_pairs=None,
              hard_neg_model=None, cores=1, on_error="skip", max_bad_fraction=None, bad_lines=None,
              source="clicks", progress=None, stop=None, keep_untrained=False, **fm_params):
        """Train an FM for recall on click lines; returns a Recall (``.report``: the trainer's summary).

        ``items``: the catalog negatives are drawn from (lines, or a catalog
        from ``read_catalog``). ``fm``: an FM to
        continue (a recall model, or any with factors); otherwise a new
        ``FM(**fm_params)`` (``k`` >= 1). ``epochs`` passes (more than 1 holds
        the clicks in memory and reshuffles them every pass); ``neg``
        negatives per click drawn ``neg_dist`` ("uniform", "pop", "pop0.75");
        ``pop_suppress``: word2vec's subsampling threshold of popular items;
        ``hard_neg``: candidates drawn per click, of which the ``neg`` the model
        scores highest are kept (0: off); ``hard_neg_model``: an FM that scores
        them instead of the one being trained; ``loss``: "warp" (with
        ``max_sampled``), "hinge" (with ``margin``), "bpr" or "logistic";
        ``refresh``: clicks between recomputing the catalog's embeddings that
        warp and hard negatives score with; ``seen_pairs``: (user, item) clicks
        remembered in one pass so a user's own items are not their negatives.
        Every option left None takes fm_recall train's default
        (streamfm/recall/defaults.py), and a new FM takes fm_recall's
        hyper-parameters (``RECALL_HP``: -v_alpha 0.1) unless given. As
        fm_recall train, features no click or negative ever reached are left
        out of the model unless ``keep_untrained`` (the report's ``dropped``
        counts them).

        ``bad_lines``, ``source``: as for ``read_catalog``; ``progress(summary,
        pass_no, n_features)`` is called a few times a second; setting the
        ``threading.Event`` ``stop`` ends training after the chunk in hand
        (``report.interrupted`` then says so): the model keeps what it learnt.
        """
        if fm is None:
            fm = FM(**dict(RECALL_HP, **fm_params))
        elif fm_params:
            raise TypeError("give either fm or FM parameters, not both")
        if fm.k < 1:
            raise ParameterError("recall needs factors: k >= 1")
        if hard_neg and neg is not None and hard_neg <= neg:
            raise ParameterError("hard_neg draws that many candidates and keeps the neg (%d) best: it "
                                 "must be larger than neg" % neg)
        if hard_neg and loss == "warp":
            raise ParameterError("hard_neg is for hinge, bpr and logistic; warp draws its own hard negatives "
                                 "(max_sampled)")
        if seen_pairs is not None and (isinstance(seen_pairs, bool) or not isinstance(seen_pairs, numbers.Integral)
                                       or seen_pairs < 1):
            # 0 would be a memory of nothing that rotates for ever
            raise ParameterError("seen_pairs must be a whole number >= 1 (None: the default), not %r"
                                 % (seen_pairs,))
        if hard_neg_model is not None and not hard_neg:
            raise ParameterError("hard_neg_model scores the hard_neg candidates: give hard_neg too")
        fm.require_fm("Recall.train")
        if hard_neg_model is not None:
            hard_neg_model.require_fm("Recall.train (hard_neg_model)")
        opts = run_options(fm.k0, fm.k1, cores, on_error, max_bad_fraction, bad_lines)
        model = fm.training_model()
        try:
            if isinstance(items, Catalog):
                catalog = items
            else:
                catalog = Recall.read_catalog(items, fm, on_error=on_error, max_bad_fraction=max_bad_fraction,
                                              bad_lines=bad_lines)
            if catalog.n < 2:
                raise ParameterError("the catalog holds %d item(s); negatives need at least 2" % catalog.n)
            cfg = Config(loss=loss, margin=margin, neg=neg, neg_dist=neg_dist, pop_suppress=pop_suppress,
                         hard_neg=hard_neg, max_sampled=max_sampled, epochs=epochs, seed=fm.seed, k0=fm.k0,
                         k1=fm.k1, cores=opts.cores, refresh=refresh, seen_capacity=seen_pairs)
            hard = None if hard_neg_model is None else HardModel(hard_neg_model.serving_model())
            src = as_stream(clicks, need_labels=False)
            with src:
                summary = train(model, catalog, src.stream, cfg, opts, logger.warning, source=source, hard=hard,
                                stop=stop, progress=progress)
        except KeyError as e:
            raise ParameterError("unknown choice %s" % e) from None
        summary.interrupted = bool(stop is not None and stop.is_set())
        summary.dropped = 0
        if not keep_untrained:
            # what fm_recall train writes, and so what its index and query commands use
            arrays, summary.dropped = drop_untrained(model)
            fm.replace_model(arrays)
        rec = cls(fm)
        rec.report = summary
        return rec

    def index(self, records, kind="items", *, on_error="skip", max_bad_fraction=None, bad_lines=None,
              source=None, progress=None):
        """An Index of ``records`` (lines ``KEY NAME:VALUE ...``): each record's
        ``[V, lin + inter]`` from the features the model knows (a new item is
        embedded from its other features). Repeated keys keep their first line.
        ``kind``: "items" (for u2i, i2i) or "users" (for i2u, u2u).
        ``self.report`` becomes an IndexReport; ``source`` (default: ``kind``),
        ``bad_lines`` and ``progress`` as for ``read_catalog``.
        """
        if kind not in ("items", "users"):
            raise ParameterError("kind must be 'items' or 'users', not %r" % (kind,))
        sm = self.fm.serving_model()
        opts = run_options(True, True, 1, on_error, max_bad_fraction, bad_lines)
        recs, reader = _records(records, parse.KEYED, opts, source or kind, table=sm.table, progress=progress)
        keys = KeyIndex(recs.key_hash)
        if keys.duplicates:
            recs = recs.take(np.flatnonzero(keys.first_of == np.arange(recs.n)))
        vec, _own, empty = embed(recs, sm.weights, sm.k)
        self.report = IndexReport(reader, recs, keys.duplicates, empty)
        return Index(kind, vec, recs.key_arena, recs.key_off, model_fingerprint(sm.weights))

    @staticmethod
    def save_index(index, path):
        """Write ``index`` to ``path`` (atomically; fm_recall query reads it)."""
        write_index(str(path), index.kind, index.vectors, index.key_arena, index.key_off, index.model_info)

    @staticmethod
    def load_index(path):
        """The Index in the file ``path`` (from fm_recall index or ``save_index``)."""
        return read_index(str(path))

    def _runner(self, index, mode, topn, metric, exclude, query_index, backend, cores, on_error):
        """The QueryRunner of a search, its arguments checked (ParameterError)."""
        if mode not in MODES:
            raise ParameterError("mode must be one of %s, not %r" % (", ".join(MODES), mode))
        want_kind, query_kind, pair = MODES[mode]
        if index.kind != want_kind:
            raise ParameterError("mode %s searches %s, but the index holds %s" % (mode, want_kind, index.kind))
        if query_index is not None and query_index.kind != query_kind:
            raise ParameterError("mode %s queries with %s, but query_index holds %s"
                                 % (mode, query_kind, query_index.kind))
        if pair and metric == "cos":
            raise ParameterError("%s ranks by the FM score; metric is for i2i and u2u" % mode)
        if backend not in ("exact", "faiss"):
            raise ParameterError("backend must be 'exact' or 'faiss', not %r" % (backend,))
        metric = metric or ("ip" if pair else "cos")
        sm = self.fm.serving_model()
        for ix in (index, query_index):
            if ix is not None and ix.k != sm.k:
                raise ParameterError("the index has %d factors but the model %d" % (ix.k, sm.k))
        excl = None
        if exclude is not None:
            # a file's path names it in messages, as fm_recall query's --exclude
            name = str(exclude) if isinstance(exclude, (str, os.PathLike)) else "exclude"
            clicks, _ = _records(exclude, parse.CLICK, run_options(True, True, 1, on_error, None), name)
            excl = (PairTable(clicks.item_hash, index.keys.lookup(clicks.key_hash)) if mode == "i2u"
                    else PairTable(clicks.key_hash, index.keys.lookup(clicks.item_hash)))
        try:
            searcher = Searcher(index, pair, metric, cores, backend)
        except FaissMissing as e:
            err = ParameterError(str(e).replace("--backend", "backend"))
            err.flag_message = str(e)
            raise err from None
        return QueryRunner(sm, index, searcher, mode, topn, excl, query_index)

    def search(self, queries, index, mode="u2i", topn=10, *, metric=None, exclude=None, query_index=None,
               backend="exact", cores=1, on_error="skip"):
        """Answer query lines: a list of (query key, [(key, score), ...]), best first, in input order.

        ``mode``: "u2i" (items for a user line ``USER_KEY NAME:VALUE ...``),
        "i2u" (users for an item line), "i2i", "u2u" (similar records; a query
        line may hold only a key found in the index). ``metric`` ("cos" or
        "ip") for i2i and u2u. Scores: the raw FM score for u2i and i2u, else
        the cosine or inner product. ``exclude``: click lines ``A ... | B``
        never to return (u2i: item B for user A; i2u: user A for item B; i2i,
        u2u: B for query A). ``query_index``: where key-only queries take
        their vector. ``backend``: "exact" or "faiss". Bad query lines are
        skipped (``on_error="stop"``: BadInputError).
        """
        opts = run_options(True, True, cores, on_error, None)
        runner = self._runner(index, mode, topn, metric, exclude, query_index, backend, opts.cores, on_error)
        summary = QuerySummary()
        out = []
        src = as_stream(queries, need_labels=False)
        with src:
            reader = RecordReader(src.stream, parse.KEYED, opts, logger.warning, "queries", table=runner.model.table)
            for recs in reader:
                idx, sc, add = runner.answer(recs, summary)
                for q in range(recs.n):
                    hits = [(index.key(int(j)).decode("utf-8", "backslashreplace"), float(sc[q, a] + add[q]))
                            for a, j in enumerate(idx[q]) if j >= 0]
                    out.append((recs.key(q).decode("utf-8", "backslashreplace"), hits))
        self.report = summary
        summary.lines, summary.bad = reader.lines, reader.bad.count
        return out

    def write_results(self, queries, index, out, mode="u2i", topn=10, *, metric=None, exclude=None,
                      query_index=None, backend="exact", cores=1, on_error="skip", bad_lines=None,
                      source="queries", progress=None):
        """Answer query lines as fm_recall query does, writing its result lines
        ``QUERY_KEY<TAB>KEY:SCORE KEY:SCORE ...`` (best first, in input order)
        to the binary file ``out``; returns the summary (also ``self.report``:
        ``lines``, ``queries``, ``bad``, ``unresolved``, ``no_known``, ``seconds``).
        The arguments are ``search``'s; ``bad_lines``, ``source`` and
        ``progress(summary)`` as for ``read_catalog``.

        >>> import io
        >>> from streamfm import Recall
        >>> items = [b"i%d item=%d" % (i, i) for i in range(5)]
        >>> rec = Recall.train([b"u1 user=1 | i2"] * 20, items, k=2, epochs=3, seed=1)
        >>> out = io.BytesIO()
        >>> rec.write_results([b"u1 user=1"], rec.index(items), out, topn=1).queries
        1
        >>> out.getvalue()[:6]   # the clicked item first
        b'u1\\ti2:'
        """
        opts = run_options(True, True, cores, on_error, None, bad_lines)
        runner = self._runner(index, mode, topn, metric, exclude, query_index, backend, opts.cores, on_error)
        src = as_stream(queries, need_labels=False)
        with src:
            self.report = run_queries(runner, src.stream, out, opts, logger.warning, source, progress=progress)
        return self.report
