"""LLaVA-Video's layout (``tiny-video``, ``llava-video-7b``) against independent computations.

- the 2 x 2 average pooling map against a hand loop over the windows;
- the grid assembly (kept tokens, the newline of every row that keeps a token, positions in the
  uncompressed grid layout) against a loop that walks frame, row, column;
- compression off: our greedy tokens and per-step logits == Hugging Face
  ``LlavaOnevisionForConditionalGeneration.generate`` on the same checkpoint, prompt and pixel
  values, with its ``get_video_features`` replaced by the LLaVA-NeXT video path written out here
  (``llava_arch.py``: tower -> projector -> ``get_2dPool`` average -> ``add_token_per_grid``);
  HF's vision tower and projector, its ``<video>`` expansion, ``masked_scatter`` and LLM do the rest;
- compression on: prefill and cached decode logits == a plain HF forward of the language model
  given the same spliced embeddings and explicit positions (no cache);
- every registered method runs on the backbone's 13 x 13 grid (reference and fixed-budget form);
- the export (13 x 13 graphs, TensorRT-RTX engines) and the ORT artifact pipeline.
"""

from __future__ import annotations

import types

import pytest
import torch

from infomerge.backbones.registry import get_backbone
from infomerge.backbones.vision import average_pool_matrix
from infomerge.compress.methods import get_method, method_names
from infomerge.runtime.embeddings import PromptIds, assemble
from infomerge.runtime.pipeline import Pipeline
from infomerge.video import sample_video

STEPS = 6
TOL = 2e-6  # as tests/test_runtime_hf.py: wrong positions move the tiny model's logits by >= 2e-5
BB = get_backbone("tiny-video")
SIDE = BB.pooled_side  # 13


@pytest.fixture(scope="module")
def pipe():
    return Pipeline.from_backbone("tiny-video", compress_backend="none")


@pytest.fixture(scope="module")
def decoded(pipe):
    return pipe.decode(sample_video())


@pytest.fixture(scope="module")
def features(pipe, decoded):
    return pipe.encode(decoded.pixel_values)


@pytest.fixture(scope="module")
def hf(pipe):
    from transformers import LlavaOnevisionForConditionalGeneration

    model = LlavaOnevisionForConditionalGeneration.from_pretrained(pipe.info["checkpoint"]).eval()
    model.model.get_video_features = types.MethodType(_llava_next_video_features, model.model)
    return model


def _llava_next_video_features(self, pixel_values_videos, **kwargs):
    """LLaVA-NeXT's video path on HF's modules: SigLIP (last of the 26 layers, before
    post_layernorm) -> projector -> 2 x 2 average pooling -> one ``image_newline`` after each row."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    frames = pixel_values_videos.shape[1]
    out = self.vision_tower(pixel_values_videos.flatten(0, 1), output_hidden_states=True)
    h = self.multi_modal_projector(out.hidden_states[-1])  # (F, 729, D)
    h = h.view(frames, 27, 27, -1).permute(0, 3, 1, 2)
    h = torch.nn.functional.avg_pool2d(h, 2).permute(0, 2, 3, 1)  # (F, 13, 13, D)
    rows = []
    for frame in range(frames):
        for row in range(h.shape[1]):
            rows += [h[frame, row], self.image_newline[None]]
    return BaseModelOutputWithPooling(pooler_output=torch.cat(rows)[None])


def _loop_layout(tokens, index, newline, frames, side):
    """Kept video rows and their positions by walking the uncompressed layout: frame, row, column,
    then the row's newline if the row kept anything."""
    kept = {int(i): k for k, i in enumerate(index)}
    embeds, positions, pos = [], [], 0
    for frame in range(frames):
        for row in range(side):
            any_kept = False
            for col in range(side):
                flat = frame * side * side + row * side + col
                if flat in kept:
                    embeds.append(tokens[kept[flat]])
                    positions.append(pos)
                    any_kept = True
                pos += 1
            if any_kept:
                embeds.append(newline)
                positions.append(pos)
            pos += 1
    return torch.stack(embeds), torch.tensor(positions), pos


def test_average_pool_matrix_by_hand():
    x = torch.randn(27, 27, dtype=torch.float64)
    want = torch.empty(13, 13, dtype=torch.float64)
    for i in range(13):
        for j in range(13):
            want[i, j] = (
                x[2 * i, 2 * j] + x[2 * i + 1, 2 * j] + x[2 * i, 2 * j + 1] + x[2 * i + 1, 2 * j + 1]
            ) / 4
    got = (average_pool_matrix(27, 13).double() @ x.reshape(729)).reshape(13, 13)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-7)  # fp32 entries 0.25: exact
    with pytest.raises(ValueError, match="13"):
        average_pool_matrix(27, 14)


@pytest.mark.parametrize("keep", [1.0, 0.15, 0.01])
def test_grid_assembly_matches_the_loop(keep):
    frames, side, d = 3, 5, 4
    gen = torch.Generator().manual_seed(int(keep * 100))
    n = frames * side * side
    index = torch.randperm(n, generator=gen)[: max(1, round(keep * n))].sort().values
    tokens, newline = torch.randn(len(index), d, generator=gen), torch.randn(d, generator=gen)
    before, after = (7, 8, 9), (10, 11)
    table = torch.randn(16, d, generator=gen)
    asm = assemble(
        lambda ids: table[list(ids)],
        PromptIds(before, after, ""),
        tokens,
        index,
        newline,
        frames,
        side * side,
        "grid",
    )
    embeds, pos, span = _loop_layout(tokens, index, newline, frames, side)
    t = len(before)
    assert span == frames * side * (side + 1) == asm.uncompressed_video_tokens
    assert torch.equal(asm.inputs_embeds[0, t : t + len(pos)], embeds)
    assert torch.equal(asm.position_ids[0, t : t + len(pos)], t + pos)
    assert torch.equal(asm.position_ids[0, :t], torch.arange(t))
    assert torch.equal(asm.position_ids[0, t + len(pos) :], torch.arange(t + span, t + span + len(after)))
    assert asm.next_position == t + span + len(after) and asm.video_tokens == len(pos)
    torch.testing.assert_close(asm.inputs_embeds[0, -len(after) :], table[list(after)])
    if keep == 1.0:  # nothing dropped: positions 0..T-1, as Hugging Face numbers them
        assert torch.equal(asm.position_ids[0], torch.arange(asm.length))


def _our_greedy(pipe, asm, steps):
    logits = [torch.from_numpy(pipe.prefill(asm, steps))]
    tokens = []
    for i in range(steps):
        masked = logits[-1].clone()
        if pipe.suppress_ids is not None:
            masked[torch.from_numpy(pipe.suppress_ids)] = -torch.inf
        tokens.append(int(masked.argmax()))
        if i < steps - 1:
            logits.append(torch.from_numpy(pipe.llm.step(tokens[-1], asm.next_position + i)))
    return tokens, torch.stack(logits)


def test_uncompressed_greedy_equals_hf_generate(pipe, decoded, features, hf):
    prompt = "Describe the video in detail."
    asm = pipe.assemble(pipe.compress(features), prompt)
    assert asm.video_tokens == BB.frames * SIDE * (SIDE + 1) == 32 * 182
    assert torch.equal(asm.position_ids[0], torch.arange(asm.length))
    ours, our_logits = _our_greedy(pipe, asm, STEPS)

    text = pipe.prompt_ids(prompt).text.replace("<video>", "<video>" * (32 * 13 * 14))
    inputs = pipe.tokenizer(text, return_tensors="pt", add_special_tokens=False)
    assert inputs.input_ids.shape[1] == asm.length
    with torch.inference_mode():
        out = hf.generate(
            **inputs,
            pixel_values_videos=decoded.pixel_values.unsqueeze(0),
            max_new_tokens=STEPS,
            do_sample=False,
            suppress_tokens=None if pipe.suppress_ids is None else pipe.suppress_ids.tolist(),
            output_logits=True,
            return_dict_in_generate=True,
        )
    theirs = out.sequences[0, asm.length :].tolist()
    n = len(theirs)
    assert ours[:n] == theirs
    assert n == STEPS or theirs[-1] in pipe.llm.eos_token_ids
    torch.testing.assert_close(our_logits[:n], torch.cat(out.logits).float(), atol=TOL, rtol=0)


def test_compressed_logits_equal_plain_hf_forward(pipe, features, hf):
    from infomerge.runtime.backends.torch import TorchCompressor

    method = get_method("fastvid")
    kept = TorchCompressor(method, method.config(0.15))(features)
    asm = pipe.assemble(kept, "What is happening in this video?")
    t = len(asm.prompt.before)
    embeds, pos, span = _loop_layout(kept.tokens, kept.index, pipe.vision.image_newline, 32, SIDE)
    assert torch.equal(asm.position_ids[0, t : t + len(pos)], t + pos)
    torch.testing.assert_close(asm.inputs_embeds[0, t : t + len(pos)], embeds, rtol=0, atol=0)
    assert asm.next_position == t + span + len(asm.prompt.after)
    rows = int(torch.unique(kept.index // SIDE).numel())
    assert asm.video_tokens == len(kept.index) + rows < span

    tokens, ours = _our_greedy(pipe, asm, STEPS)
    lm, head = hf.model.language_model, hf.lm_head
    embeds, positions = asm.inputs_embeds, asm.position_ids
    wrong = []
    with torch.inference_mode():
        for i in range(STEPS):
            hidden = lm(inputs_embeds=embeds, position_ids=positions).last_hidden_state
            torch.testing.assert_close(ours[i], head(hidden[0, -1]).float(), atol=TOL, rtol=0)
            hidden = lm(inputs_embeds=embeds).last_hidden_state  # contiguous positions: wrong
            wrong.append((ours[i] - head(hidden[0, -1])).abs().max().item())
            embeds = torch.cat([embeds, lm.embed_tokens(torch.tensor([[tokens[i]]]))], dim=1)
            positions = torch.cat([positions, torch.tensor([[asm.next_position + i]])], dim=1)
    assert max(wrong) > 50 * TOL


@pytest.mark.parametrize("name", method_names())
def test_every_method_runs_on_the_13x13_grid(name, features):
    method = get_method(name)
    config = method.config(0.15)
    out = method.reference(features.H, features.A, features.g, config)
    index = out.index
    assert int(index.min()) >= 0 and int(index.max()) < 32 * 169 and bool((index[1:] > index[:-1]).all())
    assert out.tokens.shape == (len(index), BB.text_hidden)
    assert abs(len(index) - config.total_budget(32, 169)) <= 0.02 * config.total_budget(32, 169) + 4
    # the fixed-budget (exported) form keeps exactly B of the 32 x 169 tokens
    module = method.fixed_budget(config, 32, 169, BB.text_hidden).eval()
    with torch.no_grad():
        tokens, fixed = module(features.H, features.A, features.g)
    assert fixed.shape == (config.total_budget(32, 169),) and tokens.shape == (len(fixed), BB.text_hidden)
    assert int(fixed.max()) < 32 * 169 and bool((fixed[1:] > fixed[:-1]).all())


# --- export, engines and the artifact pipeline -----------------------------------------------------
@pytest.fixture(scope="module")
def video_export(tmp_path_factory):
    """tiny-video at 8 frames: vision + FastVID's fixed-budget graph, TensorRT-RTX engines for SM86
    (built without a GPU)."""
    from infomerge.export import cli

    out = tmp_path_factory.mktemp("tiny-video") / "art"
    args = ["--backbone", "tiny-video", "--frames", "8", "--method", "fastvid", "--retention", "0.15"]
    args += ["--engine", "rtx", "--compute-capability", "86", "--workspace", "512", "--output", str(out)]
    assert cli.main(args) == 0
    return out


def test_export_and_engines_have_the_13x13_grid(video_export):
    from infomerge.artifacts.manifest import verify_manifest

    m = verify_manifest(video_export, backbone="tiny-video", frames=8)
    assert (m["backbone"]["newline"], m["backbone"]["pool"], m["backbone"]["tokens_per_frame"]) == (
        "grid",
        "average",
        169,
    )
    g = m["graphs"]
    assert g["vision"]["outputs"]["H"]["shape"] == [8, 169, 64] and g["vision"]["validation"]["ok"]
    assert g["compress"]["inputs"]["H"]["shape"] == [8, 169, 64] and g["compress"]["validation"]["ok"]
    assert g["compress"]["tokens_kept"] == get_method("fastvid").budget(0.15, 8, 169)
    assert set(m["engines"]["items"]) == {"vision.sm86", "compress.sm86"} and not m["engines"]["skipped"]


def test_pipeline_from_artifacts_assembles_the_grid(video_export):
    p = Pipeline.from_artifacts(video_export)
    assert (p.vision.name, p.compressor.name, p.frames) == ("ort", "ort", 8)
    answer = p.generate(sample_video(), max_new_tokens=2)
    kept = answer.video_tokens
    t = len(p.prompt_ids().before)
    _, pos, span = _loop_layout(kept.tokens, kept.index, p.vision.image_newline, 8, SIDE)
    assert torch.equal(answer.position_ids[t : t + len(pos)], t + pos)
    assert answer.timings.uncompressed_video_tokens == span == 8 * 13 * 14
    assert answer.timings.video_tokens == len(pos)


def test_unified_inner_merge_is_skipped_with_a_note_on_the_grid(pipe, features, capsys):
    unified = pipe.with_compression("unified", 0.15)
    assert unified.inner_layer() is None
    note = unified.info["inner_merge_note"]
    assert "grid" in note and "outer stage only" in note
    assert "note: unified" in capsys.readouterr().err
    asm = unified.assemble(unified.compress(features))
    assert unified.inner_merge(asm) is None


def test_artifacts_of_another_token_grid_are_refused(video_export, monkeypatch):
    """An export made with another grid (e.g. llava-video-7b before its 13 x 13 pooling) is named,
    with the re-export command, before any backend loads."""
    from dataclasses import replace

    from infomerge.backbones import registry
    from infomerge.errors import ArtifactError

    monkeypatch.setitem(registry.BACKBONES, "tiny-video", replace(BB, pool="bilinear", pooled_side=14))
    with pytest.raises(ArtifactError, match=r"tokens_per_frame.*169.*196.*infomerge-export"):
        Pipeline.from_artifacts(video_export)


@torch.no_grad()
def test_saliency_is_the_siglip_head_attention_average_pooled(pipe, decoded, hf):
    """A: the MAP head's probe attention (HF's ``nn.MultiheadAttention`` weights) pooled 2 x 2 by
    ``avg_pool2d``, as FastVID's LLaVA-Video code pools it; g is untouched by the layout."""
    from safetensors.torch import load_file
    from transformers.models.siglip.modeling_siglip import SiglipMultiheadAttentionPoolingHead

    from infomerge.backbones.tiny import SIGLIP_HEAD_SUBDIR

    px = decoded.pixel_values[:4]
    features = pipe.encode(px)
    cfg = BB.siglip_head_config()
    sd = load_file(f"{pipe.info['checkpoint']}/{SIGLIP_HEAD_SUBDIR}/model.safetensors")
    head = SiglipMultiheadAttentionPoolingHead(cfg).eval()
    post = torch.nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
    head.load_state_dict({k.removeprefix("vision_model.head."): v for k, v in sd.items() if ".head." in k})
    post.load_state_dict(
        {k.removeprefix("vision_model.post_layernorm."): v for k, v in sd.items() if "post_" in k}
    )
    y = post(hf.model.vision_tower(px, output_hidden_states=True).hidden_states[-1])
    torch.testing.assert_close(features.g, head(y), rtol=1e-4, atol=1e-5)
    _, w = head.attention(head.probe.repeat(4, 1, 1), y, y, need_weights=True, average_attn_weights=True)
    ref_a = torch.nn.functional.avg_pool2d(w.reshape(4, 1, 27, 27), 2).reshape(4, 169)
    torch.testing.assert_close(features.A, ref_a, rtol=1e-4, atol=1e-8)
