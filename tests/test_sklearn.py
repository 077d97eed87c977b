"""FMClassifier: scikit-learn's own estimator checks, Pipeline and GridSearchCV, and
the estimator without scikit-learn installed."""

import subprocess
import sys

import numpy as np
import pytest

from streamfm import FM, BadInputError, FMClassifier, ParameterError

sklearn = pytest.importorskip("sklearn", reason="scikit-learn is in the test extra")
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402


@pytest.mark.filterwarnings("ignore:Estimator FMClassifier does not inherit")  # by design: no sklearn import
@parametrize_with_checks([FMClassifier(), FMClassifier(k=0, epochs=2)])
def test_sklearn_estimator_checks(estimator, check):
    # what does not apply is declared in FMClassifier.__sklearn_tags__: binary only
    # (multi_class=False) and poor_score (one FTRL pass over a few hundred samples)
    check(estimator)


def data(n=600, d=12, seed=0):
    rng = np.random.default_rng(seed)
    X = (rng.random((n, d)) < 0.3) * rng.choice([1.0, 0.5, 2.0], (n, d))
    logit = 2 * X[:, 0] - 1.5 * X[:, 1] + 2 * X[:, 2] * X[:, 3] - 0.5
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return X, y


def test_pipeline_and_grid_search():
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import MaxAbsScaler

    X, y = data()
    pipe = Pipeline([("scale", MaxAbsScaler()), ("fm", FMClassifier(epochs=3, w_alpha=0.3, v_alpha=0.3))])
    grid = GridSearchCV(pipe, {"fm__k": [0, 4], "fm__w_l2": [0.5, 5.0]}, cv=3, scoring="roc_auc")
    grid.fit(X, y)
    assert set(grid.best_params_) == {"fm__k", "fm__w_l2"}
    assert grid.best_score_ > 0.7
    assert grid.predict_proba(X).shape == (600, 2)


def test_classifier_is_the_fm_on_the_same_matrix():
    sp = pytest.importorskip("scipy.sparse", reason="scipy is in the test extra")
    X, y = data()
    labels = np.where(y == 1, "yes", "no")
    clf = FMClassifier(k=3, seed=4, epochs=2).fit(sp.csr_matrix(X), labels)
    fm = FM(k=3, seed=4)
    for _ in range(2):
        fm.partial_fit(X, (labels == "yes").astype(float))  # default names: the column indices
    p = clf.predict_proba(X)
    assert list(clf.classes_) == ["no", "yes"]
    assert np.array_equal(p[:, 1], fm.predict_proba(X)) and np.array_equal(p[:, 0], 1 - p[:, 1])
    assert list(clf.predict(X[:50])) == list(np.where(p[:50, 1] > 0.5, "yes", "no"))
    # partial_fit continues the same model: two calls equal two epochs
    inc = FMClassifier(k=3, seed=4)
    inc.partial_fit(X, labels, classes=["no", "yes"]).partial_fit(X, labels)
    assert np.array_equal(inc.predict_proba(X), p)
    names = ["c%d" % j for j in range(12)]
    named = FMClassifier(k=3, seed=4).fit(X, labels, feature_names=names)
    fm = FM(k=3, seed=4)
    fm.partial_fit(X, (labels == "yes").astype(float), feature_names=names)
    assert sorted(named.fm_.embeddings()[0]) == sorted(names)
    # the names given to fit are used by predict
    assert np.array_equal(named.predict_proba(X)[:, 1], fm.predict_proba(X, feature_names=names))


def test_works_without_scikit_learn():
    """No sklearn import at module import: a process where importing sklearn fails
    fits, predicts, clones by get_params, and raises streamfm's NotFittedError."""
    code = r"""
import sys
sys.modules["sklearn"] = None  # import sklearn -> ImportError
import numpy as np
import streamfm
clf = streamfm.FMClassifier(k=2, epochs=2)
try:
    clf.predict(np.ones((1, 2)))
except streamfm.NotFittedError as e:
    print("not fitted:", type(e).__module__)
X = np.array([[1.0, 0.0], [0.0, 1.0]] * 20)
y = np.array([1, 0] * 20)
clf.fit(X, y)
twin = type(clf)(**clf.get_params()).set_params(k=3)
print(clf.predict(X[:2]).tolist(), twin.k, clf, "sklearn" in sys.modules and sys.modules["sklearn"] is None)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["not fitted: streamfm.errors",
                                     "[1, 0] 3 FMClassifier(k=2, epochs=2) True"]


def test_classifier_trains_a_field_aware_fm():
    """model="ffm" (with field_sep, max_fields) gives the FFM that streamfm.FM trains on
    the same matrix; fields come from the column names; too many fields is an error
    of fit, as scikit-learn validates parameters there."""
    X, y = data()
    names = ["g%d:c%d" % (j // 4, j) for j in range(12)]  # 3 fields of 4 columns, separator ":"
    clf = FMClassifier(k=2, seed=3, epochs=2, model="ffm", field_sep=":", max_fields=8)
    clf.fit(X, y, feature_names=names)
    fm = FM(k=2, seed=3, model="ffm", field_sep=":", max_fields=8)
    for _ in range(2):
        fm.partial_fit(X, y.astype(float), feature_names=names)
    assert clf.fm_.model == "ffm" and clf.fm_.fields == fm.fields and sorted(fm.fields) == ["g0", "g1", "g2"]
    assert np.array_equal(clf.predict_proba(X, feature_names=names)[:, 1],
                          fm.predict_proba(X, feature_names=names))
    # the FFM is not the FM: same seed and data, other probabilities
    plain = FMClassifier(k=2, seed=3, epochs=2).fit(X, y, feature_names=names)
    assert not np.allclose(plain.predict_proba(X, feature_names=names), clf.predict_proba(X, feature_names=names))
    assert clf.get_params()["model"] == "ffm" and "model='ffm'" in repr(clf)
    # default column names "0".."11": each its own field, 12 > 8 fields
    with pytest.raises(BadInputError, match="field capacity"):
        FMClassifier(k=2, model="ffm", max_fields=8).fit(X, y)
    with pytest.raises(ParameterError, match="model must be"):
        FMClassifier(model="xfm").fit(X, y)


def test_a_sparse_matrix_with_repeated_entries_is_its_dense_sum():
    """A CSR matrix storing (row, column) twice means their sum, as toarray() says: fit and
    predict_proba give what the dense matrix gives (they added a pair term <v, v> x x)."""
    sp = pytest.importorskip("scipy.sparse", reason="scipy is in the test extra")
    X, y = data()
    dense = FMClassifier(k=3, seed=4, epochs=2, v_alpha=0.3).fit(X, y)
    # row i's entries, the first one split in two halves, stored unsorted
    indptr, ind, val = [0], [], []
    for row in X:
        nz = np.flatnonzero(row)
        if len(nz):
            j = nz[0]
            ind += [j] + list(nz[1:][::-1]) + [j]
            val += [row[j] / 2] + list(row[nz[1:][::-1]]) + [row[j] / 2]
        indptr.append(len(ind))
    S = sp.csr_matrix((np.array(val), np.array(ind), np.array(indptr)), shape=X.shape)
    assert not S.has_canonical_format and np.array_equal(S.toarray(), X)
    assert np.array_equal(dense.predict_proba(S), dense.predict_proba(X))
    fitted = FMClassifier(k=3, seed=4, epochs=2, v_alpha=0.3).fit(S, y)
    assert np.array_equal(fitted.predict_proba(X), dense.predict_proba(X))
    assert not S.has_canonical_format and len(S.data) == len(val)  # the caller's matrix as it was


def test_dataframe_column_names_after_fit():
    """A DataFrame's columns name its features: after a fit without names they are taken by
    position (with scikit-learn's warning), names fit did not see are a ValueError; they were
    features the model does not know, every row scored as the bias alone."""
    pd = pytest.importorskip("pandas")
    X, y = data()
    clf = FMClassifier(k=3, seed=4, epochs=2).fit(X, y)
    cols = ["c%d" % j for j in range(12)]
    with pytest.warns(UserWarning, match="^X has feature names, but FMClassifier was fitted without feature "
                      "names$"):
        p = clf.predict_proba(pd.DataFrame(X, columns=cols))
    assert np.array_equal(p, clf.predict_proba(X))
    named = FMClassifier(k=3, seed=4, epochs=2).fit(pd.DataFrame(X, columns=cols), y)
    other = ["d%d" % j for j in range(6)] + cols[6:]
    msg = ("The feature names should match those that were passed during fit.\n"
           "Feature names unseen at fit time:\n- d0\n- d1\n- d2\n- d3\n- d4\n- ...\n"
           "Feature names seen at fit time, yet now missing:\n- c0\n- c1\n- c2\n- c3\n- c4\n- ...\n")
    for method in (named.predict_proba, named.predict, lambda X: named.partial_fit(X, y)):
        with pytest.raises(ValueError) as e:
            method(pd.DataFrame(X, columns=other))
        assert str(e.value) == msg
    # the same names in another order are the same features
    back = pd.DataFrame(X, columns=cols)[cols[::-1]]
    # (summed in another order: equal but for the last bits)
    assert np.allclose(named.predict_proba(back), named.predict_proba(X), rtol=1e-13, atol=0)


def test_a_first_partial_fit_refused_for_its_labels_leaves_the_estimator_unfitted():
    """y with a label not in ``classes``: the first partial_fit raises and the estimator is
    not fitted (it was: an empty model predicting 0.5, those classes kept by the next call)."""
    from sklearn.exceptions import NotFittedError

    X = np.eye(4)
    y = np.array(["a", "b", "c", "a"])
    clf = FMClassifier(k=2)
    with pytest.raises(ValueError) as e:
        clf.partial_fit(X, y, classes=["a", "b"])
    assert str(e.value) == "y holds labels not in classes_ ['a', 'b']"
    assert not hasattr(clf, "fm_") and not hasattr(clf, "classes_")
    with pytest.raises(NotFittedError):
        clf.predict_proba(X)
    clf.partial_fit(X[:3], y[:3] != "b", classes=[False, True])
    assert clf.classes_.tolist() == [False, True] and clf.fm_.samples_seen == 3


def test_partial_fit_refuses_other_classes_after_the_first_call():
    """scikit-learn's partial_fit contract: ``classes`` of a later call must be the first
    call's (they were ignored: label 1, the negative of classes [1, 2], trained silently as
    the positive of [0, 1])."""
    X, y = data(60)
    clf = FMClassifier(k=2).partial_fit(X, y, classes=[0, 1])
    clf.partial_fit(X, y, classes=[1, 0])  # the same classes
    with pytest.raises(ValueError) as e:
        clf.partial_fit(X, np.ones(60, int), classes=[1, 2])
    assert str(e.value) == ("`classes=[1, 2]` is not the same as on last call to partial_fit, was: "
                            "array([0, 1])")
    assert clf.fm_.samples_seen == 120


def test_a_refit_that_raises_keeps_the_previous_fit_whole():
    """fit stopped by a bad sample (an FFM's 13th field of 8) kept the previous model but took
    the new data's classes_ and n_features_in_: the old model's scores labelled with new classes."""
    X, y = data()
    names = ["g%d:c%d" % (j // 4, j) for j in range(12)]
    clf = FMClassifier(k=2, seed=3, model="ffm", field_sep=":", max_fields=8).fit(X, y, feature_names=names)
    p = clf.predict_proba(X, feature_names=names)
    X13 = np.hstack([X, X[:, :1]])
    with pytest.raises(BadInputError, match="field capacity"):
        clf.fit(X13, np.where(y == 1, "yes", "no"))  # default names "0".."12": 13 fields
    assert clf.classes_.tolist() == [0, 1] and clf.n_features_in_ == 12
    assert np.array_equal(clf.predict_proba(X, feature_names=names), p)
    assert np.array_equal(clf.predict_proba(X), p)  # the names given to the fit that stands
