#!/usr/bin/env bash
# Greedy agreement between two engine settings over the fidelity prompts
# (verify/data/fidelity_prompts.jsonl: 20 chat prompts): runs `kernelgen generate` once with the
# base flags and once with the other flags, then compares token ids per prompt.
#
# usage: scripts/weights_fidelity.sh [NEW_TOKENS] [-- OTHER FLAGS...]
#   default: 64 new tokens, --weights f32 against --weights bf16
# e.g.     scripts/weights_fidelity.sh 64 -- --kv-dtype bf16
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-64}; shift || true
[ "${1:-}" = "--" ] && shift
OTHER=("$@"); [ ${#OTHER[@]} -eq 0 ] && OTHER=(--weights bf16)
KG=${KG:-target/release/kernelgen}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
"$KG" generate --prompts verify/data/fidelity_prompts.jsonl --max-new-tokens "$N" --out "$OUT/base.jsonl" 2>/dev/null
"$KG" generate --prompts verify/data/fidelity_prompts.jsonl --max-new-tokens "$N" "${OTHER[@]}" --out "$OUT/other.jsonl" 2>/dev/null
python3 - "$OUT/base.jsonl" "$OUT/other.jsonl" "${OTHER[*]}" <<'PY'
import json, sys
load = lambda p: {r["id"]: r["token_ids"][0] for r in map(json.loads, open(p))}
a, b = load(sys.argv[1]), load(sys.argv[2])
same = prefix = total = 0
diverged = []
for i in sorted(a):
    x, y = a[i], b[i]
    n = 0
    while n < min(len(x), len(y)) and x[n] == y[n]:
        n += 1
    same += x == y
    prefix += n
    total += len(x)
    if x != y:
        diverged.append(f"prompt {i} at token {n}")
print(f"{sys.argv[3]} vs the defaults: {same} of {len(a)} prompts identical; "
      f"{prefix} of {total} default tokens ({prefix / total:.1%}) before the first divergence")
if diverged:
    print("diverged: " + ", ".join(diverged))
PY
