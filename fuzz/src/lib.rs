//! What several fuzz targets share: damage to a file's bytes, and driving a model provider's
//! stream reader the way `model::sse::read_reply` does.

use arbitrary::Arbitrary;
use bulkhead::model::ModelReply;
use bulkhead::model::sse::{ReplyFormat, StreamReader, read_body};

/// One change to a file, as a crash, a bad disk or an attacker could make it.
#[derive(Arbitrary, Debug, Clone)]
pub enum Damage {
    /// Cut the file at this byte (a torn write).
    Truncate(u32),
    /// A crash that extended the file with zeros.
    ZeroTail(u16),
    FlipBit {
        at: u32,
        bit: u8,
    },
    SetByte {
        at: u32,
        byte: u8,
    },
    Insert {
        at: u32,
        bytes: Vec<u8>,
    },
    Remove {
        at: u32,
        len: u16,
    },
    Append(Vec<u8>),
}

/// The damaged bytes.
pub fn damage(original: &[u8], changes: &[Damage]) -> Vec<u8> {
    let mut b = original.to_vec();
    for d in changes {
        let at = |at: u32, len: usize| if len == 0 { 0 } else { at as usize % (len + 1) };
        match d {
            Damage::Truncate(n) => b.truncate(at(*n, b.len())),
            Damage::ZeroTail(n) => b.resize(b.len() + *n as usize % 4096, 0),
            Damage::FlipBit { at: i, bit } if !b.is_empty() => {
                let i = *i as usize % b.len();
                b[i] ^= 1 << (bit % 8);
            }
            Damage::SetByte { at: i, byte } if !b.is_empty() => {
                let i = *i as usize % b.len();
                b[i] = *byte;
            }
            Damage::Insert { at: i, bytes } => {
                let i = at(*i, b.len());
                b.splice(i..i, bytes.iter().copied());
            }
            Damage::Remove { at: i, len } => {
                let i = at(*i, b.len());
                let end = (i + *len as usize).min(b.len());
                b.drain(i..end);
            }
            Damage::Append(bytes) => b.extend_from_slice(bytes),
            Damage::FlipBit { .. } | Damage::SetByte { .. } => {}
        }
    }
    b
}

/// Reads `chunks` as `read_reply` does: deltas as they come, the reply at the end (or when an
/// event ended it).
fn read<F: ReplyFormat>(chunks: &mut dyn Iterator<Item = &[u8]>) -> (Result<ModelReply, String>, String) {
    let mut reader = StreamReader::<F>::default();
    let mut streamed = String::new();
    for chunk in chunks {
        match reader.feed(chunk) {
            Ok(deltas) => deltas.iter().for_each(|d| streamed.push_str(d)),
            Err(e) => return (Err(e.to_string()), streamed),
        }
        if reader.ended() {
            break;
        }
    }
    (reader.finish().map_err(|e| e.to_string()), streamed)
}

/// Checks a provider's reader on one stream: no panic; the text streamed to the user is the
/// reply's text; how the network cut the stream does not change a reply that was read whole.
/// The first byte of `data` picks where the network cuts the body (the rest).
pub fn check_stream<F: ReplyFormat>(data: &[u8]) {
    let Some((&seed, body)) = data.split_first() else { return };
    let mut pieces = Vec::new();
    let (mut rest, mut state) = (body, u32::from(seed));
    while !rest.is_empty() {
        // A small LCG: chunks of 1 to 64 bytes, a different pattern per seed.
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let (a, b) = rest.split_at(((state >> 16) as usize % 64 + 1).min(rest.len()));
        pieces.push(a);
        rest = b;
    }
    let (chunked, streamed) = read::<F>(&mut pieces.iter().copied());
    let (whole, _) = read::<F>(&mut std::iter::once(body));
    if let Ok(reply) = &chunked {
        assert_eq!(reply.text, streamed, "the streamed text differs from the reply");
    }
    if let (Ok(a), Ok(b)) = (&chunked, &whole) {
        assert_eq!(a, b, "the reply depends on how the stream was cut into chunks");
    }
    if let Ok((text, reply)) = read_body::<F>(body) {
        assert_eq!(text.unwrap_or_default(), reply.text, "a plain body's text differs from its reply");
    }
}
