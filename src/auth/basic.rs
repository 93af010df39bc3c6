//! The `Authorization: Basic` header (RFC 7617): scheme, base64, `user:password`.

use base64ct::{Base64, Encoding};

/// Why a header is not usable Basic credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BasicError {
    #[error("only Basic authorization is supported")]
    Scheme,
    #[error("malformed Basic credentials")]
    Malformed,
}

/// Decoded credentials.
#[derive(Debug, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

/// Parse `Basic <base64(user:password)>` (scheme case-insensitive, as RFC 7235 says).
pub fn parse(header: &str) -> Result<Credentials, BasicError> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').ok_or(BasicError::Scheme)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(BasicError::Scheme);
    }
    let raw = Base64::decode_vec(rest.trim()).map_err(|_| BasicError::Malformed)?;
    let text = String::from_utf8(raw).map_err(|_| BasicError::Malformed)?;
    let (username, password) = text.split_once(':').ok_or(BasicError::Malformed)?;
    if username.is_empty() {
        return Err(BasicError::Malformed);
    }
    Ok(Credentials {
        username: username.to_owned(),
        password: password.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(s: &str) -> String {
        format!("Basic {}", Base64::encode_string(s.as_bytes()))
    }

    #[test]
    fn parses_user_and_password_with_colons_in_the_password() {
        let c = parse(&header("alice:pa:ss")).unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("alice", "pa:ss")
        );
        let c = parse(&header("bob:").replace("Basic", "basic")).unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("bob", ""));
    }

    #[test]
    fn rejects_other_schemes_and_garbage() {
        assert_eq!(parse("Bearer abc"), Err(BasicError::Scheme));
        assert_eq!(parse("Basic"), Err(BasicError::Scheme));
        assert_eq!(parse("Basic !!!"), Err(BasicError::Malformed));
        assert_eq!(parse(&header("no-colon")), Err(BasicError::Malformed));
        assert_eq!(parse(&header(":secret")), Err(BasicError::Malformed));
        let not_utf8 = format!("Basic {}", Base64::encode_string(b"a:\xff"));
        assert_eq!(parse(&not_utf8), Err(BasicError::Malformed));
    }
}
