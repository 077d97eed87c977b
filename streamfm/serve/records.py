"""Raw records -> feature lines for /v1/score, through fm_sample's featurizer.

``fm_serve --spec SPEC`` scores ``{"records": [{"name": value, ...}, ...]}``:
each record is one impression as the log ``fm_sample rank`` reads has it (a
JSON-lines log row), and its features are built by the same
``streamfm.sample.Featurizer`` (the same kernels) as the training lines, so
a record scores exactly as its line in ``fm_sample rank``'s output does in
``fm_predict``.

A record's names are routed as the spec's ``[log]`` table routes the log's
columns: the user and item key columns, the ``fields`` columns
(``column = "user.X"``); a qualified attribute name ``user.X`` / ``item.X``
is taken too. The log's request, clicked and position columns are accepted
and ignored (they choose negatives offline, not features); any other name is
refused, so a misspelt attribute is an error, not a silently empty feature.
Attributes a record lacks come from the spec's profile tables, joined by the
user and item keys, as offline.
"""

import threading

import orjson

from ..sample.spec import SIDES


class RecordFeaturizer:
    """``create_app``'s ``featurizer``: records -> one feature line each.

    ``spec``: path of a frozen fm_sample spec (``fm_sample fit -o``) or a
    ``streamfm.sample.Featurizer``. Raises ``SpecError`` / ``OSError`` /
    ``ValueError`` when the spec or its profile tables cannot be loaded.
    """

    def __init__(self, spec):
        from ..sample import Featurizer

        self.featurizer = spec if isinstance(spec, Featurizer) else Featurizer(spec)
        self.path = None if isinstance(spec, Featurizer) else str(spec)
        plan = self.featurizer.plan
        log = self.featurizer.spec.data["log"]
        route = {}
        for side, name in enumerate(SIDES):
            for attr in plan.attrs[side]:
                route["%s.%s" % (name, attr)] = (name, attr)
        # the log's own column names come first (a column may be called "user.X")
        route[log["user"]] = ("user", plan.attrs[0][0])
        route[log["item"]] = ("item", plan.attrs[1][0])
        for col, src in log["fields"].items():
            route[col] = tuple(src.split(".", 1))
        self.route = route
        self.ignored = {c for c in (log["request"], log["clicked"], log["position"]) if c} - set(route)
        self.lock = threading.Lock()  # the Featurizer's buffers are its own

    def info(self):
        """What /healthz reports: the spec's path and fingerprint."""
        return {"path": self.path, "fingerprint": self.featurizer.fingerprint}

    def split(self, i, rec):
        """(user dict, item dict) of record ``i``; ValueError names a bad one."""
        if type(rec) is not dict:
            raise ValueError("records[%d]: a record is an object {\"name\": value}, not %s"
                             % (i, type(rec).__name__))
        user = {}
        item = {}
        for name, value in rec.items():
            to = self.route.get(name)
            if to is None:
                if name in self.ignored:
                    continue
                raise ValueError("records[%d]: unknown name %r (known: %s)"
                                 % (i, name, ", ".join(sorted(set(self.route) | self.ignored))))
            d = user if to[0] == "user" else item
            if to[1] in d:
                raise ValueError("records[%d]: %s.%s is given twice" % (i, to[0], to[1]))
            d[to[1]] = value
        return user, item

    def __call__(self, records):
        """One ``0 FEATURES`` line (str) per record, in order.

        Records with the same user part are featurized together (one
        Featurizer call: a ranking request's candidates share their user).
        """
        groups = {}
        for i, rec in enumerate(records):
            user, item = self.split(i, rec)
            try:
                ukey = orjson.dumps(user, option=orjson.OPT_SORT_KEYS)
            except TypeError as e:
                raise ValueError("records[%d]: %s" % (i, e)) from None
            g = groups.get(ukey)
            if g is None:
                g = groups[ukey] = (user, [], [])
            g[1].append(i)
            g[2].append(item)
        out = [None] * len(records)
        with self.lock:
            for user, where, items in groups.values():
                feats = self.featurizer.featurize({"user": user, "items": items})
                for i, f in zip(where, feats):
                    # an explicit label: a line is never read as starting with one
                    out[i] = "0 " + f.decode("utf-8", "surrogateescape")
        return out
