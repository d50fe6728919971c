//! A compact JWS (`header.payload.signature`), split and decoded once per verification: the header before any key
//! is chosen, the signature before any key is tried, the claims only after a key verified them.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Header;
use serde_json::Value;

pub struct Compact<'a> {
    pub header: Header,
    /// The header has a `crit` parameter (whatever its value, `null` and `[]` included).
    pub critical: bool,
    /// `header.payload`: the bytes the signature covers.
    pub signing_input: &'a [u8],
    pub signature: Vec<u8>,
    payload: &'a str,
}

impl<'a> Compact<'a> {
    /// The three parts, or what is wrong with them (for the caller's message; never the token itself).
    pub fn parse(token: &'a str) -> Result<Self, &'static str> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("a JWT has three dot-separated parts");
        };
        let header = URL_SAFE_NO_PAD
            .decode(header)
            .ok()
            .and_then(|json| serde_json::from_slice::<serde_json::Map<String, Value>>(&json).ok())
            .ok_or("its header is not a base64url JSON object")?;
        let critical = header.contains_key("crit");
        let header = serde_json::from_value::<Header>(Value::Object(header))
            .map_err(|_| "its header does not name a known `alg`")?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| "its signature is not base64url")?;
        let signing_input = &token.as_bytes()[..token.len() - signature_len(token)];
        Ok(Self {
            header,
            critical,
            signing_input,
            signature,
            payload,
        })
    }

    /// The claims, a JSON object. Read them only once the signature is verified.
    pub fn claims(&self) -> Result<Value, &'static str> {
        URL_SAFE_NO_PAD
            .decode(self.payload)
            .ok()
            .and_then(|json| serde_json::from_slice::<Value>(&json).ok())
            .filter(Value::is_object)
            .ok_or("its claims are not a base64url JSON object")
    }
}

/// The length of `.signature` at the end of the token.
fn signature_len(token: &str) -> usize {
    token.rfind('.').map_or(0, |dot| token.len() - dot)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn a_token_is_split_into_what_the_signature_covers_and_the_signature() {
        let token = format!(
            "{}.{}.{}",
            b64(r#"{"alg":"RS256","kid":"k"}"#),
            b64(r#"{"sub":"a"}"#),
            b64("sig")
        );
        let jws = Compact::parse(&token).unwrap();
        assert_eq!(jws.header.kid.as_deref(), Some("k"));
        assert!(!jws.critical);
        assert_eq!(jws.signature, b"sig");
        let (input, _) = token.rsplit_once('.').unwrap();
        assert_eq!(jws.signing_input, input.as_bytes());
        assert_eq!(jws.claims().unwrap()["sub"], "a");
    }

    #[test]
    fn a_crit_parameter_is_seen_whatever_its_value() {
        for crit in [r#"["exp"]"#, "[]", "null"] {
            let token = format!(
                "{}.e30.c2ln",
                b64(&format!(r#"{{"alg":"ES256","crit":{crit}}}"#))
            );
            assert!(Compact::parse(&token).unwrap().critical, "{crit}");
        }
    }

    #[test]
    fn malformed_tokens_say_which_part_is_wrong() {
        let header = b64(r#"{"alg":"HS256"}"#);
        let why = |t: &str| Compact::parse(t).err();
        assert_eq!(why("a.b"), Some("a JWT has three dot-separated parts"));
        assert_eq!(
            why(&format!("{header}.e30.c2ln.x")),
            Some("a JWT has three dot-separated parts")
        );
        assert!(why(&format!("{}.e30.c2ln", b64(r#"{"alg":"none"}"#))).is_some());
        assert!(why(&format!("{header}.e30.c2ln=")).is_some(), "padding");
        let array_claims = format!("{header}.{}.c2ln", b64("[1]"));
        assert!(Compact::parse(&array_claims).unwrap().claims().is_err());
    }
}
