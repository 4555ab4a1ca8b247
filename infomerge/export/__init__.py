"""Export: the vision tower, the compression stage and the LLM to validated ONNX graphs, TensorRT
engines and an int4 LLM, in one artifact directory.

    from infomerge.export import ExportOptions, export
    export(ExportOptions(backbone="tiny", method="infomerge", retention=0.15, output=Path("art")))

Modules: :mod:`.options` (``ExportOptions``), :mod:`.graphs` (every graph declared once),
:mod:`.run` (``export``), the steps (:mod:`.vision_step`, :mod:`.compress_step`,
:mod:`.engine_step`, :mod:`.llm_step`), :mod:`.onnx_export`, :mod:`.validate`, :mod:`.cli`.
"""

from infomerge.export.options import ExportOptions, UsageError
from infomerge.export.run import export

__all__ = ["ExportOptions", "UsageError", "export"]
