//! JWT signature checks. Each verification key is given to one library when it is loaded (`LoadedKey::new`), and
//! only that library ever checks its signatures:
//! - `ring` (already built for rustls) for RSA keys of 2048–8192 bits and EC keys given as uncompressed points:
//!   RS*/PS* and ES256/ES384 verify 5–9× faster than with RustCrypto (bench/PROFILE.md: ES256 52 vs 278 µs,
//!   RS256 21 vs 185 µs) — the cost of every token's first request;
//! - jsonwebtoken's RustCrypto provider for everything else: HMAC, EdDSA, and the keys ring refuses (an RSA
//!   modulus under 2048 bits or with an exponent ring does not take, a compressed EC point).
//!
//! A signature is checked once: a forged token costs what a valid one does (there is no second library to ask
//! when the first says no). The key must belong to the algorithm's family, so the HS/RS confusion defence holds.
//! `install()` puts the same choice behind jsonwebtoken's own `decode` for any other caller in the process.

use std::sync::Once;

use jsonwebtoken::crypto::{CryptoProvider, JwtVerifier, KeyUtils, rust_crypto};
use jsonwebtoken::errors::{ErrorKind, Result};
use jsonwebtoken::signature::{Error, Verifier};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind};
use ring::signature::{self as ring_sig, RsaParameters, RsaPublicKeyComponents, UnparsedPublicKey};

static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: rust_crypto::DEFAULT_PROVIDER.signer_factory,
    verifier_factory,
    key_utils: KeyUtils {
        rsa_pub_components_from_private_key: RUST_CRYPTO.rsa_pub_components_from_private_key,
        rsa_pub_components_from_public_key: RUST_CRYPTO.rsa_pub_components_from_public_key,
        ec_pub_components_from_private_key: RUST_CRYPTO.ec_pub_components_from_private_key,
        ed_pub_components_from_private_key: RUST_CRYPTO.ed_pub_components_from_private_key,
        compute_digest: RUST_CRYPTO.compute_digest,
    },
};
const RUST_CRYPTO: &KeyUtils = &rust_crypto::DEFAULT_PROVIDER.key_utils;

/// Installs the provider for the process (once; later calls do nothing).
pub fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Fails only when a provider is already installed, which is then the one in use.
        let _ = PROVIDER.install_default();
    });
}

/// The library that checks a key's signatures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Library {
    Ring,
    RustCrypto,
}

/// A verification key and the one library that checks its signatures, chosen when the key is loaded.
#[derive(Clone)]
pub struct LoadedKey {
    key: DecodingKey,
    library: Library,
}

impl LoadedKey {
    /// Chooses the library for `key`. RSA keys are held as their modulus and exponent, without leading zero bytes
    /// (ring refuses those, and some JWKS publishers add one).
    pub fn new(key: DecodingKey) -> Self {
        let key = match (key.family(), key.kind()) {
            (AlgorithmFamily::Rsa, DecodingKeyKind::RsaModulusExponent { n, e }) => {
                DecodingKey::from_rsa_raw_components(strip_zeros(n), strip_zeros(e))
            }
            (AlgorithmFamily::Rsa, DecodingKeyKind::SecretOrDer(der)) => {
                match pkcs1_components(der) {
                    Some((n, e)) => DecodingKey::from_rsa_raw_components(n, e),
                    None => key,
                }
            }
            _ => key,
        };
        let library = if ring_takes(&key) {
            Library::Ring
        } else {
            Library::RustCrypto
        };
        Self { key, library }
    }

    pub fn family(&self) -> AlgorithmFamily {
        self.key.family()
    }

    pub fn library(&self) -> Library {
        self.library
    }

    /// Checks `signature` over `message` (the token's `header.payload`) for `alg`, with this key's library only.
    pub fn verify(
        &self,
        alg: Algorithm,
        message: &[u8],
        signature: &[u8],
    ) -> std::result::Result<(), ErrorKind> {
        if self.key.family() != alg.family() {
            return Err(ErrorKind::InvalidAlgorithm);
        }
        let valid = match (self.library, params(alg)) {
            (Library::Ring, Some(params)) => ring_verify(params, &self.key, message, signature),
            _ => rust_crypto_verify(alg, &self.key, message, signature)?,
        };
        if valid {
            Ok(())
        } else {
            Err(ErrorKind::InvalidSignature)
        }
    }
}

/// Whether ring verifies with this key, by ring's own rules for public keys (ring 0.17, `rsa/public_modulus.rs`,
/// `rsa/public_exponent.rs`): an odd modulus of 256–1024 bytes (2048–8192 bits) with no leading zero byte; an
/// odd exponent of 3 up to 2^33 − 1 with no leading zero byte; for EC, an uncompressed P-256 or P-384 point.
fn ring_takes(key: &DecodingKey) -> bool {
    match (key.family(), key.kind()) {
        (AlgorithmFamily::Rsa, DecodingKeyKind::RsaModulusExponent { n, e }) => {
            let n_ok = (256..=1024).contains(&n.len())
                && n.first().is_some_and(|&b| b != 0)
                && n.last().is_some_and(|&b| b & 1 == 1);
            let e_value = (e.len() <= 5 && e.first().is_some_and(|&b| b != 0))
                .then(|| e.iter().fold(0u64, |v, &b| (v << 8) | u64::from(b)));
            let e_ok = e_value.is_some_and(|v| (3..1 << 33).contains(&v) && v & 1 == 1);
            n_ok && e_ok
        }
        (AlgorithmFamily::Ec, DecodingKeyKind::SecretOrDer(point)) => {
            matches!(point.len(), 65 | 97) && point[0] == 0x04
        }
        _ => false,
    }
}

fn strip_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[first..]
}

/// `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }` (PKCS#1, how jsonwebtoken holds an
/// RSA PEM key): the two positive integers without leading zeros, or `None` when the bytes are not exactly that.
fn pkcs1_components(der: &[u8]) -> Option<(&[u8], &[u8])> {
    let (sequence, rest) = der_element(der, 0x30)?;
    let (n, after_n) = der_element(sequence, 0x02)?;
    let (e, after_e) = der_element(after_n, 0x02)?;
    let positive = |int: &[u8]| int.first().is_some_and(|&b| b & 0x80 == 0);
    (rest.is_empty() && after_e.is_empty() && positive(n) && positive(e))
        .then(|| (strip_zeros(n), strip_zeros(e)))
}

/// One DER element with `tag`: its contents and what follows it.
fn der_element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&found, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    if found != tag {
        return None;
    }
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (len, rest) = rest.split_at(count);
        (
            len.iter().fold(0usize, |v, &b| (v << 8) | usize::from(b)),
            rest,
        )
    };
    (rest.len() >= len).then(|| rest.split_at(len))
}

#[derive(Clone, Copy)]
enum Params {
    Rsa(&'static RsaParameters),
    Ecdsa(&'static ring_sig::EcdsaVerificationAlgorithm),
}

fn params(alg: Algorithm) -> Option<Params> {
    Some(match alg {
        Algorithm::RS256 => Params::Rsa(&ring_sig::RSA_PKCS1_2048_8192_SHA256),
        Algorithm::RS384 => Params::Rsa(&ring_sig::RSA_PKCS1_2048_8192_SHA384),
        Algorithm::RS512 => Params::Rsa(&ring_sig::RSA_PKCS1_2048_8192_SHA512),
        Algorithm::PS256 => Params::Rsa(&ring_sig::RSA_PSS_2048_8192_SHA256),
        Algorithm::PS384 => Params::Rsa(&ring_sig::RSA_PSS_2048_8192_SHA384),
        Algorithm::PS512 => Params::Rsa(&ring_sig::RSA_PSS_2048_8192_SHA512),
        Algorithm::ES256 => Params::Ecdsa(&ring_sig::ECDSA_P256_SHA256_FIXED),
        Algorithm::ES384 => Params::Ecdsa(&ring_sig::ECDSA_P384_SHA384_FIXED),
        _ => return None,
    })
}

fn ring_verify(params: Params, key: &DecodingKey, msg: &[u8], sig: &[u8]) -> bool {
    #[cfg(test)]
    checks::ring();
    match (params, key.kind()) {
        (Params::Rsa(p), DecodingKeyKind::RsaModulusExponent { n, e }) => {
            RsaPublicKeyComponents { n, e }.verify(p, msg, sig).is_ok()
        }
        (Params::Ecdsa(p), DecodingKeyKind::SecretOrDer(point)) => {
            UnparsedPublicKey::new(p, point).verify(msg, sig).is_ok()
        }
        _ => false,
    }
}

fn rust_crypto_verify(
    alg: Algorithm,
    key: &DecodingKey,
    msg: &[u8],
    sig: &[u8],
) -> std::result::Result<bool, ErrorKind> {
    #[cfg(test)]
    checks::rust_crypto();
    let verifier = (rust_crypto::DEFAULT_PROVIDER.verifier_factory)(&alg, key)
        .map_err(jsonwebtoken::errors::Error::into_kind)?;
    Ok(verifier.verify(msg, &sig.to_vec()).is_ok())
}

/// Signature checks made on this thread, per library: tests show a token is checked once, by one library.
#[cfg(test)]
pub(crate) mod checks {
    use std::cell::Cell;

    thread_local! {
        static RING: Cell<u32> = const { Cell::new(0) };
        static RUST_CRYPTO: Cell<u32> = const { Cell::new(0) };
    }

    pub fn ring() {
        RING.with(|c| c.set(c.get() + 1));
    }

    pub fn rust_crypto() {
        RUST_CRYPTO.with(|c| c.set(c.get() + 1));
    }

    /// `(ring, RustCrypto)` checks since the last call.
    pub fn take() -> (u32, u32) {
        (
            RING.with(|c| c.replace(0)),
            RUST_CRYPTO.with(|c| c.replace(0)),
        )
    }
}

/// jsonwebtoken's `decode` for other callers in the process (the gateway loads its keys once, in auth/keys.rs):
/// the same choice of library, made per call.
fn verifier_factory(alg: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>> {
    if key.family() != alg.family() {
        return Err(ErrorKind::InvalidKeyFormat.into());
    }
    Ok(Box::new(ProviderVerifier {
        alg: *alg,
        key: LoadedKey::new(key.clone()),
    }))
}

struct ProviderVerifier {
    alg: Algorithm,
    key: LoadedKey,
}

impl Verifier<Vec<u8>> for ProviderVerifier {
    fn verify(&self, msg: &[u8], signature: &Vec<u8>) -> std::result::Result<(), Error> {
        self.key
            .verify(self.alg, msg, signature)
            .map_err(|kind| Error::from_source(jsonwebtoken::errors::Error::from(kind)))
    }
}

impl JwtVerifier for ProviderVerifier {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, Validation};

    const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys");

    fn read(name: &str) -> Vec<u8> {
        std::fs::read(format!("{KEYS}/{name}")).unwrap()
    }

    fn token(alg: Algorithm, key: &EncodingKey) -> String {
        let claims = serde_json::json!({"sub": "ana", "exp": 4_000_000_000u64});
        jsonwebtoken::encode(&Header::new(alg), &claims, key).unwrap()
    }

    /// The signing input and the decoded signature.
    fn parts(token: &str) -> (&[u8], Vec<u8>) {
        let (msg, sig) = token.rsplit_once('.').unwrap();
        let sig =
            base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, sig).unwrap();
        (msg.as_bytes(), sig)
    }

    /// Through jsonwebtoken (the provider installed), after checking that, for a key given to ring, ring and
    /// RustCrypto reach the same verdict — choosing ring changes the speed, never the answer.
    fn verify(token: &str, alg: Algorithm, key: &DecodingKey) -> Result<()> {
        install();
        let loaded = LoadedKey::new(key.clone());
        if let (Library::Ring, Some(params)) = (loaded.library(), params(alg)) {
            let (msg, sig) = parts(token);
            let by_ring = ring_verify(params, &loaded.key, msg, &sig);
            let by_rust_crypto = rust_crypto_verify(alg, key, msg, &sig).unwrap_or(false);
            assert_eq!(
                by_ring, by_rust_crypto,
                "{alg:?}: ring and RustCrypto disagree"
            );
        }
        let v = Validation::new(alg);
        jsonwebtoken::decode::<serde_json::Value>(token, key, &v).map(|_| ())
    }

    fn tampered(token: &str) -> String {
        let (rest, sig) = token.rsplit_once('.').unwrap();
        let mut sig = sig.as_bytes().to_vec();
        sig[4] = if sig[4] == b'A' { b'B' } else { b'A' };
        format!("{rest}.{}", String::from_utf8(sig).unwrap())
    }

    #[test]
    fn every_algorithm_verifies_good_signatures_and_refuses_bad_ones() {
        let rsa_priv = EncodingKey::from_rsa_pem(&read("rsa1.key.pem")).unwrap();
        let rsa_pub = DecodingKey::from_rsa_pem(&read("rsa1.pub.pem")).unwrap();
        let other_rsa = DecodingKey::from_rsa_pem(&read("rsa2.pub.pem")).unwrap();
        for alg in [
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ] {
            let t = token(alg, &rsa_priv);
            verify(&t, alg, &rsa_pub).unwrap();
            assert!(verify(&tampered(&t), alg, &rsa_pub).is_err(), "{alg:?}");
            assert!(verify(&t, alg, &other_rsa).is_err(), "{alg:?}: another key");
        }
        for (alg, name) in [(Algorithm::ES256, "ec256"), (Algorithm::ES384, "ec384")] {
            let private = EncodingKey::from_ec_pem(&read(&format!("{name}.key.pem"))).unwrap();
            let public = DecodingKey::from_ec_pem(&read(&format!("{name}.pub.pem"))).unwrap();
            let t = token(alg, &private);
            verify(&t, alg, &public).unwrap();
            assert!(verify(&tampered(&t), alg, &public).is_err(), "{alg:?}");
        }
        let ed_priv = EncodingKey::from_ed_pem(&read("ed25519.key.pem")).unwrap();
        let ed_pub = DecodingKey::from_ed_pem(&read("ed25519.pub.pem")).unwrap();
        let t = token(Algorithm::EdDSA, &ed_priv);
        verify(&t, Algorithm::EdDSA, &ed_pub).unwrap();
        assert!(verify(&tampered(&t), Algorithm::EdDSA, &ed_pub).is_err());
    }

    fn rsa1_components() -> (Vec<u8>, Vec<u8>) {
        (RUST_CRYPTO.rsa_pub_components_from_public_key)(
            DecodingKey::from_rsa_pem(&read("rsa1.pub.pem"))
                .unwrap()
                .try_get_as_bytes()
                .unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn rsa_keys_given_as_modulus_and_exponent_verify_too() {
        let private = EncodingKey::from_rsa_pem(&read("rsa1.key.pem")).unwrap();
        let (n, e) = rsa1_components();
        let public = DecodingKey::from_rsa_raw_components(&n, &e);
        let t = token(Algorithm::RS256, &private);
        verify(&t, Algorithm::RS256, &public).unwrap();
        assert!(verify(&tampered(&t), Algorithm::RS256, &public).is_err());
    }

    /// The algorithm-confusion defence: a key only verifies its own family's algorithms.
    #[test]
    fn a_key_of_another_family_is_refused() {
        let rsa_pub = DecodingKey::from_rsa_pem(&read("rsa1.pub.pem")).unwrap();
        let ec_pub = DecodingKey::from_ec_pem(&read("ec256.pub.pem")).unwrap();
        install();
        assert!(verifier_factory(&Algorithm::ES256, &rsa_pub).is_err());
        assert!(verifier_factory(&Algorithm::RS256, &ec_pub).is_err());
        let hmac = DecodingKey::from_secret(&read("rsa1.pub.pem"));
        assert!(verifier_factory(&Algorithm::RS256, &hmac).is_err());
        assert!(verifier_factory(&Algorithm::ES256, &hmac).is_err());
        // The gateway's own path: an HS256 token "signed" with the RSA public key's PEM bytes.
        let forged = token(
            Algorithm::HS256,
            &EncodingKey::from_secret(&read("rsa1.pub.pem")),
        );
        let (msg, sig) = parts(&forged);
        assert_eq!(
            LoadedKey::new(rsa_pub).verify(Algorithm::HS256, msg, &sig),
            Err(ErrorKind::InvalidAlgorithm)
        );
        assert!(
            LoadedKey::new(hmac)
                .verify(Algorithm::HS256, msg, &sig)
                .is_ok(),
            "only the secret itself verifies it"
        );
        assert_eq!(
            LoadedKey::new(ec_pub).verify(Algorithm::RS256, msg, &sig),
            Err(ErrorKind::InvalidAlgorithm)
        );
    }

    /// ring refuses RSA moduli under 2048 bits; those keys are RustCrypto's from the start and verify as before.
    #[test]
    fn a_small_rsa_key_is_left_to_rust_crypto_and_still_verifies() {
        let private = EncodingKey::from_rsa_pem(&read("rsa1024.key.pem")).unwrap();
        let public = DecodingKey::from_rsa_pem(&read("rsa1024.pub.pem")).unwrap();
        let t = token(Algorithm::RS256, &private);
        let loaded = LoadedKey::new(public.clone());
        assert_eq!(loaded.library(), Library::RustCrypto);
        let (msg, sig) = parts(&t);
        let rs256 = params(Algorithm::RS256).unwrap();
        assert!(
            !ring_verify(rs256, &loaded.key, msg, &sig),
            "ring takes 2048+ bits only"
        );
        assert!(loaded.verify(Algorithm::RS256, msg, &sig).is_ok());
        verify(&t, Algorithm::RS256, &public).unwrap();
        assert!(verify(&tampered(&t), Algorithm::RS256, &public).is_err());
    }

    /// Issue 10 item 12: the library is chosen per key, at load, by what ring accepts.
    #[test]
    fn each_key_is_given_to_one_library_when_it_is_loaded() {
        let pem = |name: &str| read(&format!("{name}.pub.pem"));
        let library = |key: DecodingKey| LoadedKey::new(key).library();
        assert_eq!(
            library(DecodingKey::from_rsa_pem(&pem("rsa1")).unwrap()),
            Library::Ring
        );
        assert_eq!(
            library(DecodingKey::from_rsa_pem(&pem("rsa2")).unwrap()),
            Library::Ring
        );
        assert_eq!(
            library(DecodingKey::from_rsa_pem(&pem("rsa1024")).unwrap()),
            Library::RustCrypto
        );
        assert_eq!(
            library(DecodingKey::from_ec_pem(&pem("ec256")).unwrap()),
            Library::Ring
        );
        assert_eq!(
            library(DecodingKey::from_ec_pem(&pem("ec384")).unwrap()),
            Library::Ring
        );
        assert_eq!(
            library(DecodingKey::from_ed_pem(&pem("ed25519")).unwrap()),
            Library::RustCrypto
        );
        assert_eq!(
            library(DecodingKey::from_secret(
                b"a-secret-of-32-bytes-or-more-xxxxx"
            )),
            Library::RustCrypto
        );
        let (n, e) = rsa1_components();
        assert_eq!(
            library(DecodingKey::from_rsa_raw_components(&n, &[1])),
            Library::RustCrypto,
            "ring takes no exponent below 3"
        );
        assert_eq!(
            library(DecodingKey::from_rsa_raw_components(
                &n,
                &[1, 0, 0, 0, 0, 1]
            )),
            Library::RustCrypto,
            "nor one above 2^33 - 1"
        );
        assert_eq!(
            library(DecodingKey::from_rsa_der(b"not DER")),
            Library::RustCrypto
        );

        // A modulus and exponent published with leading zero bytes are the same key, and ring's.
        let private = EncodingKey::from_rsa_pem(&read("rsa1.key.pem")).unwrap();
        let t = token(Algorithm::RS256, &private);
        let (msg, sig) = parts(&t);
        let padded = |v: &[u8]| [&[0u8][..], v].concat();
        let key = LoadedKey::new(DecodingKey::from_rsa_raw_components(
            &padded(&n),
            &padded(&e),
        ));
        assert_eq!(key.library(), Library::Ring);
        assert!(key.verify(Algorithm::RS256, msg, &sig).is_ok());

        // A compressed EC point: RustCrypto's, and it verifies.
        let private = EncodingKey::from_ec_pem(&read("ec256.key.pem")).unwrap();
        let t = token(Algorithm::ES256, &private);
        let (msg, sig) = parts(&t);
        let public = DecodingKey::from_ec_pem(&pem("ec256")).unwrap();
        let point = public.try_get_as_bytes().unwrap();
        let mut compressed = vec![0x02 | (point[64] & 1)];
        compressed.extend_from_slice(&point[1..33]);
        let key = LoadedKey::new(DecodingKey::from_ec_der(&compressed));
        assert_eq!(key.library(), Library::RustCrypto);
        assert!(key.verify(Algorithm::ES256, msg, &sig).is_ok());
    }

    #[test]
    fn pkcs1_components_reads_exactly_one_rsa_public_key() {
        // SEQUENCE { INTEGER 0x00 0x81, INTEGER 3 }: the sign byte is not part of the value.
        let der = [0x30, 0x07, 0x02, 0x02, 0x00, 0x81, 0x02, 0x01, 0x03];
        assert_eq!(pkcs1_components(&der), Some((&[0x81][..], &[0x03][..])));
        let mut trailing = der.to_vec();
        trailing.push(0);
        assert_eq!(pkcs1_components(&trailing), None, "bytes after the key");
        assert_eq!(
            pkcs1_components(&[0x30, 0x06, 0x02, 0x01, 0x81, 0x02, 0x01, 0x03]),
            None,
            "a negative modulus"
        );
        assert_eq!(pkcs1_components(&der[..8]), None, "truncated");
        assert_eq!(pkcs1_components(&[0x30, 0x84, 0xff, 0xff]), None);
    }
}
