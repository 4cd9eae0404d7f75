"""The seeded corpus: which mutation each case gets, its files and the commands it runs.

Case ``i`` of a corpus draws everything from ``np.random.default_rng([seed, i])``, so any one
case can be rebuilt alone (``python -m fuzz --only m00042``). Classes are dealt round-robin by
weight (:data:`MODEL_CLASSES`, :data:`fuzz.images.CLASSES`), so every class appears in
proportion whatever the count.

A model case runs ``inspect`` and, when inspect accepted the model, ``optimize --precision
fp16`` into ``out/o.onnx``. An image case runs ``run`` (sometimes with ``-o``, ``--draw``,
``--json``) on a classifier or a detector, and ``eval`` on a labelled folder.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fuzz import images, models, tricks
from fuzz.images import Arg
from fuzz.models import Mutation
from fuzz.seeds import seed_models
from pipeline_util import colour_classifier, constant_detector

#: Mutation class -> (function, weight in the corpus, seeds it applies to).
ALL_SEEDS = ("conv", "function", "qdq")
MODEL_CLASSES: dict[str, tuple[Mutation, int, tuple[str, ...]]] = {
    "bitflip": (models.bitflip, 14, ALL_SEEDS),
    "truncate": (models.truncate, 8, ALL_SEEDS),
    "splice": (models.splice, 6, ALL_SEEDS),
    "dangling_input": (models.dangling_input, 5, ALL_SEEDS),
    "cycle": (models.cycle, 5, ALL_SEEDS),
    "out_of_order": (models.out_of_order, 5, ALL_SEEDS),
    "orphan_output": (models.orphan_output, 4, ALL_SEEDS),
    "no_outputs": (models.no_outputs, 2, ALL_SEEDS),
    "init_inconsistent": (models.init_inconsistent, 6, ALL_SEEDS),
    "dtype_unknown": (models.dtype_unknown, 5, ALL_SEEDS),
    "attr_wrong_type": (models.attr_wrong_type, 8, ALL_SEEDS),
    "recursive_function": (models.recursive_function, 3, ("function",)),
    "runtime_graph": (tricks.runtime_graph, 6, ("conv",)),
    "proto_field": (models.proto_field, 12, ALL_SEEDS),
    "external": (tricks.external, 8, ("conv", "function", "qdq")),
    "sparse_external": (tricks.sparse_external, 2, ("conv",)),
    "real_bitflip": (models.bitflip, 1, ("real:shufflenet-v2-12-qdq", "real:yolox_nano")),
    "real_truncate": (models.truncate, 1, ("real:shufflenet-v2-12-qdq", "real:yolox_nano")),
    "real_proto_field": (models.proto_field, 1, ("real:shufflenet-v2-12-qdq", "real:yolox_nano")),
}


@dataclass
class Case:
    """One fuzz case: a folder of inputs and the CLI commands to run on it, in order.

    With ``chain`` a command runs only when the one before exited 0. ``out`` is where
    commands write (it must hold nothing after a refusal); everything else in ``folder`` is
    input and must be unchanged afterwards.
    """

    id: str
    kind: str  # "model" or "image"
    klass: str
    detail: str
    folder: Path
    commands: list[list[Arg]] = field(default_factory=list)
    chain: bool = True
    slow: bool = False

    @property
    def out(self) -> Path:
        return self.folder / "out"


def _weighted(classes: dict[str, int]) -> list[str]:
    """Class names dealt round-robin by weight (each name ``weight`` times per round)."""
    deck: list[str] = []
    top = max(classes.values())
    for r in range(top):
        deck.extend(name for name, w in classes.items() if r < w)
    return deck


def _fresh(folder: Path) -> None:
    if folder.exists():
        cleanup(folder)
    (folder / "out").mkdir(parents=True)
    (folder / "tmp").mkdir()
    (folder / "log").mkdir()


def model_case(root: Path, seed: int, i: int, *, real: bool = True) -> Case:
    seeds = seed_models(real)
    deck = _weighted({k: w for k, (_, w, s) in MODEL_CLASSES.items() if any(x in seeds for x in s)})
    klass = deck[i % len(deck)]
    fn, _, allowed = MODEL_CLASSES[klass]
    rng = np.random.default_rng([seed, 1, i])
    names = [s for s in allowed if s in seeds]
    seed_name = names[int(rng.integers(len(names)))]
    folder = root / f"m{i:05d}"
    _fresh(folder)
    ctx = models.Ctx(folder, rng, seed_name, seeds[seed_name])
    detail = f"{seed_name}: {fn(ctx)}"
    model = str(ctx.model_path)
    target = ["xbox-series-s", "cpu"][int(rng.integers(2))]
    inspect: list[Arg] = ["inspect", model, "--target", target]
    if rng.random() < 0.3:
        inspect.append("--json")
    optimize: list[Arg] = [
        "optimize",
        model,
        "-o",
        str(folder / "out" / "o.onnx"),
        "--precision",
        "fp16",
        "--target",
        target,
        "--measure-runs",
        "0",
    ]
    if rng.random() < 0.3:
        optimize.append("--json")
    slow = seed_name.startswith("real:")
    return Case(f"m{i:05d}", "model", klass, detail, folder, [inspect, optimize], slow=slow)


def image_models(root: Path) -> dict[str, Path]:
    """The two models image cases run (written once per corpus, read-only afterwards)."""
    folder = root / "image-models"
    paths = {"classify": folder / "classifier.onnx", "detect": folder / "detector.onnx"}
    if not all(p.is_file() for p in paths.values()):
        folder.mkdir(parents=True, exist_ok=True)
        colour_classifier(paths["classify"])
        constant_detector(paths["detect"])
    return paths


def image_case(root: Path, seed: int, i: int) -> Case:
    deck = _weighted({k: w for k, (_, w) in images.CLASSES.items()})
    klass = deck[i % len(deck)]
    fn, _ = images.CLASSES[klass]
    rng = np.random.default_rng([seed, 2, i])
    folder = root / f"i{i:05d}"
    _fresh(folder)
    inputs = folder / "in"
    inputs.mkdir()
    detail, args = fn(inputs, rng)
    nets = image_models(root)
    task = "detect" if rng.random() < 0.25 else "classify"
    common: list[Arg] = ["--target", "cpu", "--threads", "1", "--workers", "1"]
    if klass == "eval_labels":
        cmd: list[Arg] = ["eval", str(nets["classify"]), *args, *common]
        return Case(f"i{i:05d}", "image", klass, detail, folder, [cmd], chain=False)
    cmd = ["run", str(nets[task]), *args, *common, "--batch", ["1", "4", "auto"][i % 3]]
    if rng.random() < 0.5:
        cmd += ["-o", str(folder / "out" / "r.jsonl")]
    if rng.random() < 0.25:
        cmd += ["--draw", str(folder / "out" / "drawn")]
    if rng.random() < 0.25:
        cmd.append("--json")
    return Case(f"i{i:05d}", "image", klass, f"{task}: {detail}", folder, [cmd], chain=False)


def generate(
    root: Path,
    seed: int,
    n_models: int,
    n_images: int,
    *,
    real: bool = True,
    only: set[str] | None = None,
) -> list[Case]:
    """Build the corpus under ``root``: ``n_models`` model cases and ``n_images`` image cases
    (or just the ids in ``only``)."""
    root.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []
    for i in range(n_models):
        if only is None or f"m{i:05d}" in only:
            cases.append(model_case(root, seed, i, real=real))
    for i in range(n_images):
        if only is None or f"i{i:05d}" in only:
            cases.append(image_case(root, seed, i))
    return cases


def cleanup(root: Path) -> None:
    """Remove a corpus (also files made unreadable and links that loop)."""
    for dirpath, dirnames, _ in os.walk(root):
        for d in dirnames:
            p = Path(dirpath) / d
            if not p.is_symlink():
                p.chmod(0o700)
    shutil.rmtree(root, ignore_errors=True)
