"""Dynamic batching in the service (issue 23) and its settings, declared once (issue 21):
waiting requests judged together in one padded pass give the verdicts they get alone (float32,
mixed lengths, checks and chains), each with its own answer and audit row; a request that
cannot be judged fails alone; the batch-size histogram in /metrics; the settings as flags and
``QKSCORE_SERVE_*`` variables, reported by /v1/profile."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from audit_fixtures import CONTEXT, STATEMENTS, run
from audit_fixtures import asgi_client as _client
from qkscore.audit.chain import ChainResult
from qkscore.audit.service import ServeSettings, create_app
from qkscore.audit.settings import ENV_PREFIX, FLAGS, env_name
from tiny_models import few_threads


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with few_threads():
        yield


LONG_CONTEXT = " ".join(
    [
        CONTEXT,
        "Every jompus is a zumpus. Every zumpus is a rompus. Every rompus is happy.",
        "Every impus is a tumpus. Fae is an impus. Every tumpus is not happy.",
    ]
)
#: mixed lengths: short and long contexts, checks and chains (a long one shares its context)
REQUESTS: list[tuple[str, Any]] = [
    (CONTEXT, STATEMENTS[0]),
    (LONG_CONTEXT, "Max is a zumpus."),
    ("", "Max is red."),
    (CONTEXT, ["Max is a jompus.", "Max is red.", "Max is not a wumpus."]),
    (LONG_CONTEXT, ["Max is a jompus.", "Max is a zumpus.", "Max is a rompus.", "Max is happy."]),
    (LONG_CONTEXT, "Fae is not happy."),
    (CONTEXT, ["Max is not red."]),
]


def _alone(judge, context, what, model_answer):
    if isinstance(what, str):
        return judge.check(context, what, model_answer)
    return judge.verify_chain(context, what, model_answer)


def _step_verdicts(result) -> list[tuple[str, float, float]]:
    if isinstance(result, ChainResult):
        return [(s.verdict, s.probability, s.margin) for s in result.steps]
    return [(result.verdict, result.probability, result.margin)]


@pytest.mark.parametrize("model_answer,max_padding", [(False, None), (True, None), (False, 1.25)])
def test_batched_verdicts_equal_one_at_a_time_in_float32(judge, model_answer, max_padding):
    """One padded pass, or (max_padding) passes of similar lengths: the verdicts of alone."""
    assert str(judge.lm.dtype) == "torch.float32"
    alone = [_alone(judge, c, w, model_answer) for c, w in REQUESTS]
    together = judge.judge_together(REQUESTS, model_answer, max_padding)
    assert len(together) == len(REQUESTS)
    verdicts = 0
    for (context, what), a, b in zip(REQUESTS, alone, together):
        assert type(a) is type(b)
        for (va, pa, ma), (vb, pb, mb) in zip(_step_verdicts(a), _step_verdicts(b), strict=True):
            assert va == vb, (context, what)
            assert pb == pytest.approx(pa, abs=1e-5)
            assert mb == pytest.approx(ma, abs=1e-4)
            verdicts += 1
        if isinstance(a, ChainResult):
            assert a.first_failure == b.first_failure
        elif model_answer:
            assert b.model_answer == a.model_answer
            assert b.model_probability == pytest.approx(a.model_probability, abs=1e-5)
    assert verdicts == 12
    # the requests really differ in length, and both verdicts occur
    outcomes = {v for r in together for v, _, _ in _step_verdicts(r)}
    assert outcomes == {"valid", "invalid"}


def test_several_chains_share_one_pass_of_their_prefixes(judge, monkeypatch):
    """Two chains with long contexts: their prefixes run in one padded pass, their steps in
    another (the chain alone: one prefix pass and one for its steps)."""
    import qkscore.scoring as scoring

    calls = {"prefixes": [], "extract": 0}
    real_many, real_one, real_extract = (
        scoring.encode_prefixes,
        scoring.encode_prefix,
        scoring.extract,
    )

    def many(lm, seqs, *a, **k):
        calls["prefixes"].append(len(seqs))
        return real_many(lm, seqs, *a, **k)

    def one(lm, ids, *a, **k):
        calls["prefixes"].append(1)
        return real_one(lm, ids, *a, **k)

    def extract(*a, **k):
        calls["extract"] += 1
        return real_extract(*a, **k)

    monkeypatch.setattr(scoring, "encode_prefixes", many)
    monkeypatch.setattr(scoring, "encode_prefix", one)
    monkeypatch.setattr(scoring, "extract", extract)
    chains = [
        REQUESTS[4],
        (LONG_CONTEXT + " Sam is a wumpus.", ["Sam is red.", "Sam is a jompus."]),
    ]
    judge.judge_together(chains, False)
    if not judge.share_prefix:
        pytest.skip("this profile's scores do not share prefixes")
    assert calls == {"prefixes": [2], "extract": 1}


def _sample(text: str, name: str) -> float:
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def _post(c, context, what, model_answer=False):
    if isinstance(what, str):
        body = {"context": context, "statement": what, "model_answer": model_answer}
        return c.post("/v1/check", json=body)
    body = {"context": context, "steps": what, "model_answer": model_answer}
    return c.post("/v1/verify-chain", json=body)


def _held_then_released(judge, app, requests, model_answer=False):
    """Hold the model with a first request, queue ``requests`` behind it, then let go: they
    wait together and are judged in batches. Returns the answers, the audit page and the
    metrics text."""

    async def go():
        async with _client(app) as c:
            judge._lock.acquire()
            try:
                first = asyncio.create_task(_post(c, CONTEXT, STATEMENTS[4], model_answer))
                while not (await c.get("/healthz")).json()["busy"]:
                    await asyncio.sleep(0.01)
                tasks = [asyncio.create_task(_post(c, *r, model_answer)) for r in requests]
                while (await c.get("/healthz")).json()["queue"] < len(requests):
                    await asyncio.sleep(0.01)
            finally:
                judge._lock.release()
            answers = await asyncio.gather(first, *tasks)
            page = (await c.get("/v1/audit", params={"limit": 100})).json()
            metrics = (await c.get("/metrics")).text
            return answers[1:], page, metrics

    return run(go())


def test_waiting_requests_are_judged_together_each_with_its_row(judge, tmp_path):
    settings = ServeSettings(max_batch=8, max_batch_tokens=100_000, batch_window_ms=0)
    app = create_app(judge, tmp_path / "a.db", raise_unexpected=True, limits=settings)
    answers, page, metrics = _held_then_released(judge, app, REQUESTS)
    alone = [_alone(judge, c, w, False) for c, w in REQUESTS]
    rows = {row["id"]: row for row in page["items"]}
    assert page["total"] == len(REQUESTS) + 1 and len(rows) == len(REQUESTS) + 1
    for (context, what), r, a in zip(REQUESTS, answers, alone):
        assert r.status_code == 200, r.text
        body = r.json()
        row = rows[body["audit_id"]]  # its own row, with its own texts and verdict
        assert row["context"] == context
        if isinstance(what, str):
            assert row["kind"] == "check" and row["statement"] == what
            assert body["verdict"] == row["verdict"] == a.verdict
            assert body["probability"] == pytest.approx(a.probability, abs=1e-5)
        else:
            assert row["kind"] == "chain" and row["steps"] == what
            assert [s["verdict"] for s in body["steps"]] == [s.verdict for s in a.steps]
            assert body["first_failure"] == a.first_failure
    assert len({r.json()["audit_id"] for r in answers}) == len(REQUESTS)
    # the first request alone, then the seven that waited in one batch
    assert _sample(metrics, "qkscore_batch_size_count") == 2
    assert _sample(metrics, "qkscore_batch_size_sum") == len(REQUESTS) + 1
    assert _sample(metrics, 'qkscore_batch_size_bucket{le="1.0"}') == 1
    assert _sample(metrics, 'qkscore_batch_size_bucket{le="8.0"}') == 2
    assert app.state.unexpected_errors == []


def test_batches_keep_to_the_token_budget_and_the_batch_size(judge, tmp_path):
    checks = [(CONTEXT, s) for s in STATEMENTS[:4]]
    cost = judge.lm.tokenizer  # one check here costs about 25 tokens
    n = [len(cost(CONTEXT + " " + s, add_special_tokens=False)["input_ids"]) for _, s in checks]
    settings = ServeSettings(max_batch=3, max_batch_tokens=2 * max(n) + 2, batch_window_ms=0)
    app = create_app(judge, tmp_path / "a.db", raise_unexpected=True, limits=settings)
    answers, _, metrics = _held_then_released(judge, app, checks)
    assert [r.status_code for r in answers] == [200] * 4
    # 1 (the first, alone) + 2 + 2: two checks fit the token budget, not three
    assert _sample(metrics, "qkscore_batch_size_count") == 3
    assert _sample(metrics, 'qkscore_batch_size_bucket{le="1.0"}') == 1
    assert _sample(metrics, 'qkscore_batch_size_bucket{le="2.0"}') == 3


def test_a_request_the_model_cannot_take_fails_alone(judge, tmp_path, monkeypatch):
    """One request of a batch is too long for the model: it gets its 400 (the message it
    gets alone), the others their answers and rows."""
    monkeypatch.setattr(judge, "max_tokens", 60)
    long_context = " ".join([CONTEXT] * 4)
    requests = [(CONTEXT, STATEMENTS[0]), (long_context, STATEMENTS[1]), (CONTEXT, STATEMENTS[2])]
    settings = ServeSettings(max_batch=8, batch_window_ms=0)
    app = create_app(judge, tmp_path / "a.db", raise_unexpected=True, limits=settings)
    answers, page, metrics = _held_then_released(judge, app, requests)
    assert [r.status_code for r in answers] == [200, 400, 200]
    assert "model 'smollm2-135m' takes at most 60" in answers[1].json()["error"]
    assert page["total"] == 3  # the first request and the two that could be judged
    logged = {row["statement"] for row in page["items"]}
    assert logged == {STATEMENTS[4], STATEMENTS[0], STATEMENTS[2]}
    assert _sample(metrics, "qkscore_batch_size_sum") == 4  # the three were one batch
    assert app.state.unexpected_errors == []


def test_over_budget_request_in_a_crowd_fails_alone_with_413(judge, tmp_path):
    settings = ServeSettings(max_tokens_per_request=200, max_batch=8, batch_window_ms=50)
    app = create_app(judge, tmp_path / "a.db", raise_unexpected=True, limits=settings)
    huge = " ".join([CONTEXT] * 20)

    async def go():
        async with _client(app) as c:
            return await asyncio.gather(
                _post(c, CONTEXT, STATEMENTS[0]),
                _post(c, huge, STATEMENTS[1]),
                _post(c, CONTEXT, STATEMENTS[2:4]),
            )

    answers = run(go())
    assert [r.status_code for r in answers] == [200, 413, 200]
    assert "the budget is 200 tokens per request" in answers[1].json()["error"]


def test_one_at_a_time_when_max_batch_is_1(judge, tmp_path):
    settings = ServeSettings(max_batch=1)
    app = create_app(judge, tmp_path / "a.db", raise_unexpected=True, limits=settings)
    answers, _, metrics = _held_then_released(judge, app, [(CONTEXT, s) for s in STATEMENTS[:3]])
    assert [r.status_code for r in answers] == [200] * 3
    assert _sample(metrics, "qkscore_batch_size_count") == 4
    assert _sample(metrics, 'qkscore_batch_size_bucket{le="1.0"}') == 4


# ---- the settings, declared once ---------------------------------------------------------


def test_profile_and_healthz_report_the_batching_settings(judge, tmp_path):
    settings = ServeSettings(max_batch_tokens=2048, max_batch=4, batch_window_ms=2.5)
    app = create_app(judge, tmp_path / "a.db", limits=settings)

    async def go():
        async with _client(app) as c:
            return (await c.get("/v1/profile")).json(), (await c.get("/healthz")).json()

    profile, health = run(go())
    for limits in (profile["limits"], health["limits"]):
        assert limits["max_batch_tokens"] == 2048
        assert limits["max_batch"] == 4 and limits["batch_window_ms"] == 2.5
        assert "db" not in limits and "profile" not in limits  # no paths or URLs


def test_settings_read_the_environment_old_names_included(monkeypatch):
    for name in FLAGS:
        monkeypatch.delenv(env_name(name), raising=False)
    monkeypatch.setenv("QKSCORE_SERVE_MAX_TOKENS", "5000")  # the name serve set before
    monkeypatch.setenv("QKSCORE_SERVE_FAST", "1")
    monkeypatch.setenv("QKSCORE_SERVE_STORE_TEXT", "0")
    monkeypatch.setenv("QKSCORE_SERVE_MODEL", "")  # empty: not set
    monkeypatch.setenv("QKSCORE_SERVE_MAX_BATCH_TOKENS", "999")
    monkeypatch.setenv("QKSCORE_SERVE_BATCH_WINDOW_MS", "0")
    s = ServeSettings()
    assert (s.max_tokens_per_request, s.fast, s.store_text, s.model) == (5000, True, False, None)
    assert (s.max_batch_tokens, s.batch_window_ms) == (999, 0.0)
    assert ServeSettings(max_tokens_per_request=7).max_tokens_per_request == 7  # init wins
    # what serve --workers hands its workers reads back the same
    given = ServeSettings(profile="p.json", max_queue=3, max_batch=2, fast=False, dtype="auto")
    env = given.to_env()
    assert env["QKSCORE_SERVE_MAX_TOKENS"] == "5000" and env["QKSCORE_SERVE_FAST"] == "0"
    assert all(k.startswith(ENV_PREFIX) for k in env)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert ServeSettings() == given.model_copy(update={"profile": given.profile.resolve()})
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        ServeSettings(max_batch=0)


def test_requests_arriving_while_a_batch_gathers_count_against_max_queue():
    """A batch gathering for its window holds its requests in the queue: one arriving when
    max_queue already wait is refused (503), as it is while a pass runs."""
    import asyncio

    from qkscore.audit.metrics import ServiceMetrics
    from qkscore.audit.service import Batcher, Job, ServiceError

    settings = ServeSettings(max_queue=2, max_batch=8, batch_window_ms=300, request_timeout=5)
    ran: list[int] = []

    def run(jobs):
        ran.append(len(jobs))
        return [job.what for job in jobs]

    async def go():
        batcher = Batcher(settings, run, ServiceMetrics())
        loop = asyncio.get_running_loop()

        def job(i):
            return Job("ctx", f"s{i}", False, 10, loop.create_future())

        first = [asyncio.create_task(batcher.submit(job(i))) for i in range(2)]
        await asyncio.sleep(0.05)  # both wait in the gathering window
        with pytest.raises(ServiceError) as refused:
            await batcher.submit(job(2))
        answers = await asyncio.gather(*first)
        batcher.close()
        return answers, refused.value.status

    answers, status = asyncio.run(go())
    assert answers == ["s0", "s1"] and status == 503 and ran == [2]


def test_batching_defaults_follow_the_device():
    """Unset, max_batch and max_padding follow the model's device: one request at a time on a
    CPU (where batching measured no faster), batches of 32 in one pass on a GPU; a value
    given (flag, variable) is kept on either."""
    cpu, gpu = ServeSettings().for_device("cpu"), ServeSettings().for_device("cuda")
    assert (cpu.max_batch, cpu.max_padding, cpu.batching) == (1, 1.25, False)
    assert (gpu.max_batch, gpu.max_padding, gpu.batching) == (32, None, True)
    given = ServeSettings(max_batch=8, max_padding=2.0)
    assert given.for_device("cpu") == given == given.for_device("cuda")
    assert ServeSettings().to_env()["QKSCORE_SERVE_MAX_BATCH"] == ""  # workers resolve it


def test_serve_flags_and_variables_feed_the_settings(judge, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from qkscore.audit import service
    from qkscore.cli import app
    from qkscore.cli import audit as cli_audit

    for name in FLAGS:
        monkeypatch.delenv(env_name(name), raising=False)
    seen: dict[str, Any] = {}
    monkeypatch.setattr(cli_audit, "_judge", lambda *a, **k: judge)
    monkeypatch.setattr(service, "serve", lambda j, db, **kw: seen.update(db=db, **kw))
    monkeypatch.setenv("QKSCORE_SERVE_MAX_QUEUE", "7")
    monkeypatch.setenv("QKSCORE_SERVE_MAX_BATCH_TOKENS", "1234")
    args = ["serve", "-p", str(judge.profile.path), "--db", str(tmp_path / "a.db"),
            "--max-batch-tokens", "512", "--batch-window-ms", "2", "--max-batch", "4"]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    seen["db"].close()
    limits = seen["limits"]
    assert (limits.max_batch_tokens, limits.batch_window_ms, limits.max_batch) == (512, 2.0, 4)
    assert limits.max_queue == 7  # from the variable: no flag given
    flat = " ".join(res.output.split())
    assert "batches of up to 4 requests and 512 tokens, gathered for 2 ms" in flat
    res = CliRunner().invoke(app, [*args, "--max-batch", "0"])
    assert res.exit_code == 2 and "Invalid value for '--max-batch'" in res.output
    monkeypatch.setenv("QKSCORE_SERVE_REQUEST_TIMEOUT", "0")  # checked by the settings
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2
    assert "--request-timeout (QKSCORE_SERVE_REQUEST_TIMEOUT): Input should be greater than 0" in (
        " ".join(res.output.split())
    )


def test_padding_cuts_keep_passes_of_similar_lengths():
    from qkscore.scoring import _padding_cuts

    lengths = [28, 31, 31, 31, 48, 49, 51, 51, 69, 69, 72, 72, 92, 92, 93, 95]
    cuts = _padding_cuts(lengths, 1.25)
    assert cuts == [(0, 4), (4, 8), (8, 16)]
    for a, b in cuts:
        assert (b - a) * lengths[b - 1] <= 1.25 * sum(lengths[a:b])
    assert _padding_cuts(lengths, None) == [(0, 16)]
    assert _padding_cuts([7, 7, 7], 1.0) == [(0, 3)] and _padding_cuts([], 1.5) == []
