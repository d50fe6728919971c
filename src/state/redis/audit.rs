//! The audit trail on Redis: `audit.lua` appends (trimming entries past `state.task_retention_days`, and beyond
//! [`KEPT`]) and lists newest first.

use futures_util::FutureExt as _;
use serde_json::json;

use super::{RedisStore, bad_answer};
use crate::state::{Answer, Audit, AuditEntry, AuditPage, AuditQuery, page_of};

/// The most entries kept.
const KEPT: usize = 100_000;
/// The most entries one listing reads (a filter by kind may skip many): a page may come back short, with a
/// `next_cursor` where the scan stopped.
const SCAN: usize = 2_000;

impl Audit for RedisStore {
    fn audit(&self, entry: AuditEntry) -> Answer<'_, ()> {
        async move {
            let retention = jiff::SignedDuration::from_secs(
                i64::try_from(self.retention_secs).unwrap_or(i64::MAX / 2),
            );
            let now = self.now();
            let cutoff = now.checked_sub(retention).unwrap_or(now);
            let arg = json!({
                "op": "append",
                "key": self.keys.audit(),
                "at": entry.at,
                "id": entry.id,
                "entry": serde_json::to_string(&entry).map_err(|_| bad_answer("audit"))?,
                "cutoff": crate::clock::stamp(cutoff),
                "max": KEPT,
            })
            .to_string();
            let _: String = self
                .call_on(&self.side, "audit", async |c| {
                    self.audit.arg(&arg).invoke_async(c).await
                })
                .await?;
            Ok(())
        }
        .boxed()
    }

    fn audit_entries<'a>(&'a self, q: &'a AuditQuery) -> Answer<'a, AuditPage> {
        async move {
            // The tighter of `until` and the cursor; members are '<at>|<id>|…'.
            let mut max = q
                .until
                .as_ref()
                .map(|u| format!("({u}"))
                .unwrap_or_else(|| "+".to_owned());
            if let Some((at, id)) = &q.before {
                let bound = format!("({at}|{id}|");
                if max == "+" || bound < max {
                    max = bound;
                }
            }
            let arg = json!({
                "op": "list",
                "key": self.keys.audit(),
                "max": max,
                "min": q.since.as_ref().map(|s| format!("[{s}")).unwrap_or_else(|| "-".to_owned()),
                "kind": q.kind.as_deref().unwrap_or(""),
                "limit": q.limit,
                "scan": SCAN,
            })
            .to_string();
            let text: String = self
                .call_on(&self.side, "audit list", async |c| {
                    self.audit.arg(&arg).invoke_async(c).await
                })
                .await?;
            #[derive(serde::Deserialize)]
            struct Listed {
                entries: Vec<AuditEntry>,
                resume: Option<String>,
            }
            let listed: Listed =
                serde_json::from_str(&text).map_err(|_| bad_answer("audit list"))?;
            let (entries, next) =
                page_of(listed.entries, q.limit, |e| (e.at.clone(), e.id.clone()));
            // The scan stopped before the page filled (a kind filter over many other entries): the page is short,
            // and the next one resumes where the scan stopped.
            let next = next.or_else(|| {
                listed.resume.and_then(|r| {
                    r.split_once('|')
                        .map(|(at, id)| (at.to_owned(), id.to_owned()))
                })
            });
            Ok(AuditPage { entries, next })
        }
        .boxed()
    }
}
