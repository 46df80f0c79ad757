"""Judge one statement (or a chain of them) against a context with a calibrated profile.

The profile holds the reader chosen at calibration (``qkscore.estimators.readers``): the
paper's single head (a statement is valid when that head's query at the "True" answer token
aligns with the statement's key more than the "False" one does, by more than a threshold), a
top-k ensemble, a linear readout of every head's margin, or that readout stacked with the
model's own margin. The verdict is the profile reader's; the single head's scores are
reported beside it for reference. No text is generated.

``model_answer=True`` also runs the whole forward pass to read the model's own True/False
answer (the log-probabilities of the two answer letters), so a caller can see where the reader
and the model disagree. ``model_answer=False`` is the fast path: the pass stops after the
deepest layer the reader reads, skipping the layers above and the LM head (and so the ensemble
columns). A hybrid reader needs the model's answer, so it always runs the whole pass.

A :class:`Judge` holds one model; its calls are serialised with a lock so a server may call it
from many threads.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np

from qkscore.audit.chain import ChainResult, assemble_chain, split_steps, step_pairs
from qkscore.audit.text import require_text
from qkscore.dtypes import VERDICT_DTYPE
from qkscore.estimators.base import decide
from qkscore.profile import Profile, ProfileMismatchError
from qkscore.prompts import template_from_description

__all__ = ["ANSWER_PROFILE_ON_STEPS", "Judge", "ProfileMismatchError", "Verdict"]

VALID, INVALID = "valid", "invalid"

#: What every step verdict of a profile calibrated on answers says (terminal, JSON, audit row,
#: dashboard): on chains a model wrote, such a profile read steps worse than a coin.
ANSWER_PROFILE_ON_STEPS = (
    "these step verdicts come from a profile calibrated on answers (True/False about a whole "
    "context), not on chain steps; on chains a model wrote, answer profiles have read steps "
    "worse than chance. Calibrate a step profile: qkscore calibrate GENERATION_FOLDER"
)


@dataclass
class Verdict:
    """The reader's judgement of one statement.

    ``reader`` names the profile's reader. For the single-head reader ``score`` is the head's
    signed QK difference ``sign * (qk_True - qk_False)`` and ``margin`` is ``score - threshold``;
    for the other readers ``margin`` is their log-odds (vote share - 0.5 for an ensemble),
    ``score`` equals it and ``threshold`` is 0. ``margin`` is positive for "valid";
    ``probability`` is the reader's calibrated P(valid). ``head`` and ``qk_scores`` always
    describe the profile's single head, for reference. ``model_answer`` / ``model_probability``
    are the model's own answer (True = valid) and its probability, renormalised over the two
    answer tokens; ``disagree`` is True when the model and the head differ. The three are None
    on the fast path. ``ensemble_*`` come from the profile's top-k ensemble when it has one
    (None on the fast path too).

    The verdict is the profile's decision rule (:func:`~qkscore.estimators.base.decide`):
    "valid" exactly when ``probability`` > 0.5, the rule every reader predicts by and every
    accuracy in ``evaluate`` is computed with; ``margin`` is positive on the same side (for the
    single head 0.5 lies on its fitted threshold).
    ``latency_ms`` excludes time spent waiting for the lock.
    """

    verdict: str
    valid: bool
    probability: float
    margin: float
    score: float
    threshold: float
    reader: str
    head: str
    qk_scores: dict[str, float]
    model_answer: bool | None
    model_probability: float | None
    disagree: bool | None
    ensemble_probability: float | None
    ensemble_verdict: str | None
    fast: bool
    layers_run: int
    latency_ms: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _finite(x: float) -> float:
    if not math.isfinite(x):
        raise RuntimeError(f"the model produced a non-finite score ({x}); check its dtype")
    return float(x)


class Judge:
    """Load (or take) the profile's model and judge statements with the profile's head.

    ``model`` is a :class:`~qkscore.models.LoadedModel` or anything ``load_model`` accepts; by
    default the model the profile names. A model whose fingerprint differs from the profile's
    is refused (:class:`ProfileMismatchError`): another model's heads mean something else.
    ``dtype`` defaults to float32: in bf16, judging in batches instead of one at a time flipped
    5.5% of verdicts (rounding moves borderline margins), and an audit must reproduce.
    """

    def __init__(
        self,
        profile: Profile | str | Path,
        model: Any = None,
        dtype: str = VERDICT_DTYPE,
        model_answer: bool = True,
        batch_size: int = 8,
        device: str = "auto",
        share_prefix: bool = True,
    ) -> None:
        from qkscore.extraction import prefix_supported
        from qkscore.models import LoadedModel, load_model

        self.profile = profile if isinstance(profile, Profile) else Profile.load(profile)
        where = self.profile.path or "profile"
        # Everything that can be refused without the model is checked before loading it.
        self.template = template_from_description(self.profile.data["template"])
        self.selector = self.profile.selector()
        if self.selector.n_options_ != 2:
            raise ValueError(
                f"{where} was calibrated on {self.selector.n_options_}-option items; judging a "
                "statement needs a True/False profile"
            )
        self.ensemble = self.profile.ensemble()
        self.reader_name = self.profile.reader_name
        self.reader = self.profile.reader()
        self.reader_needs_model = self.reader.needs_baseline
        self.head = str(self.profile.data["head"])
        self.threshold = float(self.selector.threshold_[self.profile.head])
        self.sign = int(self.selector.sign_[self.profile.head])
        self.rope = bool(self.profile.data.get("rope"))
        #: what the profile was calibrated on: "answer" (True/False items) or "step"
        self.unit = self.profile.unit
        self.model_answer = model_answer
        self.batch_size = batch_size
        # the steps of a chain (and pairs sent together) share their context: run it once
        self.share_prefix = share_prefix and prefix_supported(self.rope)
        if isinstance(model, LoadedModel):
            lm = model
        else:
            name = model or self.profile.data["model"].get("name")
            if not name:
                raise ValueError(f"{where} names no model; pass one")
            lm = load_model(name, dtype=dtype, device=device)
        self.profile.check_model(lm.fingerprint, lm.name)
        if (lm.n_layers, lm.n_heads) != (self.selector.n_layers_, self.selector.n_heads_):
            raise ProfileMismatchError(
                f"{where} covers {self.selector.n_layers_} layers x {self.selector.n_heads_} "
                f"heads but model {lm.name!r} has {lm.n_layers} x {lm.n_heads}"
            )
        self.lm = lm
        config = getattr(lm.model, "config", None)
        if config is not None and hasattr(config, "get_text_config"):
            config = config.get_text_config()
        self.max_tokens: int | None = getattr(config, "max_position_embeddings", None)
        self._lock = threading.Lock()

    # ---- description --------------------------------------------------------------------

    @property
    def fingerprint(self) -> str:
        return self.lm.fingerprint

    def describe(self) -> dict[str, Any]:
        """What a client needs to know about this judge (no calibration item ids)."""
        d = self.profile.data
        return {
            "profile": str(self.profile.path) if self.profile.path else None,
            "digest": self.profile.digest,
            "model": d["model"].get("name"),
            "fingerprint": self.lm.fingerprint,
            "reader": self.reader_name,
            "reader_choice": d.get("reader_choice"),
            "head": self.head,
            "sign": self.sign,
            # the threshold the verdicts' scores are compared with (0 for every reader but
            # the single head, whose scores are its signed QK differences)
            "threshold": self.threshold if self.reader_name == "head" else 0.0,
            "head_threshold": self.threshold,
            "deepest_layer": self.profile.deepest_layer,
            "n_layers": self.lm.n_layers,
            "n_heads": self.lm.n_heads,
            "template": d["template"].get("name"),
            "rope": self.rope,
            "data": d.get("data"),
            "model_answer_default": self.model_answer,
            "unit": self.unit,
            "step_warning": self.step_warning,
        }

    @property
    def step_warning(self) -> str | None:
        """The warning every step verdict carries when the profile was not calibrated on steps."""
        return None if self.unit == "step" else ANSWER_PROFILE_ON_STEPS

    # ---- judging ------------------------------------------------------------------------

    @overload
    def check(self, context: str, statement: str, model_answer: bool | None = None) -> Verdict: ...

    @overload
    def check(
        self,
        context: str | Sequence[str],
        statement: Sequence[str],
        model_answer: bool | None = None,
    ) -> np.ndarray: ...

    def check(self, context, statement, model_answer=None):
        """Judge whether ``statement`` follows from ``context``.

        Two strings give a :class:`Verdict`. Lists (one context per statement, or one context
        for every statement) give the reader's P(valid) per pair as a float array, from one
        batched pass: for use inside an evaluation or training loop
        (``model_answer=False`` skips the layers the reader does not read).
        """
        if isinstance(statement, str):
            if not isinstance(context, str | None):
                raise ValueError("one statement takes one context (text); pass lists for many")
            return self.check_many([(context, statement)], model_answer)[0]
        statements = list(statement)
        contexts = [context] * len(statements) if isinstance(context, str) else list(context)
        if len(contexts) != len(statements):
            raise ValueError(
                f"{len(contexts)} contexts for {len(statements)} statements: pass one context "
                "per statement, or one context (text) for all"
            )
        verdicts = self.check_many(list(zip(contexts, statements)), model_answer)
        return np.array([v.probability for v in verdicts], dtype=np.float64)

    def check_many(
        self, pairs: Sequence[tuple[str, str]], model_answer: bool | None = None
    ) -> list[Verdict]:
        """Judge many (context, statement) pairs in batched passes; latency is per pair."""
        if not pairs:
            return []
        want_model = self.model_answer if model_answer is None else model_answer
        want_model = want_model or self.reader_needs_model  # a hybrid reads the model's answer
        out, seconds = self._score(pairs, want_model)
        return self.verdicts(out, fast=not want_model, latency_ms=seconds * 1000 / len(pairs))

    def features(
        self, pairs: Sequence[tuple[str, str]], hidden_layers: Sequence[int] | None = None
    ) -> Any:
        """The whole pass over the pairs as :class:`~qkscore.scoring.ScoredPrompts`: every
        head's scores, the model's answer and (``hidden_layers``) the residual stream at the
        query positions. :meth:`verdicts` turns it into this profile's verdicts; another profile
        with the same model and template may read the same pass."""
        return self._score(pairs, True, hidden_layers)[0]

    def judge_together(
        self,
        requests: Sequence[tuple[str, str | Sequence[str]]],
        model_answer: bool | None = None,
        max_padding: float | None = None,
    ) -> list[Verdict | ChainResult]:
        """Judge several requests in one padded pass, as a server batches waiting requests:
        ``(context, statement)`` gives a :class:`Verdict` as :meth:`check` does, ``(context,
        [steps])`` a :class:`ChainResult` as :meth:`verify_chain` does.

        Each request's prompts are computed as they would be alone (a chain's steps share its
        context; nothing is shared across requests), so in float32 the verdicts equal the
        one-at-a-time ones up to the rounding of padding. ``latency_ms`` is the whole pass.
        ``max_padding`` splits requests of very different lengths into passes of similar
        lengths (see :func:`~qkscore.scoring.score_prompts`; None: one pass).
        """
        pairs: list[tuple[str, str]] = []
        owners: list[int] = []
        spans: list[tuple[int, int, list[str] | None]] = []
        for n, (context, what) in enumerate(requests):
            chain = None if isinstance(what, str) else _chain_steps(what)
            new = [(context, what)] if chain is None else step_pairs(context, chain)
            spans.append((len(pairs), len(pairs) + len(new), chain))
            pairs += new
            owners += [n] * len(new)
        if not pairs:
            return []
        want_model = self.model_answer if model_answer is None else model_answer
        want_model = want_model or self.reader_needs_model
        out, seconds = self._score(pairs, want_model, owners=owners, max_padding=max_padding)
        verdicts = self.verdicts(out, fast=not want_model, latency_ms=seconds * 1000)
        results: list[Verdict | ChainResult] = []
        for start, end, chain in spans:
            if chain is None:
                results.append(verdicts[start])
            else:
                results.append(self._chain_result(chain, verdicts[start:end], seconds))
        return results

    def _chain_result(self, chain: list[str], verdicts: list[Verdict], seconds: float):
        return assemble_chain(
            chain,
            verdicts,
            head=self.head,
            fast=verdicts[0].fast,
            latency_ms=seconds * 1000,
            profile_unit=self.unit,
            warning=self.step_warning,
        )

    def _score(
        self,
        pairs: Sequence[tuple[str, str]],
        want_model: bool,
        hidden_layers: Sequence[int] | None = None,
        owners: Sequence[int] | None = None,
        max_padding: float | None = None,
    ) -> tuple[Any, float]:
        """One batched pass (stopped after the reader's deepest layer unless the model's answer
        is wanted) and the seconds it took, lock waits excluded. ``owners`` (the request of
        each pair) makes it one padded pass whose prefix groups stay within a request."""
        from qkscore.scoring import score_pairs

        for context, statement in pairs:
            if not isinstance(statement, str):
                raise ValueError("the statement must be text")
            if context is not None and not isinstance(context, str):
                raise ValueError("the context must be text")
            require_text(statement, "the statement")
            require_text(context or "", "the context", allow_empty=True)
        # The fast path stops after the deepest layer the reader reads (for the single head,
        # its layer): that is where the time saving lies.
        max_layer = None if want_model else self.reader.deepest_layer_
        # The tokenizer is inside the lock too: a fast tokenizer mutates its padding settings
        # on every call and fails ("Already borrowed") when two threads call it at once.
        with self._lock:
            start = time.perf_counter()
            out = score_pairs(
                self.lm,
                self.template,
                pairs,
                max_tokens=self.max_tokens,
                batch_size=self.batch_size,
                rope=self.rope,
                max_layer=max_layer,
                baseline=want_model,
                share_prefix=self.share_prefix,
                hidden_layers=hidden_layers,
                owners=owners,
                one_pass=owners is not None,
                max_padding=max_padding,
            )
            return out, time.perf_counter() - start

    def verdicts(self, out: Any, fast: bool = False, latency_ms: float = 0.0) -> list[Verdict]:
        """This profile's verdicts on a pass: :meth:`features`' whole pass, or (``fast``) one
        stopped after the reader's deepest layer."""
        want_model = not fast
        max_layer = None if want_model else self.reader.deepest_layer_
        scores = out.scores
        if max_layer is not None:  # layers past the reader's deepest are not read: zero them
            scores = np.nan_to_num(scores, nan=0.0)
        margin, proba_all = self._reader_margin(scores, out.baseline)
        verdicts_valid, proba = decide(proba_all) == 0, proba_all[:, 0]
        ens_p = ens_pred = None
        if self.ensemble is not None and want_model:  # vote ties go to the best-ranked head
            ens_p = self.ensemble.predict_proba(scores)[:, 0]
            ens_pred = self.ensemble.predict(scores)
        threshold = self.threshold if self.reader_name == "head" else 0.0
        layer, index = self.profile.head
        verdicts = []
        for i in range(len(scores)):
            m = _finite(float(margin[i]))
            valid = bool(verdicts_valid[i])
            model_ans = model_p = disagree = None
            if want_model:
                logp = out.baseline[i].astype(np.float64)
                if not np.isfinite(logp).all():
                    raise RuntimeError("the model's answer log-probabilities are not finite")
                p_true = float(np.exp(logp[0] - np.logaddexp(logp[0], logp[1])))
                model_ans = bool(p_true > 0.5)
                model_p = p_true
                disagree = model_ans != valid
            ev = None
            if ens_pred is not None:
                ev = VALID if ens_pred[i] == 0 else INVALID
            verdicts.append(
                Verdict(
                    verdict=VALID if valid else INVALID,
                    valid=valid,
                    probability=float(proba[i]),
                    margin=m,
                    score=m + threshold,
                    threshold=threshold,
                    reader=self.reader_name,
                    head=self.head,
                    qk_scores={
                        "True": float(scores[i, layer, index, 0]),
                        "False": float(scores[i, layer, index, 1]),
                    },
                    model_answer=model_ans,
                    model_probability=model_p,
                    disagree=disagree,
                    ensemble_probability=None if ens_p is None else float(ens_p[i]),
                    ensemble_verdict=ev,
                    fast=not want_model,
                    layers_run=self.lm.n_layers if max_layer is None else max_layer + 1,
                    latency_ms=latency_ms,
                )
            )
        return verdicts

    def _reader_margin(self, scores: np.ndarray, baseline: np.ndarray) -> tuple:
        """The reader's margin (its ``decision_function``: positive = valid) and its
        probabilities [items, 2]."""
        margin = self.reader.decision_function(scores, baseline=baseline)
        return margin, self.reader.predict_proba(scores, baseline=baseline)

    def verify_chain(
        self, context: str, steps: Sequence[str] | str, model_answer: bool | None = None
    ) -> ChainResult:
        """Judge step ``i`` against the context plus steps before it, all in one batch.

        ``steps`` is a list of steps or text, split into sentences (see ``split_steps``).
        """
        chain = split_steps(steps) if isinstance(steps, str) else _chain_steps(steps)
        if not chain:
            raise ValueError("the chain has no steps")
        start = time.perf_counter()
        verdicts = self.check_many(step_pairs(context, chain), model_answer)
        return self._chain_result(chain, verdicts, time.perf_counter() - start)


def _chain_steps(steps: Sequence[str]) -> list[str]:
    """A chain's steps, stripped; an empty chain or step is refused."""
    chain = [str(s).strip() for s in steps]
    if not chain:
        raise ValueError("the chain has no steps")
    for i, step in enumerate(chain):
        if not step:
            raise ValueError(f"step {i} of the chain is empty")
    return chain
