"""The API contract checks against a running gateway (run by the black-box test
`contract::schemathesis_and_openai_client_against_the_binary`; by hand, see README "API contract").

1. The official `openai` Python client, non-streaming and streaming, and its error mapping.
2. schemathesis against docs/openapi.json: no 5xx, every status code, content type, header and
   body as documented, invalid input refused with 4xx, auth enforced. Two runs, because the API
   has two kinds of bearer token: the tenant token for `/v1/*`, the operator token for `/admin/*`
   and `/metrics` (the unauthenticated paths are checked in the first run). What is left out, and
   why, is in EXCLUDED_CHECKS and EXCLUDED_OPERATIONS below.

Usage: check.py BASE_URL DOC TENANT_TOKEN OPERATOR_TOKEN AGENT
Exits non-zero on the first failed check (missing packages included: they are never skipped).
"""

import os
import subprocess
import sys

import openai


def fail(msg):
    print(f"contract check failed: {msg}", file=sys.stderr)
    sys.exit(1)


def check_openai_client(base, token, agent):
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=token, max_retries=0, timeout=30)
    models = [m.id for m in client.models.list()]
    if agent not in models:
        fail(f"models.list() lacks {agent!r}: {models}")

    reply = client.chat.completions.create(
        model=agent, user="openai-client", messages=[{"role": "user", "content": "hello from the client"}]
    )
    text = reply.choices[0].message.content
    if reply.object != "chat.completion" or "hello from the client" not in (text or ""):
        fail(f"non-streaming reply: {reply!r}")
    if reply.usage is None or reply.usage.total_tokens != reply.usage.prompt_tokens + reply.usage.completion_tokens:
        fail(f"non-streaming usage: {reply.usage!r}")

    stream = client.chat.completions.create(
        model=agent, user="openai-client", stream=True, messages=[{"role": "user", "content": "stream this"}]
    )
    chunks = list(stream)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    if "stream this" not in streamed:
        fail(f"streamed text {streamed!r} from {len(chunks)} chunks")
    if chunks[-1].choices[0].finish_reason != "stop":
        fail(f"last chunk has no finish_reason stop: {chunks[-1]!r}")

    # Errors arrive as the client's typed exceptions (OpenAI's error shape).
    try:
        client.chat.completions.create(model="no-such-agent", messages=[{"role": "user", "content": "x"}])
        fail("an unknown model was accepted")
    except openai.NotFoundError as e:
        if e.code != "model_not_found":
            fail(f"unknown model: code {e.code!r}")
    bad = openai.OpenAI(base_url=f"{base}/v1", api_key="not-a-token", max_retries=0, timeout=30)
    try:
        bad.models.list()
        fail("a wrong token was accepted")
    except openai.AuthenticationError as e:
        if e.code != "invalid_api_key":
            fail(f"wrong token: code {e.code!r}")
    print("openai client: models, completion, stream and errors ok")


# `positive_data_acceptance` is left out: the turn rules (the last message is a non-empty `user`
# message) are not expressible in JSON Schema, so schema-valid bodies are rightly refused with 400.
EXCLUDED_CHECKS = "positive_data_acceptance"
# Every operation runs, `POST /admin/reload` included (it reloads the unchanged config: 200).
EXCLUDED_OPERATIONS = []


def schemathesis(base, doc, token, paths):
    st = os.path.join(os.path.dirname(sys.executable), "schemathesis")
    cmd = [
        st, "run", doc, "--url", base,
        "--header", f"Authorization: Bearer {token}",
        "--include-path-regex", paths,
        "--checks", "all",
        "--exclude-checks", EXCLUDED_CHECKS,
        *[a for op in EXCLUDED_OPERATIONS for a in ("--exclude-operation-id", op)],
        "--max-examples", os.environ.get("CONTRACT_MAX_EXAMPLES", "40"),
        "--seed", os.environ.get("CONTRACT_SEED", "20"),
        "--generation-database", "none",
        "--workers", "1",
        "--request-timeout", "30",
        "--no-color",
        "--output-sanitize", "true",
    ]
    print("running:", " ".join(c if token not in c else "Authorization: Bearer ***" for c in cmd), flush=True)
    rc = subprocess.run(cmd).returncode
    if rc != 0:
        fail(f"schemathesis found problems on {paths} (exit {rc})")


def main():
    if len(sys.argv) != 6:
        fail(__doc__)
    base, doc, tenant_token, operator_token, agent = sys.argv[1:]
    check_openai_client(base, tenant_token, agent)
    # `/ws` is a WebSocket handshake, which schemathesis cannot speak (tests/blackbox/webchat_ws.rs).
    # The channel webhooks (`/channels/...`) are signed by their platform: with no account
    # configured here every request is refused with 401 (tests/blackbox/slack.rs signs real ones).
    schemathesis(base, doc, tenant_token, r"^/(v1/.*|healthz|channels/.*)?$")
    schemathesis(base, doc, operator_token, r"^/(admin/.*|metrics)$")
    print("contract: all checks passed")


if __name__ == "__main__":
    main()
