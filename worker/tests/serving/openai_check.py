"""Chats with a Lantern worker through the stock OpenAI Python library, streamed and not, with
the parameters users rely on: logprobs, n, best_of, response_format, penalties, logit_bias and
vLLM's min_tokens and ignore_eos.

Usage: openai_check.py HOST:PORT MODEL EOS_ID. Prints one JSON object of what the library parsed.
"""
import json
import sys

from openai import OpenAI

address, model, eos = sys.argv[1], sys.argv[2], sys.argv[3]
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

# Log-probabilities, whole and streamed: the chosen token's and two alternatives.
chosen = client.chat.completions.create(
    model=model, messages=messages, max_tokens=4, temperature=0, logprobs=True, top_logprobs=2)
streamed_logprobs = []
for chunk in client.chat.completions.create(
    model=model, messages=messages, max_tokens=4, temperature=0, logprobs=True, top_logprobs=2, stream=True,
):
    for choice in chunk.choices:
        if choice.logprobs is not None and choice.logprobs.content:
            streamed_logprobs += [[e.token, e.logprob] for e in choice.logprobs.content]
legacy = client.completions.create(model=model, prompt="The sky is", max_tokens=3, temperature=0, logprobs=2)
# How eval harnesses score a text (lm-evaluation-harness's loglikelihood): the prompt echoed with
# its own log-probabilities.
scored = client.completions.create(
    model=model, prompt="The sky is blue", max_tokens=1, temperature=0, logprobs=1, echo=True)

# Several choices from one prompt, and the most likely of several.
many = client.chat.completions.create(model=model, messages=messages, max_tokens=6, temperature=1, n=3, seed=7)
many_streamed = {}
for chunk in client.chat.completions.create(
    model=model, messages=messages, max_tokens=6, temperature=1, n=2, seed=7, stream=True,
):
    for choice in chunk.choices:
        many_streamed[choice.index] = many_streamed.get(choice.index, "") + (choice.delta.content or "")
best = client.completions.create(model=model, prompt="The sky is", max_tokens=4, temperature=1, n=1, best_of=3)

# Structured output: JSON matching a schema.
schema = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"], "additionalProperties": False,
}
structured = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "Give a name and an age."}], max_tokens=64, temperature=0,
    response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}},
)
json_object = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "Describe the sky in JSON."}], max_tokens=64,
    temperature=0, response_format={"type": "json_object"},
)

# Tool calling: required (whole), named (streamed), then the tool's answer handed back.
weather = [{"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                   "additionalProperties": False},
}}]
ask = [{"role": "user", "content": "What is the weather in Paris?"}]
called = client.chat.completions.create(
    model=model, messages=ask, tools=weather, tool_choice="required", parallel_tool_calls=False, max_tokens=48,
    temperature=0)
call = called.choices[0].message.tool_calls[0]
streamed_call, streamed_call_finish = {"arguments": ""}, None
for chunk in client.chat.completions.create(
    model=model, messages=ask, tools=weather, max_tokens=48, temperature=0, stream=True,
    tool_choice={"type": "function", "function": {"name": "get_weather"}},
):
    for choice in chunk.choices:
        for delta in choice.delta.tool_calls or []:
            streamed_call["name"] = delta.function.name or streamed_call.get("name")
            streamed_call["arguments"] += delta.function.arguments or ""
        streamed_call_finish = choice.finish_reason or streamed_call_finish
history = ask + [
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": call.id, "type": "function", "function": {"name": call.function.name, "arguments": call.function.arguments}},
    ]},
    {"role": "tool", "tool_call_id": call.id, "content": '{"temperature_celsius": 21}'},
]
answered = client.chat.completions.create(model=model, messages=history, tools=weather, max_tokens=16, temperature=0)
# The same, streamed: an answer in words comes as it is generated, not at the end.
answer_pieces = []
for chunk in client.chat.completions.create(
    model=model, messages=history, tools=weather, max_tokens=16, temperature=0, stream=True,
):
    answer_pieces += [c.delta.content for c in chunk.choices if c.delta.content]

# End-of-sequence pushed to the front: the answer ends at once, unless min_tokens or ignore_eos.
ending = {"logit_bias": {eos: 100}, "max_tokens": 5, "temperature": 0}
ends_now = client.chat.completions.create(model=model, messages=messages, **ending)
ends_later = client.chat.completions.create(model=model, messages=messages, extra_body={"min_tokens": 3}, **ending)
never_ends = client.chat.completions.create(model=model, messages=messages, extra_body={"ignore_eos": True}, **ending)
# A prompt that repeats itself, continued greedily with and without the penalties.
repeating = {"model": model, "prompt": "1, 1, 1, 1, 1, 1,", "max_tokens": 6, "temperature": 0}
plain = client.completions.create(**repeating)
penalized = client.completions.create(presence_penalty=2, frequency_penalty=2, **repeating)

print(json.dumps({
    "whole": whole.choices[0].message.content,
    "whole_finish": whole.choices[0].finish_reason,
    "whole_usage": whole.usage.completion_tokens,
    "streamed": streamed,
    "stream_finish": stream_finish,
    "stream_usage": stream_usage,
    "completion_tokens": completion.usage.completion_tokens,
    "models": [m.id for m in client.models.list().data],
    "logprobs": [
        {"token": e.token, "logprob": e.logprob, "bytes": e.bytes,
         "top": [[t.token, t.logprob] for t in e.top_logprobs]}
        for e in chosen.choices[0].logprobs.content
    ],
    "logprobs_text": chosen.choices[0].message.content,
    "streamed_logprobs": streamed_logprobs,
    "legacy": {
        "tokens": legacy.choices[0].logprobs.tokens,
        "token_logprobs": legacy.choices[0].logprobs.token_logprobs,
        "top_logprobs": legacy.choices[0].logprobs.top_logprobs,
        "text_offset": legacy.choices[0].logprobs.text_offset,
        "text": legacy.choices[0].text,
    },
    "scored": {
        "text": scored.choices[0].text,
        "tokens": scored.choices[0].logprobs.tokens,
        "token_logprobs": scored.choices[0].logprobs.token_logprobs,
        "text_offset": scored.choices[0].logprobs.text_offset,
        "prompt_tokens": scored.usage.prompt_tokens,
    },
    "many": [[c.index, c.message.content] for c in many.choices],
    "many_usage": many.usage.completion_tokens,
    "many_streamed": many_streamed,
    "best": [best.choices[0].text, best.choices[0].logprobs, best.usage.completion_tokens],
    "structured": structured.choices[0].message.content,
    "json_object": json_object.choices[0].message.content,
    "ends_now": [ends_now.choices[0].finish_reason, ends_now.usage.completion_tokens],
    "ends_later": [ends_later.choices[0].finish_reason, ends_later.usage.completion_tokens],
    "never_ends": [never_ends.choices[0].finish_reason, never_ends.usage.completion_tokens],
    "repeating": [plain.choices[0].text, penalized.choices[0].text],
    "called": [called.choices[0].finish_reason, call.type, call.function.name, call.function.arguments, call.id],
    "streamed_call": [streamed_call_finish, streamed_call.get("name"), streamed_call["arguments"]],
    "answered": answered.choices[0].finish_reason,
    "answer": [answered.choices[0].message.content, answer_pieces],
}))
