"""Would ``importlib.util.LazyLoader`` defer what transformers' Qwen2 module imports? (issue 20 item 4)

Not a test: the evidence of docs/runtime.md, "The torch LLM without transformers' modelling
imports". Each configuration runs in a fresh process: the named modules are put in ``sys.modules``
as lazy modules (the standard library's mechanism: the module body runs on first attribute
access), then ``from transformers import AutoTokenizer, Qwen2ForCausalLM`` is imported, and the
script prints the wall time and which of the modules are still lazy afterwards (those are the
only ones deferred)::

    PYTHONPATH=. python scripts/probe_lazy_imports.py            # torch imported first
    PYTHONPATH=. python scripts/probe_lazy_imports.py --before-torch
"""

from __future__ import annotations

import argparse
import subprocess
import sys

CONFIGS = (
    (),
    ("scipy.optimize",),
    ("sympy",),
    ("triton",),
    ("torch._dynamo",),
    ("torch.distributed.tensor",),
    ("scipy.optimize", "sympy", "triton", "mpmath"),
)

CHILD = """
import importlib.util, sys, time
names = {names!r}
if {after_torch!r}:
    import torch
t0 = time.perf_counter()
lazy = {{}}
for name in names:
    spec = importlib.util.find_spec(name)
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    lazy[name] = module
try:
    import torch
    from transformers import AutoTokenizer, Qwen2ForCausalLM
except ImportError as exc:
    print(f"ImportError: {{exc}}")
else:
    still = [n for n, m in lazy.items() if type(m).__name__ == "_LazyModule"]
    print(f"{{time.perf_counter() - t0:.2f}} s, still lazy: {{still}}")
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before-torch", action="store_true", help="seed the lazy modules before `import torch`")
    args = p.parse_args()
    for names in CONFIGS:
        code = CHILD.format(names=list(names), after_torch=not args.before_torch)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        line = (out.stdout.strip().splitlines() or [out.stderr.strip().splitlines()[-1]])[-1]
        print(f"{', '.join(names) or '(none)'}: {line}")


if __name__ == "__main__":
    main()
