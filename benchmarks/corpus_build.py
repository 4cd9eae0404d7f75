"""Rebuild the real-model corpus (``benchmarks/corpus.json``) outside the repository.

The corpus lives in ``$ONNXFIT_CORPUS`` (default ``/work/corpus``); no model is committed.
Each manifest entry says where its bytes come from:

- ``source.repo`` / ``path`` / ``commit``: a public GitHub repository. The file is read from a
  local snapshot of that repository (a bare git directory, by default
  ``/work/.mirror/OWNER+NAME/repo``, as the project's snapshot tool brings them; override the
  root with ``ONNXFIT_MIRRORS``) with ``git show COMMIT:PATH`` and checked against the recorded
  sha256 (a mismatch or a Git LFS pointer is an error).
- ``source.shared``: a file of the project's shared data folder (``$ONNXFIT_SHARED_DATA``).
- ``source.derived_from`` + ``recipe``: made here from another corpus model, deterministically
  (seeded), with the recipe named in the manifest:
  ``external-data`` (every initializer moved to ``NAME.onnx.data`` in a folder of its own),
  ``qoperator`` / ``qdq`` (onnxruntime ``quantize_static``, uint8 activations, int8 weights,
  MinMax over 8 seeded random inputs), ``functions`` (elementwise nodes wrapped into
  model-local functions the way the PyTorch dynamo exporter's torch_lib does, including an
  Identity-only ``aten_clone``). Their sha256 depends on the onnxruntime version, so a mismatch
  there is reported, not fatal.

Run:  PYTHONPATH=src .venv/bin/python benchmarks/corpus_build.py [--only NAME ...] [--update]
``--update`` rewrites the manifest's measured fields (sha256, size, opset, producer) from the
files built.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "benchmarks" / "corpus.json"
CORPUS = Path(os.environ.get("ONNXFIT_CORPUS", "/work/corpus"))
MIRRORS = Path(os.environ.get("ONNXFIT_MIRRORS", "/work/.mirror"))
SHARED = Path(os.environ.get("ONNXFIT_SHARED_DATA", ROOT.parent / "shared" / "data"))


def model_path(entry: dict[str, Any], corpus: Path = CORPUS) -> Path:
    """Where an entry's ``.onnx`` lives in the corpus folder (external data: a sub-folder)."""
    if entry.get("recipe") == "external-data":
        return corpus / entry["name"] / f"{entry['name']}.onnx"
    return corpus / f"{entry['name']}.onnx"


def _git_dir(repo: str) -> Path:
    base = MIRRORS / repo.replace("/", "+") / "repo"
    return base / ".git" if (base / ".git").is_dir() else base


def _from_git(src: dict[str, str]) -> bytes:
    git = _git_dir(src["repo"])
    if not git.exists():
        raise FileNotFoundError(f"no snapshot of {src['repo']} at {git} (fetch it first)")
    data = subprocess.check_output(
        ["git", "--git-dir", str(git), "show", f"{src['commit']}:{src['path']}"]
    )
    if data.startswith(b"version https://git-lfs"):
        raise ValueError(f"{src['repo']}:{src['path']} is a Git LFS pointer")
    return data


def _seeded_feeds(proto: onnx.ModelProto, n: int) -> list[dict[str, np.ndarray]]:
    inits = {i.name for i in proto.graph.initializer}
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        feed = {}
        for vi in proto.graph.input:
            if vi.name in inits:
                continue
            dims = [d.dim_value or 1 for d in vi.type.tensor_type.shape.dim]
            feed[vi.name] = rng.random(dims, dtype=np.float32)
        out.append(feed)
    return out


def _quantize(base: Path, dst: Path, fmt: str) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    feeds = _seeded_feeds(onnx.load(str(base)), 8)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    quantize_static(
        str(base),
        str(dst),
        Reader(),
        quant_format=QuantFormat.QOperator if fmt == "qoperator" else QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=False,
    )


_WRAP = {  # op type -> torch_lib-style function name (the dynamo exporter's naming)
    "Relu": "aten_relu",
    "Sigmoid": "aten_sigmoid",
    "Add": "aten_add",
    "Mul": "aten_mul",
    "HardSwish": "aten_hardswish",
    "HardSigmoid": "aten_hardsigmoid",
    "LeakyRelu": "aten_leaky_relu",
    "Clip": "aten_clamp",
}
_DOMAIN = "pkg.onnxscript.torch_lib"


def _functions(base: Path, dst: Path) -> None:
    """Wrap elementwise nodes into model-local functions (one per op type) and put an
    Identity-only ``aten_clone`` call after the first wrapped node, as dynamo exports do."""
    from onnx import helper

    m = onnx.load(str(base))
    opset = next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))
    funcs: dict[str, onnx.FunctionProto] = {}
    nodes: list[onnx.NodeProto] = []
    cloned = False
    for node in m.graph.node:
        fname = _WRAP.get(node.op_type)
        if fname is None or node.domain not in ("", "ai.onnx"):
            nodes.append(node)
            continue
        key = fname + "".join(f"_{a.name}" for a in node.attribute)
        if key not in funcs:
            ins = [f"i{k}" for k in range(len(node.input))]
            body = helper.make_node(node.op_type, ins, ["o"])
            body.attribute.extend(node.attribute)
            funcs[key] = helper.make_function(
                _DOMAIN, key, ins, ["o"], [body], [helper.make_opsetid("", opset)]
            )
        out = node.output[0]
        if not cloned:
            out = out + "__pre_clone"
        nodes.append(helper.make_node(key, list(node.input), [out], domain=_DOMAIN))
        if not cloned:
            if "aten_clone" not in funcs:
                funcs["aten_clone"] = helper.make_function(
                    _DOMAIN,
                    "aten_clone",
                    ["self"],
                    ["o"],
                    [helper.make_node("Identity", ["self"], ["o"])],
                    [helper.make_opsetid("", opset)],
                )
            nodes.append(helper.make_node("aten_clone", [out], [node.output[0]], domain=_DOMAIN))
            cloned = True
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    m.functions.extend(funcs.values())
    m.opset_import.append(helper.make_opsetid(_DOMAIN, 1))
    onnx.checker.check_model(m)
    onnx.save(m, str(dst))


def _external(base: Path, dst: Path) -> None:
    m = onnx.load(str(base))
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(
        m,
        str(dst),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=dst.name + ".data",
        size_threshold=1024,
    )


def build(entry: dict[str, Any], entries: dict[str, dict[str, Any]], corpus: Path) -> Path:
    """Write one entry's model into ``corpus``; returns its path."""
    dst = model_path(entry, corpus)
    dst.parent.mkdir(parents=True, exist_ok=True)
    src = entry["source"]
    if "repo" in src:
        dst.write_bytes(_from_git(src))
    elif "shared" in src:
        dst.write_bytes((SHARED / src["shared"]).read_bytes())
    else:
        base = model_path(entries[src["derived_from"]], corpus)
        if not base.exists():
            build(entries[src["derived_from"]], entries, corpus)
        recipe = entry["recipe"]
        if recipe in ("qoperator", "qdq"):
            with tempfile.TemporaryDirectory() as tmp:
                # quantize_static writes helper files next to its output: keep them out
                tmp_out = Path(tmp) / dst.name
                _quantize(base, tmp_out, recipe)
                dst.write_bytes(tmp_out.read_bytes())
        elif recipe == "functions":
            _functions(base, dst)
        elif recipe == "external-data":
            _external(base, dst)
        else:
            raise ValueError(f"unknown recipe {recipe!r}")
    return dst


def measure(path: Path) -> dict[str, Any]:
    """sha256 (of the .onnx file), size in bytes (with external data), opset and producer."""
    m = onnx.load(str(path), load_external_data=False)
    size = path.stat().st_size
    data = path.parent / (path.name + ".data")
    if data.exists():
        size += data.stat().st_size
    return {
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "size": size,
        "opset": next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), None),
        "producer": f"{m.producer_name} {m.producer_version}".strip(),
        "functions": len(m.functions),
        "external_data": data.exists(),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="*", help="entry names to build (default: all)")
    ap.add_argument("--update", action="store_true", help="rewrite measured manifest fields")
    args = ap.parse_args()
    manifest = json.loads(MANIFEST.read_text())
    entries = {e["name"]: e for e in manifest["models"]}
    CORPUS.mkdir(parents=True, exist_ok=True)
    bad = 0
    for name, entry in entries.items():
        if args.only and name not in args.only:
            continue
        try:
            path = build(entry, entries, CORPUS)
        except Exception as exc:  # one line per failed entry, keep going
            print(f"FAIL  {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
            bad += 1
            continue
        got = measure(path)
        derived = "derived_from" in entry["source"]
        if args.update:
            entry.update(got)
        elif entry.get("sha256") != got["sha256"]:
            print(f"{'WARN' if derived else 'FAIL'}  {name}: sha256 differs", file=sys.stderr)
            bad += 0 if derived else 1
        print(f"ok    {name:28s} {got['size'] / 1e6:6.2f} MB  opset {got['opset']}")
    if args.update:
        MANIFEST.write_text(json.dumps(manifest, indent=1) + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
