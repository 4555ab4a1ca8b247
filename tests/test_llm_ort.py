"""The ``ort`` LLM backend: the model builder's graph (``infomerge-export --llm``) in our ORT loop.

- fp32 graph: greedy tokens == the torch backend's, logits close, on a prompt whose positions
  have gaps (a compressed video) and on the real video through ``Pipeline.from_artifacts``;
- int4 graph: agreement with a dequantized-weight reference (the int4 weights unpacked from the
  graph's MatMulNBits initializers into the torch model) is measured and printed; it differs
  from the reference only by the kernel's int8 activation quantization (``accuracy_level=4``);
- the export's graph takes ``inputs_embeds`` and explicit ``position_ids``, returns last-position
  logits; the KV cache buffers are bound in place;
- error paths: onnxruntime-genai missing (names the extra), CUDA asked for without a CUDA EP.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _int4_reference import load_dequantized

from infomerge.errors import ArtifactError, BackendUnavailableError
from infomerge.runtime.llm import Sampler
from infomerge.runtime.llm_ort import OrtLLM
from infomerge.runtime.llm_torch import TorchLLM


@pytest.fixture(scope="module")
def checkpoint():
    from infomerge.backbones.tiny import build_tiny_checkpoint

    return build_tiny_checkpoint()


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
    pytest.importorskip("onnxruntime_genai")
    from infomerge.export.llm_step import export_llm

    root = tmp_path_factory.mktemp("llm")
    entries = {p: export_llm(checkpoint, root / p, p) for p in ("fp32", "int4")}
    return root, entries


@pytest.fixture(scope="module")
def torch_llm(checkpoint):
    return TorchLLM.from_checkpoint(checkpoint, [2])


def _gapped_prompt(n_text=20, n_video=900, total=6272, d=64, seed=0):
    """Random embeddings laid out like a compressed video prompt: positions with gaps."""
    g = torch.Generator().manual_seed(seed)
    kept = torch.sort(torch.randperm(total, generator=g)[:n_video]).values
    pos = torch.cat(
        [
            torch.arange(n_text),
            n_text + kept,
            torch.tensor([n_text + total]),
            torch.arange(n_text + total + 1, n_text + total + 1 + n_text),
        ]
    )
    emb = torch.randn(1, pos.numel(), d, generator=g)
    return emb, pos.view(1, -1), int(pos[-1]) + 1


def _greedy(llm, emb, pos, next_position, steps):
    sampler = Sampler()
    logits = [llm.prefill(emb, pos, emb.shape[1] + steps)]
    tokens = []
    for i in range(steps):
        tokens.append(sampler(logits[-1]))
        if i < steps - 1:
            logits.append(llm.step(tokens[-1], next_position + i))
    return tokens, np.stack(logits)


def test_export_graph_interface(exported):
    root, entries = exported
    for precision, entry in entries.items():
        assert {"inputs_embeds", "position_ids", "attention_mask"} <= set(entry["inputs"])
        assert "RotaryEmbedding" in entry["ops"] and "GroupQueryAttention" in entry["ops"]
        assert ("MatMulNBits" in entry["ops"]) == (precision == "int4")
        llm = OrtLLM(root / precision, [2])
        assert (llm.hidden_size, llm.vocab_size, llm.context) == (64, 1024, 8192)


def test_ort_fp32_matches_torch(exported, torch_llm):
    root, _ = exported
    ort_llm = OrtLLM(root / "fp32", [2])
    emb, pos, nxt = _gapped_prompt()
    t_tokens, t_logits = _greedy(torch_llm, emb, pos, nxt, 12)
    o_tokens, o_logits = _greedy(ort_llm, emb, pos, nxt, 12)
    assert o_tokens == t_tokens
    tol = 2e-6  # measured differences are <= 3e-7
    np.testing.assert_allclose(o_logits, t_logits, atol=tol, rtol=0)
    # a second request reuses the bound KV buffers: same result
    assert _greedy(ort_llm, emb, pos, nxt, 12)[0] == t_tokens
    # the gaps matter beyond that tolerance: contiguous positions move the logits by ~1e-3
    # (the random tiny model's argmax hardly depends on positions, its logits do)
    contiguous = torch.arange(pos.shape[1]).view(1, -1)
    _, c_logits = _greedy(ort_llm, emb, contiguous, pos.shape[1], 12)
    assert np.abs(c_logits - o_logits).max() > 100 * tol


def _dequantized_reference(graph_dir, checkpoint):
    """The torch text model with every MatMulNBits weight replaced by its dequantized int4 value."""
    from infomerge.backbones.text import load_text_model

    return load_dequantized(load_text_model(checkpoint), graph_dir, layers=2)


def test_int4_agreement_with_dequantized_reference(exported, checkpoint, torch_llm):
    root, _ = exported
    int4 = OrtLLM(root / "int4", [2])
    ref = TorchLLM(_dequantized_reference(root / "int4", checkpoint), [2])
    steps = 16
    agree, diffs, fp32_agree = [], [], []
    for seed in range(4):
        emb, pos, nxt = _gapped_prompt(seed=seed)
        tokens, logits = _greedy(int4, emb, pos, nxt, steps)
        # teacher forcing: the reference sees int4's tokens, so each step compares the same context
        ref_logits = [ref.prefill(emb, pos, emb.shape[1] + steps)]
        fp_logits = [torch_llm.prefill(emb, pos, emb.shape[1] + steps)]
        for i, t in enumerate(tokens[:-1]):
            ref_logits.append(ref.step(t, nxt + i))
            fp_logits.append(torch_llm.step(t, nxt + i))
        ref_logits, fp_logits = np.stack(ref_logits), np.stack(fp_logits)
        agree += list(ref_logits.argmax(-1) == logits.argmax(-1))
        fp32_agree += list(fp_logits.argmax(-1) == logits.argmax(-1))
        scale = np.abs(ref_logits).max(-1)
        diffs += list(np.abs(ref_logits - logits).max(-1) / scale)
    agreement, fp32_agreement, worst = float(np.mean(agree)), float(np.mean(fp32_agree)), float(np.max(diffs))
    print(
        f"\nint4 vs dequantized-weight reference: top-1 agreement {agreement:.3f} over {len(agree)} steps, "
        f"max |logit diff| / max |logit| {worst:.4f}; "
        f"int4 vs fp32 weights: top-1 agreement {fp32_agreement:.3f}"
    )
    assert agreement >= 0.9
    assert worst < 0.1


def test_pipeline_from_artifacts_ort_llm_matches_torch(exported, checkpoint, tmp_path):
    """The real flow: video -> torch vision -> InfoMerge -> ort fp32 LLM == torch LLM tokens."""
    import shutil

    from infomerge.artifacts.manifest import new_manifest, write_manifest
    from infomerge.runtime.pipeline import Pipeline
    from infomerge.video import sample_video

    root, entries = exported
    art = tmp_path / "artifacts"
    shutil.copytree(root / "fp32", art / "llm")
    write_manifest(
        art,
        new_manifest(
            backbone={"name": "tiny"},
            frames=32,
            method="infomerge",
            retention=0.15,
            llm={"dir": "llm", **entries["fp32"]},
        ),
    )
    ort_pipe = Pipeline.from_artifacts(art, vision_backend="torch")
    assert (ort_pipe.info["llm_backend"], ort_pipe.info["compress_backend"]) == ("ort", "torch")
    torch_pipe = Pipeline.from_backbone("tiny")
    answer = ort_pipe.generate(sample_video(), max_new_tokens=10)
    asm = torch_pipe.assemble(answer.video_tokens)
    tokens = list(torch_pipe.decode_tokens(asm, torch_pipe.prefill(asm, 10), 10))
    assert answer.token_ids == tokens
    assert set(answer.timings.stages_ms) >= {
        "video_decode",
        "vision",
        "compress",
        "assemble",
        "prefill",
        "token_decode",
    }


def test_missing_genai_names_the_extra(checkpoint, tmp_path, monkeypatch):
    from infomerge.export.llm_step import export_llm

    for name in [m for m in sys.modules if m.startswith("onnxruntime_genai")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "onnxruntime_genai", None)  # import fails
    with pytest.raises(BackendUnavailableError, match=r"infomerge\[genai\]"):
        export_llm(checkpoint, tmp_path / "llm", "int4")
    assert not (tmp_path / "llm").exists()


def test_cuda_without_cuda_ep_names_the_extra(exported):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA EP")
    root, _ = exported
    with pytest.raises(BackendUnavailableError, match=r"infomerge\[gpu\]"):
        OrtLLM(root / "int4", device="cuda")


def test_graph_for_the_other_execution_provider(exported, tmp_path):
    import json
    import shutil

    root, _ = exported
    d = tmp_path / "llm"
    shutil.copytree(root / "int4", d)
    meta = json.loads((d / "llm_export.json").read_text())
    (d / "llm_export.json").write_text(json.dumps({**meta, "execution_provider": "cuda"}))
    with pytest.raises(ArtifactError, match="--llm-ep cpu"):
        OrtLLM(d)


def test_missing_llm_files(tmp_path):
    with pytest.raises(ArtifactError, match="infomerge-export --llm"):
        OrtLLM(tmp_path)


def test_export_cli_has_the_llm_step():
    from infomerge.export.cli import build_parser, options_from_args
    from infomerge.export.run import build_steps

    def steps(argv):
        return build_steps(options_from_args(build_parser().parse_args(argv), argv))

    assert any(s.name.startswith("build LLM") for s in steps(["--llm", "int4", "--llm-ep", "cpu"]))
    assert not any(s.name.startswith("build LLM") for s in steps([]))


def test_llm_step_builds_from_the_random_checkpoint_with_random_weights(tmp_path, monkeypatch):
    """--random-weights --llm: the LLM comes from the random-weight checkpoint of the same seed."""
    from types import SimpleNamespace

    from infomerge.backbones.registry import get_backbone
    from infomerge.backbones.tiny import build_tiny_checkpoint
    from infomerge.export import llm_step
    from infomerge.export.options import ExportOptions

    seen = {}

    def fake_export(checkpoint, out, precision, ep, family=None):
        seen["checkpoint"], seen["family"] = Path(checkpoint), family
        return {"precision": precision}

    monkeypatch.setattr(llm_step, "export_llm", fake_export)
    monkeypatch.setattr(llm_step, "_import_builder", lambda: None)
    ctx = SimpleNamespace(
        options=ExportOptions(random_weights=True, llm="int4"),
        backbone=get_backbone("tiny"),
        manifest={},
        path=lambda rel: tmp_path / rel,
    )
    llm_step.run_llm_step(ctx)
    assert seen["checkpoint"] == Path(build_tiny_checkpoint())
    assert seen["family"] == "llava"  # the backbone's family chooses the builder input
    assert ctx.manifest["llm"]["precision"] == "int4"
