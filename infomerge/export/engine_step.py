"""The TensorRT steps of ``infomerge-export``: ``--merge-plugin`` and ``--engine`` (with
``--compute-capability``, ``--workspace``).

``export compress_plugin.onnx`` (``--merge-plugin``, after the compression steps): the run's
``FixedBudgetCompressor`` with its merge done by :data:`infomerge.engines.plugin.plugin_merge`, exported
beside the standard ``compress.onnx`` (which stays what ONNX Runtime runs). Every merge becomes one
``infomerge::MergeToAnchors`` node. The step checks the node count and that the plugin compressor
and the standard one agree on the real video's features (same ``index``, ``tokens`` within
tolerance) and records it under ``graphs.compress_plugin``.

``build engines`` (``--engine trt|rtx``, last): an engine for every top-level ``*.onnx`` of the
artifact, for every target compute capability, in ``engines/``, recorded in the manifest::

    "engines": {"flavour": "rtx", "trt_version": "1.7.1.116", "compute_capabilities": ["8.6", "8.9"],
                "workspace_mib": 1024, "skipped": {"compress_plugin.onnx": "why"},
                "items": {"vision.sm86": {"graph", "engine", "metadata", "precision", "source_sha256",
                                         "engine_sha256", "engine_bytes", "build_seconds", ...}, ...}}

A graph holding the plugin op is built only by full TensorRT (after :func:`register_plugin`);
TensorRT-RTX 1.7 has no plugin API, so it is skipped there with the reason (docs/tensorrt.md).
"""

from __future__ import annotations

import copy

from infomerge.artifacts.layout import PLUGIN_ONNX, parse_compute_capabilities
from infomerge.artifacts.onnx_graph import graph_io, inspect_onnx
from infomerge.engines.builder import DEFAULT_WORKSPACE_MIB, artifact_graphs, build_engines
from infomerge.engines.flavour import load_flavour
from infomerge.errors import ArtifactError, ValidationError
from infomerge.export.context import ExportContext, Step
from infomerge.export.graphs import PLUGIN, with_vision_outputs


def export_compress_plugin(ctx: ExportContext) -> None:
    """Write ``compress_plugin.onnx``: the run's compressor with the merge as the TensorRT plugin op.

    Raises:
        ValidationError: the plugin compressor disagrees with the standard one on the real features,
            or the graph does not hold one plugin node per merge.
    """
    import onnx
    import torch

    from infomerge.engines.plugin import PLUGIN_ID, PLUGIN_NAME, plugin_merge
    from infomerge.export.onnx_export import export_onnx

    standard = ctx.compressor
    comp = copy.copy(standard)  # same module, same buffers; only the merge differs
    comp.merge_impl = plugin_merge
    bb = ctx.backbone
    dtype = torch.float16 if ctx.precision == "fp16" else torch.float32
    g_dim = int(ctx.reference["g"].shape[-1]) if "g" in ctx.reference else bb.vision_hidden
    from infomerge.compress.methods import get_method

    spec = with_vision_outputs(PLUGIN, get_method(ctx.options.method).vision_outputs)
    example = spec.example(bb, ctx.frames, dtype, g_dim)
    path = ctx.path(PLUGIN_ONNX)
    export_onnx(comp, example, path, input_names=spec.inputs, output_names=spec.outputs)

    model = onnx.load(str(path), load_external_data=False)
    nodes = [n for n in model.graph.node if n.op_type == PLUGIN_NAME]
    merges = sum(1 for k in getattr(standard, "rank_slots", ()) if k)
    if not nodes or (merges and len(nodes) != merges):
        raise ValidationError(
            f"{PLUGIN_ONNX}: {len(nodes)} {PLUGIN_NAME} nodes, expected one per merge ({merges})"
        )

    agreement = {}
    if ctx.reference:
        r = ctx.reference
        feats = (r["H"].to(dtype), *(r[k].float() for k in spec.inputs[1:]))
        with torch.no_grad():
            tok_s, idx_s = standard(*feats)
            tok_p, idx_p = comp(*feats)
        scale = float(tok_s.float().abs().max()) or 1.0
        diff = float((tok_p.float() - tok_s.float()).abs().max())
        agreement = {
            "index_equal": bool(torch.equal(idx_p, idx_s)),
            "tokens_max_abs": diff,
            "tokens_peak": scale,
            "device": str(tok_p.device),
            "merge": "Triton kernel" if tok_p.is_cuda else "PyTorch form (CPU)",
        }
        tol = (2e-2 if ctx.precision == "fp16" else 1e-4) * scale
        if not agreement["index_equal"] or diff > tol:
            raise ValidationError(
                f"{PLUGIN_ONNX}: plugin and standard merge disagree on the real video (index equal: "
                f"{agreement['index_equal']}, tokens max |diff| {diff:.3g} > {tol:.3g})"
            )
    inputs, outputs = graph_io(path)
    ctx.manifest["graphs"]["compress_plugin"] = {
        "file": PLUGIN_ONNX,
        "plugin": PLUGIN_ID,
        "plugin_nodes": len(nodes),
        "runs_in": "TensorRT >= 10.6 with infomerge.engines.plugin.register_plugin (not ONNX Runtime)",
        "inputs": inputs,
        "outputs": outputs,
        "agreement": agreement,
    }


def check_engine_options(ctx: ExportContext) -> None:
    """Fail fast, before any export work: the flavour is installed and can build for the targets.

    Raises:
        BackendUnavailableError: the flavour is not installed (names the extra), or full TensorRT
            without a GPU.
        TargetError: a malformed or unbuildable ``--compute-capability``.
    """
    from infomerge.engines.builder import local_compute_capability, resolve_targets

    flavour = load_flavour(ctx.options.engine)
    device = None if flavour.ahead_of_time else local_compute_capability()
    resolve_targets(flavour, parse_compute_capabilities(ctx.options.compute_capability), device)


def build_engine_step(ctx: ExportContext) -> None:
    """Build engines for every graph written so far and describe them in ``ctx.manifest["engines"]``.

    Raises:
        BackendUnavailableError: the flavour is not installed (names the extra), or full TensorRT
            without a GPU.
        ArtifactError: no graph, a graph TensorRT rejects, a failed build.
        TargetError: bad ``--compute-capability``.
    """
    args = ctx.options
    flavour = load_flavour(args.engine)
    ccs = parse_compute_capabilities(args.compute_capability)
    workspace = args.workspace if args.workspace is not None else DEFAULT_WORKSPACE_MIB
    graphs, skipped = [], {}
    for g in artifact_graphs(ctx.work):
        if not inspect_onnx(g).plugin_ops:
            graphs.append(g)
        elif flavour.name == "rtx":
            skipped[g.name] = (
                f"holds the MergeToAnchors plugin op; TensorRT-RTX {flavour.version} has no plugin API "
                "(build it with --engine trt; see docs/tensorrt.md)"
            )
            ctx.console.print(f"[yellow]skipping {g.name}[/yellow]: {skipped[g.name]}")
        elif not flavour.merge_plugin:
            skipped[g.name] = (
                f"{flavour.label} < 10.9 cannot load the Python AOT merge plugin; "
                "the standard graph compress.onnx is built instead"
            )
            ctx.console.print(f"[yellow]skipping {g.name}[/yellow]: {skipped[g.name]}")
        else:
            from infomerge.engines.plugin import register_plugin

            register_plugin()
            ctx.console.print(f"{g.name}: merge plugin graph ({flavour.label} >= 10.9 loads the plugin)")
            graphs.append(g)
    if not graphs:
        raise ArtifactError(f"no graph to build an engine from ({', '.join(skipped) or 'none exported'})")
    records = build_engines(
        ctx.work,
        compute_capabilities=ccs,
        workspace_mib=workspace,
        graphs=graphs,
        flavour=flavour,
        log=lambda line: ctx.console.print(line),
    )
    ctx.manifest["engines"] = {
        "flavour": flavour.name,
        "trt_version": flavour.version,
        "compute_capabilities": sorted({r.metadata.compute_capability for r in records}),
        "workspace_mib": workspace,
        "skipped": skipped,
        "items": {r.engine_path.stem: r.manifest_entry(ctx.work) for r in records},
    }


#: after the compression steps
MERGE_PLUGIN_STEPS = [
    Step(
        "export compress_plugin.onnx",
        export_compress_plugin,
        when=lambda o: o.merge_plugin,
    ),
]
#: first: refuse unusable engine options before the export does any work
ENGINE_CHECK_STEPS = [
    Step("check TensorRT", check_engine_options, when=lambda o: o.engine != "none"),
]
#: last: after every graph step
ENGINE_STEPS = [
    Step(
        "build engines",
        build_engine_step,
        when=lambda o: o.engine != "none",
    ),
]
