//! A small server-sent-events reader for streaming model responses.

use bytes::{Buf, BytesMut};

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
