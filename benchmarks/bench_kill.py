"""kill -9 at random moments of `onnxfit optimize` and `onnxfit run`: nothing half-written under a
final name, and no leftovers once the next run has started.

Each trial starts the command in a fresh process, sends SIGKILL after a random delay drawn over
the command's measured duration, then checks:

* every final output that exists is whole (the model loads and passes onnx's checker, the report
  and deploy JSON parse, the JSON lines count one per image);
* what the dead process left (temporary files beside the outputs, ``onnxfit-KIND-PID-*`` folders
  in the temp folder) is listed; the next command (the same one, ``--force``) must leave none of
  it behind.

    python benchmarks/bench_kill.py [--trials 20] [--out benchmarks/results/kill.md]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
ONNXFIT = [sys.executable, "-m", "onnxfit"]


def leftovers(folder: Path, finals: set[str], pid: int) -> list[str]:
    """Files beside the outputs that are not final outputs, and the dead pid's temp folders."""
    found = [p.name for p in folder.iterdir() if p.name not in finals]
    tmp = Path(tempfile.gettempdir())
    found += [str(p) for p in tmp.glob(f"onnxfit-*-{pid}-*")]
    return sorted(found)


def whole(kind: str, folder: Path, n_images: int) -> list[str]:
    """Problems with the final outputs that exist (empty when every one is whole)."""
    bad: list[str] = []
    if kind == "run":
        out = folder / "results.jsonl"
        if out.exists():
            lines = out.read_text().splitlines()
            if len(lines) != n_images or not all(json.loads(x) for x in lines):
                bad.append(f"results.jsonl has {len(lines)} of {n_images} lines")
        return bad
    import onnx

    model = folder / "m.onnx"
    if model.exists():
        try:
            onnx.checker.check_model(onnx.load(str(model)))
        except Exception as exc:  # any failure is a finding
            bad.append(f"m.onnx: {exc}")
    for name in ("m.report.json", "m.deploy.json"):
        if (folder / name).exists():
            try:
                json.loads((folder / name).read_text())
            except ValueError as exc:
                bad.append(f"{name}: {exc}")
    return bad


def command(kind: str, model: Path, images: Path, folder: Path) -> list[str]:
    if kind == "run":
        return [*ONNXFIT, "run", str(model), str(images), "-o", str(folder / "results.jsonl"),
                "--force"]  # fmt: skip
    return [*ONNXFIT, "optimize", str(model), "-o", str(folder / "m.onnx"), "--target", "cpu",
            "--precision", "int8", "--calibrate", str(images), "--calib-count", "8",
            "--measure-runs", "2", "--force"]  # fmt: skip


FINALS = {"run": {"results.jsonl"}, "optimize": {"m.onnx", "m.report.json", "m.deploy.json",
                                                 "m.golden.npz"}}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20, help="kills per command")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/kill.md")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="bench-kill-"))
    images = work / "images"
    images.mkdir()
    for p in sorted((DATA / "imagenet-sample" / "images").iterdir())[:48]:
        os.symlink(p, images / p.name)
    n_images = len(list(images.iterdir()))
    model = work / "shufflenet.onnx"
    os.symlink(DATA / "models" / "shufflenet-v2-12-qdq.onnx", model)
    rows = []
    t_start = time.time()
    for kind in ("run", "optimize"):
        folder = work / kind
        folder.mkdir()
        t0 = time.perf_counter()
        subprocess.run(command(kind, model, images, folder), check=True, capture_output=True)
        duration = time.perf_counter() - t0
        counts = {"trials": 0, "killed": 0, "finished": 0, "broken finals": 0,
                  "left after kill": 0, "left after next run": 0}  # fmt: skip
        findings: list[str] = []
        for _ in range(args.trials):
            for p in folder.iterdir():
                p.unlink()
            quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
            proc = subprocess.Popen(command(kind, model, images, folder), **quiet)
            time.sleep(rng.uniform(0.05, duration))
            counts["trials"] += 1
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                counts["killed"] += 1
            else:
                counts["finished"] += 1
            proc.wait()
            bad = whole(kind, folder, n_images)
            if bad:
                counts["broken finals"] += 1
                findings += bad
            left = leftovers(folder, FINALS[kind], proc.pid)
            counts["left after kill"] += bool(left)
            nxt = subprocess.run(command(kind, model, images, folder), capture_output=True)
            still = [x for x in left if Path(x).exists() or (folder / x).exists()]
            if nxt.returncode != 0 or still:
                counts["left after next run"] += 1
                findings.append(f"{kind}: next run rc={nxt.returncode}, left {still}")
        rows.append((kind, f"{duration:.1f} s", counts))
    lines = [
        "# kill -9 at random moments",
        "",
        f"Command: `python benchmarks/bench_kill.py --trials {args.trials} --seed {args.seed}`, "
        f"{time.strftime('%Y-%m-%d %H:%M')}, {(time.time() - t_start) / 60:.1f} min.",
        "",
        "Models: the shared ShuffleNetV2 (QDQ INT8); `run` over 48 ImageNet images "
        "(`-o results.jsonl`); `optimize --precision int8 --calibrate` (8 images) to `m.onnx` "
        "+ report, deploy and golden files. The kill lands uniformly over one full run.",
        "",
        "| command | full run | trials | killed | finished | broken final files | "
        "leftovers after the kill | leftovers after the next run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for kind, dur, c in rows:
        lines.append(f"| {kind} | {dur} | {c['trials']} | {c['killed']} | {c['finished']} | "
                     f"{c['broken finals']} | {c['left after kill']} | "
                     f"{c['left after next run']} |")  # fmt: skip
    lines += ["", "Findings: " + ("; ".join(findings) if findings else "none."), ""]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
