"""Prefill time with and without Unified's inner-LLM merge (torch LLM backend, CPU, one thread).

Not a test: prints the figures of docs/compression.md, "Inner-LLM merge"::

    PYTHONPATH=. python scripts/time_inner_merge.py

Two LLMs on the same prompt (tiny's chat template, 125 random video tokens = r 0.02 of 32 x 196,
the newline, the question): the ``tiny`` backbone (2 layers: K clamps to 1) and a random Qwen2 of
tiny's widths with 28 layers (K = 18, the 7B depth). Median of 30 prefills after 3 warm-ups.
"""

from __future__ import annotations

import copy
import time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from infomerge.compress.unified import UnifiedConfig
from infomerge.runtime.backends import VideoTokens
from infomerge.runtime.llm_torch import TorchLLM
from infomerge.runtime.pipeline import Pipeline


def median_ms(fn, runs: int = 30) -> float:
    for _ in range(3):
        fn()
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1e3)
    return sorted(ts)[runs // 2]


def main() -> None:
    torch.set_num_threads(1)
    pipe = Pipeline.from_backbone("tiny", method="unified", retention=0.02)
    g = torch.Generator().manual_seed(0)
    index = torch.sort(torch.randperm(32 * 196, generator=g)[:125]).values
    asm = pipe.assemble(VideoTokens(tokens=torch.randn(125, 64, generator=g), index=index))
    off = copy.copy(pipe)
    off.config = UnifiedConfig(retention=0.02, inner_merge=False)
    c = pipe.llm.model.config
    deep = Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=c.vocab_size,
            hidden_size=c.hidden_size,
            intermediate_size=c.intermediate_size,
            num_hidden_layers=28,
            num_attention_heads=c.num_attention_heads,
            num_key_value_heads=c.num_key_value_heads,
            max_position_embeddings=c.max_position_embeddings,
        )
    ).eval()
    for label, llm in (("tiny, 2 layers", pipe.llm), ("random Qwen2, 28 layers", TorchLLM(deep, [0]))):
        pipe.llm = off.llm = llm
        on = median_ms(lambda: pipe.prefill(asm, 1))
        plain = median_ms(lambda: off.prefill(asm, 1))
        m = pipe.inner_merge(asm)
        print(
            f"| {label} | K = {m.layer} | T = {asm.length} -> {asm.length - (m.video - m.keep)} "
            f"| {plain:.2f} ms | {on:.2f} ms |"
        )


if __name__ == "__main__":
    main()
