"""The standard-form DTM merge against a plain per-token loop (spec step 6)."""

from __future__ import annotations

import math

import pytest
import torch

from infomerge.compress.merge import assign_to_anchors, merge_to_anchors


def _loop_merge(x, member, anchor_index, anchor_valid, mu):
    """Independent computation: Python loops over tokens, math.* cosine."""
    m, d = x.shape
    anchors = [int(a) for a, v in zip(anchor_index, anchor_valid) if v]
    slots = [k for k, v in enumerate(anchor_valid) if v]

    def cos(a, b):
        return float(a @ b) / (math.sqrt(float(a @ a)) * math.sqrt(float(b @ b)))

    out = torch.zeros(len(anchor_index), d, dtype=torch.float64)
    groups = {k: [] for k in slots}
    for i in range(m):
        if not member[i] or i in anchors:
            continue
        best, best_k = -2.0, None
        for k in slots:
            c = cos(x[i], x[int(anchor_index[k])])
            if c > best:  # strict: the lower slot wins ties
                best, best_k = c, k
        groups[best_k].append(i)
    for k in range(len(anchor_index)):
        a = x[int(anchor_index[k])].double()
        if k not in groups:
            out[k] = a
            continue
        n = len(groups[k])
        mean = (a + sum((x[i].double() for i in groups[k]), torch.zeros(d, dtype=torch.float64))) / (n + 1)
        w = max(1.0 / (n + 1), mu)
        out[k] = w * a + (1 - w) * mean
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_merge_matches_loop(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(40, 8, generator=g, dtype=torch.float64)
    member = (torch.rand(40, generator=g) > 0.3).double()
    anchor_index = torch.tensor([3, 9, 17, 25, 31])
    member[anchor_index] = 1.0
    anchor_valid = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0])
    got = merge_to_anchors(x, member, anchor_index, anchor_valid, 0.6)
    ref = _loop_merge(x, member, anchor_index, anchor_valid, 0.6)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)


def test_merge_batched_equals_per_item():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 30, 6, generator=g)
    member = torch.ones(3, 30)
    idx = torch.stack([torch.randperm(30, generator=g)[:4] for _ in range(3)])
    valid = torch.tensor([[1.0, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    batched = merge_to_anchors(x, member, idx, valid, 0.6)
    for b in range(3):
        torch.testing.assert_close(batched[b], merge_to_anchors(x[b], member[b], idx[b], valid[b], 0.6))


def test_lonely_anchor_keeps_itself_and_weight_floor():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 2.0], [0.1, 1.0]])
    member = torch.ones(4)
    # anchor 0 gets nothing (w = 1); anchor 1 gets tokens 2 and 3 (n = 2, w = max(1/3, 0.6))
    out = merge_to_anchors(x, member, torch.tensor([0, 1]), torch.tensor([1.0, 1.0]), 0.6)
    torch.testing.assert_close(out[0], x[0])
    mean = (x[1] + x[2] + x[3]) / 3
    torch.testing.assert_close(out[1], 0.6 * x[1] + 0.4 * mean)
    # with mu below 1/(n+1) the floor 1/(n+1) applies
    out = merge_to_anchors(x, member, torch.tensor([0, 1]), torch.tensor([1.0, 1.0]), 0.1)
    torch.testing.assert_close(out[1], (1 / 3) * x[1] + (2 / 3) * mean)


def test_anchor_owns_its_slot_even_when_parallel_to_earlier_anchor():
    x = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.1]])
    slot = assign_to_anchors(x, torch.tensor([0, 1]), torch.tensor([1.0, 1.0]))
    assert slot.tolist()[:2] == [0, 1]


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="disagree"):
        merge_to_anchors(torch.zeros(4, 2), torch.ones(5), torch.tensor([0]), torch.tensor([1.0]), 0.6)
