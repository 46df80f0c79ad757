"""Sample chains of thought into a resumable folder, with a decode loop that refills its batch.

Why a decode loop of its own instead of transformers ``generate``: ``generate`` runs a batch
until its longest row ends, so with a third of the chains running to the token cap every batch
ran all its steps, most rows long finished. Here a row leaves the batch as soon as its
``Answer: True/False`` line is complete (or at EOS, or at the cap), and a waiting (problem,
sample) pair takes its place ("refill", continuous batching): the KV cache (a transformers
``DynamicCache``, left padded) loses the finished rows and gains the new ones, each prompt
prefilled once (batch 1, no padding) and shared by all its samples.

Why a row's text does not depend on its batch: each (problem, sample) pair owns a
``torch.Generator`` seeded from ``seed``, the problem id and the sample index and draws its
tokens from it (temperature, then top-p), and its logits are computed as if it were alone. Each
row attends over its own keys only (:func:`_row_attention`: the left padding, whose amount
depends on the other rows, never enters its sums) and a lone row runs beside a copy of itself
(a one-row matmul takes another kernel). On the CPU in bfloat16 that gives every row the same
bits at any batch size or composition, so a resumed run, whose batches hold other rows, writes
the texts of an uninterrupted one. In float32 the matmul kernels round a row differently with
the batch's size, which can flip a token drawn at a near-tie.

The unit of resume is the finished chain: each is appended (one write, then fsync) as it ends,
and a run killed at any moment and started again with the same command samples only the
missing pairs.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qkscore._version import __version__
from qkscore.dtypes import VERDICT_DTYPE, dtype_name
from qkscore.generation.chains import chain_record
from qkscore.generation.folder import GenFolder, problems_sha256
from qkscore.generation.problems import (
    PROMPT_VERSION,
    Problem,
    answer_complete,
    problems_from_items,
    render_prompt,
)
from qkscore.io import FolderError
from qkscore.progress import Progress

__all__ = ["SAMPLER_VERSION", "generate", "row_seed"]

#: Bumped whenever the draw of a token from the logits changes (the texts change with it): a
#: generation folder records it, so a resumed run never mixes chains of two samplers. 2: an
#: exponential race over the top-p nucleus (1, unrecorded: torch.multinomial over the
#: vocabulary).
SAMPLER_VERSION = 2


def row_seed(seed: int, problem_id: str, sample: int) -> int:
    """The seed of one (problem, sample) pair: independent of batches and of other rows."""
    digest = hashlib.sha256(f"{seed}\x00{problem_id}\x00{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _fingerprint_before_loading(model: Any) -> str | None:
    """The model's fingerprint when it is known without loading it (see qkscore.scanning's scan)."""
    from qkscore.models import LoadedModel, model_fingerprint

    return model.fingerprint if isinstance(model, LoadedModel) else model_fingerprint(str(model))


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
    dtype: str = VERDICT_DTYPE,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> GenFolder:
    """Sample ``samples`` chains per problem into the folder ``out`` (resumable).

    ``data`` is a data spec of True/False items or a list of :class:`Problem`. Running the same
    call again resumes an interrupted run and leaves a finished one alone; a folder made with
    other settings is refused (:class:`qkscore.io.FolderMismatchError`). ``temperature=0`` is
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
        "sampler_version": SAMPLER_VERSION,
    }
    if chat_template is not None:
        request["chat_template"] = bool(chat_template)
    old = folder.meta() if folder.exists() else None
    if old is not None:
        issues = []
        if old.get("complete"):
            scan = folder.scan()
            issues = folder.pair_problems(scan.records, old)
            issues += [f"line {n} damaged" for n in scan.bad]
        was = {"sampler_version": 1, **old}  # folders made before the sampler was recorded
        if old.get("complete") and not issues:
            was["sampler_version"] = SAMPLER_VERSION  # nothing will be sampled
        folder.refuse_differences(was, request)
        fingerprint = _fingerprint_before_loading(model)
        if fingerprint and fingerprint != (old.get("model") or {}).get("fingerprint"):
            was = {"model": (old.get("model") or {}).get("fingerprint")}
            folder.refuse_differences(was, {"model": fingerprint})
        if old.get("complete"):
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
        "dtype": dtype_name(lm.dtype),
    }
    if chat_template is None:
        chat_template = bool(getattr(lm.tokenizer, "chat_template", None))
    request["chat_template"] = chat_template
    if old is not None:  # the same weights in the same dtype, by whatever name
        was = old.get("model") or {}
        folder.refuse_differences(
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
    pairs = [(p, s) for p in range(len(problems)) for s in range(samples)]
    kept = []
    if old is not None:
        scan = folder.scan()
        kept = folder.whole_chains(scan.records, pairs)
        for line in scan.bad:
            log(
                f"{folder.generations_path}:{line} is damaged (not a JSON object): dropped, "
                "its chain is generated again"
            )
        if len(kept) != len(scan.records) or scan.torn is not None:
            log(f"{folder.path}: dropping a torn line or repeated chains; the rest is kept")
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
    # the kept chains' own count (a kill between a chain's write and run.json's misses it)
    stats["tokens"] = sum(r.get("tokens", 0) for r in kept)
    meta["generation"] = stats
    folder.write_meta(meta)
    done = {(r["problem"], r["sample"]) for r in kept}
    todo = [pair for pair in pairs if pair not in done]
    session = {"tokens": 0, "start": time.perf_counter(), "wall_s": stats["wall_s"]}

    def rate() -> str:
        elapsed = time.perf_counter() - session["start"]
        return f"{session['tokens'] / elapsed:.1f} tokens/s" if elapsed > 0 else ""

    decoder = _Decoder(
        lm,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        add_special_tokens=not chat_template,
    )
    prompts = {p: render_prompt(problems[p], lm.tokenizer, chat_template) for p, _ in todo}
    jobs = [((p, s), prompts[p], row_seed(seed, problems[p].id, s)) for p, s in todo]
    base_times, base_steps = dict(stats.get("time_s") or {}), int(stats.get("decode_steps", 0))
    total = len(pairs)
    bar = Progress(progress, "generate", total, total - len(todo), unit="chains", extra=rate)
    # closed on the way out, so the model's attention is restored even after an interrupt
    with bar as advance, closing(decoder.run(jobs)) as chains:
        for (p, s), text, n, finish in chains:
            with decoder.phase("record"):
                folder.append(
                    [chain_record(problems[p], text, problem=p, sample=s, tokens=n, finish=finish)]
                )
            session["tokens"] += n
            stats["tokens"] += n
            elapsed = time.perf_counter() - session["start"]
            stats["wall_s"] = round(session["wall_s"] + elapsed, 3)
            stats["tokens_per_s"] = round(stats["tokens"] / max(stats["wall_s"], 1e-9), 2)
            stats["time_s"] = {
                name: round(base_times.get(name, 0.0) + decoder.times.get(name, 0.0), 3)
                for name in sorted(set(base_times) | set(decoder.times))
            }
            stats["decode_steps"] = base_steps + decoder.steps
            folder.write_meta(meta)
            advance(1)
    issues = folder.pair_problems(folder.raw_records(), meta)
    if issues:  # never marked complete unless every chain is in the file exactly once
        raise FolderError(f"{folder.generations_path}: " + "; ".join(issues))
    meta["complete"] = True
    folder.write_meta(meta)
    return folder


ROW_ATTENTION = "qkscore_rows"
_ROW_STARTS: list[Any] = [None, None]  # the last mask seen and each row's first column


def _row_attention(module, query, key, value, attention_mask, *args, **kwargs):
    """sdpa attention of each row alone, over its own keys only (the left padding cut off).

    Why: batched sdpa over a left-padded cache rounds a row's attention differently with the
    amount of padding, i.e. with which rows share its batch, and in bfloat16 that flipped a
    third of the sampled texts. A row alone sees the same shapes and numbers whatever its
    neighbours, and on the CPU bfloat16 linear layers give each row the same bits at any batch
    size, so a row's text no longer depends on its batch."""
    import torch
    import torch.nn.functional as F
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    rows = query.shape[0]
    if rows == 1 or query.shape[2] != 1:  # a prefill (alone) or another caller's pass
        return sdpa_attention_forward(module, query, key, value, attention_mask, *args, **kwargs)
    if attention_mask is None:
        starts = [0] * rows
    elif _ROW_STARTS[0] is attention_mask:  # one mask serves every layer of a pass
        starts = _ROW_STARTS[1]
    else:  # left padding: the columns before a row's first real one
        starts = (~attention_mask[:, 0, -1, :].bool()).sum(-1).tolist()
        _ROW_STARTS[:] = [attention_mask, starts]
    heads, groups = query.shape[1], query.shape[1] // key.shape[1]
    out = []
    for i, s in enumerate(starts):
        # grouped-query attention as one query per head of a group (transformers' pack_gqa)
        q = query[i : i + 1].reshape(1, key.shape[1], groups, query.shape[-1])
        o = F.scaled_dot_product_attention(
            q, key[i : i + 1, :, s:], value[i : i + 1, :, s:], scale=kwargs.get("scaling")
        )
        out.append(o.reshape(1, heads, 1, query.shape[-1]))
    return torch.cat(out).transpose(1, 2).contiguous(), None


def _register_row_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(ROW_ATTENTION, _row_attention)
    # the mask format sdpa expects (else transformers builds none for an unknown name)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ROW_ATTENTION, sdpa_mask)


def _nucleus_by_sorting(row: Any, top_p: float) -> tuple[Any, Any]:
    """The top-p nucleus of one row of probabilities, as (token ids, probabilities): the
    smallest set, in descending order (ties by token id), whose mass reaches ``top_p``."""
    sorted_p, order = row.sort(descending=True, stable=True)
    keep = ~(sorted_p.cumsum(dim=-1) - sorted_p >= top_p)
    return order[keep], sorted_p[keep]


def nucleus(probs: Any, top_p: float, candidates: int = 256) -> list[tuple[Any, Any]]:
    """Each row's top-p nucleus as (token ids in ascending order, their probabilities): the
    set :func:`_nucleus_by_sorting` finds by sorting the whole vocabulary, read from the
    ``candidates`` most likely tokens of the row when its nucleus lies among them.

    Why: sorting 16 rows of Qwen's 151,936 probabilities took longer than the model's forward
    pass. The candidates are put in the full sort's order (descending, ties by token id) and
    their running mass is the full sort's prefix (a cumulative sum reads left to right), so the
    set and its values are the same bit for bit. A row whose nucleus reaches the least likely
    candidate's probability (that tie group may hold tokens left out of the candidates), or
    ends within rounding of ``top_p``, is sorted in full.
    """
    import torch

    k = min(candidates, probs.shape[-1])
    values, index = probs.topk(k, dim=-1)
    index, by_id = index.sort(dim=-1)
    values, order = values.gather(-1, by_id).sort(dim=-1, descending=True, stable=True)
    index = index.gather(-1, order)
    exclusive = values.cumsum(dim=-1) - values  # the mass before each token
    drop = exclusive >= top_p
    if k == probs.shape[-1]:  # the candidates are the whole vocabulary
        fast = torch.ones(len(probs), dtype=torch.bool)
    else:
        kept_low = torch.where(drop, torch.inf, values).amin(dim=-1)
        cut = torch.where(drop, exclusive, torch.inf).amin(dim=-1)  # mass of the nucleus
        # a margin of ~16 float32 steps: the tokens after the cut stay out under any rounding
        fast = (kept_low > values[:, -1]) & (cut >= top_p + 1e-6)
    out = []
    for i, quick in enumerate(fast.tolist()):
        if quick:
            ids, p = index[i][~drop[i]], values[i][~drop[i]]
        else:
            ids, p = _nucleus_by_sorting(probs[i], top_p)
        ascending = ids.argsort()
        out.append((ids[ascending], p[ascending]))
    return out


def profile_decode_step(
    lm: Any,
    problems: Sequence[Problem],
    *,
    batch_size: int = 16,
    warm_steps: int = 4,
    temperature: float = 0.7,
    top_p: float = 0.95,
    chat_template: bool = False,
) -> tuple[Any, dict[str, float]]:
    """Where one decode step's time goes: fill a batch of ``batch_size`` rows with the
    problems' prompts (as many samples each as needed), decode ``warm_steps`` steps, then one
    more under ``torch.profiler``. Returns the profiler and that step's seconds per phase
    (``forward``, ``sample``, ``stop``, ``cache``)."""
    import torch

    decoder = _Decoder(
        lm,
        batch_size=batch_size,
        max_new_tokens=10**6,
        temperature=temperature,
        top_p=top_p,
        add_special_tokens=not chat_template,
    )
    samples = -(-batch_size // len(problems))
    decoder.start(
        [
            ((i, s), render_prompt(p, lm.tokenizer, chat_template), row_seed(0, p.id, s))
            for s in range(samples)
            for i, p in enumerate(problems)
        ]
    )
    with torch.inference_mode(), decoder.attention():
        for _ in range(warm_steps):
            decoder.advance()
        decoder._refill()  # a full batch for the step measured
        before = dict(decoder.times)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            decoder.decode_step()
    phases = {k: v - before.get(k, 0.0) for k, v in decoder.times.items()}
    return prof, {k: v for k, v in phases.items() if v > 0}


@dataclass
class _Row:
    """One (problem, sample) being decoded: its own random stream and the tokens so far."""

    key: Any
    generator: Any
    prompt_len: int
    tokens: list[int] = field(default_factory=list)
    eos: bool = False


class _Decoder:
    """Decode many prompts through one batch of at most ``batch_size`` rows over a KV cache,
    refilling a row's place as soon as it finishes.

    The cache is left padded: row ``i`` holds its prompt and tokens at the right end of a common
    length, ``mask`` marks the real positions, and each row's next position is passed explicitly
    (its own count of real tokens). A prompt is prefilled alone (no padding), once for all the
    jobs that share it; its keys and values are padded on the left to the batch's length and
    concatenated to the batch; finished rows are taken out and the columns every remaining row
    pads are cut. ``times`` adds up the seconds of each phase (``prefill``, ``forward``,
    ``sample``, ``stop``, ``cache``; the caller adds its own with :meth:`phase`)."""

    def __init__(
        self,
        lm: Any,
        *,
        batch_size: int,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        add_special_tokens: bool,
    ) -> None:
        import inspect

        self.lm, self.model, self.tok = lm, lm.model, lm.tokenizer
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens
        self.temperature, self.top_p = temperature, top_p
        self.add_special_tokens = add_special_tokens
        self.device = next(self.model.parameters()).device
        eos = self.model.generation_config.eos_token_id
        eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
        if self.tok.eos_token_id is not None and self.tok.eos_token_id not in eos_ids:
            eos_ids.append(self.tok.eos_token_id)
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else eos_ids[0]
        if pad not in eos_ids and pad in self.tok.all_special_ids:
            eos_ids.append(pad)  # Qwen's <|endoftext|>: a base-style prompt ends with it
        self.stop = set(eos_ids) | {pad}
        params = inspect.signature(self.model.forward).parameters
        # transformers renamed past_key_values to cache (5.2x); both are accepted here
        self.cache_arg = "cache" if "cache" in params else "past_key_values"
        self.keep_last = "logits_to_keep" in params
        self.times: dict[str, float] = defaultdict(float)
        self.steps = 0
        self.queue: deque[tuple[Any, str, int]] = deque()
        self.uses: Counter[str] = Counter()  # jobs per prompt still to start
        self.prefilled: dict[str, tuple[list[tuple[Any, Any]], Any]] = {}
        self.rows: list[_Row] = []
        self.ghost = False  # whether the cache holds a copy of a lone row (see _forward)
        self.cache: Any = None
        self._container: Any = None  # the last prefill's cache object, to hold a new batch
        self.mask: Any = None  # [rows, cache length] long, 1 where a real token is

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Add the block's seconds to ``times[name]`` (and label it for torch.profiler)."""
        import torch

        start = time.perf_counter()
        with torch.profiler.record_function(f"generate.{name}"):
            yield
        self.times[name] += time.perf_counter() - start

    # ---- the loop ------------------------------------------------------------------------

    def run(self, jobs: Sequence[tuple[Any, str, int]]) -> Iterator[tuple[Any, str, int, str]]:
        """Decode ``jobs`` (key, prompt, seed); yield (key, text, tokens, finish) for each as
        it finishes (``finish``: ``answer``, ``eos`` or ``length``). The model attends row by
        row until the iteration ends or the generator is closed."""
        import torch

        self.start(jobs)
        with torch.inference_mode(), self.attention():
            while self.queue or self.rows:
                yield from self.advance()

    @contextmanager
    def attention(self) -> Iterator[None]:
        """Meanwhile the model attends row by row (:func:`_row_attention`); the advance
        methods run inside it."""
        _register_row_attention()
        before = self.model.config._attn_implementation
        self.model.set_attn_implementation(ROW_ATTENTION)
        try:
            yield
        finally:
            self.model.set_attn_implementation(before)

    def start(self, jobs: Sequence[tuple[Any, str, int]]) -> None:
        """Queue ``jobs`` (key, prompt, seed) behind any still waiting."""
        self.queue.extend(jobs)
        self.uses.update(prompt for _, prompt, _ in jobs)

    def advance(self) -> list[tuple[Any, str, int, str]]:
        """Fill the batch's free places from the queue, then decode one token of every row;
        the rows that finished (call under ``torch.inference_mode``)."""
        done = self._refill()
        return done + self.decode_step() if self.rows else done

    def decode_step(self) -> list[tuple[Any, str, int, str]]:
        """Decode one token of every row in the batch; the rows that finished leave it."""
        tokens = self._sample(self._forward(), self.rows)
        ended = [i for i, (row, t) in enumerate(zip(self.rows, tokens)) if self._advance(row, t)]
        finished = [self.rows[i] for i in ended]
        if ended:
            self._remove(ended)
        return [self._result(row) for row in finished]

    def _refill(self) -> list[tuple[Any, str, int, str]]:
        """Start waiting jobs in the batch's free places: each draws its first token from its
        prompt's logits; the ones already finished by it are returned."""
        import torch

        new = []
        while self.queue and len(self.rows) + len(new) < self.batch_size:
            key, prompt, seed = self.queue.popleft()
            if prompt not in self.prefilled:
                self.prefilled[prompt] = self._prefill(prompt)
            kv, logits = self.prefilled[prompt]
            self.uses[prompt] -= 1
            if not self.uses[prompt]:  # its last job: the prompt's cache is not kept
                del self.prefilled[prompt]
            gen = torch.Generator().manual_seed(int(seed))
            new.append((_Row(key, gen, kv[0][0].shape[-2]), kv, logits))
        if not new:
            return []
        first = self._sample(torch.cat([x[2] for x in new]), [x[0] for x in new])
        done, going = [], []
        for (row, kv, _), token in zip(new, first):
            if self._advance(row, token):
                done.append(self._result(row))
            else:
                going.append((row, kv))
        if going:
            self._add(going)
        return done

    # ---- model passes --------------------------------------------------------------------

    def _new_cache(self) -> Any:
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config)

    def _call(self, **kwargs: Any) -> Any:
        if self.keep_last:
            kwargs["logits_to_keep"] = 1
        cache = kwargs.pop("cache")
        out = self.model(**kwargs, **{self.cache_arg: cache}, use_cache=True)
        return out.logits[:, -1, :].float()

    def _prefill(self, prompt: str) -> tuple[list[tuple[Any, Any]], Any]:
        """The prompt's keys and values per layer ([1, heads, length, dim]) and the logits
        of its next token ([1, vocabulary], float32)."""
        import torch

        with self.phase("prefill"):
            ids = self.tok(prompt, return_tensors="pt", add_special_tokens=self.add_special_tokens)[
                "input_ids"
            ].to(self.device)
            cache = self._new_cache()
            logits = self._call(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                position_ids=torch.arange(ids.shape[1], device=self.device)[None],
                cache=cache,
            )
            kinds = {type(layer).__name__ for layer in cache.layers}
            if kinds != {"DynamicLayer"}:
                raise NotImplementedError(
                    f"generate's refill loop needs a full-attention KV cache; {self.lm.name} "
                    f"uses {sorted(kinds)} layers"
                )
            self._container = cache
            return [(layer.keys, layer.values) for layer in cache.layers], logits

    def _forward(self) -> Any:
        """One decode step of every row: feed each row's last token."""
        import torch

        with self.phase("cache"):
            if len(self.rows) == 1 and not self.ghost:
                # a lone row runs beside a copy of itself: a matmul of one row takes another
                # kernel, which rounds bfloat16 differently from a batch of two or more
                for layer in self.cache.layers:
                    layer.keys, layer.values = (
                        layer.keys.repeat(2, 1, 1, 1),
                        layer.values.repeat(2, 1, 1, 1),
                    )
                self.mask, self.ghost = self.mask.repeat(2, 1), True
            rows = self.rows * 2 if self.ghost else self.rows
            ids = torch.tensor([[row.tokens[-1]] for row in rows], device=self.device)
            positions = torch.tensor(
                [[row.prompt_len + len(row.tokens) - 1] for row in rows], device=self.device
            )
            self.mask = torch.cat([self.mask, self.mask.new_ones(len(rows), 1)], dim=1)
        with self.phase("forward"):
            logits = self._call(
                input_ids=ids, attention_mask=self.mask, position_ids=positions, cache=self.cache
            )
        self.steps += 1
        return logits[: len(self.rows)]

    # ---- the batch's cache ---------------------------------------------------------------

    def _add(self, going: list[tuple[_Row, list[tuple[Any, Any]]]]) -> None:
        """Append rows (with their prompt's keys and values) to the batch, left padded to one
        length."""
        import torch

        with self.phase("cache"):
            if self.ghost:  # the lone row's copy goes
                for layer in self.cache.layers:
                    layer.keys, layer.values = layer.keys[:1], layer.values[:1]
                self.mask, self.ghost = self.mask[:1], False
            length = max(kv[0][0].shape[-2] for _, kv in going)
            if self.rows:
                length = max(length, self.mask.shape[1])
            parts = []
            if self.rows:
                parts.append((self.mask, [(c.keys, c.values) for c in self.cache.layers]))
            for _, kv in going:
                n = kv[0][0].shape[-2]
                parts.append((torch.ones(1, n, dtype=torch.long, device=self.device), kv))
            masks, layers = [], [([], []) for _ in parts[0][1]]
            for mask, kv in parts:
                pad = length - mask.shape[1]
                masks.append(torch.nn.functional.pad(mask, (pad, 0)))
                for (keys, values), (k, v) in zip(layers, kv):
                    keys.append(torch.nn.functional.pad(k, (0, 0, pad, 0)))
                    values.append(torch.nn.functional.pad(v, (0, 0, pad, 0)))
            if not self.rows:
                self.cache = self._container
            for layer, (keys, values) in zip(self.cache.layers, layers):
                layer.keys, layer.values = torch.cat(keys), torch.cat(values)
            self.mask = torch.cat(masks)
            self.rows.extend(row for row, _ in going)

    def _remove(self, done: list[int]) -> None:
        """Take finished rows out of the batch, and the columns every remaining row pads."""
        import torch

        with self.phase("cache"):
            keep = [i for i in range(len(self.rows)) if i not in set(done)]
            self.rows, self.ghost = [self.rows[i] for i in keep], False  # a copy is not kept
            if not keep:
                self.cache = self.mask = None
                return
            index = torch.tensor(keep, device=self.device)
            mask = self.mask[index]
            start = int(mask.any(dim=0).long().argmax())  # the first column a row uses
            self.mask = mask[:, start:]
            for layer in self.cache.layers:
                layer.keys = layer.keys[index, :, start:]
                layer.values = layer.values[index, :, start:]

    # ---- tokens --------------------------------------------------------------------------

    def _sample(self, logits: Any, rows: Sequence[_Row]) -> list[int]:
        """Each row's next token, drawn from that row's own generator (temperature, then
        top-p); greedy at temperature 0.

        Why not ``torch.multinomial``: it draws an exponential for every token of the
        vocabulary (151,936 for Qwen), 2-4 ms a row, a third of a decode step at batch 16;
        the race below draws one per nucleus token (usually a handful)."""
        import torch

        with self.phase("sample"):
            if self.temperature == 0:
                return logits.argmax(dim=-1).tolist()
            probs = torch.softmax(logits.cpu() / self.temperature, dim=-1)
            if self.top_p < 1:
                sets = nucleus(probs, self.top_p)
            else:
                ids = torch.arange(probs.shape[-1])
                sets = [(ids, row) for row in probs]
            tokens = []
            for (ids, p), row in zip(sets, rows):
                # an exponential race: token i wins with probability p_i / sum(p), as in
                # torch.multinomial, but with draws for the nucleus only, not the vocabulary
                race = torch.empty(len(ids)).exponential_(generator=row.generator)
                tokens.append(int(ids[torch.argmax(p / race)]))
            return tokens

    def _advance(self, row: _Row, token: int) -> bool:
        """Add ``token`` to ``row``; whether the row is finished."""
        with self.phase("stop"):
            row.tokens.append(token)
            if token in self.stop:
                row.eos = True
                return True
            if len(row.tokens) >= self.max_new_tokens:
                return True
            tail = self.tok.decode(row.tokens[-16:], skip_special_tokens=True)
            return answer_complete(tail)

    def _result(self, row: _Row) -> tuple[Any, str, int, str]:
        n = len(row.tokens) - 1 if row.eos else len(row.tokens)
        text = self.tok.decode(row.tokens[:n], skip_special_tokens=True)
        finish = "answer" if answer_complete(text) else ("eos" if row.eos else "length")
        return row.key, text, n + (1 if finish == "eos" else 0), finish
