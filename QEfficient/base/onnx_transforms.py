"""ONNX transforms: passes over the exported `onnx.ModelProto`, applied in order after export."""

from __future__ import annotations

import onnx


class OnnxTransform:
    """Base of all ONNX transforms: `apply(model, **context) -> (model, applied)`."""

    @classmethod
    def apply(cls, model: onnx.ModelProto, **context: object) -> tuple[onnx.ModelProto, bool]:
        raise NotImplementedError


class RemoveUnusedInitializersTransform(OnnxTransform):
    """Drop initializers no node reads (the exporter can leave weights of unused modules, e.g. a pooler)."""

    @classmethod
    def apply(cls, model: onnx.ModelProto, **context: object) -> tuple[onnx.ModelProto, bool]:
        used = {name for node in model.graph.node for name in node.input}
        used |= {o.name for o in model.graph.output}
        for node in model.graph.node:  # names read inside subgraphs (If / Loop bodies)
            for attr in node.attribute:
                for graph in [attr.g, *attr.graphs]:
                    used |= {name for sub in graph.node for name in sub.input}
        keep = [t for t in model.graph.initializer if t.name in used]
        removed = len(model.graph.initializer) - len(keep)
        if removed:
            del model.graph.initializer[:]
            model.graph.initializer.extend(keep)
        return model, removed > 0


class AddMetadataTransform(OnnxTransform):
    """Record how the graph was made (library version, transforms, export hash) in its metadata_props."""

    @classmethod
    def apply(cls, model: onnx.ModelProto, **context: object) -> tuple[onnx.ModelProto, bool]:
        entries = {f"qeff_{k}": str(v) for k, v in context.items()}
        existing = {p.key: p for p in model.metadata_props}
        for key, value in entries.items():
            prop = existing.get(key) or model.metadata_props.add()
            prop.key, prop.value = key, value
        return model, bool(entries)
