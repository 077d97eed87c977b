"""``streamfm.FMClassifier``: the FM as a scikit-learn style binary classifier.

It follows scikit-learn's estimator contract (``fit``, ``partial_fit``,
``predict_proba``, ``predict``, ``score``, ``get_params``/``set_params``,
``classes_``, ``n_features_in_``) without importing scikit-learn, which is
needed only to use it inside scikit-learn's tools (Pipeline, GridSearchCV):
it stands on ``streamfm.FM`` (``fm_``), which does the work.
"""

import inspect
import warnings

import numpy as np

from .ffm import DEFAULT_MAX_FIELDS, DEFAULT_SEP
from .fm import FM, HYPER_PARAMETERS


def _as_matrix(X):
    """X as a CSR matrix or a float64 2-D array, checked as scikit-learn checks it."""
    if hasattr(X, "tocsr") and hasattr(X, "shape"):
        X = X.tocsr()
        if not X.has_canonical_format:
            # a (row, column) stored twice means their sum to scipy (toarray, X @ w), as
            # to scikit-learn; as two terms of one feature the FM added a pair <v, v> x x
            # the dense matrix does not have. A copy: the caller's matrix is left as it was
            X = X.copy()
            X.sum_duplicates()
        if np.iscomplexobj(X.data):
            raise ValueError("Complex data not supported")
        data = np.asarray(X.data, dtype=np.float64)
        if not np.all(np.isfinite(data)):
            raise ValueError("Input contains NaN or infinity.")
        shape = X.shape
    else:
        a = np.asarray(X)
        if np.iscomplexobj(a):
            raise ValueError("Complex data not supported")
        if a.ndim == 0:
            raise ValueError("Expected 2D array, got scalar array instead. Reshape your data.")
        if a.ndim == 1:
            raise ValueError("Expected 2D array, got 1D array instead. Reshape your data either using "
                             "array.reshape(-1, 1) if it has a single feature or array.reshape(1, -1) "
                             "if it contains a single sample.")
        if a.ndim > 2:
            raise ValueError("Found array with dim %d. Expected <= 2." % a.ndim)
        a = a.astype(np.float64)  # TypeError/ValueError for what is not a number
        if not np.all(np.isfinite(a)):
            raise ValueError("Input contains NaN or infinity.")
        X, shape = a, a.shape
    if shape[0] < 1:
        raise ValueError("Found array with 0 sample(s) (shape=%s) while a minimum of 1 is required." % (shape,))
    if shape[1] < 1:
        raise ValueError("Found array with 0 feature(s) (shape=%s) while a minimum of 1 is required." % (shape,))
    return X


def _as_labels(y, n):
    if y is None:
        raise ValueError("requires y to be passed, but the target y is None")
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        try:
            from sklearn.exceptions import DataConversionWarning as warning
        except ImportError:
            warning = UserWarning
        warnings.warn("A column-vector y was passed when a 1d array was expected.", warning, stacklevel=3)
        y = y.ravel()
    if y.ndim != 1:
        raise ValueError("y must be 1-D, not of shape %s" % (y.shape,))
    if y.shape[0] != n:
        raise ValueError("Found input variables with inconsistent numbers of samples: [%d, %d]" % (n, y.shape[0]))
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)):
            raise ValueError("Input y contains NaN or infinity.")
        if np.any(y != np.round(y)):
            raise ValueError("Unknown label type: continuous. FMClassifier is a classifier: y must hold "
                             "class labels")
    if y.dtype.kind == "c":
        raise ValueError("Unknown label type: complex")
    return y


def _not_fitted_error():
    """streamfm's NotFittedError, which is also scikit-learn's where that is installed
    (its tools catch their own class)."""
    from .errors import NotFittedError

    try:
        from sklearn.exceptions import NotFittedError as theirs
    except ImportError:
        return NotFittedError
    global _BOTH
    if _BOTH is None:
        _BOTH = type("NotFittedError", (NotFittedError, theirs), {"__module__": __name__})
    return _BOTH


_BOTH = None


class FMClassifier:
    """A binary classifier: a Factorization Machine trained with FTRL-Proximal.

    The parameters are those of ``streamfm.FM`` (the model, its equation and
    its update: see there), plus:

    Parameters
    ----------
    epochs : int
        Passes over the data in ``fit`` (in order; FTRL is an online learner).
    cores : int
        Worker threads (Hogwild); with 1 (the default) ``fit`` is deterministic.
    model, field_sep, max_fields
        As ``streamfm.FM``: ``model="ffm"`` trains a field-aware FM, where a
        column's field is its name up to ``field_sep`` (a name without it,
        such as the default column names "0", "1", ..., is a field of its
        own), at most ``max_fields`` fields.

    ``fit(X, y)`` takes a 2-D array or a scipy.sparse matrix of feature
    values and labels of two classes; column j is the feature named ``"j"``
    (or ``feature_names[j]``, or the DataFrame's column name). The second
    class of ``classes_`` (sorted) is the positive one. A sample the model
    cannot take (an FFM's field beyond ``max_fields``) stops ``fit`` with a
    ``streamfm.BadInputError``: an estimator does not skip rows silently.

    Attributes: ``fm_`` (the trained ``streamfm.FM``), ``classes_``,
    ``n_features_in_``, ``feature_names_in_`` (for a DataFrame).

    Examples
    --------
    >>> import numpy as np
    >>> from streamfm import FMClassifier
    >>> rng = np.random.default_rng(0)
    >>> X = (rng.random((400, 6)) < 0.3).astype(float)
    >>> y = np.where(X[:, 0] + X[:, 1] * X[:, 2] > 0, "click", "skip")
    >>> clf = FMClassifier(k=4, epochs=5, w_alpha=0.5, v_alpha=0.5).fit(X, y)
    >>> clf.classes_
    array(['click', 'skip'], dtype='<U5')
    >>> clf.predict_proba(X[:2]).shape
    (2, 2)
    >>> float(clf.score(X, y)) > 0.9
    True
    """

    def __init__(self, k0=True, k1=True, k=8, init_stdev=0.1, w_alpha=0.05, w_beta=1.0, w_l1=0.1, w_l2=5.0,
                 v_alpha=0.05, v_beta=1.0, v_l1=0.1, v_l2=5.0, fvs=False, dtype="float64", seed=0, epochs=1,
                 cores=1, model="fm", field_sep=DEFAULT_SEP, max_fields=DEFAULT_MAX_FIELDS):
        self.k0 = k0
        self.k1 = k1
        self.k = k
        self.init_stdev = init_stdev
        self.w_alpha = w_alpha
        self.w_beta = w_beta
        self.w_l1 = w_l1
        self.w_l2 = w_l2
        self.v_alpha = v_alpha
        self.v_beta = v_beta
        self.v_l1 = v_l1
        self.v_l2 = v_l2
        self.fvs = fvs
        self.dtype = dtype
        self.seed = seed
        self.epochs = epochs
        self.cores = cores
        self.model = model
        self.field_sep = field_sep
        self.max_fields = max_fields

    # -- scikit-learn's parameter protocol ----------------------------------------
    @classmethod
    def _get_param_names(cls):
        return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]

    def get_params(self, deep=True):
        """The constructor's parameters as {name: value}."""
        return {name: getattr(self, name) for name in self._get_param_names()}

    def set_params(self, **params):
        """Set constructor parameters (they take effect at the next ``fit``); returns self."""
        valid = self._get_param_names()
        for name, value in params.items():
            if name not in valid:
                raise ValueError("Invalid parameter %r for estimator %s. Valid parameters are: %s."
                                 % (name, type(self).__name__, sorted(valid)))
            setattr(self, name, value)
        return self

    def __repr__(self):
        default = inspect.signature(type(self).__init__).parameters
        changed = ["%s=%r" % (n, v) for n, v in self.get_params().items()
                   if not (isinstance(v, type(default[n].default)) and v == default[n].default)]
        return "%s(%s)" % (type(self).__name__, ", ".join(changed))

    def __sklearn_tags__(self):
        # called by scikit-learn only, so it is installed when this runs
        from sklearn.utils import ClassifierTags, InputTags, Tags, TargetTags

        return Tags(estimator_type="classifier", target_tags=TargetTags(required=True),
                    classifier_tags=ClassifierTags(multi_class=False, poor_score=True),
                    input_tags=InputTags(sparse=True), non_deterministic=self.cores != 1)

    def _more_tags(self):  # scikit-learn before 1.6
        return {"binary_only": True, "poor_score": True, "non_deterministic": self.cores != 1}

    def __sklearn_is_fitted__(self):
        return hasattr(self, "fm_")

    # -- fitting -------------------------------------------------------------------
    def _new_fm(self):
        hp = {n: getattr(self, n) for n in HYPER_PARAMETERS}
        return FM(k0=self.k0, k1=self.k1, k=self.k, fvs=self.fvs, dtype=self.dtype, seed=self.seed,
                  model=self.model, field_sep=self.field_sep, max_fields=self.max_fields, **hp)

    @staticmethod
    def _given_names(X, feature_names):
        if feature_names is not None:
            return [str(n) for n in feature_names]
        if hasattr(X, "columns") and all(isinstance(c, str) for c in X.columns):
            return list(X.columns)
        return None

    def _names(self, X, feature_names, reset):
        names = self._given_names(X, feature_names)
        if reset:
            if names is not None and hasattr(X, "columns"):
                self.feature_names_in_ = np.asarray(names, dtype=object)
            elif hasattr(self, "feature_names_in_"):
                del self.feature_names_in_
            self._feature_names = names
        elif names is not None and feature_names is None:
            # a DataFrame's columns after fit: features are found by name, so other names
            # were features the model does not know, scored silently as absent
            fitted = self._feature_names
            if fitted is None:
                warnings.warn("X has feature names, but %s was fitted without feature names"
                              % type(self).__name__, UserWarning, stacklevel=3)
                return None  # by position, as fit named them: "0", "1", ...
            unseen = sorted(set(names) - set(fitted))
            missing = sorted(set(fitted) - set(names))
            if unseen or missing:
                msg = "The feature names should match those that were passed during fit.\n"
                for title, group in (("Feature names unseen at fit time:\n", unseen),
                                     ("Feature names seen at fit time, yet now missing:\n", missing)):
                    if group:
                        msg += title + "".join("- %s\n" % n for n in group[:5])
                        msg += "- ...\n" if len(group) > 5 else ""
                raise ValueError(msg)
        return self._feature_names if names is None else names

    def _check_n_features(self, X):
        if X.shape[1] != self.n_features_in_:
            raise ValueError("X has %d features, but %s is expecting %d features as input."
                             % (X.shape[1], type(self).__name__, self.n_features_in_))

    def _targets(self, y, classes=None):
        classes = self.classes_ if classes is None else classes
        pos = np.isin(y, classes[1:])
        if not np.all(np.isin(y, classes)):
            raise ValueError("y holds labels not in classes_ %s" % (classes.tolist(),))
        return pos.astype(np.float64)

    def fit(self, X, y, *, feature_names=None):
        """Train a new model on X, y (``epochs`` passes); returns self.

        ``feature_names``: a name per column of X (default: the DataFrame's
        column names, or the column indices "0", "1", ...).
        """
        from .errors import ParameterError

        epochs = self.epochs
        if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
            raise ParameterError("epochs must be an integer >= 1, not %r" % (epochs,))
        names = self._given_names(X, feature_names)  # kept by _names once trained
        M = _as_matrix(X)
        y = _as_labels(y, M.shape[0])
        classes = np.unique(y)
        if classes.shape[0] != 2:
            raise ValueError("Only binary classification is supported. y holds %d %s"
                             % (classes.shape[0], "class" if classes.shape[0] == 1 else "classes"))
        fm = self._new_fm()
        t = self._targets(y, classes)
        for _ in range(int(epochs)):
            fm.partial_fit(M, t, cores=self.cores, feature_names=names, on_error="stop")
        # set once trained: a refit that raised (BadInputError) left the new classes_,
        # n_features_in_ and names on the previous fit's model, whose predictions they then labelled
        self._names(X, feature_names, reset=True)
        self.classes_ = classes
        self.n_features_in_ = M.shape[1]
        self.fm_ = fm
        return self

    def partial_fit(self, X, y, classes=None, *, feature_names=None):
        """Train on X, y once, continuing the model (the first call may give ``classes``); returns self."""
        first = not hasattr(self, "fm_")
        names = self._names(X, feature_names, reset=first)
        M = _as_matrix(X)
        y = _as_labels(y, M.shape[0])
        if first:
            classes = np.unique(y) if classes is None else np.unique(np.asarray(classes))
            if classes.shape[0] != 2:
                raise ValueError("Only binary classification is supported. Give 2 classes, not %d"
                                 % classes.shape[0])
            # the labels are checked before the estimator holds anything: a first call that
            # raised here left it fitted (an empty model, those classes for good)
            t = self._targets(y, classes)
            self.classes_ = classes
            self.n_features_in_ = M.shape[1]
            self.fm_ = self._new_fm()
        else:
            # as scikit-learn's partial_fit: other classes later are an error, not ignored
            if classes is not None and not np.array_equal(np.unique(np.asarray(classes)), self.classes_):
                raise ValueError("`classes=%r` is not the same as on last call to partial_fit, was: %r"
                                 % (classes, self.classes_))
            self._check_n_features(M)
            t = self._targets(y)
        self.fm_.partial_fit(M, t, cores=self.cores, feature_names=names, on_error="stop")
        return self

    # -- prediction ------------------------------------------------------------------
    def _fitted(self):
        if not hasattr(self, "fm_"):
            raise _not_fitted_error()("This %s instance is not fitted yet. Call 'fit' with appropriate "
                                      "arguments before using this estimator." % type(self).__name__)

    def predict_proba(self, X, *, feature_names=None):
        """(n, 2) array: the probability of ``classes_[0]`` and of ``classes_[1]`` per row."""
        self._fitted()
        names = self._names(X, feature_names, reset=False)
        M = _as_matrix(X)
        self._check_n_features(M)
        p = self.fm_.predict_proba(M, cores=self.cores, feature_names=names)
        return np.column_stack([1.0 - p, p])

    def predict(self, X, *, feature_names=None):
        """The more probable class of each row (``classes_[1]`` where its probability is > 0.5)."""
        p = self.predict_proba(X, feature_names=feature_names)[:, 1]
        return self.classes_[(p > 0.5).astype(np.int64)]

    def score(self, X, y, sample_weight=None):
        """Mean accuracy of ``predict(X)`` against y (weighted by ``sample_weight``)."""
        hit = (self.predict(X) == np.asarray(y).ravel()).astype(np.float64)
        if sample_weight is None:
            return float(hit.mean())
        w = np.asarray(sample_weight, dtype=np.float64)
        return float((hit * w).sum() / w.sum())
