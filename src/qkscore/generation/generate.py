"""Sample chains of thought with transformers ``generate`` into a resumable folder.

Why sampling is done by hand inside ``generate``: transformers samples every row of a batch
from one global random stream, so a row's text would depend on what else shared its batch and
on how many batches ran before it, and a resumed run would write other texts. Here each
(problem, sample) pair owns a ``torch.Generator`` seeded from ``seed``, the problem id and the
sample index; a logits processor draws that row's token from its own stream (temperature,
then top-p) and leaves only it, and greedy decoding takes it. ``generate`` keeps doing what it
does well: batching with left padding, the KV cache, stopping at EOS, and a stopping criterion
that ends a row once its ``Answer: True/False`` line is complete.

Batches are fixed by the order of the (problem, sample) pairs and the batch size, so a resumed
run recomputes exactly the batches that were lost, with the same rows beside each other: the
texts are the same as an uninterrupted run's (with the same thread count, as for a scan).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from qkscore._version import __version__
from qkscore.generation.chains import chain_record
from qkscore.generation.folder import GenFolder, problems_sha256
from qkscore.generation.problems import (
    PROMPT_VERSION,
    Problem,
    answer_complete,
    problems_from_items,
    render_prompt,
)
from qkscore.run import RunFolderError, _progress, _refuse_differences

__all__ = ["generate", "row_seed"]


def row_seed(seed: int, problem_id: str, sample: int) -> int:
    """The seed of one (problem, sample) pair: independent of batches and of other rows."""
    digest = hashlib.sha256(f"{seed}\x00{problem_id}\x00{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _fingerprint_before_loading(model: Any) -> str | None:
    """The model's fingerprint when it is known without loading it (see run.py's scan)."""
    from qkscore.models import LoadedModel, model_fingerprint

    return model.fingerprint if isinstance(model, LoadedModel) else model_fingerprint(str(model))


def _batches(n_problems: int, samples: int, batch_size: int) -> list[list[tuple[int, int]]]:
    jobs = [(p, s) for p in range(n_problems) for s in range(samples)]
    return [jobs[i : i + batch_size] for i in range(0, len(jobs), batch_size)]


def _load_problems(
    data: str | Sequence[Problem], limit: int | None, exclude_ids: set[str]
) -> list[Problem]:
    if isinstance(data, str):
        from qkscore.data import load_items

        problems = problems_from_items(load_items(data))
    else:
        problems = list(data)
    problems = [p for p in problems if p.id not in exclude_ids]
    if limit is not None:
        problems = problems[:limit]
    if not problems:
        raise ValueError("no problems to generate for (after --limit and --exclude-ids-from)")
    return problems


def generate(
    model: Any,
    data: str | Sequence[Problem],
    out: str | Path,
    *,
    samples: int = 4,
    max_new_tokens: int = 256,
    temperature: float = 0.7,
    top_p: float = 0.95,
    seed: int = 0,
    batch_size: int = 8,
    chat_template: bool | None = None,
    limit: int | None = None,
    exclude_ids: Sequence[str] = (),
    dtype: str = "auto",
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> GenFolder:
    """Sample ``samples`` chains per problem into the folder ``out`` (resumable).

    ``data`` is a data spec of True/False items or a list of :class:`Problem`. Running the same
    call again resumes an interrupted run and leaves a finished one alone; a folder made with
    other settings is refused (:class:`qkscore.run.RunMismatchError`). ``temperature=0`` is
    greedy decoding. ``chat_template=None`` uses the tokenizer's chat template when it has one
    (instruct models: Qwen2.5-Coder-0.5B-Instruct answered at once, with no reasoning, unless
    the assistant's turn was opened for it, and reached its answer line more often inside
    the template than without it); run.json records the choice made.
    """
    from qkscore.models import LoadedModel, load_model

    if samples < 1 or batch_size < 1 or max_new_tokens < 1:
        raise ValueError("samples, batch size and max new tokens must be at least 1")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError("temperature must be >= 0 and top-p in (0, 1]")
    folder = GenFolder(out)
    problems = _load_problems(data, limit, set(exclude_ids))
    request = {
        "data": data if isinstance(data, str) else "<problems given in Python>",
        "problems": problems_sha256(problems),
        "n_problems": len(problems),
        "samples": samples,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "seed": seed,
        "batch_size": batch_size,
        "prompt_version": PROMPT_VERSION,
    }
    if chat_template is not None:
        request["chat_template"] = bool(chat_template)
    old = folder.meta() if folder.exists() else None
    if old is not None:
        _refuse_differences(folder, old, request)  # type: ignore[arg-type]
        fingerprint = _fingerprint_before_loading(model)
        if fingerprint and fingerprint != (old.get("model") or {}).get("fingerprint"):
            was = {"model": (old.get("model") or {}).get("fingerprint")}
            _refuse_differences(folder, was, {"model": fingerprint})  # type: ignore[arg-type]
        if old.get("complete"):
            scan = folder.scan()
            issues = folder.pair_problems(scan.records, old)
            issues += [f"line {n} damaged" for n in scan.bad]
            if not issues:
                log(f"{folder.path} is complete: nothing to do")
                return folder
            log(
                f"{folder.path} is marked complete but {folder.generations_path.name} is not: "
                + "; ".join(issues)
                + "; generating what is missing"
            )
    lm = model if isinstance(model, LoadedModel) else load_model(str(model), dtype=dtype)
    model_info = {
        "name": lm.name,
        "fingerprint": lm.fingerprint,
        "dtype": str(lm.dtype).removeprefix("torch."),
    }
    if chat_template is None:
        chat_template = bool(getattr(lm.tokenizer, "chat_template", None))
    request["chat_template"] = chat_template
    if old is not None:  # the same weights in the same dtype, by whatever name
        was = old.get("model") or {}
        _refuse_differences(
            folder,  # type: ignore[arg-type]
            {
                "model": was.get("fingerprint"),
                "dtype": was.get("dtype"),
                "chat_template": old.get("chat_template"),
            },
            {
                "model": model_info["fingerprint"],
                "dtype": model_info["dtype"],
                "chat_template": chat_template,
            },
        )
    batches = _batches(len(problems), samples, batch_size)
    kept = []
    if old is not None:
        scan = folder.scan()
        kept = folder.complete_records(batches, scan.records)
        for line in scan.bad:
            log(
                f"{folder.generations_path}:{line} is damaged (not a JSON object): dropped, "
                "its batch is generated again"
            )
        if len(kept) != len(scan.records) or scan.torn is not None:
            log(f"{folder.path}: dropping a torn or partial batch; it is generated again")
    # always rewritten, so the next append never runs on from a torn last line
    folder.rewrite(kept)
    if old is None:
        folder.write_problems(problems)
    meta = dict(old or {})
    meta.update(request)
    meta.update(
        kind="generations",
        source="generate",
        model=model_info,
        qkscore_version=__version__,
        created=meta.get("created") or _dt.datetime.now(_dt.timezone.utc).isoformat(),
        complete=False,
        backend="transformers",
    )
    stats = dict(meta.get("generation") or {"wall_s": 0.0, "tokens": 0})
    # the kept chains' own count (a kill between a batch's write and run.json's misses one)
    stats["tokens"] = sum(r.get("tokens", 0) for r in kept)
    meta["generation"] = stats
    folder.write_meta(meta)
    done = {r["batch"] for r in kept}
    todo = [b for b in range(len(batches)) if b not in done]
    session = {"tokens": 0, "start": time.perf_counter()}

    def rate() -> str:
        elapsed = time.perf_counter() - session["start"]
        return f"{session['tokens'] / elapsed:.1f} tokens/s" if elapsed > 0 else ""

    total = len(problems) * samples
    with _progress(
        progress,
        "generate",
        total,
        total - sum(len(batches[b]) for b in todo),
        unit="chains",
        extra=rate,
    ) as advance:
        for b in todo:
            jobs = batches[b]
            started = time.perf_counter()
            texts = _sample_batch(
                lm,
                [render_prompt(problems[p], lm.tokenizer, chat_template) for p, _ in jobs],
                [row_seed(seed, problems[p].id, s) for p, s in jobs],
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                chat_template=chat_template,
            )
            records = [
                chain_record(problems[p], text, problem=p, sample=s, batch=b, tokens=n, finish=f)
                for (p, s), (text, n, f) in zip(jobs, texts)
            ]
            folder.append(records)
            n_tokens = sum(n for _, n, _ in texts)
            session["tokens"] += n_tokens
            stats["wall_s"] = round(stats["wall_s"] + time.perf_counter() - started, 3)
            stats["tokens"] += n_tokens
            stats["tokens_per_s"] = round(stats["tokens"] / max(stats["wall_s"], 1e-9), 2)
            folder.write_meta(meta)
            advance(len(jobs))
    issues = folder.pair_problems(folder.raw_records(), meta)
    if issues:  # never marked complete unless every chain is in the file exactly once
        raise RunFolderError(f"{folder.generations_path}: " + "; ".join(issues))
    meta["complete"] = True
    folder.write_meta(meta)
    return folder


def _sample_batch(
    lm: Any,
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    chat_template: bool,
) -> list[tuple[str, int, str]]:
    """Generate one batch; per row: the text, its token count and why it stopped
    (``answer``: the answer line is complete, ``eos``, or ``length``)."""
    import torch
    from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

    tok = lm.tokenizer
    eos = lm.model.generation_config.eos_token_id
    eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
    if tok.eos_token_id is not None and tok.eos_token_id not in eos_ids:
        eos_ids.append(tok.eos_token_id)
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos_ids[0]
    if pad not in eos_ids and pad in tok.all_special_ids:
        eos_ids.append(pad)  # Qwen's <|endoftext|>: a base-style prompt ends with it
    side = tok.padding_side
    tok.padding_side = "left"
    try:
        enc = tok(
            list(prompts), return_tensors="pt", padding=True, add_special_tokens=not chat_template
        )
    finally:
        tok.padding_side = side
    device = next(lm.model.parameters()).device
    enc = {k: v.to(device) for k, v in enc.items()}
    width = enc["input_ids"].shape[1]
    processors = LogitsProcessorList()
    if temperature > 0:
        processors.append(_RowSampler(seeds, temperature, top_p))
    # every setting explicit: transformers fills unset ones from the model's own generation
    # config (a hub model may bring a repetition penalty), which would change the sampling
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        eos_token_id=eos_ids,
        pad_token_id=pad,
    )
    with torch.inference_mode():
        out = lm.model.generate(
            **enc,
            generation_config=config,
            logits_processor=processors,
            stopping_criteria=StoppingCriteriaList([_AnswerStop(tok, width)]),
        )
    stop = set(eos_ids) | {pad}
    results = []
    for row in out[:, width:].tolist():
        n = next((i for i, t in enumerate(row) if t in stop), len(row))
        text = tok.decode(row[:n], skip_special_tokens=True)
        finish = "answer" if answer_complete(text) else ("eos" if n < len(row) else "length")
        results.append((text, n + (1 if n < len(row) and finish == "eos" else 0), finish))
    return results


class _RowSampler:
    """Draw each row's next token from that row's own generator (temperature, then top-p)
    and leave only it, so greedy decoding takes it."""

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float) -> None:
        import torch

        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.temperature, self.top_p = temperature, top_p

    def __call__(self, input_ids, scores):
        import torch

        logits = scores.float().cpu() / self.temperature
        probs = torch.softmax(logits, dim=-1)
        if self.top_p < 1:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            # keep the smallest set whose mass reaches top_p (the most likely token always)
            drop = sorted_p.cumsum(dim=-1) - sorted_p >= self.top_p
            sorted_p[drop] = 0.0
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        out = torch.full_like(scores, float("-inf"))
        for row, gen in enumerate(self.generators):
            token = torch.multinomial(probs[row], 1, generator=gen)
            out[row, token.to(out.device)] = 0.0
        return out


class _AnswerStop:
    """Stop a row once its generated text holds a complete ``Answer: True/False`` line."""

    def __init__(self, tokenizer: Any, prompt_width: int, tail: int = 16) -> None:
        self.tokenizer, self.width, self.tail = tokenizer, prompt_width, tail

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        start = max(self.width, input_ids.shape[1] - self.tail)
        texts = self.tokenizer.batch_decode(input_ids[:, start:], skip_special_tokens=True)
        return torch.tensor([answer_complete(t) for t in texts], device=input_ids.device)
