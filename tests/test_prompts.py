"""Prompt templates put every (query, key) pair on the intended token, for real tokenizers.

Each check decodes the token at a reported position and compares it with what the template
meant to point at, so an off-by-one (a BOS, a BPE merge across a piece boundary such as Qwen's
".\\n") shows up as a wrong string rather than a silently shifted score.
"""

from __future__ import annotations

import copy
import json
from dataclasses import FrozenInstanceError

import pytest

from conftest import SHARED_DATA, tokenizer_or_skip
from qkscore.data import TRUE_FALSE_UNKNOWN, Item
from qkscore.prompts import (
    SCHEMES,
    TEMPLATES,
    Prompt,
    PromptPart,
    Template,
    available_templates,
    get_template,
    render_batch,
)

ALIASES = ["smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b"]
CHAT_ALIASES = ["smollm2-135m", "qwen2.5-coder-0.5b"]
PRONTOQA = SHARED_DATA / "prontoqa" / "truefalse_0shot" / "3hop_0shot_random.json"
MMLU = SHARED_DATA / "mmlu" / "subset_logic_test.jsonl"

_TOKENIZERS: dict[str, object] = {}


def _tok(alias: str):
    if alias not in _TOKENIZERS:
        _TOKENIZERS[alias] = tokenizer_or_skip(alias)
    return _TOKENIZERS[alias]


@pytest.fixture(params=ALIASES)
def tok(request):
    return _tok(request.param)


@pytest.fixture(params=CHAT_ALIASES)
def chat_tok(request):
    return _tok(request.param)


def _prontoqa(n: int) -> list[Item]:
    if not PRONTOQA.is_file():
        pytest.skip(f"ProntoQA file not found at {PRONTOQA}")
    data = json.loads(PRONTOQA.read_text())
    items = []
    for key in list(data)[:n]:
        ex = data[key]["test_example"]
        statement = ex["query"].removeprefix("True or false:").strip()
        items.append(Item(f"prontoqa-{key}", ex["question"], statement, ex["answer"]))
    return items


@pytest.fixture(scope="module")
def pronto() -> list[Item]:
    return _prontoqa(6)


@pytest.fixture(scope="module")
def mmlu_item() -> Item:
    if not MMLU.is_file():
        pytest.skip(f"MMLU subset not found at {MMLU}")
    row = json.loads(MMLU.read_text().splitlines()[0])
    return Item(
        f"mmlu-{row['subject']}-{row['row']}",
        "",
        row["question"],
        row["answer"],
        tuple(row["choices"]),
        {"source": "mmlu"},
    )


SHORT_MC = Item(
    "mc-planets", "", "Which planet is known as the Red Planet?", "B",
    ("Earth", "Mars.", "Jupiter", "Venus"),
)  # fmt: skip


def dec(tok, part: PromptPart, pos: int) -> str:
    return tok.decode([part.input_ids[pos]])


def _check_ids_are_model_input(tok, part: PromptPart, chat: bool = False) -> None:
    """input_ids are exactly what tokenizing the full text gives (BOS included where added)."""
    enc = tok(part.text, add_special_tokens=not chat)["input_ids"]
    assert part.input_ids == list(enc)
    if not chat and tok.bos_token_id is not None and enc[0] == tok.bos_token_id:
        assert part.positions["leading_special"]


def _check_statement_key(tok, part: PromptPart, item: Item, pos: int) -> None:
    piece = dec(tok, part, pos)
    last = item.statement.strip()[-1]
    assert last in piece, (piece, item.statement)
    assert not piece.strip() or item.statement.strip().endswith(piece.strip()), piece


def _check_cue_last(tok, part: PromptPart) -> None:
    assert part.logit_pos == len(part.input_ids) - 1
    assert dec(tok, part, part.logit_pos).strip().endswith(":")
    assert part.text.endswith("Answer:")


# --------------------------------------------------------------------------------------------
# answer-statement


def test_answer_statement_true_false(tok, pronto):
    tmpl = get_template("answer-statement")
    for item in pronto:
        prompt = tmpl.render(item, tok)
        assert isinstance(prompt, Prompt) and prompt.n_options == 2 and len(prompt.parts) == 1
        part = prompt.parts[0]
        _check_ids_are_model_input(tok, part)
        _check_cue_last(tok, part)
        assert part.pair_options == [0, 1]
        for (q, k), word in zip(part.pairs, ("True", "False"), strict=True):
            assert word in dec(tok, part, q)
            _check_statement_key(tok, part, item, k)
            assert k < q
        assert "\nA. True\nB. False\nAnswer:" in part.text
        assert f"Statement: {item.statement}\n" in part.text
        assert [tok.decode([c]).strip() for c in part.candidate_ids] == ["A", "B"]
        json.dumps(part.positions)  # recorded as-is in run folders


def test_answer_statement_mmlu_four_options(tok, mmlu_item):
    part = get_template("answer-statement").render(mmlu_item, tok).parts[0]
    _check_ids_are_model_input(tok, part)
    _check_cue_last(tok, part)
    assert part.pair_options == [0, 1, 2, 3] and len(part.pairs) == 4
    assert part.text.startswith("Question: ")  # no context: no blank first line
    assert "\nD. " in part.text
    for (q, k), option in zip(part.pairs, mmlu_item.options, strict=True):
        piece = dec(tok, part, q)
        assert piece.strip() and option.strip().endswith(piece.strip()), (piece, option)
        _check_statement_key(tok, part, mmlu_item, k)
    assert [tok.decode([c]).strip() for c in part.candidate_ids] == list("ABCD")


def test_true_false_unknown_items(tok, pronto):
    item = Item("pw-1", pronto[0].context, pronto[0].statement, "Unknown", TRUE_FALSE_UNKNOWN)
    part = get_template("answer-statement").render(item, tok).parts[0]
    assert [dec(tok, part, q).strip() for q, _ in part.pairs] == ["True", "False", "Unknown"]
    assert "Statement: " in part.text  # True/False/Unknown is not multiple choice


@pytest.mark.parametrize(
    "statement",
    [
        "Sam is not temperate.",  # Qwen: " temper" + "ate" + ".\n"
        "Max is a wumpus",  # no period: the last word piece is the key
        "Is Rex a brimpus?",
        'Polly said "yes".',
        "The value is 3.14",
        "Zoë is a café-owner.",  # multi-byte characters near the end
        "Wren is a yumpus...",
    ],
)
def test_statement_end_with_odd_merges(tok, statement):
    item = Item("odd", "Every wumpus is a yumpus.", statement, "True")
    part = get_template("answer-statement").render(item, tok).parts[0]
    key = part.pairs[0][1]
    piece = dec(tok, part, key)
    assert statement[-1] in piece
    assert statement.endswith(piece.strip()) or piece.strip().startswith(statement[-1])
    assert key < part.pairs[0][0]
    # last_word anchors on the final letter/digit instead of trailing punctuation
    part_w = get_template("answer-statement", statement_anchor="last_word").render(item, tok)
    key_w = part_w.parts[0].pairs[0][1]
    last_alnum = next(ch for ch in reversed(statement) if ch.isalnum())
    assert last_alnum in dec(tok, part_w.parts[0], key_w)
    assert key_w <= key


def test_option_anchor_last_word(tok):
    part = get_template("answer-statement", option_anchor="last_word").render(SHORT_MC, tok)
    part = part.parts[0]
    assert "Mars" in dec(tok, part, part.pairs[1][0])
    plain = get_template("answer-statement").render(SHORT_MC, tok).parts[0]
    assert "." in dec(tok, plain, plain.pairs[1][0])


# --------------------------------------------------------------------------------------------
# last-option


def test_last_option_pairs(tok, pronto, mmlu_item):
    tmpl = get_template("last-option")
    for item in [pronto[0], mmlu_item, SHORT_MC]:
        part = tmpl.render(item, tok).parts[0]
        _check_ids_are_model_input(tok, part)
        _check_cue_last(tok, part)
        last = len(part.input_ids) - 1
        assert part.positions["last"] == last
        keys = [k for _, k in part.pairs]
        assert all(q == last for q, _ in part.pairs)
        assert keys == sorted(keys) and len(set(keys)) == len(keys)
        for k in keys:
            assert "\n" in dec(tok, part, k)
        assert part.positions["eol_fallback"] == [False] * len(item.options)
        # each end-of-line token comes right after (or is) the option's answer token
        for k, opt_tok in zip(keys, part.positions["option_tokens"], strict=True):
            assert k - opt_tok in (0, 1)


def test_eol_fallback_when_chat_template_trims(pronto):
    """A template that trims the message loses the last option's newline: fall back."""
    tok = _tok("smollm2-135m")
    saved = tok.chat_template
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | trim }}"
        "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    try:
        part = get_template("last-option", use_chat_template=True).render(pronto[0], tok)
    finally:
        tok.chat_template = saved
    part = part.parts[0]
    assert part.positions["eol_fallback"] == [False, True]
    assert "\n" in dec(tok, part, part.pairs[0][1])
    assert "False" in dec(tok, part, part.pairs[1][1])


# --------------------------------------------------------------------------------------------
# candidate-appended


def test_candidate_appended_parts(tok, pronto, mmlu_item):
    cases = [
        (pronto[0], get_template("candidate-appended"), ["True", "False"]),
        # long MMLU options share first tokens: append the letters instead
        (mmlu_item, get_template("candidate-appended", baseline_tokens="letters"), list("ABCD")),
    ]
    for item, tmpl, cands in cases:
        prompt = tmpl.render(item, tok)
        n = len(item.options)
        assert len(prompt.parts) == n
        prefix_len = prompt.parts[0].logit_pos + 1
        prefix = prompt.parts[0].input_ids[:prefix_len]
        for i, part in enumerate(prompt.parts):
            _check_ids_are_model_input(tok, part)
            assert part.pair_options == [i] and len(part.pairs) == 1
            assert part.logit_pos + 1 == prefix_len  # same prefix length in every part
            assert part.input_ids[:prefix_len] == prefix  # KV cache of the prefix reusable
            assert dec(tok, part, part.logit_pos).strip().endswith(":")
            assert part.positions["candidate_start"] == part.logit_pos + 1
            q, k = part.pairs[0]
            assert q == len(part.input_ids) - 1
            assert dec(tok, part, q).strip() == cands[i]
            assert part.text.endswith("Answer: " + cands[i])
            _check_statement_key(tok, part, item, k)
            assert part.candidate_ids == ([] if i else prompt.parts[0].candidate_ids)
        # baseline: the first token of each candidate as it appears in its own part
        firsts = [p.input_ids[prefix_len] for p in prompt.parts]
        assert prompt.parts[0].candidate_ids == firsts
        assert [tok.decode([c]).strip() for c in firsts] == cands
        # the prefix is the same text the single-pass templates produce
        single = get_template("answer-statement").render(item, tok).parts[0]
        assert single.input_ids == prefix


def test_candidate_appended_long_options(tok, mmlu_item):
    part = get_template("candidate-appended").render(SHORT_MC, tok).parts[1]
    assert part.text.endswith("Answer: Mars.")
    assert dec(tok, part, part.pairs[0][0]).strip() == "."  # last token of the candidate
    word = get_template("candidate-appended", option_anchor="last_word").render(SHORT_MC, tok)
    wpart = word.parts[1]
    assert "Mars" in dec(tok, wpart, wpart.pairs[0][0])
    with pytest.raises(ValueError, match="share a first token"):
        get_template("candidate-appended").render(mmlu_item, tok)


def test_candidate_appended_true_false_words(tok, pronto):
    prompt = get_template("candidate-appended").render(pronto[1], tok)
    words = [tok.decode([c]).strip() for c in prompt.parts[0].candidate_ids]
    assert words == ["True", "False"]
    assert prompt.parts[0].text.endswith("Answer: True")
    assert prompt.parts[1].text.endswith("Answer: False")


# --------------------------------------------------------------------------------------------
# swapped order, k-shot, chat template, baselines


def test_swapped_order_reports_item_order(tok, pronto, mmlu_item):
    item = pronto[0]
    base = get_template("answer-statement").render(item, tok)
    swapped = get_template("answer-statement", swap_options=True).render(item, tok)
    part = swapped.parts[0]
    assert swapped.option_order == [1, 0] and base.option_order == [0, 1]
    assert "\nA. False\nB. True\nAnswer:" in part.text
    assert part.pair_options == [0, 1]
    assert "True" in dec(tok, part, part.pairs[0][0])
    assert "False" in dec(tok, part, part.pairs[1][0])
    assert part.pairs[0][0] > part.pairs[1][0]  # True is now listed second
    # baseline candidates in item order: "True" is shown as B
    assert [tok.decode([c]).strip() for c in part.candidate_ids] == ["B", "A"]

    perm = (2, 0, 3, 1)
    mc = get_template("last-option", swap_options=perm).render(mmlu_item, tok)
    mpart = mc.parts[0]
    assert mc.option_order == list(perm)
    assert mpart.pair_options == [0, 1, 2, 3]
    keys = [k for _, k in mpart.pairs]
    # display position j shows item option perm[j]: item 2 first, then 0, 3, 1
    assert sorted(range(4), key=lambda i: keys[i]) == list(perm)
    letters = [tok.decode([c]).strip() for c in mpart.candidate_ids]
    assert letters == ["B", "D", "A", "C"]
    with pytest.raises(ValueError, match="permutes 2 options but item"):
        get_template("last-option", swap_options=(1, 0)).render(mmlu_item, tok)


def test_k_shot_positions_point_into_target(tok, pronto):
    target, shots = pronto[0], pronto[1:4]
    zero = get_template("answer-statement").render(target, tok).parts[0]
    tmpl = get_template("answer-statement", k_shot=shots)
    part = tmpl.render(target, tok).parts[0]
    _check_ids_are_model_input(tok, part)
    _check_cue_last(tok, part)
    for shot in shots:
        assert shot.statement in part.text
    assert part.text.count("Answer:") == 4
    assert part.text.endswith(zero.text)
    start = part.positions["target_start"]
    assert target.context.split()[0] in dec(tok, part, start)
    shift = len(part.input_ids) - len(zero.input_ids)
    assert shift > 0
    for (q, k), (q0, k0) in zip(part.pairs, zero.pairs, strict=True):
        assert q >= start and k >= start
        assert (q, k) == (q0 + shift, k0 + shift)
    assert "True" in dec(tok, part, part.pairs[0][0])
    _check_statement_key(tok, part, target, part.pairs[0][1])
    # shot answers are written in the baseline's form
    gold = "A" if shots[0].label == "True" else "B"
    assert f"Answer: {gold}\n\n" in part.text
    words = get_template("candidate-appended", k_shot=shots).render(target, tok)
    assert f"Answer: {shots[0].label}\n\n" in words.parts[0].text


def test_k_shot_rejects_target_among_shots(pronto):
    tok = _tok("smollm2-135m")
    with pytest.raises(ValueError, match="another split"):
        get_template("answer-statement", k_shot=[pronto[0]]).render(pronto[0], tok)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_chat_template_positions(chat_tok, pronto, scheme):
    tok = chat_tok
    item = pronto[2]
    prompt = get_template(scheme, use_chat_template=True).render(item, tok)
    for part in prompt.parts:
        assert part.text.startswith("<|im_start|>")
        _check_ids_are_model_input(tok, part, chat=True)
        assert part.input_ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 3
        assert "<|im_start|>assistant\nAnswer:" in part.text
        assert dec(tok, part, part.logit_pos).strip().endswith(":")
        assert part.positions["target_start"] <= min(min(p) for p in part.pairs)
        for q, k in part.pairs:
            if scheme != "last-option":
                _check_statement_key(tok, part, item, k)
            assert k < q
    first = prompt.parts[0]
    if scheme == "answer-statement":
        assert [dec(tok, first, q).strip() for q, _ in first.pairs] == ["True", "False"]
    if scheme == "last-option":
        assert all("\n" in dec(tok, first, k) for _, k in first.pairs)
        assert first.positions["eol_fallback"] == [False, False]
    if scheme == "candidate-appended":
        assert prompt.parts[1].text.endswith("assistant\nAnswer: False")


def test_chat_template_missing_is_a_clear_error(pronto):
    tok = _tok("gemma3-270m")
    if tok.chat_template:
        pytest.skip("this Gemma tokenizer carries a chat template")
    with pytest.raises(ValueError, match="use_chat_template=False"):
        get_template("answer-statement", use_chat_template=True).render(pronto[0], tok)


def test_gemma_bos_is_kept(pronto):
    tok = _tok("gemma3-270m")
    part = get_template("answer-statement").render(pronto[0], tok).parts[0]
    assert part.input_ids[0] == tok.bos_token_id
    assert part.positions["leading_special"] is True
    assert "<bos>" not in part.text
    assert part.positions["target_start"] == 1


FALLACIES = Item(
    "fallacy-1", "", "Which fallacy infers the antecedent from the consequent?", "A",
    ("Affirming the consequent", "Denying the antecedent", "Begging the question",
     "Straw man"),
)  # fmt: skip


def test_trailing_eos_is_dropped(pronto):
    """A tokenizer set to append EOS would push the cue off the last position: drop it."""
    tok = copy.deepcopy(_tok("smollm2-135m"))  # small vocabulary: cheap to copy
    tok.add_eos_token = True
    if tok("Answer:")["input_ids"][-1] != tok.eos_token_id:
        pytest.skip("this tokenizer ignores add_eos_token")
    part = get_template("last-option").render(pronto[0], tok).parts[0]
    assert part.input_ids == tok(part.text)["input_ids"][:-1]
    _check_cue_last(tok, part)
    assert all("\n" in dec(tok, part, k) for _, k in part.pairs)


def test_baseline_words_and_multi_token(tok, mmlu_item):
    part = get_template("last-option", baseline_tokens="words").render(FALLACIES, tok).parts[0]
    assert len(set(part.candidate_ids)) == 4
    for cid, option in zip(part.candidate_ids, FALLACIES.options, strict=True):
        assert option.startswith(tok.decode([cid]).strip())
    assert all(part.positions["candidate_multi_token"])  # multi-token options: first token used
    # real MMLU options that start alike cannot be told apart by their first token
    with pytest.raises(ValueError, match="share a first token"):
        get_template("last-option", baseline_tokens="words").render(mmlu_item, tok)
    # letters keep them apart
    ok = get_template("last-option").render(mmlu_item, tok).parts[0]
    assert [tok.decode([c]).strip() for c in ok.candidate_ids] == list("ABCD")
    assert ok.positions["candidate_multi_token"] == [False] * 4


def test_plain_option_style(tok, pronto):
    tmpl = get_template("answer-statement", option_style="plain")
    part = tmpl.render(pronto[0], tok).parts[0]
    assert "\nTrue\nFalse\nAnswer:" in part.text
    assert [tok.decode([c]).strip() for c in part.candidate_ids] == ["True", "False"]
    assert "True" in dec(tok, part, part.pairs[0][0])
    assert tmpl.describe()["baseline_tokens"] == "words"


# --------------------------------------------------------------------------------------------
# registry, describe, errors


def test_registry_and_describe(pronto):
    assert {"answer-statement", "last-option", "candidate-appended"} <= set(TEMPLATES)
    listing = available_templates()
    assert listing["last-option"]["scheme"] == "last-option"
    tmpl = get_template(
        "answer-statement", k_shot=pronto[1:3], swap_options=True, instruction="Decide."
    )
    assert isinstance(tmpl, Template) and isinstance(tmpl.k_shot, tuple)
    d = tmpl.describe()
    json.dumps(d)
    assert d["name"] == "answer-statement" and d["k"] == 2 and d["swap_options"] is True
    assert [s["id"] for s in d["k_shot"]] == [pronto[1].id, pronto[2].id]
    assert d["instruction"] == "Decide." and d["baseline_tokens"] == "letters"
    for key in ("option_style", "answer_cue", "use_chat_template", "statement_anchor"):
        assert key in d
    assert get_template("answer-statement", swap_options=[1, 0]).describe()["swap_options"] == [
        1,
        0,
    ]
    with pytest.raises(FrozenInstanceError):
        tmpl.name = "x"  # type: ignore[misc]
    assert get_template(tmpl) is tmpl


def test_render_batch(pronto):
    tok = _tok("smollm2-135m")
    prompts = render_batch(pronto[:3], tok, "last-option")
    assert [p.item_id for p in prompts] == [i.id for i in pronto[:3]]
    tmpl = get_template("answer-statement", instruction="Decide whether the statement is true.")
    prompts = render_batch(pronto[:2], tok, tmpl)
    assert prompts[0].parts[0].text.startswith("Decide whether the statement is true.\n\n")


def test_errors(pronto):
    tok = _tok("smollm2-135m")
    empty = Item("empty-1", "Some context.", "  ", "True")
    with pytest.raises(ValueError, match="empty-1"):
        get_template("answer-statement").render(empty, tok)

    class SlowTokenizer:
        is_fast = False

    with pytest.raises(ValueError, match="fast tokenizer"):
        get_template("answer-statement").render(pronto[0], SlowTokenizer())
    with pytest.raises(ValueError, match="unknown template"):
        get_template("no-such-template")
    with pytest.raises(ValueError, match="unknown template setting"):
        get_template("answer-statement", swap=True)
    with pytest.raises(ValueError, match="permutation"):
        get_template("answer-statement", swap_options=(0, 0))
    with pytest.raises(ValueError, match="option_style='letters'"):
        get_template("answer-statement", option_style="plain", baseline_tokens="letters")
    with pytest.raises(ValueError, match="scheme"):
        Template(name="x", scheme="middle-token")
    with pytest.raises(ValueError, match="whitespace"):
        get_template("answer-statement", answer_cue="Answer: ")


def test_template_settings_are_declared_once():
    """The recorded settings are the template's own fields plus the two derived ones, and
    ``describe()`` is that model's dump (what run.json and profile.json hold)."""
    import dataclasses

    from qkscore.prompts import TemplateSettings, template_from_description
    from qkscore.schemas import RunMeta

    own = {f.name for f in dataclasses.fields(Template)}
    assert set(TemplateSettings.model_fields) == own | {"format_version", "k"}
    assert RunMeta.model_fields["template"].annotation is TemplateSettings
    tmpl = get_template("last-option", swap_options=(1, 0), instruction="Decide.")
    assert tmpl.describe() == tmpl.settings().model_dump(mode="json")
    assert TemplateSettings.model_validate(tmpl.describe()) == tmpl.settings()
    broken = {**tmpl.describe(), "answer_cue": 3}
    with pytest.raises(ValueError, match="answer_cue"):
        template_from_description(broken)
