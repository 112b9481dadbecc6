"""Dequantizes raw ggml blocks with the PyPI `gguf` package, an implementation independent of
kernelgen's, for verify/tests/gguf_py.rs.

    python gguf_dequant.py CASES.json

CASES.json: [{"type": "Q4_K", "input": "x.bin", "output": "x.f32"}, ...]; each input holds
whole blocks of that type; each output gets the float32 values, little-endian.
"""

import json
import sys

import numpy as np
from gguf.constants import GGMLQuantizationType
from gguf.quants import dequantize

for case in json.load(open(sys.argv[1])):
    raw = np.fromfile(case["input"], dtype=np.uint8)
    qtype = GGMLQuantizationType[case["type"]]
    out = dequantize(raw, qtype).astype(np.float32).reshape(-1)
    out.astype("<f4").tofile(case["output"])
    print(case["type"], out.size, flush=True)
