//! wharf's token signing key (`auth.token.signing_key`): an Ed25519 or ECDSA P-256 private key in
//! PKCS#8 PEM, its key id (a hash of the public key, so every node with the same file names it the
//! same) and signatures; `generate` is what `wharf cert token-key` writes.

use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _};
use sha2::{Digest as _, Sha256};

use super::jws::{Alg, PublicKey, b64};

enum Pair {
    Ed25519(Ed25519KeyPair),
    P256(EcdsaKeyPair),
}

/// A private key that signs registry tokens.
pub struct SigningKey {
    pair: Pair,
    pub kid: String,
    rng: SystemRandom,
}

impl SigningKey {
    /// Load a PKCS#8 PEM (`PRIVATE KEY`) file's key.
    pub fn from_pem(pem: &[u8]) -> Result<SigningKey, String> {
        use rustls_pki_types::pem::PemObject as _;
        let der = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(pem).map_err(|_| {
            "no PKCS#8 `PRIVATE KEY` block; make one with `wharf cert token-key`, or convert with `openssl pkcs8 -topk8 -nocrypt`".to_owned()
        })?;
        let der = der.secret_pkcs8_der();
        let rng = SystemRandom::new();
        let pair = if let Ok(k) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
            Pair::Ed25519(k)
        } else if let Ok(k) =
            EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
        {
            Pair::P256(k)
        } else {
            return Err(
                "the key is neither Ed25519 nor ECDSA P-256 (wharf signs tokens with those only)"
                    .into(),
            );
        };
        let public = match &pair {
            Pair::Ed25519(k) => k.public_key().as_ref().to_vec(),
            Pair::P256(k) => k.public_key().as_ref().to_vec(),
        };
        let kid = b64(&Sha256::digest(&public)[..16]);
        Ok(SigningKey { pair, kid, rng })
    }

    pub fn alg(&self) -> Alg {
        match self.pair {
            Pair::Ed25519(_) => Alg::EdDsa,
            Pair::P256(_) => Alg::Es256,
        }
    }

    /// The key that verifies this key's signatures.
    pub fn public(&self) -> PublicKey {
        let bytes = match &self.pair {
            Pair::Ed25519(k) => k.public_key().as_ref().to_vec(),
            Pair::P256(k) => k.public_key().as_ref().to_vec(),
        };
        PublicKey::new(Some(self.kid.clone()), self.alg(), bytes)
    }

    /// A compact JWS of `claims` (a JSON object) under this key.
    pub fn sign(&self, claims: &serde_json::Value) -> String {
        let header = serde_json::json!({"typ": "JWT", "alg": self.alg().name(), "kid": self.kid});
        let mut out = b64(header.to_string().as_bytes());
        out.push('.');
        out.push_str(&b64(claims.to_string().as_bytes()));
        let sig = match &self.pair {
            Pair::Ed25519(k) => k.sign(out.as_bytes()).as_ref().to_vec(),
            Pair::P256(k) => k
                .sign(&self.rng, out.as_bytes())
                .expect("P-256 signing fails only without randomness")
                .as_ref()
                .to_vec(),
        };
        out.push('.');
        out.push_str(&b64(&sig));
        out
    }
}

/// A new key in PKCS#8 PEM: Ed25519, or ECDSA P-256 when `ecdsa`.
pub fn generate(ecdsa: bool) -> Result<String, String> {
    let alg = if ecdsa {
        &rcgen::PKCS_ECDSA_P256_SHA256
    } else {
        &rcgen::PKCS_ED25519
    };
    rcgen::KeyPair::generate_for(alg)
        .map(|k| k.serialize_pem())
        .map_err(|e| e.to_string())
}
