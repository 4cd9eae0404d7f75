"""ResourceManager: eviction order and thresholds, refusals, CRITICAL admission, reloads, events."""

from __future__ import annotations

import logging
import random
import threading
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from onnxfit.errors import BudgetExceededError, InputError
from onnxfit.runtime.eviction import Resource, plan_admission, refusal_message
from onnxfit.runtime.resources import Event, Priority, ResourceManager
from runtime_util import start_and_join

pytestmark = pytest.mark.timeout(120)
MIB = 2**20
LOW, MEDIUM, HIGH, CRITICAL = Priority.LOW, Priority.MEDIUM, Priority.HIGH, Priority.CRITICAL


class Factory:
    """A stand-in session factory: returns a token per load and counts loads per source."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, source: Any) -> tuple[str, int]:
        self.calls.append(str(source))
        return (str(source), len(self.calls))


def _manager(budget_mib: int = 100, **kw: Any) -> tuple[ResourceManager, Factory, list[Event]]:
    events: list[Event] = []
    factory = Factory()
    mgr = ResourceManager(budget_mib * MIB, session_factory=factory, on_event=events.append, **kw)
    return mgr, factory, events


def _model(mgr: ResourceManager, name: str, prio: Priority, mib: int) -> None:
    mgr.register_model(name, f"{name}.onnx", prio, size_bytes=mib * MIB)


def _load(mgr: ResourceManager, *names: str) -> None:
    for n in names:
        mgr.acquire(n, pin=False)


def _loaded(mgr: ResourceManager) -> set[str]:
    return {r.name for r in mgr.stats().resources if r.loaded}


def test_low_evicted_least_recently_used_first() -> None:
    mgr, _, events = _manager()
    for n in ("a", "b", "c"):
        _model(mgr, n, LOW, 25)
    _model(mgr, "big", HIGH, 30)
    _load(mgr, "a", "b", "c")
    _load(mgr, "a")  # a is now most recently used; b is the LRU
    _load(mgr, "big")  # 75 + 30 > 80 (20 % free): evict LOW, LRU first, until 20 MiB free
    assert [e.name for e in events if e.kind == "evicted"] == ["b"]
    assert _loaded(mgr) == {"a", "c", "big"}
    assert mgr.used_bytes == 80 * MIB
    _model(mgr, "big2", HIGH, 10)
    _load(mgr, "big2")  # 80 + 10 -> 10 % free: the next LRU LOW (c, then a) goes
    assert [e.name for e in events if e.kind == "evicted"] == ["b", "c"]
    assert _loaded(mgr) == {"a", "big", "big2"}


def test_low_threshold_spares_medium_critical_threshold_does_not() -> None:
    mgr, _, events = _manager()
    _model(mgr, "m", MEDIUM, 40)
    _model(mgr, "l", LOW, 10)
    _model(mgr, "h1", HIGH, 35)
    _model(mgr, "h2", HIGH, 10)
    _load(mgr, "m", "l")
    _load(mgr, "h1")  # 50 + 35 = 85 -> 15 % free: LOW goes, MEDIUM stays (above 10 %)
    assert _loaded(mgr) == {"m", "h1"}
    assert mgr.used_bytes == 75 * MIB
    _load(mgr, "h2")  # 75 + 10 = 85 -> 15 % free, no LOW left, still >= 10 %: nothing evicted
    assert _loaded(mgr) == {"m", "h1", "h2"}
    _model(mgr, "h3", HIGH, 10)
    _load(mgr, "h3")  # 85 + 10 = 95 -> 5 % free: below critical, MEDIUM evicted
    assert _loaded(mgr) == {"h1", "h2", "h3"}
    assert [e.name for e in events if e.kind == "evicted"] == ["l", "m"]


def test_request_never_evicts_higher_priority_or_pinned() -> None:
    mgr, _, events = _manager()
    _model(mgr, "m", MEDIUM, 85)
    _model(mgr, "l1", LOW, 10)
    _model(mgr, "l2", LOW, 6)
    _load(mgr, "m")
    _load(mgr, "l1")  # 95 used: a LOW request may not push out the MEDIUM one
    assert _loaded(mgr) == {"m", "l1"}
    pinned = mgr.acquire("l1")  # pinned now
    assert pinned is not None
    with pytest.raises(BudgetExceededError, match=r"l1 .*pinned"):
        _load(mgr, "l2")  # only l1 could go, and it is pinned
    mgr.release("l1")
    _load(mgr, "l2")
    assert _loaded(mgr) == {"m", "l2"}
    assert [e.name for e in events if e.kind == "evicted"] == ["l1"]


def test_refusal_names_holders_and_evicts_nothing() -> None:
    mgr, _, events = _manager()
    _model(mgr, "hero", HIGH, 60)
    _model(mgr, "ui", LOW, 10)
    _model(mgr, "boss", HIGH, 50)
    _load(mgr, "hero", "ui")
    with pytest.raises(BudgetExceededError) as err:
        _load(mgr, "boss")
    msg = str(err.value)
    assert "'boss' (50.00 MiB, HIGH)" in msg
    assert msg.index("hero (60.00 MiB, HIGH)") < msg.index("ui (10.00 MiB, LOW)")
    assert err.value.hint
    assert _loaded(mgr) == {"hero", "ui"}  # the LOW one was not evicted for nothing
    assert [e.kind for e in events][-1] == "refused"
    assert mgr.stats().counts["refused"] == 1


def test_critical_admitted_over_budget_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    mgr, _, events = _manager()
    _model(mgr, "hero", HIGH, 60)
    _model(mgr, "ui", LOW, 10)
    _model(mgr, "m", MEDIUM, 10)
    _model(mgr, "safety", CRITICAL, 50)
    _load(mgr, "hero", "ui", "m")  # 80 used: exactly 20 % free, nothing evicted yet
    assert _loaded(mgr) == {"hero", "ui", "m"}
    with caplog.at_level(logging.WARNING, logger="onnxfit.runtime.resources"):
        session = mgr.acquire("safety")
    assert session == ("safety.onnx", 4)
    assert _loaded(mgr) == {"hero", "safety"}  # LOW and MEDIUM went first
    assert mgr.used_bytes == 110 * MIB > mgr.budget_bytes
    kinds = [e.kind for e in events]
    assert kinds[-4:] == ["evicted", "evicted", "over_budget", "loaded"]
    assert any("over budget" in r.getMessage() for r in caplog.records)
    assert mgr.stats().peak_bytes == 110 * MIB


def test_reload_after_eviction() -> None:
    mgr, factory, events = _manager()
    _model(mgr, "a", LOW, 50)
    _model(mgr, "b", HIGH, 45)
    first = mgr.acquire("a", pin=False)
    mgr.acquire("b", pin=False)
    assert not mgr.is_loaded("a")
    again = mgr.acquire("b", pin=False)  # already loaded: no new load
    assert again == ("b.onnx", 2)
    mgr.unload("b")
    second = mgr.acquire("a", pin=False)
    assert first != second and second == ("a.onnx", 3)
    assert factory.calls == ["a.onnx", "b.onnx", "a.onnx"]
    assert [e.kind for e in events] == ["loaded", "evicted", "loaded", "unloaded", "reloaded"]
    info = {r.name: r for r in mgr.stats().resources}
    assert info["a"].loads == 2 and info["a"].evictions == 1


def test_buffers_and_use_context() -> None:
    mgr, _, _ = _manager(10)
    size = mgr.register_buffer("frame", (3, 1024, 1024), LOW, dtype=np.float32)
    assert size == 12 * MIB
    with pytest.raises(BudgetExceededError):
        mgr.acquire("frame")  # 12 MiB > 10 MiB budget, not CRITICAL
    mgr.register_buffer("scratch", 4 * MIB, MEDIUM)
    with mgr.use("scratch") as buf:
        assert buf.shape == (4 * MIB,) and buf.dtype == np.uint8 and not buf.any()
        assert mgr.stats().resources[0].pinned
    assert not mgr.stats().resources[0].pinned


def test_errors_and_budget_from_target() -> None:
    mgr, _, _ = _manager()
    _model(mgr, "a", LOW, 1)
    with pytest.raises(InputError, match="already registered"):
        _model(mgr, "a", LOW, 1)
    with pytest.raises(InputError, match="no resource named 'zz'"):
        mgr.acquire("zz")
    with pytest.raises(InputError, match="release"):
        mgr.release("a")
    with pytest.raises(InputError):
        ResourceManager(100, low_threshold=0.05, critical_threshold=0.1)
    with pytest.raises(InputError):
        ResourceManager(0)
    assert ResourceManager("xbox-series-s").budget_bytes == 8 * 10**9
    mgr.unregister("a")
    assert mgr.stats().resources == ()
    assert mgr.stats().to_dict()["budget_bytes"] == 100 * MIB


def test_concurrent_acquire_release_keeps_accounting_consistent() -> None:
    mgr, _, _ = _manager(100)
    prios = [LOW, MEDIUM, HIGH]
    for i in range(12):
        _model(mgr, f"r{i}", prios[i % 3], 5 + (i % 4) * 5)
    errors: list[BaseException] = []
    over: list[int] = []

    def worker(seed: int) -> None:
        rnd = random.Random(seed)
        for _ in range(200):
            name = f"r{rnd.randrange(12)}"
            try:
                with mgr.use(name):
                    if mgr.used_bytes > mgr.budget_bytes:
                        over.append(mgr.used_bytes)
            except BudgetExceededError:
                pass
            except BaseException as exc:
                errors.append(exc)

    start_and_join([threading.Thread(target=worker, args=(s,)) for s in range(8)], timeout=60)
    assert not errors and not over
    st = mgr.stats()
    assert st.used_bytes == sum(r.size_bytes for r in st.resources if r.loaded)
    assert not any(r.pinned for r in st.resources)


@pytest.mark.slow
def test_real_model_estimate_load_evict_reload(zoo_resnet18: Path) -> None:
    events: list[Event] = []
    mgr = ResourceManager(256 * MIB, on_event=events.append)
    size = mgr.register_model("resnet", zoo_resnet18, MEDIUM)
    assert 44 * MIB < size < 80 * MIB  # weights 44.6 MiB + arena + IO
    mgr.register_buffer("huge", 220 * MIB, HIGH)
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    ref = ort.InferenceSession(str(zoo_resnet18), providers=["CPUExecutionProvider"]).run(
        None, {"input": x}
    )[0]
    with mgr.use("resnet") as sess:
        np.testing.assert_allclose(sess.run({"input": x})["logits"], ref, rtol=1e-5, atol=1e-5)
    mgr.acquire("huge", pin=False)  # 220 + 58 > 256: the MEDIUM model is evicted
    assert not mgr.is_loaded("resnet")
    mgr.unload("huge")
    with mgr.use("resnet") as sess:
        np.testing.assert_allclose(sess.run({"input": x})["logits"], ref, rtol=1e-5, atol=1e-5)
    assert [e.kind for e in events] == ["loaded", "evicted", "loaded", "unloaded", "reloaded"]


# ------------------------------------------------------------- the policy alone (eviction.py)
def _res(name: str, prio: Priority, mib: int, *, loaded: bool = True, **kw: Any) -> Resource:
    return Resource(name, "model", prio, mib * MIB, loaded=loaded, **kw)


def test_plan_admission_alone_evicts_lru_low_then_medium_never_higher() -> None:
    held = [
        _res("m", MEDIUM, 20, last_used=1),
        _res("l_old", LOW, 20, last_used=2),
        _res("l_new", LOW, 20, last_used=3),
        _res("h", HIGH, 20, last_used=0),
        _res("pinned", LOW, 5, pins=1),
        _res("gone", LOW, 50, loaded=False),
    ]
    kw: dict[str, Any] = {"budget": 100 * MIB, "low_threshold": 0.2, "critical_threshold": 0.1}
    used = 85 * MIB
    # 15 MiB free; a 10 MiB MEDIUM request leaves 5: the LRU LOW alone frees 20 (25 >= 20)
    plan = plan_admission(_res("r", MEDIUM, 10, loaded=False), held, used=used, **kw)
    assert plan is not None and [r.name for r in plan] == ["l_old"]
    # a LOW request never evicts the MEDIUM one: only the LOWs, and then it fits
    plan = plan_admission(_res("r", LOW, 40, loaded=False), held, used=used, **kw)
    assert plan is not None and [r.name for r in plan] == ["l_old", "l_new"]
    # too big even after evicting LOW and MEDIUM: refused (None); CRITICAL: admitted anyway
    assert plan_admission(_res("r", HIGH, 90, loaded=False), held, used=used, **kw) is None
    plan = plan_admission(_res("r", CRITICAL, 90, loaded=False), held, used=used, **kw)
    assert plan is not None and [r.name for r in plan] == ["l_old", "l_new", "m"]
    msg = refusal_message(_res("r", HIGH, 90), held, used=used, budget=100 * MIB)
    assert msg.startswith("cannot load 'r' (90.00 MiB, HIGH): budget 100.00 MiB, 85.00 MiB in use")
    assert "pinned (5.00 MiB, LOW, pinned)" in msg and "gone" not in msg
