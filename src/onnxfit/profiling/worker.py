"""The measuring side of ``bench`` and ``compare``: a :class:`Worker` holding one session.

A worker loads one model into one session, makes random feeds, and answers commands: ``load``
(session-creation and first-inference time), ``run`` (N timed iterations), ``memory`` (peak RSS,
device memory, CPU time used), ``profile`` (ORT's per-operator profile on a second session with
the same settings), ``quit``. By default it lives in a fresh child process
(:class:`~onnxfit.profiling.client.SubprocessWorker`, ``python -m onnxfit.profiling.worker``)
so one model's allocations never show in another's figures;
:class:`~onnxfit.profiling.client.LocalWorker` runs the same code in this process.

Protocol: one JSON object per line on the child's stdin, one JSON answer per line on its
stdout (the child moves fd 1 to stderr first, so stray prints cannot corrupt the stream).
An answer is ``{"ok": true, ...}`` or ``{"ok": false, "error", "hint", "kind"}``; ``kind`` names
the :mod:`onnxfit.errors` class to raise again in the parent ("bug" for anything else).

Runtimes: ``"onnxfit"`` runs :class:`onnxfit.runtime.session.Session` with the target's
settings (threads, memory pattern, IO binding...); ``"ort"`` a plain
``onnxruntime.InferenceSession`` with default options (threads only) — the baseline.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from onnxfit import atomic
from onnxfit.data.feeds import free_dims_for, make_feeds, ort_specs, proto_specs
from onnxfit.errors import InputError, ModelLoadError, OnnxfitError
from onnxfit.profiling import system

logger = logging.getLogger(__name__)

RUNTIMES = ("onnxfit", "ort")


class Worker:
    """One model, one session, timed on command. Used inside the child (or in-process)."""

    def __init__(self) -> None:
        self._session: Any = None
        self._ort: Any = None  # the raw InferenceSession when runtime == "ort"
        self._run: Callable[[], Any] | None = None
        self._spec: dict[str, Any] = {}
        self._timer: Any = None
        self._feeds: dict[str, np.ndarray] = {}

    # -- commands -------------------------------------------------------------------------
    def handle(self, msg: Mapping[str, Any]) -> dict[str, Any]:
        cmd = msg.get("cmd")
        args = {k: v for k, v in msg.items() if k != "cmd"}
        if cmd == "load":
            return self.load(**args)
        if cmd == "run":
            return self.run(**args)
        if cmd == "memory":
            return self.memory()
        if cmd == "profile":
            return self.profile(**args)
        if cmd == "ping":
            return {"pid": os.getpid()}
        if cmd == "quit":
            self.close()
            return {"pid": os.getpid()}
        raise InputError(f"unknown worker command {cmd!r}")

    def load(
        self,
        *,
        model: str,
        batch: int = 1,
        target: str = "cpu",
        providers: list[str] | None = None,
        threads: int | None = None,
        io_binding: bool = False,
        runtime: str = "onnxfit",
        input_shapes: dict[str, list[int]] | None = None,
        cpus: list[int] | None = None,
        seed: int = 0,
        gpu_timing: bool = True,
    ) -> dict[str, Any]:
        """Create the session (timed), make feeds, run once (timed)."""
        if runtime not in RUNTIMES:
            raise InputError(f"unknown runtime {runtime!r}", hint=f"one of {', '.join(RUNTIMES)}")
        pinned = system.pin_to(list(cpus)) if cpus else False
        baseline = system.rss_bytes()
        baseline_peak = system.peak_rss_bytes()
        self._spec = {"model": model, "batch": batch, "input_shapes": input_shapes}
        t0 = time.perf_counter()
        info = (self._load_ort if runtime == "ort" else self._load_onnxfit)(
            model,
            batch=batch,
            target=target,
            providers=providers,
            threads=threads,
            io_binding=io_binding,
            input_shapes=input_shapes,
            seed=seed,
            gpu_timing=gpu_timing,
        )
        session_s = time.perf_counter() - t0
        assert self._run is not None
        t0 = time.perf_counter()
        self._run()
        first_s = time.perf_counter() - t0
        return {
            **info,
            "pid": os.getpid(),
            "runtime": runtime,
            "session_s": session_s,
            "first_s": first_s,
            "rss_baseline": baseline,
            "peak_rss_baseline": baseline_peak,
            "pinned_cpus": sorted(cpus) if pinned and cpus else None,
            "gpu_timer": getattr(self._timer, "name", None),
        }

    def _load_onnxfit(self, model: str, **kw: Any) -> dict[str, Any]:
        from onnxfit.runtime.session import Session
        from onnxfit.runtime.settings import plan_session

        probe = plan_session(kw["target"], providers=kw["providers"], threads=kw["threads"])
        options: dict[str, Any] = {}
        if probe.provider == "CUDAExecutionProvider" and kw["gpu_timing"]:
            from onnxfit.profiling.tracker import cuda_stream_options, cuda_timer

            self._timer = cuda_timer()
            options = cuda_stream_options()
        from onnxfit import io

        proto = io.load_proto(Path(model))
        free = free_dims_for(proto_specs(proto), kw["batch"], kw["input_shapes"])
        self._session = Session(
            proto,
            target=kw["target"],
            providers=kw["providers"],
            threads=kw["threads"],
            io_binding=kw["io_binding"] or None,
            free_dims=free,
            provider_options=options or None,
        )
        del proto
        sess = self._session
        feeds = make_feeds(
            sess.inputs, batch=kw["batch"], input_shapes=kw["input_shapes"], seed=kw["seed"]
        )
        if sess.pool is not None:  # CPU io binding: bind once, then feed the bound buffers
            sess.run_bound(feeds, copy=False)
            bufs = sess.input_buffers()
            for name, buf in bufs.items():
                buf[...] = feeds[name]
            feeds = bufs or feeds
            self._run = lambda: sess.run_bound(feeds, copy=False)
        else:
            self._run = lambda: sess.run(feeds)
        self._feeds = feeds
        plan = sess.plan
        return {
            "provider": sess.provider,
            "wanted_provider": plan.wanted,
            "fallback": plan.fallback,
            "threads": plan.intra_op_threads,
            "io_binding": plan.io_binding,
            "settings": sess.session_options(),
            "inputs": {k: list(v.shape) for k, v in feeds.items()},
        }

    def _load_ort(self, model: str, **kw: Any) -> dict[str, Any]:
        import onnxruntime as ort

        so = ort.SessionOptions()
        if kw["threads"]:
            so.intra_op_num_threads = int(kw["threads"])
        from onnxfit.runtime.webgpu import available_providers, inference_session

        providers = kw["providers"] or ["CPUExecutionProvider"]
        have = available_providers()
        providers = [p for p in providers if p in have] or ["CPUExecutionProvider"]
        if not Path(model).is_file():
            raise ModelLoadError(f"{model}: no such file", hint="check the path")
        try:
            # By path, as a plain-ORT user would: reading it through onnxfit.io first costs the
            # serialized copy (+60 MiB peak RSS on ResNet-18). The callers (bench, compare)
            # have already checked the file, external data included, with onnxfit.io.load.
            sess = inference_session(str(model), so, providers)
        except Exception as exc:  # ORT raises its own Fail/InvalidArgument types
            raise InputError(f"onnxruntime cannot create the session: {exc}") from None
        self._ort = sess
        specs = ort_specs(sess.get_inputs())
        feeds = make_feeds(
            specs, batch=kw["batch"], input_shapes=kw["input_shapes"], seed=kw["seed"]
        )
        names = [o.name for o in sess.get_outputs()]
        self._run = lambda: sess.run(names, feeds)
        self._feeds = feeds
        return {
            "provider": sess.get_providers()[0],
            "wanted_provider": (kw["providers"] or ["CPUExecutionProvider"])[0],
            "fallback": sess.get_providers()[0] != (kw["providers"] or [providers[0]])[0],
            "threads": int(kw["threads"] or 0) or None,
            "io_binding": False,
            "settings": {"runtime": "plain onnxruntime defaults", "threads": kw["threads"]},
            "inputs": {k: list(v.shape) for k, v in feeds.items()},
        }

    def run(self, *, iterations: int) -> dict[str, Any]:
        """``iterations`` timed runs: wall seconds each (and GPU seconds with a GPU timer)."""
        if self._run is None:
            raise InputError("run before load")
        run = self._run
        clock = time.perf_counter
        times = [0.0] * int(iterations)
        timer = self._timer
        tokens = []
        for i in range(int(iterations)):
            tok = timer.begin() if timer is not None else None
            t0 = clock()
            run()
            times[i] = clock() - t0
            if tok is not None:
                tokens.append(timer.finish(tok))
        gpu = [timer.elapsed(t) for t in tokens] if tokens else None
        return {"times": times, "gpu_times": gpu}

    def memory(self) -> dict[str, Any]:
        """Peak and current RSS, device memory (CUDA via nvidia-smi), CPU seconds used."""
        return {
            "peak_rss": system.peak_rss_bytes(),
            "rss": system.rss_bytes(),
            "device_bytes": system.device_memory_bytes()
            if self._provider() == "CUDAExecutionProvider"
            else None,
            "cpu_s": system.own_cpu_seconds(),
        }

    def _provider(self) -> str | None:
        if self._session is not None:
            return str(self._session.provider)
        if self._ort is not None:
            return str(self._ort.get_providers()[0])
        return None

    def profile(
        self, *, runs: int = 20, warmup: int = 3, keep: str | None = None
    ) -> dict[str, Any]:
        """ORT's per-operator profile on a second session with the same settings (parsed)."""
        import onnxruntime as ort

        from onnxfit import io
        from onnxfit.profiling.ortprofile import parse_profile
        from onnxfit.runtime.settings import build_session_options
        from onnxfit.runtime.webgpu import inference_session

        if self._session is None and self._ort is None:
            raise InputError("profile before load")
        if self._session is not None:
            plan = self._session.plan
            so = build_session_options(plan)
            providers = [(n, dict(o)) for n, o in plan.providers]
        else:
            so = ort.SessionOptions()
            so.intra_op_num_threads = self._ort.get_session_options().intra_op_num_threads
            providers = list(self._ort.get_providers())
        with atomic.temp_dir("prof") as tmp:
            so.enable_profiling = True
            so.profile_file_prefix = str(Path(tmp) / "ort")
            proto = io.load_proto(Path(self._spec["model"]))
            sess = inference_session(io.to_bytes(proto), so, providers)
            feeds = {k: np.ascontiguousarray(v) for k, v in self._feeds.items()}
            names = [o.name for o in sess.get_outputs()]
            wall = []
            for i in range(warmup + runs):
                t0 = time.perf_counter()
                sess.run(names, feeds)
                if i >= warmup:
                    wall.append(time.perf_counter() - t0)
            path = sess.end_profiling()
            prof = parse_profile(path, skip_runs=warmup)
            if keep:
                Path(keep).write_bytes(Path(path).read_bytes())
        from dataclasses import replace

        return {"profile": replace(prof, wall_s=tuple(wall)).to_dict()}

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
        self._session = self._ort = self._run = None


def main() -> None:
    """The child's loop: JSON commands on stdin, JSON answers on the original stdout."""
    out = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)  # anything else printed to fd 1 goes to stderr
    sys.stdout = sys.stderr
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    worker = Worker()
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = None
        try:
            msg = json.loads(line)
            cmd = msg.get("cmd")
            answer: dict[str, Any] = {"ok": True, **worker.handle(msg)}
        except OnnxfitError as exc:
            answer = {
                "ok": False,
                "error": exc.message,
                "hint": exc.hint,
                "kind": type(exc).__name__,
            }
        except Exception as exc:
            answer = {
                "ok": False,
                "error": f"{type(exc).__name__}: {exc}",
                "kind": "bug",
                "traceback": traceback.format_exc(),
            }
        out.write(json.dumps(answer) + "\n")
        out.flush()
        if cmd == "quit":
            break


if __name__ == "__main__":
    main()
