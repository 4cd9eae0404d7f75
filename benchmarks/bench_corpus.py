"""What onnxfit does with real models it has never seen: the corpus of ``benchmarks/corpus.json``.

Per model, each step in its own subprocess with a timeout:

1. **ORT**: does plain onnxruntime (CPU) run it on synthetic inputs (seeded, by dtype), with
   the manifest's ``input_shapes`` pinning dynamic dims;
2. **inspect**: ``onnxfit inspect --target cpu --json`` (with the same ``--input-shape``s):
   resolved or not, and which engine resolved the shapes (onnx / ort-symbolic / execution);
3. **fp16**: ``onnxfit optimize --precision fp16 --target xbox-series-s``: verified, refused
   with one line (exit 2), or a traceback / timeout;
4. **int8**: ``onnxfit optimize --precision int8 --target cpu``: written, refused cleanly, or a
   traceback / timeout (the promise: never a traceback).

Models live in ``$ONNXFIT_CORPUS`` (default ``/work/corpus``; ``benchmarks/corpus_build.py``
rebuilds it). Writes ``benchmarks/results/corpus.md`` and ``corpus.json`` beside it.

Run:  PYTHONPATH=src .venv/bin/python benchmarks/bench_corpus.py [--only NAME ...] [--timeout S]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from corpus_build import CORPUS, MANIFEST, model_path  # noqa: E402

OUT_MD = ROOT / "benchmarks" / "results" / "corpus.md"
OUT_JSON = ROOT / "benchmarks" / "results" / "corpus.json"
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONWARNINGS": "ignore"}


def _ort_child(path: str, shapes_json: str) -> None:
    """Child process: run the model once in plain onnxruntime; print the output shapes."""
    import onnx
    import onnxruntime as ort

    from onnxfit.data.feeds import make_feeds, proto_specs

    proto = onnx.load(path, load_external_data=False)
    feeds = make_feeds(proto_specs(proto), batch=None, input_shapes=json.loads(shapes_json))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    outs = sess.run(None, feeds)
    print(json.dumps([list(getattr(o, "shape", ())) for o in outs]))


def _run(cmd: list[str], timeout: int, cwd: Path) -> dict[str, Any]:
    t = time.perf_counter()
    try:
        p = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=ENV, cwd=cwd, check=False
        )
    except subprocess.TimeoutExpired:
        return {"rc": None, "status": "timeout", "s": round(time.perf_counter() - t, 1)}
    err = p.stderr.strip()
    tb = "Traceback (most recent call last)" in err
    last = [ln for ln in err.splitlines() if ln.strip()]
    line = next(
        (ln for ln in last if ln.startswith(("error:", "Error:"))), last[-1] if last else ""
    )
    return {
        "rc": p.returncode,
        "traceback": tb,
        "stdout": p.stdout,
        "line": line.strip()[:240],
        "stderr_lines": len(last),
        "s": round(time.perf_counter() - t, 1),
    }


def _shape_args(entry: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for name, dims in (entry.get("input_shapes") or {}).items():
        out += ["--input-shape", f"{name}=" + "x".join(str(d) for d in dims)]
    return out


def _status(r: dict[str, Any], ok_rcs: tuple[int, ...] = (0,)) -> str:
    if r.get("status") == "timeout":
        return "timeout"
    if r["traceback"]:
        return "TRACEBACK"
    if r["rc"] in ok_rcs:
        return "ok"
    if r["rc"] == 2:
        return "refused"
    return f"exit {r['rc']}"


def bench_one(
    entry: dict[str, Any], timeout: int, tmp: Path, steps: tuple[str, ...] = ("fp16", "int8")
) -> dict[str, Any]:
    path = model_path(entry)
    shapes = _shape_args(entry)
    py = sys.executable
    row: dict[str, Any] = {"name": entry["name"], "opset": entry.get("opset")}
    # cwd is a scratch folder: nothing may depend on running from the model's folder
    r = _run(
        [py, __file__, "--ort-child", str(path), json.dumps(entry.get("input_shapes") or {})],
        timeout,
        tmp,
    )
    row["ort"] = "ok" if r.get("rc") == 0 else ("timeout" if "status" in r else "fails")
    row["ort_line"] = "" if r.get("rc") == 0 else r.get("line", "")
    of = [py, "-m", "onnxfit"]
    r = _run([*of, "inspect", str(path), "--target", "cpu", "--json", *shapes], timeout, tmp)
    row["inspect"] = _status(r, (0, 3))
    row["inspect_line"] = "" if row["inspect"] == "ok" else r.get("line", "")
    if row["inspect"] == "ok":
        try:
            info = json.loads(r["stdout"])
            row["engine"] = info.get("shape_engine", "?")
        except (json.JSONDecodeError, KeyError):
            row["engine"] = "?"
    for prec, target in (("fp16", "xbox-series-s"), ("int8", "cpu")):
        if prec not in steps:
            row[prec] = "-"
            continue
        out = tmp / f"{entry['name']}-{prec}.onnx"
        cmd = [*of, "optimize", str(path), "-o", str(out), "--precision", prec]
        cmd += ["--target", target, "--allow-over-budget", "--measure-runs", "0", "--force"]
        r = _run([*cmd, *shapes], timeout, tmp)
        row[prec] = _status(r)
        row[f"{prec}_line"] = "" if row[prec] == "ok" else r.get("line", "")
        row[f"{prec}_s"] = r.get("s")
        if row[prec] == "ok":
            rep = out.with_suffix(".report.json")
            try:
                verdict = json.loads(rep.read_text()).get("verification", {})
                row[f"{prec}_verified"] = bool(verdict.get("passed", True))
            except (OSError, json.JSONDecodeError, AttributeError):
                row[f"{prec}_verified"] = None
    return row


def _md(
    rows: list[dict[str, Any]], total_s: float, planned: int, label: str = "min on this host"
) -> str:
    n = len(rows)
    ort_ok = [r for r in rows if r["ort"] == "ok"]

    def count(key: str, val: str, among: list[dict[str, Any]]) -> int:
        return sum(1 for r in among if r.get(key) == val)

    tb = sum(1 for r in rows for k in ("inspect", "fp16", "int8") if r.get(k) == "TRACEBACK")
    lines = [
        "# Real-model corpus: inspect / optimize --precision fp16 / int8",
        "",
        f"`PYTHONPATH=src .venv/bin/python benchmarks/bench_corpus.py` over {n} models of "
        "`benchmarks/corpus.json` (files in `$ONNXFIT_CORPUS`, rebuilt by "
        "`benchmarks/corpus_build.py`); each step a subprocess with a timeout, cwd a scratch "
        f"folder; {total_s / 60:.1f} {label}"
        + (f" (PARTIAL: {n} of {planned} models done)." if n < planned else "."),
        "",
        "| | count |",
        "|---|---|",
        f"| models tried | {n} |",
        f"| plain ORT runs them (pinned dims where dynamic) | {len(ort_ok)} |",
        f"| inspect resolves shapes (of those ORT runs) | {count('inspect', 'ok', ort_ok)} |",
        f"| fp16 / int8 steps run (of those ORT runs) | "
        f"{sum(r.get('fp16') != '-' for r in ort_ok)} / "
        f"{sum(r.get('int8') != '-' for r in ort_ok)} |",
        f"| fp16 written and verified (of those ORT runs) | {count('fp16', 'ok', ort_ok)} |",
        f"| fp16 refused with one line (of those ORT runs) | {count('fp16', 'refused', ort_ok)} |",
        f"| int8 written (of those ORT runs) | {count('int8', 'ok', ort_ok)} |",
        f"| int8 refused with one line (of those ORT runs) | {count('int8', 'refused', ort_ok)} |",
        f"| tracebacks (any step, any model) | {tb} |",
        f"| timeouts (any step) | "
        f"{sum(1 for r in rows for k in ('inspect', 'fp16', 'int8') if r.get(k) == 'timeout')} |",
        "",
        "| model | opset | ORT | inspect (engine) | fp16 | int8 |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        ins = r["inspect"] + (f" ({r['engine']})" if r.get("engine") else "")
        lines.append(
            f"| {r['name']} | {r.get('opset')} | {r['ort']} | {ins} | {r['fp16']} "
            f"({r.get('fp16_s')} s) | {r['int8']} ({r.get('int8_s')} s) |"
        )
    notes = [
        (r["name"], k, r.get(f"{k}_line", ""))
        for r in rows
        for k in ("ort", "inspect", "fp16", "int8")
        if r.get(k) not in ("ok", None) and r.get(f"{k}_line")
    ]
    if notes:
        lines += ["", "## What each non-ok step said (last line of stderr)", ""]
        lines += [f"- {name} / {k}: `{line}`" for name, k, line in notes]
    return "\n".join(lines) + "\n"


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--ort-child":
        _ort_child(sys.argv[2], sys.argv[3])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="*", help="model names (default: every one)")
    ap.add_argument("--timeout", type=int, default=300, help="seconds per step")
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--jobs", type=int, default=1, help="models benchmarked at once")
    ap.add_argument("--out", type=Path, help="write OUT.md / OUT.json (default: results/corpus)")
    ap.add_argument("--reverse", action="store_true", help="last models first")
    ap.add_argument(
        "--merge", nargs="+", type=Path, help="only rebuild the report from these row JSON files"
    )
    ap.add_argument(
        "--steps", default="fp16,int8", help="optimize steps to run (ORT and inspect always run)"
    )
    args = ap.parse_args()
    entries = json.loads(MANIFEST.read_text())["models"]
    out_md, out_json = (
        (args.out.with_suffix(".md"), args.out.with_suffix(".json"))
        if args.out
        else (OUT_MD, OUT_JSON)
    )
    if args.merge:  # several partial runs (e.g. two halves run side by side) -> one report
        done = {r["name"]: r for p in args.merge for r in json.loads(p.read_text())}
        merged = [done[e["name"]] for e in entries if e["name"] in done]
        secs = sum(float(r.get("fp16_s") or 0) + float(r.get("int8_s") or 0) for r in merged)
        label = f"min of optimize steps, from {len(args.merge)} runs side by side"
        out_md.write_text(_md(merged, secs, len(entries), label))
        out_json.write_text(json.dumps(merged, indent=1) + "\n")
        return 0
    if args.reverse:
        entries = entries[::-1]
    if args.only:
        entries = [e for e in entries if e["name"] in args.only]
    missing = [e["name"] for e in entries if not model_path(e).exists()]
    if missing:
        print(f"not in {CORPUS}: {', '.join(missing)} (run corpus_build.py)", file=sys.stderr)
        entries = [e for e in entries if e["name"] not in missing]
    rows: list[dict[str, Any]] = []
    order = {e["name"]: i for i, e in enumerate(entries)}
    t0 = time.perf_counter()
    full = not args.only and args.steps == "fp16,int8"
    write = not args.no_write and (args.out is not None or full)
    steps = tuple(args.steps.split(","))
    with (
        tempfile.TemporaryDirectory(prefix="onnxfit-corpus-") as tmp,
        cf.ThreadPoolExecutor(max(1, args.jobs)) as pool,
    ):
        futures = [pool.submit(bench_one, e, args.timeout, Path(tmp), steps) for e in entries]
        for fut in cf.as_completed(futures):
            row = fut.result()
            rows.append(row)
            rows.sort(key=lambda r: order[r["name"]])
            print(
                f"{row['name']:28s} ort={row['ort']:7s} inspect={row['inspect']:9s} "
                f"engine={row.get('engine', '-'):13s} fp16={row['fp16']:9s} "
                f"int8={row['int8']}",
                flush=True,
            )
            if write:  # after every model: a stopped run leaves what it measured
                md = _md(rows, time.perf_counter() - t0, len(entries))
                out_md.write_text(md)
                out_json.write_text(json.dumps(rows, indent=1) + "\n")
    print(_md(rows, time.perf_counter() - t0, len(entries)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
