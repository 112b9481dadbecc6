"""Merge sweep shards into one committed data file, re-applying the driver's current error
classification to the stored compiler messages (shards written before a message form was known
keep their raw text, so they are reclassified rather than recompiled).

    .cache/venv/tpu-oracle/bin/python kernelgen/oracle/merge.py OUT.jsonl SHARD.jsonl...
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import tpu_oracle  # noqa: E402  (the driver's own classification; needs the oracle venv)


def classify(resp):
    if resp["verdict"] != "error":
        return resp
    verdict, size, limit, _ = tpu_oracle.classify_error(resp.get("message", ""))
    if verdict == "error":
        return resp
    return dict(resp, verdict=verdict, size_bytes=size, limit_bytes=limit)


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
