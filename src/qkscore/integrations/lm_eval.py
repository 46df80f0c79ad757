"""qkscore as an lm-evaluation-harness model: a profile's head reader answers multiple choice.

lm-eval asks a model for the log-likelihood of each choice of a document as separate
``(context, continuation)`` requests. :class:`QKScoreLM` groups them back into one item per
document, finds the query and key positions in the prompt lm-eval built (the same
offset-mapped locator ``qkscore scan`` uses: :meth:`qkscore.prompts.Template.render_listed`,
in the profile's template scheme), runs one batched forward pass per document and answers
each choice with the log of the reader's probability, so lm-eval's ``acc`` (and ``acc_norm``)
is the reader's accuracy. A prompt that does not list its choices is refused: it has no
position to read. Generation and rolling log-likelihood are handed to lm-eval's own ``hf``
model on the same weights, so every task runs.

lm-eval 0.4.13 has no plugin entry points, so ``qkscore lm-eval ARGS`` (:func:`main`)
registers the model, adds the packaged tasks' folder as ``--include_path`` unless one is given,
and hands the arguments to lm-eval's own command line. In Python, :func:`register` does the
registration.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import math
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from lm_eval.api.model import LM

from qkscore.data import load_items
from qkscore.dtypes import VERDICT_DTYPE, dtype_name
from qkscore.estimators.base import decide
from qkscore.integrations.lm_eval_tasks import TASKS_DIR, packaged_task
from qkscore.models import LoadedModel, load_model
from qkscore.profile import Profile, ProfileMismatchError
from qkscore.prompts import Prompt, Template, get_template, template_from_description

__all__ = ["MODEL_NAME", "QKScoreLM", "main", "register"]

MODEL_NAME = "qkscore"
log = logging.getLogger(__name__)


def register() -> None:
    """Make ``--model qkscore`` known to lm-eval (idempotent)."""
    # lm-eval imports its own models only while its registry is empty: import them first, or
    # registering ours would hide "hf" and the rest.
    import lm_eval.models  # noqa: F401
    from lm_eval.api.registry import model_registry

    if MODEL_NAME not in model_registry:
        model_registry.register(MODEL_NAME, target=QKScoreLM)


def _unknown_args_message(names: Sequence[str]) -> str:
    """Which model arguments ``qkscore`` does not take, the nearest it does, and all of them."""
    known = [
        p for p in inspect.signature(QKScoreLM.__init__).parameters if p not in ("self", "_ignored")
    ]
    parts = []
    for name in names:
        close = difflib.get_close_matches(name, known, n=1)
        parts.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return f"model qkscore: unknown model_args {', '.join(parts)}; it takes {', '.join(known)}"


def _batch_size(value: Any) -> int:
    """lm-eval passes ``--batch_size`` through; "auto" (its memory probe) means our default."""
    try:
        return max(1, int(value))
    except (TypeError, ValueError):
        return 8


class QKScoreLM(LM):
    """lm-eval model ``qkscore``: the profile's reader answers multiple-choice documents.

    Model arguments: ``pretrained`` (an alias, hub id, folder or ``.gguf`` file, as
    ``load_model`` takes, or a loaded model in Python), and either ``profile=P.json`` or
    ``calibrate=SOURCE`` (a packaged task's name: its validation split; or a data spec: all its
    items), with ``template`` (default: the packaged task's, else answer-statement),
    ``reader`` (default auto) and ``calibrate_out`` (folder for the scan and profile; default
    a temporary one) and ``calib_size`` (a balanced subset of the calibration items, faster).
    ``dtype`` defaults to float32, as ``check`` does, so verdicts do not
    depend on batching. Documents that were calibration items are refused. Any other model
    argument (a misspelt ``reder=head``) is an error naming it, before the model loads.
    """

    def __init__(
        self,
        pretrained: Any,
        profile: str | None = None,
        calibrate: str | None = None,
        template: str | None = None,
        reader: str = "auto",
        calibrate_out: str | None = None,
        calib_size: int | None = None,
        dtype: str = VERDICT_DTYPE,
        device: str | None = None,
        batch_size: Any = 8,
        max_batch_size: Any = None,
        **_ignored: Any,
    ) -> None:
        super().__init__()
        if _ignored:  # a misspelt argument (reder=head) would otherwise change nothing
            raise ValueError(_unknown_args_message(sorted(_ignored)))
        if (profile is None) == (calibrate is None):
            raise ValueError(
                "model qkscore needs exactly one of profile=P.json or calibrate=SOURCE "
                "(a packaged task name or a data spec) in --model_args"
            )
        self.batch_size = _batch_size(batch_size)
        if isinstance(pretrained, LoadedModel):
            self.lm = pretrained
        else:
            self.lm = load_model(str(pretrained), dtype=dtype, device=device or "auto")
        self._calibration_texts: set[str] = set()
        if profile is not None:
            self.profile = Profile.load(profile)
        else:
            self.profile = self._calibrate(
                str(calibrate), template, reader, calibrate_out, calib_size
            )
        self._check_profile()
        self.template: Template = template_from_description(self.profile.data["template"])
        self.reader = self.profile.reader()
        self.n_options = int(self.profile.selector().n_options_)
        self.rope = bool(self.profile.data.get("rope"))
        self._hf: Any = None

    # ---- set-up ---------------------------------------------------------------------------

    def _check_profile(self) -> None:
        prof, where = self.profile, self.profile.path or "the profile"
        prof.check_model(self.lm.fingerprint, self.lm.name)
        sel = prof.selector()
        if (self.lm.n_layers, self.lm.n_heads) != (sel.n_layers_, sel.n_heads_):
            raise ProfileMismatchError(
                f"{where} covers {sel.n_layers_} layers x {sel.n_heads_} heads but model "
                f"{self.lm.name!r} has {self.lm.n_layers} x {self.lm.n_heads}"
            )

    def _calibrate(
        self,
        source: str,
        template: str | None,
        reader: str,
        out: str | None,
        size: int | None = None,
    ) -> Profile:
        """Scan the calibration items and fit the readers on all of them; never the scored ones.

        ``size`` keeps a label-balanced subset of that many (seed 0), for a faster run. The
        calibration prompts are remembered, and a document showing one is refused later.
        """
        from qkscore.pipeline import balanced_split, calibrate
        from qkscore.scanning import scan

        splits = packaged_task(source)
        if splits is not None:
            items, tmpl = splits.validation, splits.template
        else:
            items, tmpl = load_items(source), get_template("answer-statement")
        if template:
            tmpl = get_template(template)
        if size is not None and int(size) < len(items):
            keep, _ = balanced_split(np.array([it.answer_index for it in items]), int(size))
            items = [items[i] for i in keep]
        folder = Path(out) if out else Path(tempfile.mkdtemp(prefix="qkscore-lm-eval-"))
        log.info("qkscore: calibrating on %d items of %s in %s", len(items), source, folder)
        run = scan(
            self.lm, items, tmpl, folder / "run", batch_size=self.batch_size,
            hidden_layers=None, progress=False, log=log.info,
        )  # fmt: skip
        if not tmpl.use_chat_template:
            self._calibration_texts = {tmpl.text(it) for it in items}
        return calibrate(
            run.path,
            calib_size=len(items),
            calibration_ids=[it.id for it in items],
            reader=reader,
            out=folder / "profile.json",
        )

    def get_model_info(self) -> dict[str, Any]:
        """Recorded in lm-eval's results ``config``: which weights, profile and reader."""
        return {
            "qkscore_model": self.lm.name,
            "qkscore_fingerprint": self.lm.fingerprint,
            "qkscore_profile": str(self.profile.path) if self.profile.path else None,
            "qkscore_profile_digest": self.profile.digest,
            "qkscore_reader": self.profile.reader_name,
            "qkscore_template": self.template.name,
            "qkscore_dtype": dtype_name(self.lm.dtype),
        }

    # ---- multiple choice ------------------------------------------------------------------

    def loglikelihood(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list:
        """log P_reader(choice) for every request, one forward pass per document."""
        groups: dict[tuple, list[int]] = {}
        for i, req in enumerate(requests):
            context, _ = req.args
            groups.setdefault((req.task_name, req.doc_id, context), []).append(i)
        prompts: list[Prompt] = []
        members: list[list[int]] = []
        for (task, doc_id, context), idx in groups.items():
            idx = sorted(idx, key=lambda i: requests[i].idx)
            where = f"task {task!r} document {doc_id}"
            if len(idx) != self.n_options:
                raise ValueError(
                    f"{where} has {len(idx)} choices but the profile's reader was calibrated on "
                    f"{self.n_options}-option items"
                )
            if context in self._calibration_texts:
                raise ValueError(
                    f"{where} is one of the calibration items: score another split than the "
                    "one calibrated on"
                )
            candidates = [requests[i].args[1] for i in idx]
            prompts.append(
                self.template.render_listed(context, candidates, self.lm.tokenizer, where)
            )
            members.append(idx)
        proba = self.choice_probabilities(prompts)
        out: list[tuple[float, bool] | None] = [None] * len(requests)
        for row, idx in enumerate(members):
            best = int(decide(proba[row][None, :])[0])
            for j, i in enumerate(idx):
                out[i] = (math.log(max(float(proba[row, j]), 1e-30)), j == best)
        return out

    def choice_probabilities(self, prompts: Sequence[Prompt]) -> np.ndarray:
        """The reader's probability of each option, ``[documents, options]``."""
        from qkscore.extraction import prefix_supported
        from qkscore.scoring import score_prompts

        if not prompts:
            return np.zeros((0, self.n_options))
        scored = score_prompts(
            self.lm,
            prompts,
            batch_size=self.batch_size,
            rope=self.rope,
            n_options=self.n_options,
            share_prefix=prefix_supported(self.rope),
        )
        proba = self.reader.predict_proba(scored.scores, baseline=scored.baseline)
        if not np.isfinite(proba).all():
            raise RuntimeError("the reader produced non-finite probabilities; check the dtype")
        return proba

    # ---- everything else: lm-eval's own hf model on the same weights -----------------------

    @property
    def hf(self) -> Any:
        """lm-eval's ``HFLM`` around the already loaded model and tokenizer (built once)."""
        if self._hf is None:
            from lm_eval.models.huggingface import HFLM

            self._hf = HFLM(
                pretrained=self.lm.model, tokenizer=self.lm.tokenizer, batch_size=self.batch_size
            )
        return self._hf

    def generate_until(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list[str]:
        return self.hf.generate_until(requests, disable_tqdm=disable_tqdm)

    def loglikelihood_rolling(
        self, requests: Sequence[Any], disable_tqdm: bool = False
    ) -> list[float]:
        return self.hf.loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)


def lm_eval_argv(args: Sequence[str]) -> list[str]:
    """lm-eval's arguments, with the packaged tasks added as ``--include_path`` unless given."""
    args = list(args)
    if (
        not args
        or args[0] in ("-h", "--help")
        or any(a == "--include_path" or a.startswith("--include_path=") for a in args)
    ):
        return args
    return [*args, "--include_path", str(TASKS_DIR)]


def main(args: Sequence[str]) -> None:
    """``qkscore lm-eval ARGS``: lm-eval's command line with the ``qkscore`` model known."""
    from lm_eval.__main__ import cli_evaluate

    register()
    saved = sys.argv
    sys.argv = ["lm_eval", *lm_eval_argv(args)]
    try:
        cli_evaluate()
    finally:
        sys.argv = saved
