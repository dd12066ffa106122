//! Held operations and just-in-time grants (`action = "approve"`).
//!
//! A session whose request (an HTTP request, a SQL statement) an `approve` rule matches waits
//! in [`Approvals::hold`] until a person allowed by the rule's `approvers` decides with
//! `react-gateway approvals approve|deny ID` (the control socket), or until the rule's
//! `timeout` denies it. An approval may leave a grant (the rule's `grant`, or `--for`): for
//! that long the same caller (cgroup and uid) passes the same rule without asking again.
//!
//! Held operations and grants live in the daemon's memory only: a daemon that stops denies
//! what it held (the agents' connections end with it) and forgets its grants.

use std::{
    collections::BTreeMap,
    sync::Mutex,
    time::{Duration, Instant, SystemTime},
};

use serde::Serialize;
use tokio::sync::oneshot;

use crate::{
    policy::{Approval, Rule},
    session::Identity,
};

/// The caller of the control socket, as the kernel attests it (`SO_PEERCRED`).
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<u32>,
}

/// One operation waiting for a decision, as `approvals list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Held {
    pub id: String,
    pub session: String,
    pub rule: String,
    pub target: Option<String>,
    pub identity: Identity,
    /// What is held, as the session records it (masked): `POST /v1/refunds`, or SQL text.
    pub operation: String,
    pub held_at: String,
    pub expires_at: String,
    /// Who may decide (the rule's `approvers`).
    pub approvers: Vec<String>,
}

/// What an operation is held for.
pub struct Hold<'a> {
    pub session: &'a str,
    pub rule: &'a str,
    pub approval: &'a Approval,
    pub target: Option<&'a str>,
    pub identity: &'a Identity,
    pub operation: String,
}

/// How a hold ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// A person approved it (`by`: their uid); `grant`: until when the caller passes again.
    Approved { by: u32, grant: Option<String> },
    /// An earlier approval's grant covered it; nobody was asked.
    Granted { until: String },
    Denied {
        /// `None`: nobody decided (the timeout, or the daemon stopping).
        by: Option<u32>,
        reason: String,
    },
}

impl Decision {
    /// Denied without anyone deciding.
    pub fn denied(reason: &str) -> Self {
        Self::Denied {
            by: None,
            reason: reason.to_owned(),
        }
    }

    /// The `approval` event of the session.
    pub fn event(&self, id: Option<&str>, rule: &str, waited: Duration) -> serde_json::Value {
        let mut event = serde_json::json!({
            "rule": rule,
            "waited_ms": u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
        });
        if let Some(id) = id {
            event["id"] = id.into();
        }
        match self {
            Self::Approved { by, grant } => {
                event["decision"] = "approved".into();
                event["by_uid"] = (*by).into();
                if let Some(grant) = grant {
                    event["grant_until"] = grant.as_str().into();
                }
            }
            Self::Granted { until } => {
                event["decision"] = "granted".into();
                event["grant_until"] = until.as_str().into();
            }
            Self::Denied { by, reason } => {
                event["decision"] = "denied".into();
                if let Some(by) = by {
                    event["by_uid"] = (*by).into();
                }
                event["reason"] = reason.as_str().into();
            }
        }
        event
    }
}

/// A decision asked for on the control socket.
#[derive(Debug, Clone)]
pub enum Verdict {
    Approve { grant: Option<Duration> },
    Deny { reason: Option<String> },
}

struct Waiting {
    held: Held,
    grant: Option<Duration>,
    reply: oneshot::Sender<Decision>,
}

struct Grant {
    rule: String,
    cgroup: Option<String>,
    uid: Option<u32>,
    until: Instant,
    until_text: String,
}

#[derive(Default)]
struct State {
    waiting: BTreeMap<String, Waiting>,
    grants: Vec<Grant>,
}

/// The daemon's held operations and grants.
#[derive(Default)]
pub struct Approvals {
    state: Mutex<State>,
}

/// The longest reason of a denial passed on to the agent (characters).
const MAX_REASON: usize = 500;

/// Removes a held operation whose session went away (the agent hung up, the daemon stopped).
struct Forget<'a> {
    approvals: &'a Approvals,
    id: String,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        crate::lock(&self.approvals.state).waiting.remove(&self.id);
    }
}

impl Approvals {
    /// Holds an operation until it is approved or denied (or its rule's timeout denies it).
    /// The returned id is `None` when a grant let it pass without a hold.
    pub async fn hold(&self, hold: Hold<'_>) -> (Option<String>, Decision) {
        let now = Instant::now();
        let (id, reply) = {
            let mut state = crate::lock(&self.state);
            state.grants.retain(|g| g.until > now);
            if let Some(grant) = state.grants.iter().find(|g| {
                g.rule == hold.rule
                    && g.cgroup == hold.identity.cgroup
                    && g.uid == hold.identity.uid
            }) {
                let until = grant.until_text.clone();
                return (None, Decision::Granted { until });
            }
            let id = crate::session::new_id();
            let at = SystemTime::now();
            let (tx, rx) = oneshot::channel();
            let shown = Held {
                id: id.clone(),
                session: hold.session.to_owned(),
                rule: hold.rule.to_owned(),
                target: hold.target.map(str::to_owned),
                identity: hold.identity.clone(),
                operation: hold.operation,
                held_at: crate::session::timestamp(at),
                expires_at: crate::session::timestamp(at + hold.approval.timeout),
                approvers: hold.approval.approvers.clone(),
            };
            state.waiting.insert(
                id.clone(),
                Waiting {
                    held: shown,
                    grant: hold.approval.grant,
                    reply: tx,
                },
            );
            (id, rx)
        };
        tracing::info!(%id, session = hold.session, rule = hold.rule, "operation held for approval");
        let forget = Forget {
            approvals: self,
            id: id.clone(),
        };
        let mut reply = reply;
        let decision = match tokio::time::timeout(hold.approval.timeout, &mut reply).await {
            Ok(Ok(decision)) => decision,
            Ok(Err(_)) => Decision::denied("the daemon stopped before a decision"),
            Err(_) => {
                // Forgotten first, so a decision either arrived by now or is refused.
                drop(forget);
                reply.try_recv().unwrap_or_else(|_| {
                    Decision::denied(&format!(
                        "no decision within {}",
                        humantime::format_duration(hold.approval.timeout)
                    ))
                })
            }
        };
        (Some(id), decision)
    }

    /// What `peer` may decide (everything, for root).
    pub fn list(&self, peer: Peer) -> Vec<Held> {
        crate::lock(&self.state)
            .waiting
            .values()
            .filter(|w| peer.uid == 0 || may_decide(&w.held.approvers, peer))
            .map(|w| w.held.clone())
            .collect()
    }

    /// Held operations and live grants, for `status`.
    pub fn counts(&self) -> (usize, usize) {
        let now = Instant::now();
        let state = crate::lock(&self.state);
        let grants = state.grants.iter().filter(|g| g.until > now).count();
        (state.waiting.len(), grants)
    }

    /// Approves or denies the held operation `id` (or the only one whose id starts with it)
    /// for `peer`, who must be one of the rule's approvers. `governed`: the peer runs in a
    /// governed cgroup, where agents run; an agent never decides on what it asked.
    pub fn decide(
        &self,
        id: &str,
        verdict: Verdict,
        peer: Peer,
        governed: bool,
    ) -> Result<serde_json::Value, String> {
        let mut state = crate::lock(&self.state);
        let id = find(&state.waiting, id)?;
        let waiting = &state.waiting[&id];
        if governed {
            return Err(format!(
                "{id}: refused: the caller runs in a governed cgroup (an agent cannot decide on held operations)"
            ));
        }
        if !may_decide(&waiting.held.approvers, peer) {
            return Err(format!(
                "{id}: uid {} is not among the approvers of rule {} ({})",
                peer.uid,
                waiting.held.rule,
                waiting.held.approvers.join(", ")
            ));
        }
        let Some(waiting) = state.waiting.remove(&id) else {
            return Err(format!("{id}: no such held operation"));
        };
        let held = waiting.held;
        let (decision, answer) = match verdict {
            Verdict::Approve { grant } => {
                let grant = grant.or(waiting.grant).map(|d| {
                    let until_text = crate::session::timestamp(SystemTime::now() + d);
                    state.grants.push(Grant {
                        rule: held.rule.clone(),
                        cgroup: held.identity.cgroup.clone(),
                        uid: held.identity.uid,
                        until: Instant::now() + d,
                        until_text: until_text.clone(),
                    });
                    until_text
                });
                let answer = serde_json::json!({
                    "approved": id, "rule": held.rule, "grant_until": grant,
                });
                (
                    Decision::Approved {
                        by: peer.uid,
                        grant,
                    },
                    answer,
                )
            }
            Verdict::Deny { reason } => {
                // It reaches the agent in a SQL error or a JSON body: one line, no NUL, bounded.
                let reason: String = reason
                    .as_deref()
                    .unwrap_or("denied by an approver")
                    .chars()
                    .map(|c| if c.is_control() { ' ' } else { c })
                    .take(MAX_REASON)
                    .collect();
                let answer = serde_json::json!({"denied": id, "rule": held.rule, "reason": reason});
                (
                    Decision::Denied {
                        by: Some(peer.uid),
                        reason,
                    },
                    answer,
                )
            }
        };
        tracing::info!(%id, uid = peer.uid, ?decision, "held operation decided");
        if waiting.reply.send(decision).is_err() {
            return Err(format!(
                "{id}: the session ended while it was held; nothing was decided"
            ));
        }
        Ok(answer)
    }
}

/// Holds `operation`, which the `approve` rule `rule` matched, until a person decides (or the
/// rule's timeout denies it). Returns the session's `approval` event (the caller adds what was
/// held) and `Err(reason)` when it was denied.
pub async fn ask(
    approvals: &Approvals,
    rule: &Rule,
    session: &str,
    target: Option<&str>,
    identity: &Identity,
    operation: String,
) -> (serde_json::Value, Result<(), String>) {
    let started = Instant::now();
    let (id, decision) = match &rule.approval {
        Some(approval) => {
            approvals
                .hold(Hold {
                    session,
                    rule: &rule.name,
                    approval,
                    target,
                    identity,
                    operation,
                })
                .await
        }
        None => (None, Decision::denied("the rule has no approval settings")),
    };
    let event = decision.event(id.as_deref(), &rule.name, started.elapsed());
    match decision {
        Decision::Denied { reason, .. } => (event, Err(reason)),
        Decision::Approved { .. } | Decision::Granted { .. } => (event, Ok(())),
    }
}

/// The held operation `id` names: itself, or the only one it is a prefix of (ids are long).
fn find(waiting: &BTreeMap<String, Waiting>, id: &str) -> Result<String, String> {
    let id = id.trim().to_ascii_uppercase();
    if id.is_empty() {
        return Err("an empty id names no held operation".into());
    }
    let mut matches = waiting
        .range(id.clone()..)
        .take_while(|(k, _)| k.starts_with(&id));
    match (matches.next(), matches.next()) {
        (Some((k, _)), None) => Ok(k.clone()),
        (Some(_), Some(_)) => Err(format!(
            "{id}: names more than one held operation; give more of the id"
        )),
        (None, _) => Err(format!(
            "{id}: no such held operation (decided already, timed out, or its session ended; `approvals list` shows what is held)"
        )),
    }
}

/// Whether `peer` is one of `approvers` (`uid:N`, `user:NAME`, `group:NAME`: the group's
/// gid as the peer's primary group, or the peer's user name among its members).
fn may_decide(approvers: &[String], peer: Peer) -> bool {
    use nix::unistd::{Gid, Group, Uid, User};
    let user = || User::from_uid(Uid::from_raw(peer.uid)).ok().flatten();
    approvers
        .iter()
        .any(|approver| match approver.split_once(':') {
            Some(("uid", n)) => n.parse::<u32>().is_ok_and(|n| n == peer.uid),
            Some(("user", name)) => User::from_name(name)
                .ok()
                .flatten()
                .is_some_and(|u| u.uid.as_raw() == peer.uid),
            Some(("group", name)) => Group::from_name(name).ok().flatten().is_some_and(|g| {
                g.gid == Gid::from_raw(peer.gid)
                    || user().is_some_and(|u| u.gid == g.gid || g.mem.contains(&u.name))
            }),
            _ => false,
        })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn approval(timeout: Duration, grant: Option<Duration>) -> Approval {
        Approval {
            timeout,
            grant,
            approvers: vec!["uid:0".into(), "uid:1234".into()],
        }
    }

    fn identity() -> Identity {
        Identity {
            cgroup: Some("/react-gateway/agent".into()),
            uid: Some(1000),
            ..Identity::default()
        }
    }

    const ROOT: Peer = Peer {
        uid: 0,
        gid: 0,
        pid: None,
    };

    async fn held(approvals: &Approvals) -> String {
        for _ in 0..1000 {
            if let Some(h) = approvals.list(ROOT).first() {
                return h.id.clone();
            }
            tokio::task::yield_now().await;
        }
        panic!("nothing was held");
    }

    #[tokio::test]
    async fn approval_releases_the_hold_and_grants_the_caller() {
        let approvals = Arc::new(Approvals::default());
        let rule = approval(Duration::from_mins(1), Some(Duration::from_mins(1)));
        let caller = identity();
        let hold = |approvals: Arc<Approvals>, rule: Approval, caller: Identity| async move {
            approvals
                .hold(Hold {
                    session: "S1",
                    rule: "needs-approval",
                    approval: &rule,
                    target: Some("api"),
                    identity: &caller,
                    operation: "POST /refunds".into(),
                })
                .await
        };
        let waiter = tokio::spawn(hold(Arc::clone(&approvals), rule.clone(), caller.clone()));
        let id = held(&approvals).await;
        let listed = approvals.list(ROOT);
        assert_eq!(listed[0].operation, "POST /refunds");
        assert_eq!(listed[0].rule, "needs-approval");
        // Someone who is not an approver, and an agent, are refused; the hold goes on.
        let stranger = Peer {
            uid: 4321,
            gid: 4321,
            pid: None,
        };
        assert!(approvals.list(stranger).is_empty());
        let err = approvals
            .decide(&id, Verdict::Approve { grant: None }, stranger, false)
            .unwrap_err();
        assert!(err.contains("not among the approvers"), "{err}");
        let err = approvals
            .decide(&id, Verdict::Approve { grant: None }, ROOT, true)
            .unwrap_err();
        assert!(err.contains("governed cgroup"), "{err}");
        // A prefix of the id is enough.
        let approver = Peer {
            uid: 1234,
            gid: 1234,
            pid: None,
        };
        approvals
            .decide(
                &id[..10].to_lowercase(),
                Verdict::Approve { grant: None },
                approver,
                false,
            )
            .unwrap();
        let (got, decision) = waiter.await.unwrap();
        assert_eq!(got.as_deref(), Some(id.as_str()));
        assert!(matches!(
            decision,
            Decision::Approved {
                by: 1234,
                grant: Some(_)
            }
        ));
        assert_eq!(approvals.counts(), (0, 1));
        // The grant lets the same caller pass the same rule at once...
        let (id, decision) = hold(Arc::clone(&approvals), rule.clone(), caller.clone()).await;
        assert!(id.is_none());
        assert!(matches!(decision, Decision::Granted { .. }));
        // ...but not another caller.
        let other = Identity {
            uid: Some(1001),
            ..caller
        };
        let waiter = tokio::spawn(hold(Arc::clone(&approvals), rule, other));
        let id = held(&approvals).await;
        approvals
            .decide(
                &id,
                Verdict::Deny {
                    reason: Some("not\0today\n".into()),
                },
                ROOT,
                false,
            )
            .unwrap();
        let (_, decision) = waiter.await.unwrap();
        assert_eq!(
            decision,
            Decision::Denied {
                by: Some(0),
                reason: "not today ".into()
            }
        );
        let err = approvals
            .decide(&id, Verdict::Approve { grant: None }, ROOT, false)
            .unwrap_err();
        assert!(err.contains("no such held operation"), "{err}");
    }

    #[tokio::test]
    async fn an_undecided_hold_is_denied_at_the_timeout_and_forgotten() {
        let approvals = Approvals::default();
        let rule = approval(Duration::from_millis(50), None);
        let (id, decision) = approvals
            .hold(Hold {
                session: "S1",
                rule: "r",
                approval: &rule,
                target: None,
                identity: &identity(),
                operation: "DROP TABLE t".into(),
            })
            .await;
        assert!(id.is_some());
        assert_eq!(
            decision,
            Decision::Denied {
                by: None,
                reason: "no decision within 50ms".into()
            }
        );
        assert_eq!(approvals.counts(), (0, 0));
    }

    #[test]
    fn approvers_by_uid_user_and_group() {
        let root = Peer {
            uid: 0,
            gid: 0,
            pid: None,
        };
        assert!(may_decide(&["uid:0".into()], root));
        assert!(may_decide(&["user:root".into()], root));
        assert!(may_decide(&["group:root".into()], root));
        assert!(!may_decide(
            &["uid:1".into(), "group:no-such-group".into()],
            root
        ));
        let other = Peer {
            uid: 4321,
            gid: 4321,
            pid: None,
        };
        assert!(!may_decide(
            &["user:root".into(), "group:root".into()],
            other
        ));
    }

    #[test]
    fn ids_are_found_by_unique_prefix() {
        let mut waiting = BTreeMap::new();
        for id in ["01AAA", "01AAB", "01B"] {
            let (tx, _) = oneshot::channel();
            waiting.insert(
                id.to_owned(),
                Waiting {
                    held: Held {
                        id: id.into(),
                        session: String::new(),
                        rule: String::new(),
                        target: None,
                        identity: Identity::default(),
                        operation: String::new(),
                        held_at: String::new(),
                        expires_at: String::new(),
                        approvers: Vec::new(),
                    },
                    grant: None,
                    reply: tx,
                },
            );
        }
        assert_eq!(find(&waiting, "01b").unwrap(), "01B");
        assert_eq!(find(&waiting, "01AAB").unwrap(), "01AAB");
        assert!(find(&waiting, "01A").unwrap_err().contains("more than one"));
        assert!(find(&waiting, "02").unwrap_err().contains("no such"));
        assert!(find(&waiting, " ").unwrap_err().contains("empty"));
    }
}
