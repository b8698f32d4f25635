"""Non-maximum suppression appended to an exported YOLO detect graph, batched in-graph."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OUTPUT_NAME = "output0"
"""The raw head output the graph must have, and the name the NMS output takes over."""

MIN_OPSET = 11
"""NonMaxSuppression, ScatterND and GatherND with these signatures first exist at opset 11."""

MAX_WH = 7680
"""Ultralytics' per-class box offset in pixels, which keeps classes apart in one NMS call."""

MAX_NMS = 30000
"""Ultralytics keeps only this many best-scoring candidates per image before NMS."""

_ROW_FIELDS = 6  # x1, y1, x2, y2, score, class


def append_nms(
    model: onnx.ModelProto,
    *,
    num_classes: int,
    iou: float,
    conf: float,
    max_det: int,
    agnostic: bool,
) -> onnx.ModelProto:
    """Return a copy of `model` whose only output is `output0` [batch, max_det, 6].

    `model`'s `output0` must be float32 [batch, 4 + num_classes, anchors]: centre-x, centre-y,
    width, height in input pixels, then per-class scores. Each output row is
    (x1, y1, x2, y2, score, class), best score first, zero rows after an image's last
    detection: the layout of Ultralytics' `nms=True` export. The selection equals
    `ultralytics.utils.nms.non_max_suppression(conf_thres=conf, iou_thres=iou,
    agnostic=agnostic, max_det=max_det, multi_label=False)` applied image by image, and every
    image of a dynamic batch gets its own detections (one NonMaxSuppression over the batch).
    Equal scores are taken in anchor order, as torchvision.ops.nms does, which Ultralytics runs
    when torchvision is imported (its own fallback orders ties arbitrarily).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    if not 0.0 <= iou <= 1.0:
        raise ValueError(f"iou must be in [0, 1], got {iou}")
    if not 0.0 <= conf <= 1.0:
        raise ValueError(f"conf must be in [0, 1], got {conf}")
    if max_det < 1:
        raise ValueError(f"max_det must be at least 1, got {max_det}")
    opset = _default_domain_opset(model)
    if opset < MIN_OPSET:
        raise ValueError(f"in-graph NMS needs opset >= {MIN_OPSET}, the model has opset {opset}")

    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    raw_output = _find_output(graph)
    _check_head_layout(raw_output, num_classes)

    builder = _GraphBuilder(_used_names(graph))
    raw = builder.fresh("raw_output0")
    _rename_value(graph, OUTPUT_NAME, raw)
    _build_nms(
        builder,
        raw,
        OUTPUT_NAME,
        num_classes=num_classes,
        iou=iou,
        conf=conf,
        max_det=max_det,
        agnostic=agnostic,
    )

    graph.node.extend(builder.nodes)
    graph.initializer.extend(builder.initializers)
    del graph.output[:]
    graph.output.append(
        helper.make_tensor_value_info(
            OUTPUT_NAME,
            TensorProto.FLOAT,
            [_batch_dim(raw_output), max_det, _ROW_FIELDS],
        )
    )
    return result


def _build_nms(
    b: _GraphBuilder,
    raw: str,
    output: str,
    *,
    num_classes: int,
    iou: float,
    conf: float,
    max_det: int,
    agnostic: bool,
) -> None:
    """Emit nodes that read `raw` [B, 4 + nc, N] and write `output` [B, max_det, 6].

    Everything stays channels-first ([B, fields, anchors]) so one GatherElements along the
    anchor axis moves all six fields of a detection at once.
    """
    xywh = _channels(b, raw, 0, 4)
    class_scores = _channels(b, raw, 4, 4 + num_classes)
    # TopK k=1 is the best class and its score in one op, on every opset (ReduceMax changed at
    # 18); on ties it takes the lower class index, as torch.max does.
    best_score, best_class = b.op_n("TopK", [class_scores, b.ints(1)], 2, axis=1)

    # xywh -> xyxy with the same float32 arithmetic as Ultralytics' xywh2xyxy.
    centre = _channels(b, xywh, 0, 2)
    half = b.op("Div", [_channels(b, xywh, 2, 4), b.float_scalar(2.0)])
    top_left = b.op("Sub", [centre, half])
    bottom_right = b.op("Add", [centre, half])
    class_f = b.op("Cast", [best_class], to=TensorProto.FLOAT)
    fields = b.op("Concat", [top_left, bottom_right, best_score, class_f], axis=1)  # [B, 6, N]

    # Ultralytics keeps the MAX_NMS best candidates per image. Candidates are the anchors
    # scoring above conf, so they are a prefix of all anchors sorted by score: keeping the
    # min(N, MAX_NMS) best anchors makes the same cut, and leaves them sorted by score.
    raw_shape = b.op("Shape", [raw])
    batch = b.op("Gather", [raw_shape, b.ints(0)], axis=0)
    anchors = b.op("Gather", [raw_shape, b.ints(2)], axis=0)
    max_nms = b.ints(MAX_NMS)
    # Where/Less rather than Min: Min takes integers only from opset 12.
    kept_anchors = b.op("Where", [b.op("Less", [anchors, max_nms]), anchors, max_nms])
    score_rows = b.op("Reshape", [best_score, b.ints(0, -1)])  # [B, N]
    _, order = b.op_n("TopK", [score_rows, kept_anchors], 2, axis=1)
    sorted_fields = _gather_anchors(b, fields, order)  # [B, 6, M]

    xyxy = _channels(b, sorted_fields, 0, 4)
    scores = _channels(b, sorted_fields, 4, 5)  # [B, 1, M]: one class, the best one
    if not agnostic:
        offset = b.op("Mul", [_channels(b, sorted_fields, 5, 6), b.float_scalar(float(MAX_WH))])
        xyxy = b.op("Add", [xyxy, offset])
    # ONNX wants [y1, x1, y2, x2] with center_point_box=0; IoU is symmetric in x and y, so
    # [x1, y1, x2, y2] selects the same boxes. Both ONNX Runtime and Ultralytics suppress at
    # IoU strictly above iou and keep scores strictly above conf.
    selected = b.op(
        "NonMaxSuppression",
        [
            b.op("Transpose", [xyxy], perm=[0, 2, 1]),  # [B, M, 4]
            scores,
            b.int_scalar(max_det),
            b.float_scalar(iou),
            b.float_scalar(conf),
        ],
        center_point_box=0,
    )  # [K, 3]: (image, class 0, anchor)

    # Scatter the kept scores onto a -inf canvas [B, M], append max_det more -inf columns so
    # every image has at least max_det entries, and let TopK rank each image's survivors on its
    # own, whatever order NonMaxSuppression listed them in. Entries left at -inf are padding.
    image_anchor = b.op("Gather", [selected, b.ints(0, 2)], axis=1)  # [K, 2]
    score_rows_m = b.op("Reshape", [scores, b.ints(0, -1)])  # [B, M]
    kept_scores = b.op("GatherND", [score_rows_m, image_anchor])
    minus_inf = numpy_helper.from_array(np.full([1], -np.inf, dtype=np.float32))
    canvas = b.op("ConstantOfShape", [b.op("Shape", [score_rows_m])], value=minus_inf)
    ranked = b.op("ScatterND", [canvas, image_anchor, kept_scores])
    padding_shape = b.op("Concat", [batch, b.ints(max_det)], axis=0)
    padding = b.op("ConstantOfShape", [padding_shape], value=minus_inf)
    padded = b.op("Concat", [ranked, padding], axis=1)
    top_scores, top_anchors = b.op_n("TopK", [padded, b.ints(max_det)], 2, axis=1)
    # Not just `> -inf`: the ONNX spec leaves open whether a score equal to score_threshold is
    # kept (onnxruntime drops it, as Ultralytics does); this keeps the result the same elsewhere.
    is_detection = b.op("Greater", [top_scores, b.float_scalar(conf)])  # [B, max_det]
    # Padding indices point past M; any in-range index will do, those rows are zeroed below.
    safe_anchors = b.op("Where", [is_detection, top_anchors, b.ints(0)])
    rows = b.op("Transpose", [_gather_anchors(b, sorted_fields, safe_anchors)], perm=[0, 2, 1])
    row_mask = b.op("Reshape", [is_detection, b.ints(0, -1, 1)])  # [B, max_det, 1]
    b.op("Where", [row_mask, rows, b.float_scalar(0.0)], output=output)


def _channels(b: _GraphBuilder, tensor: str, start: int, end: int) -> str:
    """tensor[:, start:end] of a channels-first [B, C, N] tensor."""
    return b.op("Slice", [tensor, b.ints(start), b.ints(end), b.ints(1)])


def _gather_anchors(b: _GraphBuilder, fields: str, anchor_index: str) -> str:
    """fields [B, 6, N] gathered at anchor_index [B, K] along the anchor axis -> [B, 6, K]."""
    index = b.op("Reshape", [anchor_index, b.ints(0, 1, -1)])
    index = b.op("Expand", [index, b.ints(1, _ROW_FIELDS, 1)])
    return b.op("GatherElements", [fields, index], axis=2)


class _GraphBuilder:
    """Collects nodes and constants under names that cannot clash with the host graph."""

    def __init__(self, taken: set[str]) -> None:
        self._taken = taken
        self._constants: dict[tuple[str, tuple[int, ...], bytes], str] = {}
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def fresh(self, stem: str, n_outputs: int = 0) -> str:
        """A new name `nms/<stem>_<k>` that is free, and so are `<name>:0` .. `<name>:<n-1>`."""
        k = 0
        while True:
            name = f"nms/{stem}_{k}"
            claimed = [name, *(f"{name}:{i}" for i in range(n_outputs))]
            if not any(candidate in self._taken for candidate in claimed):
                self._taken.update(claimed)
                return name
            k += 1

    def ints(self, *values: int) -> str:
        """A 1-D int64 constant: what Slice, Reshape, Gather and TopK take."""
        return self._constant(np.asarray(values, dtype=np.int64))

    def int_scalar(self, value: int) -> str:
        return self._constant(np.asarray(value, dtype=np.int64))

    def float_scalar(self, value: float) -> str:
        return self._constant(np.asarray(value, dtype=np.float32))

    def _constant(self, array: np.ndarray) -> str:
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._constants:
            name = self.fresh("const")
            self.initializers.append(numpy_helper.from_array(array, name))
            self._constants[key] = name
        return self._constants[key]

    def op(
        self, op_type: str, inputs: Iterable[str], *, output: str | None = None, **attributes: Any
    ) -> str:
        name = self.fresh(op_type, n_outputs=1)
        output = output or f"{name}:0"
        self.nodes.append(helper.make_node(op_type, list(inputs), [output], name, **attributes))
        return output

    def op_n(
        self, op_type: str, inputs: Iterable[str], n_outputs: int, **attributes: Any
    ) -> list[str]:
        name = self.fresh(op_type, n_outputs)
        outputs = [f"{name}:{i}" for i in range(n_outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outputs, name, **attributes))
        return outputs


def _default_domain_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise ValueError("the model imports no ai.onnx opset")


def _find_output(graph: onnx.GraphProto) -> onnx.ValueInfoProto:
    for output in graph.output:
        if output.name == OUTPUT_NAME:
            return output
    names = [output.name for output in graph.output]
    raise ValueError(f"the graph has no output named {OUTPUT_NAME!r} (outputs: {names})")


def _check_head_layout(output: onnx.ValueInfoProto, num_classes: int) -> None:
    tensor_type = output.type.tensor_type
    if tensor_type.elem_type != TensorProto.FLOAT:
        elem = TensorProto.DataType.Name(tensor_type.elem_type)
        raise ValueError(f"{OUTPUT_NAME} must be float32, it is {elem}")
    if not tensor_type.HasField("shape"):
        return
    dims = tensor_type.shape.dim
    if len(dims) != 3:
        raise ValueError(f"{OUTPUT_NAME} must be [batch, 4 + classes, anchors], rank {len(dims)}")
    channels = dims[1]
    if channels.HasField("dim_value") and channels.dim_value != 4 + num_classes:
        raise ValueError(
            f"{OUTPUT_NAME} has {channels.dim_value} channels, a detect head with "
            f"{num_classes} classes has {4 + num_classes}"
        )


def _batch_dim(output: onnx.ValueInfoProto) -> int | str:
    tensor_type = output.type.tensor_type
    if tensor_type.HasField("shape") and tensor_type.shape.dim:
        first = tensor_type.shape.dim[0]
        if first.HasField("dim_value"):
            return int(first.dim_value)
        if first.dim_param:
            return str(first.dim_param)
    return "batch"


def _used_names(graph: onnx.GraphProto) -> set[str]:
    names: set[str] = set()
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
        names.add(node.name)
    for values in (graph.input, graph.output, graph.value_info):
        names.update(value.name for value in values)
    names.update(tensor.name for tensor in graph.initializer)
    return names


def _rename_value(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Rename tensor `old` to `new` wherever this graph or its subgraphs produce or read it."""
    produced = False
    for node in graph.node:
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new
                produced = True
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for attribute in node.attribute:
            for subgraph in (attribute.g, *attribute.graphs):
                _rename_reads(subgraph, old, new)
    for value in graph.value_info:
        if value.name == old:
            value.name = new
    if not produced:
        raise ValueError(f"no node of the graph produces {old!r}")


def _rename_reads(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Rename outer-scope reads of `old` in a subgraph, unless the subgraph shadows it."""
    if any(value.name == old for value in graph.input) or any(
        old in node.output for node in graph.node
    ):
        return
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for attribute in node.attribute:
            for subgraph in (attribute.g, *attribute.graphs):
                _rename_reads(subgraph, old, new)
