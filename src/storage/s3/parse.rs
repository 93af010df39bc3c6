//! The pure parsers of what the object store answers: error bodies, `ListObjectsV2` pages and
//! timestamps (fuzzed through `wharf::fuzzing::object_store`).

use std::io;

use super::api::Listed;

/// The `Code` and `Message` of an S3 error body (empty code and the start of the text when it
/// is not one).
pub fn parse_error(body: &[u8]) -> (String, String) {
    let text = String::from_utf8_lossy(body);
    let tag = |name: &str| {
        let open = format!("<{name}>");
        let start = text.find(&open)? + open.len();
        let end = text[start..].find(&format!("</{name}>"))? + start;
        Some(text[start..end].to_owned())
    };
    let message = tag("Message").unwrap_or_else(|| text.chars().take(200).collect());
    (tag("Code").unwrap_or_default(), message)
}

/// A `ListObjectsV2` answer: the keys under `prefix` (with it removed) and whether more follow.
pub fn parse_listing(body: &[u8], prefix: &str) -> io::Result<(Vec<Listed>, bool)> {
    let bad = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
    let text = std::str::from_utf8(body).map_err(|_| bad("listing is not UTF-8".into()))?;
    let parsed = rusty_s3::actions::ListObjectsV2::parse_response(text)
        .map_err(|e| bad(format!("bad listing: {e}")))?;
    let more = parsed.next_continuation_token.is_some();
    let items = parsed
        .contents
        .into_iter()
        .filter_map(|c| {
            let key = c.key.strip_prefix(prefix)?.to_owned();
            Some(Listed {
                key,
                len: c.size.unwrap_or(0),
                modified: c.last_modified.as_deref().and_then(parse_time).unwrap_or(0),
                etag: c.etag.clone().unwrap_or_default(),
            })
        })
        .collect();
    Ok((items, more))
}

/// Seconds since the epoch of an S3 timestamp (`2026-12-02T08:00:00.000Z`), or `None`.
pub fn parse_time(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()
}

/// Seconds since the epoch of an HTTP date (`Wed, 02 Dec 2026 08:09:38 GMT`), or `None`.
pub fn parse_http_date(s: &str) -> Option<u64> {
    let mut parts = s.split_whitespace().skip(1);
    let day: u32 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: u32 = parts.next()?.parse().ok()?;
    let time = parts.next()?;
    if parts.next()? != "GMT" || time.len() != 8 {
        return None;
    }
    parse_time(&format!("{year:04}-{month:02}-{day:02}T{time}Z"))
}
