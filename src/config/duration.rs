//! Durations in the config: `"30s"`, `"500ms"`, `"2m"`, `"1h"` or a bare number of seconds.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

/// Parse `"30s"`, `"500ms"`, `"2m"`, `"1h"` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (use e.g. \"30s\", \"500ms\", \"2m\")"))?;
    let d = match unit.trim() {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        u => {
            return Err(format!(
                "unknown duration unit {u:?} in {s:?} (use ms, s, m or h)"
            ));
        }
    };
    Ok(d)
}

pub(super) fn ser_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    if d.subsec_millis() != 0 {
        s.serialize_str(&format!("{}ms", d.as_millis()))
    } else if d.as_secs() >= 3600 && d.as_secs().is_multiple_of(3600) {
        s.serialize_str(&format!("{}h", d.as_secs() / 3600))
    } else {
        s.serialize_str(&format!("{}s", d.as_secs()))
    }
}

pub(super) fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Secs(n) => Ok(Duration::from_secs(n)),
        Raw::Text(s) => parse_duration(&s).map_err(serde::de::Error::custom),
    }
}
