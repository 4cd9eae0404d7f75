"""Run fuzz cases through the CLI and judge each command.

Two ways to start a command, both a child process of their own (own session, own stdout /
stderr files, ``TMPDIR`` = the case's ``tmp/``):

* ``spawn``: ``python -m onnxfit ARGS`` exactly as a user runs it;
* ``fork`` (default for big runs): a process that imported onnxfit, numpy, onnx and
  onnxruntime once forks per command and calls the CLI's ``main`` (no 2 s of imports per
  command); an uncaught exception prints its traceback and exits 1, like the interpreter.

:func:`run_cases` keeps ``jobs`` commands in flight, kills a command that passes its timeout
(a hang) or 2 GiB of RSS, and records each child's peak RSS (``os.wait4``; in spawn mode
``VmHWM`` polled every 20 ms, since wait4 there counts the parent's RSS before the exec).
:func:`judge` turns exit status, output and the files left into a verdict: ``succeeded`` (exit
0) and ``refused`` (exit 2 or 3 with exactly one ``error:`` line) pass; ``traceback``,
``crash`` (a signal), ``hang``, ``rss`` (over 1 GiB), ``bad_error`` (no single error line),
``leftover`` (a partial or temporary file, or anything under the output after a refusal) and
``input_changed`` fail.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from fuzz.cases import Case
from fuzz.images import Arg

RSS_LIMIT = 1 << 30  # a case fails above 1 GiB peak RSS
RSS_KILL = 2 << 30  # and is killed above 2 GiB (the host has other work)
PASS = ("succeeded", "refused")
#: Worst first: a case's verdict is its worst command's.
SEVERITY = (
    "hang",
    "crash",
    "traceback",
    "rss",
    "input_changed",
    "leftover",
    "bad_error",
    "refused",
    "succeeded",
)
_SRC = Path(__file__).resolve().parents[2] / "src"


@dataclass
class Result:
    """One command's outcome."""

    argv: list[Arg]
    verdict: str
    code: int | None
    wall_s: float
    max_rss: int  # bytes
    why: str = ""
    stderr_tail: str = ""


@dataclass
class CaseResult:
    case: Case
    results: list[Result] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        return min((r.verdict for r in self.results), key=SEVERITY.index, default="succeeded")

    @property
    def max_rss(self) -> int:
        return max((r.max_rss for r in self.results), default=0)


# ---------------------------------------------------------------------- files


def snapshot(folder: Path) -> dict[str, str]:
    """Every entry of the case's input (not ``out``, ``tmp``, ``log``): kind, size, content."""
    snap: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(os.fsencode(folder)):
        rel = os.path.relpath(dirpath, os.fsencode(folder))
        if rel == b".":
            dirnames[:] = [d for d in dirnames if d not in (b"out", b"tmp", b"log")]
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            key = os.fsdecode(os.path.join(rel, name))
            st = os.lstat(path)
            if os.path.islink(path):
                snap[key] = "link:" + os.fsdecode(os.readlink(path))
            elif os.path.isfile(path):
                try:
                    with open(path, "rb") as fh:
                        snap[key] = hashlib.sha1(fh.read()).hexdigest()
                except OSError:
                    snap[key] = f"unreadable:{st.st_size}:{st.st_mtime_ns}"
            else:
                snap[key] = f"mode:{st.st_mode:o}"
    return snap


def _listing(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


_TEMP_MARKS = (".partial", ".tmp", "tmp", "~")
#: Files others put in TMPDIR: onnxruntime's session marker (51 bytes, once per process).
_FOREIGN_TEMP = {".ses"}


def check_files(case: Case, argv: list[Arg], code: int, before: dict[str, str]) -> str:
    """What is wrong with the files after a command ('' when nothing)."""
    if snapshot(case.folder) != before:
        return "input_changed: the command changed its input folder"
    left = [p for p in _listing(case.folder / "tmp") if p not in _FOREIGN_TEMP]
    if left:
        return f"leftover: temporary files left in TMPDIR: {left[:3]}"
    out = _listing(case.out)
    if code != 0 and out:
        return f"leftover: files under the output after a refusal: {out[:4]}"
    odd = [
        p
        for p in out
        if any(m in Path(p).name for m in _TEMP_MARKS) or Path(p).name.startswith(".")
    ]
    if odd:
        return f"leftover: temporary files under the output: {odd[:3]}"
    return ""


# ---------------------------------------------------------------------- verdicts


def judge(code: int | None, sig: int | None, stdout: str, stderr: str) -> tuple[str, str]:
    """Verdict and reason for one command's exit status and output."""
    if "Traceback (most recent call last)" in stderr + stdout:
        last = [ln for ln in stderr.splitlines() if ln.strip()][-1:] or [""]
        return "traceback", last[0][:300]
    if sig is not None:
        return "crash", f"killed by signal {sig}"
    if code == 0:
        return "succeeded", ""
    errors = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    if code in (2, 3) and len(errors) == 1:
        return "refused", errors[0][:300]
    return "bad_error", f"exit {code} with {len(errors)} error: lines"


# ---------------------------------------------------------------------- starting commands

PRELOAD = (
    "numpy",
    "onnx",
    "onnx_ir",
    "onnxruntime",
    "PIL.Image",
    "onnxfit.cli",
    "onnxfit.cli._common",
    "onnxfit.analysis.inspect",
    "onnxfit.apps.pipeline",
    "onnxfit.apps.evaluation",
    "onnxfit.optimizer.run",
    "onnxfit.report.inspect",
    "onnxfit.report.run",
    "onnxfit.report.optimize",
)


def preload() -> None:
    """Import what every command needs once, before forking."""
    import importlib

    from onnxfit.cli import _COMMANDS

    for name in (*PRELOAD, *(spec.split(":")[0] for spec in _COMMANDS.values())):
        with contextlib.suppress(Exception):  # a module that fails to import fails its commands
            importlib.import_module(name)


def _child_main(argv: list[str], tmp: str) -> None:
    """In the forked child: be ``python -m onnxfit ARGV`` and never return."""
    import atexit
    import tempfile
    import threading
    import traceback

    code = 1
    try:
        os.environ["TMPDIR"] = tmp
        tempfile.tempdir = tmp
        sys.argv = ["onnxfit", *argv]
        from onnxfit.cli import main

        main.main(args=argv, prog_name="onnxfit")
        code = 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    try:
        threading._shutdown()  # type: ignore[attr-defined]  # join non-daemon threads
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def start(argv: list[Arg], case: Case, n: int, mode: str) -> int:
    """Start one command of ``case``; its output goes to ``case.folder/log/cmdN.{out,err}``."""
    tmp = str(case.folder / "tmp")
    out = os.open(case.folder / "log" / f"cmd{n}.out", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    err = os.open(case.folder / "log" / f"cmd{n}.err", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        if mode == "spawn":
            env = {**os.environ, "TMPDIR": tmp, "PYTHONPATH": str(_SRC)}
            proc = subprocess.Popen(
                [sys.executable, "-m", "onnxfit", *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=env,
                start_new_session=True,
            )
            proc.returncode = 0  # reaped by os.wait4 below, not by Popen
            return proc.pid
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os.setsid()
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(out, 1)
            os.dup2(err, 2)
            _child_main([a if isinstance(a, str) else os.fsdecode(a) for a in argv], tmp)
        return pid
    finally:
        os.close(out)
        os.close(err)


def _rss(pid: int) -> tuple[int, int]:
    """(RSS now, peak RSS since the last exec) of a running process, in bytes."""
    now = peak = 0
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    kib = int(line.split()[1]) * 1024
                    now, peak = (kib, peak) if line.startswith("VmRSS") else (now, kib)
    except (OSError, ValueError, IndexError):
        pass
    return now, peak


@dataclass
class _Running:
    case_result: CaseResult
    n: int
    pid: int
    t0: float
    deadline: float
    before: dict[str, str]
    killed: str = ""
    peak: int = 0  # VmHWM polled while it runs (spawn: wait4's figure counts the parent)


#: Seconds a command may run before it counts as a hang (optimize 90, others 60; x3 for the
#: real-model seeds), times this factor (``python -m fuzz --timeout-scale``).
TIMEOUT_SCALE = 1.0


def _timeout(case: Case, argv: list[Arg]) -> float:
    base = 90.0 if argv[0] == "optimize" else 60.0
    return base * (3 if case.slow else 1) * TIMEOUT_SCALE


def run_cases(
    cases: Iterable[Case],
    *,
    jobs: int = 2,
    mode: str = "fork",
    on_done: Callable[[CaseResult], None] | None = None,
) -> list[CaseResult]:
    """Run every case's commands with ``jobs`` commands in flight; return the results."""
    if mode == "fork":
        preload()
    pending = list(cases)[::-1]
    running: dict[int, _Running] = {}
    done: list[CaseResult] = []

    def launch(cr: CaseResult, n: int) -> None:
        argv = cr.case.commands[n]
        before = snapshot(cr.case.folder)
        pid = start(argv, cr.case, n, mode)
        now = time.monotonic()
        running[pid] = _Running(cr, n, pid, now, now + _timeout(cr.case, argv), before)

    while pending or running:
        while pending and len(running) < jobs:
            launch(CaseResult(pending.pop()), 0)
        pid, status, usage = os.wait4(-1, os.WNOHANG)
        if pid == 0:
            now = time.monotonic()
            for r in list(running.values()):
                rss, peak = _rss(r.pid)
                r.peak = max(r.peak, peak)
                why = "hang" if now > r.deadline else "rss" if rss > RSS_KILL else ""
                if why and not r.killed:
                    r.killed = why
                    os.killpg(r.pid, signal.SIGKILL)
            time.sleep(0.02)
            continue
        r = running.pop(pid)
        case = r.case_result.case
        argv = case.commands[r.n]
        # a spawned child's ru_maxrss includes the parent's RSS before exec (Linux keeps the
        # old memory map's peak), so spawn mode takes the polled peak instead
        peak = r.peak if mode == "spawn" else max(r.peak, usage.ru_maxrss * 1024)
        res = _finish(r, argv, status, peak)
        r.case_result.results.append(res)
        nxt = r.n + 1
        if nxt < len(case.commands) and (res.code == 0 or not case.chain) and res.verdict in PASS:
            launch(r.case_result, nxt)
        else:
            done.append(r.case_result)
            if on_done is not None:
                on_done(r.case_result)
    return done


def _read(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8", "replace")
    except OSError:
        return ""


def _finish(r: _Running, argv: list[Arg], status: int, max_rss: int) -> Result:
    case = r.case_result.case
    wall = time.monotonic() - r.t0
    if r.killed:
        with contextlib.suppress(ProcessLookupError):  # anything the command left running
            os.killpg(r.pid, signal.SIGKILL)
    stdout = _read(case.folder / "log" / f"cmd{r.n}.out")
    stderr = _read(case.folder / "log" / f"cmd{r.n}.err")
    code = os.waitstatus_to_exitcode(status)
    sig = -code if code < 0 else None
    verdict, why = judge(code if code >= 0 else None, sig, stdout, stderr)
    if r.killed:
        verdict = r.killed
        why = f"killed after {wall:.0f} s" if r.killed == "hang" else "killed over 2 GiB RSS"
    elif verdict in PASS and max_rss > RSS_LIMIT:
        verdict, why = "rss", f"peak RSS {max_rss / 2**20:.0f} MiB"
    elif verdict in PASS:
        problem = check_files(case, argv, code, r.before)
        if problem:
            verdict, why = problem.split(":", 1)[0], problem
    tail = "\n".join(stderr.splitlines()[-15:])
    return Result(argv, verdict, code, wall, max_rss, why.strip(), tail)
