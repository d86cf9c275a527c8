//! A small server-sent-events reader for streaming model responses, and the one loop that reads
//! a provider's reply (streamed or not) through its `ReplyFormat`.

use bytes::{Buf, BytesMut};
use futures_util::StreamExt;
use serde_json::Value;
use tokio::sync::mpsc;

use super::openai::{MAX_REPLY_BYTES, transport, upstream_error};
use super::{ModelError, ModelReply};

/// One SSE event: its `event:` name (if any) and the joined `data:` lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub event: Option<String>,
    pub data: String,
}

/// Longest single SSE line accepted from a provider.
const MAX_LINE: usize = 1 << 20;

/// Incremental parser: feed bytes, take complete events.
#[derive(Default)]
pub struct Parser {
    buf: BytesMut,
    event: Option<String>,
    data: Vec<String>,
}

impl Parser {
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<Event>, String> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
            let line = self.buf.split_to(pos + 1);
            let line = std::str::from_utf8(&line[..pos]).map_err(|_| "invalid UTF-8 in event stream".to_string())?;
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.is_empty() {
                if !self.data.is_empty() {
                    out.push(Event { event: self.event.take(), data: self.data.join("\n") });
                    self.data.clear();
                }
                self.event = None;
            } else if let Some(v) = line.strip_prefix("data:") {
                self.data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
            } else if let Some(v) = line.strip_prefix("event:") {
                self.event = Some(v.trim().to_string());
            }
            // Comments (":") and other fields are ignored, as the SSE spec says.
        }
        if self.buf.len() > MAX_LINE {
            self.buf.advance(self.buf.len());
            return Err("event stream line too long".into());
        }
        Ok(out)
    }
}

/// How one provider's reply is folded: the events of its stream, or the one JSON body of a server
/// that ignores `stream: true`.
pub trait ReplyFormat: Default {
    /// Applies one event's data, pushing the text it carried to `deltas`; true when the event
    /// ends the reply.
    fn event(&mut self, data: &str, deltas: &mut Vec<String>) -> Result<bool, ModelError>;
    /// Applies a whole non-streamed reply; returns its text.
    fn body(&mut self, body: &Value) -> Result<Option<String>, ModelError>;
    /// The reply, once the stream has ended (`ended`: an event said it was the last).
    fn finish(self, ended: bool) -> Result<ModelReply, ModelError>;
}

/// A streamed reply being read: body chunks in, text deltas out, the folded reply at the end.
/// Events after the one that ends the reply are not looked at.
#[derive(Default)]
pub struct StreamReader<F> {
    parser: Parser,
    format: F,
    ended: bool,
}

impl<F: ReplyFormat> StreamReader<F> {
    /// Feeds one chunk of the body as it arrived; returns the text deltas it completed.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<String>, ModelError> {
        let mut deltas = Vec::new();
        if self.ended {
            return Ok(deltas);
        }
        for ev in self.parser.feed(chunk).map_err(ModelError::Protocol)? {
            if self.format.event(&ev.data, &mut deltas)? {
                self.ended = true;
                break;
            }
        }
        Ok(deltas)
    }

    /// Whether an event has ended the reply (nothing more needs to be read).
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// The reply, when the body has ended or the reply did.
    pub fn finish(self) -> Result<ModelReply, ModelError> {
        self.format.finish(self.ended)
    }
}

/// Folds a non-streamed JSON body into a reply; returns its text too.
pub fn read_body<F: ReplyFormat>(body: &[u8]) -> Result<(Option<String>, ModelReply), ModelError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| ModelError::Protocol(format!("invalid JSON: {e}")))?;
    let mut format = F::default();
    let text = format.body(&v)?;
    Ok((text, format.finish(true)?))
}

/// Reads a provider's answer in format `F`, sending text to `deltas` as it arrives.
pub(crate) async fn read_reply<F: ReplyFormat>(
    resp: reqwest::Response,
    deltas: &mpsc::Sender<String>,
) -> Result<ModelReply, ModelError> {
    if !resp.status().is_success() {
        return Err(upstream_error(resp).await);
    }
    let is_sse = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let mut stream = resp.bytes_stream();
    if !is_sse {
        // Some servers ignore `stream: true`; accept a plain JSON reply too.
        let mut body = Vec::new();
        while let Some(chunk) = stream.next().await {
            body.extend_from_slice(&chunk.map_err(transport)?);
            if body.len() > MAX_REPLY_BYTES * 2 {
                return Err(ModelError::Protocol("response too large".into()));
            }
        }
        let (text, reply) = read_body::<F>(&body)?;
        if let Some(t) = text {
            let _ = deltas.send(t).await;
        }
        return Ok(reply);
    }
    let mut reader = StreamReader::<F>::default();
    while let Some(chunk) = stream.next().await {
        for t in reader.feed(&chunk.map_err(transport)?)? {
            let _ = deltas.send(t).await;
        }
        if reader.ended() {
            break;
        }
    }
    reader.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_chunks() {
        let mut p = Parser::default();
        assert!(p.feed(b"event: a\ndata: {\"x\"").unwrap().is_empty());
        let ev = p.feed(b":1}\r\n\r\n: comment\ndata: [DONE]\n\n").unwrap();
        assert_eq!(
            ev,
            vec![
                Event { event: Some("a".into()), data: "{\"x\":1}".into() },
                Event { event: None, data: "[DONE]".into() },
            ]
        );
    }
}
