"""Batched scoring: prefix grouping rules, and shared-prefix scans equal full-prompt scans."""

from __future__ import annotations

import numpy as np
import pytest

from qkscore.data import load_items
from qkscore.prompts import PromptPart, get_template
from qkscore.scoring import prefix_groups, score_prompts


def _part(ids: list[int], first_read: int | None = None) -> PromptPart:
    read = len(ids) - 1 if first_read is None else first_read
    return PromptPart("", ids, [(len(ids) - 1, read)], [0], len(ids) - 1, [], {})


def test_prefix_groups_by_context_not_by_shared_instruction() -> None:
    instruction = list(range(100, 110))  # shared by every part, too short to group on
    ctx_a, ctx_b = list(range(200, 250)), list(range(300, 340))
    parts = [
        _part(instruction + ctx_a + [1, 2, 3]),
        _part(instruction + ctx_b + [4, 5]),
        _part(instruction + ctx_a + [1, 2, 9, 9]),  # shares two statement tokens with part 0
        _part(instruction + ctx_a + [7]),
        _part(instruction + ctx_b + [6, 6, 6]),
        _part([9] * 70),  # alone
    ]
    groups = prefix_groups(parts)
    by_members = {tuple(sorted(m)): n for m, n in groups}
    assert by_members[(0, 2, 3)] == len(instruction) + len(ctx_a)
    assert by_members[(1, 4)] == len(instruction) + len(ctx_b)
    assert by_members[(5,)] == 0
    assert sorted(j for m, _ in groups for j in m) == list(range(len(parts)))


def test_prefix_stops_before_the_first_position_read() -> None:
    ctx = list(range(200, 260))
    parts = [_part(ctx + [1, 2, 3], first_read=40), _part(ctx + [4, 5])]
    assert prefix_groups(parts) == [([0, 1], 40)]
    # a prefix cut below min_tokens is not worth a separate pass: both parts run alone
    parts = [_part(ctx + [1, 2, 3], first_read=10), _part(ctx + [4, 5])]
    assert sorted(prefix_groups(parts)) == [([0], 0), ([1], 0)]


@pytest.mark.parametrize("template", ["answer-statement", "candidate-appended"])
def test_shared_prefix_scan_equals_full_scan(smollm2, shared_data, template) -> None:
    """Real PARARULE-Plus questions (8-10 per context) through SmolLM2, float32."""
    path = shared_data / "pararule_plus" / "Depth2" / "PARARULE_Plus_Depth2_shuffled_dev.jsonl"
    items = load_items(f"pararule-plus:{path}")[:12]  # one whole context and part of another
    prompts = [get_template(template).render(item, smollm2.tokenizer) for item in items]
    groups = prefix_groups([part for p in prompts for part in p.parts])
    assert max(len(m) for m, n in groups if n) >= 8  # the first context's questions share it
    full = score_prompts(smollm2, prompts, batch_size=4)
    shared = score_prompts(smollm2, prompts, batch_size=4, share_prefix=True)
    scale = np.nanmax(np.abs(full.scores))
    np.testing.assert_allclose(shared.scores, full.scores, rtol=1e-4, atol=1e-4 * scale)
    np.testing.assert_allclose(shared.baseline, full.baseline, rtol=1e-4, atol=1e-3)
    with pytest.raises(ValueError, match="pre-rotary"):
        score_prompts(smollm2, prompts[:2], rope=True, share_prefix=True)
