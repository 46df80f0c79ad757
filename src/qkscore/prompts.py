"""Prompt templates: turn an :class:`~qkscore.data.Item` into text plus the token positions read.

The QK-score is the dot product of one head's query at token ``q`` with its key at token ``k``.
A template therefore has to produce, for each answer option, the exact ``(q, k)`` pair *in the
tokens the model receives*. Positions are never found by tokenizing pieces separately (BPE
merges across piece boundaries, e.g. Qwen's ``".\\n"``, would shift them); instead the text is
assembled while recording the character span of every piece that matters (statement, option
texts, line ends, cue), the FULL string is tokenized once with ``return_offsets_mapping=True``,
and each character span is mapped to the token that covers it.

Schemes (``Template.scheme``):

``answer-statement`` (Tulchinskii et al., arXiv 2502.17017)
    Context, statement, option lines ("A. True" / "B. False"), then the cue "Answer:". One pair
    per option: query at the option's *answer token* (the token covering the last
    non-whitespace character of the option text in its line, e.g. " True" or the last word
    piece of a long option), key at the statement's *end token* (the token covering the last
    non-whitespace character of the statement, normally its period; with
    ``statement_anchor="last_word"`` the token covering its last letter or digit instead;
    ``option_anchor`` likewise for options such as MMLU's "... patients.").
``last-option`` (arXiv 2410.02343, multiple-choice QA)
    Same text. Query at the final token (the cue's last token, where the model would emit its
    answer), key at each option line's *end-of-line token*: the token covering the ``"\\n"``
    that ends the line. When the tokenizer merges that newline with the *following* text (so
    the token belongs to the next line as much as to this one), or the line has no newline
    (a chat template that trims the message), the token covering the line's last
    non-whitespace character is used instead; ``positions["eol_fallback"]`` records which.
    A newline merged with the *preceding* text (Qwen's ``".\\n"``) still counts as the
    end-of-line token.
``candidate-appended`` (the seed paper's other reading)
    One part per option: the shared prefix ending in the cue, plus ``" " + option text``.
    The candidate is the option in the template's answer form (``baseline_tokens``): its text
    by default (" True"), or its letter (" A", better for long multiple-choice options).
    Query at the candidate's last token, key at the statement's end token. ``logit_pos`` is
    the token before the candidate, so the baseline is the model's next-token probability of
    each candidate after the shared prefix; all parts share identical prefix tokens up to
    ``logit_pos`` (checked), so a KV cache of the prefix can be reused.

Every pair is reported in the ITEM's option order (``pair_options[i]`` is the item option
index), whatever order the text lists the options in, so downstream scores never need
un-permuting. ``input_ids`` is exactly what the model receives: special tokens the tokenizer
adds by default (Gemma's ``<bos>``) are kept; with ``use_chat_template`` the rendered chat
string already carries them and is tokenized with ``add_special_tokens=False``, as
``apply_chat_template(tokenize=True)`` does. A trailing special token a tokenizer appends
after the text (an EOS) is dropped so the cue stays the last token.
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from qkscore.data import Item

__all__ = [
    "BASELINE_TOKENS",
    "OPTION_STYLES",
    "SCHEMES",
    "STATEMENT_ANCHORS",
    "TEMPLATES",
    "Prompt",
    "PromptPart",
    "Template",
    "TemplateSettings",
    "available_templates",
    "find_listed_options",
    "get_template",
    "render_batch",
    "template_from_description",
    "with_fewshot",
]

#: Bumped whenever the rendered text or position rules change, so run records stay comparable.
FORMAT_VERSION = 1

SCHEMES = ("answer-statement", "last-option", "candidate-appended")
OPTION_STYLES = ("letters", "plain")
BASELINE_TOKENS = ("auto", "letters", "words")
STATEMENT_ANCHORS = ("last", "last_word")
LETTERS = string.ascii_uppercase


@dataclass
class PromptPart:
    """One forward pass worth of text and the positions to read from it.

    ``pairs[i]`` is ``(query_pos, key_pos)`` in ``input_ids`` (0-based, no padding) and scores
    item option ``pair_options[i]``. ``candidate_ids`` are in item option order.

    ``positions`` (JSON-able, lists in item option order) records every anchor, whichever the
    scheme reads: ``statement_end``, ``option_tokens`` (answer token of each option),
    ``option_line_ends`` and ``eol_fallback`` (see ``last-option``), ``cue_end`` (the cue's
    last token), ``last`` (this part's last token), ``target_start`` (first token of the
    target item, after instruction and shots), ``leading_special`` (the ids start with a
    tokenizer-added special token such as ``<bos>``), ``candidate_multi_token`` (a baseline
    candidate spans several tokens and only its first is used), and for ``candidate-appended``
    parts ``candidate_start`` / ``candidate_token``.

    ``candidate_options`` (None: ``0..len(candidate_ids)-1``) is the option slot of each
    candidate: a part that carries several templates' candidates at once (one pass shared by
    settings, :func:`qkscore.scoring.score_prompt_sets`) sends each to its own slot.
    """

    text: str
    input_ids: list[int]
    pairs: list[tuple[int, int]]
    pair_options: list[int]
    logit_pos: int
    candidate_ids: list[int]
    positions: dict[str, Any]
    candidate_options: list[int] | None = None


@dataclass
class Prompt:
    """Everything a scan needs for one item.

    ``option_order[j]`` is the item option index shown at display position ``j`` (letter
    ``A`` + j); pairs and candidates are nevertheless reported in item option order.
    """

    item_id: str
    n_options: int
    parts: list[PromptPart]
    option_order: list[int]


# --------------------------------------------------------------------------------------------
# character span -> token index


def _tokens_overlapping(offsets: Sequence[tuple[int, int]], start: int, end: int) -> list[int]:
    """Indices of tokens whose (non-empty) character span intersects ``[start, end)``."""
    return [i for i, (s, e) in enumerate(offsets) if e > s and s < end and e > start]


def _token_at(offsets: Sequence[tuple[int, int]], char: int, what: str) -> int:
    """The last token covering character ``char``.

    "Last" matters for byte-level BPE, where one multi-byte character can be split over several
    tokens sharing the same offsets: the last of them is where the character is complete.
    """
    hits = _tokens_overlapping(offsets, char, char + 1)
    if not hits:
        raise ValueError(
            f"no token covers character {char} ({what}); the tokenizer's offset mapping skips it"
        )
    return hits[-1]


def _last_char(text: str, start: int, end: int, *, word: bool = False) -> int:
    """Index of the last non-whitespace (or, with ``word``, alphanumeric) character in a span."""
    for i in range(end - 1, start - 1, -1):
        ch = text[i]
        if ch.isalnum() if word else not ch.isspace():
            return i
    if word:  # a statement of punctuation only: fall back to its last visible character
        return _last_char(text, start, end)
    raise ValueError(f"span {start}:{end} of the prompt is blank")


# --------------------------------------------------------------------------------------------
# text assembly


@dataclass
class _Block:
    """Character spans of one rendered item, relative to the start of the rendered content."""

    start: int = 0
    statement: tuple[int, int] = (0, 0)
    options: list[tuple[int, int]] = field(default_factory=list)  # display order
    line_ends: list[int | None] = field(default_factory=list)  # index of the line's "\n"


@dataclass
class _Located:
    """Token ids of a prompt and its anchors' tokens, options in one order (display or item)."""

    ids: list[int]
    statement_end: int
    option_tokens: list[int]
    line_ends: list[int]
    eol_fallback: list[bool]
    last: int
    target_start: int
    leading_special: bool

    def reordered(self, order: list[int]) -> _Located:
        """The same anchors with options in item order (``order[j]``: item option at j)."""
        back = [order.index(i) for i in range(len(order))]
        return dataclasses.replace(
            self,
            option_tokens=[self.option_tokens[j] for j in back],
            line_ends=[self.line_ends[j] for j in back],
            eol_fallback=[self.eol_fallback[j] for j in back],
        )

    def positions(self) -> dict[str, Any]:
        """The JSON-able ``PromptPart.positions`` record (see :class:`PromptPart`)."""
        return {
            "statement_end": self.statement_end,
            "option_tokens": list(self.option_tokens),
            "option_line_ends": list(self.line_ends),
            "eol_fallback": list(self.eol_fallback),
            "last": self.last,
            "cue_end": self.last,
            "target_start": self.target_start,
            "leading_special": self.leading_special,
        }


def find_listed_options(text: str, candidates: Sequence[str], where: str = "prompt") -> _Block:
    """Character spans of the statement and option lines a prompt ends with, before its cue.

    The last non-blank line is the cue; the ``len(candidates)`` lines before it are the options
    in order, each either ``"A. text"`` (letter j for option j) or the candidate's own text;
    the line before them is the statement. Anything else is refused, naming what was expected.
    """
    n = len(candidates)
    lines: list[tuple[int, int]] = []  # (start, end) of each line, without its "\n"
    start = 0
    for piece in text.split("\n"):
        lines.append((start, start + len(piece)))
        start += len(piece) + 1
    while lines and not text[slice(*lines[-1])].strip():
        lines.pop()
    why = (
        f"{where}: the prompt does not list its {n} choices ({[c.strip() for c in candidates]}) "
        "one per line ('A. text' or the choice itself) between a statement line and the answer "
        "cue on the last line, so the query and key positions cannot be found; use a task whose "
        "prompt lists its choices"
    )
    if n < 2 or n > len(LETTERS) or len(lines) < n + 2:
        raise ValueError(why)
    option_lines = lines[-1 - n : -1]
    block = _Block(start=0)
    for j, (s, e) in enumerate(option_lines):
        line = text[s:e]
        lead = len(line) - len(line.lstrip())
        body = line.strip()
        letter = f"{LETTERS[j]}. "
        if body.startswith(letter) and body[len(letter) :].strip():
            s_opt = s + lead + len(letter)
        elif body == candidates[j].strip():
            s_opt = s + lead
        else:
            raise ValueError(f"{why} (line {len(lines) - n + j} reads {body[:60]!r})")
        block.options.append((s_opt, s + lead + len(body)))
        block.line_ends.append(e if e < len(text) else None)
    s, e = lines[-2 - n]
    if not text[s:e].strip():
        raise ValueError(f"{why} (no statement line before the choices)")
    block.statement = (s, e)
    return block


class _Builder:
    """Appends text while handing back the character span of each piece."""

    def __init__(self) -> None:
        self._pieces: list[str] = []
        self.n = 0

    def add(self, piece: str) -> tuple[int, int]:
        start = self.n
        self._pieces.append(piece)
        self.n += len(piece)
        return start, self.n

    def text(self) -> str:
        return "".join(self._pieces)


def _check_tokenizer(tokenizer: Any) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"{type(tokenizer).__name__} cannot report character offsets, which prompt positions "
            "need: load a fast tokenizer (AutoTokenizer.from_pretrained(..., use_fast=True), or "
            "qkscore.models.load_tokenizer)"
        )


def _check_item(item: Item, role: str = "item") -> None:
    if not item.statement or not item.statement.strip():
        raise ValueError(f"{role} {item.id!r} has an empty statement; nothing to anchor the key on")
    if len(item.options) < 2:
        raise ValueError(f"{role} {item.id!r} has {len(item.options)} option(s); need at least 2")
    if len(item.options) > len(LETTERS):
        raise ValueError(f"{role} {item.id!r} has more than {len(LETTERS)} options")
    for opt in item.options:
        if not str(opt).strip():
            raise ValueError(f"{role} {item.id!r} has an empty option text: {list(item.options)}")


def _encode(tokenizer: Any, text: str, add_special_tokens: bool) -> tuple[list[int], list]:
    """Token ids and offsets of the full text, minus trailing specials appended after it."""
    try:
        enc = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    except NotImplementedError as exc:  # slow tokenizers that slipped past is_fast
        raise ValueError(
            f"{type(tokenizer).__name__} does not support return_offsets_mapping: load a fast "
            "tokenizer"
        ) from exc
    ids = list(enc["input_ids"])
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    while len(ids) > 1 and ids[-1] in special and offsets[-1][0] == offsets[-1][1]:
        ids.pop()
        offsets.pop()
    return ids, offsets


# --------------------------------------------------------------------------------------------
# the template


class ShotRecord(BaseModel):
    """A k-shot example as a template's settings record it: its id and gold label (its text
    lives in the data split it came from)."""

    model_config = ConfigDict(extra="allow")
    id: str
    label: str


class TemplateSettings(BaseModel):
    """Every setting of a :class:`Template`, declared once: what ``Template.describe()`` dumps,
    what run.json, profile.json and evaluation.json record (so a number can be traced to the
    exact prompt that produced it) and what :func:`template_from_description` validates.

    The fields are the template's own (see :class:`Template`) plus ``format_version`` (the
    rendering rules, :data:`FORMAT_VERSION`) and ``k`` (the number of shots, recorded by id and
    label in ``k_shot``); ``baseline_tokens`` is recorded resolved (never ``"auto"``). Keys a
    newer qkscore adds are kept when a file is read (``extra="allow"``); rebuilding a template
    refuses them.
    """

    model_config = ConfigDict(extra="allow")

    name: str
    scheme: str
    format_version: int
    instruction: str
    option_style: str
    answer_cue: str
    statement_prefix: str | None
    swap_options: bool | list[int]
    k: int
    k_shot: list[ShotRecord]
    use_chat_template: bool
    baseline_tokens: str
    statement_anchor: str
    option_anchor: str


@dataclass(frozen=True)
class Template:
    """How an item becomes a prompt and which (query, key) pairs are read.

    Fields:
        name: registry name (recorded with every run).
        scheme: one of :data:`SCHEMES` (see the module docstring).
        instruction: text placed once before everything else ("" for none).
        option_style: ``"letters"`` ("A. True") or ``"plain"`` ("True"), one option per line.
        answer_cue: the text after the options, where the model answers.
        statement_prefix: text before the statement on its line; ``None`` picks "Statement: "
            for True/False(/Unknown) items and "Question: " for multiple choice.
        swap_options: ``False``; ``True`` reverses the displayed options; or a permutation
            (display position j shows item option ``swap_options[j]``). Pairs stay in item order.
        k_shot: solved examples (from another split) rendered before the target with their gold
            answer after the cue; positions always refer to the target.
        use_chat_template: wrap instruction, shots and target as one user message with the
            tokenizer's chat template; the cue (and candidate) follow the generation prompt.
        baseline_tokens: candidates for the model-probability baseline: ``"letters"`` (" A",
            " B", ...), ``"words"`` (" " + option text), or ``"auto"`` (letters for letter-style
            options, else words). This is the template's *answer form*: k-shot answers and the
            candidates appended by ``candidate-appended`` use it too, so the model sees one form.
        statement_anchor: ``"last"`` (token of the statement's last visible character, usually
            its period) or ``"last_word"`` (token of its last letter or digit).
        option_anchor: the same choice for each option's answer token (and the appended
            candidate of ``candidate-appended``); "last" is the option text's last token.
    """

    name: str
    scheme: str
    instruction: str = ""
    option_style: str = "letters"
    answer_cue: str = "Answer:"
    statement_prefix: str | None = None
    swap_options: bool | tuple[int, ...] = False
    k_shot: tuple[Item, ...] = ()
    use_chat_template: bool = False
    baseline_tokens: str = "auto"
    statement_anchor: str = "last"
    option_anchor: str = "last"

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ValueError(
                f"template {self.name!r}: unknown scheme {self.scheme!r}; "
                f"expected one of {list(SCHEMES)}"
            )
        if self.option_style not in OPTION_STYLES:
            raise ValueError(
                f"template {self.name!r}: option_style must be one of "
                f"{list(OPTION_STYLES)}, got {self.option_style!r}"
            )
        if self.baseline_tokens not in BASELINE_TOKENS:
            raise ValueError(
                f"template {self.name!r}: baseline_tokens must be one of "
                f"{list(BASELINE_TOKENS)}, got {self.baseline_tokens!r}"
            )
        if self.baseline_tokens == "letters" and self.option_style != "letters":
            raise ValueError(
                f"template {self.name!r}: letter baseline tokens need "
                "option_style='letters' (plain options show no letters)"
            )
        if self.option_anchor not in STATEMENT_ANCHORS:
            raise ValueError(
                f"template {self.name!r}: option_anchor must be one of "
                f"{list(STATEMENT_ANCHORS)}, got {self.option_anchor!r}"
            )
        if self.statement_anchor not in STATEMENT_ANCHORS:
            raise ValueError(
                f"template {self.name!r}: statement_anchor must be one of "
                f"{list(STATEMENT_ANCHORS)}, got {self.statement_anchor!r}"
            )
        if not self.answer_cue.strip():
            raise ValueError(f"template {self.name!r}: answer_cue must not be blank")
        if self.answer_cue != self.answer_cue.rstrip():
            raise ValueError(
                f"template {self.name!r}: answer_cue must not end in whitespace "
                "(the candidate brings its own leading space)"
            )
        swap = self.swap_options
        if not isinstance(swap, bool):
            perm = tuple(int(i) for i in swap)
            if sorted(perm) != list(range(len(perm))) or len(perm) < 2:
                raise ValueError(
                    f"template {self.name!r}: swap_options {list(swap)} is not a "
                    "permutation of 0..n-1"
                )
            object.__setattr__(self, "swap_options", perm)
        object.__setattr__(self, "k_shot", tuple(self.k_shot))
        for shot in self.k_shot:
            if not isinstance(shot, Item):
                raise ValueError(f"template {self.name!r}: k_shot entries must be Items")
            _check_item(shot, "k-shot example")

    # ---- settings -----------------------------------------------------------------------

    @property
    def resolved_baseline_tokens(self) -> str:
        if self.baseline_tokens == "auto":
            return "letters" if self.option_style == "letters" else "words"
        return self.baseline_tokens

    def settings(self) -> TemplateSettings:
        """Every setting, as run folders and profiles record it (:class:`TemplateSettings`)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values.update(
            format_version=FORMAT_VERSION,
            k=len(self.k_shot),
            k_shot=[{"id": s.id, "label": s.label} for s in self.k_shot],
            baseline_tokens=self.resolved_baseline_tokens,
        )
        return TemplateSettings.model_validate(values)

    def describe(self) -> dict[str, Any]:
        """All settings as plain JSON-able values (:meth:`settings` dumped), so a run folder
        records exactly this template."""
        return self.settings().model_dump(mode="json")

    def option_order(self, n_options: int, item_id: str = "?") -> list[int]:
        """Item option index shown at each display position."""
        swap = self.swap_options
        if swap is False:
            return list(range(n_options))
        if swap is True:
            return list(range(n_options))[::-1]
        if len(swap) != n_options:
            raise ValueError(
                f"template {self.name!r}: swap_options {list(swap)} permutes "
                f"{len(swap)} options but item {item_id!r} has {n_options}"
            )
        return list(swap)

    # ---- rendering ----------------------------------------------------------------------

    def _prefix_for(self, item: Item) -> str:
        if self.statement_prefix is not None:
            return self.statement_prefix
        return "Question: " if item.is_multiple_choice else "Statement: "

    def _answer_text(self, item: Item, order: list[int]) -> str:
        """Gold answer as written after a shot's cue."""
        gold = item.answer_index
        if self.resolved_baseline_tokens == "letters":
            return LETTERS[order.index(gold)]
        return str(item.options[gold]).strip()

    def _render_item(self, b: _Builder, item: Item, order: list[int]) -> _Block:
        """Context line, statement line, one line per option (each ending in "\\n")."""
        block = _Block(start=b.n)
        context = (item.context or "").strip()
        if context:
            b.add(context + "\n")
        b.add(self._prefix_for(item))
        block.statement = b.add(item.statement.strip())
        b.add("\n")
        for j, idx in enumerate(order):
            if self.option_style == "letters":
                b.add(f"{LETTERS[j]}. ")
            block.options.append(b.add(str(item.options[idx]).strip()))
            nl, _ = b.add("\n")
            block.line_ends.append(nl)
        return block

    def _content(self, item: Item, order: list[int]) -> tuple[str, _Block]:
        """Instruction, shots and target (everything before the cue), with target spans."""
        b = _Builder()
        if self.instruction.strip():
            b.add(self.instruction.strip() + "\n\n")
        for shot in self.k_shot:
            if shot.id == item.id:
                raise ValueError(
                    f"item {item.id!r} is also one of template {self.name!r}'s "
                    "k-shot examples; take shots from another split"
                )
            shot_order = self.option_order(len(shot.options), shot.id)
            self._render_item(b, shot, shot_order)
            b.add(f"{self.answer_cue} {self._answer_text(shot, shot_order)}\n\n")
        block = self._render_item(b, item, order)
        return b.text(), block

    def _full_text(self, item: Item, order: list[int], tokenizer: Any) -> tuple[str, _Block, bool]:
        """Final string ending with the cue, target spans shifted into it, add_special_tokens."""
        content, block = self._content(item, order)
        if not self.use_chat_template:
            return content + self.answer_cue, block, True
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                f"template {self.name!r} asks for the chat template but "
                f"{type(tokenizer).__name__} has none (base model?): set "
                "use_chat_template=False"
            )
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
        at = rendered.find(content)
        if at < 0:  # templates that trim the message drop the last option's "\n"
            at = rendered.find(content.rstrip())
            if at < 0:
                raise ValueError(
                    f"item {item.id!r}: the chat template rewrote the message text, "
                    "so positions cannot be located; set use_chat_template=False"
                )
            kept = at + len(content.rstrip())
            block.line_ends = [
                None if nl is not None and nl + at >= kept else nl for nl in block.line_ends
            ]
        block.start += at
        block.statement = (block.statement[0] + at, block.statement[1] + at)
        block.options = [(s + at, e + at) for s, e in block.options]
        block.line_ends = [None if nl is None else nl + at for nl in block.line_ends]
        return rendered + self.answer_cue, block, False

    def _append_candidates(
        self,
        tokenizer: Any,
        text: str,
        ids: list[int],
        add_special: bool,
        cands: list[str],
        where: str,
    ) -> list[tuple[list[int], list[tuple[int, int]], list[int]]]:
        """Tokenize ``text + cand`` for each candidate: (ids, offsets, candidate token indices).

        Checks what both the baseline and a reused KV cache rely on: the candidate starts a new
        token (no merge with the cue), the tokens before it are exactly ``ids``, and the
        candidates' first tokens are distinct.
        """
        out = []
        for cand in cands:
            full_ids, offs = _encode(tokenizer, text + cand, add_special)
            toks = _tokens_overlapping(offs, len(text), len(text) + len(cand))
            if not toks or offs[toks[0]][0] < len(text) or full_ids[: toks[0]] != ids:
                raise ValueError(
                    f"{where}: the tokenizer merges candidate {cand!r} with the cue "
                    f"{self.answer_cue!r}; choose another answer_cue"
                )
            out.append((full_ids, offs, toks))
        firsts = [full_ids[toks[0]] for full_ids, _, toks in out]
        if len(set(firsts)) != len(firsts):
            raise ValueError(
                f"{where}, template {self.name!r}: candidates {cands} share a first token "
                f"({firsts}), so the baseline cannot tell them apart; use "
                "baseline_tokens='letters'"
            )
        return out

    def _locate(
        self, tokenizer: Any, text: str, block: _Block, add_special: bool, where: str
    ) -> _Located:
        """Token ids of ``text`` and the token of every anchor in ``block`` (display order).

        The one offset-mapped position finder: templates' own prompts and prompts written
        elsewhere (:meth:`render_listed`) both go through it, so equal text gives equal pairs.
        """
        ids, offs = _encode(tokenizer, text, add_special)
        s0, s1 = block.statement
        st_char = _last_char(text, s0, s1, word=self.statement_anchor == "last_word")
        statement_end = _token_at(offs, st_char, f"{where} statement end")
        opt_tok_disp = [
            _token_at(
                offs,
                _last_char(text, s, e, word=self.option_anchor == "last_word"),
                f"{where} option {j}",
            )
            for j, (s, e) in enumerate(block.options)
        ]
        eol_disp: list[int] = []
        eol_fallback: list[bool] = []
        for j, nl in enumerate(block.line_ends):
            tok = None
            if nl is not None:
                tok = _token_at(offs, nl, f"{where} end of option line {j}")
                # the newline merged with the next line's text: not this line's end any more
                if text[nl + 1 : offs[tok][1]].strip():
                    tok = None
            if tok is None:  # the line's last token, whatever option_anchor says
                s, e = block.options[j]
                tok = _token_at(offs, _last_char(text, s, e), f"{where} option {j}")
                eol_fallback.append(True)
            else:
                eol_fallback.append(False)
            eol_disp.append(tok)
        last = len(ids) - 1
        if _token_at(offs, len(text) - 1, f"{where} cue") != last:
            raise ValueError(f"{where}: the cue {self.answer_cue!r} is not the last token")
        target_start = _tokens_overlapping(offs, block.start, len(text))[0]
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        return _Located(
            ids=ids,
            statement_end=statement_end,
            option_tokens=opt_tok_disp,
            line_ends=eol_disp,
            eol_fallback=eol_fallback,
            last=last,
            target_start=target_start,
            leading_special=bool(offs[0][0] == offs[0][1] and ids[0] in special),
        )

    def _pairs(self, at: _Located, n: int) -> list[tuple[int, int]]:
        """(query, key) per option for the single-pass schemes, in the order of ``at``."""
        if self.scheme == "answer-statement":
            return [(at.option_tokens[i], at.statement_end) for i in range(n)]
        return [(at.last, at.line_ends[i]) for i in range(n)]

    def text(self, item: Item) -> str:
        """The prompt :meth:`render` builds for ``item``, as text (no tokenizer needed).

        For tasks defined elsewhere (lm-evaluation-harness) that must show exactly this
        template's prompt; a chat template needs the tokenizer, so it is refused here.
        """
        if self.use_chat_template:
            raise ValueError(f"template {self.name!r} uses the chat template: render it instead")
        _check_item(item)
        order = self.option_order(len(item.options), item.id)
        return self._full_text(item, order, None)[0]

    def render_listed(
        self, text: str, candidates: Sequence[str], tokenizer: Any, where: str = "prompt"
    ) -> Prompt:
        """Pairs for a prompt written elsewhere that lists its options one per line.

        ``text`` ends with the answer cue; the ``len(candidates)`` lines before the cue are the
        options ("A. text" or the candidate's own text), and the line before them is the
        statement (or question). ``candidates`` are the answer continuations in option order
        (" A", " B" or " True", " False"); their first tokens are the model-answer baseline.
        Positions come from :meth:`_locate`, so the template's own prompt gives the same pairs
        as :meth:`render`. A prompt that does not list its options this way is refused: there
        would be no key for the ``last-option`` scheme and no answer token for
        ``answer-statement``.
        """
        _check_tokenizer(tokenizer)
        if self.scheme == "candidate-appended":
            raise ValueError(
                f"template {self.name!r}: the candidate-appended scheme appends its own "
                "candidates and cannot read a prompt written elsewhere"
            )
        n = len(candidates)
        block = find_listed_options(text, candidates, where)
        at = self._locate(tokenizer, text, block, True, where)
        appended = self._append_candidates(tokenizer, text, at.ids, True, list(candidates), where)
        positions = at.positions()
        positions["candidate_multi_token"] = [len(toks) > 1 for _, _, toks in appended]
        cand_ids = [pids[toks[0]] for pids, _, toks in appended]
        part = PromptPart(
            text, at.ids, self._pairs(at, n), list(range(n)), at.last, cand_ids, positions
        )
        return Prompt(where, n, [part], list(range(n)))

    def render(self, item: Item, tokenizer: Any) -> Prompt:
        """Text, token ids and (query, key) pairs for one item; see the module docstring."""
        _check_tokenizer(tokenizer)
        _check_item(item)
        n = len(item.options)
        order = self.option_order(n, item.id)
        text, block, add_special = self._full_text(item, order, tokenizer)
        where = f"item {item.id!r}"
        at = self._locate(tokenizer, text, block, add_special, where).reordered(order)
        ids, statement_end, last = at.ids, at.statement_end, at.last
        positions = at.positions()

        if self.resolved_baseline_tokens == "letters":
            cands = [" " + LETTERS[order.index(i)] for i in range(n)]
        else:
            cands = [" " + str(opt).strip() for opt in item.options]

        appended = self._append_candidates(tokenizer, text, ids, add_special, cands, where)
        cand_ids = [pids[toks[0]] for pids, _, toks in appended]
        positions["candidate_multi_token"] = [len(toks) > 1 for _, _, toks in appended]

        if self.scheme != "candidate-appended":
            part = PromptPart(
                text, ids, self._pairs(at, n), list(range(n)), last, cand_ids, positions
            )
            return Prompt(item.id, n, [part], order)

        # candidate-appended: one part per option in item order, identical prefix tokens
        parts: list[PromptPart] = []
        word = self.option_anchor == "last_word"
        for i, (cand, (pids, poffs, toks)) in enumerate(zip(cands, appended, strict=True)):
            ptext = text + cand
            cand_char = _last_char(ptext, len(text), len(ptext), word=word)
            query = _token_at(poffs, cand_char, f"{where} candidate {cand!r}")
            ppos = dict(positions)
            ppos.update(candidate_start=toks[0], candidate_token=query, last=len(pids) - 1)
            part_ids = cand_ids if i == 0 else []
            parts.append(
                PromptPart(ptext, pids, [(query, statement_end)], [i], toks[0] - 1, part_ids, ppos)
            )
        return Prompt(item.id, n, parts, order)


# --------------------------------------------------------------------------------------------
# registry

TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in (
        Template(name="answer-statement", scheme="answer-statement"),
        Template(name="last-option", scheme="last-option"),
        Template(name="candidate-appended", scheme="candidate-appended", baseline_tokens="words"),
    )
}


def available_templates() -> dict[str, dict[str, Any]]:
    """Registered template names with their settings (for ``--help`` and listings)."""
    return {name: t.describe() for name, t in TEMPLATES.items()}


def get_template(name: str | Template, **overrides: Any) -> Template:
    """A registered template, with fields replaced by ``overrides`` (e.g. ``k_shot=shots``)."""
    if isinstance(name, Template):
        base = name
    else:
        base = TEMPLATES.get(name)
        if base is None:
            raise ValueError(f"unknown template {name!r}; available: {sorted(TEMPLATES)}")
    if not overrides:
        return base
    known = {f.name for f in dataclasses.fields(Template)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise ValueError(f"unknown template setting(s) {bad}; known: {sorted(known)}")
    return dataclasses.replace(base, **overrides)


def with_fewshot(
    template: Template, items: Sequence[Item], n: int, seed: int = 0
) -> tuple[Template, list[Item]]:
    """The template with ``n`` solved examples taken from ``items``, and the items left.

    Shots are drawn label-balanced (round robin over the labels, seeded) and removed from the
    items, so a shot is never also scored. ``n=0`` returns both unchanged.
    """
    import random

    items = list(items)
    if n <= 0:
        return template, items
    if n >= len(items):
        raise ValueError(f"{n} few-shot examples leave none of the {len(items)} items to score")
    rng = random.Random(seed)
    by_label: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        by_label.setdefault(item.label, []).append(i)
    pools = [rng.sample(idx, len(idx)) for _, idx in sorted(by_label.items())]
    chosen: list[int] = []
    while len(chosen) < n:
        for pool in pools:
            if pool and len(chosen) < n:
                chosen.append(pool.pop())
    taken = set(chosen)
    shots = tuple(items[i] for i in chosen)
    return get_template(template, k_shot=shots), [
        it for i, it in enumerate(items) if i not in taken
    ]


def render_batch(
    items: Iterable[Item], tokenizer: Any, template: str | Template = "answer-statement"
) -> list[Prompt]:
    """Render many items with one template (a registered name or a :class:`Template`)."""
    tmpl = get_template(template)
    return [tmpl.render(item, tokenizer) for item in items]


def template_from_description(description: Mapping[str, Any]) -> Template:
    """Rebuild the :class:`Template` whose :meth:`Template.describe` gave ``description``:
    validate it as :class:`TemplateSettings` and build the template from its fields.

    A profile stores its template only as that description; judging new text with the profile
    needs the very same template back, so the result is checked to describe itself identically.
    Templates with k-shot examples cannot be rebuilt: the description keeps only the shots' ids,
    not their text.
    """
    name = description.get("name", "?") if isinstance(description, Mapping) else "?"
    try:
        settings = TemplateSettings.model_validate(description)
    except ValidationError as err:
        fields = sorted({".".join(str(p) for p in e["loc"]) for e in err.errors()})
        raise ValueError(
            f"template description of {name!r} is not valid (fields {fields}): "
            f"{err.errors()[0]['msg']}"
        ) from None
    if settings.k or settings.k_shot:
        raise ValueError(
            f"template {name!r} used {settings.k or len(settings.k_shot)} k-shot "
            "example(s), whose text the description does not keep: it cannot be rebuilt. "
            "Calibrate a profile with a 0-shot template to judge new text."
        )
    if settings.format_version != FORMAT_VERSION:
        raise ValueError(
            f"template {name!r} was described by prompt format version "
            f"{settings.format_version!r}; this qkscore renders version {FORMAT_VERSION}, so its "
            "positions would differ. Recalibrate with this version."
        )
    own = {f.name for f in dataclasses.fields(Template)} - {"k_shot"}
    template = Template(**{key: getattr(settings, key) for key in own})
    rebuilt = template.describe()
    given = settings.model_dump(mode="json")
    diff = sorted(k for k in set(rebuilt) | set(given) if rebuilt.get(k) != given.get(k))
    if diff:
        raise ValueError(
            f"template {name!r} could not be rebuilt exactly from its description (settings "
            f"{diff} differ); this qkscore may not know them"
        )
    return template
