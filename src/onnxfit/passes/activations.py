"""Float32 activation statistics, and the nodes they say are risky in float16.

The statistics half of the automatic fp16 block list (DESIGN habit 3): run the float32 model
in onnxruntime with every intermediate float32 value exposed as an output, keep per value the
largest magnitude and the share of non-zero values too small for float16; then
:func:`fp16_risk_nodes` ranks the nodes to keep in float32. The verify/optimize layer grows
``Fp16Pass(block_list=...)`` from that ranking until the accuracy budget holds.

Float16 facts (IEEE 754 binary16): largest finite value 65504; smallest positive subnormal
2**-24 (about 6.0e-8): smaller magnitudes round to 0.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from onnxfit import io
from onnxfit.errors import ModelLoadError
from onnxfit.passes.fp16 import F32, FP16_MAX, FP16_TINY, infer_dtypes
from onnxfit.runtime.ort_errors import quiet_ort, translated

logger = logging.getLogger(__name__)


@dataclass
class ActivationStats:
    """Running statistics of one float32 value over the sample inputs."""

    value: str
    node: str
    op_type: str
    max_abs: float = 0.0
    nonzero: int = 0
    tiny: int = 0  # non-zero values with |x| < 2**-24 (become 0 in float16)
    nonfinite: int = 0

    @property
    def underflow_fraction(self) -> float:
        return self.tiny / self.nonzero if self.nonzero else 0.0

    def update(self, array: np.ndarray) -> None:
        a = np.abs(np.asarray(array, dtype=np.float32))
        finite = np.isfinite(a)
        self.nonfinite += int(a.size - np.count_nonzero(finite))
        a = a[finite]
        if a.size:
            self.max_abs = max(self.max_abs, float(a.max()))
            self.nonzero += int(np.count_nonzero(a))
            self.tiny += int(np.count_nonzero((a > 0) & (a < FP16_TINY)))

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "underflow_fraction": self.underflow_fraction}


@dataclass
class Fp16Risk:
    """A node to keep in float32, and why (``overflow``, ``reads-overflow``, ``underflow``)."""

    node: str
    op_type: str
    value: str
    reason: str
    max_abs: float
    underflow_fraction: float

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _exposed_proto(model: ir.Model) -> tuple[onnx.ModelProto, dict[str, tuple[str, str]]]:
    """A copy of ``model`` with every float32 node output added to the graph outputs."""
    typed = io.clone(model)
    infer_dtypes(typed)
    existing = {v.name for v in typed.graph.outputs}
    where: dict[str, tuple[str, str]] = {}
    extra = []
    for node in typed.graph:
        for v in node.outputs:
            if v.dtype == F32 and v.name:
                where[v.name] = (node.name or "", node.op_type)
                if v.name not in existing:
                    extra.append(
                        onnx.helper.make_tensor_value_info(v.name, onnx.TensorProto.FLOAT, None)
                    )
    proto = io.to_proto(model)
    proto.graph.output.extend(extra)
    return proto, where


def activation_stats(
    model: ir.Model, feeds: Iterable[Mapping[str, np.ndarray]]
) -> dict[str, ActivationStats]:
    """Per float32 value (by name): max |x| and float16 underflow counts over ``feeds``.

    Each element of ``feeds`` is one ``{input name: array}`` batch for onnxruntime (CPU,
    graph optimizations off, so that every value of the graph exists).
    """
    proto, where = _exposed_proto(model)
    session = _session(proto)
    names = [o.name for o in session.get_outputs() if o.name in where]
    stats = {n: ActivationStats(n, *where[n]) for n in names}
    batches = 0
    for feed in feeds:
        with translated("measuring activations"):
            arrays = session.run(names, dict(feed))
        for name, array in zip(names, arrays, strict=True):
            stats[name].update(array)
        batches += 1
    logger.info("activation stats: %d values over %d batches", len(stats), batches)
    return stats


def collect_activations(model: ir.Model, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every float32 value of ``model`` (by name) for one input batch ``feed``."""
    proto, where = _exposed_proto(model)
    session = _session(proto)
    names = [o.name for o in session.get_outputs() if o.name in where]
    with translated("collecting activations"):
        return dict(zip(names, session.run(names, dict(feed)), strict=True))


def _session(proto: Any) -> Any:
    """A CPU session with graph optimizations off (every value of the graph exists)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = quiet_ort()
    with translated("to load the model", error=ModelLoadError):
        return ort.InferenceSession(io.to_bytes(proto), options, providers=["CPUExecutionProvider"])


def fp16_risk_nodes(
    model: ir.Model,
    activations: Mapping[str, np.ndarray | ActivationStats],
    *,
    underflow_limit: float = 0.1,
) -> list[Fp16Risk]:
    """Nodes to keep in float32, most urgent first (by node name: run ``cleanup`` first,
    which names every node, so that the names match the model the fp16 pass will see).

    A value whose float32 magnitude passes 65504 overflows in float16: its producer and every
    node that reads it are risks (``overflow``, then ``reads-overflow``), ordered by magnitude.
    Then producers of values where more than ``underflow_limit`` of the non-zero entries fall
    below 2**-24 (``underflow``), by that share. ``activations`` maps value names to arrays
    (:func:`collect_activations`) or to :class:`ActivationStats` (:func:`activation_stats`).
    """
    producers: dict[str, ir.Node] = {}
    for n in model.graph:
        for v in n.outputs:
            if v.name:
                producers[v.name] = n
    overflow: list[Fp16Risk] = []
    underflow: list[Fp16Risk] = []
    for name, act in activations.items():
        node = producers.get(name)
        if node is None:
            continue
        if isinstance(act, ActivationStats):
            st = act
        else:
            st = ActivationStats(name, node.name or "", node.op_type)
            st.update(act)
        if st.max_abs > FP16_MAX:
            overflow.append(
                Fp16Risk(
                    node.name or "",
                    node.op_type,
                    name,
                    "overflow",
                    st.max_abs,
                    st.underflow_fraction,
                )
            )
            for user, _ in node.outputs[[v.name for v in node.outputs].index(name)].uses():
                overflow.append(
                    Fp16Risk(
                        user.name or "",
                        user.op_type,
                        name,
                        "reads-overflow",
                        st.max_abs,
                        st.underflow_fraction,
                    )
                )
        elif st.underflow_fraction > underflow_limit:
            underflow.append(
                Fp16Risk(
                    node.name or "",
                    node.op_type,
                    name,
                    "underflow",
                    st.max_abs,
                    st.underflow_fraction,
                )
            )
    overflow.sort(key=lambda r: (-r.max_abs, r.reason != "overflow"))
    underflow.sort(key=lambda r: -r.underflow_fraction)
    seen: set[str] = set()
    ranked = []
    for risk in overflow + underflow:
        if risk.node and risk.node not in seen:
            seen.add(risk.node)
            ranked.append(risk)
    return ranked
