"""Merge sweep shards into one committed data file, re-applying the driver's current error
classification to the stored compiler messages (shards written before a message form was known
keep their raw text, so they are reclassified rather than recompiled).

    python3 verify/oracle/merge.py OUT.jsonl SHARD.jsonl...
"""
import json
import re
import sys

SCOPED = re.compile(r"Scoped allocation with size ([0-9.]+)([KMG]) and limit ([0-9.]+)([KMG])")
CAPACITY = re.compile(r"Used ([0-9.]+)([KMG]) of ([0-9.]+)([KMG]) (vmem|smem)")
ALLOCATION = re.compile(r"Allocation \(size=([0-9]+)\) would exceed memory \(size=([0-9]+)\)")
UNIT = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def classify(resp):
    if resp["verdict"] != "error":
        return resp
    msg = resp.get("message", "")
    m = ALLOCATION.search(msg)
    if m and "space=vmem" in msg:
        return dict(resp, verdict="vmem_oom", size_bytes=int(m.group(1)), limit_bytes=int(m.group(2)))
    if "CompileTimeHbmOom" in msg:
        return dict(resp, verdict="hbm_oom")
    for pattern in (SCOPED, CAPACITY):
        m = pattern.search(msg)
        if m:
            space = m.group(5) if pattern is CAPACITY else "vmem"
            return dict(resp, verdict=f"{space}_oom", size_bytes=int(float(m.group(1)) * UNIT[m.group(2)]),
                        limit_bytes=int(float(m.group(3)) * UNIT[m.group(4)]))
    return resp


def main():
    out, shards = sys.argv[1], sys.argv[2:]
    recs = []
    for s in shards:
        with open(s) as fh:
            recs += [json.loads(line) for line in fh if line.strip()]
    with open(out, "w") as fh:
        for r in recs:
            r["response"] = classify(r["response"])
            fh.write(json.dumps(r, sort_keys=True) + "\n")
    print(f"{len(recs)} points -> {out}")


if __name__ == "__main__":
    main()
