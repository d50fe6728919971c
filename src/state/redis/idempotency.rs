//! The redis backend's `Idempotency-Key` records: every claim, abandon and keep is one call of `idempotency.lua`,
//! so two replicas never both take a key. Records live at `{prefix}:idem:<IdemKey::digest()>`.

use std::sync::LazyLock;

use super::*;

pub(super) const SOURCE: &str = include_str!("idempotency.lua");

static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(SOURCE));

impl RedisStore {
    fn idem_key(&self, key: &IdemKey) -> String {
        format!("{}:idem:{}", self.keys.tag, key.digest())
    }

    /// The script's arguments for `op` on `claim` (and, to keep, the answer's status and headers).
    fn idem_json(&self, op: &str, claim: &IdemClaim, kept: Option<(&StoredAnswer, u64)>) -> String {
        let (status, headers, ttl_ms) = match kept {
            Some((answer, ttl_secs)) => (
                answer.status,
                answer.headers_json(),
                ttl_secs.saturating_mul(1000),
            ),
            None => (0, String::new(), 0),
        };
        json!({
            "op": op,
            "key": self.idem_key(&claim.key),
            "token": claim.token,
            "hash": claim.hash_hex(),
            "lease_ms": claim.lease_ms.max(1),
            "ttl_ms": ttl_ms.max(1),
            "status": status,
            "headers": headers,
            "now_ms": self.clock.as_ref().map(|c| c.now().as_millisecond()),
        })
        .to_string()
    }

    async fn idem_call<T: ::redis::FromRedisValue>(
        &self,
        what: &'static str,
        arg: String,
        body: &[u8],
    ) -> Result<T, StoreError> {
        self.call(what, async |c| {
            SCRIPT.arg(&arg).arg(body).invoke_async(c).await
        })
        .await
    }
}

/// The claim script's answer.
fn claim_of(reply: Vec<Vec<u8>>) -> Result<Claim, StoreError> {
    let text = |i: usize| {
        reply
            .get(i)
            .and_then(|v| std::str::from_utf8(v).ok())
            .ok_or_else(|| bad_answer("idempotency claim"))
    };
    Ok(match text(0)? {
        "claimed" => Claim::Claimed,
        "reused" => Claim::Reused,
        "in_flight" => Claim::InFlight {
            lease_left_ms: text(1)?.parse().unwrap_or(0),
        },
        "replay" => Claim::Replay(StoredAnswer {
            status: text(1)?
                .parse()
                .map_err(|_| bad_answer("idempotency claim"))?,
            headers: StoredAnswer::headers_from_json(text(2)?),
            body: reply.get(3).cloned().unwrap_or_default().into(),
        }),
        _ => return Err(bad_answer("idempotency claim")),
    })
}

impl Idempotency for RedisStore {
    fn claim<'a>(&'a self, claim: &'a IdemClaim) -> Answer<'a, Claim> {
        async move {
            let arg = self.idem_json("claim", claim, None);
            claim_of(self.idem_call("idempotency claim", arg, b"").await?)
        }
        .boxed()
    }

    fn abandon<'a>(&'a self, claim: &'a IdemClaim) -> Answer<'a, ()> {
        async move {
            let arg = self.idem_json("abandon", claim, None);
            self.idem_call::<i64>("idempotency abandon", arg, b"")
                .await?;
            Ok(())
        }
        .boxed()
    }

    fn keep<'a>(
        &'a self,
        claim: &'a IdemClaim,
        answer: &'a StoredAnswer,
        ttl_secs: u64,
    ) -> Answer<'a, bool> {
        async move {
            let arg = self.idem_json("keep", claim, Some((answer, ttl_secs)));
            let kept: i64 = self
                .idem_call("idempotency keep", arg, &answer.body)
                .await?;
            Ok(kept == 1)
        }
        .boxed()
    }
}
