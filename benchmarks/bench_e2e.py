"""End-to-end ``onnxfit run`` throughput: preprocessing, inference, and the two overlapped.

For each (model, image set) — ShuffleNetV2-QDQ on the ImageNet sample, YOLOX-Nano on the COCO
sample — and each thread configuration (inference threads x preprocessing workers), in one run:

* preprocessing images/s: the PIL single-thread torchvision-style baseline
  (``bench_preprocess.baseline``) and ours (the pipeline's own first stage,
  :meth:`Pipeline.loader`: an AsyncLoader whose workers preprocess each image), measured alone;
* inference images/s: the pipeline's own inference (:meth:`Pipeline.infer`) on preprocessed
  batches, measured alone;
* end-to-end images/s: ``Pipeline.results`` over the files (decode -> preprocess -> infer ->
  post-process, overlapped), and the plain baseline: PIL preprocessing + a plain
  ``onnxruntime.InferenceSession`` (default options; intra-op threads = the usable cores, which
  ORT's own default would take from the machine's core count, ignoring the affinity mask) + the
  same post-processing, one image after another;
* overlap efficiency = end-to-end / min(preprocessing, inference) (goal >= 0.9), and the serial
  bound 1 / (1/pre + 1/inf): what the same two stages give one after the other.

When both stages need the same CPU cores (inference on the CPU provider), running them together
cannot reach min(pre, inf): the cores are shared, and the serial bound is the fair comparison.
Rounds interleave every measurement so that load from other processes hits them alike; the
best round is kept. CPU ms/img is process CPU time per image (all threads).

Run:  .venv/bin/python benchmarks/bench_e2e.py [--quick] [--configs auto,2x2,1x1] [--batch 8]
(``auto`` = the pipeline's default split, :func:`onnxfit.data.model_info.split_cores`.)
Writes benchmarks/results/e2e.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_preprocess import DATA, baseline, core_check
from onnxfit.apps.pipeline import Pipeline
from onnxfit.data.detection import decode_yolox, detect
from onnxfit.data.images import list_images, resize_geometry
from onnxfit.data.model_info import split_cores
from onnxfit.data.presets import PRESETS, ImageMeta
from onnxfit.data.tasks import classify

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "e2e.md"


@dataclass
class Case:
    name: str
    model: Path
    images: list[Path]
    preset: str


@dataclass
class Best:
    """Best (shortest) wall time over rounds, with the CPU time of that round."""

    n: int
    wall: float = float("inf")
    cpu: float = 0.0
    rounds: list[float] = field(default_factory=list)

    def add(self, wall: float, cpu: float) -> None:
        self.rounds.append(wall)
        if wall < self.wall:
            self.wall, self.cpu = wall, cpu

    @property
    def rate(self) -> float:
        return self.n / self.wall

    @property
    def cpu_ms(self) -> float:
        return self.cpu / self.n * 1e3


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    c, t = time.process_time(), time.perf_counter()
    fn()
    return time.perf_counter() - t, time.process_time() - c


def naive_runner(case: Case) -> Callable[[], None]:
    """PIL baseline preprocessing + a default ORT session + the same post-processing, serial."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = usable_cores()
    sess = ort.InferenceSession(str(case.model), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    pre = PRESETS[case.preset]

    def post(out: np.ndarray, path: Path) -> None:
        if case.preset == "imagenet":
            classify(out, k=5)
            return
        with Image.open(path) as im:  # header only: the size for the letterbox meta
            w, h = im.size
        (rw, rh), (sx, sy, ox, oy), _ = resize_geometry(w, h, pre)
        meta = ImageMeta(str(path), (w, h), (rw, rh), (sx, sy), (ox, oy))
        boxes, scores = decode_yolox(out[0], input_size=pre.size)
        detect(boxes, scores, score_threshold=0.25, meta=meta)

    def run() -> None:
        for p in case.images:
            x = baseline(p, case.preset)[None]
            post(sess.run(None, {name: x})[0], p)

    return run


def measure_case(case: Case, configs: list[tuple[int, int]], batch: int, rounds: int) -> dict:
    n = len(case.images)
    pipes = {c: Pipeline(case.model, batch=batch, threads=c[0], workers=c[1]) for c in configs}
    naive = naive_runner(case)
    res: dict = {"baseline_pre": Best(n), "naive": Best(n)}
    for c in configs:
        res[c] = {"pre": Best(n), "inf": Best(n), "e2e": Best(n)}
    bufs = {}
    for c, pipe in pipes.items():  # warm-up, and one real chunk for the inference timing
        list(pipe.results(case.images[: pipe.chunk]))
        buf = np.empty((pipe.chunk, 3, *pipe.info.preset.size), np.float32)
        pipe.preprocessor.batch(case.images[: pipe.chunk], out=buf)
        bufs[c] = buf
    naive()
    for r in range(rounds):
        print(f"  round {r + 1}/{rounds}", flush=True)
        res["baseline_pre"].add(*timed(lambda: [baseline(p, case.preset) for p in case.images]))
        res["naive"].add(*timed(naive))
        for c, pipe in pipes.items():
            ch, buf = pipe.chunk, bufs[c]

            def pre(pipe: Pipeline = pipe) -> None:
                with pipe.loader(case.images) as loader:
                    for item in loader:
                        assert not isinstance(item.value, Exception), item.value

            def inf(pipe: Pipeline = pipe, ch: int = ch, buf: np.ndarray = buf) -> None:
                for i in range(0, n, ch):
                    pipe.infer(buf, min(ch, n - i))

            def e2e(pipe: Pipeline = pipe) -> None:
                for res_ in pipe.results(case.images):
                    assert res_.error is None, res_.error

            res[c]["pre"].add(*timed(pre))
            res[c]["inf"].add(*timed(inf))
            res[c]["e2e"].add(*timed(e2e))
    for pipe in pipes.values():
        res.setdefault("info", (pipe.batch_size, pipe.chunk, pipe.session.provider))
        pipe.close()
    return res


def usable_cores() -> int:
    return len(os.sched_getaffinity(0))


def report(cases: list[tuple[Case, dict]], configs, args, before: float, after: float) -> str:
    quick = " --quick" if args.quick else ""
    cfg = args.configs
    lines = [
        "# End-to-end `onnxfit run`: preprocessing, inference, overlapped",
        "",
        f"Command: `.venv/bin/python benchmarks/bench_e2e.py{quick} --configs {cfg}"
        f" --batch {args.batch}` — {platform.processor() or platform.machine()},"
        f" {usable_cores()} usable cores, onnxruntime {ort.__version__}, best of {args.rounds}"
        f" interleaved rounds. Load average at the end: "
        + ", ".join(f"{x:.1f}" for x in os.getloadavg())
        + ".",
        "",
        "Config `TxW` = T inference threads x W preprocessing workers. pre / inf = each stage"
        " measured alone (images/s); e2e = `Pipeline.results` over the files; efficiency ="
        " e2e / min(pre, inf) (goal >= 0.9); serial = 1 / (1/pre + 1/inf), the two stages one"
        " after the other (on one shared set of CPU cores this, not min, is what overlap can"
        " reach or beat). naive = PIL 1-thread preprocessing + a plain onnxruntime session"
        " (default options, intra-op threads = the usable cores) + the same post-processing,"
        " image by image.",
        "",
    ]
    for case, res in cases:
        bs, chunk, provider = res["info"]
        base, naive = res["baseline_pre"], res["naive"]
        lines += [
            f"## {case.name} — {len(case.images)} images, preset `{case.preset}`,"
            f" {bs} image(s) per run, chunks of {chunk}, {provider}",
            "",
            "| config | PIL baseline pre | ours pre | vs baseline | inf | min(pre, inf) | serial"
            " | **e2e** | **efficiency** | e2e / serial | naive e2e | e2e vs naive |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for c in configs:
            pre, inf, e2e = (res[c][k] for k in ("pre", "inf", "e2e"))
            low = min(pre.rate, inf.rate)
            serial = 1 / (1 / pre.rate + 1 / inf.rate)
            lines.append(
                f"| {args.labels[c]} | {base.rate:.0f} | {pre.rate:.0f}"
                f" | {pre.rate / base.rate:.2f}x | {inf.rate:.0f} | {low:.0f} | {serial:.0f}"
                f" | **{e2e.rate:.0f}**"
                f" | **{e2e.rate / low:.2f}** | {e2e.rate / serial:.2f} | {naive.rate:.0f}"
                f" | {e2e.rate / naive.rate:.2f}x |"
            )
        lines += [
            "",
            "CPU ms per image (process, all threads): PIL baseline pre"
            f" {base.cpu_ms:.2f}, naive e2e {naive.cpu_ms:.2f}; "
            + "; ".join(
                f"{args.labels[(t, w)]}: "
                + ", ".join(f"{k} {res[(t, w)][k].cpu_ms:.2f}" for k in ("pre", "inf", "e2e"))
                for t, w in configs
            )
            + ".",
            "",
        ]
    lines += [
        f"Core check (fixed 20x 300x300 matmul): {before:.1f} ms before, {after:.1f} ms after"
        " — a large change means other processes took the cores during the run.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100 + 32 images, 2 rounds")
    ap.add_argument(
        "--configs",
        default="auto,2x2,1x1",
        help="TxW list: inference threads x preprocessing workers; auto = the default split",
    )
    ap.add_argument("--batch", type=int, default=8, help="images per chunk (and run if dynamic)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    args.rounds = 2 if args.quick else 3
    args.labels = {}
    for token in args.configs.split(","):
        if token == "auto":
            t, w = split_cores("cpu")
            key, label = (t or 1, w or 1), f"auto ({t}x{w})"
        else:
            key = tuple(int(v) for v in token.split("x"))
            label = token
        args.labels.setdefault(key, label)
    configs = list(args.labels)
    models = DATA / "models"
    n_cls, n_det = (100, 32) if args.quick else (500, 64)
    cases = [
        Case(
            "ShuffleNetV2-QDQ + imagenet-sample",
            models / "shufflenet-v2-12-qdq.onnx",
            list_images(DATA / "imagenet-sample" / "images")[:n_cls],
            "imagenet",
        ),
        Case(
            "YOLOX-Nano + coco-sample",
            models / "yolox_nano.onnx",
            list_images(DATA / "coco-sample" / "images" / "val2017")[:n_det],
            "yolox",
        ),
    ]
    before = core_check()
    done = []
    for case in cases:
        print(case.name, flush=True)
        done.append((case, measure_case(case, configs, args.batch, args.rounds)))  # type: ignore[arg-type]
    after = core_check()
    text = report(done, configs, args, before, after)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
