"""Metrics against sklearn/scipy, and the statistics on tables whose answer is known."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.stats import binomtest
from scipy.stats import chi2 as chi2_dist
from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score

from qkscore.stats import (
    accuracy,
    auroc,
    balanced_accuracy,
    bootstrap_ci,
    breakdown,
    majority_baseline,
    mcnemar,
    metric_report,
    paired_bootstrap,
    shortcut_gap,
    transfer_matrix,
)


@pytest.mark.parametrize("seed", range(5))
def test_metrics_match_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 300))
    labels = rng.integers(0, 3, n)
    pred = rng.integers(0, 4, n)  # includes a class never in the labels
    assert accuracy(pred, labels) == pytest.approx(accuracy_score(labels, pred), abs=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about the label-less predicted class
        expected = balanced_accuracy_score(labels, pred)
    assert balanced_accuracy(pred, labels) == pytest.approx(expected, abs=1e-12)
    score = np.round(rng.standard_normal(n), 1)  # ties
    positive = labels == 0
    assert auroc(score, positive) == pytest.approx(roc_auc_score(positive, score), abs=1e-12)


def test_metrics_are_row_wise_on_2d_input() -> None:
    rng = np.random.default_rng(0)
    pred, labels = rng.integers(0, 2, (7, 50)), rng.integers(0, 2, (7, 50))
    score = rng.standard_normal((7, 50))
    for fn, a, b in [(accuracy, pred, labels), (balanced_accuracy, pred, labels)]:
        np.testing.assert_allclose(fn(a, b), [fn(a[i], b[i]) for i in range(7)])
    np.testing.assert_allclose(
        auroc(score, labels == 1), [auroc(score[i], labels[i] == 1) for i in range(7)]
    )


def test_auroc_edge_cases() -> None:
    assert np.isnan(auroc([0.1, 0.2], [True, True]))
    assert auroc([1, 1, 1, 1], [True, False, True, False]) == 0.5
    assert auroc([3, 2, 1], [True, True, False]) == 1.0
    with pytest.raises(ValueError, match="shape"):
        auroc([1, 2], [True])


def test_bootstrap_covers_point_shrinks_and_is_reproducible() -> None:
    rng = np.random.default_rng(1)

    def ci(n: int):
        labels = rng.integers(0, 2, n)
        pred = np.where(rng.random(n) < 0.7, labels, 1 - labels)
        return bootstrap_ci(accuracy, pred, labels, n_boot=500, seed=3)

    small, large = ci(100), ci(4000)
    for c in (small, large):
        assert c.low <= c.point <= c.high
    assert (large.high - large.low) < (small.high - small.low) / 3  # ~ 1/sqrt(n)
    labels = rng.integers(0, 2, 200)
    pred = rng.integers(0, 2, 200)
    a = bootstrap_ci(balanced_accuracy, pred, labels, n_boot=300, seed=7)
    assert a == bootstrap_ci(balanced_accuracy, pred, labels, n_boot=300, seed=7)
    # the vectorised path scores exactly the resamples the per-resample loop scores
    b = bootstrap_ci(balanced_accuracy, pred, labels, n_boot=300, seed=7, vectorized=False)
    assert a == pytest.approx(b, abs=1e-12)
    point, low, high = bootstrap_ci(lambda p, y: float(np.mean(p == y)), pred, labels, n_boot=50)
    assert low <= point <= high
    with pytest.raises(ValueError):
        bootstrap_ci(accuracy, pred, labels[:-1])


def test_the_cluster_bootstrap_resamples_whole_groups() -> None:
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(12), 5)  # 12 problems of 5 steps each
    score = np.round(rng.standard_normal(60), 1)  # ties
    positive = rng.random(60) < 0.5
    # the weighted AUROC equals the AUROC of the items drawn that many times
    weights = rng.integers(0, 3, size=(4, 60)).astype(float)
    for row, w in zip(auroc.weighted(score, positive, weights), weights):
        idx = np.repeat(np.arange(60), w.astype(int))
        assert row == pytest.approx(auroc(score[idx], positive[idx]), abs=1e-12)
    # steps of one problem that move together: resampling steps understates the spread
    shared = np.repeat(rng.standard_normal(12), 5) + 0.1 * rng.standard_normal(60)
    label = np.repeat(rng.random(12) < 0.5, 5)
    by_item = bootstrap_ci(auroc, shared, label, n_boot=400)
    by_group = bootstrap_ci(auroc, shared, label, n_boot=400, groups=groups)
    assert by_group.point == by_item.point
    assert by_group.high - by_group.low > 1.5 * (by_item.high - by_item.low)
    again = bootstrap_ci(auroc, shared, label, n_boot=400, groups=groups)
    assert again == by_group  # seeded
    # a metric without a weighted form is resampled item by item, by group too
    acc = bootstrap_ci(accuracy, label.astype(int), np.ones(60, int), n_boot=50, groups=groups)
    assert acc.low <= acc.point <= acc.high


def test_paired_bootstrap_of_two_scorers_on_the_same_items() -> None:
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(30), 4)
    label = rng.random(120) < 0.5
    good = label + rng.normal(0, 0.8, 120)
    noise = rng.normal(0, 1, 120)
    test = paired_bootstrap(auroc, good, noise, label, groups=groups, n_boot=500)
    assert test.difference == pytest.approx(auroc(good, label) - auroc(noise, label))
    assert test.low <= test.difference <= test.high and test.low > 0 and test.pvalue < 0.01
    same = paired_bootstrap(auroc, good, good, label, groups=groups, n_boot=200)
    assert (same.difference, same.low, same.high, same.pvalue) == (0.0, 0.0, 0.0, 1.0)
    by_item = paired_bootstrap(auroc, good, noise, label, n_boot=200)
    assert by_item.difference == test.difference and by_item.pvalue < 0.05


def test_mcnemar_exact_and_chi_square() -> None:
    def table(b: int, c: int, same: int = 20) -> tuple[np.ndarray, np.ndarray]:
        a = np.r_[np.ones(b), np.zeros(c), np.ones(same)].astype(bool)
        bb = np.r_[np.zeros(b), np.ones(c), np.ones(same)].astype(bool)
        return a, bb

    stat, p = mcnemar(*table(1, 9))
    assert stat == 1.0
    assert p == pytest.approx(binomtest(1, 10, 0.5).pvalue, rel=1e-12)
    assert p == pytest.approx(2 * 11 / 1024, rel=1e-12)
    stat, p = mcnemar(*table(30, 50))
    assert stat == pytest.approx((20 - 1) ** 2 / 80)
    assert p == pytest.approx(chi2_dist.sf(4.5125, 1), rel=1e-12)
    assert mcnemar(*table(0, 0)) == (0.0, 1.0)
    assert mcnemar(*table(5, 5)).pvalue == 1.0


def test_majority_baseline() -> None:
    out = majority_baseline([0, 0, 1], [0, 1, 1, 1])
    assert out == {"label": 0, "accuracy": 0.25, "n": 4}
    assert majority_baseline([1, 0], [0, 0])["label"] == 0  # ties -> lowest option


def test_metric_report() -> None:
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 300)
    score = (labels == 0) + rng.standard_normal(300)
    pred = np.where(score > 0.5, 0, 1)
    rep = metric_report(pred, labels, score=score, n_boot=200)
    assert rep["n"] == 300
    for key in ("accuracy", "balanced_accuracy", "auroc"):
        entry = rep[key]
        assert entry["low"] <= entry["value"] <= entry["high"] and entry["n"] == 300
    assert rep["auroc"]["value"] == pytest.approx(roc_auc_score(labels == 0, score))
    assert "auroc" not in metric_report(pred, labels, n_boot=10)
    multi = metric_report(rng.integers(0, 3, 50), rng.integers(0, 3, 50), score=score[:50])
    assert "auroc" not in multi


def test_breakdown_groups_skips_missing_and_orders_numbers() -> None:
    pred = np.array([0, 1, 0, 1, 0])
    labels = np.array([0, 0, 0, 1, 1])
    metas = [
        {"depth": 10, "rule": "mp"},
        {"depth": 2, "rule": "mt"},
        SimpleNamespace(meta={"depth": 2, "distractors": True}),  # Item-like object
        {"depth": 10},
        {"rule": None},
    ]
    out = breakdown(pred, labels, metas)
    assert list(out) == ["depth", "distractors", "rule"]  # no item has "logic"
    assert list(out["depth"]) == ["2", "10"]
    assert out["depth"]["2"] == {"n": 2, "accuracy": 0.5}
    assert out["depth"]["10"] == {"n": 2, "accuracy": 1.0}
    assert out["distractors"] == {"True": {"n": 1, "accuracy": 1.0}}
    assert out["rule"] == {"mp": {"n": 1, "accuracy": 1.0}, "mt": {"n": 1, "accuracy": 0.0}}
    with pytest.raises(ValueError):
        breakdown(pred, labels, metas[:2])


def test_shortcut_gap() -> None:
    out = shortcut_gap(0.9, 0.65)
    assert out["gap"] == pytest.approx(0.25) and out["flagged"] is True
    assert shortcut_gap(0.9, 0.5)["flagged"] is False


def test_transfer_matrix_with_head_selector() -> None:
    from qkscore.estimators.heads import HeadSelector

    def split(head: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        y = rng.permutation(np.arange(400) % 2)  # balanced: no CalibrationWarning
        x = rng.standard_normal((400, 1, 2, 2))
        x[np.arange(400), 0, head, y] += 4.0
        return x, y

    runs = {"a": split(0, 0), "b": split(1, 1)}
    names, matrix = transfer_matrix(runs, HeadSelector)
    assert names == ["a", "b"]
    assert matrix[0, 0] > 0.95 and matrix[1, 1] > 0.95
    assert matrix[0, 1] < 0.7 and matrix[1, 0] < 0.7
    held = {"a": split(0, 2), "b": split(1, 3)}
    _, matrix2 = transfer_matrix(runs, HeadSelector, eval_runs=held)
    assert matrix2[0, 0] > 0.95 and matrix2[0, 1] < 0.7
    with pytest.raises(ValueError, match="same names"):
        transfer_matrix(runs, HeadSelector, eval_runs={"a": held["a"]})
