//! Server-side encryption of what wharf writes (`storage.s3.server_side_encryption`): the headers
//! every object write and every multipart upload carries, signed with the request (a bucket
//! policy may refuse writes without them), and the startup check that the store applies them.
//! Reads need nothing: the store decrypts SSE-S3 and SSE-KMS objects itself.

use rusty_s3::S3Action;

use super::{ObjectStore, S3Error, SIGNED_FOR, drain, failure};
use crate::client::Payload;

/// How the store encrypts the objects wharf writes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Encryption {
    /// As the bucket's default says (no header sent).
    #[default]
    Bucket,
    /// SSE-S3: keys the store manages (`AES256`).
    Aes256,
    /// SSE-KMS: this KMS key, or the store's default KMS key.
    Kms(Option<String>),
}

pub(super) const ALGORITHM: &str = "x-amz-server-side-encryption";
pub(super) const KMS_KEY: &str = "x-amz-server-side-encryption-aws-kms-key-id";

impl Encryption {
    /// `storage.s3.server_side_encryption`'s value (`None`: the bucket's default).
    pub fn algorithm(&self) -> Option<&'static str> {
        match self {
            Encryption::Bucket => None,
            Encryption::Aes256 => Some("AES256"),
            Encryption::Kms(_) => Some("aws:kms"),
        }
    }

    /// The headers a write carries (lower-case names, as they are signed).
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = Vec::new();
        if let Some(a) = self.algorithm() {
            headers.push((ALGORITHM, a.to_owned()));
        }
        if let Encryption::Kms(Some(key)) = self {
            headers.push((KMS_KEY, key.clone()));
        }
        headers
    }

    /// Whether a write's answer, its `x-amz-server-side-encryption` header, says the store
    /// applied the encryption asked for (a store that does not know the header ignores it).
    pub fn confirmed(&self, answered: Option<&str>) -> bool {
        match self.algorithm() {
            None => true,
            Some(a) => answered.is_some_and(|v| v.trim().eq_ignore_ascii_case(a)),
        }
    }
}

/// Sign `action` with the encryption `headers` as well; the URL.
pub(super) fn signed<'a>(
    mut action: impl S3Action<'a>,
    headers: &'a [(&'static str, String)],
) -> url::Url {
    for (name, value) in headers {
        action.headers_mut().insert(*name, value.as_str());
    }
    action.sign(SIGNED_FOR)
}

impl ObjectStore {
    /// Write a small object under `key` with the configured encryption and delete it again: an
    /// error says what the store answered, or that its answer did not confirm the encryption.
    pub async fn check_encryption(&self, key: &str) -> Result<(), S3Error> {
        let full = self.key(key);
        let keys = self.keys.current();
        let headers = self.encryption.headers();
        let url = signed(self.bucket.put_object(Some(&keys), &full), &headers);
        let resp = self
            .send(0, "PUT", url, headers.clone(), Payload::Lent(b"wharf"))
            .await?;
        if resp.status != 200 {
            return Err(failure(resp).await);
        }
        let answered = resp.header(ALGORITHM).map(str::to_owned);
        drain(resp).await;
        self.delete(key, None).await?;
        if self.encryption.confirmed(answered.as_deref()) {
            Ok(())
        } else {
            Err(S3Error::Status {
                status: 200,
                code: "EncryptionNotApplied".into(),
                message: format!(
                    "the store took the write but answered {ALGORITHM}: {}; it does not \
                     support this encryption",
                    answered.as_deref().unwrap_or("(none)")
                ),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_mode_sends_its_headers_and_is_confirmed_only_by_its_own_answer() {
        assert!(Encryption::Bucket.headers().is_empty());
        assert!(Encryption::Bucket.confirmed(None));
        assert_eq!(
            Encryption::Aes256.headers(),
            vec![(ALGORITHM, "AES256".to_owned())]
        );
        let kms = Encryption::Kms(Some("key-1".into()));
        assert_eq!(
            kms.headers(),
            vec![
                (ALGORITHM, "aws:kms".to_owned()),
                (KMS_KEY, "key-1".to_owned())
            ]
        );
        assert_eq!(Encryption::Kms(None).headers().len(), 1);
        assert!(Encryption::Aes256.confirmed(Some("AES256")));
        assert!(!Encryption::Aes256.confirmed(None));
        assert!(!Encryption::Aes256.confirmed(Some("aws:kms")));
        assert!(kms.confirmed(Some("aws:kms")));
        assert!(!kms.confirmed(Some("AES256")));
    }
}
