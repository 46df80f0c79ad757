"""QK-score extraction against an independent full-matrix computation.

Every supported family is checked on a tiny random model (float32) and SmolLM2 on real
ProntoQA prompts: scores for both ``rope`` settings equal ``q @ k.T`` computed from the full
projection outputs (rope=False) or the full rotated q and k recorded inside the family's own
eager attention (rope=True); attention weights equal ``output_attentions``; padded batches equal
one prompt at a time; ``max_layer`` stops early; candidate log-probs equal the full LM head.
"""

from __future__ import annotations

import json
from functools import cache

import numpy as np
import pytest
import torch

from qkscore.extraction import (
    CAPTURE_EAGER,
    CAPTURE_SDPA,
    encode_prefix,
    encode_prefixes,
    extract,
    qk_scores,
)
from qkscore.models.adapters import layer_modules
from tiny_models import (
    DEVICE,
    FAMILIES,
    SDPA_UNSUPPORTED,
    VOCAB,
    assert_rel_close,
    attentions_at_pairs,
    attn_implementation,
    build_tiny,
    few_threads,
    naive_prerope_qk,
    naive_rotated_qk,
    naive_scores,
    pad_batch,
    tiny_config,
    wrap,
)

FAMILY_IMPLS = [
    pytest.param(family, impl, id=f"{family}-{impl}")
    for family in FAMILIES
    for impl in ("sdpa", "eager")
    if not (impl == "sdpa" and family in SDPA_UNSUPPORTED)
]
ROPE = [pytest.param(False, id="prerope"), pytest.param(True, id="rope")]
SIDES = ["left", "right"]

# three prompts of different lengths (longer than the sliding window of 5), pairs in each
# prompt's own coordinates: self pairs, first token, far and near keys
_gen = torch.Generator().manual_seed(1234)
PROMPTS = [torch.randint(3, VOCAB, (n,), generator=_gen).tolist() for n in (12, 7, 9)]
PAIRS = [
    [(11, 3), (11, 11), (7, 0), (5, 2), (11, 10), (9, 8)],
    [(6, 0), (6, 6), (3, 1)],
    [(8, 2), (8, 7), (4, 4), (2, 0), (8, 0)],
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with few_threads():
        yield


@cache
def naive_reference(family: str) -> dict[str, list[np.ndarray]]:
    """Per prompt, alone: naive pre-rope and rotated scores and eager attention weights."""
    lm = build_tiny(family, "eager")
    out: dict[str, list[np.ndarray]] = {"prerope": [], "rope": [], "attention": []}
    for prompt, pairs in zip(PROMPTS, PAIRS):
        ids = torch.tensor([prompt])
        out["prerope"].append(naive_scores(naive_prerope_qk(family, lm.model, ids, None), [pairs]))
        out["rope"].append(naive_scores(naive_rotated_qk(family, lm.model, ids, None), [pairs]))
        with torch.no_grad():
            attentions = lm.model(input_ids=ids.to(lm.device), output_attentions=True).attentions
        out["attention"].append(attentions_at_pairs(attentions, [pairs]))
    return out


def _rows(result: np.ndarray, row: int) -> np.ndarray:
    """One row of a batched ``[B, L, H, P]`` result, trimmed to that row's pairs."""
    return result[row : row + 1, ..., : len(PAIRS[row])]


# --------------------------------------------------------------------------- tiny families


@pytest.mark.parametrize("rope", ROPE)
@pytest.mark.parametrize(("family", "impl"), FAMILY_IMPLS)
def test_scores_match_naive_single_prompt(family, impl, rope):
    lm = build_tiny(family, impl)
    ref = naive_reference(family)["rope" if rope else "prerope"]
    for row, (prompt, pairs) in enumerate(zip(PROMPTS, PAIRS)):
        scores = qk_scores(lm, torch.tensor([prompt]), None, [pairs], rope=rope)
        assert scores.shape == (1, lm.n_layers, lm.n_heads, len(pairs))
        assert scores.dtype == np.float32
        assert_rel_close(scores, ref[row], what=f"{family} prompt {row}")


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("rope", ROPE)
@pytest.mark.parametrize(("family", "impl"), FAMILY_IMPLS)
def test_padded_batch_matches_naive_and_single(family, impl, rope, side):
    lm = build_tiny(family, impl)
    ref = naive_reference(family)["rope" if rope else "prerope"]
    ids, mask, _ = pad_batch(PROMPTS, side)
    batched = qk_scores(lm, ids, mask, PAIRS, rope=rope)
    assert batched.shape == (3, lm.n_layers, lm.n_heads, max(len(p) for p in PAIRS))
    for row, (prompt, pairs) in enumerate(zip(PROMPTS, PAIRS)):
        assert np.isnan(batched[row, ..., len(pairs) :]).all(), "unused pair slots must be NaN"
        alone = qk_scores(lm, torch.tensor([prompt]), None, [pairs], rope=rope)
        assert_rel_close(_rows(batched, row), alone, what=f"{family} row {row} vs alone")
        assert_rel_close(_rows(batched, row), ref[row], what=f"{family} row {row} vs naive")


def test_rope_settings_differ_where_there_is_rope():
    """Guards the naive check itself: rotated and pre-rotary scores are not the same numbers
    (except GPT-2, which has learned absolute positions and no rotary embedding)."""
    for family in FAMILIES:
        ref = naive_reference(family)
        same = np.allclose(ref["rope"][0], ref["prerope"][0])
        assert same == (family == "gpt2"), family


@pytest.mark.parametrize("rope", ROPE)
@pytest.mark.parametrize(("family", "impl"), FAMILY_IMPLS)
def test_attention_weights_match_output_attentions(family, impl, rope):
    """Post-softmax weights at the pairs equal eager ``output_attentions`` (with Gemma2's
    logit softcapping and the sliding-window layers of Mistral/Qwen/Gemma), alone and padded."""
    lm = build_tiny(family, impl)
    ref = naive_reference(family)["attention"]
    for row, (prompt, pairs) in enumerate(zip(PROMPTS, PAIRS)):
        got = extract(lm, torch.tensor([prompt]), None, [pairs], rope=rope, attention_weights=True)
        assert_rel_close(got.attention, ref[row], what=f"{family} prompt {row} attention")
    for side in SIDES:
        ids, mask, _ = pad_batch(PROMPTS, side)
        got = extract(lm, ids, mask, PAIRS, rope=rope, attention_weights=True)
        for row in range(len(PROMPTS)):
            assert_rel_close(_rows(got.attention, row), ref[row], what=f"{family} {side} {row}")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_max_layer_stops_early_and_keeps_scores(family):
    lm = build_tiny(family)
    ids, mask, _ = pad_batch(PROMPTS, "left")
    full = extract(lm, ids, mask, PAIRS, rope=True).scores
    last_layer = layer_modules(lm.model, lm.adapter)[-1]
    calls = []
    handle = last_layer.register_forward_hook(lambda *_: calls.append(1))
    try:
        for rope in (False, True):
            early = extract(lm, ids, mask, PAIRS, rope=rope, max_layer=0).scores
            assert early.shape == (3, 1, lm.n_heads, full.shape[-1])
            reference = full if rope else extract(lm, ids, mask, PAIRS).scores
            assert_rel_close(early, reference[:, :1], what=f"{family} max_layer=0")
    finally:
        handle.remove()
    assert len(calls) == 1, "layers after max_layer must not run"  # only the rope=False full pass
    with pytest.raises(ValueError, match="max_layer=2 outside 0..1"):
        extract(lm, ids, mask, PAIRS, max_layer=2)
    with pytest.raises(ValueError, match="candidate logits need the full pass"):
        extract(lm, ids, mask, PAIRS, max_layer=0, candidate_ids=[5, 6])


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_hidden_states_at_query_positions_equal_output_hidden_states(family, side):
    """The probe's input is the residual stream leaving a layer (= entering the next), read at
    each pair's query token, whatever the padding."""
    lm = build_tiny(family)
    ids, mask, offsets = pad_batch(PROMPTS, side)
    out = extract(lm, ids, mask, PAIRS, hidden_layers=[0, lm.n_layers - 1])
    assert out.hidden.shape == (3, 2, max(len(p) for p in PAIRS), lm.d_model)
    assert out.hidden.dtype == np.float16
    with torch.inference_mode():
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # as extract passes them
        states = lm.model(
            input_ids=ids, attention_mask=mask, position_ids=positions, output_hidden_states=True
        )
    after_first = states.hidden_states[1].float().numpy()
    for row, pairs in enumerate(PAIRS):
        for j, (q, _k) in enumerate(pairs):
            expected = after_first[row, offsets[row] + q]
            np.testing.assert_allclose(out.hidden[row, 0, j], expected, rtol=2e-3, atol=2e-3)
        assert np.isfinite(out.hidden[row, 1, : len(pairs)]).all()
        assert np.isnan(out.hidden[row, :, len(pairs) :]).all(), "unused pair slots are NaN"
    scores_alone = extract(lm, ids, mask, PAIRS).scores
    np.testing.assert_array_equal(out.scores, scores_alone)  # the capture changes nothing
    with pytest.raises(ValueError, match="hidden layer 1 outside the layers run, 0..0"):
        extract(lm, ids, mask, PAIRS, max_layer=0, hidden_layers=[1])


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_candidate_logprobs_equal_full_lm_head(family, side):
    lm = build_tiny(family)
    candidates = [5, 17, 42, VOCAB - 1]
    positions = [10, 6, 3]  # prompt coordinates
    expected_last, expected_at = [], []
    with torch.no_grad():
        for prompt, pos in zip(PROMPTS, positions):
            logits = lm.model(input_ids=torch.tensor([prompt], device=lm.device)).logits[0]
            logprobs = torch.log_softmax(logits.float(), -1).cpu()
            expected_last.append(logprobs[-1, candidates].numpy())
            expected_at.append(logprobs[pos, candidates].numpy())
    ids, mask, _ = pad_batch(PROMPTS, side)
    got = extract(lm, ids, mask, PAIRS, candidate_ids=candidates).candidate_logprobs
    assert got.shape == (3, len(candidates))
    assert_rel_close(got, np.stack(expected_last), what=f"{family} last-token log-probs")
    as_numpy = extract(lm, ids, mask, PAIRS, candidate_ids=np.array(candidates))
    np.testing.assert_array_equal(as_numpy.candidate_logprobs, got)
    per_row = [candidates, candidates[::-1], candidates[1:] + candidates[:1]]
    got = extract(
        lm, ids, mask, PAIRS, rope=True, logit_positions=positions, candidate_ids=per_row
    ).candidate_logprobs
    want = np.stack([e[[candidates.index(c) for c in r]] for e, r in zip(expected_at, per_row)])
    assert_rel_close(got, want, what=f"{family} log-probs at given positions")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_shared_prefix_cache_equals_full_prompts(family):
    """Suffixes run on a prefix's cache give the scores and log-probs of the whole prompts."""
    lm = build_tiny(family)
    prefix = PROMPTS[0][:6]  # longer than the sliding window of 5
    suffixes = [PROMPTS[1][:5], PROMPTS[2][:3], PROMPTS[1][2:6]]
    suffix_pairs = [[(4, 0), (4, 4), (2, 1)], [(2, 0), (2, 2)], [(3, 1), (3, 3), (1, 0)]]
    logit_pos = [3, 2, 3]
    full = [prefix + s for s in suffixes]
    n = len(prefix)
    ids, mask, _ = pad_batch(full, "left")
    want = extract(
        lm,
        ids,
        mask,
        [[(q + n, k + n) for q, k in row] for row in suffix_pairs],
        logit_positions=[p + n for p in logit_pos],
        candidate_ids=[5, 17],
    )
    ids, mask, _ = pad_batch(suffixes, "right")
    got = extract(
        lm,
        ids,
        mask,
        suffix_pairs,
        logit_positions=logit_pos,
        candidate_ids=[5, 17],
        prefix=encode_prefix(lm, prefix),
    )
    assert_rel_close(got.scores, want.scores, what=f"{family} prefix-cached scores")
    assert_rel_close(
        got.candidate_logprobs, want.candidate_logprobs, what=f"{family} prefix-cached log-probs"
    )
    early = extract(
        lm, ids, mask, suffix_pairs, max_layer=1, prefix=encode_prefix(lm, prefix, max_layer=1)
    )
    assert_rel_close(early.scores, want.scores[:, :2], what=f"{family} prefix, stopped early")
    with pytest.raises(ValueError, match="pre-rotary"):
        extract(lm, ids, mask, suffix_pairs, rope=True, prefix=encode_prefix(lm, prefix))
    ids, mask, _ = pad_batch(suffixes, "left")
    with pytest.raises(ValueError, match="pad the batch on the right"):
        extract(lm, ids, mask, suffix_pairs, prefix=encode_prefix(lm, prefix))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_several_prefixes_in_one_pass_equal_full_prompts(family):
    """Prefixes of different lengths run in one left-padded pass, and rows continuing any of
    them in one batch, give the scores and log-probs of the whole prompts (a server's batch of
    several chains, each sharing its own context)."""
    lm = build_tiny(family)
    prefixes = [PROMPTS[0][:6], PROMPTS[2][:9], PROMPTS[1][:7]]  # past the window of 5
    rows = [0, 1, 0, 2, 1]
    suffixes = [PROMPTS[1][:5], PROMPTS[2][:3], PROMPTS[0][2:6], PROMPTS[0][:4], PROMPTS[1][1:7]]
    suffix_pairs = [[(4, 0), (4, 4)], [(2, 0), (2, 2), (1, 1)], [(3, 1), (1, 0)], [(3, 3)],
                    [(5, 0), (5, 4)]]  # fmt: skip
    logit_pos = [3, 2, 3, 3, 5]
    full = [prefixes[r] + s for r, s in zip(rows, suffixes)]
    shift = [len(prefixes[r]) for r in rows]
    ids, mask, _ = pad_batch(full, "left")
    want = extract(
        lm,
        ids,
        mask,
        [[(q + n, k + n) for q, k in row] for row, n in zip(suffix_pairs, shift)],
        logit_positions=[p + n for p, n in zip(logit_pos, shift)],
        candidate_ids=[5, 17],
    )
    ids, mask, _ = pad_batch(suffixes, "right")
    prefix = encode_prefixes(lm, prefixes)
    got = extract(lm, ids, mask, suffix_pairs, logit_positions=logit_pos, candidate_ids=[5, 17],
                  prefix=prefix, prefix_rows=rows)  # fmt: skip
    assert_rel_close(got.scores, want.scores, what=f"{family} several prefixes, scores")
    assert_rel_close(got.candidate_logprobs, want.candidate_logprobs, what=f"{family} log-probs")
    early = extract(lm, ids, mask, suffix_pairs, max_layer=1, prefix_rows=rows,
                    prefix=encode_prefixes(lm, prefixes, max_layer=1))  # fmt: skip
    assert_rel_close(early.scores, want.scores[:, :2], what=f"{family} prefixes, stopped early")
    with pytest.raises(ValueError, match="prefix_rows"):
        extract(lm, ids, mask, suffix_pairs, prefix=prefix)


def test_gpt2_without_rotary_gives_same_scores_for_both_settings():
    lm = build_tiny("gpt2")
    ids, mask, _ = pad_batch(PROMPTS, "left")
    assert_rel_close(
        qk_scores(lm, ids, mask, PAIRS, rope=True), qk_scores(lm, ids, mask, PAIRS, rope=False)
    )


def test_grouped_query_heads_share_their_kv_head():
    """Query head h reads KV head h // (n_heads / n_kv_heads): zeroing KV head 1's key
    projection zeroes the pre-rotary scores of query heads 2 and 3 only (h % n_kv_heads would
    zero heads 1 and 3)."""
    lm = build_tiny("llama")
    assert (lm.layout.n_heads, lm.layout.n_kv_heads, lm.layout.head_dim) == (4, 2, 24)
    assert lm.layout.kv_index().tolist() == [0, 0, 1, 1]
    with torch.no_grad():
        for layer in layer_modules(lm.model, lm.adapter):
            layer.self_attn.k_proj.weight[24:48] = 0
    scores = qk_scores(lm, torch.tensor([PROMPTS[0]]), None, [PAIRS[0]])
    assert np.all(scores[:, :, 2:] == 0)
    assert np.all(np.abs(scores[:, :, :2]) > 0)


def test_extraction_leaves_the_model_as_it_was():
    lm = build_tiny("qwen3")
    ids, mask, _ = pad_batch(PROMPTS, "left")
    ids, mask = ids.to(lm.device), mask.to(lm.device)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        before = lm.model(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits
    extract(lm, ids, mask, PAIRS, rope=True, attention_weights=True, candidate_ids=[5])
    extract(lm, ids, mask, PAIRS, rope=False, max_layer=0)
    assert lm.model.config._attn_implementation in ("sdpa", CAPTURE_SDPA, CAPTURE_EAGER)
    for module in lm.model.modules():
        assert not module._forward_hooks, f"hook left on {type(module).__name__}"
        assert "_qkscore_capture" not in module.__dict__
    with torch.no_grad():
        after = lm.model(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits
    mask_b = mask.bool()
    torch.testing.assert_close(after[mask_b], before[mask_b], rtol=1e-5, atol=1e-5)


def _tiny_gemma3_multimodal(attn_implementation: str):
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, SiglipVisionConfig

    vision = SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=28,
        patch_size=14,
    )
    config = Gemma3Config(
        text_config=tiny_config("gemma3", attn_implementation).to_dict(),
        vision_config=vision.to_dict(),
        mm_tokens_per_image=4,
        image_token_index=VOCAB - 1,
        boi_token_index=VOCAB - 2,
        eoi_token_index=VOCAB - 3,
    )
    torch.manual_seed(0)
    model = Gemma3ForConditionalGeneration._from_config(
        config, attn_implementation=attn_implementation
    )
    return wrap(model.to(DEVICE).eval(), "tiny-gemma3-multimodal")


def test_gemma3_multimodal_checkpoint():
    """A ``model_type='gemma3'`` checkpoint loads as Gemma3ForConditionalGeneration, whose text
    layers sit under ``model.language_model``: text prompts extract as for Gemma3ForCausalLM."""
    eager = _tiny_gemma3_multimodal("eager")
    lm = _tiny_gemma3_multimodal("sdpa")
    assert lm.adapter.family == "gemma3"
    assert lm.layout == build_tiny("gemma3").layout
    naive = {False: [], True: []}
    for prompt, pairs in zip(PROMPTS, PAIRS):
        ids = torch.tensor([prompt])
        naive[False].append(
            naive_scores(naive_prerope_qk("gemma3", eager.model, ids, None), [pairs])
        )
        naive[True].append(
            naive_scores(naive_rotated_qk("gemma3", eager.model, ids, None), [pairs])
        )
    ids, mask, _ = pad_batch(PROMPTS, "left")
    for rope in (False, True):
        batched = qk_scores(lm, ids, mask, PAIRS, rope=rope)
        for row in range(len(PROMPTS)):
            assert_rel_close(_rows(batched, row), naive[rope][row], what=f"rope={rope} row {row}")


# --------------------------------------------------------------------------- input errors


def test_pair_outside_prompt_names_row_pair_and_position():
    lm = build_tiny("llama")
    ids, mask, _ = pad_batch(PROMPTS, "left")
    bad = [list(p) for p in PAIRS]
    bad[1] = [(6, 0), (6, 7)]  # row 1 has 7 tokens (0..6) although the padded width is 12
    with pytest.raises(IndexError, match=r"row 1, pair 1: key position 7 is outside the prompt"):
        qk_scores(lm, ids, mask, bad)
    bad[1] = [(-1, 0)]
    with pytest.raises(IndexError, match=r"row 1, pair 0: query position -1 is outside"):
        qk_scores(lm, ids, mask, bad)
    with pytest.raises(ValueError, match="pairs has 2 rows but input_ids has 3"):
        qk_scores(lm, ids, mask, PAIRS[:2])
    with pytest.raises(ValueError, match="no \\(query, key\\) pairs"):
        qk_scores(lm, ids, mask, [[], [], []])


def test_logit_position_outside_prompt_is_refused():
    """A logit position must lie in its own prompt: -1 or one past the end would otherwise
    read a padding row's (or another token's) hidden state without complaint."""
    lm = build_tiny("llama")
    ids, mask, _ = pad_batch(PROMPTS, "left")
    for bad in ([11, -1, 8], [11, 7, 8]):
        with pytest.raises(IndexError, match=r"row 1: logit position -?\d+ is outside the prompt"):
            extract(lm, ids, mask, PAIRS, logit_positions=bad, candidate_ids=[5])
    with pytest.raises(ValueError, match="logit_positions has 2 rows but input_ids has 3"):
        extract(lm, ids, mask, PAIRS, logit_positions=[1, 2], candidate_ids=[5])


# --------------------------------------------------------------------------- SmolLM2 (real)


def _prontoqa_prompts(shared_data, tokenizer, n: int = 3) -> list[list[int]]:
    path = shared_data / "prontoqa" / "truefalse_0shot" / "1hop_0shot_random.json"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    data = json.loads(path.read_text())
    prompts = []
    for key in list(data)[:n]:
        ex = data[key]["test_example"]
        text = f"{ex['question']} {ex['query']}\nAnswer:"
        prompts.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    return prompts


def _real_pairs(prompts: list[list[int]]) -> list[list[tuple[int, int]]]:
    out = []
    for p in prompts:
        n = len(p)
        out.append([(n - 1, 0), (n - 1, n // 2), (n - 1, n - 1), (n - 2, n - 9), (n // 2, 3)])
    return out


def _check_real_model(lm, prompts, family: str, batch_sides=SIDES) -> None:
    """Naive full-matrix scores per prompt, then extraction alone and in padded batches."""
    pairs = _real_pairs(prompts)
    model = lm.model
    naive = {False: [], True: []}
    with attn_implementation(model, "eager"):
        for prompt, row_pairs in zip(prompts, pairs):
            ids = torch.tensor([prompt])
            pre = naive_prerope_qk(family, model, ids, None)
            naive[False].append(naive_scores(pre, [row_pairs]))
            naive[True].append(
                naive_scores(naive_rotated_qk(family, model, ids, None), [row_pairs])
            )
    assert not np.allclose(naive[True][0], naive[False][0])
    pad = lm.tokenizer.pad_token_id
    for rope in (False, True):
        alone = []
        for row, (prompt, row_pairs) in enumerate(zip(prompts, pairs)):
            alone.append(qk_scores(lm, torch.tensor([prompt]), None, [row_pairs], rope=rope))
            assert_rel_close(alone[-1], naive[rope][row], what=f"rope={rope} prompt {row}")
        for side in batch_sides:
            ids, mask, _ = pad_batch(prompts, side, pad_id=pad)
            batched = qk_scores(lm, ids, mask, pairs, rope=rope)
            for row in range(len(prompts)):
                what = f"rope={rope} {side} row {row}"
                assert_rel_close(batched[row : row + 1], alone[row], what=what + " vs alone")
                assert_rel_close(batched[row : row + 1], naive[rope][row], what=what + " vs naive")


def test_smollm2_matches_naive_alone_and_padded(smollm2, shared_data):
    assert smollm2.dtype == torch.float32
    prompts = _prontoqa_prompts(shared_data, smollm2.tokenizer)
    assert len({len(p) for p in prompts}) > 1, "prompts of different lengths exercise padding"
    _check_real_model(smollm2, prompts, "llama")


def test_smollm2_candidate_logprobs(smollm2, shared_data):
    tok = smollm2.tokenizer
    prompts = _prontoqa_prompts(shared_data, tok, n=2)
    candidates = [
        tok(" True", add_special_tokens=False)["input_ids"][0],
        tok(" False", add_special_tokens=False)["input_ids"][0],
    ]
    ids, mask, _ = pad_batch(prompts, "left", pad_id=tok.pad_token_id)
    got = extract(smollm2, ids, mask, _real_pairs(prompts), candidate_ids=candidates)
    with torch.no_grad():
        want = [
            torch.log_softmax(smollm2.model(input_ids=torch.tensor([p])).logits[0, -1], -1)[
                candidates
            ].numpy()
            for p in prompts
        ]
    assert_rel_close(got.candidate_logprobs, np.stack(want), what="SmolLM2 log-probs")


# --------------------------------------------------------------------------- other real models


def _load_real(alias: str):
    from qkscore.models import load_model
    from qkscore.models.aliases import ALIASES

    if not ALIASES[alias].installed() and not ALIASES[alias].is_converted():
        pytest.skip(f"{alias} is not installed: {ALIASES[alias].install_command}")
    return load_model(alias, dtype="float32", device="cpu")


@pytest.mark.slow
def test_qwen25_coder_05b_matches_naive(shared_data):
    lm = _load_real("qwen2.5-coder-0.5b")
    assert lm.adapter.family == "qwen2"
    prompts = _prontoqa_prompts(shared_data, lm.tokenizer)
    _check_real_model(lm, prompts, "qwen2")


@pytest.mark.slow
def test_gemma3_270m_matches_naive(shared_data):
    lm = _load_real("gemma3-270m")
    assert lm.adapter.family == "gemma3"
    prompts = _prontoqa_prompts(shared_data, lm.tokenizer)
    _check_real_model(lm, prompts, "gemma3")
