//! Content digests (`sha256:<hex>`, `sha512:<hex>`) and the incremental hasher behind them.

use std::fmt;
use std::str::FromStr;

use sha2::Digest as _;

/// A digest algorithm wharf can verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    /// The algorithm's name as it appears in a digest string and in storage paths.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// Length of the lowercase hex encoding.
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }

    /// A fresh incremental hasher for this algorithm.
    pub fn hasher(self) -> Hasher {
        match self {
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }
}

impl FromStr for Algorithm {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, DigestError> {
        match s {
            "sha256" => Ok(Algorithm::Sha256),
            "sha512" => Ok(Algorithm::Sha512),
            _ => Err(DigestError::UnsupportedAlgorithm),
        }
    }
}

/// Why a digest string was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    #[error("digest has no algorithm separator")]
    Malformed,
    #[error("unsupported digest algorithm")]
    UnsupportedAlgorithm,
    #[error("digest encoding is not lowercase hex of the algorithm's length")]
    BadEncoding,
}

/// A validated digest: supported algorithm plus lowercase hex of the right length.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

impl Digest {
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The lowercase hex encoding (safe to use as a path component).
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// Digest of a complete byte string.
    pub fn of(algorithm: Algorithm, bytes: &[u8]) -> Digest {
        let mut h = algorithm.hasher();
        h.update(bytes);
        h.finish()
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, DigestError> {
        let (alg, hex) = s.split_once(':').ok_or(DigestError::Malformed)?;
        let algorithm: Algorithm = alg.parse()?;
        let ok = hex.len() == algorithm.hex_len()
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !ok {
            return Err(DigestError::BadEncoding);
        }
        Ok(Digest {
            algorithm,
            hex: hex.to_owned(),
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.as_str(), self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Incremental hasher for either supported algorithm.
#[derive(Clone)]
pub enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    pub fn algorithm(&self) -> Algorithm {
        match self {
            Hasher::Sha256(_) => Algorithm::Sha256,
            Hasher::Sha512(_) => Algorithm::Sha512,
        }
    }

    /// Hot path: called once per body buffer.
    #[inline]
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    /// The state after the bytes hashed so far, to continue elsewhere (an upload session that
    /// moves between nodes keeps it in the object store).
    pub fn save(&self) -> Vec<u8> {
        use sha2::digest::common::hazmat::SerializableState;
        match self {
            Hasher::Sha256(h) => h.serialize().to_vec(),
            Hasher::Sha512(h) => h.serialize().to_vec(),
        }
    }

    /// A hasher continuing from a state `save` made, or `None` if `state` is not one.
    pub fn restore(alg: Algorithm, state: &[u8]) -> Option<Hasher> {
        use sha2::digest::common::hazmat::SerializableState;
        match alg {
            Algorithm::Sha256 => {
                let s = state.try_into().ok()?;
                sha2::Sha256::deserialize(s).ok().map(Hasher::Sha256)
            }
            Algorithm::Sha512 => {
                let s = state.try_into().ok()?;
                sha2::Sha512::deserialize(s).ok().map(Hasher::Sha512)
            }
        }
    }

    pub fn finish(self) -> Digest {
        let (algorithm, bytes): (Algorithm, Vec<u8>) = match self {
            Hasher::Sha256(h) => (Algorithm::Sha256, h.finalize().to_vec()),
            Hasher::Sha512(h) => (Algorithm::Sha512, h.finalize().to_vec()),
        };
        let mut hex = String::with_capacity(bytes.len() * 2);
        for b in bytes {
            hex.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
            hex.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
        }
        Digest { algorithm, hex }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hash saved mid-way and restored ends where one that never stopped does, for any split.
    #[test]
    fn hash_state_survives_save_and_restore() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        for alg in [Algorithm::Sha256, Algorithm::Sha512] {
            let whole = Digest::of(alg, &data);
            for split in [0, 1, 63, 64, 65, 127, 128, 129, 999, 1000] {
                let mut h = alg.hasher();
                h.update(&data[..split]);
                let mut r = Hasher::restore(alg, &h.save()).unwrap();
                r.update(&data[split..]);
                assert_eq!(r.finish(), whole, "{alg:?} split at {split}");
            }
            assert!(Hasher::restore(alg, b"short").is_none());
        }
    }

    #[test]
    fn parses_sha256_and_sha512() {
        let d: Digest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
            .parse()
            .unwrap();
        assert_eq!(d.algorithm(), Algorithm::Sha256);
        assert_eq!(d, Digest::of(Algorithm::Sha256, b""));
        let s512 = Digest::of(Algorithm::Sha512, b"abc");
        assert_eq!(s512.to_string().parse::<Digest>().unwrap(), s512);
        assert!(s512.to_string().starts_with("sha512:ddaf35a1"));
    }

    #[test]
    fn rejects_bad_digests() {
        assert_eq!("sha256".parse::<Digest>(), Err(DigestError::Malformed));
        assert_eq!(
            "md5:abcd".parse::<Digest>(),
            Err(DigestError::UnsupportedAlgorithm)
        );
        let upper = format!("sha256:{}", "A".repeat(64));
        assert_eq!(upper.parse::<Digest>(), Err(DigestError::BadEncoding));
        assert_eq!(
            "sha256:abc".parse::<Digest>(),
            Err(DigestError::BadEncoding)
        );
        let traversal = format!("sha256:../../{}", "a".repeat(58));
        assert_eq!(traversal.parse::<Digest>(), Err(DigestError::BadEncoding));
    }
}
