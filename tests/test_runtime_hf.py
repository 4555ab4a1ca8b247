"""Independent correctness checks of the runtime against Hugging Face on the tiny checkpoint.

- compression off: our greedy tokens and per-step logits == HF
  ``LlavaOnevisionForConditionalGeneration.generate``
  on the same checkpoint, prompt and pixel values (HF expands ``<video>`` to 6,273 placeholders,
  runs its own vision path and ``masked_scatter``);
- compression on: the torch LLM backend's prefill and decode logits == a plain HF forward of the
  language model given the same spliced embeddings and explicit position ids (no cache);
- the assembled positions follow the spec (original positions with gaps, newline at t + F*N,
  decoding from the uncompressed length).
"""

from __future__ import annotations

import pytest
import torch

from infomerge.runtime.pipeline import Pipeline
from infomerge.video import sample_video

STEPS = 6
# Logit tolerance. The random tiny model's logits move by 2e-5 (prefill) to 1e-3 (decode) when the
# positions are wrong, while its argmax hardly does: logits are compared, not just tokens.
TOL = 2e-6


@pytest.fixture(scope="module")
def pipe():
    return Pipeline.from_backbone("tiny", compress_backend="none")


@pytest.fixture(scope="module")
def decoded(pipe):
    return pipe.decode(sample_video())


@pytest.fixture(scope="module")
def hf(pipe):
    from transformers import LlavaOnevisionForConditionalGeneration

    return LlavaOnevisionForConditionalGeneration.from_pretrained(pipe.info["checkpoint"]).eval()


def _our_greedy(pipe, asm, steps):
    """Greedy tokens and per-step logits through the stage API (prefill, then llm.step)."""
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


def test_uncompressed_greedy_equals_hf_generate(pipe, decoded, hf):
    prompt = "Describe the video in detail."
    features = pipe.encode(decoded.pixel_values)
    asm = pipe.assemble(pipe.compress(features), prompt)
    assert asm.length == asm.next_position  # nothing dropped: positions are 0..T-1
    assert torch.equal(asm.position_ids[0], torch.arange(asm.length))
    ours, our_logits = _our_greedy(pipe, asm, STEPS)

    # Hugging Face, independently: its processor's expansion of <video>, its vision path, its splice.
    text = pipe.prompt_ids(prompt).text.replace("<video>", "<video>" * (32 * 196 + 1))
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
    theirs = out.sequences[0, asm.length :].tolist()  # HF stops after EOS
    n = len(theirs)
    assert ours[:n] == theirs
    assert n == STEPS or theirs[-1] in pipe.llm.eos_token_ids
    hf_logits = torch.cat(out.logits).float()  # raw logits, before suppress_tokens
    torch.testing.assert_close(our_logits[:n], hf_logits, atol=TOL, rtol=0)

    # and the pipeline's own generate() streams the same tokens (stopping after EOS too)
    answer = pipe.generate(decoded, prompt, max_new_tokens=STEPS)
    assert answer.token_ids == theirs


def test_compressed_logits_equal_plain_hf_forward(pipe, decoded, hf):
    from infomerge.runtime.pipeline import make_config

    config = make_config("infomerge", 0.15)
    from infomerge.compress.methods import get_method
    from infomerge.runtime.backends.torch import TorchCompressor

    features = pipe.encode(decoded.pixel_values)
    kept = TorchCompressor(get_method("infomerge"), config)(features)
    asm = pipe.assemble(kept, "What is happening in this video?")
    t = len(asm.prompt.before)
    total = 32 * 196
    pos = asm.position_ids[0]
    # spec step 7: text at 0..t-1, token i at t + i, the newline at t + F*N, text after from there
    assert torch.equal(pos[:t], torch.arange(t))
    assert torch.equal(pos[t : t + len(kept.index)], t + kept.index)
    assert int(pos[t + len(kept.index)]) == t + total
    assert torch.equal(pos[t + len(kept.index) + 1 :], torch.arange(t + total + 1, asm.next_position))
    assert asm.next_position == t + total + 1 + len(asm.prompt.after)
    assert asm.length < 1000 < asm.next_position

    tokens, ours = _our_greedy(pipe, asm, STEPS)
    lm, head = hf.model.language_model, hf.lm_head
    embeds, positions = asm.inputs_embeds, asm.position_ids
    wrong = []  # the same forward with contiguous positions: must differ by far more than TOL
    with torch.inference_mode():
        for i in range(STEPS):
            hidden = lm(inputs_embeds=embeds, position_ids=positions).last_hidden_state  # no cache, full pass
            torch.testing.assert_close(ours[i], head(hidden[0, -1]).float(), atol=TOL, rtol=0)
            hidden = lm(inputs_embeds=embeds).last_hidden_state  # HF's default positions 0..T-1
            wrong.append((ours[i] - head(hidden[0, -1])).abs().max().item())
            nxt = lm.embed_tokens(torch.tensor([[tokens[i]]]))
            embeds = torch.cat([embeds, nxt], dim=1)
            positions = torch.cat([positions, torch.tensor([[asm.next_position + i]])], dim=1)
    assert max(wrong) > 50 * TOL
