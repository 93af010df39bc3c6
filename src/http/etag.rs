//! `If-Match` / `If-None-Match` field values (RFC 9110 §13.1): `*` or a list of entity tags.

/// A precondition field's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntityTags {
    /// `*`: any current representation.
    Any,
    /// The entity tags listed, unquoted; weak ones keep their `W/` prefix (so they never equal a
    /// strong tag). Never empty.
    List(Vec<String>),
}

/// Parse a precondition field; `Err` says what is wrong, for a 400.
pub fn parse(value: &str) -> Result<EntityTags, String> {
    if value.trim() == "*" {
        return Ok(EntityTags::Any);
    }
    let mut out = Vec::new();
    for item in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (weak, tag) = match item.strip_prefix("W/") {
            Some(t) => (true, t),
            None => (false, item),
        };
        let inner = tag
            .strip_prefix('"')
            .and_then(|t| t.strip_suffix('"'))
            .filter(|t| !t.contains('"'))
            .ok_or_else(|| format!("{item:?} is not an entity tag"))?;
        out.push(if weak {
            format!("W/{inner}")
        } else {
            inner.to_owned()
        });
    }
    if out.is_empty() {
        return Err("no entity tag given".into());
    }
    Ok(EntityTags::List(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_stars_weak_tags_and_garbage() {
        let list = |v: &[&str]| Ok(EntityTags::List(v.iter().map(|s| s.to_string()).collect()));
        assert_eq!(parse("*"), Ok(EntityTags::Any));
        assert_eq!(parse(r#""sha256:ab""#), list(&["sha256:ab"]));
        assert_eq!(parse(r#""a", W/"b" ,"c""#), list(&["a", "W/b", "c"]));
        assert_eq!(parse(r#""""#), list(&[""]));
        for bad in [
            "",
            " , ",
            "sha256:ab",
            r#""a"b""#,
            r#""a"#,
            r#"W/a"#,
            r#"* , "a""#,
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
