"""The layouts of qkscore's output files, as typed, versioned pydantic models: the profile, a run
folder's ``run.json``, ``evaluation.json``, its ``predictions.jsonl`` rows and rank's
``summary.json``. (Writing and loading those files is :mod:`qkscore.outputs`; this module was
called ``qkscore.results`` before, a name kept one release.)

The pipeline still passes plain dicts between its steps (the tests, the report and the service
read them by key); these models are the boundary. Every writer validates through them and every
reader loads through them, so a damaged or foreign file is refused with the file and the field
named instead of failing later with a ``KeyError``.

Compatibility: ``schema_version`` counts breaking changes of a file's layout. Files made before
it existed read as version 1 (their layout is version 1). Nested sections that no code reads by
field (the fitted estimators, cross-validation details, breakdowns) stay plain JSON objects, and
every model allows extra keys (``extra="allow"``) so a file written by a newer qkscore that adds
a field still loads here; one with a higher ``schema_version`` is refused.

``python -m qkscore.schemas [FOLDER]`` writes the JSON Schemas (``docs/schemas/``);
``tests/test_results.py`` fails when the committed schemas differ from these models.
"""

from __future__ import annotations

import json
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from qkscore._version import __version__
from qkscore.prompts import TemplateSettings  # every template setting, declared once there

SCHEMA_VERSION = 1
SCHEMA_DIR = Path(__file__).resolve().parents[2] / "docs" / "schemas"

_M = TypeVar("_M", bound="_Open")


def versions() -> dict[str, str | None]:
    """The qkscore, torch and transformers versions, read from the installed distributions
    (torch itself is not imported: a data-only process stays cheap)."""
    out: dict[str, str | None] = {"qkscore": __version__}
    for dist in ("torch", "transformers"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


class _Open(BaseModel):
    """A section that tolerates keys this version does not know (see the module docstring)."""

    model_config = ConfigDict(extra="allow")
    #: What the file is, for error messages.
    what: ClassVar[str] = "output section"

    @classmethod
    def from_data(cls: type[_M], data: Any, where: str | Path) -> _M:
        """Validate ``data`` read from ``where``; the error names the file and the field."""
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise ResultFileError(describe_errors(err, where, cls.what)) from None

    @classmethod
    def checked(cls, data: Any, where: str | Path) -> Any:
        """``data`` itself, once validated: writers write it as given (key order included)."""
        cls.from_data(data, where)
        return data

    @classmethod
    def load(cls: type[_M], path: str | Path) -> _M:
        return cls.from_data(read_json(path), path)

    def to_data(self) -> dict[str, Any]:
        """The keys given (nothing invented); declared fields come first."""
        return self.model_dump(mode="json", exclude_unset=True)


class Versions(_Open):
    qkscore: str
    torch: str | None = None
    transformers: str | None = None


class ModelInfo(_Open):
    """The model a run or profile was made with; ``fingerprint`` identifies its weights."""

    name: str | None = None
    fingerprint: str = ""
    family: str | None = None
    dtype: str | None = None
    n_layers: int | None = None
    n_heads: int | None = None


class Output(_Open):
    """What every qkscore output file carries: its layout version and the versions it was
    made with."""

    schema_version: int = Field(SCHEMA_VERSION, le=SCHEMA_VERSION)
    qkscore_version: str
    versions: Versions | None = None  # absent in files made before schema_version existed


class ResultFileError(ValueError):
    """An output file that is not what its name says (a ValueError: the CLI reports it)."""


def describe_errors(err: ValidationError, where: str | Path, what: str) -> str:
    """``FILE: field a.b: message`` for the first errors of a validation failure."""
    lines = []
    for e in err.errors()[:5]:
        field = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"field {field}: {e['msg']}")
    more = f" (and {err.error_count() - 5} more)" if err.error_count() > 5 else ""
    return f"{where}: not a valid qkscore {what}: " + "; ".join(lines) + more


def read_json(path: str | Path) -> Any:
    p = Path(path)
    try:
        text = p.read_bytes().decode()
    except FileNotFoundError:
        raise FileNotFoundError(f"{p} does not exist") from None
    except UnicodeDecodeError as err:
        raise ResultFileError(f"{p}: not UTF-8 text ({err})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ResultFileError(f"{p}:{err.lineno}: not valid JSON ({err.msg})") from None


def stamp(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with the schema version and the library versions first (a writer's helper)."""
    head = {
        "schema_version": SCHEMA_VERSION,
        "qkscore_version": __version__,
        "versions": versions(),
    }
    return {**head, **{k: v for k, v in data.items() if k not in head}}


# --- run.json ----------------------------------------------------------------------------


class ScanState(_Open):
    complete: bool = False
    finished: str | None = None
    processes: int = 1
    #: wall time of the forward passes of the call that finished the scan (a resumed scan
    #: counts its own part only); absent in folders made before it was recorded
    seconds: float | None = None


class SharedPass(_Open):
    """A main scan scored in one pass with other settings' folders (same tokens, other
    positions or candidates; :func:`qkscore.scanning.scan_shared`)."""

    id: str
    folders: list[str]
    seconds: float | None = None


class RunMeta(Output):
    """``run.json``: how a run folder's arrays were made."""

    what: ClassVar[str] = "run.json"

    created: str
    model: ModelInfo
    template: TemplateSettings
    data: str
    items_sha256: str | None = None
    rope: bool = False
    attention_weights: bool = False
    n_items: int = Field(ge=0)
    n_layers: int = Field(ge=1)
    n_heads: int = Field(ge=1)
    d_model: int | None = None
    n_options: int = Field(ge=1)
    hidden_layers: list[int] = []
    chunk_size: int = Field(64, ge=1)
    batch_size: int | None = None
    share_prefix: bool = False
    #: items left out of the scan (``on_error=skip``): id, tokens, max_position_embeddings
    skipped: list[dict[str, Any]] = []
    scans: dict[str, ScanState]
    shared_pass: SharedPass | None = None


# --- profile.json ------------------------------------------------------------------------

HEAD_PATTERN = r"^L\d+H\d+$"


class CalibrationInfo(_Open):
    size: int
    seed: int = 0
    metric: str = "auroc"
    label_counts: dict[str, int]
    accuracy: float | None = None
    balanced_accuracy: float | None = None
    auroc: float | None = None
    warnings: list[str] = []
    item_ids: list[str] = []
    #: content hash of each calibration item (``qkscore.data.items.content_hash``): evaluation
    #: leaves out items with these contents under any id or spec (absent in older profiles)
    item_hashes: list[str] = []


class ProfileModel(Output):
    """``profile.json``: what calibration chose. The fitted estimators (``selector``,
    ``readers``, ``baselines``, ``ensemble``) stay JSON objects: their own ``from_dict``
    checks them (``Profile.validate``)."""

    what: ClassVar[str] = "profile"

    created: str | None = None
    #: what the readers were calibrated on: True/False answers, or chain-of-thought steps
    unit: Literal["answer", "step"] = "answer"
    model: ModelInfo
    template: TemplateSettings
    rope: bool = False
    data: str | None = None
    run: str | None = None
    reader: str = "head"
    decision_rule: str | None = None
    reader_choice: dict[str, Any] | None = None
    readers: dict[str, dict[str, Any]] | None = None
    baselines: dict[str, dict[str, Any] | None] | None = None
    head: str = Field(pattern=HEAD_PATTERN)
    layer: int | None = None
    head_index: int | None = None
    sign: int | None = None
    threshold: float | None = None
    calibration: CalibrationInfo
    evaluation_ids: list[str] = []
    selector: dict[str, Any]
    ensemble: dict[str, Any] | None = None
    ranking: list[dict[str, Any]] = []


# --- evaluation.json ---------------------------------------------------------------------


def method_keys() -> tuple[str, ...]:
    """Machine keys of the methods an evaluation may hold: every registered reader's name
    (:data:`qkscore.estimators.protocol.READERS`), then the baselines'."""
    from qkscore.estimators.protocol import BASELINE_KEYS, reader_names

    return (*reader_names(), *BASELINE_KEYS)


def __getattr__(name: str) -> Any:
    if name == "METHOD_KEYS":  # read from the reader registry when asked, never copied
        return method_keys()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class Interval(_Open):
    value: float | None
    low: float | None = None
    high: float | None = None
    n: int


class MethodResult(_Open):
    """One method's metrics; ``label`` is display text only, never parsed back."""

    label: str
    kind: Literal["reader", "baseline"]
    chosen: bool = False
    n: int
    confidence: float = 0.95
    n_boot: int
    accuracy: Interval
    balanced_accuracy: Interval
    auroc: Interval | None = None


_METRICS = ("accuracy", "balanced_accuracy", "auroc")


#: A comparison's outcome at p < 0.05: ``a`` better than ``b``, worse, or no difference.
Outcome = Literal["better", "worse", "no_difference"]


class Comparison(_Open):
    """Method ``a`` against method ``b`` on the same items: ``difference`` is ``a``'s figure
    minus ``b``'s (accuracy for McNemar, AUROC for a paired bootstrap), ``pvalue`` the test's;
    ``outcome`` says better or worse only at p < 0.05."""

    what: ClassVar[str] = "comparison"

    a: str
    b: str
    test: Literal["mcnemar", "paired_bootstrap"] = "mcnemar"
    difference: float | None = None
    statistic: float | None = None
    pvalue: float | None = None
    outcome: Outcome | None = None


def comparison_records(tests: Any) -> list[dict[str, Any]]:
    """An evaluation's ``mcnemar`` as records, whether written as records or (files made
    before them) keyed by ``"a vs b"``."""
    if isinstance(tests, dict):
        return [{"a": k.split(" vs ")[0], "b": k.split(" vs ")[-1], **v} for k, v in tests.items()]
    return [dict(t) for t in tests or []]


def find_comparison(tests: Any, a: str, b: str) -> dict[str, Any] | None:
    """The record comparing ``a`` with ``b`` (None when there is none)."""
    return next((t for t in comparison_records(tests) if (t["a"], t["b"]) == (a, b)), None)


class Evaluation(Output):
    """``evaluation.json``: every reader and fair baseline on the evaluation items, keyed by
    stable machine names (:data:`METHOD_KEYS`)."""

    what: ClassVar[str] = "evaluation"

    run: str
    profile: str | None = None
    model: str | None = None
    fingerprint: str | None = None
    template: str | None = None
    template_settings: TemplateSettings | None = None  # absent before schema_version existed
    data: str | None = None
    calibration_data: str | None = None
    reader: str
    reader_choice: dict[str, Any] | None = None
    head: str = Field(pattern=HEAD_PATTERN)
    sign: int | None = None
    split: str
    n_eval: int = Field(ge=0)
    label_counts: dict[str, int]
    methods: dict[str, MethodResult]
    #: McNemar records (:class:`Comparison`); files made before them key each by "a vs b"
    mcnemar: list[Comparison] | dict[str, dict[str, Any]] = []
    breakdowns: dict[str, Any] = {}
    #: ``evaluate(by=...)``: field -> method -> field value -> accuracy with its interval
    by: dict[str, dict[str, dict[str, Interval]]] = {}
    controls: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    calibration: dict[str, Any] = {}
    predictions: list[str] | None = None  # the per-item files written beside this one

    @property
    def chosen(self) -> str:
        """Key of the method the profile chose (the first reader marked ``chosen``)."""
        return next((k for k, m in self.methods.items() if m.chosen), self.reader)

    def to_pandas(self) -> Any:
        """A DataFrame with one row per method (index: machine key) and columns ``label``,
        ``kind``, ``chosen``, ``n`` and, per metric, its value, ``_low`` and ``_high``."""
        pd = require_pandas()
        rows = []
        for key, m in self.methods.items():
            row: dict[str, Any] = {"method": key, "label": m.label, "kind": m.kind}
            row.update(chosen=m.chosen, n=m.n)
            for metric in _METRICS:
                ci = getattr(m, metric)
                row[metric] = None if ci is None else ci.value
                row[f"{metric}_low"] = None if ci is None else ci.low
                row[f"{metric}_high"] = None if ci is None else ci.high
            rows.append(row)
        return pd.DataFrame(rows).set_index("method")


# --- predictions.jsonl -------------------------------------------------------------------


class MethodPrediction(BaseModel):
    """One method's verdict on one item: the option it chose, whether that is the gold one,
    and (two-option items) its probability of option 0."""

    model_config = ConfigDict(extra="forbid")
    prediction: int
    correct: bool
    probability: float | None = None


class PredictionRow(_Open):
    """One line of ``predictions.jsonl``: an evaluated item and every method's verdict."""

    what: ClassVar[str] = "prediction row"

    id: str
    index: int
    label: str | None = None
    answer_index: int
    split: Literal["evaluation", "transfer"]
    meta: dict[str, Any] = {}
    methods: dict[str, MethodPrediction]


def require_pandas() -> Any:
    """pandas, or an ImportError that names the extra to install."""
    try:
        import pandas as pd
    except ImportError as err:
        raise ImportError(
            "this needs pandas: install the data extra (pip install 'qkscore[data]')"
        ) from err
    return pd


# --- rank's summary.json -------------------------------------------------------------------


class AurocEntry(_Open):
    """An AUROC with its 95% bootstrap interval (None where one side has no item)."""

    n: int
    positives: int
    auroc: float | None = None
    ci: list[float] | None = None


class AccuracyEntry(_Open):
    accuracy: float
    ci: list[float]
    n: int


class StepLevel(_Open):
    """One step scorer's AUROC against the prover's labels, overall and by subset."""

    overall: AurocEntry
    derived_only: AurocEntry
    grounded_only: AurocEntry
    by_depth: dict[str, AurocEntry] = {}
    by_hops: dict[str, AurocEntry] = {}


class PairedComparison(Comparison):
    """Two step scorers' AUROC on the same steps of one subset, by a paired bootstrap."""

    subset: str
    n: int
    ci: list[float] | None = None


class AnswerControl(_Open):
    """Whether a scorer knows a chain is right, or only that it reached an answer line."""

    chains_answered: int
    chain_level_among_answered: dict[str, AurocEntry]
    answered_vs_not: dict[str, AurocEntry]
    reads_finishing: list[str]
    finishing_testable: bool
    best_of_n_among_answered: dict[str, AccuracyEntry]
    best_qk_selector_among_answered: str
    comparisons_among_answered: list[Comparison]
    step_reader_vs_majority_among_answered: list[Comparison] = []


class RankSummary(_Open):
    """``qkscore rank``'s ``summary.json``: machine keys only (summary.md is made from it).
    ``format_version`` 2 stores every comparison as a :class:`Comparison` record."""

    what: ClassVar[str] = "rank summary"

    format_version: Literal[2]
    qkscore_version: str
    generations: str
    profile: str
    profile_unit: str
    answer_profile: str | None = None
    reader: str
    head: str = Field(pattern=HEAD_PATTERN)
    constant_reader: bool = False
    warning: str | None = None
    hidden_probe_layer: int | None = None
    n_problems: int = Field(ge=0)
    n_chains: int = Field(ge=0)
    calibration_overlap: dict[str, Any]
    parse_coverage: dict[str, Any]
    valid_steps_by_depth: dict[str, int]
    chains_correct: float
    answers_parsed: float
    step_level: dict[str, StepLevel]
    step_paired: list[PairedComparison]
    chain_level: dict[str, AurocEntry]
    best_of_n: dict[str, AccuracyEntry]
    best_qk_selector: str
    comparisons: list[Comparison]
    step_reader_vs_majority: list[Comparison] = []
    solution_folds: dict[str, Any]
    answer_control: AnswerControl | None = None


# --- JSON Schemas ------------------------------------------------------------------------

#: File name stem of each output's schema in ``docs/schemas/``.
SCHEMAS: dict[str, type[BaseModel]] = {
    "run": RunMeta,
    "profile": ProfileModel,
    "evaluation": Evaluation,
    "predictions-row": PredictionRow,
    "rank-summary": RankSummary,
}


def schema_texts() -> dict[str, str]:
    """``{file name: JSON Schema text}`` as written to ``docs/schemas/``."""
    out = {}
    for stem, model in SCHEMAS.items():
        schema = model.model_json_schema()
        schema["$id"] = f"https://qkscore/schemas/{stem}.schema.json"
        out[f"{stem}.schema.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out


def write_schemas(folder: str | Path = SCHEMA_DIR) -> list[Path]:
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in schema_texts().items():
        (target / name).write_text(text)
        written.append(target / name)
    return written


def main(argv: list[str] | None = None) -> None:
    """``python -m qkscore.schemas [FOLDER]``: write the schemas, print their paths."""
    args = sys.argv[1:] if argv is None else argv
    for path in write_schemas(args[0] if args else SCHEMA_DIR):
        print(path)


if __name__ == "__main__":
    main()
