"""Prefill time of FlashVID with and without its inner-LLM stage (torch LLM backend, CPU, one thread).

Not a test: prints the figures of docs/methods.md, FlashVID, "Inner-LLM stage"::

    PYTHONPATH=. python scripts/time_flashvid_inner.py [--retention 0.15] [--runs 10]

Each side gets what the vision stage hands it at 32 x 196: off, B = L ceil(196 r) random video
tokens (e = 1); on, L ceil(196 r 1.25) (e = 1.25), pruned to ceil(0.3 |V|) before layer K; the
newline and tiny's chat template around them. Two LLMs: the ``tiny`` backbone (2 layers: K clamps
to 1) and a random Qwen2 of tiny's widths with 28 layers (K = 20, the 7B depth). Median of
``--runs`` prefills after 2 warm-ups.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from infomerge.compress.flashvid import FlashVIDConfig
from infomerge.runtime.backends import VideoTokens
from infomerge.runtime.llm_torch import TorchLLM
from infomerge.runtime.pipeline import Pipeline


def median_ms(fn, runs: int) -> float:
    for _ in range(2):
        fn()
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1e3)
    return sorted(ts)[runs // 2]


def _assembled(pipe: Pipeline, count: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    index = torch.sort(torch.randperm(32 * 196, generator=g)[:count]).values
    return pipe.assemble(VideoTokens(tokens=torch.randn(count, 64, generator=g), index=index))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--retention", type=float, default=0.15)
    p.add_argument("--runs", type=int, default=10)
    args = p.parse_args()
    torch.set_num_threads(1)
    r = args.retention
    on = Pipeline.from_backbone("tiny", method="flashvid", retention=r, inner_merge=True)
    off = copy.copy(on)
    off.config = FlashVIDConfig(r)
    asm_on = _assembled(on, on.config.total_budget(32, 196))
    asm_off = _assembled(off, off.config.total_budget(32, 196))
    c = on.llm.model.config
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
    print("| LLM | K | off: rows | off: prefill | on: rows (from K) | on: prefill |")
    print("|---|---|---|---|---|---|")
    for label, llm in (("tiny, 2 layers", on.llm), ("random Qwen2, 28 layers", TorchLLM(deep, [0]))):
        on.llm = off.llm = llm
        t_on = median_ms(lambda: on.prefill(asm_on, 1), args.runs)
        t_off = median_ms(lambda: off.prefill(asm_off, 1), args.runs)
        m = on.inner_merge(asm_on)
        print(
            f"| {label} | {m.layer} | {asm_off.length} | {t_off:.1f} ms | {asm_on.length} "
            f"({asm_on.length - (m.video - m.keep)}) | {t_on:.1f} ms |"
        )


if __name__ == "__main__":
    main()
