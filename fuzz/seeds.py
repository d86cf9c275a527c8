#!/usr/bin/env python3
"""Writes the seed inputs of each fuzz target into fuzz/seeds/TARGET/ from the project's own
fixtures (config examples, the black-box fakes' streams, the protocol's test frames). The
committed corpora in fuzz/corpus/ are these seeds plus what campaigns found, minimised with
`cargo fuzz cmin`. Run from anywhere: python3 fuzz/seeds.py"""
import json, pathlib, struct

here = pathlib.Path(__file__).resolve().parent
repo = here.parent
out = here / "seeds"

def put(target, name, data):
    d = out / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data if isinstance(data, bytes) else data.encode())

# Config loader: every config file the repository ships, and the test fixtures.
for p in sorted([*repo.glob("config/*.json5"), *repo.glob("tests/fixtures/configs/*.json5")]):
    put("config_load", p.name, p.read_bytes())

# Runner, runner side: hello and request frames (4-byte big-endian length, JSON).
def frame(obj):
    body = json.dumps(obj, separators=(",", ":")).encode()
    return struct.pack(">I", len(body)) + body
limits = {"maxOutputBytes": 100, "access": "rw", "diskBudgetBytes": 10}
put("runner_request", "hello", frame({"v": 2, "key": "ab" * 32}))
put("runner_request", "read", frame({"v": 2, "id": 7, "tool": "read", "args": {"path": "a"}, "limits": limits}))
put("runner_request", "exec", frame({"v": 2, "id": 1, "tool": "exec", "args": {"command": "ls -la | wc -l"},
    "limits": {**limits, "access": "ro", "diskBudgetBytes": None}}))
put("runner_request", "v1", frame({"v": 1, "id": 1, "tool": "read", "args": {}, "limits": limits}))

# Runner, host side: Input { sealed: bool, id: u64, expected: u64, max: u16, body: rest }.
def response(sealed, id, expected, body):
    return bytes([1 if sealed else 0]) + struct.pack("<QQH", id, expected, 0xFFFF) + body
ok = json.dumps({"v": 2, "output": "real", "isError": False, "exitCode": 0, "truncated": False, "failure": None}).encode()
quota = json.dumps({"v": 2, "output": "full", "isError": True, "exitCode": None, "truncated": False, "failure": "quota"}).encode()
put("runner_response", "ok", response(True, 5, 5, ok))
put("runner_response", "quota", response(True, 9, 9, quota))
put("runner_response", "wrong-id", response(True, 5, 6, ok))
put("runner_response", "unsealed", response(False, 5, 5, struct.pack(">I", len(ok)) + ok))

# OpenAI-compatible requests, as the black-box API tests and the openai client send them.
for name, body in {
    "plain": {"model": "acme-support", "messages": [{"role": "user", "content": "hello"}]},
    "stream": {"model": "acme-support", "stream": True, "user": "conv-1",
               "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]},
    "parts": {"model": "acme-support", "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
              "temperature": 0.2, "max_tokens": 10},
    "image": {"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
}.items():
    put("openai_request", name, json.dumps(body))

# Provider streams, as the black-box fakes send them; first byte: how the network cuts them.
def sse(events):
    s = ""
    for name, data in events:
        if name:
            s += f"event: {name}\n"
        s += f"data: {data}\n\n"
    return s.encode()
def chunk(delta, finish=None):
    return json.dumps({"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
text = [(None, chunk({"content": w})) for w in ["Hello ", "there"]]
text += [(None, json.dumps({"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 4}})), (None, chunk({}, "stop")), (None, "[DONE]")]
put("sse_openai", "text", b"\x00" + sse(text))
tool = [(None, chunk({"tool_calls": [{"index": 0, "id": "call_fake", "type": "function", "function": {"name": "exec", "arguments": "{\"comm"}}]})),
        (None, chunk({"tool_calls": [{"index": 0, "function": {"arguments": "and\":\"ls\"}"}}]})), (None, chunk({}, "tool_calls")), (None, "[DONE]")]
put("sse_openai", "tool", b"\x07" + sse(tool))
put("sse_openai", "plain", b"\x03" + json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 11, "completion_tokens": 4}}).encode())
put("sse_openai", "error", b"\x01" + sse([(None, json.dumps({"error": {"message": "x", "type": "server_error", "code": "overloaded"}}))]))
def ev(name, obj):
    return (name, json.dumps(obj))
start = ev("message_start", {"type": "message_start", "message": {"id": "msg_1", "role": "assistant", "content": [], "usage": {"input_tokens": 12, "output_tokens": 0}}})
stop = [ev("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 6}}), ev("message_stop", {"type": "message_stop"})]
put("sse_anthropic", "text", b"\x00" + sse([start,
    ev("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    ev("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}}),
    ev("ping", {"type": "ping"}),
    ev("content_block_stop", {"type": "content_block_stop", "index": 0}), *stop]))
put("sse_anthropic", "tool", b"\x05" + sse([start,
    ev("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "t1", "name": "read", "input": {}}}),
    ev("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"path\":"}}),
    ev("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "\"a\"}"}}), *stop]))
put("sse_anthropic", "error", b"\x02" + sse([ev("error", {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}})]))
put("sse_anthropic", "plain", b"\x04" + json.dumps({"id": "m", "type": "message", "role": "assistant", "content": [{"type": "text", "text": "hi"},
    {"type": "tool_use", "id": "t", "name": "list", "input": {"path": "."}}], "usage": {"input_tokens": 1, "output_tokens": 2}}).encode())

# Telegram updates, as the fake Bot API and the unit tests send them.
user = {"id": 111, "is_bot": False, "first_name": "User111", "username": "user111", "language_code": "en"}
private = {"id": 111, "type": "private", "first_name": "User", "username": "user111"}
group = {"id": -100123, "type": "supergroup", "title": "Team", "is_forum": True}
for name, upd in {
    "private": {"update_id": 1000, "message": {"message_id": 2, "date": 1764000000, "chat": private, "from": user, "text": "hello"}},
    "mention": {"update_id": 1001, "message": {"message_id": 3, "date": 1764000000, "chat": group, "from": user, "text": "hi @acme_bot",
                "message_thread_id": 7, "is_topic_message": True}},
    "photo": {"update_id": 1002, "message": {"message_id": 4, "date": 1764000000, "chat": private, "from": user,
              "photo": [{"file_id": "f", "file_unique_id": "u", "width": 1, "height": 1}], "caption": "@acme_bot look"}},
    "edited": {"update_id": 1003, "edited_message": {"message_id": 2, "date": 1764000000, "edit_date": 1764000001, "chat": private, "from": user, "text": "hello!"}},
    "no-id": {"message": {"message_id": 2}},
}.items():
    put("telegram_update", name, json.dumps(upd))

# Slack event callbacks, as the fake Slack and the unit tests send them.
def cb(event):
    return {"token": "unused", "team_id": "T0ACME", "api_app_id": "A0APP", "type": "event_callback",
            "event_id": "Ev0001", "event_time": 1764000000, "event": event}
for name, payload in {
    "dm": cb({"type": "message", "channel": "D0ALICE01", "channel_type": "im", "user": "U0ALICE01", "text": "hi &amp; &lt;b&gt;", "ts": "1764000000.000100"}),
    "mention": cb({"type": "app_mention", "channel": "C0GENERAL1", "user": "U0ALICE01", "text": "<@U0ACMEBOT|acme> help", "ts": "1764000000.000200", "thread_ts": "1764000000.000100"}),
    "file": cb({"type": "message", "subtype": "file_share", "channel": "D0ALICE01", "user": "U0ALICE01", "text": "", "ts": "1764000000.000300", "files": [{"id": "F0"}]}),
    "bot": cb({"type": "message", "subtype": "bot_message", "channel": "C0GENERAL1", "bot_id": "B0", "text": "x", "ts": "1764000000.000400"}),
    "other-team": dict(cb({"type": "message", "channel": "C0GENERAL1", "user": "U0ALICE01", "text": "x", "ts": "1"}), team_id="T0OTHER"),
}.items():
    put("slack_event", name, json.dumps(payload))

# Signal events (signal-cli's SSE `data:`), as the fake daemon and the unit tests send them.
def sig(envelope, account="+15550000001"):
    return {"account": account, "envelope": envelope}
alice = {"source": "+15557770001", "sourceNumber": "+15557770001", "sourceUuid": "a11ce000-0000-4000-8000-00000000a11c",
         "sourceName": "Alice", "sourceDevice": 1, "timestamp": 1764000000123, "serverReceivedTimestamp": 1764000000200,
         "serverDeliveredTimestamp": 1764000000300}
for name, event in {
    "dm": sig(dict(alice, dataMessage={"timestamp": 1764000000123, "message": "hello", "expiresInSeconds": 0, "viewOnce": False})),
    "group-mention": sig(dict(alice, dataMessage={"timestamp": 1764000000123, "message": "\ufffc help",
        "mentions": [{"name": "+15550000001", "number": "+15550000001", "uuid": "aaaaaaaa-0000-4000-8000-000000000001", "start": 0, "length": 1}],
        "groupInfo": {"groupId": "+/v7+/v7+/v7+/v7+/v7+/v7+/v7+/v7+/v7+/v7+/s=", "groupName": "Team", "revision": 2, "type": "DELIVER"}})),
    "attachment": sig(dict(alice, dataMessage={"timestamp": 1764000000123, "attachments": [{"contentType": "image/jpeg"}]})),
    "sync": sig({"sourceNumber": "+15550000001", "sourceUuid": "aaaaaaaa-0000-4000-8000-000000000001", "timestamp": 1,
                 "syncMessage": {"sentMessage": {"destination": "+15557770001", "timestamp": 1, "message": "x"}}}),
    "receipt": sig(dict(alice, receiptMessage={"when": 1, "isDelivery": True, "timestamps": [1]})),
    "other-account": sig(dict(alice, dataMessage={"message": "x"}), account="+15550000002"),
}.items():
    put("signal_event", name, json.dumps(event))

# WhatsApp Cloud API webhook deliveries, as the fake Graph API side and the unit tests send them.
def wa(value):
    value = dict(value, messaging_product="whatsapp",
                 metadata={"display_phone_number": "15550001001", "phone_number_id": "1001"})
    return {"object": "whatsapp_business_account",
            "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": value}]}]}
for name, delivery in {
    "text": wa({"contacts": [{"profile": {"name": "Kerry"}, "wa_id": "16315551181"}],
                "messages": [{"from": "16315551181", "id": "wamid.A1", "timestamp": "1700000000", "type": "text", "text": {"body": "Hello"}}]}),
    "image": wa({"messages": [{"from": "16315551181", "id": "wamid.A2", "type": "image", "image": {"id": "m1", "mime_type": "image/jpeg"}}]}),
    "button": wa({"messages": [{"from": "16315551181", "id": "wamid.A3", "type": "interactive",
                                "interactive": {"type": "button_reply", "button_reply": {"id": "b1", "title": "Yes"}}}]}),
    "group": wa({"messages": [{"from": "16315551181", "id": "wamid.A4", "group_id": "120363", "type": "text", "text": {"body": "x"}}]}),
    "failed-status": wa({"statuses": [{"id": "wamid.OUT1", "status": "failed", "timestamp": "1", "recipient_id": "16315551181",
                                       "errors": [{"code": 131047, "title": "Re-engagement message"}]}]}),
    "account-update": {"object": "whatsapp_business_account", "entry": [{"changes": [{"field": "account_update", "value": {}}]}]},
}.items():
    put("whatsapp_delivery", name, json.dumps(delivery))

# BlueBubbles webhook deliveries, as the fake BlueBubbles server and the unit tests send them.
def bb(chat, address, text, **extra):
    data = {"guid": "p:0/5E1D0001-7A2B-4C3D-8E9F-000000000001", "text": text, "isFromMe": False,
            "handle": {"address": address, "service": "iMessage"}, "attachments": [], "itemType": 0,
            "groupActionType": 0, "associatedMessageGuid": None, "associatedMessageType": None,
            "chats": [{"guid": chat, "style": 43 if ";+;" in chat else 45, "displayName": ""}]}
    data.update(extra)
    return {"type": "new-message", "data": data}
for name, payload in {
    "dm": bb("iMessage;-;+15550001111", "+15550001111", "hello"),
    "group": bb("iMessage;+;chat100000001", "Bob@Example.com", "hi team"),
    "photo": bb("iMessage;-;+15550001111", "+15550001111", "\ufffc", attachments=[{"guid": "at_1"}]),
    "from-me": bb("iMessage;-;+15550001111", "+15550001111", "mine", isFromMe=True),
    "tapback": bb("iMessage;-;+15550001111", "+15550001111", "Loved", associatedMessageGuid="p:0/A", associatedMessageType=2000),
    "typing": {"type": "typing-indicator", "data": {"display": True, "guid": "iMessage;-;+15550001111"}},
}.items():
    put("imessage_webhook", name, json.dumps(payload))
