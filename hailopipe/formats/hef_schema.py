"""The part of HailoRT's public hef.proto that `formats.hailo_hef` reads, as protobuf message classes built
at import time (descriptor_pb2, proto3 like hef.proto, no code generation), and the tables that name
its enum values.  `MESSAGES["Hef"]().ParseFromString(body)` decodes a HEF body.

Protobuf fields used (message.field = number), from HailoRT's public hef.proto; everything else
(microcode contexts, CCWs, ...) is skipped as unknown fields:

    Hef: header=1, network_groups=2 (repeated), included_features=4 {abbale=1, ... sequencer=8},
        extensions=5 and optional_extensions=6 (repeated {type_index=1, name=2})
    Header: hw_arch=1 (enum, see HW_ARCHS), timestamp=2, sdk_version_str=3, version=4,
        sdk_version=5 {major=1, minor=2, revision=3}
    NetworkGroup: network_group_metadata=1, contexts=3, sorted_outputs_order=4,
        fused_layers_metadata=5 {network_has_fused_layers=1, updated_sorted_output_names=2},
        networks_names=6, partial_network_groups=7 {network_group=1}, ops=8, pad_edges=9
        {src=1, dst=2}, network_group_name=10.  Newer HEFs put the device part in
        ops[i].core_op (same field numbers 1,3,4,5,6; partial_core_ops=7 {core_op=1}).
    NetworkGroupMetadata: network_group_name=1, transposed_net=3
    Op: name=1, input_pads=2, output_pads=3, core_op=4, nms_op=5, logits_op=6 {logits_type=1}
    Pad: index=1, name=2, format_order=3, numeric_info=5, tensor_shape=6 {height=1, width=3,
        features=5}, nms_shape=7, format_type=8
    NmsOp: nms_score_th=1, nms_iou_th=2, max_proposals_per_class=3, classes=4, one of
        yolo=7 / yolox=8 / ssd=9 / iou=10 / yolo_seg=11 / yolov8=12, bbox_decoding_only=13
    Context: metadata=3 -> ContextMetadata: edge_layers=2
    EdgeLayer: direction=1 (0 host->device, 1 device->host), edge_layer_type=2 (0 info, 1 mux,
        2 planes), layer_info=3, layer_mux=4, context_switch_info=5 {edge_connection_type=3,
        0 = boundary}, network_index=6, pad_index=7, layer_planes=8
    EdgeLayerInfo: name=1, edge_layer_base=2, numeric_info=3, transposed=6
    EdgeLayerMux: name=1, edge_layer_base=2, predecessors=5 {layer_info=1, layer_mux=2, layer_planes=3}
    EdgeLayerPlanes: name=1, planes_format=2, planes=3, height=4, width=5, features=6
    EdgeLayerBase: height=1, padded_height=2, width=3, padded_width=4, features=5,
        padded_features=6, format=7 (compiler order code), core_buffers_per_frame=10,
        data_bytes=12, max_shmifo_size=15, additional_info=11 {nms_info=1 {number_of_classes=2,
        max_output_size=3, bbox_size=4, input_division_factor=7, burst_size=8}}
    NumericInfo: qp_zp=1, qp_scale=2, limvals_min=3, limvals_max=4 (float32)
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from hailopipe.formats.streams import FormatOrder

# ProtoHEFHwArch -> name; hailo8 branch and master differ only above HAILO8L (5 was HAILO10H,
# 103 is HAILO15H there and HAILO1XH on master).
HW_ARCHS = {0: "HAILO8", 1: "HAILO8P", 2: "HAILO8R", 3: "HAILO8L", 4: "HAILO15M", 5: "HAILO10H",
            6: "HAILO15L", 100: "SAGE_A0", 101: "SAGE_B0", 102: "PAPRIKA_B0", 103: "HAILO15H",
            104: "GINGER", 105: "LAVENDER", 106: "PLUTO", 108: "MARS"}
# EdgeLayerBase.format (compiler code) -> host-side vstream order (device order, then HailoRT's
# default host order for it).
_O = FormatOrder
HOST_ORDER = {0: _O.NHWC, 1: _O.NHWC, 2: _O.NC, 3: _O.FCR, 4: _O.BAYER_RGB, 5: _O.NHW,
              6: _O.HAILO_NMS_BY_CLASS, 7: _O.F8CR, 8: _O.NHWC, 11: _O.YUY2, 13: _O.NHWC, 14: _O.NV12,
              15: _O.NV21, 16: _O.I420}
# EdgeLayerBase.format -> the device order of the stream itself (HailoRTDefaults::get_device_format_order,
# hailort_defaults.cpp); HOST_ORDER above is DEFAULT_FORMAT_ORDER_MAP applied to it.
DEVICE_ORDER = {0: _O.NHWC, 1: _O.NHCW, 2: _O.NC, 3: _O.FCR, 4: _O.BAYER_RGB, 5: _O.NHW,
                6: _O.HAILO_NMS_ON_CHIP, 7: _O.F8CR, 8: _O.RGB888, 11: _O.YUY2, 13: _O.NHWC,
                14: _O.HAILO_YYUV, 15: _O.HAILO_YYVU, 16: _O.HAILO_YYYYUV}
PLANES = {0: _O.NV12, 1: _O.NV21, 2: _O.I420}
NMS_KINDS = {"yolo": "YOLOv5", "yolox": "YOLOX", "ssd": "SSD", "iou": "IoU",
             "yolo_seg": "YOLOv5-Seg", "yolov8": "YOLOv8"}

# --- minimal schema: (field, number, type); "*" = repeated, "?" = proto3 `optional` (has
# presence), capitalised type = message ------------------------------------------------------
SCHEMA = {
    "Hef": [("header", 1, "Header"), ("network_groups", 2, "*NetworkGroup"),
            ("included_features", 4, "IncludedFeatures"), ("extensions", 5, "*Extension"),
            ("optional_extensions", 6, "*Extension")],
    "IncludedFeatures": [(name, i, "bool") for i, name in enumerate(
        ("abbale", "posted_writes", "ddr", "is_multi_context", "compressed_params", "transpose_component",
         "padded_ddr_buffers", "sequencer"), start=1)],
    "Extension": [("type_index", 1, "u32"), ("name", 2, "str")],
    "Header": [("hw_arch", 1, "i32"), ("timestamp", 2, "u64"), ("sdk_version_str", 3, "str"),
               ("version", 4, "u64"), ("sdk_version", 5, "SdkVersion")],
    "SdkVersion": [("major", 1, "u32"), ("minor", 2, "u32"), ("revision", 3, "u32")],
    "NetworkGroup": [("network_group_metadata", 1, "NgMetadata"), ("contexts", 3, "*Context"),
                     ("sorted_outputs_order", 4, "*str"), ("fused_layers_metadata", 5, "Fused"),
                     ("networks_names", 6, "*str"), ("partial_network_groups", 7, "*PartialNg"),
                     ("ops", 8, "*Op"), ("pad_edges", 9, "*PadEdge"),
                     ("network_group_name", 10, "str")],
    "PartialNg": [("network_group", 1, "NetworkGroup")],
    "CoreOp": [("network_group_metadata", 1, "NgMetadata"), ("contexts", 3, "*Context"),
               ("sorted_outputs_order", 4, "*str"), ("fused_layers_metadata", 5, "Fused"),
               ("networks_names", 6, "*str"), ("partial_core_ops", 7, "*PartialCoreOp")],
    "PartialCoreOp": [("core_op", 1, "CoreOp")],
    "NgMetadata": [("network_group_name", 1, "str"), ("transposed_net", 3, "bool")],
    "Fused": [("network_has_fused_layers", 1, "bool"), ("updated_sorted_output_names", 2, "*str")],
    "PadEdge": [("src", 1, "u32"), ("dst", 2, "u32")],
    "Op": [("name", 1, "str"), ("input_pads", 2, "*Pad"), ("output_pads", 3, "*Pad"),
           ("core_op", 4, "CoreOp"), ("nms_op", 5, "NmsOp"), ("logits_op", 6, "LogitsOp")],
    "Pad": [("index", 1, "u32"), ("name", 2, "str"), ("format_order", 3, "i32"),
            ("numeric_info", 5, "NumericInfo"), ("tensor_shape", 6, "TensorShape"),
            ("nms_shape", 7, "NmsShape"), ("format_type", 8, "i32")],
    "TensorShape": [("height", 1, "u32"), ("width", 3, "u32"), ("features", 5, "u32")],
    "NmsShape": [("number_of_classes", 1, "u32"), ("max_bboxes_per_class", 2, "u32")],
    "NmsOp": [("nms_score_th", 1, "double"), ("nms_iou_th", 2, "double"),
              ("max_proposals_per_class", 3, "u32"), ("classes", 4, "u32"),
              ("yolo", 7, "Empty"), ("yolox", 8, "Empty"), ("ssd", 9, "Empty"),
              ("iou", 10, "Empty"), ("yolo_seg", 11, "Empty"), ("yolov8", 12, "Empty"),
              ("bbox_decoding_only", 13, "bool")],
    "Empty": [],
    "LogitsOp": [("logits_type", 1, "i32")],
    "Context": [("context_index", 1, "u32"), ("metadata", 3, "ContextMetadata")],
    "ContextMetadata": [("name", 1, "str"), ("edge_layers", 2, "*EdgeLayer")],
    "EdgeLayer": [("direction", 1, "i32"), ("edge_layer_type", 2, "i32"),
                  ("layer_info", 3, "LayerInfo"), ("layer_mux", 4, "LayerMux"),
                  ("context_switch_info", 5, "SwitchInfo"), ("network_index", 6, "u32"),
                  ("pad_index", 7, "?u32"), ("layer_planes", 8, "LayerPlanes")],
    "SwitchInfo": [("edge_connection_type", 3, "i32")],
    "Edge": [("layer_info", 1, "LayerInfo"), ("layer_mux", 2, "LayerMux"),
             ("layer_planes", 3, "LayerPlanes")],
    "LayerInfo": [("name", 1, "str"), ("edge_layer_base", 2, "Base"),
                  ("numeric_info", 3, "NumericInfo"), ("transposed", 6, "bool")],
    "LayerMux": [("name", 1, "str"), ("edge_layer_base", 2, "Base"), ("predecessors", 5, "*Edge")],
    "LayerPlanes": [("name", 1, "str"), ("planes_format", 2, "i32"), ("planes", 3, "*Edge"),
                    ("height", 4, "u32"), ("width", 5, "u32"), ("features", 6, "u32")],
    "Base": [("height", 1, "u32"), ("padded_height", 2, "u32"), ("width", 3, "u32"),
             ("padded_width", 4, "u32"), ("features", 5, "u32"), ("padded_features", 6, "u32"),
             ("format", 7, "u32"), ("core_buffers_per_frame", 10, "u32"),
             ("additional_info", 11, "AdditionalInfo"), ("data_bytes", 12, "u32"),
             ("max_shmifo_size", 15, "u32")],
    "AdditionalInfo": [("nms_info", 1, "NmsInfo")],
    "NmsInfo": [("number_of_classes", 2, "u64"), ("max_output_size", 3, "u64"), ("bbox_size", 4, "u64"),
                ("input_division_factor", 7, "u64"), ("burst_size", 8, "u32")],
    "NumericInfo": [("qp_zp", 1, "float"), ("qp_scale", 2, "float"), ("limvals_min", 3, "float"),
                    ("limvals_max", 4, "float")],
}


def _build() -> dict:
    """Compile SCHEMA into message classes (proto3, like hef.proto: strings must be UTF-8)."""
    F = descriptor_pb2.FieldDescriptorProto
    scalars = {"i32": F.TYPE_INT32, "u32": F.TYPE_UINT32, "u64": F.TYPE_UINT64,
               "bool": F.TYPE_BOOL, "str": F.TYPE_STRING, "float": F.TYPE_FLOAT,
               "double": F.TYPE_DOUBLE}
    fdp = descriptor_pb2.FileDescriptorProto(name="hailopipe_hef.proto",
                                             package="hailopipe.hef", syntax="proto3")
    for msg_name, fields in SCHEMA.items():
        msg = fdp.message_type.add(name=msg_name)
        for fname, number, ftype in fields:
            repeated, optional = ftype.startswith("*"), ftype.startswith("?")
            ftype = ftype.lstrip("*?")
            f = msg.field.add(name=fname, number=number,
                              label=F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL)
            if optional:  # proto3 `optional`: a synthetic one-field oneof gives presence
                f.proto3_optional, f.oneof_index = True, len(msg.oneof_decl)
                msg.oneof_decl.add(name="_" + fname)
            if ftype in scalars:
                f.type = scalars[ftype]
            else:
                f.type, f.type_name = F.TYPE_MESSAGE, ".hailopipe.hef." + ftype
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName("hailopipe.hef." + name))
            for name in SCHEMA}


MESSAGES = _build()
