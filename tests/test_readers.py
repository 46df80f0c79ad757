"""Readers over every head, the fair baselines, choosing a reader without peeking, and judging
with any reader.

Synthetic scores plant a signal spread thinly over many heads (no single head carries it), so
the linear reader must beat the single head there; a real SmolLM2 run checks that a Judge with
a linear or hybrid profile gives the verdicts the reader gives on the scan's own arrays.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from qkscore.data import load_items
from qkscore.data.shallow import ShallowMatcher, shallow_features
from qkscore.estimators.readers import (
    HiddenStateProbe,
    HybridReader,
    LinearQKReader,
    choose_reader,
    cross_val_scores,
    model_margin_selector,
    reader_from_dict,
)
from qkscore.pipeline import calibrate, check_calibration_labels, evaluate
from qkscore.profile import Profile
from synthetic_runs import make_run

N_LAYERS, N_HEADS = 6, 8


def _spread(n: int = 400, seed: int = 0, strength: float = 0.25, n_options: int = 2):
    """Scores whose gold signal is spread over 16 heads, each too weak to read alone."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_options
    rng.shuffle(y)
    x = rng.normal(size=(n, N_LAYERS, N_HEADS, n_options))
    onehot = np.eye(n_options)[y]
    for layer in range(1, 5):
        for head in range(4):
            x[:, layer, head] += strength * onehot
    return x.astype(np.float32), y


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def test_linear_reader_reads_a_signal_spread_over_many_heads():
    x, y = _spread()
    choice = choose_reader(x, y, candidates=["head", "linear"])
    assert choice["chosen"] == "linear"
    assert choice["cv"]["linear"]["auroc"] > choice["cv"]["head"]["auroc"] + 0.1
    reader = LinearQKReader().fit(x, y)
    xt, yt = _spread(seed=1)
    assert np.mean(reader.predict(xt) == yt) > 0.7  # the Bayes rate here is about 0.76
    assert reader.weights_.shape == (N_LAYERS, N_HEADS)
    planted = np.zeros((N_LAYERS, N_HEADS), dtype=bool)
    planted[1:5, :4] = True
    assert reader.weights_[planted].mean() > 3 * np.abs(reader.weights_[~planted]).mean()
    restored = reader_from_dict(json.loads(json.dumps(reader.to_dict())))
    np.testing.assert_allclose(restored.predict_proba(xt), reader.predict_proba(xt))


def test_l1_reader_keeps_few_heads_and_stops_at_its_deepest():
    x, y = _spread(strength=0.6)
    reader = LinearQKReader(penalty="l1").fit(x, y)
    assert 0 < reader.n_kept_ < N_LAYERS * N_HEADS
    assert reader.deepest_layer_ == int(np.flatnonzero(np.abs(reader.weights_).sum(1)).max())


def test_multi_option_linear_reader():
    x, y = _spread(n=450, n_options=3, strength=0.35)
    reader = LinearQKReader().fit(x, y)
    xt, yt = _spread(n=300, seed=2, n_options=3, strength=0.35)
    assert reader.predict_proba(xt).shape == (300, 3)
    assert np.mean(reader.predict(xt) == yt) > 0.6
    # FOLIO-like items get the L1 reader too: at a strong penalty it keeps exactly the heads
    # that carry the signal (weights exactly zero elsewhere), and by CV it predicts as well
    sparse = LinearQKReader(penalty="l1", C=0.03).fit(x, y)
    kept = np.abs(sparse.weights_) > 0
    assert 0 < sparse.n_kept_ == kept[1:5, :4].sum() and np.mean(sparse.predict(xt) == yt) > 0.6
    assert np.mean(LinearQKReader(penalty="l1").fit(x, y).predict(xt) == yt) > 0.6


def test_hybrid_is_not_worse_than_the_better_of_its_parts():
    """The issue's rule: never more than 1 point of CV AUROC below the better part."""
    x, y = _spread(strength=0.15)
    rng = np.random.default_rng(5)
    for model_strength in (0.0, 0.6, 2.0):  # a useless, a middling and a strong model margin
        base = rng.normal(size=(len(y), 2))
        base[np.arange(len(y)), y] += model_strength
        choice = choose_reader(x, y, base, candidates=["linear", "hybrid"])
        better = max(choice["cv"]["linear"]["auroc"], choice["model_margin_auroc"])
        assert choice["cv"]["hybrid"]["auroc"] >= better - 0.01, model_strength
    assert choice_margin_auc(base, y) == pytest.approx(choice["model_margin_auroc"], abs=0.03)
    hybrid = HybridReader().fit(x, y, baseline=base)
    again = reader_from_dict(hybrid.to_dict())
    np.testing.assert_allclose(
        again.predict_proba(x, baseline=base), hybrid.predict_proba(x, baseline=base)
    )
    with pytest.raises(ValueError, match="needs the model's own answer"):
        hybrid.predict_proba(x, baseline=np.full_like(base, np.nan))


def choice_margin_auc(base: np.ndarray, y: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y == 0, base[:, 0] - base[:, 1]))


def test_model_margin_gets_a_fitted_threshold_like_a_head():
    rng = np.random.default_rng(0)
    y = np.arange(400) % 2
    base = rng.normal(size=(400, 2))
    base[:, 0] += 1.5  # the model says True far too often: its raw answer is ~ the majority
    base[y == 0, 0] += 1.0
    margin = model_margin_selector(base, y)
    raw = np.mean(base.argmax(1) == y)
    assert margin.threshold_[0, 0] > 0.5 and margin.accuracy_[0, 0] > raw + 0.1


def test_hidden_state_probe_picks_the_informative_layer():
    rng = np.random.default_rng(0)
    y = np.arange(300) % 2
    hidden = rng.normal(size=(300, 3, 2, 16)).astype(np.float16)
    hidden[:, 2, 0, 3] += np.where(y == 0, 1.0, -1.0).astype(np.float16)
    probe = HiddenStateProbe().fit(hidden, y, layers=[4, 9, 14])
    assert probe.layer_ == 14 and np.mean(probe.predict(hidden) == y) > 0.75
    again = HiddenStateProbe.from_dict(json.loads(json.dumps(probe.to_dict())))
    np.testing.assert_allclose(again.predict_proba(hidden), probe.predict_proba(hidden))


def test_the_probe_fit_in_the_items_row_space_is_liblinears_full_fit():
    """Fewer items than features: the probe fits in the row space of [x, 1] (n dimensions,
    not d + 1); the optimum is the one liblinear finds on every feature, bias included."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(3)
    x, test = rng.normal(size=(60, 200)), rng.normal(size=(30, 200))
    y = (x[:, :5].sum(1) + rng.normal(size=60) > 0).astype(int)
    for c in (0.01, 1.0):
        fitted = HiddenStateProbe()._fit_one(x, y, c)
        full = LogisticRegression(C=c, solver="liblinear", dual=True, tol=1e-10, max_iter=10**5)
        full.fit(x, y)
        np.testing.assert_allclose(fitted.coef, full.coef_, rtol=1e-3, atol=1e-5)
        np.testing.assert_allclose(fitted.intercept, full.intercept_, rtol=1e-3, atol=1e-5)
        np.testing.assert_allclose(fitted.proba(test, 2), full.predict_proba(test), atol=1e-5)


def test_a_probe_with_one_layer_and_one_c_fits_once(monkeypatch):
    """Nothing to choose, no inner folds: a probe cross-validated with its layer and C fixed
    (what step calibration does) costs one fit per fold, not 21, and predicts as the probe that
    searched its way to the same layer and C."""
    rng = np.random.default_rng(1)
    y = np.arange(200) % 2
    hidden = rng.normal(size=(200, 1, 2, 8)).astype(np.float16)
    hidden[:, 0, 0, 2] += np.where(y == 0, 1.0, -1.0).astype(np.float16)
    searched = HiddenStateProbe().fit(hidden, y, layers=[7])
    fits = []
    real = HiddenStateProbe._fit_one
    monkeypatch.setattr(
        HiddenStateProbe, "_fit_one", lambda self, *a: fits.append(1) or real(self, *a)
    )
    fixed = HiddenStateProbe(Cs=[searched.C_]).fit(hidden, y, layers=[7])
    assert len(fits) == 1 and fixed.C_ == searched.C_
    np.testing.assert_allclose(fixed.predict_proba(hidden), searched.predict_proba(hidden))
    fits.clear()
    cv = cross_val_scores(
        "hidden_probe", np.zeros((200, 1, 1, 2)), y, cv=5, hidden=hidden, hidden_layers=[7],
        probe_cs=[searched.C_],
    )  # fmt: skip
    assert len(fits) == 5 and cv["auroc"] > 0.7


# ---- calibration refuses what cannot be calibrated ------------------------------------------


def _copies(n_groups: int = 24, per: int = 5, seed: int = 0):
    """Groups of near-copies (the steps of one problem) with random labels per group: nothing
    to learn, but a fold that holds a copy of a training item reads its label back."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n_groups) % 2
    rng.shuffle(labels)
    x = np.repeat(rng.normal(size=(n_groups, N_LAYERS, N_HEADS, 2)), per, axis=0)
    x = x + 0.05 * rng.normal(size=x.shape)
    hidden = np.repeat(rng.normal(size=(n_groups, 2, 2, 16)), per, axis=0)
    hidden = hidden + 0.05 * rng.normal(size=hidden.shape)
    groups = np.repeat([f"p{g}" for g in range(n_groups)], per)
    return x, np.repeat(labels, per), hidden, groups


def test_folds_grouped_by_problem_keep_each_problem_whole():
    from qkscore.estimators.base import stratified_folds

    _, y, _, groups = _copies()
    folds = stratified_folds(y, 5, 0, groups)
    assert len(folds) == 5
    tested = np.concatenate([test for _, test in folds])
    assert sorted(tested.tolist()) == list(range(len(y)))  # every item held out once
    for train, test in folds:
        assert not set(groups[train]) & set(groups[test])
    # as many folds as the problems allow: one label in three problems gives three folds
    few = np.isin(groups, ["p0", "p1", "p2", "p3", "p4", "p5", "p6"])
    spread = min(len(set(groups[few][y[few] == v])) for v in (0, 1))
    assert len(stratified_folds(y[few], 5, 0, groups[few])) == min(5, spread)
    two = np.isin(groups, [groups[y == 0][0], groups[y == 1][0]])  # one problem per label
    with pytest.raises(ValueError, match="at least 2 groups"):
        stratified_folds(y[two], 5, 0, groups[two])


def test_grouped_cross_validation_does_not_read_copies_back():
    x, y, hidden, groups = _copies()
    for name in ("ensemble", "linear", "hidden_probe"):  # those that can memorise an item
        plain = cross_val_scores(name, x, y, hidden=hidden)["auroc"]
        grouped = cross_val_scores(name, x, y, hidden=hidden, groups=groups)["auroc"]
        assert plain > 0.9 and grouped < plain - 0.3, (name, plain, grouped)
    # subsets: the held-out AUROC on some items only, on the same folds
    mask = np.arange(len(y)) % 2 == 0
    out = cross_val_scores("linear", x, y, groups=groups, subsets={"even": mask})
    assert 0 <= out["subsets"]["even"]["auroc"] <= 1
    choice = choose_reader(x, y, np.zeros((len(y), 2)), ["head", "linear"], groups=groups)
    assert choice["cv"]["linear"]["auroc"] == pytest.approx(
        cross_val_scores("linear", x, y, groups=groups)["auroc"]
    )


def test_single_class_calibration_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="one option only"):
        check_calibration_labels(np.zeros(10, dtype=int), 4)
    with pytest.raises(
        ValueError, match=r"\(50 of option 0, 3 of option 1\).*at least 5 items of each option"
    ):
        check_calibration_labels(np.array([0] * 50 + [1] * 3), 40)
    run = make_run(tmp_path / "run", n=60)
    records = [json.loads(line) for line in (run / "items.jsonl").read_text().splitlines()]
    for r in records:
        r["answer_index"], r["label"] = 0, "True"
    (run / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "profile.json"
    with pytest.raises(ValueError, match=r"one option only \(60 of option 0\)"):
        calibrate(run, calib_size=4, out=out)
    assert not out.exists()


def test_profile_with_missing_fields_or_a_head_outside_is_refused(tmp_path):
    run = make_run(tmp_path / "run")
    calibrate(run, calib_size=400, out=tmp_path / "p.json", reader="head")
    data = json.loads((tmp_path / "p.json").read_text())
    broken = dict(data)
    del broken["selector"]["thresholds"]
    (tmp_path / "a.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match=r"a\.json: field 'thresholds' missing or malformed"):
        Profile.load(tmp_path / "a.json")
    data = json.loads((tmp_path / "p.json").read_text())
    data["head"] = "L40H0"
    (tmp_path / "b.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="L40H0 is outside the calibrated 4 layers x 3 heads"):
        Profile.load(tmp_path / "b.json")


# ---- choosing without peeking ---------------------------------------------------------------


def _profile_content(profile: Profile) -> dict:
    data = dict(profile.data)
    data.pop("created")
    return data


def test_evaluation_items_change_nothing_calibrate_writes(tmp_path):
    """Shuffle the evaluation items' labels (same split) and replace their scores with noise:
    every byte calibrate writes stays the same, the reader choice included."""
    run = make_run(tmp_path / "run")
    first = calibrate(run, calib_size=400, out=tmp_path / "a.json")
    assert first.data["reader_choice"]["requested"] == "auto"
    assert set(first.data["readers"]) >= {"head", "linear", "linear-l1", "hybrid"}
    calib_ids = set(first.data["calibration"]["item_ids"])
    records = [json.loads(line) for line in (run / "items.jsonl").read_text().splitlines()]
    eval_rows = [i for i, r in enumerate(records) if r["id"] not in calib_ids]
    rng = np.random.default_rng(7)
    shuffled = rng.permutation([records[i]["answer_index"] for i in eval_rows])
    for i, a in zip(eval_rows, shuffled):
        records[i]["answer_index"], records[i]["label"] = int(a), ["True", "False"][int(a)]
    (run / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    scores = np.load(run / "scores.npy")
    scores[eval_rows] = rng.normal(size=scores[eval_rows].shape)
    np.save(run / "scores.npy", scores)
    second = calibrate(
        run,
        calib_size=400,
        out=tmp_path / "b.json",
        calibration_ids=first.data["calibration"]["item_ids"],
    )
    assert _profile_content(second) == _profile_content(first)


def test_evaluate_reports_every_reader_and_the_fair_baselines(tmp_path):
    run = make_run(tmp_path / "run")
    profile = calibrate(run, calib_size=400)
    report = evaluate(run, profile, n_boot=100)
    chosen = profile.data["reader"]
    assert report["reader"] == chosen and report["methods"][chosen]["chosen"]
    assert {"head", "linear", "linear-l1", "hybrid", "model_margin", "model_answer"} <= set(
        report["methods"]
    )
    assert (chosen, "model_margin") in {(t["a"], t["b"]) for t in report["mcnemar"]}
    for control in report["controls"].values():  # every reader is held to the controls
        assert {"head", "linear", "hybrid", "model_answer"} <= set(control["accuracy"])
    assert "shallow matching not fitted" in " ".join(report["notes"])  # no texts in this run


# ---- shallow matching ------------------------------------------------------------------------


def test_shallow_features_read_the_property_and_its_polarity():
    f = dict(
        zip(
            ("max_overlap", "best_same", "negated", "prop_same", "prop_opp"),
            shallow_features("Every jompus is bitter. Max is a jompus.", "Max is not bitter."),
        )
    )
    assert f["negated"] == 1.0 and f["prop_same"] == 0.0 and f["prop_opp"] == 1.0


def test_shallow_matching_solves_prontoqa_without_distractors_only(shared_data):
    pronto = shared_data / "prontoqa" / "truefalse_0shot"
    for pattern, low, high in (
        ("*hop_0shot_random_nodistractor.json", 0.95, 1.0),
        ("*hop_0shot_random.json", 0.35, 0.65),
    ):
        items = load_items(f"prontoqa:{pronto}/{pattern}?sample=400&balance=1&seed=0")
        y = np.array([it.answer_index for it in items])
        fitted = ShallowMatcher().fit(items[:300], y[:300])
        acc = float(np.mean(fitted.predict(items[300:]) == y[300:]))
        assert low <= acc <= high, (pattern, acc)


def test_data_audit_flags_a_set_shallow_matching_solves(shared_data):
    from qkscore.data.shortcuts import audit_items

    pronto = shared_data / "prontoqa" / "truefalse_0shot"
    spec = f"prontoqa:{pronto}/*hop_0shot_random_nodistractor.json?sample=200&balance=1&seed=0"
    report = audit_items(load_items(spec))
    assert report.statement_only_accuracy < 0.65  # the statement alone says nothing here
    assert report.shallow_accuracy == 1.0 and report.flagged
    assert any("shallow context-statement matching" in r for r in report.reasons)
    assert "shallow context-statement matching (5-fold): 1.000" in report.summary()


# ---- judging with any reader (real SmolLM2) ---------------------------------------------------


@pytest.fixture(scope="module")
def reader_profiles(tmp_path_factory, smollm2):
    from audit_fixtures import build_profile

    base = build_profile(tmp_path_factory.getbasetemp(), smollm2).parent
    out = {}
    for reader in ("linear", "hybrid"):
        path = base / f"profile-{reader}.json"
        calibrate(base / "run", calib_size=80, out=path, reader=reader)
        out[reader] = path
    return base / "run", out


@pytest.mark.parametrize("reader", ["linear", "hybrid"])
def test_judge_with_a_reader_gives_the_readers_verdicts(reader_profiles, smollm2, reader):
    from qkscore.audit import Judge
    from qkscore.run import RunFolder

    run_path, paths = reader_profiles
    judge = Judge(paths[reader], model=smollm2)
    assert judge.describe()["reader"] == reader
    run = RunFolder(run_path)
    records = run.items()
    scores, base = np.asarray(run.load()), np.asarray(run.load(name="baseline"))
    fitted = Profile.load(paths[reader]).reader()
    kwargs = {"baseline": base[:4]} if reader == "hybrid" else {}
    expected = fitted.predict_proba(scores[:4], **kwargs)[:, 0]
    verdicts = judge.check_many([(r["context"], r["statement"]) for r in records[:4]])
    for v, p in zip(verdicts, expected):
        assert v.reader == reader and v.probability == pytest.approx(p, abs=2e-3)
        assert v.valid == (v.margin > 0) == (p > 0.5)
    fast = judge.check(records[0]["context"], records[0]["statement"], model_answer=False)
    assert fast.probability == pytest.approx(verdicts[0].probability, abs=2e-3)
    assert fast.fast == (reader != "hybrid")  # the hybrid needs the model's answer
