"""One verdict rule per reader: the accuracy a report prints, the verdict ``check`` serves and
the probability beside it come from the same rule.

Before this rule the single head predicted by its margin's sign while ``evaluate`` took the
argmax of its Platt probabilities, whose free intercept moved the boundary: on held-out ProntoQA
(SmolLM2) the two disagreed on 15-22% of the items and the report's accuracy was not the
accuracy of the verdicts served. The last test recomputes every reported accuracy from the run
folder's arrays and the profile's stored numbers with numpy alone, no qkscore code.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from qkscore.estimators.base import decide
from qkscore.estimators.ensemble import TopKEnsemble
from qkscore.estimators.heads import HeadSelector
from qkscore.estimators.readers import (
    READERS,
    HiddenStateProbe,
    make_reader,
    model_margin_selector,
    reader_fit,
)
from qkscore.pipeline import calibrate, evaluate
from synthetic_runs import make_run


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _random_scores(n: int, n_options: int, seed: int):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_options
    rng.shuffle(y)
    x = rng.normal(size=(n, 3, 4, n_options))
    x[:, 1, 2] += 0.6 * np.eye(n_options)[y]  # a weak signal, so readers are not constant
    base = rng.normal(size=(n, n_options)) + 0.3 * np.eye(n_options)[y]
    return x.astype(np.float32), y, base


def _readers_fitted(x, y, base, n_options):
    """Every registered reader (those that run on these items), the model-margin baseline and
    both ensemble combiners, fitted on the first 200 items."""
    fit = slice(0, 200)
    out = {}
    for name in READERS:
        if n_options > 2 and name == "linear-l1":
            continue  # L1 has no multi-option form (it says so when asked)
        out[name] = reader_fit(make_reader(name), x[fit], y[fit], base[fit])
    out["ensemble-vote-k4"] = TopKEnsemble(k=4).fit(x[fit], y[fit])  # even k: vote ties happen
    out["ensemble-logistic"] = TopKEnsemble(k=3, method="logistic").fit(x[fit], y[fit])
    margin = model_margin_selector(base[fit], y[fit])
    return out, margin


def _check_predict_is_argmax(reader, x, base):
    kwargs = {"baseline": base} if getattr(reader, "needs_baseline", False) else {}
    proba = reader.predict_proba(x, **kwargs)
    pred = reader.predict(x, **kwargs)
    assert np.array_equal(pred, decide(proba))
    top = proba.max(axis=1, keepdims=True)
    assert np.all(proba[np.arange(len(pred)), pred][:, None] == top)  # never a less likely one


@pytest.mark.parametrize("n_options", [2, 3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_reader_predicts_the_most_probable_option_on_random_scores(n_options, seed):
    x, y, base = _random_scores(400, n_options, seed)
    readers, margin = _readers_fitted(x, y, base, n_options)
    for reader in readers.values():
        _check_predict_is_argmax(reader, x[200:], base[200:])
    _check_predict_is_argmax(margin, base[200:, None, None, :], base[200:])
    hidden = np.random.default_rng(seed).normal(size=(400, 2, n_options, 8))
    hidden[:, 1, :, 0] += np.eye(n_options)[y]
    probe = HiddenStateProbe().fit(hidden[:200], y[:200])
    assert np.array_equal(probe.predict(hidden[200:]), decide(probe.predict_proba(hidden[200:])))


def test_vote_ties_go_to_the_best_ranked_head_and_its_probability_says_so():
    x, y, base = _random_scores(400, 2, 3)
    vote = TopKEnsemble(k=4).fit(x[:200], y[:200])
    proba = vote.predict_proba(x)
    tied = np.isclose(proba[:, 0], 0.5, atol=1e-5)
    assert tied.any()  # four voters split two against two somewhere
    layer, head = vote.heads_[0]
    best = (
        vote.signs_[0] * (x[tied, layer, head, 0] - x[tied, layer, head, 1]) - vote.thresholds_[0]
    )
    assert np.array_equal(vote.predict(x[tied]), np.where(best > 0, 0, 1))
    assert np.allclose(proba[~tied, 0] * 4, np.round(proba[~tied, 0] * 4))  # shares stay shares


def test_the_single_heads_probability_is_one_half_on_its_threshold():
    x, y, _ = _random_scores(400, 2, 4)
    sel = HeadSelector().fit(x[:200], y[:200])
    m = sel.margin(x)
    p = sel.predict_proba(x)[:, 0]
    assert np.array_equal(p > 0.5, m > 0) and np.array_equal(sel.predict(x), np.where(m > 0, 0, 1))
    layer, head = sel.head_
    on_threshold = x[:1].copy()
    cut = sel.sign_[layer, head] * sel.threshold_[layer, head]  # raw difference on the boundary
    on_threshold[0, layer, head] = [cut / 2, -cut / 2]
    assert sel.predict_proba(on_threshold)[0, 0] == pytest.approx(0.5, abs=1e-6)
    assert sel.to_dict()["proba"]["intercept"] == 0.0


def test_an_older_profiles_head_keeps_its_verdicts_and_its_probability_now_sides_with_them():
    x, y, _ = _random_scores(400, 2, 5)
    sel = HeadSelector().fit(x[:200], y[:200])
    old = sel.to_dict()
    old["proba"] = {"coef": -0.19, "intercept": 0.26}  # a free intercept, even a slope backwards
    legacy = HeadSelector.from_dict(old)
    m = legacy.margin(x)
    assert np.array_equal(legacy.predict(x), np.where(m > 0, 0, 1))
    assert np.array_equal(legacy.predict_proba(x)[:, 0] > 0.5, m > 0)
    edited = sel.to_dict()
    edited["proba"]["coef"] = -1.0  # a current profile (intercept 0) cannot point backwards
    with pytest.raises(ValueError, match="proba.coef must be positive"):
        HeadSelector.from_dict(edited)


def test_every_reader_predicts_the_most_probable_option_on_real_smollm2_scores(
    tmp_path_factory, smollm2
):
    from audit_fixtures import build_profile
    from qkscore.run import RunFolder

    run = RunFolder(build_profile(tmp_path_factory.getbasetemp(), smollm2).parent / "run")
    x = np.asarray(run.load(), dtype=np.float64)
    base = np.asarray(run.load(name="baseline"), dtype=np.float64)
    y = run.labels(run.items())
    half = len(y) // 2
    for name in READERS:
        reader = reader_fit(make_reader(name), x[:half], y[:half], base[:half])
        _check_predict_is_argmax(reader, x[half:], base[half:])


# ---- every reported accuracy, recomputed with numpy alone ---------------------------------


def _sigmoid(u):
    return 1.0 / (1.0 + np.exp(-u))


def _head_p0(sel: dict, x: np.ndarray, name: str) -> np.ndarray:
    layer, head = (int(v) for v in name[1:].split("H"))
    m = sel["sign"][layer][head] * (x[:, layer, head, 0] - x[:, layer, head, 1])
    return _sigmoid(sel["proba"]["coef"] * (m - sel["thresholds"][layer][head]))


def _linear_p0(lin: dict, x: np.ndarray) -> np.ndarray:
    feats = (x[..., 0] - x[..., 1]).reshape(len(x), -1)
    z = (feats - np.array(lin["mean"])) / np.array(lin["scale"])
    return _sigmoid(z @ np.array(lin["coef"]) + lin["intercept"])


def _hybrid_p0(hyb: dict, x: np.ndarray, base: np.ndarray) -> np.ndarray:
    lin = hyb["qk"]
    feats = (x[..., 0] - x[..., 1]).reshape(len(x), -1)
    u = ((feats - np.array(lin["mean"])) / np.array(lin["scale"])) @ np.array(lin["coef"])
    stacked = np.column_stack([u + lin["intercept"], base[:, 0] - base[:, 1]])
    return _sigmoid(stacked @ np.array(hyb["coef"]) + hyb["intercept"])


def _ensemble_p0(ens: dict, x: np.ndarray) -> np.ndarray:
    heads = [tuple(int(v) for v in h[1:].split("H")) for h in ens["heads"]]
    layers, idx = np.array(heads).T
    feats = np.array(ens["signs"]) * (x[:, layers, idx, 0] - x[:, layers, idx, 1])
    feats -= np.array(ens["thresholds"])
    comb = ens["combiner"]
    if comb["method"] == "logistic":
        return _sigmoid(feats @ np.array(comb["coef"]) + comb["intercept"])
    k = len(heads)
    votes0 = (feats > 0).sum(axis=1)
    first0 = np.where((feats > 0).any(1), (feats > 0).argmax(1), k)
    first1 = np.where((feats <= 0).any(1), (feats <= 0).argmax(1), k)
    return np.where(votes0 * 2 == k, np.where(first0 < first1, 1.0, 0.0), votes0 / k)


def test_reported_accuracies_are_the_profiles_stated_rule_on_the_run_arrays(tmp_path):
    """The profile states its rule; evaluation.json's accuracies must be that rule applied to
    scores.npy and baseline.npy, recomputed here without any qkscore code."""
    run = make_run(tmp_path / "run", controls=False)
    calibrate(run, calib_size=400, out=tmp_path / "profile.json", reader="linear")
    evaluate(run, tmp_path / "profile.json", n_boot=20, out=tmp_path / "evaluation.json")
    prof = json.loads((tmp_path / "profile.json").read_text())
    report = json.loads((tmp_path / "evaluation.json").read_text())
    assert "> 0.5" in prof["decision_rule"]

    items = [json.loads(line) for line in (run / "items.jsonl").read_text().splitlines()]
    calib = set(prof["calibration"]["item_ids"])
    ev = np.array([i for i, it in enumerate(items) if it["id"] not in calib])
    y = np.array([items[i]["answer_index"] for i in ev])
    x = np.load(run / "scores.npy")[ev].astype(np.float64)
    base = np.load(run / "baseline.npy")[ev].astype(np.float64)

    p0 = {
        "head": _head_p0(prof["readers"]["head"], x, prof["head"]),
        "linear": _linear_p0(prof["readers"]["linear"], x),
        "linear-l1": _linear_p0(prof["readers"]["linear-l1"], x),
        "hybrid": _hybrid_p0(prof["readers"]["hybrid"], x, base),
        "ensemble": _ensemble_p0(prof["readers"]["ensemble"], x),
        "model_answer": _sigmoid(base[:, 0] - base[:, 1]),
        "model_margin": _head_p0(prof["baselines"]["model_margin"], base[:, None, None, :], "L0H0"),
    }
    for key, p in p0.items():
        rule = np.where(p > 0.5, 0, 1)  # the stated rule: valid when P(valid) > 0.5
        acc = float(np.mean(rule == y))
        assert report["methods"][key]["accuracy"]["value"] == pytest.approx(acc, abs=1e-9), key
    counts = prof["calibration"]["label_counts"]
    majority = int(max(counts, key=counts.get))
    assert report["methods"]["majority"]["accuracy"]["value"] == pytest.approx(
        np.mean(y == majority)
    )


# ---- a yardstick that fits the set: three options, an imbalanced remainder ----------------


def test_three_option_sets_get_macro_auroc_shallow_matching_l1_and_balanced_accuracy(
    tmp_path, shared_data
):
    """FOLIO-like: True/False/Unknown (real ProofWriter texts), a balanced calibration split and
    an imbalanced remainder. Every method gets a macro one-vs-rest AUROC, shallow matching and
    the L1 reader run, and the summary judges signal by balanced accuracy against 1/3."""
    from qkscore.data import load_items
    from qkscore.report.summary import verdict

    items = load_items(f"proofwriter:{shared_data / 'proofwriter' / 'dev.json'}")
    by_label = {o: [it for it in items if it.label == o] for o in ("True", "False", "Unknown")}
    chosen = by_label["True"][:100] + by_label["False"][:100] + by_label["Unknown"][:160]
    run = make_run(tmp_path / "run", items_from=chosen, controls=False)
    calibrate(run, calib_size=150, out=tmp_path / "profile.json")
    report = evaluate(run, tmp_path / "profile.json", n_boot=50)

    assert report["label_counts"] == {"0": 50, "1": 50, "2": 110}
    methods = report["methods"]
    for key in ("head", "ensemble", "linear", "linear-l1", "hybrid", "model_answer", "shallow"):
        assert 0.0 <= methods[key]["auroc"]["value"] <= 1.0, key
    assert methods["head"]["auroc"]["value"] > 0.7  # the planted head, read one-vs-rest
    assert "skipped" not in report["reader_choice"]["cv"]["linear-l1"]
    text = verdict(report)
    assert "balanced accuracy against an even guess (0.333)" in text
    assert "majority class 0.524" in text and "majority-class rate" not in text


def test_balanced_sets_keep_the_majority_rate_as_their_yardstick(tmp_path):
    from qkscore.report.summary import verdict

    run = make_run(tmp_path / "run", controls=False, seed=3)
    calibrate(run, calib_size=400, out=tmp_path / "profile.json")
    report = evaluate(run, tmp_path / "profile.json", n_boot=50)
    assert report["label_counts"] == {"0": 100, "1": 100}
    assert "even guess" not in verdict(report)


def test_the_judge_serves_the_verdict_the_report_counts(judge, tmp_path_factory, smollm2):
    """The head profile's served verdicts are the evaluation's predictions on the same items,
    and a "valid" verdict never carries P(valid) <= 0.5."""
    from audit_fixtures import build_profile
    from qkscore.profile import Profile
    from qkscore.run import RunFolder

    profile = build_profile(tmp_path_factory.getbasetemp(), smollm2)
    run = RunFolder(profile.parent / "run")
    records = run.items()[:8]
    expected = Profile.load(profile).reader().predict(np.asarray(run.load())[:8])
    verdicts = judge.check_many([(r["context"], r["statement"]) for r in records])
    for v, pred in zip(verdicts, expected):
        assert v.valid == (v.probability > 0.5) == (v.margin > 0) == (pred == 0)
