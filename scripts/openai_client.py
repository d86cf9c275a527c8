"""The official openai Python client against the gateway: models, a turn, a streamed turn, and an
error in OpenAI's shape. Usage: openai_client.py BASE_URL TENANT_TOKEN (BASE_URL ends in /v1)."""
import sys

import openai

base, token = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base, api_key=token, max_retries=0)

models = [m.id for m in client.models.list()]
assert "demo" in models, models

reply = client.chat.completions.create(model="demo", user="openai-client",
                                       messages=[{"role": "user", "content": "hello from the client"}])
assert reply.choices[0].message.content == "echo: hello from the client", reply
assert reply.usage is not None and reply.object == "chat.completion", reply

chunks = list(client.chat.completions.create(model="demo", user="openai-client-stream", stream=True,
                                             messages=[{"role": "user", "content": "streamed"}]))
text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
assert text == "echo: streamed", (text, chunks)
assert chunks[-1].choices[0].finish_reason == "stop", chunks[-1]

try:
    client.chat.completions.create(model="no-such-agent", messages=[{"role": "user", "content": "x"}])
    raise AssertionError("an unknown model was accepted")
except openai.NotFoundError as e:
    assert e.code == "model_not_found", e

try:
    openai.OpenAI(base_url=base, api_key="wrong-token", max_retries=0).models.list()
    raise AssertionError("a wrong token was accepted")
except openai.AuthenticationError:
    pass

print("openai client: models, a turn, a streamed turn and errors work")
