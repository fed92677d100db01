"""Fused attention for ONNX Runtime: each layer's KV-cache write and attention become one `GroupQueryAttention`.

The exported graph spells attention out in standard ONNX ops: per layer, a scatter writes the step's keys and values
into the retained cache (`QEfficient/transformers/cache_utils.py`), and grouped-query attention
(`QEfficient/transformers/attention.py`) reads the whole cache with the additive mask built from `position_ids`.
That is about a hundred small nodes per layer, and on a CPU a decode step of a small model spends as long in them
as in its weight MatMuls. ONNX Runtime's `com.microsoft::GroupQueryAttention` does the write and the attention in
one kernel, reads only the slots up to each token's position, and updates the cache in place when past and present
share one buffer (which `run_with_state` arranges: `in_place_states`).

`fuse_attention` finds, per layer, the write-and-attend block that our own code exports, checks every node of it,
and replaces it. A layer whose block differs in any way (another attention implementation, attention sinks, shared
KV between layers, ...) keeps its standard ops; so does a whole graph with recurrent state (whose prompts are
left-padded). With continuous batching (`batch_index`) the kernel runs on every cache row, the step's rows placed
at theirs. The mask goes in as the kernel's `attention_bias`, so sliding
windows and any other mask rule keep their exact meaning; the arithmetic is the same (scale, softcap, fp32 softmax).

What the kernel needs of the inputs, which the text generator's right-padded chunks give:
each row's valid tokens come first in the step, at consecutive positions (padding, position -1, after them), and
a row's first position plus the step length fits in the cache. `check_fused_positions` raises a clear error for any
other input, rather than letting the kernel compute something else.
"""

from __future__ import annotations

import functools
import logging
import shutil
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from QEfficient.backends.graph_edit import set_nodes

logger = logging.getLogger(__name__)

FUSED_OP = "GroupQueryAttention"
CONTRIB_DOMAIN = "com.microsoft"
# The kernel's input slots (ONNX Runtime 1.32): 0-2 query/key/value, 3-4 past key/value, 5 seqlens_k,
# 6 total_sequence_length, 10 attention_bias, 16 query_seqlens (valid tokens per row).
_QUERY_SEQLENS_INPUT = 16
_BIAS_INPUT = 10


@dataclass
class _Block:
    """One layer's write-and-attend block, as matched."""

    layer: str  # the key state's name, e.g. "past_key.3"
    past_key: str
    past_value: str
    query: str  # [B, H, S, D] after the rotary embedding
    key: str  # [B, H_kv, S, D], this step's keys, likewise
    value: str
    mask: str  # additive [B|1, 1, S, C]
    output: str  # [B, S, H, D]
    scale: float
    softcap: float | None
    removed: list[onnx.NodeProto]  # the nodes whose outputs the fused nodes take over (cache writes, attention output)
    heads: int = 0
    kv_heads: int = 0
    # (query, key before the rotary embedding, cos, sin [B, S, D]) when the kernel can apply the embedding itself
    rotary: tuple[str, str, str, str] | None = None
    output_flat: str | None = None  # the graph's [B, S, H·D] view of the output, which the kernel then writes
    rows: str | None = None  # continuous batching: each batch row's cache row [B] (the kernel runs on all F rows)


class _Graph:
    """Producer / consumer / constant lookups over one graph."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.producer = {out: node for node in graph.node for out in node.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in graph.node:
            for name in node.input:
                self.consumers[name].append(node)
        self.initializers = {t.name: t for t in graph.initializer}

    def node(self, name: str, op_type: str) -> onnx.NodeProto | None:
        node = self.producer.get(name)
        return node if node is not None and node.op_type == op_type else None

    def data_consumers(self, name: str) -> list[onnx.NodeProto]:
        """Consumers that read the tensor's data (not only its shape)."""
        return [n for n in self.consumers[name] if n.op_type != "Shape"]

    def only_consumer(self, name: str, op_type: str) -> onnx.NodeProto | None:
        readers = self.data_consumers(name)
        return readers[0] if len(readers) == 1 and readers[0].op_type == op_type else None

    def scalar(self, name: str) -> float | None:
        """The value of a one-element constant, or None."""
        if name in self.initializers:
            tensor = self.initializers[name]
            if tensor.data_location == TensorProto.EXTERNAL:
                return None
            array = numpy_helper.to_array(tensor)
        else:
            node = self.node(name, "Constant")
            if node is None or not node.attribute or node.attribute[0].name != "value":
                return None
            array = numpy_helper.to_array(node.attribute[0].t)
        return float(array.reshape(-1)[0]) if array.size == 1 else None


def _attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def _written_states(g: _Graph, state: str) -> tuple[str, onnx.NodeProto] | None:
    """(this step's keys or values `[B, H_kv, S, D]`, the scatter) if `state`'s retained output is written by
    `FixedKVLayer`'s padding-safe scatter along the slot axis:
    scatter(state, slots, where(valid, gather(new, source), gather(state, slots))), or with continuous batching the
    same at (cache row, head, slot) of the full cache: scatter_nd(state, at, where(valid, gather(new, source),
    gather_nd(state, at)))."""
    scatter = g.producer.get(f"{state}_RetainedState")
    if scatter is None or scatter.input[0] != state:
        return None
    if scatter.op_type == "ScatterElements" and _attr(scatter, "axis") == 2:
        updates = scatter.input[2]
    elif scatter.op_type == "ScatterND":
        view = g.node(scatter.input[2], "Reshape")
        updates = view.input[0] if view is not None else scatter.input[2]
    else:
        return None
    if _attr(scatter, "reduction", b"none") not in (b"none", "none"):
        return None
    where = g.node(updates, "Where")
    new = g.node(where.input[1], "GatherElements") if where is not None else None
    if new is None or _attr(new, "axis") != 2:
        return None
    # the other branch re-writes the cache's own values: state gathered (and viewed) at the written indices
    old = where.input[2]
    while (node := g.producer.get(old)) is not None and node.op_type == "Reshape":
        old = node.input[0]
    gather = g.producer.get(old)
    if gather is None or gather.op_type not in ("GatherElements", "GatherND", "Gather"):
        return None
    source = gather.input[0]
    while (node := g.producer.get(source)) is not None and node.op_type in ("Reshape", "Flatten"):
        source = node.input[0]
    if source != state:
        return None
    return new.input[0], scatter


def _cache_rows(g: _Graph, retained: str) -> tuple[str, str] | None:
    """(the step's rows of the cache, the row indices [B]) if attention reads `retained` through a Gather of rows
    (continuous batching: `index_select(0, batch_index.reshape(-1))`)."""
    gather = g.only_consumer(retained, "Gather")
    if gather is None or _attr(gather, "axis", 0) != 0:
        return None
    rows = g.node(gather.input[1], "Reshape")
    if rows is None or rows.input[0] != "batch_index":
        return None
    return gather.output[0], gather.input[1]


def _skip_casts(g: _Graph, name: str) -> str:
    while (cast := g.node(name, "Cast")) is not None and _attr(cast, "to") == TensorProto.FLOAT:
        name = cast.input[0]
    return name


def _attention(g: _Graph, keys: str, values: str) -> dict | None:
    """Match `grouped_query_attention` over the cache tensors `keys` / `values` [B, H_kv, C, D]:
    softmax(mask + view(matmul(reshape(q), keysᵀ) · scale [softcapped])) @ values, viewed back to [B, S, H, D]."""
    transpose = g.only_consumer(keys, "Transpose")
    probs_matmul = g.only_consumer(values, "MatMul")
    if transpose is None or probs_matmul is None or list(_attr(transpose, "perm", [])) != [0, 1, 3, 2]:
        return None
    scores_matmul = g.only_consumer(transpose.output[0], "MatMul")
    if scores_matmul is None or scores_matmul.input[1] != transpose.output[0] or probs_matmul.input[1] != values:
        return None
    softmax = g.node(_skip_casts(g, probs_matmul.input[0]), "Softmax")
    if softmax is None or _attr(softmax, "axis", -1) not in (-1, 3):
        return None
    unfold = g.node(softmax.input[0], "Reshape")
    add = g.node(unfold.input[0], "Add") if unfold is not None else None
    if add is None:
        return None
    for side in (0, 1):
        fold = g.node(add.input[side], "Reshape")
        if fold is not None:
            mask_side = add.input[1 - side]
            break
    else:
        return None
    # the mask: attention_mask[:, :, None, :, :ctx] (an Unsqueeze on axis 2 and no-op Slices)
    mask, unsqueezes = mask_side, 0
    while (node := g.producer.get(mask)) is not None and node.op_type in ("Slice", "Unsqueeze"):
        if node.op_type == "Slice" and len(node.input) > 4 and node.input[4] and g.scalar(node.input[4]) != 1:
            return None
        unsqueezes += node.op_type == "Unsqueeze"
        mask = node.input[0]
    if unsqueezes != 1:
        return None
    scores, softcap = fold.input[0], None
    if (outer := g.node(scores, "Mul")) is not None and (tanh := g.node(outer.input[0], "Tanh")) is not None:
        inner = g.node(tanh.input[0], "Div")
        softcap = g.scalar(outer.input[1])
        if inner is None or softcap is None or g.scalar(inner.input[1]) != softcap:
            return None
        scores = inner.input[0]
    scaled = g.node(scores, "Mul")
    if scaled is None or scaled.input[0] != scores_matmul.output[0]:
        return None
    scale = g.scalar(scaled.input[1])
    grouped_query = g.node(scores_matmul.input[0], "Reshape")
    if scale is None or grouped_query is None:
        return None
    # every intermediate tensor is read only inside the block
    chain = [transpose, scores_matmul, scaled, fold, add, unfold, softmax]
    if any(len(g.data_consumers(node.output[0])) != 1 for node in chain):
        return None
    view = g.only_consumer(probs_matmul.output[0], "Reshape")
    heads_last = g.only_consumer(view.output[0], "Transpose") if view is not None else None
    if heads_last is None or list(_attr(heads_last, "perm", [])) != [0, 2, 1, 3]:
        return None
    return {
        "query": grouped_query.input[0],
        "mask": mask,
        "output": heads_last.output[0],
        "scale": scale,
        "softcap": softcap,
        "removed": [heads_last],
    }


@functools.cache
def kernel_available() -> bool:
    """Whether this ONNX Runtime's CPU `GroupQueryAttention` takes `query_seqlens` (ONNX Runtime 1.32+), which the
    fused graph needs for right-padded chunks."""
    import onnxruntime as ort

    names = ["q", "k", "v", "pk", "pv", "sk", "total", *[""] * 9, "qs"]
    node = helper.make_node(FUSED_OP, names, ["o", "pko", "pvo"], domain=CONTRIB_DOMAIN, num_heads=1, kv_num_heads=1)
    floats = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("q", "k", "v", "pk", "pv")]
    ints = [helper.make_tensor_value_info(n, TensorProto.INT32, None) for n in ("sk", "total", "qs")]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("o", "pko", "pvo")]
    model = helper.make_model(
        helper.make_graph([node], "probe", floats + ints, outputs),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(CONTRIB_DOMAIN, 1)],
    )
    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        cache = np.zeros((1, 1, 4, 8), np.float32)
        token = np.ones((1, 1, 8), np.float32)
        ints_in = {"sk": np.array([0], np.int32), "total": np.array(4, np.int32), "qs": np.array([1], np.int32)}
        session.run(None, {"q": token, "k": token, "v": token, "pk": cache, "pv": cache, **ints_in})
    except Exception:  # noqa: BLE001 - any failure means: do not fuse
        return False
    return True


def fusion_blockers(model: onnx.ModelProto, specializations: list[dict[str, int | None]]) -> str | None:
    """Why this graph cannot use fused attention at all, or None."""
    inputs = {i.name for i in model.graph.input}
    if "position_ids" not in inputs:
        return "the graph has no position_ids input"
    states = [name for name in inputs if any(o.name == f"{name}_RetainedState" for o in model.graph.output)]
    # cross-attention keys and values (a vision-language model's `past_cross_*`) pass through unchanged: not a blocker
    states = [name for name in states if not name.startswith(("past_cross_key.", "past_cross_value."))]
    if any(not name.startswith(("past_key.", "past_value.")) for name in states):
        return "the graph has recurrent state, whose prompts are left-padded"
    for spec in specializations:
        for name in states:
            dims = next(i for i in model.graph.input if i.name == name).type.tensor_type.shape.dim
            ctx = dims[2].dim_value if dims[2].HasField("dim_value") else spec.get(dims[2].dim_param)
            seq = spec.get("seq_len")
            if ctx and seq and ctx % seq:
                return f"ctx_len {ctx} is not a multiple of seq_len {seq}: a last prefill chunk could overrun the cache"
    if not kernel_available():
        return "this ONNX Runtime's GroupQueryAttention lacks query_seqlens (ONNX Runtime 1.32 or newer has it)"
    return None


def _rotary(g: _Graph, rotated: str, shapes: dict) -> tuple[str, str, str] | None:
    """(x, cos, sin) if `rotated` is transformers' `apply_rotary_pos_emb` of x [B, H, S, D] (`rotate_half`: the
    halves of the last axis swapped and the new first half negated):
    x · unsqueeze(cos, 1) + concat(-x[..., D/2:], x[..., :D/2]) · unsqueeze(sin, 1);
    also in the partial form (Phi-3) concat(that of x[..., :R], x[..., R:]) when R, the width of cos, is D."""
    partial = g.node(rotated, "Concat")
    if partial is not None and len(partial.input) == 2 and _attr(partial, "axis") in (-1, 3):
        inner, rest = _rotary(g, partial.input[0], shapes), g.node(partial.input[1], "Slice")
        head = g.node(inner[0], "Slice") if inner is not None else None
        if head is None or rest is None or head.input[0] != rest.input[0] or g.scalar(head.input[1]) != 0:
            return None
        x = head.input[0]
        width, cos_width = shapes.get(x, [None])[-1], shapes.get(inner[1], [None])[-1]
        return (x, *inner[1:]) if width is not None and width == cos_width else None
    add = g.node(rotated, "Add")
    if add is None:
        return None
    products = [g.node(name, "Mul") for name in add.input]
    if None in products:
        return None
    for direct, swapped in (products, products[::-1]):
        concat = next((g.node(n, "Concat") for n in swapped.input if g.node(n, "Concat") is not None), None)
        if concat is None or _attr(concat, "axis") not in (-1, 3) or len(concat.input) != 2:
            continue
        negated, first_half = g.node(concat.input[0], "Neg"), g.node(concat.input[1], "Slice")
        second_half = g.node(negated.input[0], "Slice") if negated is not None else None
        if first_half is None or second_half is None or first_half.input[0] != second_half.input[0]:
            continue
        x = first_half.input[0]
        if x not in direct.input or not _half_slices(g, first_half, second_half):
            continue
        cos = _unsqueezed_axis_1(g, next(n for n in direct.input if n != x))
        sin = _unsqueezed_axis_1(g, next(n for n in swapped.input if n != concat.output[0]))
        if cos is not None and sin is not None:
            return x, cos, sin
    return None


def _half_slices(g: _Graph, first: onnx.NodeProto, second: onnx.NodeProto) -> bool:
    """`first` is x[..., :end] from 0 and `second` x[..., start:] to the end, both on the last axis with step 1 (that
    each is half of the axis is checked on the inferred shapes)."""
    for node in (first, second):
        axes = g.scalar(node.input[3]) if len(node.input) > 3 and node.input[3] else None
        steps = g.scalar(node.input[4]) if len(node.input) > 4 and node.input[4] else 1
        if axes not in (-1, 3) or steps != 1:
            return False
    end = g.scalar(second.input[2])
    return g.scalar(first.input[1]) == 0 and end is not None and end >= 2**31 - 1


def _unsqueezed_axis_1(g: _Graph, name: str) -> str | None:
    node = g.node(name, "Unsqueeze")
    if node is None:
        return None
    axes = g.scalar(node.input[1]) if len(node.input) > 1 else _attr(node, "axes", [None])[0]
    return node.input[0] if axes == 1 else None


def _heads_first_view(g: _Graph, name: str, shapes: dict) -> str | None:
    """P if `name` [B, H, S, D] is transpose(reshape(P, [B, S, H, D]), 1, 2) of P [B, S, H·D] (a projection's output
    viewed as heads), so the kernel can read P directly."""
    transpose = g.node(name, "Transpose")
    if transpose is None or list(_attr(transpose, "perm", [])) != [0, 2, 1, 3]:
        return None
    view = g.node(transpose.input[0], "Reshape")
    if view is None:
        return None
    batch, heads, seq, dim = shapes[name]
    return view.input[0] if shapes.get(view.input[0]) == [batch, seq, heads * dim] else None


def _packed_projection(g: _Graph, flats: list[str], shapes: dict) -> str | None:
    """The packed tensor [B, S, (H + 2 H_kv)·D] if the query, key and value are the three outputs, in order, of one
    Split of it on the last axis (a packed QKV projection, `weight_packing.py`)."""
    split = g.node(flats[0], "Split")
    if split is None or list(split.output) != flats or _attr(split, "axis") not in (-1, 2):
        return None
    return split.input[0] if len(shapes.get(split.input[0], [])) == 3 else None


def _match_blocks(g: _Graph, shapes: dict, sentinels: set[int]) -> list[_Block]:
    blocks = []
    for value in g.graph.input:
        if not value.name.startswith("past_key."):
            continue
        past_key, past_value = value.name, "past_value." + value.name[len("past_key.") :]
        written_keys, written_values = _written_states(g, past_key), _written_states(g, past_value)
        if written_keys is None or written_values is None:
            continue
        keys, values, rows = f"{past_key}_RetainedState", f"{past_value}_RetainedState", None
        if "batch_index" in g.consumers:  # continuous batching: attention reads the step's rows of the cache
            key_rows, value_rows = _cache_rows(g, keys), _cache_rows(g, values)
            if key_rows is None or value_rows is None or key_rows[1] != value_rows[1]:
                continue
            (keys, rows), values = key_rows, value_rows[0]
        matched = _attention(g, keys, values)
        if matched is None:
            logger.info("%s: attention not in the fusable form; left as standard ops", past_key)
            continue
        block = _Block(
            layer=past_key,
            past_key=past_key,
            past_value=past_value,
            key=written_keys[0],
            value=written_values[0],
            rows=rows,
            **{**matched, "removed": [written_keys[1], written_values[1], *matched["removed"]]},
        )
        query, key = _rotary(g, block.query, shapes), _rotary(g, block.key, shapes)
        if query is not None and key is not None and query[1:] == key[1:]:
            block.rotary = (query[0], key[0], *query[1:])
        # a full rotary embedding keeps the shapes, which inference may know only before it (Phi-3's partial form)
        unrotated = (block.rotary[0], block.rotary[1]) if block.rotary else (block.query, block.key)
        if not _shapes_fit(block, *unrotated, shapes, sentinels, value.type.tensor_type.elem_type):
            continue
        block.heads, block.kv_heads = shapes[unrotated[0]][1], shapes[past_key][1]
        if shapes[unrotated[0]][3] % 16:  # the CPU kernel rotates head sizes that are multiples of 16
            block.rotary = None
        # the output as [B, S, H·D]: transformers' attn_output.reshape(*input_shape, -1) of it, when that is next
        merge = g.only_consumer(block.output, "Reshape")
        heads_dim = block.heads * shapes[unrotated[0]][3]
        if merge is not None and shapes.get(merge.output[0]) == [*shapes[block.output][:2], heads_dim]:
            block.output_flat = merge.output[0]
            block.removed.append(merge)
        blocks.append(block)
    return blocks


def _shapes_fit(block: _Block, query: str, key: str, shapes: dict, sentinels: set[int], dtype: int) -> bool:
    """Whether the block's tensors (its `query` and `key` as given) have the shapes the kernel needs (dims that depend
    on batch and sequence length are sentinels, the others known), fp32 caches, and a head size the CPU kernel takes
    (a multiple of 8)."""
    query, key, value = shapes.get(query), shapes.get(key), shapes.get(block.value)
    cache, mask = shapes.get(block.past_key), shapes.get(block.mask)
    if dtype != TensorProto.FLOAT or not all(s and len(s) == 4 and None not in s for s in (query, key, value, cache)):
        return False
    if mask is None or len(mask) != 4 or None in mask:
        return False
    batch, heads, seq, dim = query
    if batch not in sentinels or seq not in sentinels or heads in sentinels:
        return False
    cache_rows, kv_heads, ctx = cache[0], cache[1], cache[2]  # cache rows: B, or F with continuous batching
    return (
        key == [batch, kv_heads, seq, dim]
        and value == key
        and cache == [cache_rows, kv_heads, ctx, dim]
        and (cache_rows == batch) == (block.rows is None)
        and shapes.get(block.past_value) == cache
        and mask in ([batch, 1, seq, ctx], [1, 1, seq, ctx])
        and shapes.get(block.output) in ([batch, seq, heads, dim], [batch, seq, None, dim])
        and heads % kv_heads == 0
        and dim % 8 == 0
    )


def _rotary_tables(
    model: onnx.ModelProto, cos: str, sin: str, ctx_len: int, base_dir: Path
) -> tuple[np.ndarray, np.ndarray] | None:
    """The kernel's cos/sin caches [ctx_len, D/2] for the graph's own rotary tensors `cos`, `sin` [B, S, D]: their
    subgraph, which must depend on `position_ids` alone, run by ONNX Runtime at positions 0..ctx_len-1. None unless
    the two halves of the last axis are equal (transformers' `rotate_half` layout) and each position's values do not
    depend on the other positions in the step (checked on a second, shuffled run)."""
    import onnxruntime as ort

    sub = _subgraph(model, ["position_ids"], [cos, sin], base_dir)
    if sub is None:
        return None
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(sub.SerializeToString(), options, providers=["CPUExecutionProvider"])
        ordered = np.arange(ctx_len, dtype=np.int64)[None]
        shuffled = np.random.default_rng(0).permutation(ctx_len)[None]
        cos_values, sin_values = session.run(None, {"position_ids": ordered})
        cos_shuffled, sin_shuffled = session.run(None, {"position_ids": shuffled})
    except Exception as exc:  # noqa: BLE001 - any failure means: keep the graph's own rotary
        logger.info("rotary left in the graph: %s", exc)
        return None
    if cos_values.ndim != 3 or cos_values.shape[:2] != (1, ctx_len) or sin_values.shape != cos_values.shape:
        return None
    for values, reordered in ((cos_values, cos_shuffled), (sin_values, sin_shuffled)):
        if not np.array_equal(values[0, shuffled[0]], reordered[0]):
            return None
    half = cos_values.shape[-1] // 2
    tables = []
    for values in (cos_values[0], sin_values[0]):
        if not np.array_equal(values[:, :half], values[:, half:]):
            return None
        tables.append(np.ascontiguousarray(values[:, :half], dtype=np.float32))
    return tables[0], tables[1]


def _subgraph(model: onnx.ModelProto, inputs: list[str], outputs: list[str], base_dir: Path) -> onnx.ModelProto | None:
    """The nodes computing `outputs` from `inputs` as a model (with the weights they read), or None if they read
    any other graph input."""
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    initializers = {t.name: t for t in graph.initializer}
    graph_inputs = {i.name: i for i in graph.input}
    needed, stack, seen = [], list(outputs), set()
    while stack:
        name = stack.pop()
        if name in seen or name in inputs or name in initializers or not name:
            continue
        seen.add(name)
        if name in graph_inputs or name not in producer:
            return None
        node = producer[name]
        if node.output[0] not in {n.output[0] for n in needed}:
            needed.append(node)
            stack.extend(node.input)
            if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
                return None
    order = {node.output[0]: i for i, node in enumerate(graph.node)}
    needed.sort(key=lambda node: order[node.output[0]])
    weights = []
    for name in {n for node in needed for n in node.input if n in initializers}:
        tensor = onnx.TensorProto()
        tensor.CopyFrom(initializers[name])
        if tensor.data_location == TensorProto.EXTERNAL:
            onnx.external_data_helper.load_external_data_for_tensor(tensor, str(base_dir))
            tensor.data_location = TensorProto.DEFAULT
            del tensor.external_data[:]
        weights.append(tensor)
    sub = helper.make_graph(
        needed,
        "rotary",
        [graph_inputs[name] for name in inputs],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs],
        weights,
    )
    return helper.make_model(sub, opset_imports=model.opset_import, ir_version=model.ir_version)


def fuse_attention(model: onnx.ModelProto, base_dir: Path, inferred: tuple[dict, set[int]]) -> list[str]:
    """Replace every fusable layer's cache write and attention in `model` (in place) by one `GroupQueryAttention`
    (with the rotary embedding, when it is transformers' `rotate_half` form); returns the fused layers' key-state
    names (empty: the graph is unchanged). `base_dir` holds the weight files; `inferred` is
    `graph_shapes.inferred_shapes(model)`. Call `fusion_blockers` first."""
    shapes, sentinels = inferred
    g = _Graph(model.graph)
    blocks = _match_blocks(g, shapes, sentinels)
    if not blocks:
        return []
    graph = model.graph
    ctx_len = shapes[blocks[0].past_key][2]
    tables: dict[tuple[str, str], tuple[str, str] | None] = {}
    for block in blocks:
        if block.rotary is not None and block.rotary[2:] not in tables:
            values = _rotary_tables(model, *block.rotary[2:], ctx_len, base_dir)
            names = tuple(f"qeff_attention/{kind}_cache.{len(tables)}" for kind in ("cos", "sin"))
            if values is not None:
                graph.initializer.extend(numpy_helper.from_array(v, n) for v, n in zip(values, names))
            tables[block.rotary[2:]] = None if values is None else names
    removed = {node.output[0] for block in blocks for node in block.removed}
    nodes = [node for node in graph.node if node.output[0] not in removed]
    rows = blocks[0].rows
    nodes += _sequence_lengths(blocks[0].past_key, rows)
    masks: dict[str, str] = {}  # continuous batching: each mask scattered to the cache rows once per step
    for block in blocks:
        rotary_tables = tables.get(block.rotary[2:]) if block.rotary else None
        query, key = block.rotary[:2] if rotary_tables else (block.query, block.key)
        if rows is not None and shapes[block.mask][0] != 1 and block.mask not in masks:
            masks[block.mask] = f"qeff_attention/rows/{len(masks)}"
            nodes += _to_cache_rows(block.mask, masks[block.mask], rank=4)
        nodes += _fused_nodes(
            block, _kernel_inputs(g, [query, key, block.value], shapes), rotary_tables, masks.get(block.mask)
        )
    set_nodes(graph, nodes)
    _remove_dead_nodes(graph)
    if not any(o.domain == CONTRIB_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(CONTRIB_DOMAIN, 1))
    return [block.layer for block in blocks]


def _kernel_inputs(g: _Graph, heads_first: list[str], shapes: dict) -> list[str | None]:
    """The kernel's query, key, value inputs for these [B, H, S, D] tensors: one packed [B, S, (H + 2 H_kv)·D] tensor
    and two empty inputs where the graph split them from one, the projections' [B, S, H·D] outputs where it only viewed
    them as heads, else None for each tensor the fused nodes must reshape themselves."""
    flat = [_heads_first_view(g, name, shapes) for name in heads_first]
    packed = _packed_projection(g, flat, shapes) if None not in flat else None
    return [packed, "", ""] if packed is not None else flat


_SEQLENS_K, _TOTAL, _QUERY_SEQLENS = "qeff_attention/seqlens_k", "qeff_attention/total_len", "qeff_attention/valid"
_ROWS, _CACHE_ROWS = "qeff_attention/rows", "qeff_attention/cache_rows"  # continuous batching: [B, 1], [1] = F


def _constant(name: str, values: list[int], dtype: int = TensorProto.INT64) -> onnx.NodeProto:
    array = np.array(values, dtype=helper.tensor_dtype_to_np_dtype(dtype))
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(array, name), name=name)


def _sequence_lengths(cache: str, rows: str | None) -> list[onnx.NodeProto]:
    """The kernel's per-row inputs from `position_ids` [B, S], computed once per step: `query_seqlens` = valid tokens
    n, `seqlens_k` = first position + n - 1 (0 for a row without valid tokens, which the kernel leaves alone), and
    `total_sequence_length` = the cache length (read from `cache`'s shape: every fused layer's cache is as long).
    With continuous batching (`rows`: each batch row's cache row) the kernel runs on every cache row: the per-row
    inputs are scattered to them, and the rows not in the step get zeros (left alone)."""
    p = "qeff_attention/"
    nodes = [
        _constant(p + "zero", [0]),
        _constant(p + "one", [1]),
        _constant(p + "first_column", [0]),
        _constant(p + "slot_axis", [2]),
        helper.make_node("GreaterOrEqual", ["position_ids", p + "zero"], [p + "is_valid"]),
        helper.make_node("Cast", [p + "is_valid"], [p + "is_valid_i64"], to=TensorProto.INT64),
        helper.make_node("ReduceSum", [p + "is_valid_i64", p + "one"], [p + "count"], keepdims=0),
        helper.make_node("Gather", ["position_ids", p + "first_column"], [p + "first"], axis=1),
        helper.make_node("Squeeze", [p + "first", p + "one"], [p + "first_position"]),
        helper.make_node("Add", [p + "first_position", p + "count"], [p + "end"]),
        helper.make_node("Sub", [p + "end", p + "one"], [p + "last"]),
        helper.make_node("Max", [p + "last", p + "zero"], [p + "last_or_zero"]),
        helper.make_node("Shape", [cache], [p + "cache_shape"]),
        helper.make_node("Gather", [p + "cache_shape", p + "slot_axis"], [p + "ctx"], axis=0),
        helper.make_node("Squeeze", [p + "ctx"], [p + "ctx_scalar"]),
        helper.make_node("Cast", [p + "ctx_scalar"], [_TOTAL], to=TensorProto.INT32),
    ]
    lengths = {"last_or_zero": _SEQLENS_K, "count": _QUERY_SEQLENS}
    if rows is not None:
        nodes += [
            helper.make_node("Unsqueeze", [rows, p + "one"], [_ROWS]),
            helper.make_node("Slice", [p + "cache_shape", p + "zero", p + "one"], [_CACHE_ROWS]),
            helper.make_node(
                "ConstantOfShape", [_CACHE_ROWS], [p + "zeros"], value=numpy_helper.from_array(np.zeros(1, np.int64))
            ),
        ]
        for name in list(lengths):
            nodes.append(helper.make_node("ScatterND", [p + "zeros", _ROWS, p + name], [p + name + "_rows"]))
        lengths = {f"{name}_rows": out for name, out in lengths.items()}
    nodes += [helper.make_node("Cast", [p + name], [out], to=TensorProto.INT32) for name, out in lengths.items()]
    return nodes


def _to_cache_rows(name: str, out: str, rank: int) -> list[onnx.NodeProto]:
    """`out`: the batch rows of `name` [B, ...] placed at their cache rows of zeros [F, ...] (continuous batching)."""
    p = out + "/"
    return [
        helper.make_node("Shape", [name], [p + "shape"]),
        _constant(p + "from", [1]),
        _constant(p + "to", [rank]),
        helper.make_node("Slice", [p + "shape", p + "from", p + "to"], [p + "rest"]),
        helper.make_node("Concat", [_CACHE_ROWS, p + "rest"], [p + "full_shape"], axis=0),
        helper.make_node("ConstantOfShape", [p + "full_shape"], [p + "zeros"]),
        helper.make_node("ScatterND", [p + "zeros", _ROWS, name], [out]),
    ]


def _fused_nodes(
    block: _Block, flat: list[str | None], rotary_tables: tuple[str, str] | None, mask_rows: str | None = None
) -> list[onnx.NodeProto]:
    """The kernel for one block: its query/key/value as [B, S, H·D] (`flat`, or reshaped here from [B, H, S, D] where
    None; before the rotary embedding when the kernel applies it from `rotary_tables`), the fused node writing the
    block's retained outputs, and its output under the name the graph reads (viewed back as heads if need be).
    With continuous batching the kernel runs on all F cache rows: the inputs (and the mask, `mask_rows`) are placed
    at their rows, the other rows get no tokens, and the step's rows of the output are gathered back."""
    p = f"qeff_attention/{block.layer}/"
    heads_first = [*block.rotary[:2], block.value] if rotary_tables else [block.query, block.key, block.value]
    nodes = []
    qkv = []
    for role, name, given in zip(("query", "key", "value"), heads_first, flat):
        if given is None:
            if not nodes:
                nodes.append(_constant(p + "flat", [0, 0, -1]))
            nodes.append(helper.make_node("Transpose", [name], [p + role + "_bshd"], perm=[0, 2, 1, 3]))
            nodes.append(helper.make_node("Reshape", [p + role + "_bshd", p + "flat"], [p + role + "_flat"]))
            given = p + role + "_flat"
        if block.rows is not None and given:
            nodes += _to_cache_rows(given, p + role + "_rows", rank=3)
            given = p + role + "_rows"
        qkv.append(given)
    inputs = [*qkv, block.past_key, block.past_value, _SEQLENS_K, _TOTAL]
    attributes = {"num_heads": block.heads, "kv_num_heads": block.kv_heads, "scale": block.scale}
    if rotary_tables is not None:
        inputs += list(rotary_tables)
        attributes.update(do_rotary=1, rotary_interleaved=0)
    inputs += [""] * (_BIAS_INPUT - len(inputs)) + [mask_rows or block.mask]
    inputs += [""] * (_QUERY_SEQLENS_INPUT - len(inputs)) + [_QUERY_SEQLENS]
    if block.softcap is not None:
        attributes["softcap"] = block.softcap
    output = block.output_flat or p + "output"
    kernel_output = output if block.rows is None else p + "output_rows"
    outputs = [kernel_output, f"{block.past_key}_RetainedState", f"{block.past_value}_RetainedState"]
    nodes.append(helper.make_node(FUSED_OP, inputs, outputs, domain=CONTRIB_DOMAIN, name=p + FUSED_OP, **attributes))
    if block.rows is not None:
        nodes.append(helper.make_node("Gather", [kernel_output, block.rows], [output], axis=0))
    if block.output_flat is None:
        nodes.append(_constant(p + "heads", [0, 0, block.heads, -1]))
        nodes.append(helper.make_node("Reshape", [output, p + "heads"], [block.output]))
    return nodes


def _remove_dead_nodes(graph: onnx.GraphProto) -> None:
    """Drop nodes none of whose outputs is read (repeatedly), and initializers nothing reads."""
    outputs = {o.name for o in graph.output}
    while True:
        read = set(outputs)
        for node in graph.node:
            read.update(node.input)
            for attribute in node.attribute:
                for sub in [attribute.g, *attribute.graphs]:
                    read.update(name for inner in sub.node for name in inner.input)
        kept = [node for node in graph.node if any(out in read for out in node.output)]
        if len(kept) == len(graph.node):
            break
        set_nodes(graph, kept)
    unused = [t for t in graph.initializer if t.name not in read]
    for tensor in unused:
        graph.initializer.remove(tensor)


def check_fused_positions(position_ids: np.ndarray, ctx_len: int) -> None:
    """The inputs fused attention computes exactly: in every row the valid tokens come first, at consecutive
    positions, and the row's first position plus the step length fits in the cache. A clear error otherwise."""
    positions = np.asarray(position_ids)
    seq = positions.shape[1]
    if positions.max(initial=-1) >= ctx_len:
        raise ValueError(
            f"position {int(positions.max())} is out of range for the cache of ctx_len {ctx_len} (slots 0 to "
            f"{ctx_len - 1}); compile with a larger ctx_len."
        )
    if seq == 1:  # a decode step: any position in the cache, or padding
        return
    count = (positions >= 0).sum(axis=1, keepdims=True)
    columns = np.arange(seq)
    expected = np.where(columns < count, positions[:, :1] + columns, -1)
    wrong = np.any(np.where(positions >= 0, positions, -1) != expected, axis=1)
    if wrong.any():
        row = int(np.argmax(wrong))
        raise ValueError(
            f"position_ids row {row} is {positions[row].tolist()}: this program fuses attention "
            "(GroupQueryAttention), which needs each row's valid tokens first, at consecutive positions, with the "
            "padding (-1) after them. Pad prompts on the right, or compile with fuse_attention=False."
        )
    count = count[:, 0]
    overrun = (count > 0) & (positions[:, 0] + seq > ctx_len)
    if overrun.any():
        row = int(np.argmax(overrun))
        raise ValueError(
            f"position_ids row {row} starts at {int(positions[row, 0])} with a step of {seq} tokens, past ctx_len "
            f"{ctx_len}: with fused attention a step must fit in the cache whole. Start chunks at multiples of the "
            "step length with ctx_len a multiple of it, or compile with fuse_attention=False."
        )


def fuse_attention_file(
    model: onnx.ModelProto,
    source: Path,
    target: Path,
    specializations: list[dict[str, int | None]],
    inferred: tuple[dict, set[int]],
) -> tuple[Path | None, list[str]]:
    """`fuse_attention` on `model`, the graph of the file `source` (loaded without its weights, and rewritten in
    place), written to `target` with a copy of its weight files: (its path, the fused layers), or (None, []) when
    nothing was fused (the reason is logged)."""
    reason = fusion_blockers(model, specializations)
    if reason is not None:
        logger.info("Attention left unfused: %s.", reason)
        return None, []
    layers = fuse_attention(model, source.parent, inferred)
    if not layers:
        logger.info("Attention left unfused: no layer has the fusable form.")
        return None, []
    target.mkdir(parents=True, exist_ok=True)
    locations = {
        entry.value
        for tensor in model.graph.initializer
        if tensor.data_location == TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }
    for location in locations:
        (target / location).parent.mkdir(parents=True, exist_ok=True)
        # a copy: onnx refuses to read weights through a hard link, and a symbolic link could dangle
        shutil.copyfile(source.parent / location, target / location)
    path = target / source.name
    onnx.save_model(model, str(path))
    return path, layers
