"""Target-aware ONNX Runtime sessions.

``Session(model, target="xbox-series-s")`` wraps an ``onnxruntime.InferenceSession`` with the
settings the target needs (see :mod:`onnxfit.runtime.settings` for the facts and sources):

* DirectML: memory pattern off, sequential execution, and one ``run`` at a time per session,
  enforced with a lock (concurrent callers wait their turn); ``device_id`` /
  ``performance_preference`` pass through ``provider_options``.
* CUDA: IO binding (inputs copied once to the device, outputs bound on the device); with
  ``cuda_graph=True`` the run is captured as a CUDA graph, which needs static shapes (fixed in the
  model or by ``free_dims``) and no control-flow ops — refused with :class:`InputError` otherwise.
* CPU: ``intra_op_num_threads`` = the target's worker cores (cores minus the reserved ones, capped
  at this host's) unless ``threads=`` is given. ``io_binding=True`` preallocates input and output
  buffers in a :class:`~onnxfit.runtime.pool.MemoryPool` and binds them once, so steady-state
  runs allocate nothing new (:meth:`Session.run_bound`).

A missing provider falls back explicitly: a WARNING names the provider wanted and the one that
runs (``.provider``); ``strict=True`` raises :class:`InputError` instead. Feeds are checked
(names, dtype, rank, every fixed dimension, and consistent symbolic dimensions) before running,
with an error naming the input, the expected and the given (:mod:`onnxfit.runtime.feeds`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from onnxfit import io
from onnxfit.errors import InputError
from onnxfit.runtime.binding import (
    DeviceBinding,
    PooledBinding,
    StaticBinding,
    graph_capture_shapes,
)
from onnxfit.runtime.feeds import TensorSpec, check_feeds, fmt_shape, spec_from_ort
from onnxfit.runtime.ort_errors import ORT_OR_MEMORY, ort_failure, quiet_ort, session_failure
from onnxfit.runtime.pool import MemoryPool
from onnxfit.runtime.settings import (
    ProviderArg,
    SessionPlan,
    build_session_options,
    deploy_settings,
    plan_session,
)
from onnxfit.runtime.webgpu import inference_session
from onnxfit.targets import Target, get_target

__all__ = ["Session", "TensorSpec", "check_feeds", "deploy_settings", "plan_session"]

logger = logging.getLogger(__name__)

_ORT_ERRORS = ORT_OR_MEMORY
#: Creating a session also raises RuntimeError (unknown provider, unreadable source...).
_CREATE_ERRORS: tuple[type[BaseException], ...] = (*ORT_OR_MEMORY, RuntimeError)


def _load_proto(model: str | os.PathLike[str] | ir.Model | onnx.ModelProto) -> onnx.ModelProto:
    """The model as protobuf; a path is read without its external data (checked for safety)."""
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, ir.Model):
        return io.to_proto(model)
    if isinstance(model, str | os.PathLike):
        return io.load_proto(Path(model), with_external=False)
    raise InputError(
        f"model must be a path or an onnx_ir.Model, given {type(model).__name__}",
        hint="load it with onnxfit.load(path) or pass the .onnx path",
    )


class Session:
    """An ONNX Runtime session configured for a target; see the module docstring.

    ``model`` is a path or an :class:`onnx_ir.Model`. ``.provider`` is the provider that runs,
    ``.inputs`` / ``.outputs`` the :class:`TensorSpec` lists (free-dim overrides applied),
    ``.plan`` the settings chosen. Use as a context manager or call :meth:`close`.
    ``allow_spinning=False`` keeps ORT's threads from busy-waiting (use it when preprocessing
    shares the cores).
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | ir.Model | onnx.ModelProto,
        *,
        target: str | Target = "cpu",
        providers: Sequence[ProviderArg] | None = None,
        strict: bool = False,
        free_dims: Mapping[str, int] | None = None,
        threads: int | None = None,
        io_binding: bool | None = None,
        cuda_graph: bool = False,
        provider_options: Mapping[str, Any] | None = None,
        pool: MemoryPool | None = None,
        serialize_runs: bool | None = None,
        allow_spinning: bool = True,
    ) -> None:
        self.target = get_target(target)
        if pool is not None and io_binding is None:
            io_binding = True  # a pool is only used for bound buffers
        elif pool is not None and not io_binding:
            raise InputError("pool= is used for IO binding; drop io_binding=False")
        self.plan: SessionPlan = plan_session(
            self.target,
            providers=providers,
            strict=strict,
            free_dims=free_dims,
            threads=threads,
            io_binding=io_binding,
            cuda_graph=cuda_graph,
            provider_options=provider_options,
            serialize_runs=serialize_runs,
            allow_spinning=allow_spinning,
        )
        proto = _load_proto(model)
        self._check_free_dim_names(proto)
        graph_shapes = (
            graph_capture_shapes(proto, self.plan.free_dims) if self.plan.cuda_graph else {}
        )
        # A path goes to ORT as a path: serializing a copy would hold the weights twice more
        # (measured: +60-130 MiB peak RSS on ResNet-18). The proto is dropped before ORT loads.
        source: str | bytes = (
            str(model) if isinstance(model, str | os.PathLike) else io.to_bytes(proto)
        )
        del proto
        options = build_session_options(self.plan)
        options.log_severity_level = quiet_ort()
        try:
            self._sess: Any = inference_session(source, options, self.plan.providers)
        except _CREATE_ERRORS as exc:
            raise session_failure(exc) from None
        running = self._sess.get_providers()[0]
        if running != self.plan.provider:  # listed as available but failed to start
            msg = f"{self.plan.provider} did not start; {running} runs instead"
            if strict:
                raise InputError(msg, hint="check the GPU driver / device_id")
            logger.warning(msg)
        self.provider: str = running
        fd = self.plan.free_dims
        self.inputs: list[TensorSpec] = [spec_from_ort(a, fd) for a in self._sess.get_inputs()]
        self.outputs: list[TensorSpec] = [spec_from_ort(a, fd) for a in self._sess.get_outputs()]
        self._output_names = [s.name for s in self.outputs]
        #: the model's ``metadata_props`` (e.g. ``onnxfit.preset`` written by the Darknet import)
        self.metadata: dict[str, str] = dict(self._sess.get_modelmeta().custom_metadata_map)
        self._lock = threading.Lock()  # guards the binding; also serializes runs when asked
        self._closed = False
        self._binding: StaticBinding | PooledBinding | DeviceBinding | None = None
        if self.plan.cuda_graph:
            self._binding = StaticBinding(
                self._sess,
                self.inputs,
                [TensorSpec(s.name, graph_shapes[s.name], s.dtype) for s in self.outputs],
                device_type=self.plan.device_type,
                device_id=self.plan.device_id,
            )
        elif self.plan.io_binding and self.plan.device_type == "cpu":
            self._binding = PooledBinding(self._sess, self.inputs, self.outputs, pool=pool)
        elif self.plan.io_binding:
            if pool is not None:
                logger.warning(
                    "pool= is used for CPU IO binding only; ignored on %s", self.provider
                )
            self._binding = DeviceBinding(
                self._sess, self.outputs, self.plan.device_type, self.plan.device_id
            )
        logger.info(
            "session on %s for target %s: %d threads, mem pattern %s, one run at a time %s, "
            "io binding %s, cuda graph %s",
            self.provider,
            self.target.name,
            self.plan.intra_op_threads,
            self.plan.enable_mem_pattern,
            self.plan.serialize_runs,
            self.plan.io_binding,
            self.plan.cuda_graph,
        )

    # -- construction helpers -------------------------------------------------------------
    def _check_free_dim_names(self, proto: onnx.ModelProto) -> None:
        if not self.plan.free_dims:
            return
        symbolic = {
            d.dim_param
            for vi in proto.graph.input
            for d in vi.type.tensor_type.shape.dim
            if d.dim_param
        }
        unknown = sorted(set(self.plan.free_dims) - symbolic)
        if unknown:
            raise InputError(
                f"free_dims names {', '.join(map(repr, unknown))} are not symbolic dimensions "
                "of the model's inputs",
                hint=f"symbolic dimensions: {', '.join(sorted(symbolic)) or 'none'}",
            )

    # -- running --------------------------------------------------------------------------
    @contextlib.contextmanager
    def _running(self) -> Iterator[Any]:
        """Yields the ORT session; holds the lock for the whole run when runs are serialized
        or a binding (shared state) is used, else only while checking the session is open."""
        if self.plan.serialize_runs or self._binding is not None:
            with self._lock:
                self._check_open()
                yield self._sess
        else:
            with self._lock:
                self._check_open()
                sess = self._sess  # a close() meanwhile cannot pull it from under this run
            yield sess

    def _check_open(self) -> None:
        if self._closed:
            raise InputError("the session is closed", hint="create a new Session")

    def check_feeds(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The feeds as arrays, after checking names, dtypes and shapes (:func:`check_feeds`)."""
        return check_feeds(feeds, self.inputs)

    def run(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Run once; returns ``{output name: array}`` (arrays the caller owns)."""
        arrays = self.check_feeds(feeds)
        with self._running() as sess:
            try:
                if self._binding is not None:
                    return self._binding.run(arrays, copy=True)
                values = sess.run(self._output_names, arrays)
            except _ORT_ERRORS as exc:
                raise ort_failure(exc, doing="running the model") from None
        return dict(zip(self._output_names, values, strict=True))

    def run_device(self, feeds: Mapping[str, ort.OrtValue]) -> dict[str, ort.OrtValue]:
        """Run on ``OrtValue`` inputs (e.g. already on the GPU); outputs stay on the device.

        The path for a game whose frame is already in GPU memory and whose result is consumed
        there: no host copies at all. Measured on an H100 with YOLOv3-tiny at batch 64: 7.5 ms
        device-resident vs 28-31 ms numpy in / numpy out (benchmarks/results/gpu.md). Names are
        checked; shapes and dtypes are checked by ONNX Runtime.
        """
        unknown = sorted(set(feeds) - {s.name for s in self.inputs})
        missing = sorted({s.name for s in self.inputs} - set(feeds))
        if unknown or missing:
            raise InputError(
                f"run_device feeds: missing {missing or 'none'}, unknown {unknown or 'none'}",
                hint=f"inputs are {', '.join(s.name for s in self.inputs)}",
            )
        with self._running() as sess:
            binding = sess.io_binding()
            for name, value in feeds.items():
                binding.bind_ortvalue_input(name, value)
            for name in self._output_names:
                binding.bind_output(name, self.plan.device_type, self.plan.device_id)
            try:
                sess.run_with_iobinding(binding)
            except _ORT_ERRORS as exc:
                raise ort_failure(exc, doing="running the model") from None
            return dict(zip(self._output_names, binding.get_outputs(), strict=True))

    def run_bound(self, feeds: Mapping[str, Any], *, copy: bool = True) -> dict[str, np.ndarray]:
        """Run through the preallocated, bound buffers (needs ``io_binding=True`` on CPU).

        Inputs are copied into the bound input buffers (skipped when a feed *is* that buffer, see
        :meth:`input_buffers`); outputs are written in place into the bound output buffers. With
        ``copy=True`` (default) the caller gets copies; with ``copy=False`` the arrays are views of
        the pool that the NEXT run overwrites — copy what you keep. Once the input shapes have
        been seen, a run allocates no new buffers.
        """
        self._check_open()
        if not isinstance(self._binding, PooledBinding | StaticBinding):
            raise InputError(
                "run_bound needs preallocated buffers: create the Session with io_binding=True"
                " (CPU) or cuda_graph=True (CUDA)",
                hint="or call run(), which needs none",
            )
        arrays = self.check_feeds(feeds)
        with self._running():
            binding = self._binding
            assert isinstance(binding, PooledBinding | StaticBinding)  # not closed meanwhile
            try:
                return binding.run(arrays, copy=copy)
            except _ORT_ERRORS as exc:
                raise ort_failure(exc, doing="running the model") from None

    def input_buffers(self) -> dict[str, np.ndarray]:
        """The bound input buffers (after a first :meth:`run_bound`): write into them and pass
        them back as feeds to skip the input copy. Empty before the first run."""
        if isinstance(self._binding, PooledBinding):
            return dict(self._binding.input_views)
        return {}

    @property
    def pool(self) -> MemoryPool | None:
        """The pool holding the bound buffers (io_binding on CPU), else None."""
        return self._binding.pool if isinstance(self._binding, PooledBinding) else None

    # -- settings and lifetime --------------------------------------------------------------
    def session_options(self) -> dict[str, Any]:
        """The settings this session runs with (provider, threads, memory pattern, ...)."""
        return self.plan.to_dict()

    def close(self) -> None:
        """Release the ORT session and the bound buffers; later runs raise InputError."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._binding is not None:
                self._binding.release()
            self._binding = None
            self._sess = None  # ORT frees it when the last run holding it ends

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        ins = ", ".join(f"{s.name}{fmt_shape(s.shape)}" for s in self.inputs)
        return f"Session(provider={self.provider!r}, target={self.target.name!r}, inputs=[{ins}])"
