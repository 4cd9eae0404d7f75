"""``python -m fuzz`` (with ``tests`` on ``PYTHONPATH``): generate the corpus, run, summarize.

\b
Examples:
  PYTHONPATH=tests:src python -m fuzz                       # 2,000 models + 300 images
  PYTHONPATH=tests:src python -m fuzz --models 50 --images 20 --jobs 2
  PYTHONPATH=tests:src python -m fuzz --only m00042 --keep  # one case again, folder kept

Exit status 0 when every case passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from fuzz import cases as corpus
from fuzz import runner
from fuzz.report import failures, log_line, render
from fuzz.runner import PASS, CaseResult, run_cases

REPO = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m fuzz",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--models", type=int, default=2000, help="mutated models (default 2000)")
    ap.add_argument("--images", type=int, default=300, help="mutated image cases (default 300)")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--mode", choices=["fork", "spawn"], default="fork")
    ap.add_argument("--timeout-scale", type=float, default=1.0, help="multiply the timeouts")
    ap.add_argument("--no-real", action="store_true", help="no seeds from ../shared/data")
    ap.add_argument("--only", action="append", help="run only this case id (repeatable)")
    ap.add_argument("--workdir", type=Path, help="corpus folder (default: a temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep the corpus folder")
    ap.add_argument("--report", type=Path, help="write the Markdown summary here")
    ap.add_argument("--log", type=Path, help="write one JSON line per case here")
    args = ap.parse_args(argv)

    root = args.workdir or Path(tempfile.mkdtemp(prefix="onnxfit-fuzz-"))
    t0 = time.monotonic()
    only = set(args.only) if args.only else None
    built = corpus.generate(
        root, args.seed, args.models, args.images, real=not args.no_real, only=only
    )
    print(
        f"fuzz: {len(built)} cases in {root} (built in {time.monotonic() - t0:.0f} s)",
        file=sys.stderr,
    )
    log = args.log.open("w", encoding="utf-8") if args.log else None
    count = {"n": 0, "bad": 0}

    def on_done(cr: CaseResult) -> None:
        count["n"] += 1
        if cr.verdict not in PASS:
            count["bad"] += 1
            print(
                f"FAIL {cr.case.id} {cr.case.klass} {cr.verdict}: "
                f"{min(cr.results, key=lambda r: r.verdict in PASS).why}",
                file=sys.stderr,
            )
        if log is not None:
            log.write(log_line(cr) + "\n")
            log.flush()
        if count["n"] % 100 == 0:
            print(
                f"fuzz: {count['n']}/{len(built)} done, {count['bad']} failing, "
                f"{time.monotonic() - t0:.0f} s",
                file=sys.stderr,
            )

    runner.TIMEOUT_SCALE = args.timeout_scale
    results = run_cases(built, jobs=args.jobs, mode=args.mode, on_done=on_done)
    wall = time.monotonic() - t0
    results.sort(key=lambda cr: cr.case.id)
    bad = failures(results)
    command = "python -m fuzz " + " ".join(argv if argv is not None else sys.argv[1:])
    host = f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}"
    text = render(
        results,
        command=command.strip(),
        seed=args.seed,
        jobs=args.jobs,
        mode=args.mode,
        wall_s=wall,
        host=host,
    )
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(text, encoding="utf-8")
    print(text)
    if args.keep or bad:
        print(f"fuzz: corpus kept in {root}", file=sys.stderr)
    else:
        corpus.cleanup(root)
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
