"""fm_sample: exposure logs -> FM training lines, with one featurizer offline and online.

A TOML feature spec (``spec.py``) names each output feature: its source
attribute (``user.X`` or ``item.X``), its kind (categorical id, tags, bucketed
continuous value, raw numeric value, history of the last N ids), crosses of
two or three features, user-list x item-list overlaps. ``fm_sample fit``
learns quantile edges (``sketch.QuantileSketch``) and id counts for min-count
(``sketch.CountTable``) into a frozen, fingerprinted spec. The featurizer
(``featurize.py``) turns raw records into feature lines; the CLI's log path
(``logs.py`` -> ``rank.py`` / ``recall.py``) and the online
``Featurizer.featurize({"user": {...}, "items": [{...}]})`` both run its
numba kernels, so offline and online features are the same bytes.

Module map:
    spec.py       TOML spec: validation, normalisation, frozen file, fingerprint, kernel plan
    sketch.py     streaming quantile sketch (stated rank error) and capped exact counts
    text.py       value canonicalisation and escaping (the one place for both)
    logs.py       log and profile-table readers (TSV, CSV, JSON lines) -> columnar blocks;
                  the bad-record policy
    featurize.py  encode (raw values -> tokens) and assemble (tokens -> lines) kernels,
                  profile tables, the online Featurizer
    fit.py        fm_sample fit: the learning pass
    rank.py       request grouping, skip-above, negative down-sampling, fm_train lines
    recall.py     fm_recall catalog / users / clicks files
    audit.py      per-field coverage, distinct values, mean |phi|, share of score
    cli.py        the fm_sample command group
"""

from .spec import SpecError, load_spec  # noqa: F401
from .featurize import Featurizer  # noqa: F401
