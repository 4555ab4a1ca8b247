"""The lmms-eval model plugin: ``lmms-eval --model infomerge --model_args ... --tasks ...``.

lmms-eval 0.7.x finds plugin models through the entry-point group ``lmms_eval.models``
(``lmms_eval/models/registry_v2.py``, ``ModelRegistryV2.load_entrypoint_manifests``, called when
``lmms_eval.models`` is imported): an entry point may name a callable returning a
``ModelManifest``. ``pyproject.toml`` registers :func:`manifest`; it names
:class:`InfomergeLMM` as a "simple" model (text prompt + video paths in, text out), which lmms-eval
imports only when ``--model infomerge`` is asked for. This module imports lmms-eval; nothing else in
the toolkit imports this module.

Model arguments (``--model_args key=value,...``; every one optional):

=====================  =============================================================================
``backbone``           backbone name (default ``tiny``); or
``artifacts``          an ``infomerge-export`` directory (ONNX Runtime backends by default)
``model_path``         local checkpoint directory
``method``             a registered compression method (default ``infomerge``)
``retention``          kept share of video tokens in (0, 1]; 1.0 or ``none``: no compression (0.15)
``vision_backend``,    stage backends (``torch``, ``ort``, ``trt``; defaults as ``infomerge-run``)
``compress_backend``,
``llm``
``device``             ``cpu`` or ``cuda`` (default ``cpu``)
``frames``             frames sampled per video (default: the backbone's)
``max_new_tokens``     overrides the task's generation limit
=====================  =============================================================================

The task's prompt goes to the pipeline as text (the runtime applies the chat template); the task's
first visual must be a video file path. Generation is greedy (``temperature`` / ``do_sample`` of the
task are ignored); the task's ``until`` strings cut the answer.
"""

from __future__ import annotations

from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from lmms_eval.models.registry_v2 import ModelManifest

MODEL_ID = "infomerge"


def manifest() -> ModelManifest:
    """The ``lmms_eval.models`` entry point: registers :class:`InfomergeLMM` as model ``infomerge``."""
    return ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.InfomergeLMM")


def _none_or(value, cast):
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
        return None
    return cast(value)


class InfomergeLMM(lmms):
    """An infomerge :class:`~infomerge.runtime.pipeline.Pipeline` as an lmms-eval model.

    Args: see the module docstring (all keyword arguments, as lmms-eval passes ``--model_args``).

    Raises:
        InfomergeError: from the pipeline constructors (unknown backbone / method / backend,
            retention outside (0, 1], missing checkpoint or artifacts), before any task runs.
        TypeError: an unknown model argument.
    """

    is_simple = True

    def __init__(
        self,
        backbone: str | None = None,
        artifacts: str | None = None,
        model_path: str | None = None,
        method: str = "infomerge",
        retention=0.15,
        vision_backend: str | None = None,
        compress_backend: str | None = None,
        llm: str | None = None,
        device: str = "cpu",
        frames=None,
        max_new_tokens=None,
        batch_size=1,
        **unknown,
    ) -> None:
        super().__init__()
        unknown = {k: v for k, v in unknown.items() if k not in ("device_map",)}
        if unknown:
            raise TypeError(
                f"unknown --model_args for infomerge: {', '.join(sorted(unknown))}; known: backbone, "
                "artifacts, model_path, method, retention, vision_backend, compress_backend, llm, device, "
                "frames, max_new_tokens"
            )
        from infomerge.runtime.pipeline import Pipeline

        retention = _none_or(retention, float)
        frames = _none_or(frames, int)
        self.max_new_tokens = _none_or(max_new_tokens, int)
        if artifacts:
            kwargs = {"retention": retention} if retention is not None else {"retention": None}
            self.pipeline = Pipeline.from_artifacts(
                artifacts,
                backbone=backbone,
                model_path=model_path,
                vision_backend=vision_backend or "ort",
                compress_backend=compress_backend,
                llm=llm,
                method=method,
                device=device,
                **kwargs,
            )
        else:
            self.pipeline = Pipeline.from_backbone(
                backbone or "tiny",
                model_path=model_path,
                vision_backend=vision_backend or "torch",
                compress_backend=compress_backend or "torch",
                llm=llm or "torch",
                method=method,
                retention=retention,
                device=str(device),
                frames=frames,
            )
        self.timings: list[dict] = []  # per request: ttft_ms, total_ms, video_tokens

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Answer each request: ``(context, gen_kwargs, doc_to_visual, doc_id, task, split)``.

        Raises:
            ValueError: a request whose visual is not a video file path.
            VideoError: from decoding.
        """
        from tqdm import tqdm

        out = []
        for req in tqdm(requests, desc="infomerge", disable=self.rank != 0):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = req.args
            visuals = doc_to_visual(self.task_dict[task][split][doc_id])
            visuals = visuals if isinstance(visuals, (list, tuple)) else [visuals]
            video = next((v for v in visuals if isinstance(v, str)), None)
            if video is None:
                raise ValueError(
                    f"task {task!r} doc {doc_id}: the infomerge model answers about one video file; "
                    f"doc_to_visual gave {[type(v).__name__ for v in visuals]}"
                )
            limit = self.max_new_tokens or int(gen_kwargs.get("max_new_tokens") or 16)
            answer = self.pipeline.generate(video, context, max_new_tokens=limit)
            text = answer.text
            until = gen_kwargs.get("until") or []
            for stop in [until] if isinstance(until, str) else until:
                if stop and stop in text:
                    text = text.split(stop, 1)[0]
            t = answer.timings
            self.timings.append(
                {"ttft_ms": t.ttft_ms, "total_ms": t.total_ms, "video_tokens": t.video_tokens}
            )
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            out.append(text)
        return out

    def loglikelihood(self, requests):
        """Not supported: the pipeline generates; use ``generate_until`` tasks (VideoMME, MLVU, ...).

        Raises:
            NotImplementedError: always.
        """
        raise NotImplementedError("the infomerge model supports generate_until tasks only")

    def generate_until_multi_round(self, requests):
        """Not supported (single-turn pipeline).

        Raises:
            NotImplementedError: always.
        """
        raise NotImplementedError("the infomerge model supports single-round generate_until tasks only")
