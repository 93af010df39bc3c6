//! `Range` (blob downloads) and `Content-Range` (upload chunks) header parsing.

/// What a `Range` header asks of a blob of a known size.
#[derive(Debug, PartialEq, Eq)]
pub enum ByteRange {
    /// No usable range: send everything (absent, malformed or multi-range headers are ignored per RFC 9110).
    Full,
    /// Inclusive byte range within the blob.
    Partial { start: u64, end: u64 },
    /// A syntactically valid range outside the blob: 416.
    Unsatisfiable,
}

/// A non-negative decimal made of ASCII digits only (no sign, no spaces), within u64.
fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
        None
    } else {
        s.parse().ok()
    }
}

/// Most ranges one request may ask for (eStargz and SOCI clients ask for a few; more is refused
/// with 400, and such clients fall back to one range per request).
pub const MAX_RANGES: usize = 16;

/// What a `Range` header asks of a blob of a known size, one range or several.
#[derive(Debug, PartialEq, Eq)]
pub enum Ranges {
    /// No usable range header: send everything.
    Full,
    /// The satisfiable ranges (inclusive), in the order asked; overlapping ones are merged (then
    /// in ascending order), so that a body never repeats bytes.
    Partial(Vec<(u64, u64)>),
    /// More than `MAX_RANGES` ranges (how many).
    TooMany(usize),
    /// Valid ranges, none inside the blob: 416.
    Unsatisfiable,
}

/// Interpret a `Range: bytes=…` header of one or more ranges against `size` (RFC 9110 14.2):
/// a malformed header is ignored (the whole blob), unsatisfiable ranges among others are dropped.
pub fn parse_ranges(header: Option<&str>, size: u64) -> Ranges {
    let Some(set) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Ranges::Full;
    };
    let specs: Vec<&str> = set.split(',').map(str::trim).collect();
    if specs.len() > MAX_RANGES {
        return Ranges::TooMany(specs.len());
    }
    let mut out = Vec::new();
    for spec in &specs {
        match parse_spec(spec, size) {
            ByteRange::Full => return Ranges::Full,
            ByteRange::Unsatisfiable => {}
            ByteRange::Partial { start, end } => out.push((start, end)),
        }
    }
    if out.is_empty() {
        return Ranges::Unsatisfiable;
    }
    let mut sorted = out.clone();
    sorted.sort_unstable();
    if sorted.windows(2).any(|w| w[1].0 <= w[0].1) {
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(sorted.len());
        for (a, b) in sorted {
            match merged.last_mut() {
                Some(last) if a <= last.1 => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        out = merged;
    }
    Ranges::Partial(out)
}

/// Interpret a single-range `Range: bytes=…` header against `size`.
pub fn parse_range(header: Option<&str>, size: u64) -> ByteRange {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return ByteRange::Full;
    };
    if spec.contains(',') {
        return ByteRange::Full;
    }
    parse_spec(spec, size)
}

/// One range spec (`a-b`, `a-`, `-n`) against `size`.
fn parse_spec(spec: &str, size: u64) -> ByteRange {
    let Some((a, b)) = spec.trim().split_once('-') else {
        return ByteRange::Full;
    };
    match (a.is_empty(), b.is_empty()) {
        (true, true) => ByteRange::Full,
        // bytes=-N: the last N bytes.
        (true, false) => match digits(b) {
            Some(0) => ByteRange::Unsatisfiable,
            Some(_) if size == 0 => ByteRange::Unsatisfiable,
            Some(n) => ByteRange::Partial {
                start: size.saturating_sub(n),
                end: size - 1,
            },
            None => ByteRange::Full,
        },
        (false, _) => {
            let Some(start) = digits(a) else {
                return ByteRange::Full;
            };
            let end = if b.is_empty() {
                u64::MAX
            } else {
                match digits(b) {
                    Some(e) if e >= start => e,
                    // A reversed range: the conformance suite (and distribution) answer 416.
                    Some(_) => return ByteRange::Unsatisfiable,
                    None => return ByteRange::Full,
                }
            };
            if start >= size {
                ByteRange::Unsatisfiable
            } else {
                ByteRange::Partial {
                    start,
                    end: end.min(size - 1),
                }
            }
        }
    }
}

/// A `multipart/byteranges` body (RFC 9110 14.6) around ranges of a blob: each part's head,
/// and what ends the body; the ranges' bytes go between them.
pub struct Byteranges {
    pub boundary: String,
    /// Per range: the bytes before it (delimiter and part headers) and the range.
    pub parts: Vec<(Vec<u8>, u64, u64)>,
    pub end: Vec<u8>,
}

impl Byteranges {
    /// `boundary` must not occur in the blob (a random token of 32 hex digits does not, but by
    /// chance).
    pub fn new(ranges: &[(u64, u64)], size: u64, part_type: &str, boundary: String) -> Self {
        let parts = ranges
            .iter()
            .enumerate()
            .map(|(i, &(start, end))| {
                let head = format!(
                    "{}--{boundary}\r\nContent-Type: {part_type}\r\nContent-Range: bytes {start}-{end}/{size}\r\n\r\n",
                    if i == 0 { "" } else { "\r\n" }
                );
                (head.into_bytes(), start, end - start + 1)
            })
            .collect();
        let end = format!("\r\n--{boundary}--\r\n").into_bytes();
        Byteranges {
            boundary,
            parts,
            end,
        }
    }

    /// The body's length.
    pub fn len(&self) -> u64 {
        let heads: usize = self.parts.iter().map(|p| p.0.len()).sum();
        heads as u64 + self.end.len() as u64 + self.parts.iter().map(|p| p.2).sum::<u64>()
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn content_type(&self) -> String {
        format!("multipart/byteranges; boundary={}", self.boundary)
    }
}

/// Parse an upload `Content-Range: <start>-<end>` (also `bytes <start>-<end>/<total>`), inclusive.
/// A range whose length (`end - start + 1`) does not fit in 64 bits is malformed.
pub fn parse_content_range(value: &str) -> Option<(u64, u64)> {
    let v = value.trim();
    let v = v
        .strip_prefix("bytes ")
        .or_else(|| v.strip_prefix("bytes="))
        .unwrap_or(v);
    let v = v.split('/').next()?;
    let (a, b) = v.split_once('-')?;
    let (start, end) = (digits(a)?, digits(b)?);
    (end >= start && end - start < u64::MAX).then_some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 10), ByteRange::Full);
        assert_eq!(
            parse_range(Some("bytes=0-4"), 10),
            ByteRange::Partial { start: 0, end: 4 }
        );
        assert_eq!(
            parse_range(Some("bytes=5-"), 10),
            ByteRange::Partial { start: 5, end: 9 }
        );
        assert_eq!(
            parse_range(Some("bytes=5-100"), 10),
            ByteRange::Partial { start: 5, end: 9 }
        );
        assert_eq!(
            parse_range(Some("bytes=-3"), 10),
            ByteRange::Partial { start: 7, end: 9 }
        );
        assert_eq!(
            parse_range(Some("bytes=-30"), 10),
            ByteRange::Partial { start: 0, end: 9 }
        );
        assert_eq!(parse_range(Some("bytes=10-"), 10), ByteRange::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 10), ByteRange::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-1,3-4"), 10), ByteRange::Full);
        assert_eq!(parse_range(Some("bytes=4-2"), 10), ByteRange::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=4-x"), 10), ByteRange::Full);
        assert_eq!(parse_range(Some("items=0-1"), 10), ByteRange::Full);
        assert_eq!(parse_range(Some("bytes=0-0"), 0), ByteRange::Unsatisfiable);
    }

    #[test]
    fn several_ranges() {
        let p = |h: &str| parse_ranges(Some(h), 100);
        assert_eq!(parse_ranges(None, 100), Ranges::Full);
        assert_eq!(p("bytes=0-9"), Ranges::Partial(vec![(0, 9)]));
        assert_eq!(
            p("bytes=50-59, 0-9,-5"),
            Ranges::Partial(vec![(50, 59), (0, 9), (95, 99)]),
            "in the order asked"
        );
        assert_eq!(
            p("bytes=0-9,5-19,30-39,19-20"),
            Ranges::Partial(vec![(0, 20), (30, 39)]),
            "overlaps merged"
        );
        assert_eq!(
            p("bytes=0-9,200-300"),
            Ranges::Partial(vec![(0, 9)]),
            "the unsatisfiable one dropped"
        );
        assert_eq!(p("bytes=200-300,400-"), Ranges::Unsatisfiable);
        assert_eq!(p("bytes=0-9,x"), Ranges::Full, "malformed: ignored");
        assert_eq!(p("bytes=0-9,,1-2"), Ranges::Full);
        let many: Vec<String> = (0..17).map(|i| format!("{i}-{i}")).collect();
        assert_eq!(p(&format!("bytes={}", many.join(","))), Ranges::TooMany(17));
        assert!(
            matches!(p(&format!("bytes={}", many[..16].join(","))), Ranges::Partial(v) if v.len() == 16)
        );
    }

    #[test]
    fn byteranges_bodies_measure_what_they_hold() {
        let b = Byteranges::new(
            &[(0, 1), (5, 9)],
            10,
            "application/octet-stream",
            "B".into(),
        );
        assert_eq!(
            b.parts[1].0,
            b"\r\n--B\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes 5-9/10\r\n\r\n"
        );
        let mut body = Vec::new();
        for (head, start, len) in &b.parts {
            body.extend_from_slice(head);
            body.extend(std::iter::repeat_n(b'x', (*len) as usize));
            assert!(*start < 10);
        }
        body.extend_from_slice(&b.end);
        assert_eq!(body.len() as u64, b.len());
        assert!(body.starts_with(b"--B\r\n") && body.ends_with(b"\r\n--B--\r\n"));
    }

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("0-99"), Some((0, 99)));
        assert_eq!(parse_content_range("bytes 100-199/*"), Some((100, 199)));
        assert_eq!(parse_content_range("5-4"), None);
        assert_eq!(parse_content_range("-4"), None);
        assert_eq!(parse_content_range("a-b"), None);
        assert_eq!(parse_content_range("+1-2"), None);
        assert_eq!(parse_content_range("0-18446744073709551615"), None);
        assert_eq!(
            parse_content_range("1-18446744073709551615"),
            Some((1, u64::MAX))
        );
    }
}
