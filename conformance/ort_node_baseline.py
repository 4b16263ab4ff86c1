#!/usr/bin/env python3
"""onnxruntime's pass count on the ONNX node tests ampoule runs.

The issue's target for `tests/onnx_conformance.rs` is "no fewer passes than
onnxruntime gets on the same cases". This script selects the cases the Rust
runner selects (every op of the graph and its subgraphs in
conformance/ops.txt, default domain only), runs each `model.onnx` on
`test_data_set_0` with onnxruntime's CPU provider, compares with the
expected outputs under the same rule (conformance/tolerances.txt, else rtol
1e-3 atol 1e-7; NaN equals NaN; infinities exactly; ints exactly), and
prints the count, plus with `--list` each failing case and why.

    python3 conformance/ort_node_baseline.py [--list]

Needs `onnx` (to read the TensorProto files) and `onnxruntime` in the
running Python, and the node tests fetched (`conformance/fetch`, into
target/test-data/onnx-node).
"""

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("AMPOULE_TEST_DATA") or HERE.parent / "target" / "test-data")


def lines(name):
    for line in (HERE / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            yield line


def graph_ops(g, ops):
    default = True
    for n in g.node:
        if n.domain not in ("", "ai.onnx"):
            default = False
        ops.add(n.op_type)
        for a in n.attribute:
            for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                default &= graph_ops(sub, ops)
    return default


def close(got, want, rtol, atol):
    if got.shape != want.shape:
        return f"shape {got.shape}, expected {want.shape}"
    if want.dtype.kind == "f":
        g, w = got.astype(np.float64), want.astype(np.float64)
        nan = np.isnan(w)
        inf = np.isinf(w) | np.isinf(g)
        ok = np.where(nan, np.isnan(g), np.where(inf, g == w, np.abs(g - w) <= atol + rtol * np.abs(w)))
        return None if ok.all() else f"element {int(np.argmin(ok))} out of tolerance"
    return None if np.array_equal(got, want) else "values differ"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args()
    op_set = set(lines("ops.txt"))
    tols = {}
    for line in lines("tolerances.txt"):
        op, rtol, atol = line.split()[:3]
        tols[op] = (float(rtol), float(atol))
    node_dir = CACHE / "onnx-node"
    ort.set_default_logger_severity(4)
    passed, failed = 0, []
    for case in sorted(os.listdir(node_dir)):
        if not (node_dir / case / "model.onnx").is_file():
            continue
        model = onnx.load(str(node_dir / case / "model.onnx"))
        ops = set()
        if not graph_ops(model.graph, ops) or not ops or not ops <= op_set:
            continue
        rtol = max([tols.get(o, (1e-3, 1e-7))[0] for o in ops])
        atol = max([tols.get(o, (1e-3, 1e-7))[1] for o in ops])
        data = node_dir / case / "test_data_set_0"
        try:
            init = {i.name for i in model.graph.initializer}
            names = [i.name for i in model.graph.input if i.name not in init]
            feeds = {}
            for k, name in enumerate(names):
                t = onnx.TensorProto()
                t.ParseFromString((data / f"input_{k}.pb").read_bytes())
                feeds[name] = numpy_helper.to_array(t)
            wants = []
            k = 0
            while (data / f"output_{k}.pb").exists():
                t = onnx.TensorProto()
                t.ParseFromString((data / f"output_{k}.pb").read_bytes())
                wants.append(numpy_helper.to_array(t))
                k += 1
            sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
            gots = sess.run(None, feeds)
            why = next((w for w in (close(np.asarray(g), want, rtol, atol)
                                    for g, want in zip(gots, wants)) if w), None)
        except Exception as e:  # onnxruntime refusing a model is a failure
            why = str(e).splitlines()[0][:160]
        if why is None:
            passed += 1
        else:
            failed.append((case, why))
    print(f"onnxruntime {ort.__version__} on the node tests in ampoule's op set: "
          f"{passed} passed, {len(failed)} failed, of {passed + len(failed)}")
    if args.list:
        for case, why in failed:
            print(f"  {case}: {why}")


if __name__ == "__main__":
    sys.exit(main())
