"""JAX peer of `kernelgen bench kernel --peer jax`: ragged paged attention written
as plain jnp ops (gather every sequence's pages into dense K/V, masked softmax, GQA), jit-compiled
by XLA CPU, chained once per layer like kernelgen's chain, timed on the batch kernelgen timed.

Reads one JSON object on stdin:
  q [T, Hq, D] and kv_pages [P, page, 2*Hkv, D] shapes, dtype ("float32" | "bfloat16"),
  kv_lens [S], cu_q_lens [S+1], tables (one [S, pps] page table per layer),
  sm_scale, max_q (the most query rows of a sequence: 1 for a decode batch), warmup, repeats.
Each sequence's query rows are gathered into max_q padded rows, causal within the sequence
(`kernelgen bench kernel --mixed` holds prompt chunks beside decode rows).
Writes {"median_ms", "min_ms", "max_ms"} on stdout.
"""
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np


def attend(q, kv, kv_lens, table, cu_q_lens, sm_scale, max_q):
    t, hq, d = q.shape
    pages, page, h2, _ = kv.shape
    hkv, g = h2 // 2, hq // (h2 // 2)
    s, pps = table.shape
    keys = pps * page
    dense = kv[jnp.clip(table, 0, pages - 1)].reshape(s, keys, hkv, 2, d)
    # Batch (sequence, KV head) leading, the layout XLA CPU's batched dots run fastest on.
    k = dense[:, :, :, 0].transpose(0, 2, 1, 3)
    v = dense[:, :, :, 1].transpose(0, 2, 1, 3)
    # Each sequence's query rows padded to max_q (1 for a decode batch), causal within it.
    q_lens = cu_q_lens[1:] - cu_q_lens[:-1]
    i = jnp.arange(max_q)
    rows = cu_q_lens[:-1, None] + i[None, :]
    valid = i[None, :] < q_lens[:, None]
    qs = q[jnp.clip(rows, 0, t - 1)].reshape(s, max_q, hkv, g, d)
    f32 = jnp.float32
    scores = jnp.einsum("sqhgd,shld->shgql", qs, k, preferred_element_type=f32) * sm_scale
    pos = kv_lens[:, None] - q_lens[:, None] + i[None, :]
    seen = jnp.arange(keys)[None, None, :] <= pos[:, :, None]
    p = jax.nn.softmax(jnp.where(seen[:, None, None], scores, -1e30), axis=-1)
    o = jnp.einsum("shgql,shld->sqhgd", p.astype(v.dtype), v, preferred_element_type=f32)
    dest = jnp.where(valid, rows, t).reshape(-1)
    return q.at[dest].set(o.reshape(-1, hq, d).astype(q.dtype), mode="drop")


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
    max_q = int(req.get("max_q", 1))

    @jax.jit
    def chain(q, kv, kv_lens, cu, tables):
        for table in tables:
            q = attend(q, kv, kv_lens, table, cu, scale, max_q)
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
