"""Preparing a model for :class:`~onnxfit.runtime.progressive.ProgressiveLoader`: read it
metadata-first, plan its sections for a budget, and build one section's ORT session.

* :func:`read_graph` reads the model with :func:`onnxfit.io.load`: tensors stored as external
  data stay unread on disk (``onnx_ir.ExternalTensor``) and their sizes come from dtype and
  shape. A model with at least :data:`SPILL_BYTES` of *embedded* weights has them written to
  external data in a private temporary folder (``onnxfit.io.save``) and is read again from
  there, so the rest works the same way.
* :func:`choose_plan` splits the graph when weights + peak live activations exceed
  ``fit_fraction`` of the budget (or an explicit section budget), into sections of at most
  ``section_budget`` bytes (default: half the budget, or what the biggest node needs when that is
  more; :func:`onnxfit.runtime.sections.plan_sections`); ``resident`` when every section's
  weights plus the largest section's activations fit the budget together.
* :func:`build_section_session` builds a section's ``InferenceSession`` from its model; ORT
  reads the initializers straight from the external-data folder (session config
  ``session.model_external_initializers_file_folder_path``), so no Python copy is made. A
  sectioned model runs with ORT's CPU arena off, so activations are freed between runs; freed
  heap is given back with ``malloc_trim``.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import onnx_ir as ir
import onnxruntime as ort

from onnxfit import io
from onnxfit.errors import InputError
from onnxfit.runtime.memstat import available_memory, malloc_trim
from onnxfit.runtime.sections import (
    GraphInfo,
    SectionPlan,
    make_section,
    max_node_cost,
    plan_sections,
    tensor_bytes,
)
from onnxfit.runtime.settings import OPT_LEVELS, SessionPlan, build_session_options
from onnxfit.runtime.webgpu import inference_session
from onnxfit.targets import Target, get_target

__all__ = ["SPILL_BYTES", "build_section_session", "choose_plan", "needed_until", "read_graph"]

logger = logging.getLogger(__name__)

_EXTERNAL_FOLDER_KEY = "session.model_external_initializers_file_folder_path"
#: a model with this many bytes of embedded initializers has them spilled to external data
SPILL_BYTES = 1 << 20


def read_graph(path: Path) -> tuple[ir.Model, str, str | None]:
    """(the model with its external weights unread, the folder its external data is in, the
    temporary folder to remove once done, or None). Embedded weights are spilled to that
    temporary folder first; should spilling fail, the folder is removed before the error
    propagates."""
    model = io.load(path)
    embedded = sum(
        tensor_bytes(v.const_value)
        for v in model.graph.initializers.values()
        if v.const_value is not None and not isinstance(v.const_value, ir.ExternalTensor)
    )
    if embedded < SPILL_BYTES:
        return model, str(path.resolve().parent), None
    tmpdir = tempfile.mkdtemp(prefix=f"onnxfit-progressive-{os.getpid()}-")
    try:
        spilled = Path(tmpdir) / "model.onnx"
        io.save(model, spilled, external_threshold=0)
        del model
        logger.info("embedded weights of %s spilled to %s", path.name, spilled)
        return io.load(spilled), tmpdir, tmpdir
    except BaseException:
        shutil.rmtree(tmpdir, ignore_errors=True)
        raise


def choose_plan(
    path: Path,
    info: GraphInfo,
    *,
    target: Target,
    budget: int | None,
    section_budget: int | None,
    fit_fraction: float,
) -> SectionPlan:
    """The section plan for ``info`` within ``budget`` bytes (default: the target's memory
    budget, capped at this host's available memory); see the module docstring."""
    weights, act = info.weight_bytes, info.peak_activation_bytes
    estimate = weights + act
    if budget is None:
        budget = min(target.memory_budget, available_memory(get_target("cpu").memory_budget))
    # split when the model needs more than fit_fraction of the budget, or more than an
    # explicitly given section budget
    sectioned = estimate > fit_fraction * budget or (
        section_budget is not None and estimate > section_budget
    )
    if section_budget is None:
        # half the budget (one section runs while the next loads), but never less than the
        # biggest single node needs
        section_budget = min(budget, max(budget // 2, max_node_cost(info))) if sectioned else budget
    if section_budget > budget:
        raise InputError(f"section_budget_bytes ({section_budget}) exceeds budget_bytes ({budget})")
    if sectioned:
        sections = plan_sections(info, section_budget)
    else:
        sections = [make_section(info, 0, 0, len(info.nodes))]
    max_act = max((s.activation_bytes for s in sections), default=0)
    resident = sum(s.weight_bytes for s in sections) + max_act <= budget
    logger.info(
        "%s: estimate %.2f MiB (weights %.2f + activations %.2f), budget %.2f MiB -> "
        "%d section(s)%s",
        path.name,
        estimate / 2**20,
        weights / 2**20,
        act / 2**20,
        budget / 2**20,
        len(sections),
        ", resident" if resident else ", streamed",
    )
    return SectionPlan(
        str(path),
        weights,
        act,
        estimate,
        int(budget),
        int(section_budget),
        sectioned,
        resident,
        tuple(sections),
    )


def needed_until(plan: SectionPlan, info: GraphInfo) -> dict[str, int]:
    """Tensor -> index of the last section reading it (len(sections) for graph outputs)."""
    last: dict[str, int] = {}
    for s in plan.sections:
        for t in s.inputs:
            last[t] = s.index
    for o in info.graph_outputs:
        last[o] = len(plan.sections)
    return last


def build_section_session(
    model: ir.Model,
    *,
    folder: str,
    session_plan: SessionPlan,
    optimization: str,
    sectioned: bool,
) -> ort.InferenceSession:
    """An ORT session for one section's model (its external weights are references, read by ORT
    from ``folder``, not by Python); ``optimization``
    is a key of :data:`~onnxfit.runtime.settings.OPT_LEVELS`."""
    so = build_session_options(session_plan)
    so.add_session_config_entry(_EXTERNAL_FOLDER_KEY, folder)
    so.graph_optimization_level = OPT_LEVELS[optimization]
    if sectioned:
        so.enable_cpu_mem_arena = False
    sess = inference_session(io.to_bytes(model, inline_external=False), so, session_plan.providers)
    malloc_trim()
    return sess
