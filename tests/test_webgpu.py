"""The WebGPU plugin EP lane: registration, availability, and how sessions are created.

This CPU has no Vulkan device Dawn can use, so the EP itself is faked here (its package, the ORT
plugin API and the session); the real runs are benchmarks on a GPU host.
"""

from __future__ import annotations

import sys
import types
from typing import Any

import onnxruntime as ort
import pytest

from onnxfit.runtime import settings, webgpu


class _Device:
    def __init__(self, ep_name: str) -> None:
        self.ep_name = ep_name


@pytest.fixture
def fake_webgpu(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    seen: dict[str, Any] = {"registered": [], "sessions": []}
    module = types.ModuleType("onnxruntime_ep_webgpu")
    module.get_library_path = lambda: "/fake/libwebgpu.so"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "onnxruntime_ep_webgpu", module)
    monkeypatch.setattr(
        ort,
        "register_execution_provider_library",
        lambda name, path: seen["registered"].append((name, path)),
        raising=False,
    )
    devices = [_Device("CPUExecutionProvider"), _Device(webgpu.WEBGPU)]
    monkeypatch.setattr(ort, "get_ep_devices", lambda: devices, raising=False)

    def session(source: Any, sess_options: Any = None, providers: Any = None) -> str:
        seen["sessions"].append((source, sess_options, providers))
        return "session"

    monkeypatch.setattr(ort, "InferenceSession", session)
    webgpu.webgpu_devices.cache_clear()
    yield seen
    webgpu.webgpu_devices.cache_clear()


def test_devices_registered_once_and_listed(fake_webgpu: dict[str, Any]) -> None:
    assert [d.ep_name for d in webgpu.webgpu_devices()] == [webgpu.WEBGPU]
    webgpu.webgpu_devices()
    assert fake_webgpu["registered"] == [("WebGPU", "/fake/libwebgpu.so")]
    assert webgpu.available_providers()[0] == webgpu.WEBGPU


def test_webgpu_session_goes_through_add_provider_for_devices(fake_webgpu: dict[str, Any]) -> None:
    added: list[Any] = []

    class Options:
        def add_provider_for_devices(self, devices: list[Any], options: dict[str, str]) -> None:
            added.append(([d.ep_name for d in devices], options))

    opts = Options()
    webgpu.inference_session(b"model", opts, [(webgpu.WEBGPU, {"enableGraphCapture": 1})])
    assert added == [([webgpu.WEBGPU], {"enableGraphCapture": "1"})]
    assert fake_webgpu["sessions"] == [(b"model", opts, None)]  # no providers= list
    webgpu.inference_session("m.onnx", opts, ["CPUExecutionProvider"])
    assert fake_webgpu["sessions"][-1][2] == [("CPUExecutionProvider", {})]


def test_plan_prefers_webgpu_when_it_has_a_device(fake_webgpu: dict[str, Any]) -> None:
    plan = settings.plan_session("cpu", providers=[webgpu.WEBGPU])
    assert plan.provider == webgpu.WEBGPU and not plan.fallback


def test_without_the_package_webgpu_is_unavailable_and_plans_fall_back(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime_ep_webgpu", None)  # import fails
    webgpu.webgpu_devices.cache_clear()
    try:
        assert webgpu.webgpu_devices() == ()
        assert webgpu.WEBGPU not in webgpu.available_providers()
        plan = settings.plan_session("cpu", providers=[webgpu.WEBGPU])
        assert plan.provider == "CPUExecutionProvider" and plan.fallback
        assert "onnxruntime-ep-webgpu" in caplog.text
        with pytest.raises(RuntimeError, match="no device"):
            webgpu.inference_session(b"m", ort.SessionOptions(), [webgpu.WEBGPU])
    finally:
        webgpu.webgpu_devices.cache_clear()
