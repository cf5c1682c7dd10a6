"""Chats with a Lantern worker through the stock OpenAI Python library, streamed and not.

Usage: openai_check.py HOST:PORT MODEL. Prints one JSON object: the whole answer, the streamed
answer, the finish reasons and the usage the library parsed.
"""
import json
import sys

from openai import OpenAI

address, model = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=f"http://{address}/v1", api_key="unused")
messages = [{"role": "user", "content": "Name a fruit."}]

whole = client.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=0)
streamed, stream_finish, stream_usage = "", None, None
for chunk in client.chat.completions.create(
    model=model, messages=messages, max_tokens=8, temperature=0, stream=True,
    stream_options={"include_usage": True},
):
    if chunk.usage is not None:
        stream_usage = chunk.usage.completion_tokens
    for choice in chunk.choices:
        streamed += choice.delta.content or ""
        stream_finish = choice.finish_reason or stream_finish
completion = client.completions.create(model=model, prompt="The sky is", max_tokens=4, temperature=0)

print(json.dumps({
    "whole": whole.choices[0].message.content,
    "whole_finish": whole.choices[0].finish_reason,
    "whole_usage": whole.usage.completion_tokens,
    "streamed": streamed,
    "stream_finish": stream_finish,
    "stream_usage": stream_usage,
    "completion_tokens": completion.usage.completion_tokens,
    "models": [m.id for m in client.models.list().data],
}))
