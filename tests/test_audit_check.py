"""Judging one statement and a chain with a real SmolLM2 profile; template rebuilding; the chain
helpers; the check / verify-chain commands."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from typer.testing import CliRunner

from audit_fixtures import CONTEXT, SPEC, STATEMENTS, build_profile, shared_judge
from qkscore.audit import Judge, ProfileMismatchError
from qkscore.audit.chain import (
    assemble_chain,
    chain_subject,
    context_with_steps,
    corrupt_negation,
    corrupt_unrelated,
    pick_unrelated_predicate,
    predicate_pool,
    split_steps,
    step_kind,
    summarise,
)
from qkscore.profile import Profile
from qkscore.prompts import (
    TEMPLATES,
    get_template,
    template_from_description,
)
from tiny_models import few_threads


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with few_threads():
        yield


@pytest.fixture(scope="session")
def profile_path(tmp_path_factory, smollm2):
    return build_profile(tmp_path_factory.getbasetemp(), smollm2)


@pytest.fixture(scope="session")
def judge(tmp_path_factory, smollm2, profile_path):
    return shared_judge(tmp_path_factory.getbasetemp(), smollm2)


def _edited_profile(path, tmp_path, edit) -> Profile:
    data = json.loads(path.read_text())
    edit(data)
    out = tmp_path / "edited.json"
    out.write_text(json.dumps(data))
    return Profile.load(out)


# ---- template rebuilding --------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_template_round_trip(name):
    t = get_template(name)
    # "auto" baseline tokens come back resolved ("letters"), which renders identically
    assert template_from_description(t.describe()).describe() == t.describe()


def test_template_round_trip_with_settings():
    t = get_template(
        "last-option",
        instruction="Decide.",
        option_style="plain",
        swap_options=(1, 0),
        statement_anchor="last_word",
        answer_cue="A:",
    )
    rebuilt = template_from_description(t.describe())
    assert rebuilt.describe() == t.describe()


def test_template_with_shots_cannot_be_rebuilt():
    d = get_template("answer-statement").describe()
    d.update(k=2, k_shot=[{"id": "a", "label": "True"}, {"id": "b", "label": "False"}])
    with pytest.raises(ValueError, match="k-shot"):
        template_from_description(d)


def test_template_from_another_format_version():
    d = get_template("answer-statement").describe()
    d["format_version"] = 999
    with pytest.raises(ValueError, match="format version"):
        template_from_description(d)


def test_template_with_unknown_setting():
    d = get_template("answer-statement").describe()
    d["new_setting"] = 1
    with pytest.raises(ValueError, match="new_setting"):
        template_from_description(d)


# ---- chain helpers (no model) ---------------------------------------------------------------


def test_split_steps():
    text = "Max is a wumpus. Every wumpus is a jompus!\nSo Max is a jompus?  \n\n Done"
    assert split_steps(text) == [
        "Max is a wumpus.",
        "Every wumpus is a jompus!",
        "So Max is a jompus?",
        "Done",
    ]
    assert split_steps("  \n ") == []


def test_context_with_steps():
    assert context_with_steps("A is b.", ["C is d.", " "]) == "A is b. C is d."
    assert context_with_steps("", ["C is d."]) == "C is d."


def test_corruptions():
    chain = ["Polly is a jompus.", "Jompuses are overcast.", "Polly is overcast."]
    neg = corrupt_negation(chain, 2)
    assert neg[:2] == chain[:2] and neg[2] == "Polly is not overcast."
    assert chain_subject(chain) == "Polly"
    pool = predicate_pool([chain, ["Sam is a wumpus.", "Sam is not orange."]])
    assert pool == ["a jompus", "overcast", "a wumpus", "not orange"]
    rng = np.random.default_rng(0)
    context = "Jompuses are overcast. Polly is a jompus."
    for _ in range(10):
        pred = pick_unrelated_predicate(context, chain, pool, rng)
        assert pred in ("a wumpus", "not orange")
    bad = corrupt_unrelated(chain, 1, "Polly", "a wumpus")
    assert bad == ["Polly is a jompus.", "Polly is a wumpus.", "Polly is overcast."]
    with pytest.raises(ValueError, match="unrelated"):
        pick_unrelated_predicate(context, chain, ["a jompus", "overcast"], rng)


def test_step_kind():
    context = "Jompuses are overcast. Polly is a jompus."
    assert step_kind(context, "Polly is a jompus.") == "copied"
    assert step_kind(context, "polly is a jompus") == "copied"
    assert step_kind(context, "Polly is overcast.") == "derived"


def test_summarise():
    records = [
        {"kind": "gold", "corrupted": None, "steps": [True, True, False], "first_failure": 2,
         "step_kinds": ["copied", "copied", "derived"]},
        {"kind": "gold", "corrupted": None, "steps": [True, True, True], "first_failure": None,
         "step_kinds": ["copied", "copied", "derived"]},
        {"kind": "negation", "corrupted": 1, "steps": [True, False, False], "first_failure": 1,
         "step_kinds": ["copied", "copied", "derived"]},
        {"kind": "negation", "corrupted": 2, "steps": [False, True, True], "first_failure": 0,
         "step_kinds": ["copied", "copied", "derived"]},
    ]  # fmt: skip
    s = summarise(records)
    assert s["gold"]["false_alarm_rate"] == pytest.approx(1 / 6)
    assert s["gold"]["false_alarm_by_kind"] == {"copied": 0.0, "derived": 0.5}
    assert s["gold"]["clean_chain_rate"] == 0.5
    neg = s["negation"]
    assert neg["detection_rate"] == 0.5
    assert neg["first_failure_accuracy"] == 0.5
    assert neg["false_alarm_before"] == pytest.approx(1 / 3)
    assert neg["detection_by_kind"] == {"copied": 1.0, "derived": 0.0}


def test_assemble_chain_needs_one_verdict_per_step():
    with pytest.raises(ValueError, match="2 steps but 1 verdicts"):
        assemble_chain(["a.", "b."], [object()], head="L0H0", fast=True, latency_ms=1.0)


# ---- the judge on the real model ------------------------------------------------------------


def test_check_matches_the_scan(judge, profile_path):
    """A statement judged alone gets the margin calibration saw for that item in the scan."""
    from qkscore.data import load_items
    from qkscore.run import RunFolder

    run = RunFolder(profile_path.parent / "run")
    items = load_items(SPEC)
    scores = np.asarray(run.load())
    baseline = np.asarray(run.load(name="baseline"))
    for i in (0, 1, 2):
        item = items[i]
        v = judge.check(item.context, item.statement)
        expected = judge.selector.margin(scores[i : i + 1])[0]
        assert v.margin == pytest.approx(float(expected), abs=2e-3)
        assert v.valid == (v.margin > 0) and v.verdict == ("valid" if v.valid else "invalid")
        assert 0 < v.probability < 1
        assert v.score == pytest.approx(v.margin + v.threshold)
        logp = baseline[i].astype(np.float64)
        p_true = np.exp(logp[0]) / np.exp(logp).sum()
        assert v.model_probability == pytest.approx(p_true, abs=2e-3)
        assert v.model_answer == (p_true > 0.5)
        assert v.disagree == (v.model_answer != v.valid)
        assert v.head == judge.profile.data["head"] and not v.fast
        assert v.layers_run == judge.lm.n_layers and v.latency_ms > 0


def test_fast_path_stops_early_with_the_same_margin(judge):
    full = judge.check(CONTEXT, STATEMENTS[0])
    fast = judge.check(CONTEXT, STATEMENTS[0], model_answer=False)
    assert fast.margin == pytest.approx(full.margin, abs=1e-4)
    assert fast.probability == pytest.approx(full.probability, abs=1e-5)
    assert fast.fast and fast.layers_run == judge.profile.head[0] + 1
    assert fast.ensemble_verdict is None
    assert fast.model_answer is None and fast.model_probability is None and fast.disagree is None
    d = fast.to_dict()
    assert json.loads(json.dumps(d)) == d


def test_ensemble_reported_on_the_full_pass_only(judge):
    full = judge.check(CONTEXT, STATEMENTS[2])
    if judge.ensemble is None:
        assert full.ensemble_probability is None
    else:
        assert 0 <= full.ensemble_probability <= 1
        assert full.ensemble_verdict in ("valid", "invalid")
    # the fast path stops at the chosen head's layer; ensemble heads may sit deeper
    fast = judge.check(CONTEXT, STATEMENTS[2], model_answer=False)
    assert fast.ensemble_probability is None and fast.ensemble_verdict is None


def test_verify_chain_judges_each_step_on_what_came_before(judge):
    steps = ["Max is a wumpus.", "Every wumpus is a jompus.", "Max is a jompus.", "Max is red."]
    result = judge.verify_chain(CONTEXT, steps, model_answer=False)
    assert result.n_steps == 4 and [s.statement for s in result.steps] == steps
    for i, step in enumerate(result.steps):
        alone = judge.check(CONTEXT + " " + " ".join(steps[:i]), steps[i], model_answer=False)
        assert step.margin == pytest.approx(alone.margin, abs=2e-3)
        assert step.valid == alone.valid
    invalid = [s.index for s in result.steps if not s.valid]
    assert result.first_failure == (invalid[0] if invalid else None)
    assert result.valid == (result.first_failure is None)
    from_text = judge.verify_chain(CONTEXT, " ".join(steps), model_answer=False)
    assert [s.statement for s in from_text.steps] == steps
    assert [s.verdict for s in from_text.steps] == [s.verdict for s in result.steps]


def test_check_takes_lists_and_returns_probabilities(judge):
    """Lists give P(valid) per pair from one batched pass, equal to the verdicts' own."""
    one_by_one = [judge.check(CONTEXT, s, model_answer=False).probability for s in STATEMENTS]
    batched = judge.check([CONTEXT] * len(STATEMENTS), STATEMENTS, model_answer=False)
    assert isinstance(batched, np.ndarray) and batched.shape == (len(STATEMENTS),)
    np.testing.assert_allclose(batched, one_by_one, atol=1e-4)
    shared = judge.check(CONTEXT, STATEMENTS, model_answer=False)  # one context for all
    np.testing.assert_allclose(shared, batched, atol=1e-6)
    with pytest.raises(ValueError, match="2 contexts for 5 statements"):
        judge.check([CONTEXT, CONTEXT], STATEMENTS)
    assert judge.check([], []).shape == (0,)


def test_a_model_in_memory_judges_like_the_loaded_one(judge, smollm2):
    """``LoadedModel.from_model`` wraps the same weights; with the profile's fingerprint the
    judge accepts it and gives the same margin. Without it, its own fingerprint is refused."""
    from qkscore.models import LoadedModel

    wrapped = LoadedModel.from_model(smollm2.model, smollm2.tokenizer)
    assert (wrapped.n_layers, wrapped.n_heads) == (smollm2.n_layers, smollm2.n_heads)
    assert wrapped.adapter.family == smollm2.adapter.family
    assert wrapped.fingerprint != smollm2.fingerprint and len(wrapped.fingerprint) == 16
    assert LoadedModel.from_model(smollm2.model).fingerprint == wrapped.fingerprint
    with pytest.raises(ProfileMismatchError, match="fingerprint"):
        Judge(judge.profile, model=wrapped)
    same = LoadedModel.from_model(smollm2.model, smollm2.tokenizer, fingerprint=judge.fingerprint)
    mine = Judge(judge.profile, model=same).check(CONTEXT, STATEMENTS[0], model_answer=False)
    theirs = judge.check(CONTEXT, STATEMENTS[0], model_answer=False)
    assert mine.margin == pytest.approx(theirs.margin, abs=1e-5)


def test_bad_input_is_refused_clearly(judge):
    with pytest.raises(ValueError, match="the statement must not be blank"):
        judge.check(CONTEXT, "   ")
    with pytest.raises(ValueError, match="the statement must not be blank"):
        judge.check(CONTEXT, "\u200b\x00\u0301")  # zero-width, NUL, combining: nothing visible
    with pytest.raises(ValueError, match="no steps"):
        judge.verify_chain(CONTEXT, [])
    with pytest.raises(ValueError, match="step 1 of the chain is empty"):
        judge.verify_chain(CONTEXT, ["Max is red.", " "])
    with pytest.raises(ValueError, match="tokens long"):
        judge.check("Max is a wumpus. " * 3000, "Max is red.")


def test_mismatched_model_is_refused(profile_path, tmp_path, smollm2):
    def edit(d):
        d["model"]["fingerprint"] = "0123456789abcdef"

    profile = _edited_profile(profile_path, tmp_path, edit)
    with pytest.raises(ProfileMismatchError, match="fingerprint 0123456789abcdef"):
        Judge(profile, model=smollm2)


def test_profile_with_shots_is_refused_before_loading(profile_path, tmp_path):
    def edit(d):
        d["template"].update(k=1, k_shot=[{"id": "x", "label": "True"}])

    profile = _edited_profile(profile_path, tmp_path, edit)
    with pytest.raises(ValueError, match="k-shot"):
        Judge(profile, model="no-such-model-would-be-loaded")


# ---- CLI ------------------------------------------------------------------------------------


def test_check_command_json(profile_path, tmp_path):
    from qkscore.cli import app

    statement = tmp_path / "statement.txt"
    statement.write_text(STATEMENTS[0])
    args = ["check", "--profile", str(profile_path), "--context", CONTEXT]
    res = CliRunner().invoke(app, [*args, "--statement-file", str(statement), "--json", "--fast"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout[res.stdout.index("{") :])
    assert out["verdict"] in ("valid", "invalid") and out["fast"] is True


def test_check_command_needs_a_statement(profile_path):
    from qkscore.cli import app

    res = CliRunner().invoke(app, ["check", "--profile", str(profile_path), "--context", "x"])
    assert res.exit_code == 2 and "--statement" in res.output


def test_verify_chain_command(profile_path, tmp_path, judge, monkeypatch):
    from qkscore.cli import app
    from qkscore.cli import audit as cli_audit

    monkeypatch.setattr(cli_audit, "_judge", lambda *a, **k: judge)  # the model is loaded
    chain = tmp_path / "chain.json"
    chain.write_text(json.dumps(["Max is a wumpus.", "Max is a jompus."]))
    base = ["verify-chain", "--profile", str(profile_path), "--context", CONTEXT]
    res = CliRunner().invoke(app, [*base, "--chain", str(chain), "--fast"])
    assert res.exit_code == 0, res.output
    assert "Max is a jompus." in res.output
    assert "first failing step" in res.output or "every step follows" in res.output
    text = tmp_path / "chain.txt"
    text.write_text("Max is a wumpus. Max is a jompus.")
    res = CliRunner().invoke(app, [*base, "--chain", str(text), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout[res.stdout.index("{") :])
    assert out["n_steps"] == 2 and out["steps"][1]["statement"] == "Max is a jompus."
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2")
    res = CliRunner().invoke(app, [*base, "--chain", str(bad)])
    assert res.exit_code == 2 and "not a JSON list" in res.output


def test_warnings_do_not_leak(judge):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        judge.check(CONTEXT, STATEMENTS[1], model_answer=False)
