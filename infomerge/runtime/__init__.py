"""The video question-answering runtime and the ``infomerge-run`` command (see ``docs/runtime.md``).

Public API: :class:`~infomerge.runtime.pipeline.Pipeline` (stages ``decode``, ``encode``,
``compress``, ``assemble``, ``prefill``, ``decode_tokens``, and ``generate``),
:class:`~infomerge.runtime.pipeline.Answer`, :class:`~infomerge.runtime.llm.Sampling`,
:class:`~infomerge.timing.Timings`.
"""

from infomerge.runtime.llm import Sampling
from infomerge.runtime.pipeline import Answer, Pipeline
from infomerge.timing import Timings

__all__ = ["Answer", "Pipeline", "Sampling", "Timings"]
