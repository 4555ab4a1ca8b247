"""Load a built engine after checking its metadata, and run it on the GPU with torch tensors.

For the runtime and the benchmark::

    from infomerge.engines.runner import load_artifact_engine
    runner = load_artifact_engine("artifacts/tiny", "vision")   # checked against vision.onnx
    outputs = runner({"pixel_values": frames})        # dict name -> CUDA torch.Tensor

Order of checks (each with its own error): the metadata JSON exists and parses
(:class:`~infomerge.errors.EngineMismatchError`); the engine's TensorRT flavour is installed
(:class:`~infomerge.errors.BackendUnavailableError`, naming the pip extra); version, source ONNX,
engine bytes and, where a GPU is visible, its compute capability match
(:class:`~infomerge.errors.EngineMismatchError`, with the rebuild command); a CUDA GPU is visible
(:class:`~infomerge.errors.BackendUnavailableError`).
"""

from __future__ import annotations

import os
from pathlib import Path

from infomerge.artifacts.layout import find_engine, graph_file, metadata_path_for
from infomerge.engines.builder import local_compute_capability
from infomerge.engines.flavour import Flavour, load_flavour
from infomerge.engines.metadata import EngineMetadata, RuntimeInfo, check_engine
from infomerge.errors import BackendUnavailableError, EngineMismatchError

_TORCH_DTYPES = {
    "FLOAT": "float32",
    "HALF": "float16",
    "BF16": "bfloat16",
    "INT32": "int32",
    "INT64": "int64",
    "INT8": "int8",
    "UINT8": "uint8",
    "BOOL": "bool",
}


def torch_dtype(trt_dtype):
    """torch dtype of a TensorRT ``DataType`` (by name, so every flavour's enum works)."""
    import torch

    name = str(trt_dtype).split(".")[-1].upper()
    if name not in _TORCH_DTYPES:
        raise ValueError(f"no torch dtype for TensorRT {trt_dtype}")
    return getattr(torch, _TORCH_DTYPES[name])


def validate_engine(
    engine_path: str | os.PathLike,
    expected_onnx: str | os.PathLike | None = None,
    *,
    runtime: RuntimeInfo | None = None,
    flavour: Flavour | None = None,
) -> EngineMetadata:
    """Check an engine against its metadata, the runtime and (optionally) its source ONNX.

    Args:
        engine_path: ``NAME.smXY.engine`` (its ``NAME.smXY.json`` must be beside it).
        expected_onnx: the ONNX the engine must come from (sha256 compared); None = not checked.
        runtime: the runtime to check against; default the installed flavour and the local GPU
            (no GPU: the compute capability is not checked).
        flavour: an already loaded flavour (tests).

    Returns:
        the engine's :class:`EngineMetadata`.

    Raises:
        EngineMismatchError: missing/unreadable metadata, or any mismatch (message says how to rebuild).
        BackendUnavailableError: the engine's flavour is not installed.
    """
    engine_path = Path(engine_path)
    meta = EngineMetadata.read(metadata_path_for(engine_path))
    if runtime is None:
        flavour = flavour or load_flavour(meta.flavour)
        runtime = RuntimeInfo(flavour.name, flavour.version, local_compute_capability())
    check_engine(meta, runtime, engine_path=engine_path, expected_onnx=expected_onnx)
    return meta


class EngineRunner:
    """One deserialized engine with an execution context; call it with a feed dict.

    Attributes:
        metadata: the engine's :class:`EngineMetadata`.
        input_names, output_names: the engine's I/O tensor names.
    """

    def __init__(self, engine_path: str | os.PathLike, metadata: EngineMetadata, flavour: Flavour):
        trt = flavour.module
        self.metadata = metadata
        self.engine_path = Path(engine_path)
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self.engine is None:
            raise EngineMismatchError(
                f"{self.engine_path}: {flavour.label} could not deserialize the engine; rebuild it"
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode_in = trt.TensorIOMode.INPUT
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == mode_in]
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) != mode_in]

    def __call__(self, feed: dict) -> dict:
        """Run once.

        Args:
            feed: input name -> array or tensor (numpy or torch, any device); cast to the engine's dtype.

        Returns:
            output name -> CUDA torch.Tensor (synchronised).

        Raises:
            ValueError: a missing input.
            RuntimeError: TensorRT refused to execute.
        """
        import torch

        missing = [n for n in self.input_names if n not in feed]
        if missing:
            raise ValueError(
                f"{self.engine_path.name}: missing inputs {missing}; it takes {self.input_names}"
            )
        stream = torch.cuda.current_stream()
        keep = []
        for name in self.input_names:
            t = torch.as_tensor(feed[name]).to("cuda", dtype=torch_dtype(self.engine.get_tensor_dtype(name)))
            t = t.contiguous()
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
            keep.append(t)
        outputs = {}
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            out = torch.empty(shape, dtype=torch_dtype(self.engine.get_tensor_dtype(name)), device="cuda")
            self.context.set_tensor_address(name, out.data_ptr())
            outputs[name] = out
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"{self.engine_path.name}: TensorRT failed to execute the engine")
        stream.synchronize()
        return outputs


def load_engine_runner(
    engine_path: str | os.PathLike,
    expected_onnx: str | os.PathLike | None = None,
    *,
    flavour: Flavour | None = None,
) -> EngineRunner:
    """Validate an engine's metadata, then load it for running on this machine's GPU.

    Args:
        engine_path: ``NAME.smXY.engine``.
        expected_onnx: its source ONNX, to refuse an engine built from another version of it.

    Returns:
        an :class:`EngineRunner`.

    Raises:
        EngineMismatchError: stale or unknown engine (message says how to rebuild).
        BackendUnavailableError: TensorRT flavour not installed (names the extra), or no CUDA GPU here.
    """
    engine_path = Path(engine_path)
    meta = EngineMetadata.read(metadata_path_for(engine_path))
    flavour = flavour or load_flavour(meta.flavour)
    device_cc = local_compute_capability()
    check_engine(
        meta,
        RuntimeInfo(flavour.name, flavour.version, device_cc),
        engine_path=engine_path,
        expected_onnx=expected_onnx,
    )
    if device_cc is None:
        raise BackendUnavailableError(
            f"{engine_path}: metadata checked ({flavour.label}, compute capability "
            f"{meta.compute_capability}, "
            "source ONNX and engine bytes match), but no CUDA GPU is visible here, so the engine cannot run; "
            f"run it on a GPU of compute capability {meta.compute_capability}, or use ONNX Runtime on this "
            "machine"
        )
    return EngineRunner(engine_path, meta, flavour)


def load_artifact_engine(artifact_dir: str | os.PathLike, graph: str) -> EngineRunner:
    """The checked runner of ``<artifact_dir>/engines/<graph>.smXY.engine`` for this machine's GPU.

    The engine is found by :func:`infomerge.artifacts.layout.find_engine` for the local compute
    capability and checked against its source ``<artifact_dir>/<graph>.onnx``.

    Raises:
        ArtifactError: no engine of that graph for this GPU (the message lists what exists).
        BackendUnavailableError: no TensorRT flavour installed (names the extra) or no CUDA GPU here.
        EngineMismatchError: the engine was built for another GPU, TensorRT version or source ONNX.
    """
    root = Path(artifact_dir)
    engine = find_engine(root, graph, local_compute_capability())
    return load_engine_runner(engine, expected_onnx=root / graph_file(graph))
