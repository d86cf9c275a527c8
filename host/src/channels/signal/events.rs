//! One `receive` event of signal-cli's event stream, read for one account: the JSON object
//! `{ "account": "+1…", "envelope": { "sourceNumber", "sourceUuid", "timestamp", "dataMessage":
//! { "message", "groupInfo": { "groupId", "type" }, "mentions": [ { "number", "uuid", "start",
//! "length" } ], "attachments", … }, "syncMessage", "receiptMessage", … } }` (see
//! `JsonReceiveMessageHandler` and `JsonMessageEnvelope` in signal-cli). Never panics on any input;
//! a malformed event is named by its kind, never by its content.

use serde_json::Value;

use super::config::{group_id, number, uuid};

/// Who the account is: its number, and its ACI once known.
#[derive(Debug, Clone, Copy)]
pub struct Me<'a> {
    pub number: &'a str,
    pub uuid: Option<&'a str>,
}

/// A message for the account, as far as the adapter takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalMessage {
    /// The sender's number (E.164) when the envelope shows it (Signal lets users hide theirs).
    pub number: Option<String>,
    /// The sender's ACI.
    pub uuid: Option<String>,
    /// The sender's timestamp of the message: with the sender, it names the message.
    pub timestamp: i64,
    /// The group it was sent in (its 32 bytes); `None` for a direct message.
    pub group: Option<[u8; 32]>,
    /// The text, without the placeholders of mentions of the account.
    pub text: String,
    /// Attachments or a sticker only, no text.
    pub non_text: bool,
    /// The account was mentioned (`dataMessage.mentions`).
    pub mentioned: bool,
}

/// What an event carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Message(SignalMessage),
    /// Sent by the account itself (a sync message from its phone, its own message): ignored; it
    /// tells the account's own ACI.
    Own(Option<String>),
    /// Not a message for the agent (a receipt, typing, an edit, a group update...): why.
    Ignored(&'static str),
    /// Unreadable: what is wrong with it (never its content).
    Malformed(&'static str),
}

/// Reads one event's `data` for the account `me`.
pub fn parse_event(data: &str, me: Me<'_>) -> Parsed {
    let Ok(v) = serde_json::from_str::<Value>(data) else { return Parsed::Malformed("an event that is not JSON") };
    if !v.is_object() {
        return Parsed::Malformed("an event that is not a JSON object");
    }
    match v.get("account").and_then(Value::as_str) {
        Some(a) if number(a).as_deref() == Some(me.number) => {}
        Some(_) => return Parsed::Ignored("an event for another account of the daemon"),
        None => return Parsed::Malformed("an event without its account"),
    }
    if v.get("exception").is_some_and(|e| !e.is_null()) {
        return Parsed::Malformed("an envelope the daemon could not decrypt");
    }
    let Some(env) = v.get("envelope").filter(|e| e.is_object()) else {
        return Parsed::Malformed("an event without an envelope");
    };
    let field = |k: &str| env.get(k).and_then(Value::as_str);
    let mut from_number = field("sourceNumber").and_then(number);
    let mut from_uuid = field("sourceUuid").and_then(uuid);
    if from_number.is_none() && from_uuid.is_none() {
        // signal-cli's older `source`: a number or an ACI.
        let legacy = field("source");
        from_number = legacy.and_then(number);
        from_uuid = legacy.and_then(uuid);
    }
    if from_number.is_none() && from_uuid.is_none() {
        return Parsed::Malformed("an envelope without a readable sender");
    }
    if from_number.as_deref() == Some(me.number) || (from_uuid.is_some() && from_uuid.as_deref() == me.uuid) {
        return Parsed::Own(from_uuid);
    }
    if env.get("syncMessage").is_some_and(|s| !s.is_null()) {
        return Parsed::Ignored("a sync message from another device");
    }
    let Some(timestamp) = env.get("timestamp").and_then(Value::as_i64).filter(|t| *t > 0) else {
        return Parsed::Malformed("an envelope without a timestamp");
    };
    let dm = match env.get("dataMessage") {
        None | Some(Value::Null) => {
            return Parsed::Ignored(if env.get("editMessage").is_some_and(|e| !e.is_null()) {
                "an edit of an earlier message"
            } else {
                "a receipt, typing indicator, call or story"
            });
        }
        Some(d) if d.is_object() => d,
        Some(_) => return Parsed::Malformed("a dataMessage that is not an object"),
    };
    let present = |k: &str| dm.get(k).is_some_and(|x| !x.is_null());
    if present("reaction") || present("remoteDelete") || present("pollVote") || present("pinMessage") {
        return Parsed::Ignored("a reaction, deletion, vote or pin");
    }
    if dm.get("isExpirationUpdate").and_then(Value::as_bool) == Some(true) {
        return Parsed::Ignored("a change of the disappearing-messages timer");
    }
    let group = match dm.get("groupInfo") {
        None | Some(Value::Null) => None,
        Some(g) => {
            let Some(id) = g.get("groupId").and_then(Value::as_str).and_then(group_id) else {
                return Parsed::Malformed("a group message with an unreadable groupId");
            };
            if g.get("type").and_then(Value::as_str) == Some("UPDATE") {
                return Parsed::Ignored("a group update");
            }
            Some(id)
        }
    };
    let text = match dm.get("message") {
        None | Some(Value::Null) => "",
        Some(Value::String(t)) => t.as_str(),
        Some(_) => return Parsed::Malformed("a message whose text is not a string"),
    };
    let mentions = match dm.get("mentions") {
        None | Some(Value::Null) => &[][..],
        Some(Value::Array(m)) => m.as_slice(),
        Some(_) => return Parsed::Malformed("mentions that are not a list"),
    };
    let mut mine = Vec::new();
    for m in mentions {
        let (Some(start), Some(length)) =
            (m.get("start").and_then(Value::as_u64), m.get("length").and_then(Value::as_u64))
        else {
            return Parsed::Malformed("a mention without a readable position");
        };
        let is_me = m.get("number").and_then(Value::as_str).and_then(number).as_deref() == Some(me.number)
            || (me.uuid.is_some() && m.get("uuid").and_then(Value::as_str).and_then(uuid).as_deref() == me.uuid);
        if is_me {
            mine.push((start, length));
        }
    }
    let text = without(text, &mine);
    let non_text = dm.get("attachments").and_then(Value::as_array).is_some_and(|a| !a.is_empty()) || present("sticker");
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.is_empty() && !non_text {
        return Parsed::Ignored("a message without text or attachments");
    }
    Parsed::Message(SignalMessage {
        number: from_number,
        uuid: from_uuid,
        timestamp,
        group,
        non_text: text.is_empty(),
        text,
        mentioned: !mine.is_empty(),
    })
}

/// `text` without the ranges (UTF-16 `start`, `length`) of the account's own mentions; ranges
/// outside the text are ignored.
fn without(text: &str, ranges: &[(u64, u64)]) -> String {
    if ranges.is_empty() {
        return text.to_string();
    }
    let units: Vec<u16> = text.encode_utf16().collect();
    let mut keep = vec![true; units.len()];
    for &(start, length) in ranges {
        let (Ok(start), Ok(length)) = (usize::try_from(start), usize::try_from(length)) else { continue };
        let end = start.saturating_add(length).min(units.len());
        for k in keep.iter_mut().take(end).skip(start) {
            *k = false;
        }
    }
    let kept: Vec<u16> = units.into_iter().zip(keep).filter(|(_, k)| *k).map(|(u, _)| u).collect();
    String::from_utf16_lossy(&kept)
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use serde_json::json;

    use super::*;

    const ME: &str = "+15550000001";
    const MY_ACI: &str = "00000000-0000-4000-8000-0000000000aa";
    const ALICE: &str = "+15551110001";
    const ALICE_ACI: &str = "11111111-1111-4111-8111-111111111111";

    fn me() -> Me<'static> {
        Me { number: ME, uuid: Some(MY_ACI) }
    }

    fn event(envelope: Value) -> String {
        json!({ "account": ME, "envelope": envelope }).to_string()
    }

    fn from_alice(data: Value) -> Value {
        json!({ "source": ALICE, "sourceNumber": ALICE, "sourceUuid": ALICE_ACI, "sourceName": "Alice",
                "sourceDevice": 1, "timestamp": 1700000000123i64, "serverReceivedTimestamp": 1700000000200i64,
                "serverDeliveredTimestamp": 1700000000300i64, "dataMessage": data })
    }

    fn msg(p: Parsed) -> SignalMessage {
        match p {
            Parsed::Message(m) => m,
            other => panic!("not a message: {other:?}"),
        }
    }

    #[test]
    fn direct_and_group_messages_and_mentions_are_read() {
        let dm = msg(parse_event(
            &event(from_alice(
                json!({ "timestamp": 1700000000123i64, "message": " hello  there ", "expiresInSeconds": 0, "viewOnce": false }),
            )),
            me(),
        ));
        assert_eq!(dm.number.as_deref(), Some(ALICE));
        assert_eq!(dm.uuid.as_deref(), Some(ALICE_ACI));
        assert_eq!(
            (dm.timestamp, dm.group, dm.text.as_str(), dm.mentioned, dm.non_text),
            (1700000000123, None, "hello there", false, false)
        );

        let gid = base64::engine::general_purpose::STANDARD.encode([0xfb; 32]);
        let group = |mentions: Value| {
            msg(parse_event(
                &event(from_alice(json!({ "timestamp": 1, "message": "\u{fffc} what's up \u{fffc}",
                    "mentions": mentions, "groupInfo": { "groupId": gid, "groupName": "Team", "revision": 3, "type": "DELIVER" } }))),
                me(),
            ))
        };
        let g = group(json!([ { "name": ME, "number": ME, "uuid": MY_ACI, "start": 0, "length": 1 },
                              { "name": ALICE, "number": ALICE, "uuid": ALICE_ACI, "start": 11, "length": 1 } ]));
        assert_eq!(g.group, Some([0xfb; 32]));
        assert!(g.mentioned);
        assert_eq!(g.text, "what's up \u{fffc}", "only the account's own mention is taken out");
        let by_aci = group(json!([ { "uuid": MY_ACI, "start": 0, "length": 1 } ]));
        assert!(by_aci.mentioned, "a mention by ACI only (the number hidden)");
        let other = group(json!([ { "number": ALICE, "uuid": ALICE_ACI, "start": 0, "length": 1 } ]));
        assert!(!other.mentioned, "someone else was mentioned");
        let none = group(Value::Null);
        assert!(!none.mentioned);

        let hidden = msg(parse_event(
            &event(json!({ "sourceUuid": ALICE_ACI, "timestamp": 5, "dataMessage": { "message": "hi" } })),
            me(),
        ));
        assert_eq!((hidden.number, hidden.uuid.as_deref()), (None, Some(ALICE_ACI)), "a sender who hides the number");
        let photo =
            msg(parse_event(&event(from_alice(json!({ "attachments": [ { "contentType": "image/jpeg" } ] }))), me()));
        assert!(photo.non_text && photo.text.is_empty());
    }

    #[test]
    fn own_sync_and_other_events_are_ignored() {
        let own = json!({ "account": ME, "envelope": { "source": ME, "sourceNumber": ME, "sourceUuid": MY_ACI, "sourceDevice": 2,
            "timestamp": 9, "syncMessage": { "sentMessage": { "destination": ALICE, "timestamp": 9, "message": "from my phone" } } } });
        assert_eq!(parse_event(&own.to_string(), Me { number: ME, uuid: None }), Parsed::Own(Some(MY_ACI.into())));
        let other_account = json!({ "account": "+15550000002", "envelope": from_alice(json!({ "message": "for B" })) });
        assert_eq!(
            parse_event(&other_account.to_string(), me()),
            Parsed::Ignored("an event for another account of the daemon")
        );
        let gid = base64::engine::general_purpose::STANDARD.encode([1; 32]);
        for ignored in [
            json!({ "sourceNumber": ALICE, "timestamp": 1, "receiptMessage": { "when": 1, "isDelivery": true, "timestamps": [1] } }),
            json!({ "sourceNumber": ALICE, "timestamp": 1, "typingMessage": { "action": "STARTED", "timestamp": 1 } }),
            json!({ "sourceNumber": ALICE, "timestamp": 1, "editMessage": { "targetSentTimestamp": 1, "dataMessage": { "message": "x" } } }),
            json!({ "sourceNumber": ALICE, "timestamp": 1, "syncMessage": { "readMessages": [] } }),
            from_alice(
                json!({ "reaction": { "emoji": "👍", "targetAuthor": ME, "targetSentTimestamp": 1, "isRemove": false } }),
            ),
            from_alice(json!({ "remoteDelete": { "timestamp": 1 } })),
            from_alice(json!({ "message": null, "isExpirationUpdate": true })),
            from_alice(json!({ "groupInfo": { "groupId": gid, "type": "UPDATE" } })),
            from_alice(json!({ "message": "   " })),
        ] {
            assert!(matches!(parse_event(&event(ignored.clone()), me()), Parsed::Ignored(_)), "{ignored}");
        }
    }

    #[test]
    fn malformed_events_are_named_by_kind_and_never_panic() {
        let cases: Vec<(String, &str)> = vec![
            ("not json".into(), "an event that is not JSON"),
            ("[1]".into(), "an event that is not a JSON object"),
            (json!({ "envelope": {} }).to_string(), "an event without its account"),
            (json!({ "account": ME }).to_string(), "an event without an envelope"),
            (
                json!({ "account": ME, "exception": { "message": "x", "type": "ProtocolInvalidMessageException" } })
                    .to_string(),
                "an envelope the daemon could not decrypt",
            ),
            (
                event(json!({ "timestamp": 1, "dataMessage": { "message": "x" } })),
                "an envelope without a readable sender",
            ),
            (
                event(json!({ "sourceNumber": ALICE, "dataMessage": { "message": "x" } })),
                "an envelope without a timestamp",
            ),
            (event(from_alice(json!("text"))), "a dataMessage that is not an object"),
            (event(from_alice(json!({ "message": 5 }))), "a message whose text is not a string"),
            (
                event(from_alice(json!({ "message": "x", "groupInfo": { "groupId": "nope" } }))),
                "a group message with an unreadable groupId",
            ),
            (event(from_alice(json!({ "message": "x", "mentions": { "a": 1 } }))), "mentions that are not a list"),
            (
                event(from_alice(json!({ "message": "x", "mentions": [ { "number": ME } ] }))),
                "a mention without a readable position",
            ),
        ];
        for (data, kind) in cases {
            assert_eq!(parse_event(&data, me()), Parsed::Malformed(kind), "{data}");
        }
        // Positions past the text, huge numbers, odd UTF-16: read, never a panic.
        let odd = event(from_alice(
            json!({ "message": "🙂x", "mentions": [ { "number": ME, "start": 1, "length": u64::MAX },
                                                                           { "number": ME, "start": u64::MAX, "length": 3 } ] }),
        ));
        assert!(matches!(parse_event(&odd, me()), Parsed::Message(_) | Parsed::Ignored(_)));
        for junk in ["", "{", "null", "{\"account\":null}", "{\"account\":\"+15550000001\",\"envelope\":[]}"] {
            let _ = parse_event(junk, me());
        }
    }
}
