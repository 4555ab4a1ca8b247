"""ONNX Runtime's transformer fusions for the vision graph: ``vision.onnx`` -> ``vision.ort.onnx``.

``vision.onnx`` holds only standard ONNX ops (TensorRT parses it). ONNX Runtime runs a transformer
faster when its blocks are its fused contrib ops (``com.microsoft``), which its session optimizer
does not form by itself from our graph. This pass writes a second, ORT-only graph:

1. ``onnxruntime.transformers.optimizer.optimize_model(model_type="vit")``: LayerNorm + residual
   Add -> ``SkipLayerNormalization``, tanh GELU -> ``FastGelu``, bias + exact GELU -> ``BiasGelu``;
2. :func:`fuse_sdpa_attention`: every attention that ``F.scaled_dot_product_attention`` exported
   (opset 17: q and k^T each scaled by sqrt(scale), MatMul, Softmax, MatMul) with its head split
   and merge -> one ``MultiHeadAttention`` (ORT's fused CPU / CUDA kernel). ORT's own attention
   fusions look for the eager pattern (one scale on the scores) and miss this one. Attention
   whose weights are outputs (the MAP head's probe attention ``A``, the last-layer statistics)
   does not match the pattern and is left as it is. The q, k, v projections' bias Adds become the
   node's ``bias`` input (ONNX Runtime adds it while splitting the heads: 78 fewer passes over the
   activations in the 26-layer tower).

3. the frame axis is left free (``frames``; every reshape of the graph keeps it as ``-1``), so the
   runtime can send only the distinct frames of a video shorter than F
   (:func:`infomerge.runtime.backends.base.encode_unique_frames`).

The fused graph is validated against PyTorch on the real frames like every graph
(:mod:`infomerge.export.vision_step`); only fp32 graphs are fused (ORT's CPU kernels of these
ops are fp32; an fp16 graph is for GPUs and TensorRT).
"""

from __future__ import annotations

import os
from pathlib import Path

MHA = "MultiHeadAttention"


def fuse_vision_graph(src: str | os.PathLike, dst: str | os.PathLike, num_heads: int, hidden: int) -> dict:
    """Write ``dst``: ``src`` with ORT's transformer fusions (see the module docstring).

    Args:
        src: the exported fp32 ``vision.onnx``.
        dst: the fused graph to write (its ``.onnx.data`` beside it when > 2 GB).
        num_heads, hidden: the SigLIP tower's heads and width.

    Returns:
        ``{op_type: count}`` of the fused ops in ``dst`` (``MultiHeadAttention``,
        ``SkipLayerNormalization``, ``FastGelu``, ...).

    Raises:
        ImportError: onnxruntime's ``transformers`` tools are not installed.
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    from infomerge.export.onnx_export import save_onnx

    options = FusionOptions("vit")
    # the graph's shapes are static already and the fusions above do not need symbolic shape
    # inference, which works on copies of the model (1.6 GB of weights at full size)
    options.enable_shape_inference = False
    opt = optimize_model(
        str(src),
        model_type="vit",
        num_heads=num_heads,
        hidden_size=hidden,
        opt_level=0,
        use_gpu=False,
        optimization_options=options,
    )
    fused = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
    fused[MHA] = fuse_sdpa_attention(opt, num_heads)
    opt.prune_graph()
    free_frame_axis(opt.model)
    save_onnx(opt.model, Path(dst))
    return fused


def free_frame_axis(model, name: str = "frames") -> None:
    """Make axis 0 of every graph input and output the symbolic ``name`` and drop the static
    intermediate shapes (ONNX Runtime infers them per run)."""
    for v in [*model.graph.input, *model.graph.output]:
        d = v.type.tensor_type.shape.dim[0]
        d.Clear()
        d.dim_param = name
    del model.graph.value_info[:]


def _single_consumer(model, name: str, op_type: str):
    children = model.input_name_to_nodes().get(name, [])
    return children[0] if len(children) == 1 and children[0].op_type == op_type else None


def _perm(node) -> list[int] | None:
    from onnx import helper

    return next((list(helper.get_attribute_value(a)) for a in node.attribute if a.name == "perm"), None)


def _head_split_input(model, node, perm: list[int]):
    """``node`` = Transpose(perm) of Reshape(x, (-1, N, heads, hd)) -> x's name, else None."""
    if node is None or node.op_type != "Transpose" or _perm(node) != perm:
        return None
    reshape = model.get_parent(node, 0)
    return reshape.input[0] if reshape is not None and reshape.op_type == "Reshape" else None


def _scalar(model, node) -> float | None:
    """The constant scalar factor of a Mul node, or None."""
    import numpy as np

    if node is None or node.op_type != "Mul":
        return None
    value = model.get_constant_value(node.input[1])
    return float(np.asarray(value).reshape(-1)[0]) if value is not None and np.size(value) == 1 else None


def _projection_biases(model, names: list[str], prefix: str) -> tuple[list[str], list]:
    """MultiHeadAttention's inputs for the projections ``names`` (Q, K, V) and the Add nodes they
    replace.

    If each of ``names`` is the output of ``Add(MatMul(x, W), b)`` (either input order) with a constant
    (C,) ``b`` and no consumer but the head split, returns ([Q W, K W, V W products, bias], [the three
    Adds]) with a new (3C,) initializer ``bias`` = bq | bk | bv (``MultiHeadAttention``'s input 3);
    otherwise (``names``, []).
    """
    import numpy as np
    from onnx import numpy_helper

    products, biases, adds = [], [], []
    for name in names:
        add = model.output_name_to_node().get(name)
        if add is None or add.op_type != "Add" or len(model.input_name_to_nodes().get(name, [])) != 1:
            return names, []
        for i in (0, 1):
            parent, b = model.get_parent(add, i), model.get_constant_value(add.input[1 - i])
            if parent is not None and parent.op_type == "MatMul" and b is not None and np.ndim(b) == 1:
                products.append(add.input[i])
                biases.append(np.asarray(b, dtype=np.float32))
                adds.append(add)
                break
        else:
            return names, []
    if len({b.shape for b in biases}) != 1:
        return names, []
    bias = f"{prefix}/{MHA}/qkv_bias"
    model.add_initializer(numpy_helper.from_array(np.concatenate(biases), bias))
    return [*products, bias], adds


def fuse_sdpa_attention(model, num_heads: int) -> int:
    """Replace each exported SDPA block of ``model`` (an ``onnxruntime.transformers`` ``OnnxModel``)
    by one ``com.microsoft`` ``MultiHeadAttention`` node; returns how many were fused.

    Matched, per block (shapes for F frames, N tokens, C = heads * hd)::

        q = Mul(Transpose[0,2,1,3](Reshape(Q)), sqrt(s))      Q, K, V: (F, N, C) projections
        k = Mul(Transpose[0,2,3,1](Reshape(K)), sqrt(s))
        v = Transpose[0,2,1,3](Reshape(V))
        o = Reshape(Transpose[0,2,1,3](MatMul(Softmax(MatMul(q, k)), v)))   -> (F, N, C)

    becomes ``o = MultiHeadAttention(Q, K, V; num_heads, scale = sqrt(s)^2)`` (softmax(Q K^T s) V per
    head: the same function). Blocks whose intermediate tensors have other consumers are left alone.
    When Q, K and V are each ``Add(MatMul(x, W), b)`` with a constant (C,) bias read by nothing else,
    the three Adds become the node's ``bias`` input (bq | bk | bv, (3C,)), which ONNX Runtime adds
    while it splits the heads (:func:`_projection_biases`).
    """
    from onnx import helper

    fused = 0
    for softmax in list(model.get_nodes_by_op_type("Softmax")):
        qk = model.get_parent(softmax, 0)
        if qk is None or qk.op_type != "MatMul":
            continue
        q_mul, k_mul = model.get_parent(qk, 0), model.get_parent(qk, 1)
        sq, sk = _scalar(model, q_mul), _scalar(model, k_mul)
        if sq is None or sk is None:
            continue
        q_in = _head_split_input(model, model.get_parent(q_mul, 0), [0, 2, 1, 3])
        k_in = _head_split_input(model, model.get_parent(k_mul, 0), [0, 2, 3, 1])
        pv = _single_consumer(model, softmax.output[0], "MatMul")
        v_in = _head_split_input(model, model.get_parent(pv, 1), [0, 2, 1, 3]) if pv is not None else None
        merge = _single_consumer(model, pv.output[0], "Transpose") if pv is not None else None
        out = _single_consumer(model, merge.output[0], "Reshape") if merge is not None else None
        if None in (q_in, k_in, v_in, out) or _perm(merge) != [0, 2, 1, 3]:
            continue
        inputs, adds = _projection_biases(model, [q_in, k_in, v_in], softmax.name or f"attention{fused}")
        node = helper.make_node(
            MHA,
            inputs,
            [out.output[0]],
            name=f"{softmax.name or 'attention'}/{MHA}",
            domain="com.microsoft",
            num_heads=int(num_heads),
            scale=sq * sk,
        )
        model.add_node(node)
        model.remove_nodes([qk, softmax, pv, merge, out, *adds])
        fused += 1
    if fused:
        model.prune_graph()  # the head splits and scalings no one reads any more
        if not any(o.domain == "com.microsoft" for o in model.model.opset_import):
            model.model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return fused


__all__ = ["MHA", "free_frame_axis", "fuse_sdpa_attention", "fuse_vision_graph"]
