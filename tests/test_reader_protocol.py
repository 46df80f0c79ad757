"""The reader protocol: one registration makes a reader everything a built-in one is.

A reader defined here, outside the package, registered through the public API, is chosen by
``qkscore.calibrate``, saved in a profile, loaded back, evaluated under its own method key and
served by ``Judge`` on the real SmolLM2, fast path included; the registry refuses a name or a
kind that is taken, and every built-in reader keeps the protocol.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import numpy as np
import pytest
from scipy.special import expit

import qkscore
from qkscore.estimators.base import check_saved
from qkscore.estimators.protocol import (
    BASELINE_KEYS,
    READERS,
    Reader,
    make_reader,
    reader_from_dict,
    register_reader,
)
from qkscore.profile import Profile
from qkscore.schemas import method_keys
from tiny_models import few_threads

NAME = "mean-margin"


class MeanMarginReader(Reader):
    """The mean margin over every head of the first ``layers`` layers, through a fitted slope."""

    kind = "tests.MeanMarginReader"

    def __init__(self, layers: int = 3):
        self.layers = layers

    def _mean_margin(self, scores: Any) -> np.ndarray:
        x = np.asarray(scores, dtype=np.float64)[:, : self.layers]
        return (x[..., 0] - x[..., 1]).mean(axis=(1, 2))

    def fit(self, scores, labels, *, baseline=None, groups=None) -> MeanMarginReader:
        d = self._mean_margin(scores)
        positive = np.asarray(labels) == 0
        self.scale_ = float(d.std()) or 1.0
        z = d / self.scale_
        # the least-squares slope of the centred label on the margin: enough for a test reader
        self.coef_ = float(np.polyfit(z, positive.astype(float) - 0.5, 1)[0]) * 4
        self.intercept_ = 0.0
        return self

    def decision_function(self, scores, *, baseline=None) -> np.ndarray:
        return self.coef_ * self._mean_margin(scores) / self.scale_ + self.intercept_

    def predict_proba(self, scores, *, baseline=None) -> np.ndarray:
        p0 = expit(self.decision_function(scores))
        return np.column_stack([p0, 1.0 - p0])

    @property
    def deepest_layer_(self) -> int:
        return self.layers - 1

    def label(self, name: str) -> str:
        return f"{name} (first {self.layers} layers)"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "format_version": 1,
            "params": {"layers": self.layers},
            "scale": self.scale_,
            "coef": self.coef_,
            "intercept": self.intercept_,
        }

    @classmethod
    def from_dict(cls, data) -> MeanMarginReader:
        check_saved(data, cls.kind, "MeanMarginReader")
        obj = cls(**data["params"])
        obj.scale_, obj.coef_ = float(data["scale"]), float(data["coef"])
        obj.intercept_ = float(data["intercept"])
        return obj


@pytest.fixture
def registered():
    """Register the test reader through the public API; the registry is restored after."""
    saved = dict(READERS)
    qkscore.register_reader(NAME, layers=3)(MeanMarginReader)
    yield NAME
    READERS.clear()
    READERS.update(saved)


def test_a_reader_from_outside_calibrates_saves_loads_evaluates_and_judges(
    registered, tmp_path_factory, tmp_path, smollm2
):
    from audit_fixtures import build_profile
    from qkscore.run import RunFolder

    run_path = build_profile(tmp_path_factory.getbasetemp(), smollm2).parent / "run"
    assert method_keys() == (*READERS, *BASELINE_KEYS) and method_keys()[-7] == NAME
    out = tmp_path / "profile.json"
    with warnings.catch_warnings(), few_threads():
        warnings.simplefilter("ignore")
        qkscore.calibrate(run_path, calib_size=80, reader=registered, out=out)
        profile = Profile.load(out)
        report = qkscore.evaluate(run_path, profile, n_boot=20)
    assert json.loads(out.read_text())["readers"][NAME]["kind"] == "tests.MeanMarginReader"
    reader = profile.reader()
    assert profile.reader_name == NAME and isinstance(reader, MeanMarginReader)
    assert report["reader"] == NAME and report["methods"][NAME]["chosen"]
    assert report["methods"][NAME]["label"] == f"{NAME} (first 3 layers)"

    run = RunFolder(run_path)
    records = run.items()
    scores = np.asarray(run.load())
    judge = qkscore.Judge(out, model=smollm2)
    pairs = [(r["context"], r["statement"]) for r in records[:4]]
    with few_threads():
        verdicts = judge.check_many(pairs)
        fast = judge.check(*pairs[0], model_answer=False)
    expected = reader.predict_proba(scores[:4])[:, 0]
    for v, p in zip(verdicts, expected):
        assert v.reader == NAME and v.probability == pytest.approx(p, abs=2e-3)
        assert v.valid == (v.margin > 0) == (p > 0.5)
    assert fast.fast and fast.layers_run == 3  # the pass stops after the reader's deepest layer
    assert fast.probability == pytest.approx(verdicts[0].probability, abs=2e-3)

    READERS.pop(NAME)  # a profile holding a reader nobody registered is refused, by its kind
    with pytest.raises(ValueError, match="unknown reader kind 'tests.MeanMarginReader'"):
        Profile.load(out)


def test_the_registry_refuses_taken_and_reserved_names_and_non_readers(registered):
    class Other(MeanMarginReader):
        kind = "tests.Other"

    with pytest.raises(ValueError, match="already registered"):
        register_reader(NAME)(Other)
    with pytest.raises(ValueError, match="already MeanMarginReader's"):
        register_reader("copy")(type("Copy", (MeanMarginReader,), {"kind": MeanMarginReader.kind}))
    for reserved in ("auto", "model_margin", "majority"):
        with pytest.raises(ValueError, match="reserved"):
            register_reader(reserved)
    with pytest.raises(TypeError, match="Reader subclass"):
        register_reader("plain")(dict)
    with pytest.raises(TypeError, match="abstract"):
        type("Half", (Reader,), {})()  # a reader that skips part of the protocol cannot exist
    assert isinstance(make_reader(NAME), MeanMarginReader) and make_reader(NAME).layers == 3


def _random_scores(n: int = 120, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.normal(size=(n, 3, 4, 2))
    x[:, 1, 2] += 0.8 * np.eye(2)[y]
    base = rng.normal(size=(n, 2)) + 0.5 * np.eye(2)[y]
    return x, y, base


@pytest.mark.parametrize("name", ["head", "ensemble", "linear", "linear-l1", "hybrid"])
def test_every_built_in_reader_keeps_the_protocol(name):
    x, y, base = _random_scores()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reader = make_reader(name).fit(x, y, baseline=base, groups=None)
    assert isinstance(reader, Reader) and READERS[name].cls is type(reader)
    margin = reader.decision_function(x, baseline=base)
    proba = reader.predict_proba(x, baseline=base)
    assert np.array_equal(reader.predict(x, baseline=base), np.where(proba[:, 0] > 0.5, 0, 1))
    assert np.array_equal(margin > 0, proba[:, 0] > 0.5)  # one boundary for margin and verdict
    assert 0 <= reader.deepest_layer_ < 3 and reader.label(name).startswith(name)
    again = reader_from_dict(json.loads(json.dumps(reader.to_dict())))
    assert type(again) is type(reader)
    assert np.allclose(again.predict_proba(x, baseline=base), proba)


def test_the_readers_command_lists_every_registered_reader(registered) -> None:
    """`qkscore readers` is where a user finds the names --reader takes, a reader registered
    from outside included, with the first line of its docstring as what it reads."""
    from typer.testing import CliRunner

    from qkscore.cli import app

    result = CliRunner().invoke(app, ["readers", "--json"])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    assert listed["auto"] == "auto"
    assert [r["name"] for r in listed["readers"]] == list(READERS)
    ours = {r["name"]: r for r in listed["readers"]}
    assert ours[NAME]["reads"] == MeanMarginReader.__doc__.splitlines()[0]
    assert ours["hybrid"]["needs_model_answer"] and not ours["head"]["needs_model_answer"]
    table = CliRunner().invoke(app, ["readers"], env={"COLUMNS": "80"})
    assert table.exit_code == 0 and NAME in table.stdout
    assert max(len(line) for line in table.stdout.splitlines()) <= 80


def test_reader_option_completes_registered_names(registered) -> None:
    import click
    import typer

    from qkscore.cli import app

    calibrate = typer.main.get_command(app).commands["calibrate"]
    option = next(p for p in calibrate.params if p.name == "reader")
    complete = [c.value for c in option.shell_complete(click.Context(calibrate), "li")]
    assert complete == ["linear", "linear-l1"]
    assert NAME in [c.value for c in option.shell_complete(click.Context(calibrate), "")]
