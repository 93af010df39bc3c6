//! The Docker registry token flow towards upstreams: a `401` with
//! `WWW-Authenticate: Bearer realm="…",service="…",scope="…"` sends wharf to the realm for a
//! token (with the upstream's Basic credentials, if configured), which it then presents as
//! `Authorization: Bearer …`. Tokens are cached per upstream repository until shortly before they
//! expire (bounded, `MAX_TOKENS`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Tokens remembered per upstream; at the bound, expired ones go, then all.
const MAX_TOKENS: usize = 1024;
/// A token's lifetime when the realm does not say (the token spec's default).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(60);

/// A `Bearer` challenge's parameters.
#[derive(Debug, PartialEq, Eq)]
pub struct Challenge {
    pub realm: String,
    pub service: Option<String>,
    pub scope: Option<String>,
}

/// The `Bearer` challenge of a `WWW-Authenticate` value, if it is one with a realm.
/// Parameters are `key=value` or `key="quoted value"` (commas inside quotes, `\` escapes),
/// separated by commas; unknown ones are ignored.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let (scheme, rest) = header.trim_start().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut params: HashMap<String, String> = HashMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() {
            break;
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        chars.next_if_eq(&'=')?;
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.next_if_eq(&'"').is_some() {
            loop {
                match chars.next()? {
                    '"' => break,
                    '\\' => value.push(chars.next()?),
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' || c.is_whitespace() {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        params.insert(key.to_ascii_lowercase(), value);
        if params.len() > 16 {
            return None;
        }
    }
    let realm = params.remove("realm").filter(|r| !r.is_empty())?;
    Some(Challenge {
        realm,
        service: params.remove("service"),
        scope: params.remove("scope"),
    })
}

/// The token of a realm's answer (`token`, or OAuth2's `access_token`) and how long it lives.
pub fn parse_token(body: &[u8]) -> Result<(String, Duration), String> {
    #[derive(serde::Deserialize)]
    struct Answer {
        token: Option<String>,
        access_token: Option<String>,
        expires_in: Option<u64>,
    }
    let a: Answer =
        serde_json::from_slice(body).map_err(|e| format!("the token answer is not JSON: {e}"))?;
    let token = a
        .token
        .or(a.access_token)
        .filter(|t| !t.is_empty())
        .ok_or("the token answer has no token")?;
    if !token
        .bytes()
        .all(|c| c.is_ascii_graphic() && c != b'"' && c != b',')
    {
        return Err("the token has characters a header cannot carry".into());
    }
    let life = a
        .expires_in
        .filter(|s| *s > 0)
        .map_or(DEFAULT_LIFETIME, Duration::from_secs);
    Ok((token, life))
}

/// Tokens by upstream repository name.
#[derive(Default)]
pub struct Tokens {
    map: Mutex<HashMap<String, (String, Instant)>>,
}

impl Tokens {
    /// The cached token for `name`, while it is valid.
    pub fn get(&self, name: &str) -> Option<String> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(name)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(t, _)| t.clone())
    }

    /// Remember `token` for `name`; it is used until a tenth of its life (at most 30 s) before
    /// it expires, so a request never goes out with a token about to lapse.
    pub fn put(&self, name: &str, token: String, life: Duration) {
        let margin = (life / 10).min(Duration::from_secs(30));
        let until = Instant::now() + life - margin;
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_TOKENS && !map.contains_key(name) {
            let now = Instant::now();
            map.retain(|_, (_, u)| *u > now);
            if map.len() >= MAX_TOKENS {
                map.clear();
            }
        }
        map.insert(name.to_owned(), (token, until));
    }

    /// Forget `name`'s token (the upstream refused it).
    pub fn forget(&self, name: &str) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(name);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_challenges_parse() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:library/alpine:pull,push""#,
        )
        .unwrap();
        assert_eq!(c.realm, "https://auth.example/token");
        assert_eq!(c.service.as_deref(), Some("registry.example"));
        assert_eq!(
            c.scope.as_deref(),
            Some("repository:library/alpine:pull,push")
        );
        let c = parse_challenge(r#"bearer  realm = "r\"x" , error=insufficient_scope"#).unwrap();
        assert_eq!(c.realm, "r\"x");
        assert_eq!(c.scope, None);
        for bad in [
            "Basic realm=\"x\"",
            "Bearer",
            "Bearer service=x",
            "Bearer realm=\"unterminated",
            "Bearer realm",
            "Bearer realm=\"\"",
        ] {
            assert_eq!(parse_challenge(bad), None, "{bad}");
        }
    }

    #[test]
    fn token_answers_parse() {
        let (t, life) = parse_token(br#"{"token":"abc","expires_in":300}"#).unwrap();
        assert_eq!((t.as_str(), life), ("abc", Duration::from_secs(300)));
        let (t, life) = parse_token(br#"{"access_token":"xyz"}"#).unwrap();
        assert_eq!((t.as_str(), life), ("xyz", DEFAULT_LIFETIME));
        assert!(parse_token(br#"{"token":""}"#).is_err());
        assert!(parse_token(br#"{"token":"a\r\nb"}"#).is_err());
        assert!(parse_token(b"<html>").is_err());
    }

    #[test]
    fn tokens_expire_and_are_bounded() {
        let t = Tokens::default();
        t.put("a", "x".into(), Duration::from_secs(60));
        assert_eq!(t.get("a").as_deref(), Some("x"));
        t.put("b", "y".into(), Duration::from_nanos(1));
        assert_eq!(t.get("b"), None);
        for i in 0..MAX_TOKENS + 5 {
            t.put(&i.to_string(), "z".into(), Duration::from_secs(60));
        }
        assert!(t.len() <= MAX_TOKENS);
    }
}
