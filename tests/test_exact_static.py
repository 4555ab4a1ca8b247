"""TFD static candidates decided identically in eager torch and ONNX Runtime (issue 15, the 7B fp16
compress graph that kept 2 of 594 tokens differently).

- the static candidates of near-tied features (tokens that barely change across frames, fp16-rounded,
  D = 1024: TFD ~1e-4 with gaps below the matmul form's rounding) against a float64 loop of the
  spec's TFD, and the exported graph's static mask equal to eager's on several inputs.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from infomerge.compress.config import InfoMergeConfig
from infomerge.compress.fixed_budget import FixedBudgetCompressor

L, N, D = 16, 24, 1024


def _export(module, example, path, input_names, output_names):
    torch.onnx.export(
        module, example, str(path), input_names=input_names, output_names=output_names,
        opset_version=17, dynamo=False,
    )
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _near_tied(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """H (L, N, D) fp16: per position a base token plus 1 % frame noise (cosines ~0.9999 across
    frames, TFD ~1e-4 with many near ties); A: softmax of noise; g: three clear scenes."""
    gen = torch.Generator().manual_seed(seed)
    h = (torch.randn(1, N, D, generator=gen) + 0.01 * torch.randn(L, N, D, generator=gen)).half()
    a = torch.softmax(torch.randn(L, N, generator=gen), -1)
    scene = torch.tensor([0] * 3 + [1] * 9 + [2] * 4)
    g = 3.0 * torch.randn(3, 64, generator=gen)[scene] + 0.05 * torch.randn(L, 64, generator=gen)
    return h, a, g


def _tfd64(h: torch.Tensor, frames: list[int]) -> np.ndarray:
    """The spec's TFD (step 3) of one segment, a float64 loop: (N,)."""
    x = h.double()[frames]  # (T, N, D)
    u = x / x.norm(dim=-1, keepdim=True)
    T = len(frames)
    out = np.zeros(N)
    for p in range(N):
        total = 0.0
        for i in range(T - 1):
            for j in range(T):
                total += abs(float(u[i + 1, p] @ u[j, p]) - float(u[i, p] @ u[j, p]))
        out[p] = total / ((T - 1) * T)
    return out


class _Static(torch.nn.Module):
    def __init__(self, comp):
        super().__init__()
        self.comp = comp

    def forward(self, h, a, g):
        d = self.comp.decisions(h, a, g)
        return d.static, d.segment


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_static_candidates_are_the_lowest_float64_tfd(seed):
    comp = FixedBudgetCompressor(InfoMergeConfig.paper(0.25), L, N, D)
    h, a, g = _near_tied(seed)
    d = comp.decisions(h, a, g)
    seg = d.segment.tolist()
    multi = [k for k in set(seg) if seg.count(k) > 1]
    assert multi  # the layout has segments with static candidates
    for k in multi:
        tfd = _tfd64(h, [l for l in range(L) if seg[l] == k])
        want = sorted(np.argsort(tfd, kind="stable")[: comp.static_count].tolist())
        assert d.static[k].nonzero().squeeze(-1).tolist() == want


def test_onnx_runtime_static_candidates_equal_eager_on_near_ties(tmp_path):
    comp = FixedBudgetCompressor(InfoMergeConfig.paper(0.25), L, N, D).eval()
    path = tmp_path / "static.onnx"
    sess = _export(_Static(comp), _near_tied(0), path, ["H", "A", "g"], ["static", "segment"])
    for seed in range(6):
        h, a, g = _near_tied(seed)
        with torch.no_grad():
            static, segment = _Static(comp)(h, a, g)
        feed = {"H": h.numpy(), "A": a.numpy(), "g": g.numpy()}
        names = [i.name for i in sess.get_inputs()]  # A is not read by these two outputs
        got_static, got_segment = sess.run(None, {k: v for k, v in feed.items() if k in names})
        assert np.array_equal(got_segment, segment.numpy())
        assert np.array_equal(got_static, static.numpy()), seed
