"""``cleanup``: constant folding, dead-code and Identity removal, initializer deduplication.

Rewrites it makes (each an existing onnx-ir / onnxscript pass, in this order):

1. initializers also listed as graph inputs (IR < 4 exports) stop being inputs, so they count
   as constants (``RemoveInitializersFromInputsPass``; option ``remove_initializer_inputs``);
2. constant subgraphs are evaluated and replaced by their value (onnxscript
   ``FoldConstantsPass``; QuantizeLinear/DequantizeLinear are never folded there, so an INT8
   model stays INT8);
3. ``y = Identity(x)`` nodes are removed (:class:`ScopedIdentityElimination`: not where the
   Identity hands a subgraph or function output a value made in another scope);
4. unused nodes, initializers and opset imports are removed;
5. initializers with equal dtype, shape and bytes are merged
   (``DeduplicateHashedInitializersPass``);
6. ``Constant`` nodes become initializers (all of them with ``lift_constants``);
7. every unnamed node and value gets a unique name (``NameFixPass``), so that later passes
   and reports (the fp16 block list, per-node stats) can refer to them.

Portable: it only removes work, every execution provider runs the result.
Stats: ``nodes_before``/``nodes_after``, ``initializers_before``/``initializers_after``,
``folded`` (nodes constant folding replaced or bypassed, per op type; Identity nodes it
bypassed count there too), ``identities_removed`` (by the whole pass).
"""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common
from onnxscript.optimizer import fold_constants_ir

from onnxfit.passes.base import OnnxfitPass, count_ops

#: onnxscript's own defaults (``fold_constants_ir``): inputs up to 8,192 elements are folded and
#: folded outputs up to 262,144 elements kept (larger ones stay as computed nodes).
FOLD_INPUT_LIMIT = 8192
FOLD_OUTPUT_LIMIT = 262144


class ScopedIdentityElimination(common.IdentityEliminationPass):
    """onnx-ir's Identity elimination without the cases it gets wrong: an Identity that hands
    a graph output (of the model, a subgraph or a function) a value made elsewhere — in an
    outer scope, by no node, or already an output itself — stays. (Removing it put one value
    in two graphs' outputs, an error, or left a function output produced by no node.)"""

    def _try_eliminate_identity_node(self, node: ir.Node) -> bool:
        if node.op_type == "Identity" and len(node.inputs) == 1 and len(node.outputs) == 1:
            x, y = node.inputs[0], node.outputs[0]
            if x is not None and y.is_graph_output():
                producer = x.producer()
                if producer is None or producer.graph is not node.graph or x.is_graph_output():
                    return False
        return bool(super()._try_eliminate_identity_node(node))


class CleanupPass(OnnxfitPass):
    """Fold constants, drop dead code and Identity nodes, merge equal initializers.

    ``fold_input_limit``/``fold_output_limit`` (elements) bound the tensors constant folding
    may read or create, so that folding never materializes a huge tensor.
    """

    name = "cleanup"
    portable = True

    def __init__(
        self,
        *,
        fold_constants: bool = True,
        remove_identity: bool = True,
        deduplicate: bool = True,
        lift_constants: bool = True,
        remove_initializer_inputs: bool = True,
        fold_input_limit: int = FOLD_INPUT_LIMIT,
        fold_output_limit: int = FOLD_OUTPUT_LIMIT,
    ) -> None:
        super().__init__()
        self.fold_constants = fold_constants
        self.remove_identity = remove_identity
        self.deduplicate = deduplicate
        self.lift_constants = lift_constants
        self.remove_initializer_inputs = remove_initializer_inputs
        self.fold_input_limit = fold_input_limit
        self.fold_output_limit = fold_output_limit

    def run(self, model: ir.Model) -> bool:
        graph = model.graph
        nodes_before, inits_before = len(graph), len(graph.initializers)
        identities_before = sum(1 for n in graph if n.op_type == "Identity")
        modified = False
        if self.remove_initializer_inputs:
            modified = common.RemoveInitializersFromInputsPass()(model).modified
        if self.fold_constants:
            before = count_ops(model)
            folded = fold_constants_ir(
                model,
                onnx_shape_inference=True,
                input_size_limit=self.fold_input_limit,
                output_size_limit=self.fold_output_limit,
            )
            modified = folded.modified or modified
            after = count_ops(model)
            self.stats["folded"] = {
                op: n - after.get(op, 0) for op, n in before.items() if n > after.get(op, 0)
            }
        passes: list[ir.passes.PassBase] = []
        if self.remove_identity:
            passes.append(ScopedIdentityElimination())
        passes += [common.RemoveUnusedNodesPass(), common.RemoveUnusedOpsetsPass()]
        if self.deduplicate:
            passes.append(common.DeduplicateHashedInitializersPass())
        if self.lift_constants:
            passes.append(common.LiftConstantsToInitializersPass(lift_all_constants=True))
        passes += [common.RemoveUnusedNodesPass(), common.NameFixPass()]
        for p in passes:
            modified = p(model).modified or modified
        self.stats["nodes_before"] = nodes_before
        self.stats["nodes_after"] = len(graph)
        self.stats["initializers_before"] = inits_before
        self.stats["initializers_after"] = len(graph.initializers)
        identities_after = sum(1 for n in graph if n.op_type == "Identity")
        self.stats["identities_removed"] = identities_before - identities_after
        return modified
