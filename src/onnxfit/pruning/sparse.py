"""``sparse-storage``: pruned weights stored as a bitmask + packed values, decoded in the graph.

Why not ONNX ``sparse_initializer`` (COO)? The ONNX format stores COO indices as int64
(``SparseTensorProto``: linearized ``[NNZ]`` or ``[NNZ, rank]`` INT64 indices), so every
non-zero costs its value plus 8 bytes: 12 B for float32, 10 B for float16. At 30 % density that
is 3.6 B / weight for float32 (dense: 4) and 3.0 B for float16 (dense: 2) — COO *grows* an FP16
model. onnxruntime also just densifies sparse initializers at load, and onnx-ir (our IR) does
not read or write them (``TODO(justinchuby): Support sparse_initializer`` in ``onnx_ir.serde``),
so the form could not survive our own pipeline. ``benchmarks/bench_prune.py`` measures all
three forms on the zoo YOLOv3-tiny.

The form used here costs 1 bit per weight plus the non-zero values at their own dtype
(float16 at 30 % density: 0.125 + 0.6 = 0.725 B / weight), stored as two initializers and
decoded by standard ONNX ops (opset >= 11) that onnxruntime constant-folds while it creates the
session (graph optimization level BASIC or higher, the level DirectML allows), so the running
model holds the ordinary dense weight and costs nothing per inference::

    mask   uint8 [ceil(N/8), 1]   np.packbits of (bit pattern != 0), most significant bit first
    values T [nnz + 1]            values[0] = 0, then the non-zeros in row-major order
    bits = Cast<int64>(Mod(BitShift(mask, [7..0], RIGHT), 2))  -> Reshape [-1] (-> Slice [:N])
    idx  = CumSum(bits, 0) * bits     # 0 at a zero, k at the k-th non-zero
    W    = Reshape(Gather(values, idx), shape)

Lossless to the bit: a weight is "non-zero" when its *bit pattern* is (so -0.0 and NaN
payloads survive), and Gather copies values bit for bit. With the optimizer disabled the
decode runs at every inference instead (same outputs, slower).

INT8 models (QDQ): the int8 / uint8 weight initializers read by ``DequantizeLinear`` in front
of a Conv / Gemm / MatMul are encoded the same way (1 bit + 1 B per non-zero; a pruned weight
quantizes to the zero point 0 of symmetric int8 weights); the decode folds into an int8
initializer before onnxruntime's QDQ fusions run (constant folding is a level-1
optimization, QDQ fusion level 2).

A tensor is encoded only when the encoded form (with its nodes' overhead) is smaller than the
dense tensor; the pass runs only when the overall sparsity of the pruned weight tensors (Conv /
Gemm / MatMul weights with at least ``tensor_min_sparsity`` zeros) reaches ``min_sparsity``.
Run it **last**: constant folding (``cleanup``) would turn the decode back into dense weights.
:func:`densify` is the exact inverse (for analysis, or to re-optimize). Stats:
``tensors_encoded``, ``weight_bytes_before`` / ``weight_bytes_after`` (raw tensor bytes of the
encoded tensors), ``sparsity``, ``skipped`` (reason, when nothing was done).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common

from onnxfit import io
from onnxfit.passes.base import OnnxfitPass
from onnxfit.pruning.scores import exact_count
from onnxfit.pruning.unstructured import weight_input

logger = logging.getLogger(__name__)

MIN_OPSET = 11  # BitShift and CumSum
#: Serialized bytes the decode nodes and small constants of one tensor add (measured ~300).
NODE_OVERHEAD = 512
_SHIFTS = np.arange(7, -1, -1, dtype=np.uint8)


def nonzero_mask(array: np.ndarray) -> np.ndarray:
    """Flat bool mask of the entries whose bit pattern is not all zero (-0.0 counts)."""
    flat = np.ascontiguousarray(array).reshape(-1)
    return flat.view(f"u{flat.dtype.itemsize}") != 0  # works for ml_dtypes (bfloat16) too


def encode(array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(mask uint8 [ceil(N/8), 1], values [nnz + 1])`` of ``array`` (see the module doc)."""
    flat = np.ascontiguousarray(array).reshape(-1)
    nz = nonzero_mask(flat)
    packed = np.packbits(nz).reshape(-1, 1)
    values = np.concatenate([np.zeros(1, flat.dtype), flat[nz]])
    return packed, values


def decode(mask: np.ndarray, values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The numpy mirror of the in-graph decode: the dense tensor of ``shape``."""
    n = int(np.prod(shape, dtype=np.int64))
    bits = ((mask.reshape(-1, 1) >> _SHIFTS) % 2).astype(np.int64).reshape(-1)[:n]
    idx = np.cumsum(bits) * bits
    return values[idx].reshape(shape)


@dataclass(frozen=True)
class StorageSizes:
    """Raw bytes of one tensor in each storage form (protobuf framing not counted)."""

    elements: int
    nonzeros: int
    dense: int
    coo: int  # ONNX sparse_initializer: values + linearized int64 indices
    bitmask: int  # this module's form

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def storage_sizes(array: np.ndarray) -> StorageSizes:
    """How many bytes ``array`` takes dense, as ONNX COO and as bitmask + values."""
    n = int(array.size)
    nnz = int(np.count_nonzero(nonzero_mask(array)))
    item = array.dtype.itemsize
    return StorageSizes(n, nnz, n * item, nnz * (item + 8), (n + 7) // 8 + (nnz + 1) * item)


class _Builder:
    """Adds the decode nodes of several tensors to one graph, sharing the small constants."""

    def __init__(self, graph: ir.Graph) -> None:
        self.graph = graph
        self.names = set(graph.initializers) | {
            str(v.name) for n in graph.all_nodes() for v in n.outputs
        }
        self.names |= {str(v.name) for v in graph.inputs}
        self.nodes: list[ir.Node] = []
        self._shared: dict[str, ir.Value] = {}

    def unique(self, name: str) -> str:
        base, i = name, 0
        while name in self.names:
            i += 1
            name = f"{base}_{i}"
        self.names.add(name)
        return name

    def const(self, name: str, array: np.ndarray) -> ir.Value:
        name = self.unique(name)
        value = ir.Value(
            name=name,
            const_value=ir.tensor(array, name=name),
            type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
            shape=ir.Shape(array.shape),
        )
        self.graph.register_initializer(value)
        return value

    def shared(self, key: str, array: np.ndarray) -> ir.Value:
        if key not in self._shared:
            self._shared[key] = self.const(f"sparse_decode.{key}", array)
        return self._shared[key]

    def op(self, op_type: str, inputs: list[ir.Value], name: str, **attrs: object) -> ir.Value:
        out = ir.Value(name=self.unique(name))
        node = ir.node(
            op_type,
            inputs,
            attrs or None,  # type: ignore[arg-type]
            outputs=[out],
            name=self.unique(f"{name}.node"),
        )
        self.nodes.append(node)
        return out

    def encode_value(self, value: ir.Value) -> None:
        """Replace initializer ``value`` by its decode subgraph (output keeps its name)."""
        assert value.const_value is not None
        array = np.asarray(value.const_value.numpy())
        name = str(value.name)
        packed, values = encode(array)
        n = int(array.size)
        prefix = f"{name}.sparse"
        mask_v = self.const(f"{prefix}_mask", packed)
        vals_v = self.const(f"{prefix}_values", values)
        shape_v = self.const(f"{prefix}_shape", np.asarray(array.shape, np.int64))
        shifts = self.shared("shifts", _SHIFTS)
        two = self.shared("two", np.array(2, np.uint8))
        bits = self.op("BitShift", [mask_v, shifts], f"{prefix}/shift", direction="RIGHT")
        bits = self.op("Mod", [bits, two], f"{prefix}/bit")
        bits = self.op("Cast", [bits], f"{prefix}/bit64", to=ir.DataType.INT64)
        bits = self.op(
            "Reshape", [bits, self.shared("flat", np.array([-1], np.int64))], f"{prefix}/bits"
        )
        if packed.size * 8 != n:
            zero = self.shared("zero1", np.array([0], np.int64))
            end = self.const(f"{prefix}_size", np.array([n], np.int64))
            bits = self.op("Slice", [bits, zero, end], f"{prefix}/bits_n")
        csum = self.op(
            "CumSum", [bits, self.shared("axis0", np.array(0, np.int64))], f"{prefix}/cumsum"
        )
        idx = self.op("Mul", [csum, bits], f"{prefix}/index")
        gathered = self.op("Gather", [vals_v, idx], f"{prefix}/gather")
        # the dense weight takes the initializer's name
        self.graph.initializers.pop(name)
        value.name = self.unique(f"{name}.dense")
        self.names.add(name)
        out = ir.Value(
            name=name,
            type=ir.TensorType(value.dtype or ir.DataType.FLOAT),
            shape=ir.Shape(array.shape),
        )
        self.nodes.append(
            ir.node(
                "Reshape", [gathered, shape_v], outputs=[out], name=self.unique(f"{prefix}/reshape")
            )
        )
        value.replace_all_uses_with(out)

    def commit(self) -> None:
        if not self.nodes:
            return
        first = next(iter(self.graph), None)
        if first is None:
            self.graph.extend(self.nodes)
        else:
            self.graph.insert_before(first, self.nodes)


def _quantized_weight(node: ir.Node) -> ir.Value | None:
    """The int8 / uint8 initializer behind a Conv / Gemm / MatMul weight in QDQ form
    (``W = DequantizeLinear(q, scale, zero_point)``), else None."""
    if node.op_type not in ("Conv", "Gemm", "MatMul") or node.domain not in ("", "ai.onnx"):
        return None
    for i in (1, 0) if node.op_type == "MatMul" else (1,):
        w = node.inputs[i] if len(node.inputs) > i else None
        dq = w.producer() if w is not None else None
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        q = dq.inputs[0]
        if (
            q is not None
            and q.is_initializer()
            and q.const_value is not None
            and q.dtype in (ir.DataType.INT8, ir.DataType.UINT8)
            and all(u.node.op_type == "DequantizeLinear" and u.idx == 0 for u in q.uses())
        ):
            return q
    return None


def _candidates(model: ir.Model, *, min_elements: int) -> list[ir.Value]:
    seen: dict[ir.Value, None] = {}
    for node in model.graph:
        i = weight_input(node)
        value = node.inputs[i] if i is not None else _quantized_weight(node)
        if value is None:
            continue
        assert value.const_value is not None
        if value.const_value.size >= min_elements:
            seen.setdefault(value, None)
    return list(seen)


class SparseStoragePass(OnnxfitPass):
    """Store pruned Conv / Gemm / MatMul weights as bitmask + values (see the module doc)."""

    name = "sparse-storage"
    portable = True

    def __init__(
        self,
        *,
        min_sparsity: float = 0.7,
        tensor_min_sparsity: float = 0.05,
        min_elements: int = 1024,
    ) -> None:
        super().__init__()
        self.min_sparsity = min_sparsity
        self.tensor_min_sparsity = tensor_min_sparsity
        self.min_elements = min_elements

    def run(self, model: ir.Model) -> bool:
        opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))
        if opset < MIN_OPSET:
            self.stats["skipped"] = f"opset {opset} < {MIN_OPSET} (needs BitShift, CumSum)"
            logger.warning("sparse-storage: %s", self.stats["skipped"])
            return False
        chosen: list[tuple[ir.Value, StorageSizes]] = []
        for value in _candidates(model, min_elements=self.min_elements):
            assert value.const_value is not None
            sizes = storage_sizes(np.asarray(value.const_value.numpy()))
            if 1 - sizes.nonzeros / sizes.elements >= self.tensor_min_sparsity:
                chosen.append((value, sizes))
        elements = sum(s.elements for _, s in chosen)
        zeros = sum(s.elements - s.nonzeros for _, s in chosen)
        overall = zeros / elements if elements else 0.0
        self.stats["sparsity"] = round(overall, 6)
        if not chosen or zeros < exact_count(self.min_sparsity, elements):
            self.stats["skipped"] = f"sparsity {overall:.3f} < {self.min_sparsity}"
            logger.info("sparse-storage: dense storage kept (%s)", self.stats["skipped"])
            return False
        builder = _Builder(model.graph)
        before = after = 0
        for value, sizes in chosen:
            if sizes.bitmask + NODE_OVERHEAD >= sizes.dense:
                continue
            builder.encode_value(value)
            before += sizes.dense
            after += sizes.bitmask
            logger.debug(
                "sparse-storage: %s %d -> %d bytes", value.name, sizes.dense, sizes.bitmask
            )
        builder.commit()
        encoded = sum(1 for n in builder.nodes if n.op_type == "Gather")
        self.stats.update(
            tensors_encoded=encoded, weight_bytes_before=before, weight_bytes_after=after
        )
        logger.info(
            "sparse-storage: %d tensors, %d -> %d bytes (sparsity %.3f)",
            encoded,
            before,
            after,
            overall,
        )
        return encoded > 0


# ---------------------------------------------------------------------------- inverse


def _const(value: ir.Value | None) -> np.ndarray | None:
    if value is None:
        return None
    tensor = ir.convenience.get_const_tensor(value)
    return None if tensor is None else np.asarray(tensor.numpy())


def _producer(value: ir.Value | None, op_type: str) -> ir.Node | None:
    node = value.producer() if value is not None else None
    return node if node is not None and node.op_type == op_type else None


def match_decoder(reshape: ir.Node) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]] | None:
    """``(mask, values, shape)`` when ``reshape`` ends a decode subgraph of this module."""
    if reshape.op_type != "Reshape":
        return None
    gather = _producer(reshape.inputs[0], "Gather")
    shape = _const(reshape.inputs[1])
    if gather is None or shape is None:
        return None
    values = _const(gather.inputs[0])
    mul = _producer(gather.inputs[1], "Mul")
    if values is None or mul is None:
        return None
    csum = _producer(mul.inputs[0], "CumSum")
    if csum is None or csum.inputs[0] is not mul.inputs[1]:
        return None
    node = mul.inputs[1].producer() if mul.inputs[1] is not None else None
    if node is not None and node.op_type == "Slice":
        node = _producer(node.inputs[0], "Reshape")
    cast = _producer(node.inputs[0], "Cast") if node is not None else None
    mod = _producer(cast.inputs[0], "Mod") if cast is not None else None
    shift = _producer(mod.inputs[0], "BitShift") if mod is not None else None
    mask = _const(shift.inputs[0]) if shift is not None else None
    if mask is None or mask.dtype != np.uint8:
        return None
    return mask, values, tuple(int(d) for d in shape)


def densify(model: ir.Model) -> int:
    """Replace every decode subgraph by its dense initializer (same name); how many."""
    graph = model.graph
    done = 0
    for node in list(graph):
        found = match_decoder(node)
        if found is None:
            continue
        mask, values, shape = found
        out = node.outputs[0]
        name = str(out.name)
        out.name = f"{name}.decoded"
        array = decode(mask, values, shape)
        dense = ir.Value(
            name=name,
            const_value=ir.tensor(array, name=name),
            type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
            shape=ir.Shape(array.shape),
        )
        graph.register_initializer(dense)
        out.replace_all_uses_with(dense)
        done += 1
    if done:
        common.RemoveUnusedNodesPass()(model)
    return done


def is_encoded(model: ir.Model) -> bool:
    """True when ``model`` holds at least one decode subgraph of this module."""
    return any(match_decoder(n) is not None for n in model.graph)


def densified(model: ir.Model) -> ir.Model:
    """``model`` itself when it holds no decode subgraph, else a densified copy (for analysis:
    the runtime folds the decode at load, so memory and FLOPs are those of the dense model)."""
    if not is_encoded(model):
        return model
    copy = io.clone(model)
    densify(copy)
    return copy
