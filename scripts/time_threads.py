"""Torch threads and OpenMP's wait policy under co-located load: the runtime's threading policy.

Not a test: prints the figures of docs/runtime.md, "Threads". Each configuration (intra-op threads
1 or 2, ``OMP_WAIT_POLICY`` unset or ``PASSIVE``) runs in its own subprocess, since OpenMP reads its
environment once, when torch loads it. The configurations are interleaved, round after round, so
they see the same machine; ``--load N`` adds N busy processes (one core each) for the whole run::

    PYTHONPATH=. python scripts/time_threads.py --rounds 3 --load 0
    PYTHONPATH=. python scripts/time_threads.py --rounds 3 --load 2

Each child times, after one warm-up each:

- the InfoMerge reference compressor (``compress/reference.py``) at the ov-0.5b shape
  (32 x 196 x 896, r = 0.15, 8 segments of 4 frames; median of 3 runs);
- one Hugging Face decode step of the ov-0.5b language model (Qwen2, 0.5B, random weights, fp32)
  after a 512-token prefill (median of 5 steps).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

CONFIGS = [(1, None), (2, None), (1, "PASSIVE"), (2, "PASSIVE")]


def _child(threads: int) -> dict:
    import torch
    from transformers import Qwen2ForCausalLM

    from infomerge.backbones.registry import get_backbone
    from infomerge.bench.studies.reference_timing import LAYOUTS, synthetic_inputs
    from infomerge.compress.methods import get_method

    torch.set_num_threads(threads)
    bb = get_backbone("ov-0.5b")
    h, a, g = synthetic_inputs(LAYOUTS["even"], bb.tokens_per_frame, bb.text_hidden)
    method = get_method("infomerge")
    config = method.config(0.15)
    method.reference(h, a, g, config)  # warm-up
    ref = []
    for _ in range(3):
        t0 = time.perf_counter()
        method.reference(h, a, g, config)
        ref.append(time.perf_counter() - t0)

    with torch.device("meta"):
        model = Qwen2ForCausalLM(bb.text_config())
    model.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.02 * torch.randn(p.shape, generator=gen))
        model.model.rotary_emb.__init__(config=model.config)  # buffers are not parameters
    model.eval()
    ids = torch.randint(0, 1000, (1, 512), generator=gen)
    steps = []
    with torch.inference_mode():
        out = model(input_ids=ids, use_cache=True)
        cache, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
        for i in range(6):
            t0 = time.perf_counter()
            out = model(input_ids=nxt, past_key_values=cache, use_cache=True)
            dt = time.perf_counter() - t0
            cache, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
            if i:  # the first step is the warm-up
                steps.append(dt)
    return {"reference_s": statistics.median(ref), "decode_step_s": statistics.median(steps)}


def _child_ort(threads: int) -> dict:
    """ONNX Runtime's own thread pool (not OpenMP): a graph of 8 MatMul + Gelu blocks on
    (1568, 896) activations (8 frames x 196 tokens at the ov-0.5b width), spinning on and off."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from infomerge.engines.ort import ort_session

    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i in range(8):
        inits.append(
            numpy_helper.from_array((0.03 * rng.standard_normal((896, 896))).astype(np.float32), f"w{i}")
        )
        nodes += [
            helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"]),
            helper.make_node("Gelu", [f"m{i}"], [f"y{i}"]),
        ]
        x = f"y{i}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1568, 896])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1568, 896])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 9
    import tempfile

    out = {}
    with tempfile.TemporaryDirectory() as d:
        path = f"{d}/mlp.onnx"
        onnx.save(model, path)
        feed = {"x": rng.standard_normal((1568, 896)).astype(np.float32)}
        for spin in ("1", "0"):
            sess = ort_session(path, threads=threads, spinning=spin == "1")
            sess.run(None, feed)
            ts = []
            for _ in range(5):
                t0 = time.perf_counter()
                sess.run(None, feed)
                ts.append(time.perf_counter() - t0)
            out[f"ort_spin{spin}_s"] = statistics.median(ts)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--load", type=int, default=0, help="busy processes running alongside (one core each)")
    p.add_argument("--ort", action="store_true", help="time ONNX Runtime's spinning instead")
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child is not None:
        print(json.dumps(_child_ort(args.child) if args.ort else _child(args.child)))
        return
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.load)]
    results: dict[tuple, list[dict]] = {c: [] for c in CONFIGS}
    loads = []
    try:
        for _ in range(args.rounds):
            for threads, policy in CONFIGS:
                env = dict(os.environ)
                env.pop("OMP_WAIT_POLICY", None)
                if policy:
                    env["OMP_WAIT_POLICY"] = policy
                if args.ort and policy:
                    continue  # OpenMP's policy does not concern ONNX Runtime's thread pool
                out = subprocess.run(
                    [sys.executable, __file__, "--child", str(threads), *(["--ort"] if args.ort else [])],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                results[(threads, policy)].append(json.loads(out.stdout.strip().splitlines()[-1]))
                loads.append(os.getloadavg()[0])
    finally:
        for s in spinners:
            s.kill()
            s.wait()
    print(f"synthetic load: {args.load} busy processes; 1-min load average {min(loads):.1f}-{max(loads):.1f}")
    if args.ort:
        print("| threads | ORT spinning on (s) | ORT spinning off (s) |")
        print("|---|---|---|")
        for (threads, _), rows in results.items():
            if rows:
                on, off = ([r[k] for r in rows] for k in ("ort_spin1_s", "ort_spin0_s"))
                print(f"| {threads} | {statistics.median(on):.3f} | {statistics.median(off):.3f} |")
        return
    print("| threads | OMP_WAIT_POLICY | reference compressor (s) | decode step (s) |")
    print("|---|---|---|---|")
    for (threads, policy), rows in results.items():
        ref = [r["reference_s"] for r in rows]
        dec = [r["decode_step_s"] for r in rows]
        ref_s = f"{statistics.median(ref):.3f} ({min(ref):.3f}-{max(ref):.3f})"
        dec_s = f"{statistics.median(dec):.3f} ({min(dec):.3f}-{max(dec):.3f})"
        print(f"| {threads} | {policy or 'unset'} | {ref_s} | {dec_s} |")


if __name__ == "__main__":
    main()
