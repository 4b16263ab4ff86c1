#!/usr/bin/env python3
"""Comparison benchmark: ampoule against onnxruntime on the real models of
models.json, in the same run.

For each model: median warm latency (ampoule: package opened, optimized
kernels; onnxruntime: session created, CPU provider), both on the same
number of threads, and ampoule's package open-to-first-result time against
onnxruntime's session creation time, and against its session creation plus
first run (the same work ampoule's figure covers). Prints a table of ratios
(ampoule / onnxruntime: below 1 means ampoule is faster), after a line naming
the CPU and its widest vector extension. Models ampoule
cannot compile yet are listed as `unsupported: <reason>`.

The machine may be shared and its speed drifts, so the two sides alternate:
each of `--rounds` rounds measures ampoule then onnxruntime on one model
before going on, and each figure is the median over the rounds (a ratio is
the median of the rounds' ratios, each from two measurements taken seconds
apart).

    conformance/bench_models.py [--threads N] [--rounds R] [MODEL...]

Runs in the venv of `conformance/fetch` (re-executing itself there), builds
and runs the ampoule side with `cargo bench --bench models` (release
profile).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CACHE = Path(os.environ.get("AMPOULE_TEST_DATA") or ROOT / "target" / "test-data").resolve()
VENV_PY = CACHE / "venv" / "bin" / "python"


def ort_times(model_path, inputs, threads):
    import numpy as np
    import onnxruntime as ort

    feeds = {name: np.load(path) for name, path in inputs}

    def session():
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        return ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])

    creates, firsts = [], []
    for _ in range(5):
        t = time.perf_counter()
        sess = session()
        creates.append(time.perf_counter() - t)
        sess.run(None, feeds)
        firsts.append(time.perf_counter() - t)
    t = time.perf_counter()
    sess.run(None, feeds)
    one = max(time.perf_counter() - t, 1e-6)
    runs = max(5, min(200, int(2.0 / one)))
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, feeds)
        times.append(time.perf_counter() - t)
    ms = lambda v: statistics.median(v) * 1e3
    return ms(creates), ms(firsts), ms(times)


def cpu_summary():
    """The CPU's model name and its widest x86 vector extension, from
    /proc/cpuinfo (ratios move with both: ampoule's direct convolution runs
    on AVX-512, and on AVX2 only for some kernels; onnxruntime picks its
    kernels by ISA too)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown (no /proc/cpuinfo)"
    model, flags = "unknown", set()
    for line in info.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model == "unknown":
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    widest = next((f for f in ("avx512f", "avx2", "avx", "sse2") if f in flags), "none of sse2/avx")
    return f"{model}, {os.cpu_count()} logical CPUs, widest vector extension: {widest}"


def main():
    if Path(sys.prefix).resolve() != (CACHE / "venv").resolve():
        subprocess.run(["bash", str(HERE / "fetch"), "models"], check=True)
        os.execv(str(VENV_PY), [str(VENV_PY), __file__] + sys.argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("models", nargs="*")
    args = ap.parse_args()

    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads), AMPOULE_TEST_DATA=str(CACHE))
    print(f"building the ampoule side (cargo bench --bench models); {args.threads} threads, "
          f"{args.rounds} rounds", file=sys.stderr)
    subprocess.run(["cargo", "bench", "--bench", "models", "--no-run"], cwd=ROOT, env=env,
                   check=True)

    def amp_times(name):
        out = subprocess.run(["cargo", "bench", "-q", "--bench", "models", "--", name],
                             cwd=ROOT, env=env, stdout=subprocess.PIPE, check=True,
                             text=True).stdout
        for line in out.splitlines():
            if line.startswith("{"):
                r = json.loads(line)
                if r["model"] == name:
                    return r
        return None

    specs = json.loads((HERE / "models.json").read_text())["models"]
    header = ("model", "ampoule ms", "ort ms", "ratio", "amp open+1st ms",
              "ort session ms", "ratio", "ort session+1st ms", "ratio")
    rows = []
    for m in specs:
        name = m["name"]
        if args.models and name not in args.models:
            continue
        inputs = [(i["name"], CACHE / "models" / name / f"input_{k}.npy")
                  for k, i in enumerate(m["inputs"])]
        rounds = []
        for _ in range(max(1, args.rounds)):
            a = amp_times(name)
            if a is None or "unsupported" in a:
                break
            create, first, run = ort_times(CACHE / "models" / f"{name}.onnx", inputs,
                                           args.threads)
            rounds.append((a["median_ms"], run, a["open_first_ms"], create, first))
        if not rounds:
            reason = a["unsupported"] if a else "no result from the ampoule bench"
            rows.append((name, f"unsupported: {reason}"))
            continue
        med = lambda f: statistics.median(f(r) for r in rounds)
        amp_run, amp_open = med(lambda r: r[0]), med(lambda r: r[2])
        rows.append((name, f"{amp_run:.3f}", f"{med(lambda r: r[1]):.3f}",
                     f"{med(lambda r: r[0] / r[1]):.2f}",
                     f"{amp_open:.2f}", f"{med(lambda r: r[3]):.2f}",
                     f"{med(lambda r: r[2] / r[3]):.2f}", f"{med(lambda r: r[4]):.2f}",
                     f"{med(lambda r: r[2] / r[4]):.2f}"))
        print(f"{name}: {len(rounds)} rounds", file=sys.stderr)

    widths = [max(len(str(r[i])) for r in [header] + [r for r in rows if len(r) == len(header)])
              for i in range(len(header))]
    print(f"cpu: {cpu_summary()}")
    print(f"threads: {args.threads} (ampoule: RAYON_NUM_THREADS; onnxruntime: intra_op_num_threads)")
    print("ratio = ampoule / onnxruntime (below 1: ampoule is faster); latency = median of warm calls")
    print(f"each figure: the median over {args.rounds} alternating rounds (a ratio: of the rounds' ratios)")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for r in rows:
        if len(r) == len(header):
            print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
        else:
            print(f"{r[0].ljust(widths[0])}  {r[1]}")


if __name__ == "__main__":
    main()
