//! What a Vidu answer says about a task, handed to the store: a query answer (the reconciler's, a caller's, the
//! one confirming a callback) or a cancel Vidu accepted.

use actix_web::http::Method;
use serde_json::Value;

use crate::forward::upstream::{Endpoint, Upstream, UpstreamRequest};
use crate::metrics::{CreditLabels, Metrics, TaskLabels};
use crate::state::{Observation, Store, TaskState, Transition};

/// The state a `GET /ent/v2/tasks/{id}/creations` answer (or a callback body) reports; `None` when it names none
/// the gateway knows (an unknown state is not an end).
pub fn observation(task_id: &str, body: &[u8]) -> Option<Observation> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let state = v
        .get("state")
        .or_else(|| v.get("status"))
        .and_then(Value::as_str)
        .and_then(TaskState::parse)?;
    Some(Observation {
        task_id: task_id.to_owned(),
        state,
        credits: v.get("credits").and_then(Value::as_u64),
        body: String::from_utf8_lossy(body).into_owned(),
    })
}

/// A cancel Vidu answered 200: the task is cancelled (relayed as a query answer would report it).
pub fn cancelled(task_id: &str) -> Observation {
    Observation {
        task_id: task_id.to_owned(),
        state: TaskState::Cancelled,
        credits: Some(0),
        body: serde_json::json!({
            "id": task_id,
            "state": "cancelled",
            "err_code": "UserCancelled",
            "credits": 0,
            "creations": [],
        })
        .to_string(),
    }
}

/// Hands a state to the store and counts what changed. Errors are logged: the reconciler tries again later.
pub async fn learn(store: &dyn Store, metrics: &Metrics, seen: &Observation) -> Option<Transition> {
    match store.observe(seen).await {
        Ok(Some(t)) => {
            count(metrics, &t);
            Some(t)
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(task_id = %seen.task_id, error = %e, "the state backend could not record a task's state; the reconciler will ask again");
            None
        }
    }
}

fn count(metrics: &Metrics, t: &Transition) {
    let team = if t.task.team.is_empty() {
        "-".to_owned()
    } else {
        t.task.team.clone()
    };
    if t.task.state.is_terminal() {
        metrics
            .lifecycle
            .tasks_ended
            .get_or_create(&TaskLabels {
                state: t.task.state.as_str(),
                team: team.clone(),
            })
            .inc();
        tracing::info!(
            task_id = %t.task.task_id,
            user = %t.task.user,
            team = %t.task.team,
            from = %t.from,
            state = %t.task.state,
            charged = t.task.charged,
            refunded = t.refunded,
            "task ended"
        );
    }
    let credit = |kind: &'static str, n: u64| {
        if n > 0 {
            metrics
                .credits
                .get_or_create(&CreditLabels {
                    kind,
                    team: team.clone(),
                })
                .inc_by(n);
        }
    };
    credit("refunded", t.refunded);
    credit("adjusted_up", u64::try_from(t.adjusted).unwrap_or(0));
    credit(
        "adjusted_down",
        u64::try_from(t.adjusted.saturating_neg()).unwrap_or(0),
    );
}

/// How asking Vidu about a task went.
#[derive(Debug, PartialEq, Eq)]
pub enum Asked {
    /// Vidu answered with a state (changed or not).
    Answered,
    /// Vidu does not know the task (404).
    NotFound,
    Failed(String),
}

/// Asks Vidu for a task's state and hands it to the store.
pub async fn ask(
    upstream: &Upstream,
    store: &dyn Store,
    metrics: &Metrics,
    task_id: &str,
    request_id: String,
) -> Asked {
    let call = UpstreamRequest {
        endpoint: Endpoint::TaskCreations,
        method: Method::GET,
        path: format!("/ent/v2/tasks/{task_id}/creations"),
        body: bytes::Bytes::new(),
        request_id,
    };
    match upstream.send(call, metrics).await {
        Ok(r) if r.status.is_success() => match observation(task_id, &r.body) {
            Some(seen) => {
                learn(store, metrics, &seen).await;
                Asked::Answered
            }
            None => Asked::Failed("the answer names no task state".into()),
        },
        Ok(r) if r.status.as_u16() == 404 => Asked::NotFound,
        Ok(r) => Asked::Failed(format!("Vidu answered {}", r.status)),
        Err(e) => Asked::Failed(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_answer_says_the_state_and_credits() {
        let o = observation(
            "7",
            br#"{"id":"7","state":"success","credits":35,"creations":[]}"#,
        );
        assert_eq!(
            o.as_ref().map(|o| (o.state, o.credits)),
            Some((TaskState::Success, Some(35)))
        );
        let o = observation("7", br#"{"status":"failed","err_code":"X"}"#);
        assert_eq!(
            o.map(|o| o.state),
            Some(TaskState::Failed),
            "status is accepted too"
        );
        assert_eq!(observation("7", br#"{"state":"dreaming"}"#), None);
        assert_eq!(observation("7", b"not json"), None);
        let c = cancelled("9");
        assert_eq!((c.state, c.credits), (TaskState::Cancelled, Some(0)));
        assert!(c.body.contains(r#""id":"9""#));
    }
}
