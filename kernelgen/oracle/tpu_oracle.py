"""TPU compiler oracle: compiles ragged paged attention kernels with the real TPU compiler
(libtpu's XLA:TPU + Mosaic) ahead of time on a CPU-only machine, and reports the verdict.

Driven by kernelgen (verify/src/oracle.rs): one JSON request per stdin line, one JSON response per
stdout line, so one process amortizes the jax import over many compiles.

Request fields:
  kernel            "jax-rpa" (jax.experimental.pallas.ops.tpu.ragged_paged_attention) or
                    "kernelgen" (an emitted rpa.pallas.py, path in "module")
  target            v4 | v5e | v5p | v6e | v7x
  num_q_heads, num_kv_heads, head_dim, page_size, dtype ("bfloat16" | "float32"),
  q_block, kv_pages_block, max_num_tokens, max_num_seqs, pages_per_seq, total_pages
  vmem_limit_bytes  null for the chip default
  min_limit         true: also bisect the smallest vmem_limit_bytes that compiles
  export_path       optional: write the lowered StableHLO (tpu_custom_call) text there
Response: {"verdict": "fits" | "vmem_oom" | "smem_oom" | "hbm_oom" | "error", "size_bytes", "limit_bytes",
           "message", "compile_s", "min_limit_bytes"?}
"""

import importlib.util
import json
import os
import re
import sys
import time
import traceback

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
# Memory space assignment off. Compiled alone, the kernel's q and output are the program's
# parameter and result, and XLA's memory space assignment may place them wholly in VMEM, outside
# the scoped limit; the kernel then allocates no q/out windows. Measured on JAX's kernel, 12 q / 2
# KV heads, f32, q_block 64, 4 pages of 128, v5e: smallest fitting limit 5.19 MiB with it, 7.19
# MiB without (the two windows' 2.0 MiB; the LLO dump with it lists 487 spilled vregs, 1.90 MiB,
# and 7.19 MiB is the checker's exact buffers, windows included, plus those). In a serving step
# q comes from the projections before the kernel and the output feeds the one after, and nothing
# guarantees that placement, so the oracle measures the kernel with its operands in HBM, which is
# what the checker accounts (windows in scoped VMEM).
MSA_OFF = "--xla_msa_enable=false"
if MSA_OFF not in os.environ.get("LIBTPU_INIT_ARGS", ""):
    os.environ["LIBTPU_INIT_ARGS"] = (os.environ.get("LIBTPU_INIT_ARGS", "") + " " + MSA_OFF).strip()

import numpy as np  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.experimental import topologies  # noqa: E402
from jax.sharding import SingleDeviceSharding  # noqa: E402

# Compile-only topology names for one core of each generation (measured working with
# jax 0.12.0.1 + libtpu 0.0.50.1; see shared/research/tpu-aot.md).
TOPOLOGIES = {
    "v4": "v4:2x2x1",
    "v5e": "v5e=1x1",
    "v5p": "v5p=1x1x1",
    "v6e": "v6e=1x1",
    "v7x": "tpu7x:2x2x1",
}

_devices = {}


def device(target):
    if target not in _devices:
        topo = topologies.get_topology_desc(topology_name=TOPOLOGIES[target], platform="tpu")
        _devices[target] = topo.devices[0]
    return _devices[target]


_modules = {}


def kernel_fn(req):
    if req["kernel"] == "jax-rpa":
        from jax.experimental.pallas.ops.tpu.ragged_paged_attention import ragged_paged_attention

        def f(*xs):
            return ragged_paged_attention(
                *xs,
                sm_scale=req["head_dim"] ** -0.5,
                num_kv_pages_per_block=req["kv_pages_block"],
                num_queries_per_block=req["q_block"],
                vmem_limit_bytes=req.get("vmem_limit_bytes"),
            )

        return f
    if req["kernel"] == "kernelgen":
        path = req["module"]
        if path not in _modules:
            spec = importlib.util.spec_from_file_location(f"kg_{len(_modules)}", path)
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            _modules[path] = mod
        mod = _modules[path]
        return lambda *xs: mod.ragged_paged_attention(*xs, vmem_limit_bytes=req.get("vmem_limit_bytes"))
    raise ValueError(f"unknown kernel {req['kernel']!r}")


def kv_pages_shape(req):
    """The pool as the kernel takes it: jax-rpa's token-major pages [pages, slot, 2*kv_heads, d];
    a kernelgen module names its own (KV_PAGES_SHAPE: head-major pages)."""
    if req["kernel"] == "kernelgen":
        kernel_fn(req)  # loads the module
        return tuple(_modules[req["module"]].KV_PAGES_SHAPE)
    return (req["total_pages"], req["page_size"], 2 * req["num_kv_heads"], req["head_dim"])


def abstract_args(req, dev):
    sh = SingleDeviceSharding(dev)
    dt = jnp.dtype(req["dtype"])
    S = lambda shape, d: jax.ShapeDtypeStruct(shape, d, sharding=sh)  # noqa: E731
    seqs, pps = req["max_num_seqs"], req["pages_per_seq"]
    return (
        S((req["max_num_tokens"], req["num_q_heads"], req["head_dim"]), dt),
        S(kv_pages_shape(req), dt),
        S((seqs,), jnp.int32),
        S((seqs, pps), jnp.int32),
        S((seqs + 1,), jnp.int32),
        S((1,), jnp.int32),
    )


def lower(req):
    dev = device(req["target"])
    mesh = jax.sharding.Mesh(np.array([dev]), ("x",))
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
        return jax.jit(kernel_fn(req)).lower(*abstract_args(req, dev))


# Scoped-limit overflow (v5e and later) and physical-capacity overflow (v4, or a limit above
# capacity) for VMEM; capacity overflow for SMEM (scalar-prefetched arrays).
_SCOPED = re.compile(r"Scoped allocation with size ([0-9.]+)([KMG]) and limit ([0-9.]+)([KMG])")
_CAPACITY = re.compile(r"Used ([0-9.]+)([KMG]) of ([0-9.]+)([KMG]) (vmem|smem)")
# A single buffer larger than physical VMEM (v4): "Allocation (size=N) would exceed memory (size=M)".
_ALLOCATION = re.compile(r"Allocation \(size=([0-9]+)\) would exceed memory \(size=([0-9]+)\)")
_UNIT = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def compile_once(req):
    """Returns (verdict, size_bytes, limit_bytes, message)."""
    try:
        lowered = lower(req)
    except Exception as e:  # lowering problems are kernel/config errors, not VMEM verdicts
        return "error", None, None, f"lowering failed: {type(e).__name__}: {e}"
    if req.get("export_path"):
        with open(req["export_path"], "w") as fh:
            fh.write(lowered.as_text())
    try:
        lowered.compile()
        return "fits", None, req.get("vmem_limit_bytes"), ""
    except Exception as e:
        return classify_error(f"{type(e).__name__}: {e}")


def classify_error(msg):
    """A compiler error message -> (verdict, size_bytes, limit_bytes, message)."""
    m = _ALLOCATION.search(msg)
    if m and "space=vmem" in msg:
        return "vmem_oom", int(m.group(1)), int(m.group(2)), m.group(0)
    if "CompileTimeHbmOom" in msg:
        return "hbm_oom", None, None, msg.splitlines()[0][:300]
    for pattern in (_SCOPED, _CAPACITY):
        m = pattern.search(msg)
        if m:
            size = float(m.group(1)) * _UNIT[m.group(2)]
            limit = float(m.group(3)) * _UNIT[m.group(4)]
            space = m.group(5) if pattern is _CAPACITY else "vmem"
            return f"{space}_oom", int(size), int(limit), msg.splitlines()[0][:300] + " ... " + m.group(0)
    return "error", None, None, msg[:2000]


def min_limit(req, lo, hi, step=64 << 10, need=None):
    """Smallest vmem_limit_bytes (multiple of step) in (lo, hi] that compiles; lo fails, hi fits.

    need: a size the compiler reported when it ran out (its scoped allocation). It is tried first,
    rounded up to the step, then one step below: where the compiler reported its whole need that
    settles the point in two compiles. Where it reported only a first stage (kernel and internal
    scratch, not the spills), a failure at that limit reports the next size, which is followed the
    same way; bisection finishes whatever is left, so the answer is the bisection's either way.
    """
    for _ in range(4):
        if not need:
            break
        probe = -(-need // step) * step
        if not lo < probe < hi:
            break
        narrowed = _narrow(req, probe, lo, hi)
        if narrowed is None:
            return None
        lo, hi, need = narrowed
        if hi == probe:
            if lo < probe - step:
                narrowed = _narrow(req, probe - step, lo, hi)
                if narrowed is None:
                    return None
                lo, hi, _ = narrowed
            break
    while hi - lo > step:
        mid = (lo + hi) // 2 // step * step
        if mid <= lo:
            mid = lo + step
        narrowed = _narrow(req, mid, lo, hi)
        if narrowed is None:
            return None
        lo, hi, _ = narrowed
    return hi


def _narrow(req, limit, lo, hi):
    """(lo, hi, reported size) after one compile at `limit`: it fits (hi = limit) or runs out of
    VMEM (lo = limit, with the size the compiler reported); None where it failed otherwise."""
    verdict, size, *_ = compile_once(dict(req, vmem_limit_bytes=limit))
    if verdict == "fits":
        return lo, limit, None
    if verdict == "vmem_oom":
        return limit, hi, size
    return None


def handle(req):
    t0 = time.time()
    verdict, size, limit, message = compile_once(req)
    out = {
        "verdict": verdict,
        "size_bytes": size,
        "limit_bytes": limit,
        "message": message,
        "compile_s": round(time.time() - t0, 3),
        "jax": jax.__version__,
    }
    if req.get("min_limit") and verdict in ("fits", "vmem_oom"):
        t1 = time.time()
        cap = req.get("min_limit_cap", 256 << 20)
        if verdict == "fits":
            base = req.get("vmem_limit_bytes") or req.get("default_limit_bytes")
            hi, lo = base, 0
            # What the compiler says it needs when given almost nothing: the first guess.
            v1, need, *_ = compile_once(dict(req, vmem_limit_bytes=64 << 10))
            if v1 != "vmem_oom":
                need = None
        else:
            lo, hi, need = limit, cap, size
            v2, *_ = compile_once(dict(req, vmem_limit_bytes=hi))
            if v2 != "fits":
                hi = None
        out["min_limit_bytes"] = min_limit(req, lo, hi, need=need) if hi else None
        out["bisect_s"] = round(time.time() - t1, 3)
    return out


def main():
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            resp = handle(json.loads(line))
        except Exception as e:
            resp = {"verdict": "error", "message": f"oracle driver: {e}\n{traceback.format_exc()}"}
        sys.stdout.write(json.dumps(resp) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
