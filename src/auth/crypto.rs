//! JWT signature checks with `ring` (already built for rustls): RS*/PS* and ES256/ES384 tokens are verified about
//! 5–9× faster than with RustCrypto (bench/PROFILE.md: ES256 52 vs 278 µs, RS256 21 vs 185 µs). That is the cost
//! of every token's first request, and of every request from a client that mints a token per call. HMAC, EdDSA,
//! signing and key utilities stay with jsonwebtoken's RustCrypto provider.
//!
//! Never less strict than before: the key must belong to the algorithm's family (the HS/RS confusion defence is
//! unchanged), and a signature ring does not accept is checked again by RustCrypto, so a key ring cannot use (an
//! RSA modulus under 2048 bits, a compressed EC point) verifies exactly as it did.

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

fn verifier_factory(alg: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>> {
    let Some(params) = params(*alg) else {
        return (rust_crypto::DEFAULT_PROVIDER.verifier_factory)(alg, key);
    };
    let family = match params {
        Params::Rsa(_) => AlgorithmFamily::Rsa,
        Params::Ecdsa(_) => AlgorithmFamily::Ec,
    };
    if key.family() != family {
        return Err(ErrorKind::InvalidKeyFormat.into());
    }
    if matches!(params, Params::Ecdsa(_)) && !matches!(key.kind(), DecodingKeyKind::SecretOrDer(_))
    {
        return Err(ErrorKind::InvalidKeyFormat.into());
    }
    Ok(Box::new(RingVerifier {
        alg: *alg,
        params,
        key: key.clone(),
    }))
}

struct RingVerifier {
    alg: Algorithm,
    params: Params,
    key: DecodingKey,
}

impl RingVerifier {
    fn ring_accepts(&self, msg: &[u8], sig: &[u8]) -> bool {
        match (self.params, self.key.kind()) {
            (Params::Rsa(p), DecodingKeyKind::RsaModulusExponent { n, e }) => {
                RsaPublicKeyComponents { n, e }.verify(p, msg, sig).is_ok()
            }
            (Params::Rsa(p), DecodingKeyKind::SecretOrDer(pkcs1)) => {
                UnparsedPublicKey::new(p, pkcs1).verify(msg, sig).is_ok()
            }
            (Params::Ecdsa(p), DecodingKeyKind::SecretOrDer(point)) => {
                UnparsedPublicKey::new(p, point).verify(msg, sig).is_ok()
            }
            (Params::Ecdsa(_), DecodingKeyKind::RsaModulusExponent { .. }) => false,
        }
    }
}

impl Verifier<Vec<u8>> for RingVerifier {
    fn verify(&self, msg: &[u8], signature: &Vec<u8>) -> std::result::Result<(), Error> {
        if self.ring_accepts(msg, signature) {
            return Ok(());
        }
        let fallback = (rust_crypto::DEFAULT_PROVIDER.verifier_factory)(&self.alg, &self.key)
            .map_err(Error::from_source)?;
        fallback.verify(msg, signature)
    }
}

impl JwtVerifier for RingVerifier {
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

    /// Through jsonwebtoken (the provider installed), after checking that ring itself accepts it when ring
    /// handles the algorithm — so the fast path, not the fallback, is what is tested.
    fn verify(token: &str, alg: Algorithm, key: &DecodingKey) -> Result<()> {
        install();
        if let Some(params) = params(alg) {
            let (msg, sig) = token.rsplit_once('.').unwrap();
            let sig =
                base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, sig)
                    .unwrap();
            let ring = RingVerifier {
                alg,
                params,
                key: key.clone(),
            };
            let by_ring = ring.ring_accepts(msg.as_bytes(), &sig);
            let by_rust_crypto = (rust_crypto::DEFAULT_PROVIDER.verifier_factory)(&alg, key)
                .is_ok_and(|v| v.verify(msg.as_bytes(), &sig).is_ok());
            let small_rsa = key.family() == AlgorithmFamily::Rsa
                && key.try_get_as_bytes().is_ok_and(|der| der.len() < 200);
            if !small_rsa {
                assert_eq!(
                    by_ring, by_rust_crypto,
                    "{alg:?}: ring and RustCrypto disagree"
                );
            }
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

    #[test]
    fn rsa_keys_given_as_modulus_and_exponent_verify_too() {
        let private = EncodingKey::from_rsa_pem(&read("rsa1.key.pem")).unwrap();
        let (n, e) = (rust_crypto::DEFAULT_PROVIDER
            .key_utils
            .rsa_pub_components_from_public_key)(
            DecodingKey::from_rsa_pem(&read("rsa1.pub.pem"))
                .unwrap()
                .try_get_as_bytes()
                .unwrap(),
        )
        .unwrap();
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
    }

    /// ring refuses RSA moduli under 2048 bits; those keys still verify (through RustCrypto) as before.
    #[test]
    fn a_small_rsa_key_still_verifies_through_the_fallback() {
        let private = EncodingKey::from_rsa_pem(&read("rsa1024.key.pem")).unwrap();
        let public = DecodingKey::from_rsa_pem(&read("rsa1024.pub.pem")).unwrap();
        let t = token(Algorithm::RS256, &private);
        let verifier = verifier_factory(&Algorithm::RS256, &public).unwrap();
        let (msg, sig) = t.rsplit_once('.').unwrap();
        let sig =
            base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, sig).unwrap();
        let ring_only = RingVerifier {
            alg: Algorithm::RS256,
            params: Params::Rsa(&ring_sig::RSA_PKCS1_2048_8192_SHA256),
            key: public.clone(),
        };
        assert!(
            !ring_only.ring_accepts(msg.as_bytes(), &sig),
            "ring takes 2048+ bits only"
        );
        assert!(verifier.verify(msg.as_bytes(), &sig).is_ok());
        verify(&t, Algorithm::RS256, &public).unwrap();
        assert!(verify(&tampered(&t), Algorithm::RS256, &public).is_err());
    }
}
