"""Runs a kernelgen-emitted Pallas TPU module (rpa.pallas.py) in Pallas' TPU interpret mode on CPU.

Usage:
    pallas_harness.py MODULE.py INDIR OUTDIR [--detect-races]
    pallas_harness.py --cases CASES.json

INDIR holds q.npy, kv_pages.npy (token-major [pages, slot, 2*kv_heads, d]; transposed here when the
module's KV_LAYOUT is "HND"), kv_lens.npy, page_indices.npy, cu_q_lens.npy, num_seqs.npy (float
arrays as float32; for a bf16 module they hold values already rounded to bf16, so converting them to
the module's dtype is exact). The module's ragged_paged_attention runs under
pltpu.force_tpu_interpret_mode, which simulates HBM, VMEM, the kernel's DMAs and semaphores (and,
with detect_races, checks every access against in-flight DMAs). The output is written to
OUTDIR/out.npy as float32.

One JSON line per case on stdout:
    {"ok": true, "races": false, "seconds": 1.23, "module": ..., "outdir": ...,
     "head_dim_padded": 64, "grid": [1, 4], "vmem_buffers": [...]}
or {"ok": false, "error": "...", ...}. CASES.json is a list of
{"module": ..., "indir": ..., "outdir": ..., "detect_races": bool}; one process runs them all, so the
jax import (the slow part) is paid once. Exit status 1 if any case failed.
"""

import importlib.util
import json
import os
import sys
import time
import traceback

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")

import numpy as np  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.experimental.pallas import tpu as pltpu  # noqa: E402

INPUTS = ("q", "kv_pages", "kv_lens", "page_indices", "cu_q_lens", "num_seqs")


def load_module(path, tag):
    # A fresh module object per case: its jitted entry point is traced anew, under this case's
    # interpret parameters.
    spec = importlib.util.spec_from_file_location(f"kernelgen_rpa_{tag}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def races_found():
    try:
        from jax._src.pallas.mosaic.interpret import interpret_pallas_call as ipc
    except ImportError:
        return None
    return bool(ipc.races.races_found) if ipc.races is not None else False


def run_case(case, tag):
    mod = load_module(case["module"], tag)
    arrays = [np.load(os.path.join(case["indir"], f"{name}.npy")) for name in INPUTS]
    dtype = jnp.dtype(mod.DTYPE)
    # The batch's pool is token-major [pages, slot, 2*kv_heads, d]; the module says its own layout.
    layout = getattr(mod, "KV_LAYOUT", "NHD")
    if layout == "HND":
        arrays[1] = np.ascontiguousarray(arrays[1].transpose(0, 2, 1, 3))
    elif layout != "NHD":
        raise ValueError(f"module KV_LAYOUT {layout!r}: expected 'NHD' or 'HND'")
    args = [jnp.asarray(a, dtype) if a.dtype.kind == "f" else jnp.asarray(a, jnp.int32) for a in arrays]
    detect = bool(case.get("detect_races", False))
    pltpu.reset_tpu_interpret_mode_state()
    params = pltpu.InterpretParams(detect_races=detect, on_race="warn")
    t0 = time.time()
    with pltpu.force_tpu_interpret_mode(params):
        out = mod.ragged_paged_attention(*args)
        out = np.asarray(jax.block_until_ready(out).astype(jnp.float32))
    seconds = time.time() - t0
    os.makedirs(case["outdir"], exist_ok=True)
    np.save(os.path.join(case["outdir"], "out.npy"), out)
    return {
        "ok": True,
        "races": races_found() if detect else False,
        "detect_races": detect,
        "seconds": round(seconds, 3),
        "head_dim_padded": mod.HEAD_DIM_PADDED,
        "grid": [mod.NUM_HEAD_BLOCKS, mod.NUM_Q_BLOCKS],
        "vmem_buffers": mod.VMEM_BUFFERS,
    }


def main(argv):
    if len(argv) == 2 and argv[0] == "--cases":
        with open(argv[1]) as fh:
            cases = json.load(fh)
    else:
        flags = [a for a in argv if a.startswith("--")]
        pos = [a for a in argv if not a.startswith("--")]
        if len(pos) != 3 or any(f != "--detect-races" for f in flags):
            sys.stderr.write(__doc__)
            return 2
        cases = [{"module": pos[0], "indir": pos[1], "outdir": pos[2], "detect_races": bool(flags)}]
    failed = False
    for i, case in enumerate(cases):
        try:
            result = run_case(case, i)
        except Exception as e:  # report and go on with the next case
            failed = True
            result = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        result.update(module=case.get("module"), outdir=case.get("outdir"))
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
