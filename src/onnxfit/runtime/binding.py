"""IO-binding strategies used by :class:`onnxfit.runtime.session.Session`.

* :class:`PooledBinding` (CPU, ``io_binding=True``): input and output buffers are carved from a
  :class:`~onnxfit.runtime.pool.MemoryPool` and bound once by address
  (``IOBinding.bind_input / bind_output(..., buffer_ptr=...)``). The first run for a set of input
  shapes learns the output shapes (outputs bound to ORT-allocated memory), then the buffers are
  allocated and bound; every later run with the same shapes copies the feeds into the bound input
  buffers and ORT writes the outputs in place: nothing new is allocated per call. New input
  shapes rebind (free + allocate again).
* :class:`StaticBinding` (CUDA graphs; any device): one ``OrtValue`` per input and output, of
  fixed shape, allocated on the device once and bound once; a run updates the inputs in place
  (``OrtValue.update_inplace``), so their addresses never change — what CUDA graph replay needs
  (ORT CUDA EP docs: "Using CUDA Graphs"). Outputs are copied back to host arrays.
* :class:`DeviceBinding` (CUDA without graphs): inputs bound from host arrays
  (``bind_cpu_input``, one host-to-device copy) and outputs bound on the device
  (``bind_output(name, "cuda", id)``), copied to the host once at the end.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnxruntime as ort

from onnxfit.errors import InputError
from onnxfit.runtime.pool import DEFAULT_ALIGNMENT, Block, MemoryPool, align_up

if TYPE_CHECKING:
    from onnxfit.runtime.feeds import TensorSpec

logger = logging.getLogger(__name__)


def _numeric(specs: Sequence[TensorSpec], what: str) -> None:
    bad = [s.name for s in specs if s.dtype.kind not in "biuf"]
    if bad:
        raise InputError(
            f"{what} needs numeric tensors; {', '.join(map(repr, bad))} are not",
            hint="run this model without io_binding / cuda_graph",
        )


def static_output_shapes(
    proto: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]]
) -> dict[str, tuple[int, ...]]:
    """Output shapes by ONNX shape inference with the inputs fixed to ``input_shapes``.

    Raises :class:`InputError` naming the outputs whose shapes stay unknown.
    """
    fixed = onnx.ModelProto()
    fixed.CopyFrom(proto)
    for vi in fixed.graph.input:
        if vi.name in input_shapes:
            dims = vi.type.tensor_type.shape.dim
            for d, v in zip(dims, input_shapes[vi.name], strict=True):
                d.Clear()
                d.dim_value = int(v)
    del fixed.graph.value_info[:]
    try:
        inferred = onnx.shape_inference.infer_shapes(fixed, strict_mode=False, data_prop=True)
    except Exception as exc:  # onnx raises several types
        raise InputError(f"shape inference failed on the model: {exc}") from None
    out: dict[str, tuple[int, ...]] = {}
    unknown = []
    for vi in inferred.graph.output:
        dims = vi.type.tensor_type.shape.dim
        if vi.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            out[vi.name] = tuple(int(d.dim_value) for d in dims)
        else:
            unknown.append(vi.name)
    if unknown:
        raise InputError(
            f"cuda_graph=True needs static output shapes; unknown for {', '.join(unknown)}",
            hint="fix the model's dynamic dimensions with free_dims, or drop cuda_graph=True",
        )
    return out


def _run_options() -> ort.RunOptions:
    """RunOptions, made once per binding, with ``gpu_graph_id`` at its default 0.

    0 is the CUDA graph id captured and replayed (ORT CUDA EP docs; -1 would skip capture). Set
    explicitly, the per-call lookup in onnxruntime 1.32's ``run_with_iobinding`` finds it instead
    of raising and swallowing a RuntimeError on every run.
    """
    options = ort.RunOptions()
    options.add_run_config_entry("gpu_graph_id", "0")
    return options


_CONTROL_FLOW = {"If", "Loop", "Scan"}


def graph_capture_shapes(
    proto: onnx.ModelProto, free_dims: Mapping[str, int] | None = None
) -> dict[str, tuple[int, ...]]:
    """Check a model can be captured as a CUDA graph; return its static output shapes.

    Refuses (:class:`InputError`) control-flow ops and input shapes left dynamic after the
    free-dimension overrides (ORT CUDA EP docs: CUDA graphs need fixed shapes and no If / Loop /
    Scan), and outputs whose shapes shape inference cannot fix.
    """
    ops = sorted({n.op_type for n in proto.graph.node} & _CONTROL_FLOW)
    if ops:
        raise InputError(
            f"cuda_graph=True: the model has control-flow ops ({', '.join(ops)}), "
            "which CUDA graphs cannot capture",
            hint="drop cuda_graph=True",
        )
    fd = dict(free_dims or {})
    weights = {t.name for t in proto.graph.initializer}
    shapes: dict[str, list[int]] = {}
    dynamic = []
    for vi in proto.graph.input:
        if vi.name in weights:
            continue
        dims: list[int] = []
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            elif d.dim_param in fd:
                dims.append(fd[d.dim_param])
            else:
                dims.append(-1)
        if -1 in dims or not vi.type.tensor_type.HasField("shape"):
            shown = ["?" if v < 0 else str(v) for v in dims]
            dynamic.append(f"{vi.name} [{', '.join(shown)}]")
        shapes[vi.name] = dims
    if dynamic:
        raise InputError(
            f"cuda_graph=True needs static input shapes; dynamic: {', '.join(dynamic)}",
            hint='fix them with free_dims, e.g. free_dims={"batch": 1}',
        )
    return static_output_shapes(proto, shapes)


class PooledBinding:
    """Preallocated, pool-backed input/output buffers bound once (CPU memory)."""

    def __init__(
        self,
        sess: ort.InferenceSession,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        *,
        pool: MemoryPool | None = None,
    ) -> None:
        _numeric([*inputs, *outputs], "io_binding")
        if pool is not None and pool.device != "cpu":
            raise InputError(f"io_binding on CPU needs a host pool, given one on {pool.device!r}")
        self._sess = sess
        self._in_names = [s.name for s in inputs]
        self._out_names = [s.name for s in outputs]
        self._own_pool = pool is None
        self.pool: MemoryPool | None = pool
        self._binding = sess.io_binding()
        self._run_options = _run_options()
        self._blocks: list[Block] = []
        self._signature: tuple[tuple[int, ...], ...] | None = None
        self.input_views: dict[str, np.ndarray] = {}
        self.output_views: dict[str, np.ndarray] = {}

    def run(self, arrays: Mapping[str, np.ndarray], *, copy: bool) -> dict[str, np.ndarray]:
        signature = tuple(arrays[n].shape for n in self._in_names)
        if signature != self._signature:
            self._rebind(arrays, signature)
        else:
            for name in self._in_names:
                view, arr = self.input_views[name], arrays[name]
                if arr is not view:
                    np.copyto(view, arr)
            self._sess.run_with_iobinding(self._binding, self._run_options)
        if copy:
            return {n: v.copy() for n, v in self.output_views.items()}
        return dict(self.output_views)

    def _rebind(self, arrays: Mapping[str, np.ndarray], signature: Any) -> None:
        b = self._binding
        b.clear_binding_inputs()
        b.clear_binding_outputs()
        for name in self._in_names:
            b.bind_cpu_input(name, np.ascontiguousarray(arrays[name]))
        for name in self._out_names:
            b.bind_output(name, "cpu")
        self._sess.run_with_iobinding(
            b, self._run_options
        )  # learns the output shapes; its results are kept
        first = dict(zip(self._out_names, b.copy_outputs_to_cpu(), strict=True))
        self._free_blocks()
        tensors = [(n, arrays[n]) for n in self._in_names] + list(first.items())
        if self._own_pool:
            need = sum(align_up(max(a.nbytes, 1), DEFAULT_ALIGNMENT) for _, a in tensors)
            if self.pool is not None:
                self.pool.release()
            self.pool = MemoryPool(need)
        assert self.pool is not None
        b.clear_binding_inputs()
        b.clear_binding_outputs()
        self.input_views, self.output_views = {}, {}
        for i, (name, arr) in enumerate(tensors):
            block = self.pool.alloc(arr.nbytes)
            self._blocks.append(block)
            view = self.pool.view(block, arr.shape, arr.dtype)
            np.copyto(view, arr)
            ptr = self.pool.address(block)
            if i < len(self._in_names):
                b.bind_input(name, "cpu", 0, arr.dtype.type, list(arr.shape), ptr)
                self.input_views[name] = view
            else:
                b.bind_output(name, "cpu", 0, arr.dtype.type, list(arr.shape), ptr)
                self.output_views[name] = view
        self._signature = signature
        logger.debug("bound %d buffers for input shapes %s", len(tensors), signature)

    def _free_blocks(self) -> None:
        if self.pool is not None and not self._own_pool:
            for block in self._blocks:
                self.pool.free(block)
        self._blocks = []

    def release(self) -> None:
        self._free_blocks()
        self._binding.clear_binding_inputs()
        self._binding.clear_binding_outputs()
        self.input_views, self.output_views = {}, {}
        if self._own_pool and self.pool is not None:
            self.pool.release()
            self.pool = None
        self._signature = None


class StaticBinding:
    """Fixed-shape OrtValues on a device, bound once; runs update the inputs in place."""

    def __init__(
        self,
        sess: ort.InferenceSession,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        *,
        device_type: str,
        device_id: int = 0,
    ) -> None:
        _numeric([*inputs, *outputs], "cuda_graph")
        self._sess = sess
        self._host = device_type == "cpu"
        self._binding = sess.io_binding()
        self._run_options = _run_options()
        self._inputs: dict[str, Any] = {}
        self._outputs: dict[str, Any] = {}
        for spec in [*inputs, *outputs]:
            if not spec.is_static:
                raise InputError(
                    f"{spec.name!r} has a dynamic shape; a static binding needs fixed ones"
                )
        for spec in inputs:
            value = ort.OrtValue.ortvalue_from_shape_and_type(
                list(spec.shape), spec.dtype.type, device_type, device_id
            )
            self._binding.bind_ortvalue_input(spec.name, value)
            self._inputs[spec.name] = value
        for spec in outputs:
            value = ort.OrtValue.ortvalue_from_shape_and_type(
                list(spec.shape), spec.dtype.type, device_type, device_id
            )
            self._binding.bind_ortvalue_output(spec.name, value)
            self._outputs[spec.name] = value

    def run(self, arrays: Mapping[str, np.ndarray], *, copy: bool = True) -> dict[str, np.ndarray]:
        for name, value in self._inputs.items():
            value.update_inplace(np.ascontiguousarray(arrays[name]))
        self._sess.run_with_iobinding(self._binding, self._run_options)
        if self._host:  # numpy() is a view of the bound buffer: copy unless told not to
            return {n: np.array(v.numpy(), copy=copy) for n, v in self._outputs.items()}
        return {n: v.numpy() for n, v in self._outputs.items()}  # a device->host copy already

    def release(self) -> None:
        self._binding.clear_binding_inputs()
        self._binding.clear_binding_outputs()
        self._inputs, self._outputs = {}, {}


class DeviceBinding:
    """Inputs bound from host arrays, outputs allocated on the device by ORT each run."""

    def __init__(
        self,
        sess: ort.InferenceSession,
        outputs: Sequence[TensorSpec],
        device_type: str,
        device_id: int = 0,
    ) -> None:
        self._sess = sess
        self._binding = sess.io_binding()
        self._run_options = _run_options()
        self._out_names = [s.name for s in outputs]
        for name in self._out_names:
            self._binding.bind_output(name, device_type, device_id)

    def run(self, arrays: Mapping[str, np.ndarray], *, copy: bool = True) -> dict[str, np.ndarray]:
        b = self._binding
        b.clear_binding_inputs()
        for name, arr in arrays.items():
            b.bind_cpu_input(name, np.ascontiguousarray(arr))
        self._sess.run_with_iobinding(b, self._run_options)
        return dict(zip(self._out_names, b.copy_outputs_to_cpu(), strict=True))

    def release(self) -> None:
        self._binding.clear_binding_inputs()
        self._binding.clear_binding_outputs()
