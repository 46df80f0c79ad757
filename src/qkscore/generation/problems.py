"""Problems to reason about, the prompt that asks for a chain of thought, and reading it back.

A problem is a True/False item seen as a question: its context, "True or false: STATEMENT"
and the gold answer. The prompt shows one solved example, then asks the model to reason one
fact per line and to end with a fixed line ``Answer: True`` or ``Answer: False``;
:func:`parse_answer` reads the last such line (also the looser "the answer is `False`" small
models write), and the sentences before it are the chain's steps. A chain without an answer
has none (None), which every figure counts as wrong.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from qkscore.audit.chain import split_steps
from qkscore.data.items import TRUE_FALSE, DataError, Item

__all__ = [
    "INSTRUCTION",
    "PROMPT_VERSION",
    "Problem",
    "chain_steps",
    "parse_answer",
    "problems_from_items",
    "render_prompt",
]

#: Bumped whenever the prompt text changes: a generation folder records it, so a resumed run
#: never mixes chains written under two prompts.
PROMPT_VERSION = 2
INSTRUCTION = (
    "Reason step by step, writing one fact per sentence on its own line, then end with a "
    "final line that is exactly `Answer: True` or `Answer: False`, as in this example."
)
#: One solved example in the format asked for: small models copy a format far more reliably
#: than they follow a description of it. Its terms appear in no benchmark set.
EXAMPLE = (
    "Every cat is a mammal. Every mammal is warm. Tom is a cat.\n"
    "True or false: Tom is warm.\n\n"
    "Reasoning:\nTom is a cat.\nEvery cat is a mammal.\nTom is a mammal.\n"
    "Every mammal is warm.\nTom is warm.\nAnswer: True"
)
# "Answer: True", "answer = **false**", and the looser "the answer is `False`"
_ANSWER_RE = re.compile(r"answer\s*(?:[:=]|is)\s*[*`'\"]*\s*(true|false)\b", re.IGNORECASE)
# markdown emphasis and a bold heading before the step ("**Check**: Tom is a cat.")
_MARKDOWN_RE = re.compile(r"^\s*\*\*[^*]*\*\*\s*:?\s*|\*\*|`")
# a list marker at the start of a line ("1.", "2)", "-", "*", "Step 3:"): not part of a step
_MARKER_RE = re.compile(r"^\s*(?:[-*•]\s+|\(?\d+[.)]\s+|step\s+\d+\s*[:.]\s*)", re.IGNORECASE)


@dataclass(frozen=True)
class Problem:
    """One question: premises, the question asked, the gold answer and its hop count."""

    id: str
    context: str
    question: str
    gold: bool
    hops: int | None = None

    @property
    def text(self) -> str:
        """The problem as the model and the solution-level score see it."""
        return f"{self.context.strip()}\n{self.question.strip()}".strip()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Problem:
        return cls(
            id=str(d["id"]),
            context=str(d["context"]),
            question=str(d["question"]),
            gold=bool(d["gold"]),
            hops=d.get("hops"),
        )


def problems_from_items(items: Iterable[Item]) -> list[Problem]:
    """True/False items as questions; an item with other options or an Unknown label is
    refused: a chain's final answer must be checkable as right or wrong."""
    out = []
    for item in items:
        if tuple(item.options) != TRUE_FALSE or item.label not in TRUE_FALSE:
            raise DataError(
                f"item {item.id!r} is not a True/False question (options {list(item.options)}, "
                f"label {item.label!r}); generation needs True/False items",
                field="label",
            )
        depth = item.meta.get("depth")
        out.append(
            Problem(
                id=item.id,
                context=item.context,
                question=f"True or false: {item.statement.strip()}",
                gold=item.label == "True",
                hops=int(depth) if isinstance(depth, int) else None,
            )
        )
    return out


def render_prompt(problem: Problem, tokenizer: Any = None, chat_template: bool = False) -> str:
    """The text the model continues: the instruction, the solved example, the problem and
    ``Reasoning:``; with ``chat_template`` all but that last line as one user turn of the
    tokenizer's chat template, the assistant's turn then opening with ``Reasoning:``."""
    user = f"{INSTRUCTION}\n\n{EXAMPLE}\n\n{problem.text}\n\n"
    if not chat_template:
        return f"{user}Reasoning:\n"
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError("--chat-template needs a tokenizer with a chat template")
    messages = [{"role": "user", "content": user.strip()}]
    # the assistant's turn starts as the example's did: without it instruct models answer
    # at once, with no reasoning to judge
    turn = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"{turn}Reasoning:\n"


def parse_answer(text: str) -> bool | None:
    """The final answer line's value (the last ``Answer: True/False`` in the text), or None."""
    found = _ANSWER_RE.findall(text)
    return None if not found else found[-1].lower() == "true"


def answer_complete(text: str) -> bool:
    """Whether the text already holds a complete answer line (generation may stop)."""
    return _ANSWER_RE.search(text) is not None


def chain_steps(text: str) -> list[str]:
    """The reasoning steps of a generated text: everything before the first answer line, list
    (and the sentence it begins in) list markers and markdown removed, split by
    :func:`qkscore.audit.chain.split_steps`."""
    m = _ANSWER_RE.search(text)
    body = text
    if m:  # up to the answer, without the start of its sentence ("So the answer is True")
        body = text[: m.start()]
        body = body[: re.search(r"[^.!?\n]*$", body).start()]
    lines = [_MARKDOWN_RE.sub("", _MARKER_RE.sub("", line)) for line in body.splitlines()]
    steps = split_steps("\n".join(lines))
    # markdown debris ("---", a bare heading colon) is no step
    return [s for s in steps if re.search(r"[A-Za-z]{2}", s)]
