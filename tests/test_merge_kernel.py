"""The Triton merge kernel against the PyTorch merge contract, under TRITON_INTERPRET=1 (no GPU here).

Triton reads TRITON_INTERPRET when it is imported, so the comparisons run in a child process that
sets it first; the child prints one JSON line per case and the tests here judge them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from infomerge.compress import merge_triton
from infomerge.errors import BackendUnavailableError

CHILD = textwrap.dedent(
    r"""
    import json, os
    assert os.environ["TRITON_INTERPRET"] == "1"
    import torch
    from infomerge.compress.merge import merge_to_anchors
    from infomerge.compress.merge_triton import merge_to_anchors_triton
    from infomerge.engines.plugin import plugin_merge

    def case(name, batch, m, k, d, dtype, seed, *, clustered=True, member_p=0.8, valid_p=0.75,
             mutate=None, index_dtype=torch.int64):
        g = torch.Generator().manual_seed(seed)
        n = 1
        for s in batch:
            n *= s
        anchor_index = torch.stack([torch.randperm(m, generator=g)[:k] for _ in range(n)]).reshape(*batch, k)
        if clustered:  # tokens near their anchors, as after a projector: nearest anchor is unambiguous
            centres = torch.randn(*batch, k, d, generator=g)
            owner = torch.randint(0, k, (*batch, m), generator=g)
            x = torch.gather(centres, -2, owner.unsqueeze(-1).expand(*batch, m, d))
            x = x + 0.3 * torch.randn(*batch, m, d, generator=g)
        else:
            x = torch.randn(*batch, m, d, generator=g)
        member = (torch.rand(*batch, m, generator=g) < member_p).float()
        member.scatter_(-1, anchor_index, 1.0)  # anchors are members (contract)
        valid = (torch.rand(*batch, k, generator=g) < valid_p).float()
        if mutate:
            x, member, anchor_index, valid = mutate(x, member, anchor_index, valid)
        x = x.to(dtype)
        anchor_index = anchor_index.to(index_dtype)
        ref = merge_to_anchors(x, member, anchor_index.long(), valid, 0.6)
        out = merge_to_anchors_triton(x, member, anchor_index, valid, 0.6)
        print(json.dumps({
            "name": name,
            "shape": list(out.shape), "ref_shape": list(ref.shape),
            "dtype": str(out.dtype), "ref_dtype": str(ref.dtype),
            "max_abs": (out.float() - ref.float()).abs().max().item() if out.numel() else 0.0,
            "ref_scale": ref.float().abs().max().item() if ref.numel() else 0.0,
        }), flush=True)

    def all_invalid(x, member, anchor_index, valid):
        return x, member, anchor_index, torch.zeros_like(valid)

    def duplicate_anchor(x, member, anchor_index, valid):
        anchor_index = anchor_index.clone(); anchor_index[..., 1] = anchor_index[..., 0]
        return x, member, anchor_index, torch.ones_like(valid)

    def no_members(x, member, anchor_index, valid):
        member = torch.zeros_like(member); member.scatter_(-1, anchor_index, 1.0)
        return x, member, anchor_index, valid

    # tiny backbone scale: a 4-frame segment of 7x7 tokens, 11 anchors, D 96
    case("segment_fp32", (3,), 196, 11, 96, torch.float32, 0)
    case("segment_fp16", (3,), 196, 11, 96, torch.float16, 1)
    case("random_fp32", (2,), 130, 20, 130, torch.float32, 2, clustered=False)  # D not a multiple of 64
    case("many_anchors", (1,), 150, 70, 64, torch.float32, 3)  # K > 64: two slot blocks
    case("rank2", (), 50, 5, 32, torch.float32, 4)
    case("rank4_int32", (2, 2), 33, 3, 64, torch.float32, 5, index_dtype=torch.int32)
    case("all_invalid", (2,), 40, 4, 48, torch.float32, 6, mutate=all_invalid)
    case("duplicate_anchor", (2,), 40, 4, 48, torch.float32, 7, mutate=duplicate_anchor)
    case("no_members", (2,), 40, 4, 48, torch.float32, 8, mutate=no_members)
    case("single_slot", (2,), 17, 1, 16, torch.float16, 9)

    # PluginMerge eager on CPU tensors is the PyTorch form, exactly
    g = torch.Generator().manual_seed(10)
    x = torch.randn(2, 60, 40, generator=g); member = torch.ones(2, 60)
    ai = torch.stack([torch.randperm(60, generator=g)[:6] for _ in range(2)]); av = torch.ones(2, 6)
    ref = merge_to_anchors(x, member, ai, av, 0.6)
    kern = merge_to_anchors_triton(x, member, ai, av, 0.6)
    print(json.dumps({"name": "plugin_eager_cpu",
                      "max_abs": (plugin_merge(x, member, ai, av, 0.6) - ref).abs().max().item(),
                      "triton_vs_ref": (kern - ref).abs().max().item()}))

    # inside the shape-static compressor (8 tiny frames): the Triton merge keeps the same tokens
    from infomerge.compress.config import InfoMergeConfig
    from infomerge.compress.fixed_budget import FixedBudgetCompressor
    from infomerge.export.graphs import synthetic_features

    for dtype in (torch.float32, torch.float16):
        h, a, gf = synthetic_features(8, 196, 64, 64, dtype)
        std = FixedBudgetCompressor(InfoMergeConfig.paper(0.15), 8, 196, 64).eval()
        ker = FixedBudgetCompressor(InfoMergeConfig.paper(0.15), 8, 196, 64,
                               merge_impl=merge_to_anchors_triton).eval()
        with torch.no_grad():
            ts, i_s = std(h, a, gf)
            tk, i_k = ker(h, a, gf)
        print(json.dumps({"name": f"compressor_{str(dtype)[6:]}", "index_equal": bool(torch.equal(i_s, i_k)),
                          "tokens": list(ts.shape), "max_abs": (ts.float() - tk.float()).abs().max().item(),
                          "ref_scale": ts.float().abs().max().item()}))
    """
)


@pytest.fixture(scope="module")
def kernel_cases() -> dict[str, dict]:
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return {r["name"]: r for r in rows}


@pytest.mark.parametrize(
    "name",
    [
        "segment_fp32",
        "random_fp32",
        "many_anchors",
        "rank2",
        "rank4_int32",
        "all_invalid",
        "duplicate_anchor",
        "no_members",
    ],
)
def test_kernel_matches_pytorch_fp32(kernel_cases, name):
    r = kernel_cases[name]
    assert r["shape"] == r["ref_shape"]
    assert r["dtype"] == r["ref_dtype"] == "torch.float32"
    # fp32 everywhere: only summation order differs
    assert r["max_abs"] <= 1e-5 * max(1.0, r["ref_scale"]), r


@pytest.mark.parametrize("name", ["segment_fp16", "single_slot"])
def test_kernel_matches_pytorch_fp16(kernel_cases, name):
    r = kernel_cases[name]
    assert r["shape"] == r["ref_shape"]
    assert r["dtype"] == r["ref_dtype"] == "torch.float16"
    # both accumulate in fp32 and round once to fp16: within one fp16 ulp of the largest value
    assert r["max_abs"] <= 2.0**-10 * max(1.0, r["ref_scale"]) * 2, r


def test_plugin_merge_eager_cpu_is_the_pytorch_form(kernel_cases):
    r = kernel_cases["plugin_eager_cpu"]
    assert r["max_abs"] == 0.0
    assert r["triton_vs_ref"] <= 1e-5


@pytest.mark.parametrize("dtype, rel", [("float32", 1e-5), ("float16", 2.0**-9)])
def test_static_compressor_with_the_triton_merge_keeps_the_same_tokens(kernel_cases, dtype, rel):
    """Plugin-path merge vs standard merge inside the compressor: same indices, tokens within tolerance."""
    r = kernel_cases[f"compressor_{dtype}"]
    assert r["index_equal"] and r["tokens"] == [230, 64]
    assert r["max_abs"] <= rel * r["ref_scale"], r


def test_block_k_and_grid():
    assert [merge_triton.block_k_for(k) for k in (1, 16, 17, 33, 64, 65, 500)] == [16, 16, 32, 64, 64, 64, 64]
    assert merge_triton.launch_grid(5, 70, 130) == (5, 2, 3)


def test_kernel_refuses_cpu_tensors_without_interpreter():
    if merge_triton.interpreting():
        pytest.skip("this process runs the Triton interpreter")
    x = torch.zeros(2, 4, 8)
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET=1"):
        merge_triton.merge_to_anchors_triton(
            x, torch.ones(2, 4), torch.zeros(2, 1, dtype=torch.long), torch.ones(2, 1), 0.6
        )


def test_kernel_validates_shapes_and_dtype():
    with pytest.raises(ValueError, match="disagree"):
        merge_triton.merge_to_anchors_triton(
            torch.zeros(2, 4, 8), torch.ones(2, 5), torch.zeros(2, 1, dtype=torch.long), torch.ones(2, 1), 0.6
        )
    with pytest.raises(ValueError, match="fp32 or fp16"):
        merge_triton.merge_to_anchors_triton(
            torch.zeros(2, 4, 8, dtype=torch.float64),
            torch.ones(2, 4),
            torch.zeros(2, 1, dtype=torch.long),
            torch.ones(2, 1),
            0.6,
        )


def test_kernel_compiles_ahead_of_time_for_sm86_without_a_gpu():
    """The PTX the TensorRT AOT plugin embeds: compiled here for an RTX 30xx target."""
    compiled = merge_triton.compile_merge_kernel("fp16", 0.6, 16, arch=86)
    ptx = compiled.asm["ptx"]
    assert compiled.metadata.name == "merge_kernel"
    assert ".target sm_86" in ptx
    assert compiled.metadata.num_warps >= 1
