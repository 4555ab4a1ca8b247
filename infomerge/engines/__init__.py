"""TensorRT / TensorRT-RTX engines, their metadata, the merge plugin, and backend comparison.

Modules (import what you use; nothing heavy is imported here):

- :mod:`.ort`       ``ort_session(path, device, threads=, spinning=)``: the one ONNX Runtime session loader
- :mod:`.threads`   the threading policy: ``default_threads()``, ``apply_threads(n)``, ``--threads``
- :mod:`.flavour`   which TensorRT is installed: ``load_flavour("trt" | "rtx") -> Flavour``
- :mod:`.builder`   ``build_engine(onnx, out_dir, engine=, compute_capabilities=, precision=,
  workspace_mib=)``, ``build_engines(artifact_dir, ...)``; CLI ``python -m infomerge.engines.builder``
- :mod:`.metadata`  ``EngineMetadata`` (the JSON beside each engine), ``check_engine``, ``onnx_digest``
- :mod:`.runner`    ``load_engine_runner(engine, expected_onnx=)``, ``validate_engine``, ``find_engine``
- :mod:`.plugin`    ``plugin_merge`` (merge_impl emitting the ``infomerge::MergeToAnchors`` node),
  ``register_plugin()`` (TensorRT quickly-deployable plugin with an AOT Triton kernel)
- :mod:`.compare`   ``compare_backends(onnx, backends=("ort", "trt"))``; CLI
  ``python -m infomerge.engines.compare``
- :mod:`.export_step` the ``--merge-plugin`` and ``--engine`` steps of ``infomerge-export``

The Triton kernel itself is :mod:`infomerge.compress.merge_triton`. See docs/tensorrt.md.
"""
