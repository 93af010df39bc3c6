//! The checks serde cannot express, each error naming its key.

use std::time::Duration;

use super::*;

impl Config {
    /// Checks that serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let h = &self.server.http;
        let invalid = |key: &str, message: &str| {
            Err(ConfigError::Invalid {
                key: key.to_owned(),
                message: message.to_owned(),
            })
        };
        if h.max_head_size < 1024 {
            return invalid("server.http.max_head_size", "must be at least 1024");
        }
        if h.max_target_size < 256 || h.max_target_size >= h.max_head_size {
            return invalid(
                "server.http.max_target_size",
                "must be at least 256 and below server.http.max_head_size",
            );
        }
        for (key, d) in [
            ("server.http.head_timeout", h.head_timeout),
            ("server.http.keep_alive_timeout", h.keep_alive_timeout),
            ("server.http.body_timeout", h.body_timeout),
            ("server.http.send_timeout", h.send_timeout),
        ] {
            if d.is_zero() {
                return invalid(key, "must be greater than zero");
            }
        }
        if self.server.threads > 1024 {
            return invalid(
                "server.threads",
                "must be at most 1024 (0 = available cores)",
            );
        }
        if self.limits.upload_idle_timeout.is_zero() {
            return invalid(
                "limits.upload_idle_timeout",
                "must be greater than zero (sessions would expire between PATCHes)",
            );
        }
        if self.storage.blocking_threads > 1024 {
            return invalid(
                "storage.blocking_threads",
                "must be at most 1024 (0 = twice server.threads, at least 4)",
            );
        }
        if self.server.backlog <= 0 {
            return invalid("server.backlog", "must be positive");
        }
        if self.global.max_manifest_size == 0 {
            return invalid("global.max_manifest_size", "must be greater than zero");
        }
        if self.storage.root.as_os_str().is_empty() {
            return invalid("storage.root", "must not be empty");
        }
        self.validate_s3()?;
        self.validate_token_auth()?;
        self.validate_upstreams()?;
        for (table, tls) in self.tls_tables() {
            let Some(tls) = tls else { continue };
            for (key, p) in [
                ("server_certificate_bundle", &tls.server_certificate_bundle),
                ("server_private_key", &tls.server_private_key),
            ] {
                if p.as_os_str().is_empty() {
                    return invalid(&format!("{table}.{key}"), "must name a PEM file");
                }
            }
            match &tls.client_ca_bundle {
                Some(p) if p.as_os_str().is_empty() => {
                    return invalid(&format!("{table}.client_ca_bundle"), "must name a PEM file");
                }
                None if tls.client_auth == ClientAuth::Required => {
                    return invalid(
                        &format!("{table}.client_auth"),
                        &format!(
                            "\"required\" needs {table}.client_ca_bundle (the CAs client certificates must chain to)"
                        ),
                    );
                }
                _ => {}
            }
            if !tls.client_crl.is_empty() && tls.client_ca_bundle.is_none() {
                return invalid(
                    &format!("{table}.client_crl"),
                    &format!(
                        "revocation lists need {table}.client_ca_bundle (the CAs whose certificates they revoke)"
                    ),
                );
            }
            if tls.client_crl.iter().any(|p| p.as_os_str().is_empty()) {
                return invalid(
                    &format!("{table}.client_crl"),
                    "must name CRL files (PEM or DER)",
                );
            }
        }
        self.validate_listeners()?;
        if self.limits.response_buffer_budget > 0 && self.limits.response_buffer_budget < 1 << 20 {
            return invalid(
                "limits.response_buffer_budget",
                "must be at least 1048576 (1 MiB), or 0 for small buffers only",
            );
        }
        if self.auth.credential_cache_size == 0 {
            return invalid("auth.credential_cache_size", "must be at least 1");
        }
        let mut usernames = BTreeMap::new();
        for (id, ident) in &self.auth.identity {
            let key = format!("auth.identity.{id}.username");
            if ident.username.is_empty() || ident.username.contains(':') {
                return invalid(&key, "must be non-empty and must not contain ':'");
            }
            if let Some(other) = usernames.insert(&ident.username, id) {
                return invalid(
                    &key,
                    &format!(
                        "{:?} is also the username of auth.identity.{other}",
                        ident.username
                    ),
                );
            }
        }
        for (key, rps) in [
            ("limits.read_rps", self.limits.read_rps),
            ("limits.write_rps", self.limits.write_rps),
        ] {
            if !rps.is_finite() || rps < 0.0 {
                return invalid(
                    key,
                    "must be a number of requests per second, 0 = unlimited",
                );
            }
        }
        if !self.server.hsts_max_age.is_zero() && self.tls_tables().all(|(_, t)| t.is_none()) {
            return invalid(
                "server.hsts_max_age",
                "needs a listener with TLS (browsers ignore HSTS over plain HTTP; it is sent on TLS listeners only)",
            );
        }
        if !self.gc.interval.is_zero() && self.gc.interval < Duration::from_secs(1) {
            return invalid("gc.interval", "must be at least 1s (or 0s = never)");
        }
        for name in self.repository.keys() {
            if name.parse::<crate::oci::RepoName>().is_err() {
                return invalid(
                    &format!("repository.{name:?}"),
                    "is not a valid repository name (lowercase path components like \"team/app\")",
                );
            }
        }
        Ok(())
    }

    /// Every TLS table with its key: `server.tls`, then `server.listener[<i>].tls`.
    pub fn tls_tables(&self) -> impl Iterator<Item = (String, Option<&TlsConfig>)> {
        let main = ("server.tls".to_owned(), self.server.tls.as_ref());
        let more = self
            .server
            .listener
            .iter()
            .enumerate()
            .map(|(i, l)| (format!("server.listener[{i}].tls"), l.tls.as_ref()));
        std::iter::once(main).chain(more)
    }

    /// Names, and addresses that cannot be shared, of `[[server.listener]]` and `[server.admin]`.
    fn validate_listeners(&self) -> Result<(), ConfigError> {
        let invalid = |key: String, message: String| Err(ConfigError::Invalid { key, message });
        if self.server.listener.len() > MAX_LISTENERS {
            return invalid(
                "server.listener".into(),
                format!("at most {MAX_LISTENERS} extra listeners"),
            );
        }
        let mut bound = vec![(
            "server.bind_address/server.port".to_owned(),
            self.server.bind_address,
            self.server.port,
        )];
        let mut names = BTreeMap::new();
        for (i, l) in self.server.listener.iter().enumerate() {
            let key = format!("server.listener[{i}].name");
            let valid = !l.name.is_empty()
                && l.name.len() <= 64
                && l.name.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                });
            if !valid {
                return invalid(
                    key,
                    format!(
                        "{:?}: use 1 to 64 lowercase letters, digits, '-' or '_'",
                        l.name
                    ),
                );
            }
            if l.name == "main" || l.name == "admin" {
                return invalid(
                    key,
                    format!(
                        "{:?} is reserved ([server] is \"main\", [server.admin] is \"admin\")",
                        l.name
                    ),
                );
            }
            if let Some(other) = names.insert(l.name.as_str(), i) {
                return invalid(
                    key,
                    format!("{:?} is also the name of server.listener[{other}]", l.name),
                );
            }
            bound.push((
                format!("server.listener[{i}].bind_address/port"),
                l.bind_address,
                l.port,
            ));
        }
        if let Some(a) = &self.server.admin {
            bound.push((
                "server.admin.bind_address/port".into(),
                a.bind_address,
                a.port,
            ));
        }
        for (i, (key, addr, port)) in bound.iter().enumerate() {
            let clash = bound[..i].iter().find(|(_, a, p)| {
                *port != 0
                    && p == port
                    && a.is_ipv4() == addr.is_ipv4()
                    && (a == addr || a.is_unspecified() || addr.is_unspecified())
            });
            if let Some((other, ..)) = clash {
                return invalid(key.clone(), format!("{addr} port {port} overlaps {other}"));
            }
        }
        Ok(())
    }

    /// `storage.backend` and `[storage.s3]` (what a startup can check without the network).
    fn validate_s3(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: &str| {
            Err(ConfigError::Invalid {
                key: key.to_owned(),
                message: message.to_owned(),
            })
        };
        let s3 = match (self.storage.backend, &self.storage.s3) {
            (StorageBackend::Filesystem, None) => return Ok(()),
            (StorageBackend::Filesystem, Some(_)) => {
                return invalid(
                    "storage.backend",
                    "[storage.s3] is set but storage.backend is \"filesystem\"; set backend = \"s3\" or remove [storage.s3]",
                );
            }
            (StorageBackend::S3, None) => {
                return invalid(
                    "storage.s3",
                    "storage.backend = \"s3\" needs a [storage.s3] table with endpoint and bucket",
                );
            }
            (StorageBackend::S3, Some(s3)) => s3,
        };
        let https = s3.endpoint.starts_with("https://");
        if !https && !s3.endpoint.starts_with("http://") {
            return invalid(
                "storage.s3.endpoint",
                "must be an http://host:port or https://host:port URL",
            );
        }
        if !https && s3.ca_bundle.is_some() {
            return invalid(
                "storage.s3.ca_bundle",
                "is only used with an https:// endpoint; remove it or use https",
            );
        }
        if s3
            .ca_bundle
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return invalid("storage.s3.ca_bundle", "must name a PEM file");
        }
        if s3.bucket.is_empty() {
            return invalid("storage.s3.bucket", "must not be empty");
        }
        if s3.region.is_empty() {
            return invalid("storage.s3.region", "must not be empty");
        }
        if !s3.path_style {
            let host = url::Url::parse(&s3.endpoint)
                .ok()
                .and_then(|u| u.host().map(|h| matches!(h, url::Host::Domain(_))));
            if host == Some(false) {
                return invalid(
                    "storage.s3.path_style",
                    "false (virtual-hosted buckets, <bucket>.<host>) needs a DNS name in storage.s3.endpoint, not an IP address; set path_style = true",
                );
            }
            let dns_label = s3.bucket.len() <= 63
                && s3
                    .bucket
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !s3.bucket.starts_with('-')
                && !s3.bucket.ends_with('-');
            if !dns_label {
                return invalid(
                    "storage.s3.bucket",
                    "with path_style = false the bucket name is a host-name label: lowercase letters, digits and inner hyphens, at most 63",
                );
            }
        }
        if s3.prefix.starts_with('/') {
            return invalid("storage.s3.prefix", "must not start with /");
        }
        let key_id = s3.access_key_id.is_some() || s3.access_key_id_file.is_some();
        if s3.access_key_id.is_some() && s3.access_key_id_file.is_some() {
            return invalid(
                "storage.s3.access_key_id_file",
                "and storage.s3.access_key_id both give the key id: keep one",
            );
        }
        match (key_id, &s3.secret_access_key_file) {
            (true, None) => {
                return invalid(
                    "storage.s3.secret_access_key_file",
                    "must be set with storage.s3.access_key_id (or access_key_id_file)",
                );
            }
            (false, Some(_)) => {
                return invalid(
                    "storage.s3.access_key_id",
                    "(or access_key_id_file) must be set with storage.s3.secret_access_key_file",
                );
            }
            _ => {}
        }
        if s3.session_token_file.is_some() && !key_id {
            return invalid(
                "storage.s3.session_token_file",
                "is the token of temporary keys: set it with storage.s3.access_key_id (or access_key_id_file) and secret_access_key_file",
            );
        }
        match (&s3.role_arn, &s3.web_identity_token_file) {
            (Some(_), None) => {
                return invalid(
                    "storage.s3.web_identity_token_file",
                    "must be set with storage.s3.role_arn",
                );
            }
            (None, Some(_)) => {
                return invalid(
                    "storage.s3.role_arn",
                    "must be set with storage.s3.web_identity_token_file",
                );
            }
            (Some(arn), Some(_)) if arn.trim().is_empty() => {
                return invalid("storage.s3.role_arn", "must not be empty");
            }
            (Some(_), Some(_)) if key_id => {
                return invalid(
                    "storage.s3.role_arn",
                    "and storage.s3.access_key_id are two sources of credentials: keep one",
                );
            }
            _ => {}
        }
        if let Some(sts) = &s3.sts_endpoint {
            let url = url::Url::parse(sts).ok();
            if !url.is_some_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some()) {
                return invalid(
                    "storage.s3.sts_endpoint",
                    "must be an http:// or https:// URL",
                );
            }
        }
        match s3.server_side_encryption.as_deref() {
            None | Some("AES256" | "aws:kms") => {}
            Some(_) => {
                return invalid(
                    "storage.s3.server_side_encryption",
                    "must be \"AES256\" (keys the store manages) or \"aws:kms\" (a KMS key)",
                );
            }
        }
        if s3.kms_key_id.is_some() && s3.server_side_encryption.as_deref() != Some("aws:kms") {
            return invalid(
                "storage.s3.kms_key_id",
                "is only used with storage.s3.server_side_encryption = \"aws:kms\"",
            );
        }
        if let Some(key) = &s3.kms_key_id
            && (key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic()))
        {
            return invalid(
                "storage.s3.kms_key_id",
                "must be a KMS key id, ARN or alias: not empty, without spaces or control characters",
            );
        }
        if s3.redirect_ttl.is_zero() || s3.redirect_ttl > Duration::from_secs(7 * 86_400) {
            return invalid(
                "storage.s3.redirect_ttl",
                "must be between 1s and 168h (7 days, the longest a presigned URL may live)",
            );
        }
        if s3.io_timeout < Duration::from_secs(1) || s3.io_timeout > Duration::from_secs(600) {
            return invalid(
                "storage.s3.io_timeout",
                "must be between 1s and 600s (how long a request waits for a silent store)",
            );
        }
        Ok(())
    }

    /// `storage.blocking_threads`, with `0` resolved.
    pub fn blocking_threads(&self) -> usize {
        match self.storage.blocking_threads {
            0 => (2 * self.threads()).max(4),
            n => n,
        }
    }

    /// Worker threads to start.
    pub fn threads(&self) -> usize {
        match self.server.threads {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            n => n,
        }
    }
}
