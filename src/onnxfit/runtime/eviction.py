"""The budget policy of :class:`~onnxfit.runtime.resources.ResourceManager`: what to evict to
admit a request, or why it is refused. Pure: it reads the resources and changes nothing.

Admitting a request of ``size`` bytes (:func:`plan_admission`):

1. if it would leave less than ``low_threshold`` of the budget free, LOW resources are
   evicted, least recently used first, until that much is free again (or none is left);
2. if it would still leave less than ``critical_threshold`` free, MEDIUM resources are
   evicted the same way;
3. if it still does not fit in the budget, the request is refused (nothing is evicted); a
   CRITICAL request is admitted anyway (over budget).

A request never evicts resources of a higher priority than its own (a LOW model does not push out
a MEDIUM one), a pinned resource, or an unloaded one. :func:`refusal_message` names the largest
holders.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal


class Priority(enum.IntEnum):
    """How much a resource matters: LOW and MEDIUM ones may be evicted, HIGH and CRITICAL not."""

    LOW = 0
    MEDIUM = 1
    HIGH = 2
    CRITICAL = 3


@dataclass
class Resource:
    """One registered model or buffer and its bookkeeping (the manager's lock guards it)."""

    name: str
    kind: Literal["model", "buffer"]
    priority: Priority
    size: int
    source: Any = None  # model path / ir.Model, or (shape, dtype) for a buffer
    obj: Any = None
    loaded: bool = False
    loads: int = 0
    pins: int = 0
    last_used: int = 0
    evictions: int = 0


def mib(n: int) -> str:
    """Bytes as ``"1.50 MiB"`` (log and error messages)."""
    return f"{n / 2**20:.2f} MiB"


def plan_admission(
    request: Resource,
    resources: Iterable[Resource],
    *,
    used: int,
    budget: int,
    low_threshold: float,
    critical_threshold: float,
) -> list[Resource] | None:
    """The resources to evict, in order, to admit ``request`` (see the module docstring), or
    None when it must be refused. ``used`` is the bytes held now, without the request."""
    free_after = budget - used - request.size
    evictable = sorted(
        (
            r
            for r in resources
            if r.loaded
            and r.pins == 0
            and r is not request
            and r.priority <= min(Priority.MEDIUM, request.priority)
        ),
        key=lambda r: (r.priority, r.last_used),
    )
    plan: list[Resource] = []
    for level, threshold in (
        (Priority.LOW, low_threshold),
        (Priority.MEDIUM, critical_threshold),
    ):
        for r in evictable:
            if free_after >= threshold * budget:
                break
            if r.priority <= level and r not in plan:
                plan.append(r)
                free_after += r.size
    if free_after < 0 and request.priority < Priority.CRITICAL:
        return None
    return plan


def refusal_message(
    request: Resource, resources: Iterable[Resource], *, used: int, budget: int
) -> str:
    """Why ``request`` cannot be loaded: the budget, the use and the five largest holders."""
    holders = sorted((r for r in resources if r.loaded), key=lambda r: -r.size)
    top = ", ".join(
        f"{r.name} ({mib(r.size)}, {r.priority.name}{', pinned' if r.pins else ''})"
        for r in holders[:5]
    )
    more = f" and {len(holders) - 5} more" if len(holders) > 5 else ""
    return (
        f"cannot load {request.name!r} ({mib(request.size)}, {request.priority.name}): budget "
        f"{mib(budget)}, {mib(used)} in use; held by: "
        f"{top or 'nothing'}{more}"
    )
