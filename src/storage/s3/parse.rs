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

/// The time of an object the store gave no readable timestamp for: "just now", so that nothing
/// is judged old (collected, expired, taken over, reported) on a time the store did not give.
pub const UNKNOWN_TIME: u64 = u64::MAX;

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
                modified: c
                    .last_modified
                    .as_deref()
                    .and_then(parse_time)
                    .unwrap_or(UNKNOWN_TIME),
                etag: c.etag.clone().unwrap_or_default(),
            })
        })
        .collect();
    Ok((items, more))
}

/// A multipart upload neither completed nor aborted, as `ListMultipartUploads` lists it.
#[derive(Debug, PartialEq)]
pub struct Pending {
    /// The key without the configured prefix.
    pub key: String,
    pub upload_id: String,
    /// When it started (`UNKNOWN_TIME` if the store did not say).
    pub initiated: u64,
}

/// A `ListMultipartUploads` answer: the uploads under `prefix` (with it removed) and whether
/// more follow.
pub fn parse_multipart_uploads(body: &[u8], prefix: &str) -> io::Result<(Vec<Pending>, bool)> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_owned());
    let text = std::str::from_utf8(body).map_err(|_| bad("upload listing is not UTF-8"))?;
    if !text.contains("<ListMultipartUploadsResult") {
        return Err(bad("not a ListMultipartUploadsResult"));
    }
    let more = elements(text, "IsTruncated").first() == Some(&"true");
    let mut out = Vec::new();
    for upload in elements(text, "Upload") {
        let field = |name: &str| elements(upload, name).first().map(|v| unescape(v));
        let (Some(key), Some(upload_id)) = (field("Key"), field("UploadId")) else {
            return Err(bad("an upload without its Key or UploadId"));
        };
        let Some(key) = key.strip_prefix(prefix) else {
            continue;
        };
        if upload_id.is_empty() {
            return Err(bad("an upload with an empty UploadId"));
        }
        out.push(Pending {
            key: key.to_owned(),
            upload_id,
            initiated: field("Initiated")
                .as_deref()
                .and_then(parse_time)
                .unwrap_or(UNKNOWN_TIME),
        });
    }
    Ok((out, more))
}

/// A `ListParts` answer: when its newest part was stored (`None` without parts; `UNKNOWN_TIME`
/// if a part's time is unreadable) and the marker of the next page, if there is one.
pub fn parse_parts(body: &[u8]) -> io::Result<(Option<u64>, Option<u16>)> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_owned());
    let text = std::str::from_utf8(body).map_err(|_| bad("part listing is not UTF-8"))?;
    if !text.contains("<ListPartsResult") {
        return Err(bad("not a ListPartsResult"));
    }
    let newest = elements(text, "Part")
        .into_iter()
        .map(|part| {
            let time = elements(part, "LastModified").first().copied();
            time.and_then(parse_time).unwrap_or(UNKNOWN_TIME)
        })
        .max();
    let next = if elements(text, "IsTruncated").first() == Some(&"true") {
        let marker = elements(text, "NextPartNumberMarker").first().copied();
        Some(
            marker
                .and_then(|m| m.parse().ok())
                .ok_or_else(|| bad("a truncated part listing without a NextPartNumberMarker"))?,
        )
    } else {
        None
    };
    Ok((newest, next))
}

/// Temporary credentials an STS answered with.
#[derive(Debug, PartialEq)]
pub(super) struct Issued {
    pub key_id: String,
    pub secret: String,
    pub token: String,
    /// Seconds since the epoch.
    pub expires: u64,
}

/// An `AssumeRoleWithWebIdentity` answer: the credentials, or what is missing from it.
pub(super) fn parse_sts(body: &[u8]) -> Result<Issued, String> {
    let text = std::str::from_utf8(body).map_err(|_| "the answer is not UTF-8".to_owned())?;
    let creds = elements(text, "Credentials")
        .into_iter()
        .next()
        .ok_or("the answer has no <Credentials>")?;
    let field = |name: &str| match elements(creds, name).first() {
        Some(v) if !v.trim().is_empty() => Ok(unescape(v.trim())),
        _ => Err(format!("the answer's <Credentials> has no {name}")),
    };
    let expiration = field("Expiration")?;
    Ok(Issued {
        key_id: field("AccessKeyId")?,
        secret: field("SecretAccessKey")?,
        token: field("SessionToken")?,
        expires: parse_time(&expiration)
            .ok_or_else(|| format!("the answer's Expiration {expiration:?} is not a time"))?,
    })
}

/// The inner text of each `<name>…</name>` in `text`, in order (`name` not nested in itself).
fn elements<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{name}>"), format!("</{name}>"));
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        let Some(j) = after.find(&close) else {
            break;
        };
        out.push(&after[..j]);
        rest = &after[j + close.len()..];
    }
    out
}

/// XML character data with its entity and character references replaced (an unknown or
/// malformed one stays as written).
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let end = rest.bytes().take(12).position(|b| b == b';');
        let c = end.and_then(|e| match &rest[1..e] {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            r if r.starts_with("#x") => u32::from_str_radix(&r[2..], 16)
                .ok()
                .and_then(char::from_u32),
            r if r.starts_with('#') => r[1..].parse().ok().and_then(char::from_u32),
            _ => None,
        });
        match (c, end) {
            (Some(c), Some(e)) => {
                out.push(c);
                rest = &rest[e + 1..];
            }
            _ => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_parse_to_epoch_seconds() {
        assert_eq!(
            parse_http_date("Wed, 02 Dec 2026 08:09:38 GMT"),
            Some(1_796_198_978)
        );
        assert_eq!(parse_http_date("Wed, 02 Dek 2026 08:09:38 GMT"), None);
        assert_eq!(parse_http_date("02 Dec 2026"), None);
    }

    #[test]
    fn a_listed_object_without_a_readable_time_counts_as_new() {
        let xml = br#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><Prefix>p/</Prefix><KeyCount>3</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated>
<Contents><Key>p/a</Key><LastModified>2026-12-02T08:09:38.000Z</LastModified><ETag>"1"</ETag><Size>1</Size></Contents>
<Contents><Key>p/b</Key><ETag>"2"</ETag><Size>2</Size></Contents>
<Contents><Key>p/c</Key><LastModified>Wednesday</LastModified><ETag>"3"</ETag><Size>3</Size></Contents>
</ListBucketResult>"#;
        let (listed, more) = parse_listing(xml, "p/").unwrap();
        assert!(!more);
        let times: Vec<(&str, u64)> = listed
            .iter()
            .map(|l| (l.key.as_str(), l.modified))
            .collect();
        assert_eq!(
            times,
            [
                ("a", 1_796_198_978),
                ("b", UNKNOWN_TIME),
                ("c", UNKNOWN_TIME)
            ]
        );
        // Against any cutoff, b and c are young: kept by the collector, not expired.
        let young = |l: &Listed| crate::storage::s3::gc::maybe_after(l.modified, u64::MAX - 1);
        assert_eq!(
            listed.iter().map(young).collect::<Vec<_>>(),
            [false, true, true]
        );
    }

    #[test]
    fn multipart_upload_listings_parse() {
        // As SeaweedFS answers (a truncated page names no NextKeyMarker).
        let xml = br#"<?xml version="1.0" encoding="UTF-8"?>
<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Bucket>b</Bucket><IsTruncated>true</IsTruncated><KeyMarker></KeyMarker><MaxUploads>2</MaxUploads><NextUploadIdMarker>u2</NextUploadIdMarker><Prefix>p/data/</Prefix><Upload><Initiated>2026-12-02T08:09:38Z</Initiated><Key>p/data/a&amp;b</Key><UploadId>u1</UploadId></Upload><Upload><Key>p/data/c</Key><UploadId>u&#34;2</UploadId><Owner><ID>x</ID></Owner></Upload><Upload><Key>q/other</Key><UploadId>u3</UploadId></Upload></ListMultipartUploadsResult>"#;
        let (uploads, more) = parse_multipart_uploads(xml, "p/").unwrap();
        assert!(more);
        assert_eq!(
            uploads,
            [
                Pending {
                    key: "data/a&b".into(),
                    upload_id: "u1".into(),
                    initiated: 1_796_198_978
                },
                Pending {
                    key: "data/c".into(),
                    upload_id: "u\"2".into(),
                    initiated: UNKNOWN_TIME
                },
            ]
        );
        assert!(parse_multipart_uploads(b"<ListBucketResult/>", "p/").is_err());
        let no_id = b"<ListMultipartUploadsResult><Upload><Key>p/k</Key></Upload></ListMultipartUploadsResult>";
        assert!(parse_multipart_uploads(no_id, "p/").is_err());
        assert_eq!(unescape("a&amp;&bogus;&#x41;&"), "a&&bogus;A&");
    }

    #[test]
    fn part_listings_give_the_newest_part() {
        let xml = br#"<ListPartsResult><IsTruncated>true</IsTruncated><NextPartNumberMarker>2</NextPartNumberMarker><Part><ETag>&#34;e&#34;</ETag><LastModified>2026-12-02T08:09:38Z</LastModified><PartNumber>1</PartNumber></Part><Part><LastModified>2026-12-02T08:09:40Z</LastModified><PartNumber>2</PartNumber></Part></ListPartsResult>"#;
        assert_eq!(parse_parts(xml).unwrap(), (Some(1_796_198_980), Some(2)));
        let none = b"<ListPartsResult><IsTruncated>false</IsTruncated></ListPartsResult>";
        assert_eq!(parse_parts(none).unwrap(), (None, None));
        let unreadable =
            b"<ListPartsResult><Part><LastModified>soon</LastModified></Part></ListPartsResult>";
        assert_eq!(parse_parts(unreadable).unwrap(), (Some(UNKNOWN_TIME), None));
        let cut = b"<ListPartsResult><IsTruncated>true</IsTruncated></ListPartsResult>";
        assert!(parse_parts(cut).is_err());
    }

    #[test]
    fn sts_answers_give_the_credentials_or_say_what_is_missing() {
        let ok = br#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleWithWebIdentityResult><Credentials><AccessKeyId>ASIA1</AccessKeyId><SecretAccessKey>s/e+c=</SecretAccessKey><SessionToken>t&amp;k</SessionToken><Expiration>2026-12-04T18:22:36Z</Expiration></Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>"#;
        assert_eq!(
            parse_sts(ok),
            Ok(Issued {
                key_id: "ASIA1".into(),
                secret: "s/e+c=".into(),
                token: "t&k".into(),
                expires: parse_time("2026-12-04T18:22:36Z").unwrap(),
            })
        );
        let no_token =
            String::from_utf8_lossy(ok).replace("<SessionToken>t&amp;k</SessionToken>", "");
        assert_eq!(
            parse_sts(no_token.as_bytes()),
            Err("the answer's <Credentials> has no SessionToken".into())
        );
        let bad_time = String::from_utf8_lossy(ok).replace("2026-12-04T18:22:36Z", "soon");
        assert!(
            parse_sts(bad_time.as_bytes())
                .unwrap_err()
                .contains("\"soon\" is not a time")
        );
        assert!(parse_sts(b"<Error/>").is_err());
    }

    #[test]
    fn timestamps_parse_to_epoch_seconds() {
        assert_eq!(parse_time("1970-01-01T00:00:00.000Z"), Some(0));
        assert_eq!(parse_time("2000-03-01T00:00:00Z"), Some(951_868_800));
        assert_eq!(parse_time("2026-12-02T08:09:38.123Z"), Some(1_796_198_978));
        assert_eq!(parse_time("2026-13-02T08:09:38Z"), None);
        assert_eq!(parse_time("yesterday"), None);
    }
}
