"""ONNX Runtime's WebGPU execution provider: a shader-based GPU lane beside CUDA.

WebGPU (Dawn: D3D12 on Windows, Vulkan on Linux) runs its kernels as compute shaders, as
DirectML does, so it is the closest thing to the console's runtime that a Linux GPU host can run.
With onnxruntime >= 1.32 it is a *plugin* EP shipped as the package ``onnxruntime-ep-webgpu``
(extra ``webgpu``): its library is registered once with
``onnxruntime.register_execution_provider_library("WebGPU", path)``, its devices are the entries
of ``onnxruntime.get_ep_devices()`` whose ``ep_name`` is ``WebGpuExecutionProvider``, and a
session gets it through ``SessionOptions.add_provider_for_devices(devices, options)`` rather than
the ``providers=`` list (measured on an H200 with 0.4.0: FINDINGS.md, "WebGPU EP").

A Linux host needs a Vulkan loader (``libvulkan1``) and, for an NVIDIA GPU, ``VK_DRIVER_FILES``
pointing at the driver's ICD json. Mesa's lavapipe 22.3 (a CPU Vulkan) lacks a feature Dawn
requires, so on a machine without a GPU the provider is simply not available.

:func:`inference_session` is the one place that creates ONNX Runtime sessions for onnxfit's own
runs: it sends a WebGPU provider through ``add_provider_for_devices`` and every other one through
``providers=``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import onnxruntime as ort

logger = logging.getLogger(__name__)

WEBGPU = "WebGpuExecutionProvider"
_LIBRARY_NAME = "WebGPU"


@functools.cache
def webgpu_devices() -> tuple[Any, ...]:
    """The WebGPU EP's devices, registering its library on first use; () when the package, the
    ORT API or a usable GPU is missing (the reason is logged at INFO)."""
    try:
        import onnxruntime_ep_webgpu  # type: ignore[import-not-found]
    except ImportError:
        logger.info("WebGPU: onnxruntime-ep-webgpu is not installed")
        return ()
    register = getattr(ort, "register_execution_provider_library", None)
    if register is None or not hasattr(ort, "get_ep_devices"):
        logger.info("WebGPU: onnxruntime %s has no plugin-EP API (needs >= 1.32)", ort.__version__)
        return ()
    try:
        register(_LIBRARY_NAME, onnxruntime_ep_webgpu.get_library_path())
    except Exception as exc:  # ORT raises its own Fail type; already registered is fine too
        if "already" not in str(exc).lower():
            logger.info("WebGPU: cannot register the EP library: %s", exc)
            return ()
    devices = tuple(d for d in ort.get_ep_devices() if d.ep_name == WEBGPU)
    if not devices:
        logger.info("WebGPU: the EP loaded but found no device (Vulkan loader / driver?)")
    return devices


def available_providers() -> list[str]:
    """``onnxruntime.get_available_providers()``, with the WebGPU EP when it has a device."""
    have = list(ort.get_available_providers())
    if WEBGPU not in have and webgpu_devices():
        have.insert(0, WEBGPU)
    return have


def inference_session(
    source: str | bytes,
    options: ort.SessionOptions,
    providers: Sequence[tuple[str, Mapping[str, Any]] | str],
) -> ort.InferenceSession:
    """An ``InferenceSession`` on ``providers`` (names or ``(name, options)`` pairs, the first one
    wanted); a first provider of WebGPU goes through ``add_provider_for_devices`` with its options,
    the CPU provider behind it as ORT's own fallback."""
    pairs = [(p, {}) if isinstance(p, str) else (p[0], dict(p[1])) for p in providers]
    if pairs and pairs[0][0] == WEBGPU:
        devices = webgpu_devices()
        if not devices:
            raise RuntimeError("the WebGPU execution provider has no device on this host")
        options.add_provider_for_devices(list(devices), {k: str(v) for k, v in pairs[0][1].items()})
        return ort.InferenceSession(source, sess_options=options)
    return ort.InferenceSession(source, sess_options=options, providers=pairs)
