"""The ``ort`` LLM backend on Qwen2.5-VL (``tiny-qwen``): the model builder's M-RoPE graph.

- the export: ``position_ids`` (3, B, S), ``MRotaryEmbedding`` ops whose sections and caches
  equal M-RoPE written out by hand (one op run against a loop over tokens, heads and frequencies);
- fp32 graph, compression off: greedy tokens and logits == ``Qwen2_5_VLForConditionalGeneration
  .generate`` on the same video and prompt (HF's own vision tower, splice and ``get_rope_index``);
- fp32 graph, compression on (FastVID, r = 0.15): prefill and 5 decode steps == a plain HF forward
  with the same spliced embeddings and (3, 1, T) positions; text-style positions move the logits
  by far more than the tolerance;
- int4 graph: top-1 agreement with a dequantized-weight reference (teacher-forced), measured;
- ``infomerge-export --backbone tiny-qwen --llm fp32`` then ``infomerge-run --artifacts``: the ORT
  LLM answers with the torch pipeline's tokens.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _int4_reference import load_dequantized

from infomerge.runtime.llm_ort import OrtLLM
from infomerge.runtime.pipeline import Pipeline
from infomerge.video import sample_video

pytest.importorskip("onnxruntime_genai")

STEPS = 5
TOL = 2e-6  # as tests/test_qwen.py; measured differences are <= 3e-7
PROMPT = "What is happening in this video?"


@pytest.fixture(scope="module")
def checkpoint():
    from infomerge.backbones.tiny_qwen import build_tiny_qwen_checkpoint

    return build_tiny_qwen_checkpoint()


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
    """``<root>/<precision>/llm``: artifact-like directories holding only the LLM graph."""
    from infomerge.export.llm_step import export_llm

    root = tmp_path_factory.mktemp("qwen-llm")
    entries = {p: export_llm(checkpoint, root / p / "llm", p) for p in ("fp32", "int4")}
    return root, entries


@pytest.fixture(scope="module")
def pipe():
    return Pipeline.from_backbone("tiny-qwen", compress_backend="none")


@pytest.fixture(scope="module")
def decoded(pipe):
    return pipe.decode(sample_video())


@pytest.fixture(scope="module")
def hf(checkpoint):
    from transformers import Qwen2_5_VLForConditionalGeneration

    return Qwen2_5_VLForConditionalGeneration.from_pretrained(checkpoint).eval()


def _greedy(llm, suppress, embeds, positions, next_position, steps):
    """Greedy tokens and the (steps, V) logits they were picked from (``suppress`` masked)."""
    logits = [llm.prefill(embeds, positions, embeds.shape[1] + steps)]
    tokens = []
    for i in range(steps):
        masked = logits[-1].copy()
        if suppress is not None:
            masked[suppress] = -np.inf
        tokens.append(int(masked.argmax()))
        if i < steps - 1:
            logits.append(llm.step(tokens[-1], next_position + i))
    return tokens, np.stack(logits)


# --- the graph ---------------------------------------------------------------------------------
def test_export_graph_interface(exported, checkpoint):
    root, entries = exported
    for precision, entry in entries.items():
        assert {"inputs_embeds", "position_ids", "attention_mask"} <= set(entry["inputs"])
        assert "MRotaryEmbedding" in entry["ops"] and "GroupQueryAttention" in entry["ops"]
        assert "RotaryEmbedding" not in entry["ops"]
        assert ("MatMulNBits" in entry["ops"]) == (precision == "int4")
        assert entry["position_ids"].startswith("(3, 1, S)")
        llm = OrtLLM(root / precision / "llm")
        assert llm.mrope and (llm.hidden_size, llm.vocab_size) == (64, 1024)
        assert llm.eos_token_ids == (2,)  # <|im_end|> of the tiny Qwen tokenizer
        assert (root / precision / "llm" / "tokenizer.json").is_file()


def _hand_mrope(x, positions, theta, sections):
    """M-RoPE of ``x`` (S, heads, d) at ``positions`` (3, S), written out: frequency i of the half
    width takes its angle from row t, h or w by the section it falls in (Qwen2.5-VL's
    ``apply_multimodal_rotary_pos_emb``: cos/sin of width d split [s0, s1, s2, s0, s1, s2], chunk k
    from row k % 3), then rotate_half: (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)."""
    s_len, heads, d = x.shape
    half = d // 2
    row_of = [k for k, n in enumerate(sections) for _ in range(n)]
    # angles in float32 as Hugging Face's rotary embedding computes them (inv_freq and the product
    # in fp32: at position 3000 one fp32 ulp of the angle is 2.4e-4), the rotation in float64
    exponent = np.arange(0, d, 2, dtype=np.float32) / np.float32(d)
    inv_freq = (1.0 / np.float32(theta) ** exponent).astype(np.float32)
    out = np.zeros_like(x, dtype=np.float64)
    for s in range(s_len):
        for h in range(heads):
            for i in range(half):
                angle = float(np.float32(positions[row_of[i], s]) * inv_freq[i])
                c, sn = np.cos(angle), np.sin(angle)
                a, b = float(x[s, h, i]), float(x[s, h, i + half])
                out[s, h, i] = a * c - b * sn
                out[s, h, i + half] = b * c + a * sn
    return out


def test_mrotary_op_equals_hand_mrope(exported, checkpoint):
    """The exported graph's MRotaryEmbedding node and cos/sin caches, run alone on random q rows at
    random (t, h, w), == :func:`_hand_mrope` with the checkpoint's rope_theta and mrope_section."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    from infomerge.backbones.qwen_text import qwen_text_config

    root, _ = exported
    graph = onnx.load(str(root / "fp32" / "llm" / "model.onnx"))
    node = next(n for n in graph.graph.node if n.op_type == "MRotaryEmbedding")
    inits = {i.name: numpy_helper.to_array(i) for i in graph.graph.initializer}
    cos, sin = inits[node.input[2]], inits[node.input[3]]
    cfg = qwen_text_config(checkpoint)
    heads, d = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
    sections = list(cfg.rope_parameters["mrope_section"])
    assert cos.shape == (cfg.max_position_embeddings, d // 2) and sum(sections) == d // 2

    s_len = 7
    g = np.random.default_rng(0)
    x = g.standard_normal((1, s_len, heads * d)).astype(np.float32)
    pos = np.stack([g.integers(0, 3000, s_len) for _ in range(3)]).reshape(3, 1, s_len)
    one = helper.make_graph(
        [helper.make_node(node.op_type, ["x", "pos", "cos", "sin"], ["y"], domain=node.domain)],
        "mrope",
        [
            helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x.shape),
            helper.make_tensor_value_info("pos", onnx.TensorProto.INT64, pos.shape),
        ],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, x.shape)],
        [numpy_helper.from_array(cos, "cos"), numpy_helper.from_array(sin, "sin")],
    )
    one.node[0].attribute.extend(node.attribute)  # the exported node's sections, layout, heads
    model = helper.make_model(
        one, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {"x": x, "pos": pos})
    want = _hand_mrope(x.reshape(s_len, heads, d), pos[:, 0], cfg.rope_parameters["rope_theta"], sections)
    np.testing.assert_allclose(got.reshape(s_len, heads, d), want, atol=1e-5, rtol=0)
    # the sections matter: one row for every frequency (1D RoPE at the t row) is far off
    theta = cfg.rope_parameters["rope_theta"]
    flat = _hand_mrope(x.reshape(s_len, heads, d), pos[:, 0], theta, [d // 2, 0, 0])
    assert np.abs(flat - want).max() > 0.1


# --- Hugging Face equivalence ------------------------------------------------------------------
def test_uncompressed_greedy_equals_hf_generate(exported, pipe, decoded, hf):
    from tests.test_qwen import _hf_inputs

    root, _ = exported
    ort_pipe = Pipeline.from_backbone(
        "tiny-qwen", compress_backend="none", llm="ort", artifacts=root / "fp32"
    )
    assert ort_pipe.info["llm_backend"] == "ort"
    prompt = "Describe the video in detail."
    asm = ort_pipe.assemble(ort_pipe.compress(ort_pipe.encode(decoded.pixel_values)), prompt, decoded)
    assert asm.position_ids.shape == (3, 1, asm.length)
    ours, our_logits = _greedy(
        ort_pipe.llm, ort_pipe.suppress_ids, asm.inputs_embeds, asm.position_ids, asm.next_position, STEPS
    )
    inputs = _hf_inputs(pipe, decoded, prompt)
    with torch.inference_mode():
        out = hf.generate(
            **inputs,
            max_new_tokens=STEPS,
            do_sample=False,
            suppress_tokens=None if pipe.suppress_ids is None else pipe.suppress_ids.tolist(),
            output_logits=True,
            return_dict_in_generate=True,
        )
    theirs = out.sequences[0, asm.length :].tolist()
    n = len(theirs)
    assert n == STEPS or theirs[-1] in ort_pipe.llm.eos_token_ids
    assert ours[:n] == theirs
    np.testing.assert_allclose(our_logits[:n], torch.cat(out.logits).float().numpy(), atol=TOL, rtol=0)
    assert ort_pipe.generate(decoded, prompt, max_new_tokens=STEPS).token_ids == theirs


def test_compressed_logits_equal_hf_forward(exported, pipe, decoded, hf):
    from infomerge.compress.methods import get_method
    from infomerge.runtime.backends.torch import TorchCompressor

    root, _ = exported
    llm = OrtLLM(root / "fp32" / "llm")
    features = pipe.encode(decoded.pixel_values)
    kept = TorchCompressor(get_method("fastvid"), get_method("fastvid").config(0.15))(features)
    asm = pipe.assemble(kept, PROMPT, decoded)
    assert asm.video_tokens < 8 * 96 and (asm.position_ids[1] != asm.position_ids[2]).any()  # 3D rows
    embeds, positions = asm.inputs_embeds, asm.position_ids
    tokens, ours = _greedy(llm, pipe.suppress_ids, embeds, positions, asm.next_position, STEPS)
    with torch.inference_mode():
        for i in range(STEPS):
            logits = hf(inputs_embeds=embeds, position_ids=positions).logits[0, -1]  # full pass, no cache
            np.testing.assert_allclose(ours[i], logits.float().numpy(), atol=TOL, rtol=0)
            nxt = hf.get_input_embeddings()(torch.tensor([[tokens[i]]]))
            embeds = torch.cat([embeds, nxt], dim=1)
            positions = torch.cat([positions, torch.full((3, 1, 1), asm.next_position + i)], dim=2)
    # 1D positions 0..T-1 (three equal rows), then contiguous decoding: far beyond the tolerance
    flat = torch.arange(asm.length).view(1, -1)
    _, flat_logits = _greedy(llm, pipe.suppress_ids, asm.inputs_embeds, flat, asm.length, STEPS)
    assert np.abs(flat_logits - ours).max() > 50 * TOL


# --- int4 --------------------------------------------------------------------------------------
def _dequantized_reference(graph_dir, checkpoint):
    """Qwen2.5-VL's text model with every MatMulNBits weight replaced by its dequantized int4 value
    (4-bit codes q with the default zero point 8 and per-block scales: w = (q - 8) * scale)."""
    from infomerge.backbones.qwen_text import load_qwen_text_model

    return load_dequantized(load_qwen_text_model(checkpoint), graph_dir, layers=2)


def _mrope_prompt(seed, n=40, d=64):
    """Random embeddings at random ascending (t, h, w) positions, and the next position."""
    g = torch.Generator().manual_seed(seed)
    pos = torch.sort(torch.randint(0, 2000, (3, 1, n), generator=g), dim=-1).values
    return torch.randn(1, n, d, generator=g), pos, int(pos.max()) + 1


def test_int4_agreement_with_dequantized_reference(exported, checkpoint):
    """int4 greedy tokens vs the same weights dequantized into the torch text model, teacher-forced
    (each step the reference sees int4's tokens): top-1 agreement over 4 prompts x 16 steps."""
    from infomerge.runtime.llm_torch import TorchLLM

    root, _ = exported
    int4, fp32 = OrtLLM(root / "int4" / "llm"), OrtLLM(root / "fp32" / "llm")
    ref = TorchLLM(_dequantized_reference(root / "int4" / "llm", checkpoint), [2])
    steps, agree, diffs, fp32_agree = 16, [], [], []
    for seed in range(4):
        emb, pos, nxt = _mrope_prompt(seed)
        tokens, logits = _greedy(int4, None, emb, pos, nxt, steps)
        forced = {}
        for name, llm in (("ref", ref), ("fp32", fp32)):
            out = [llm.prefill(emb, pos, emb.shape[1] + steps)]
            out += [llm.step(t, nxt + i) for i, t in enumerate(tokens[:-1])]
            forced[name] = np.stack(out)
        agree += list(forced["ref"].argmax(-1) == logits.argmax(-1))
        fp32_agree += list(forced["fp32"].argmax(-1) == logits.argmax(-1))
        diffs += list(np.abs(forced["ref"] - logits).max(-1) / np.abs(forced["ref"]).max(-1))
    agreement, worst = float(np.mean(agree)), float(np.max(diffs))
    print(
        f"\nqwen int4 vs dequantized-weight reference: top-1 agreement {agreement:.3f} over "
        f"{len(agree)} steps, max |logit diff| / max |logit| {worst:.4f}; int4 vs fp32 weights: "
        f"top-1 agreement {np.mean(fp32_agree):.3f} (the random tiny model's logits are near-ties)"
    )
    assert agreement >= 0.9
    assert worst < 0.1


# --- the commands ------------------------------------------------------------------------------
def test_export_and_run_commands_use_the_ort_llm(tmp_path, capsys):
    """`infomerge-export --backbone tiny-qwen --llm fp32` (4 frames, FastVID) then
    `infomerge-run --artifacts`: ORT vision, compress and LLM; tokens == the all-torch pipeline."""
    from infomerge.export.cli import main as export_main
    from infomerge.runtime.cli import main as run_main

    out = tmp_path / "art"
    argv = ["--backbone", "tiny-qwen", "--frames", "4", "--method", "fastvid", "--llm", "fp32"]
    assert export_main([*argv, "--output", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["llm"]["position_ids"].startswith("(3, 1, S)")
    record = tmp_path / "run.json"
    assert run_main(["--artifacts", str(out), "--max-new-tokens", "3", "--json", str(record)]) == 0
    capsys.readouterr()
    got = json.loads(record.read_text())
    ref = Pipeline.from_backbone("tiny-qwen", method="fastvid", frames=4)
    want = ref.generate(ref.decode(sample_video()), max_new_tokens=3)
    assert got["token_ids"] == want.token_ids
    assert json.dumps(got).count('"ort"') >= 3  # vision, compress and LLM backends


def test_mrope_positions_for_a_1d_rope_graph_are_refused(tmp_path):
    """(3, 1, T) positions given to a LLaVA graph (1D RoPE) raise ArtifactError naming the export."""
    from infomerge.backbones.tiny import build_tiny_checkpoint
    from infomerge.errors import ArtifactError
    from infomerge.export.llm_step import export_llm

    export_llm(build_tiny_checkpoint(), tmp_path / "llm", "fp32")
    llm = OrtLLM(tmp_path / "llm")
    assert not llm.mrope
    emb, pos, _ = _mrope_prompt(0)
    with pytest.raises(ArtifactError, match="infomerge-export --backbone qwen2.5-vl"):
        llm.prefill(emb, pos, emb.shape[1] + 1)
