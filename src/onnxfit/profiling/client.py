"""Talking to a :class:`~onnxfit.profiling.worker.Worker`: in a fresh child process
(:class:`SubprocessWorker`, the default) or in this process (:class:`LocalWorker`).

Both have ``call(cmd, **args) -> dict`` and raise again, in the caller, the
:mod:`onnxfit.errors` class the worker raised (RuntimeError for a bug, a crash or no answer
within ``timeout``). See :mod:`onnxfit.profiling.worker` for the commands and the protocol.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from onnxfit import errors
from onnxfit.errors import OnnxfitError

_SRC = str(Path(__file__).resolve().parents[2])


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
        from onnxfit.profiling.worker import Worker

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
        self._stderr = tempfile.TemporaryFile(mode="w+b")  # noqa: SIM115 - closed in close()
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
            raise RuntimeError(
                f"worker {self.pid} did not answer {cmd!r} in {self.timeout} s"
            ) from None
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
