"""Run a fuzz case inside this process (for the sample in ``make test``): the CLI's ``main``
with stdout / stderr captured, ``SystemExit`` caught and any other exception recorded as a
traceback. Judged like :mod:`fuzz.runner` (no timeout or RSS here: pytest's timeout guards
hangs, and the sample's subprocess cases measure RSS)."""

from __future__ import annotations

import contextlib
import io as pyio
import os
import tempfile
import time
import traceback

from fuzz.cases import Case
from fuzz.images import Arg
from fuzz.runner import PASS, CaseResult, Result, check_files, judge, snapshot


def run_cli(argv: list[Arg], tmp: str | None = None) -> tuple[int, str, str]:
    """``onnxfit ARGV`` in this process: (exit code, stdout, stderr); 1 + traceback text for an
    uncaught exception."""
    from onnxfit.cli import main

    args = [a if isinstance(a, str) else os.fsdecode(a) for a in argv]
    out, err = pyio.StringIO(), pyio.StringIO()
    old_tmp, old_env = tempfile.tempdir, os.environ.get("TMPDIR")
    if tmp is not None:
        tempfile.tempdir = tmp
        os.environ["TMPDIR"] = tmp
    code = 1
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main.main(args=args, prog_name="onnxfit")
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except BaseException:
                traceback.print_exc(file=err)
    finally:
        tempfile.tempdir = old_tmp
        if tmp is not None:
            if old_env is None:
                os.environ.pop("TMPDIR", None)
            else:
                os.environ["TMPDIR"] = old_env
    return code, out.getvalue(), err.getvalue()


def run_case(case: Case) -> CaseResult:
    """Every command of ``case`` in this process, judged (``chain``: stop after a refusal)."""
    cr = CaseResult(case)
    for argv in case.commands:
        before = snapshot(case.folder)
        t0 = time.monotonic()
        code, stdout, stderr = run_cli(argv, str(case.folder / "tmp"))
        verdict, why = judge(code, None, stdout, stderr)
        if verdict in PASS:
            problem = check_files(case, argv, code, before)
            if problem:
                verdict, why = problem.split(":", 1)[0], problem
        tail = "\n".join(stderr.splitlines()[-15:])
        cr.results.append(Result(argv, verdict, code, time.monotonic() - t0, 0, why, tail))
        if verdict not in PASS or (case.chain and code != 0):
            break
    return cr
