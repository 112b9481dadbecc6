"""kernelgen serve through the official `openai` Python client.

Usage: python openai_client.py BASE_URL MODEL
Exits non-zero (an AssertionError with the reason) when any check fails.
"""

import sys

import openai
from openai import OpenAI

base_url, model = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)

# Completion.
c = client.completions.create(model=model, prompt="The capital of France is", max_tokens=8, temperature=0)
assert c.object == "text_completion", c
assert len(c.choices) == 1 and c.choices[0].text, c
assert c.usage.completion_tokens == 8 and c.usage.total_tokens == c.usage.prompt_tokens + 8, c.usage
assert c.choices[0].finish_reason == "length", c

# Chat.
messages = [{"role": "user", "content": "What is the capital of France?"}]
r = client.chat.completions.create(model=model, messages=messages, max_tokens=16, temperature=0)
answer = r.choices[0].message.content
assert r.choices[0].message.role == "assistant" and "Paris" in answer, r
assert r.usage.completion_tokens <= 16, r.usage

# Streaming chat: the same text, one id, usage at the end.
stream = client.chat.completions.create(
    model=model, messages=messages, max_tokens=16, temperature=0, stream=True,
    stream_options={"include_usage": True},
)
ids, parts, usage, reasons = set(), [], None, []
for chunk in stream:
    ids.add(chunk.id)
    if chunk.usage is not None:
        usage = chunk.usage
    for ch in chunk.choices:
        if ch.delta.content:
            parts.append(ch.delta.content)
        if ch.finish_reason:
            reasons.append(ch.finish_reason)
assert "".join(parts) == answer, ("".join(parts), answer)
assert len(ids) == 1, ids
assert usage is not None and usage.completion_tokens == r.usage.completion_tokens, usage
assert len(reasons) == 1, reasons

# n = 2 and seeds: the same seed gives the same texts.
kw = dict(model=model, prompt="Once upon a time", max_tokens=8, temperature=1.0, n=2, seed=5)
a = client.completions.create(**kw)
b = client.completions.create(**kw)
assert len(a.choices) == 2, a
assert [x.text for x in a.choices] == [x.text for x in b.choices], (a, b)

# Stop strings.
s = client.completions.create(model=model, prompt="The capital of France is", max_tokens=12, temperature=0,
                              stop=[" Paris"])
full = client.completions.create(model=model, prompt="The capital of France is", max_tokens=12, temperature=0)
if " Paris" in full.choices[0].text:
    assert s.choices[0].text == full.choices[0].text.split(" Paris")[0], (s, full)
    assert s.choices[0].finish_reason == "stop", s

# Errors surface as the client's exceptions with the server's message.
try:
    client.completions.create(model=model, prompt="x", max_tokens=100000)
    raise AssertionError("max_tokens beyond the context was accepted")
except openai.BadRequestError as e:
    assert "max_tokens" in str(e), e
try:
    client.completions.create(model="no-such-model", prompt="x", max_tokens=2)
    raise AssertionError("an unknown model was accepted")
except openai.NotFoundError as e:
    assert "no-such-model" in str(e), e

print("openai client: all checks passed")
