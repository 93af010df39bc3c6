//! Decoder for `Transfer-Encoding: chunked` as an explicit state machine. It never copies data: each
//! step reports how much input it consumed and where in that input the next run of body bytes lies.

use std::ops::Range;

/// Longest chunk-extension or trailer section accepted.
const MAX_EXTENSION: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;

/// Where the decoder stands in the chunked grammar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Reading hex digits of a chunk size.
    Size,
    /// After the size: optional whitespace and `;extension` up to CR.
    Extension,
    /// Expecting the LF that ends the size line.
    SizeLf,
    /// Inside chunk data with this many bytes left.
    Data(u64),
    /// Expecting the CR after chunk data.
    DataCr,
    /// Expecting the LF after chunk data.
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    /// Inside a trailer field line.
    TrailerLine,
    /// Expecting the LF of a trailer line.
    TrailerLf,
    /// Expecting the LF of the final empty line.
    FinalLf,
    /// The body is complete.
    Done,
}

/// Why a chunked body is malformed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChunkError {
    #[error("invalid chunk size line")]
    BadSize,
    #[error("chunk size overflows")]
    SizeOverflow,
    #[error("missing CRLF after chunk data")]
    BadDataEnd,
    #[error("chunk extension or trailers too long")]
    TooLong,
}

/// What one framing byte did.
enum Byte {
    /// The byte belonged to the framing.
    Consumed,
    /// The state changed; look at the same byte again.
    Again,
    /// The byte ended the body.
    Finished,
    /// The body had already ended; the byte belongs to what follows.
    AfterEnd,
}

/// Result of one decoding step.
#[derive(Debug, PartialEq, Eq)]
pub struct Step {
    /// Input bytes consumed (framing plus any data returned).
    pub consumed: usize,
    /// Body bytes found, as a range of the input.
    pub data: Option<Range<usize>>,
}

/// Chunked body decoder.
#[derive(Clone, Debug)]
pub struct ChunkedDecoder {
    state: State,
    size: u64,
    digits: u8,
    side_bytes: usize,
    trailer_bytes: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        ChunkedDecoder {
            state: State::Size,
            size: 0,
            digits: 0,
            side_bytes: 0,
            trailer_bytes: 0,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Advance over `input`, stopping after the first run of data (or when input or body ends).
    pub fn step(&mut self, input: &[u8]) -> Result<Step, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            if let State::Data(left) = self.state {
                // Hot path: a run of chunk data, returned in place.
                let n = (input.len() - i).min(usize::try_from(left).unwrap_or(usize::MAX));
                let left = left - n as u64;
                self.state = if left == 0 {
                    State::DataCr
                } else {
                    State::Data(left)
                };
                return Ok(Step {
                    consumed: i + n,
                    data: Some(i..i + n),
                });
            }
            match self.framing_byte(input[i])? {
                Byte::Consumed => i += 1,
                Byte::Again => {}
                Byte::Finished => {
                    return Ok(Step {
                        consumed: i + 1,
                        data: None,
                    });
                }
                Byte::AfterEnd => {
                    return Ok(Step {
                        consumed: i,
                        data: None,
                    });
                }
            }
        }
        Ok(Step {
            consumed: i,
            data: None,
        })
    }

    /// One transition of the framing grammar (every state but `Data`).
    fn framing_byte(&mut self, b: u8) -> Result<Byte, ChunkError> {
        match self.state {
            State::Data(_) => unreachable!("step handles data runs before framing"),
            State::Size => {
                if let Some(d) = hex_value(b) {
                    if self.digits >= 16 {
                        return Err(ChunkError::SizeOverflow);
                    }
                    self.size = (self.size << 4) | u64::from(d);
                    self.digits += 1;
                } else if self.digits == 0 {
                    return Err(ChunkError::BadSize);
                } else {
                    self.state = State::Extension;
                    return Ok(Byte::Again);
                }
            }
            State::Extension => match b {
                b'\r' => self.state = State::SizeLf,
                b'\n' => return Err(ChunkError::BadSize),
                _ => {
                    self.side_bytes += 1;
                    if self.side_bytes > MAX_EXTENSION {
                        return Err(ChunkError::TooLong);
                    }
                    if self.side_bytes == 1 && !matches!(b, b';' | b' ' | b'\t') {
                        return Err(ChunkError::BadSize);
                    }
                }
            },
            State::SizeLf => {
                if b != b'\n' {
                    return Err(ChunkError::BadSize);
                }
                self.side_bytes = 0;
                self.digits = 0;
                self.state = if self.size == 0 {
                    State::TrailerStart
                } else {
                    State::Data(self.size)
                };
                self.size = 0;
            }
            State::DataCr => {
                if b != b'\r' {
                    return Err(ChunkError::BadDataEnd);
                }
                self.state = State::DataLf;
            }
            State::DataLf => {
                if b != b'\n' {
                    return Err(ChunkError::BadDataEnd);
                }
                self.state = State::Size;
            }
            State::TrailerStart => {
                self.state = if b == b'\r' {
                    State::FinalLf
                } else {
                    State::TrailerLine
                };
                self.count_trailer()?;
            }
            State::TrailerLine => {
                if b == b'\r' {
                    self.state = State::TrailerLf;
                }
                self.count_trailer()?;
            }
            State::TrailerLf => {
                if b != b'\n' {
                    return Err(ChunkError::BadSize);
                }
                self.state = State::TrailerStart;
            }
            State::FinalLf => {
                if b != b'\n' {
                    return Err(ChunkError::BadSize);
                }
                self.state = State::Done;
                return Ok(Byte::Finished);
            }
            State::Done => return Ok(Byte::AfterEnd),
        }
        Ok(Byte::Consumed)
    }

    fn count_trailer(&mut self) -> Result<(), ChunkError> {
        self.trailer_bytes += 1;
        if self.trailer_bytes > MAX_TRAILERS {
            Err(ChunkError::TooLong)
        } else {
            Ok(())
        }
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decode a whole chunked body held in memory (tests, fuzzing and benches).
pub fn decode_all(mut input: &[u8]) -> Result<(Vec<u8>, usize), ChunkError> {
    let mut dec = ChunkedDecoder::new();
    let mut out = Vec::new();
    let mut total = 0;
    while !dec.is_done() {
        let step = dec.step(input)?;
        if let Some(r) = step.data {
            out.extend_from_slice(&input[r]);
        }
        if step.consumed == 0 {
            break;
        }
        total += step.consumed;
        input = &input[step.consumed..];
    }
    Ok((out, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_chunks_extensions_and_trailers() {
        let body = b"5;name=val\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        let (out, used) = decode_all(body).unwrap();
        assert_eq!(out, b"hello0123456789");
        assert_eq!(&body[used..], b"NEXT");
    }

    #[test]
    fn decodes_byte_by_byte() {
        let body = b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        let mut dec = ChunkedDecoder::new();
        let mut out = Vec::new();
        for i in 0..body.len() {
            let step = dec.step(&body[i..=i]).unwrap();
            assert_eq!(step.consumed, 1);
            if let Some(r) = step.data {
                out.extend_from_slice(&body[i..=i][r]);
            }
        }
        assert!(dec.is_done());
        assert_eq!(out, b"abcde");
    }

    #[test]
    fn rejects_malformed_framing() {
        assert_eq!(decode_all(b"x\r\n").unwrap_err(), ChunkError::BadSize);
        assert_eq!(decode_all(b"3\nabc").unwrap_err(), ChunkError::BadSize);
        assert_eq!(
            decode_all(b"3\r\nabcX\r\n").unwrap_err(),
            ChunkError::BadDataEnd
        );
        assert_eq!(
            decode_all(b"11111111111111111\r\n").unwrap_err(),
            ChunkError::SizeOverflow
        );
        assert_eq!(decode_all(b"3x\r\n").unwrap_err(), ChunkError::BadSize);
        let long_ext = format!("1;{}\r\n", "a".repeat(5000));
        assert_eq!(
            decode_all(long_ext.as_bytes()).unwrap_err(),
            ChunkError::TooLong
        );
    }

    #[test]
    fn incomplete_body_is_not_done() {
        let mut dec = ChunkedDecoder::new();
        let step = dec.step(b"5\r\nhel").unwrap();
        assert_eq!(step.data, Some(3..6));
        assert!(!dec.is_done());
    }
}
