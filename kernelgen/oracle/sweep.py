"""Calibration sweep: compile many kernel configs with the real TPU compiler and record, for each,
the verdict at the chip's default scoped-VMEM limit and the smallest vmem_limit_bytes that
compiles (bisection, 64 KiB steps). The output (JSON lines) is committed under kernelgen/data/ and
is what the VMEM model is fitted to and tested against.

    .cache/venv/tpu-oracle/bin/python kernelgen/oracle/sweep.py --kernel jax-rpa \
        --out kernelgen/data/vmem_oracle_jax_rpa.jsonl [--points 260] [--shard 0/2]
    .cache/venv/tpu-oracle/bin/python kernelgen/oracle/sweep.py --kernel kernelgen \
        --kernelgen target/release/kernelgen --targets v5e,v5p,v6e,v7x \
        --out kernelgen/data/vmem_oracle_kernelgen.jsonl --points 120 [--shard 0/2]

For --kernel kernelgen each point's module is rendered by `kernelgen emit-pallas` (the module bakes
the config in) into .cache/sweep-modules/.

Resumable: points already in --out are skipped. Points are drawn deterministically (seeded) from
the grid below, mostly near the limit (where the verdict is in doubt), some far from it.

--grid heldout draws the held-out split (kernelgen/data/vmem_oracle_heldout.jsonl) whose configs
no fit ever sees: GQA groups 1-16 (5, 6, 7, 12 and 16 too), head_dim 64 to 256, more MHA, about a
third at a raised vmem_limit_bytes, both kernels on v5e/v5p/v6e/v7x, its own seed; --no-bisect records
the verdict at the point's limit only (no minimum-limit bisection: 1-4 s a point):

    .cache/venv/tpu-oracle/bin/python kernelgen/oracle/sweep.py --grid heldout --no-bisect \
        --kernel both --kernelgen target/release/kernelgen --targets v5e,v5p,v6e,v7x \
        --seed 7 --points 200 --out kernelgen/data/vmem_oracle_heldout.jsonl

--rerun FILE measures FILE's points of --kernel again (the same configs, e.g. after the kernel's
layout changed; add --no-bisect for a held-out split):

    .cache/venv/tpu-oracle/bin/python kernelgen/oracle/sweep.py --kernel kernelgen \
        --kernelgen target/release/kernelgen --rerun kernelgen/data/vmem_oracle_kernelgen.jsonl \
        --out /tmp/kernelgen.jsonl

--grid wide draws fit points (with bisection) over the held-out grid's geometries and the fit
grid's, f32 on a quarter, never a config of the held-out split (--exclude), e.g.:

    .cache/venv/tpu-oracle/bin/python kernelgen/oracle/sweep.py --grid wide --kernel kernelgen \
        --kernelgen target/release/kernelgen --targets v5e,v5p,v6e,v7x --seed 11 --points 80 \
        --exclude kernelgen/data/vmem_oracle_heldout.jsonl --out kernelgen/data/vmem_oracle_kernelgen.jsonl
"""

import argparse
import importlib.metadata
import json
import os
import random
import subprocess
import sys
import threading

sys.path.insert(0, os.path.dirname(__file__))
import tpu_oracle  # noqa: E402

# Default scoped-VMEM limit per target (measured with this oracle: the limit in the
# CompileTimeScopedVmemOom message; v4 reports a 16 MiB capacity error instead).
DEFAULT_LIMIT = {"v4": 16 << 20, "v5e": 16 << 20, "v5p": 16 << 20, "v6e": 32 << 20, "v7x": 32 << 20}
# Bisection ceiling: physical VMEM per core (jax/_src/tpu_info.py).
CAPACITY = {"v4": 16 << 20, "v5e": 128 << 20, "v5p": 64 << 20, "v6e": 128 << 20, "v7x": 64 << 20}

# Per-device (q heads, kv heads): GQA ratios 1, 2, 3, 4, 8 and MHA with several head blocks.
HEADS = [(8, 8), (16, 16), (32, 32), (16, 8), (24, 8), (32, 8), (64, 8), (32, 4), (8, 1), (4, 1), (8, 2), (16, 2)]
PAGE_SIZES = [16, 32, 64, 128, 256]
Q_BLOCKS = [8, 16, 32, 64, 128]
KV_BLOCKS = [1, 2, 4, 8, 16, 32, 64]

# The fit points stop at these block sizes. (The token-major kernel, which scored a whole block at
# once, took minutes and >10 GB to compile past them, e.g. page 256 x 64 pages; today's kernel
# scores at most 512 keys at a time and compiles such blocks in about a second, and its spill
# model sees the chunk, so MAX_KEYS only keeps the same draws.)
MAX_KEYS = 4096
MAX_ROWS = 512

# The held-out grid: geometries the first fit grid did not have (GQA groups 5, 6, 7, 12, 16;
# head_dim 64 and 256) and a few it has, each with its head_dim. The wide fit grid draws from it
# too, never a held-out config.
HEADS_HELDOUT = [(48, 8, 128), (24, 4, 128), (12, 2, 128), (6, 1, 128), (40, 8, 128), (28, 4, 128),
                 (64, 4, 128), (32, 2, 128), (16, 1, 128), (12, 1, 128), (8, 8, 256), (16, 4, 256),
                 (32, 8, 64), (16, 16, 64), (12, 12, 64), (4, 4, 128), (9, 3, 64), (15, 5, 64)]
# Raised limits tried on about a third of the held-out points (x the target's default).
RAISE = [1.5, 2.0]
# The wide fit grid (--grid wide): both lists, each with its head_dim, and f32 on a quarter of the
# points. JAX's kernel takes head_dim 128 only (others fail in lowering: "AssertionError").
HEADS_WIDE = HEADS_HELDOUT + [(hq, hkv, 128) for hq, hkv in HEADS]


def config_key(p):
    """The point without its limit: a config the fit saw at any limit is not held out."""
    return key(p)[:-1]


def kv_heads_per_block(hq, hkv, packing):
    tile = 8 * packing
    return tile if (2 * hkv) % tile == 0 else 2 * hkv


def key(p):
    return tuple(p.get(k) for k in ("kernel", "target", "num_q_heads", "num_kv_heads", "head_dim", "page_size",
                                    "dtype", "q_block", "kv_pages_block", "vmem_limit_bytes"))


def draw(kernel, n, seed, targets, grid="fit", exclude=frozenset()):
    rng = random.Random(seed)
    points, seen = [], set()
    kernels = ["jax-rpa", "kernelgen"] if kernel == "both" else [kernel]
    while len(points) < n:
        target = targets[len(points) % len(targets)]
        kernel = kernels[(len(points) // len(targets)) % len(kernels)]
        hq, hkv = rng.choice(HEADS)
        head_dim = 128
        limit = DEFAULT_LIMIT[target]
        if grid == "heldout":
            hq, hkv, head_dim = rng.choice(HEADS_HELDOUT)
            if rng.random() < 0.33:
                limit = min(int(DEFAULT_LIMIT[target] * rng.choice(RAISE)), CAPACITY[target])
        elif grid == "wide":
            hq, hkv, head_dim = rng.choice(HEADS_WIDE)
            if kernel == "jax-rpa" and head_dim != 128:
                continue
        elif kernel == "kernelgen" and rng.random() < 0.15:
            hq, hkv, head_dim = 9, 3, 64  # SmolLM2-135M's attention
        dtype = "float32" if rng.random() < (0.25 if grid == "wide" else 0.1) else "bfloat16"
        packing = 1 if dtype == "float32" else 2
        p, bq, bkv = rng.choice(PAGE_SIZES), rng.choice(Q_BLOCKS), rng.choice(KV_BLOCKS)
        if kernel == "kernelgen" and (bkv * p > MAX_KEYS or bq * (hq // hkv) > MAX_ROWS):
            continue
        kv_buf = 2 * bkv * p * kv_heads_per_block(hq, hkv, packing) * head_dim * (4 // packing)
        ratio = kv_buf / limit
        # Keep mostly configs whose KV double buffer alone is 5%..150% of the limit.
        if not (0.05 <= ratio <= 1.5) and rng.random() > 0.12:
            continue
        pt = {
            "kernel": kernel, "target": target, "num_q_heads": hq, "num_kv_heads": hkv, "head_dim": head_dim,
            "page_size": p, "dtype": dtype, "q_block": bq, "kv_pages_block": bkv,
            "max_num_tokens": 2048, "max_num_seqs": 64, "pages_per_seq": 64, "total_pages": 4096,
        }
        if limit != DEFAULT_LIMIT[target]:
            pt["vmem_limit_bytes"] = limit
        if key(pt) in seen or config_key(pt) in exclude:
            continue
        seen.add(key(pt))
        points.append(pt)
    return points


def render_module(binary, p):
    """Renders the kernelgen module for point p; returns its path."""
    if not binary:
        sys.exit("--kernel kernelgen needs --kernelgen PATH (the kernelgen binary)")
    out_dir = os.path.join(os.path.dirname(__file__), "..", "..", ".cache", "sweep-modules")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.abspath(os.path.join(out_dir, "_".join(str(x) for x in key(p)) + ".py"))
    dtype = "f32" if p["dtype"] == "float32" else "bf16"
    subprocess.run([binary, "emit-pallas", "--q", str(p["q_block"]), "--kv", str(p["kv_pages_block"]),
                    "--num-q-heads", str(p["num_q_heads"]), "--num-kv-heads", str(p["num_kv_heads"]),
                    "--head-dim", str(p["head_dim"]), "--page-size", str(p["page_size"]), "--dtype", dtype,
                    "--max-tokens", str(p["max_num_tokens"]), "--max-seqs", str(p["max_num_seqs"]),
                    "--pages-per-seq", str(p["pages_per_seq"]), "--total-pages", str(p["total_pages"]),
                    "--out", path], check=True)
    return path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kernel", default="jax-rpa")
    ap.add_argument("--kernelgen", help="kernelgen binary that renders modules for --kernel kernelgen")
    ap.add_argument("--out", required=True)
    ap.add_argument("--points", type=int, default=260)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--targets", default="v5e,v5p,v6e,v7x,v4")
    ap.add_argument("--shard", default="0/1")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per point (incl. bisection)")
    ap.add_argument("--grid", choices=["fit", "heldout", "wide"], default="fit")
    ap.add_argument("--exclude", action="append", default=[],
                    help="a JSONL of points whose configs (at any limit) are never drawn: the held-out split")
    ap.add_argument("--no-bisect", action="store_true", help="the verdict at the point's limit only")
    ap.add_argument("--rerun", help="a JSONL of earlier points: measure its --kernel points again (same configs, "
                    "e.g. after the kernel changed) instead of drawing new ones")
    args = ap.parse_args()
    i, n = map(int, args.shard.split("/"))
    done = set()
    if os.path.exists(args.out):
        with open(args.out) as fh:
            done = {key(json.loads(line)["request"]) for line in fh if line.strip()}
    versions = {k: importlib.metadata.version(k) for k in ("jax", "jaxlib", "libtpu")}
    exclude = set()
    for path in args.exclude:
        with open(path) as fh:
            exclude |= {config_key(json.loads(line)["request"]) for line in fh if line.strip()}
    if args.rerun:
        with open(args.rerun) as fh:
            points = [json.loads(line)["request"] for line in fh if line.strip()]
        points = [p for p in points if args.kernel == "both" or p["kernel"] == args.kernel]
    else:
        points = draw(args.kernel, args.points, args.seed, args.targets.split(","), args.grid, frozenset(exclude))
    todo = [p for j, p in enumerate(points) if j % n == i and key(p) not in done]
    print(f"{len(todo)} points to compile ({len(done)} already in {args.out})", file=sys.stderr)
    for j, p in enumerate(todo):
        extra = {"module": render_module(args.kernelgen, p)} if p["kernel"] == "kernelgen" else {}
        req = dict(p, **extra, min_limit=not args.no_bisect, default_limit_bytes=DEFAULT_LIMIT[p["target"]],
                   min_limit_cap=CAPACITY[p["target"]])
        # A compile stuck inside libtpu cannot be interrupted from Python: record the point as a
        # timeout and exit; rerunning the sweep resumes after it.
        def give_up(p=p):
            rec = {"request": p, "default_limit_bytes": DEFAULT_LIMIT[p["target"]], "versions": versions,
                   "response": {"verdict": "timeout", "message": f"no verdict within {args.timeout} s"}}
            with open(args.out, "a") as fh:
                fh.write(json.dumps(rec, sort_keys=True) + "\n")
            print(f"timeout on {p}", file=sys.stderr, flush=True)
            os._exit(3)
        watchdog = threading.Timer(args.timeout, give_up)
        watchdog.start()
        resp = tpu_oracle.handle(req)
        watchdog.cancel()
        rec = {"request": p, "default_limit_bytes": DEFAULT_LIMIT[p["target"]], "response": resp,
               "versions": versions}
        with open(args.out, "a") as fh:
            fh.write(json.dumps(rec, sort_keys=True) + "\n")
        print(f"[{j + 1}/{len(todo)}] {p['target']} {p['num_q_heads']}/{p['num_kv_heads']} P{p['page_size']} "
              f"q{p['q_block']} kv{p['kv_pages_block']} {p['dtype']}: {resp['verdict']} "
              f"min={resp.get('min_limit_bytes')} ({resp['compile_s'] + resp.get('bisect_s', 0):.0f}s)",
              file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
