"""Generate ``src/onnxfit/analysis/dml_ops.json`` from ONNX Runtime's DirectML operator table.

Input: ONNX Runtime's
``onnxruntime/core/providers/dml/DmlExecutionProvider/src/Operators/OperatorRegistration.cpp``
(a checkout of microsoft/onnxruntime, or a fork's copy of that file). The script reads three
parts of it: the ``SupportedTensorDataTypes`` enum, the ``typeNameList*`` / ``supportedTypeList*``
arrays, and the rows of ``operatorRegistrationInformationTable`` (macro, opset, op, type labels,
allowed types, DML-graph support, required constant CPU inputs, support-query function, and the
``#if DML_TARGET_VERSION`` guard around a row).

Each row ``REG_INFO(N, Op, ...)`` registers a kernel whose start version is
``OnnxOperatorSetN::sc_sinceVer_Op``: the since-version of Op's schema at opset N. ONNX Runtime
matches a kernel with no end version only to a node whose schema since-version *equals* the
kernel's start version (``KernelRegistry::VerifyKernelDef``), which is why the table registers
every since-version again. The script turns each row into the opset range it covers,
``[since, next since - 1]``, from the schemas onnxruntime itself registers
(``get_all_operator_schema``), and records, per schema input/output, the type label it is bound
to, so that onnxfit can check a node's dtypes without the schema.

Kernels registered outside the table (DFT, STFT, GridSample, DeformConv through their own
factories; the sequence / optional / If kernels of ``RegisterCpuOperatorsAsDml``) are added with
``"extra": true``; their type lists are not read (``types`` empty: any dtype accepted).

Usage::

    python tools/gen_dml_ops.py PATH/TO/OperatorRegistration.cpp --commit SHA \
        --repo microsoft/onnxruntime [-o src/onnxfit/analysis/dml_ops.json]
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from onnxruntime.capi import onnxruntime_pybind11_state as _ort

_BITS = {
    "Float32": "FLOAT",
    "UInt4": "UINT4",
    "Int4": "INT4",
    "UInt8": "UINT8",
    "Int8": "INT8",
    "UInt16": "UINT16",
    "Int16": "INT16",
    "Int32": "INT32",
    "Int64": "INT64",
    "String": "STRING",
    "Bool": "BOOL",
    "Float16": "FLOAT16",
    "Float64": "DOUBLE",
    "UInt32": "UINT32",
    "UInt64": "UINT64",
    "Complex64": "COMPLEX64",
    "Complex128": "COMPLEX128",
}
_DOMAINS = {
    "REG_INFO": "",
    "REG_INFO_VER": "",
    "REG_INFO_COPY": "",
    "REG_INFO_DYNAMIC_OUTPUTS": "",
    "REG_INFO_MS": "com.microsoft",
    "REG_INFO_MS_ALIAS": "com.microsoft",
    "REG_INFO_MSDML": "com.microsoft.dml",
}
#: kernels registered outside the table: (domain, op, registered opsets; None: not read)
_EXTRA: list[tuple[str, str, tuple[int, ...] | None]] = [
    ("", "DFT", (17, 20)),  # RegisterDFTKernel(registry, 17) and (registry, 20)
    ("", "STFT", None),
    ("", "GridSample", None),
    ("", "DeformConv", None),
    ("", "If", (7, 11, 13, 16, 19)),
    ("", "SequenceAt", (11,)),
    ("", "SequenceConstruct", (11,)),
    ("", "SequenceEmpty", (11,)),
    ("", "SequenceLength", (11,)),
    ("", "SequenceErase", (11,)),
    ("", "SequenceInsert", (11,)),
    ("", "OptionalHasElement", (15, 18)),
    ("", "OptionalGetElement", (15, 18)),
]


def _strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.DOTALL)
    return re.sub(r"//[^\n]*", "", text)


def parse_enum(text: str) -> dict[str, set[str]]:
    """SupportedTensorDataTypes name -> set of ONNX dtype names."""
    body = re.search(r"enum class SupportedTensorDataTypes[^{]*\{(.*?)\};", text, re.DOTALL)
    if body is None:
        raise SystemExit("SupportedTensorDataTypes enum not found")
    out: dict[str, set[str]] = {}
    for name, expr in re.findall(r"(\w+)\s*=\s*([^,]+),", body.group(1)):
        if name == "All":
            out[name] = {"*"}
        elif name in _BITS:
            out[name] = {_BITS[name]}
        elif name.startswith("Sequence") and "<<" in expr:
            out[name] = {"seq:" + _BITS.get(name[len("Sequence") :], name)}
        elif "<<" in expr:  # Undefined
            out[name] = set()
        else:
            out[name] = set().union(*(out[p.strip()] for p in expr.split("|")))
    return out


def parse_lists(text: str, enum: dict[str, set[str]]) -> tuple[dict, dict]:
    """(typeNameList name -> labels, supportedTypeList name -> [dtype sets])."""
    names = {
        m.group(1): re.findall(r'"(\w+)"', m.group(2))
        for m in re.finditer(r"std::array<const char\*,\s*\d+>\s*(\w+)\s*=\s*\{(.*?)\};", text)
    }
    types: dict[str, list[set[str]]] = {}
    pat = r"std::array<SupportedTensorDataTypes,\s*\d+>\s*(\w+)\s*=\s*(.*?);"
    for m in re.finditer(pat, text, re.DOTALL):
        rhs = m.group(2).strip()
        if not rhs.startswith("{"):
            types[m.group(1)] = types[rhs]
            continue
        items = [i.strip() for i in rhs.strip("{} \n").split(",") if i.strip()]
        sets = []
        for item in items:
            parts = [p.strip().removeprefix("SupportedTensorDataTypes::") for p in item.split("|")]
            sets.append(set().union(*(enum[p] for p in parts)))
        types[m.group(1)] = sets
    return names, types


def _split_args(s: str) -> list[str]:
    out, depth, cur = [], 0, ""
    for ch in s:
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
            continue
        depth += ch in "(<"
        depth -= ch in ")>"
        cur += ch
    if cur.strip():
        out.append(cur.strip())
    return out


def parse_table(text: str) -> list[dict[str, Any]]:
    """The rows of operatorRegistrationInformationTable, with their #if guard."""
    start = text.index("operatorRegistrationInformationTable[]")
    end = text.index("};", start)
    rows = []
    guard = ""
    for line in text[start:end].splitlines():
        line = line.strip()
        if line.startswith("#if"):
            guard = line[3:].strip()
            continue
        if line.startswith("#endif"):
            guard = ""
            continue
        m = re.match(r"\{(REG_INFO\w*)\s*\((.*)\)\s*\},?$", line)
        if m is None:
            continue
        args = _split_args(m.group(2))
        macro = m.group(1)
        if macro == "REG_INFO_MS_ALIAS":
            del args[2]
        row: dict[str, Any] = {
            "macro": macro,
            "opset": int(args[0]),
            "op": args[1],
            "labels": args[2],
            "types": args[3],
            "graph": len(args) < 5 or "NotSupported" not in args[4],
            "cpu_inputs": [],
            "query": "",
            "guard": guard,
        }
        if len(args) > 5:
            row["cpu_inputs"] = [int(x) for x in re.findall(r"\d+", args[5])]
        if len(args) > 7:
            row["query"] = args[7]
        rows.append(row)
    return rows


def _schemas() -> dict[tuple[str, str], list[Any]]:
    out: dict[tuple[str, str], list[Any]] = {}
    for s in _ort.get_all_operator_schema():
        out.setdefault((s.domain, s.name), []).append(s)
    for v in out.values():
        v.sort(key=lambda s: s.since_version)
    return out


def _formal(params: Any) -> tuple[list[str], bool]:
    labels = [p.typeStr for p in params]
    variadic = bool(params) and params[-1].option.name == "Variadic"
    return labels, variadic


def build(source: Path, *, repo: str, commit: str) -> dict[str, Any]:
    text = _strip_comments(source.read_text(encoding="utf-8"))
    enum = parse_enum(text)
    label_lists, type_lists = parse_lists(text, enum)
    schemas = _schemas()
    max_opset = max(s.since_version for (d, _), v in schemas.items() if d == "" for s in v)
    entries = []
    rows = parse_table(text)
    for row in rows:
        if row["op"].startswith("Memcpy"):
            continue  # ORT-internal copy kernels
        domain = _DOMAINS[row["macro"]]
        labels = label_lists[row["labels"]]
        allowed = type_lists[row["types"]]
        entries.append(_entry(domain, row, labels, allowed, schemas))
    for domain, op, opsets in _EXTRA:
        for opset in opsets or (0,):
            row = {"opset": opset, "op": op, "graph": False, "cpu_inputs": [], "query": ""}
            row["guard"] = "" if opsets else "version not read (own registration file)"
            entries.append(_entry(domain, row, [], [], schemas, extra=True))
    entries.sort(key=lambda e: (e["domain"], e["op"], e["since"]))
    return {
        "source": {
            "repo": repo,
            "commit": commit,
            "path": "onnxruntime/core/providers/dml/DmlExecutionProvider/src/Operators/"
            "OperatorRegistration.cpp",
            "generated_by": "tools/gen_dml_ops.py",
            "schemas_from": f"onnxruntime {_ort.get_version_string()}",
            "table_rows": len(rows),
        },
        "max_opset": max_opset,
        "registrations": entries,
    }


def _entry(
    domain: str,
    row: dict[str, Any],
    labels: list[str],
    allowed: list[set[str]],
    schemas: dict[tuple[str, str], list[Any]],
    *,
    extra: bool = False,
) -> dict[str, Any]:
    versions = schemas.get((domain, row["op"]), [])
    if row["opset"] == 0:  # any version (not read): the whole range
        versions = versions[:1]
    at = [s for s in versions if s.since_version <= max(row["opset"], 1)]
    schema = at[-1] if at else None
    since = schema.since_version if schema is not None else row["opset"]
    if row["opset"] == 0:
        since = 1
    later = [s.since_version for s in versions if s.since_version > since]
    until = later[0] - 1 if later else None
    ins, in_var = _formal(schema.inputs) if schema is not None else ([], False)
    outs, out_var = _formal(schema.outputs) if schema is not None else ([], False)
    return {
        "domain": domain,
        "op": row["op"],
        "since": since,
        "until": until,
        "types": {lab: sorted(t) for lab, t in zip(labels, allowed, strict=True)},
        "inputs": ins,
        "inputs_variadic": in_var,
        "outputs": outs,
        "outputs_variadic": out_var,
        "graph": row["graph"],
        "cpu_inputs": row["cpu_inputs"],
        "query": row["query"],
        "guard": row["guard"],
        "schema": schema is not None,
        "extra": extra,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path)
    ap.add_argument("--repo", default="microsoft/onnxruntime")
    ap.add_argument("--commit", required=True)
    ap.add_argument("-o", "--output", type=Path, default=Path("src/onnxfit/analysis/dml_ops.json"))
    args = ap.parse_args()
    data = build(args.source, repo=args.repo, commit=args.commit)
    regs = data.pop("registrations")
    head = json.dumps(data, indent=1)[:-2]  # one registration per line keeps diffs readable
    body = ",\n  ".join(json.dumps(r, separators=(",", ":")) for r in regs)
    text = f'{head},\n "registrations": [\n  {body}\n ]\n}}\n'
    json.loads(text)
    args.output.write_text(text, encoding="utf-8")
    data["registrations"] = regs
    print(f"wrote {args.output}: {len(data['registrations'])} registrations")


if __name__ == "__main__":
    main()
