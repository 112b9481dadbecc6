"""JAX peer of `kernelgen bench kernel --peer jax`: decode-batch ragged paged attention written
as plain jnp ops (gather every sequence's pages into dense K/V, masked softmax, GQA), jit-compiled
by XLA CPU, chained once per layer like kernelgen's chain, timed on the batch kernelgen timed.

Reads one JSON object on stdin:
  q [T, Hq, D] and kv_pages [P, page, 2*Hkv, D] shapes, dtype ("float32" | "bfloat16"),
  kv_lens [S], cu_q_lens [S+1], tables (one [S, pps] page table per layer),
  sm_scale, warmup, repeats.
Every sequence holds one query row (a decode batch), as in `kernelgen bench kernel`.
Writes {"median_ms", "min_ms", "max_ms"} on stdout.
"""
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np


def attend(q, kv, kv_lens, table, cu_q_lens, sm_scale):
    t, hq, d = q.shape
    pages, page, h2, _ = kv.shape
    hkv, g = h2 // 2, hq // (h2 // 2)
    s, pps = table.shape
    keys = pps * page
    dense = kv[jnp.clip(table, 0, pages - 1)].reshape(s, keys, hkv, 2, d)
    # Batch (sequence, KV head) leading, the layout XLA CPU's batched dots run fastest on.
    k = dense[:, :, :, 0].transpose(0, 2, 1, 3)
    v = dense[:, :, :, 1].transpose(0, 2, 1, 3)
    rows = jnp.clip(cu_q_lens[:-1], 0, t - 1)
    qs = q[rows].reshape(s, hkv, g, d)
    f32 = jnp.float32
    scores = jnp.einsum("shgd,shld->shgl", qs, k, preferred_element_type=f32) * sm_scale
    seen = (jnp.arange(keys)[None, :] < kv_lens[:, None])[:, None, None, :]
    p = jax.nn.softmax(jnp.where(seen, scores, -1e30), axis=-1)
    o = jnp.einsum("shgl,shld->shgd", p.astype(v.dtype), v, preferred_element_type=f32)
    return q.at[rows].set(o.reshape(s, hq, d).astype(q.dtype))


def main():
    req = json.load(sys.stdin)
    dtype = jnp.bfloat16 if req["dtype"] == "bfloat16" else jnp.float32
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.standard_normal(req["q_shape"], dtype=np.float32), dtype=dtype)
    kv = jnp.asarray(rng.standard_normal(req["kv_shape"], dtype=np.float32), dtype=dtype)
    kv_lens = jnp.asarray(req["kv_lens"], dtype=jnp.int32)
    cu = jnp.asarray(req["cu_q_lens"], dtype=jnp.int32)
    tables = [jnp.asarray(t, dtype=jnp.int32) for t in req["tables"]]
    scale = float(req["sm_scale"])

    @jax.jit
    def chain(q, kv, kv_lens, cu, tables):
        for table in tables:
            q = attend(q, kv, kv_lens, table, cu, scale)
        return q

    times = []
    for i in range(req["warmup"] + req["repeats"]):
        start = time.perf_counter()
        chain(q, kv, kv_lens, cu, tables).block_until_ready()
        if i >= req["warmup"]:
            times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    json.dump({"median_ms": times[len(times) // 2], "min_ms": times[0], "max_ms": times[-1]},
              sys.stdout)


if __name__ == "__main__":
    main()
