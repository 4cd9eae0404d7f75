"""The measuring side of ``bench`` and ``compare``: a :class:`Worker` holding one session.

A worker loads one model into one session, makes random feeds, and answers commands: ``load``
(session-creation and first-inference time), ``run`` (N timed iterations), ``memory`` (peak RSS,
device memory, CPU time used), ``profile`` (ORT's per-operator profile on a second session with
the same settings), ``quit``. By default it lives in a fresh child process
(:class:`SubprocessWorker`, ``python -m onnxfit.profiling.worker``) so one model's allocations
never show in another's figures; :class:`LocalWorker` runs the same code in this process.

Protocol: one JSON object per line on the child's stdin, one JSON answer per line on its
stdout (the child moves fd 1 to stderr first, so stray prints cannot corrupt the stream).
An answer is ``{"ok": true, ...}`` or ``{"ok": false, "error", "hint", "kind"}``; ``kind`` names
the :mod:`onnxfit.errors` class to raise again in the parent ("bug" for anything else).

Runtimes: ``"onnxfit"`` runs :class:`onnxfit.runtime.session.Session` with the target's
settings (threads, memory pattern, IO binding...); ``"ort"`` a plain
``onnxruntime.InferenceSession`` with default options (threads only) — the baseline.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from onnxfit import errors
from onnxfit.errors import InputError, OnnxfitError
from onnxfit.profiling import system

logger = logging.getLogger(__name__)

RUNTIMES = ("onnxfit", "ort")
_SRC = str(Path(__file__).resolve().parents[2])


def make_feeds(
    inputs: Sequence[Any],
    *,
    batch: int,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Random feeds for ``inputs`` (objects with ``name``, ``shape``, ``dtype``) at ``batch``.

    A symbolic or unknown leading dimension becomes ``batch``; ``input_shapes`` gives full shapes
    for inputs with other unknown dimensions. A fixed leading dimension that differs from
    ``batch`` raises :class:`InputError`. Floats are standard normal (seeded), integers zero.
    """
    rng = np.random.default_rng(seed)
    shapes = dict(input_shapes or {})
    feeds: dict[str, np.ndarray] = {}
    for spec in inputs:
        if spec.name in shapes:
            shape = [int(d) for d in shapes[spec.name]]
        else:
            shape = []
            for i, d in enumerate(spec.shape):
                if isinstance(d, int) and d > 0:
                    if i == 0 and d != batch:
                        raise InputError(
                            f"input {spec.name!r} has a fixed batch of {d}; batch {batch} cannot "
                            "run",
                            hint=f"use --batch {d}, or export the model with a dynamic batch",
                        )
                    shape.append(d)
                elif i == 0:
                    shape.append(batch)
                else:
                    raise InputError(
                        f"input {spec.name!r} has an unknown dimension {i} ({d!r})",
                        hint=f"give its full shape: --input-shape {spec.name}=1x3x224x224",
                    )
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "f":
            feeds[spec.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind in "biu":
            feeds[spec.name] = np.zeros(shape, dtype)
        else:
            raise InputError(f"input {spec.name!r} has dtype {dtype}; bench feeds numbers only")
    return feeds


def free_dims_for(
    inputs: Sequence[Any], batch: int, input_shapes: Mapping[str, Sequence[int]] | None
) -> dict[str, int]:
    """Symbolic dimension name -> size, from ``batch`` (leading dims) and ``input_shapes``."""
    out: dict[str, int] = {}
    shapes = dict(input_shapes or {})
    for spec in inputs:
        dims = list(spec.shape)
        given = shapes.get(spec.name)
        for i, d in enumerate(dims):
            if isinstance(d, str) and d:
                if given is not None and i < len(given):
                    out.setdefault(d, int(given[i]))
                elif i == 0:
                    out.setdefault(d, batch)
    return out


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
        free = free_dims_for(_proto_specs(proto), kw["batch"], kw["input_shapes"])
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

        from onnxfit import io

        so = ort.SessionOptions()
        if kw["threads"]:
            so.intra_op_num_threads = int(kw["threads"])
        providers = kw["providers"] or ["CPUExecutionProvider"]
        have = ort.get_available_providers()
        providers = [p for p in providers if p in have] or ["CPUExecutionProvider"]
        try:
            sess = ort.InferenceSession(
                io.to_bytes(io.load_proto(Path(model))), so, providers=providers
            )
        except Exception as exc:  # ORT raises its own Fail/InvalidArgument types
            raise InputError(f"onnxruntime cannot create the session: {exc}") from None
        self._ort = sess
        specs = _specs(sess.get_inputs())
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
        with tempfile.TemporaryDirectory(prefix="onnxfit-prof-") as tmp:
            so.enable_profiling = True
            so.profile_file_prefix = str(Path(tmp) / "ort")
            proto = io.load_proto(Path(self._spec["model"]))
            sess = ort.InferenceSession(io.to_bytes(proto), so, providers=providers)
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


def _proto_specs(proto: Any) -> list[Any]:
    """Input specs (name, shape, dtype) of a ModelProto's graph inputs that are not weights."""
    from types import SimpleNamespace

    from onnx import helper

    weights = {t.name for t in proto.graph.initializer}
    out = []
    for vi in proto.graph.input:
        if vi.name in weights:
            continue
        tt = vi.type.tensor_type
        shape = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in tt.shape.dim
        )
        out.append(
            SimpleNamespace(
                name=vi.name, shape=shape, dtype=helper.tensor_dtype_to_np_dtype(tt.elem_type)
            )
        )
    return out


def _specs(node_args: Sequence[Any]) -> list[Any]:
    from types import SimpleNamespace

    dtypes = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
              "tensor(double)": np.float64, "tensor(int64)": np.int64,
              "tensor(int32)": np.int32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
              "tensor(bool)": np.bool_}  # fmt: skip
    out = []
    for a in node_args:
        shape = tuple(d if isinstance(d, int | str) else None for d in (a.shape or ()))
        out.append(SimpleNamespace(name=a.name, shape=shape, dtype=dtypes.get(a.type, np.object_)))
    return out


# ------------------------------------------------------------------------------- clients


def _raise(answer: Mapping[str, Any]) -> None:
    kind = str(answer.get("kind", "bug"))
    cls = getattr(errors, kind, None)
    if isinstance(cls, type) and issubclass(cls, OnnxfitError):
        raise cls(str(answer.get("error")), hint=answer.get("hint"))
    raise RuntimeError(f"worker failed: {answer.get('error')}\n{answer.get('traceback', '')}")


class LocalWorker:
    """A :class:`Worker` in this process, with the same ``call`` interface as the child."""

    isolated = False

    def __init__(self) -> None:
        self._worker = Worker()
        self.pid = os.getpid()

    def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        # a JSON round trip, so that both workers return the same types
        return json.loads(json.dumps(self._worker.handle({"cmd": cmd, **args})))

    def close(self) -> None:
        self._worker.close()

    def __enter__(self) -> LocalWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SubprocessWorker:
    """A :class:`Worker` in a fresh child process (``python -m onnxfit.profiling.worker``).

    ``timeout`` bounds every answer (seconds); a child that dies or stops answering raises
    RuntimeError with the tail of its stderr.
    """

    isolated = True

    def __init__(self, *, timeout: float = 900.0) -> None:
        self.timeout = timeout
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_SRC, env.get("PYTHONPATH")) if p)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self._stderr = tempfile.TemporaryFile(mode="w+b")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "onnxfit.profiling.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=env,
            text=True,
            bufsize=1,
        )
        self.pid = self._proc.pid
        self._answers: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self._answers.put(line)
        self._answers.put(None)

    def _stderr_tail(self, n: int = 2000) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace")[-n:]

    def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        if self._proc.poll() is not None:
            raise RuntimeError(f"worker {self.pid} has exited:\n{self._stderr_tail()}")
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(json.dumps({"cmd": cmd, **args}) + "\n")
            self._proc.stdin.flush()
        except BrokenPipeError:
            raise RuntimeError(f"worker {self.pid} died:\n{self._stderr_tail()}") from None
        try:
            line = self._answers.get(timeout=self.timeout)
        except queue.Empty:
            self.kill()
            raise RuntimeError(f"worker {self.pid} did not answer {cmd!r} in {self.timeout} s")
        if line is None:
            self._proc.wait(timeout=10)
            raise RuntimeError(
                f"worker {self.pid} exited (status {self._proc.returncode}) during {cmd!r}:\n"
                f"{self._stderr_tail()}"
            )
        answer = json.loads(line)
        if not answer.get("ok"):
            _raise(answer)
        return answer

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self._proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=10)

    def close(self) -> None:
        """Ask the child to quit; kill it if it does not within 10 s."""
        if self._proc.poll() is None:
            with contextlib.suppress(Exception):
                assert self._proc.stdin is not None
                self._proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self._proc.stdin.flush()
                self._proc.stdin.close()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        self._stderr.close()

    def __enter__(self) -> SubprocessWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_worker(*, isolated: bool = True, timeout: float = 900.0) -> LocalWorker | SubprocessWorker:
    """A fresh child-process worker (default) or an in-process one."""
    return SubprocessWorker(timeout=timeout) if isolated else LocalWorker()


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
            answer = {"ok": False, "error": exc.message, "hint": exc.hint, "kind": type(exc).__name__}
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
