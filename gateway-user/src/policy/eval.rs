//! Evaluation: pure functions over a compiled [`Policy`], cheap enough for every request.
//!
//! * identities of a caller: every `[[identity]]` whose conditions all hold ([`IdSet`]);
//! * target of a destination: the first `[[target]]` in policy order whose address and port
//!   conditions hold and, when it names hosts, whose hosts match the SNI or HTTP Host;
//! * connection verdict: deny (unmatched under `unmatched = "deny"`, or an unconditional
//!   `block` rule) or allow, with the recording level;
//! * operation decision: the rules acting on one request, response, statement or row, with
//!   the precedence `block` > `approve` > `mask` > `allow` (all matching masks apply).

use std::{cell::OnceCell, collections::BTreeSet, net::IpAddr};

use super::{Action, Conditions, Direction, Identity, Policy, RecordLevel, Rule, Unmatched};
use crate::{
    mask::{self, MaskContext},
    sql,
};

/// A set of identity indexes (at most [`super::MAX_IDENTITIES`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IdSet(u128);

impl IdSet {
    pub const EMPTY: Self = Self(0);

    pub fn insert(&mut self, index: usize) {
        if index < 128 {
            self.0 |= 1 << index;
        }
    }

    pub fn contains(self, index: usize) -> bool {
        index < 128 && self.0 & (1 << index) != 0
    }

    pub fn intersects(self, other: Self) -> bool {
        self.0 & other.0 != 0
    }

    pub fn iter(self) -> impl Iterator<Item = usize> {
        (0..128).filter(move |i| self.contains(*i))
    }
}

/// The caller as the kernel attested it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Who<'a> {
    /// cgroup path relative to the cgroup2 mount, starting with `/`.
    pub cgroup: Option<&'a str>,
    pub uid: Option<u32>,
    pub exe: Option<&'a str>,
}

/// Which target a destination resolved to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Resolution {
    /// The first target whose conditions all hold.
    pub target: Option<usize>,
    /// An earlier target names hosts and might match once the SNI or Host is known.
    pub pending: bool,
}

/// What happens to a connection as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnVerdict {
    Allow {
        target: Option<usize>,
        record: RecordLevel,
    },
    /// `rule` is `None` when the destination matched no target under `unmatched = "deny"`.
    Deny { rule: Option<usize> },
}

/// One entry of the kernel's destination table (see [`Policy::kernel_verdicts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelVerdict {
    pub net: ipnet::IpNet,
    /// `None` = every port.
    pub port: Option<u16>,
    pub deny: bool,
}

/// One operation inside a session.
#[derive(Debug, Clone, Copy)]
pub enum Operation<'a> {
    HttpRequest {
        method: &'a str,
        path: &'a str,
        body: &'a [u8],
    },
    HttpResponse {
        status: u16,
        body: &'a [u8],
    },
    Sql {
        text: &'a str,
    },
    /// A `PostgreSQL` result row.
    Row {
        columns: &'a [String],
        values: &'a [String],
    },
}

impl Operation<'_> {
    fn is_request(&self) -> bool {
        matches!(self, Self::HttpRequest { .. } | Self::Sql { .. })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Block(usize),
    Approve(usize),
}

/// The rules acting on one operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    /// Matching mask rules, in policy order; all apply.
    pub masks: Vec<usize>,
    /// Every matching rule that acts (the winning block/approve, masks, allows, records).
    pub acting: Vec<usize>,
}

impl Policy {
    /// Every identity whose conditions all hold for `who`.
    pub fn identities_of(&self, who: &Who<'_>) -> IdSet {
        let index = &self.identity_index;
        let mut cgroup_ok = index.no_cgroup;
        let mut exe_ok = index.no_exe;
        let mut uid_ok = index.no_uid;
        SCRATCH.with_borrow_mut(|hits| {
            if let Some(cgroup) = who.cgroup {
                index.cgroups.matches_into(cgroup, hits);
                for &hit in hits.iter() {
                    cgroup_ok.insert(index.cgroup_owner[hit]);
                }
            }
            if let Some(exe) = who.exe {
                index.exes.matches_into(exe, hits);
                for &hit in hits.iter() {
                    exe_ok.insert(index.exe_owner[hit]);
                }
            }
        });
        if let Some(uid) = who.uid {
            for (i, identity) in self.identities.iter().enumerate() {
                if identity.uids.contains(&uid) {
                    uid_ok.insert(i);
                }
            }
        }
        IdSet(cgroup_ok.0 & exe_ok.0 & uid_ok.0)
    }

    /// The target of a destination; `host` is the SNI or HTTP Host when known.
    pub fn resolve(&self, ip: IpAddr, port: u16, host: Option<&str>) -> Resolution {
        let mut pending = false;
        for (index, target) in self.targets.iter().enumerate() {
            if !target.matches_address(ip, port) {
                continue;
            }
            if target.hosts.is_empty() {
                return Resolution {
                    target: Some(index),
                    pending,
                };
            }
            match host {
                Some(host) if target.hosts.iter().any(|h| h.matches(host)) => {
                    return Resolution {
                        target: Some(index),
                        pending,
                    };
                }
                Some(_) => {}
                None => pending = true,
            }
        }
        Resolution {
            target: None,
            pending,
        }
    }

    /// The verdict on a connection of `ids` to a destination resolved as `resolution`.
    pub fn connection(&self, ids: IdSet, resolution: Resolution) -> ConnVerdict {
        let Some(target) = resolution.target else {
            return match self.defaults.unmatched {
                Unmatched::Deny => ConnVerdict::Deny { rule: None },
                Unmatched::Allow => ConnVerdict::Allow {
                    target: None,
                    record: self.defaults.record,
                },
                Unmatched::Record => ConnVerdict::Allow {
                    target: None,
                    record: RecordLevel::Full,
                },
            };
        };
        let mut record = self.defaults.record;
        for &index in &self.rules_by_target[target] {
            let rule = &self.rules[index];
            if !applies_to(rule, ids) || !rule.conditions.is_empty() {
                continue;
            }
            match rule.action {
                Action::Block if rule.direction != Direction::Response => {
                    return ConnVerdict::Deny { rule: Some(index) };
                }
                Action::Record => record = RecordLevel::Full,
                _ => {}
            }
        }
        ConnVerdict::Allow {
            target: Some(target),
            record,
        }
    }

    /// How much of a session of `ids` to `target` is recorded.
    pub fn record_level(&self, ids: IdSet, target: Option<usize>) -> RecordLevel {
        match self.connection(
            ids,
            Resolution {
                target,
                pending: false,
            },
        ) {
            ConnVerdict::Allow { record, .. } => record,
            ConnVerdict::Deny { .. } => self.defaults.record,
        }
    }

    /// The rules acting on `op` in a session of `ids` to `target`.
    pub fn evaluate(&self, ids: IdSet, target: Option<usize>, op: &Operation<'_>) -> Decision {
        let mut decision = Decision {
            verdict: Verdict::Allow,
            masks: Vec::new(),
            acting: Vec::new(),
        };
        let Some(rules) = target.and_then(|t| self.rules_by_target.get(t)) else {
            return decision;
        };
        let sql_kinds = OnceCell::new();
        let mut winner: Option<(Action, usize)> = None;
        for &index in rules {
            let rule = &self.rules[index];
            if !applies_to(rule, ids)
                || !direction_matches(rule.direction, op)
                || !conditions_hold(&rule.conditions, op, &sql_kinds)
            {
                continue;
            }
            match rule.action {
                Action::Block | Action::Approve => {
                    if winner.is_none_or(|(action, _)| rule.action > action) {
                        winner = Some((rule.action, index));
                    }
                }
                Action::Mask => {
                    decision.masks.push(index);
                    decision.acting.push(index);
                }
                Action::Allow | Action::Record => decision.acting.push(index),
            }
        }
        match winner {
            Some((Action::Block, index)) => {
                decision.verdict = Verdict::Block(index);
                // A blocked operation goes nowhere: only the block acts.
                decision.masks.clear();
                decision.acting = vec![index];
            }
            Some((_, index)) => {
                decision.verdict = Verdict::Approve(index);
                decision.acting.insert(0, index);
            }
            None => {}
        }
        decision
    }

    /// The maskers whose values must not reach the record of a request's or response's
    /// metadata (request line, headers): every mask rule with detectors on `target` in that
    /// direction that applies to `ids`, whatever its other conditions. A superset of what one
    /// decision masks, so a recording never holds a value a rule of the session masks.
    pub fn metadata_masks(
        &self,
        ids: IdSet,
        target: Option<usize>,
        request: bool,
    ) -> Vec<std::sync::Arc<mask::Masker>> {
        let Some(rules) = target.and_then(|t| self.rules_by_target.get(t)) else {
            return Vec::new();
        };
        rules
            .iter()
            .map(|&r| &self.rules[r])
            .filter(|rule| applies_to(rule, ids) && direction_includes(rule.direction, request))
            .filter_map(|rule| rule.masker.as_ref())
            .filter(|m| !m.detectors().is_empty())
            .map(std::sync::Arc::clone)
            .collect()
    }

    /// Whether any mask rule names this target.
    pub fn masks_target(&self, target: usize) -> bool {
        self.rules_by_target
            .get(target)
            .is_some_and(|rules| rules.iter().any(|&r| self.rules[r].masker.is_some()))
    }

    /// The steps of a streaming masker for a decision (rules with detectors only).
    pub fn stream_steps(&self, decision: &Decision) -> Vec<mask::stream::Step> {
        decision
            .masks
            .iter()
            .filter_map(|&i| self.rules[i].masker.as_ref())
            .filter(|m| !m.detectors().is_empty())
            .map(|m| mask::stream::Step::Mask(std::sync::Arc::clone(m)))
            .collect()
    }

    /// Masks a request or response body as `decision` says; `None` if nothing changed.
    pub fn mask_body(
        &self,
        decision: &Decision,
        content_type: Option<&str>,
        body: &[u8],
        ctx: &mut MaskContext,
    ) -> Option<Vec<u8>> {
        mask::mask_body(&self.stream_steps(decision), content_type, body, ctx)
    }

    /// Masks a result row: named `columns` whole, detectors in every value.
    pub fn mask_row(
        &self,
        decision: &Decision,
        columns: &[String],
        values: &[String],
        ctx: &mut MaskContext,
    ) -> Vec<String> {
        let mut out = values.to_vec();
        for &index in &decision.masks {
            let rule = &self.rules[index];
            let Some(masker) = &rule.masker else { continue };
            for (column, value) in columns.iter().zip(out.iter_mut()) {
                let column = column.to_ascii_lowercase();
                if rule.columns.contains(&column) {
                    *value = format!("[REDACTED:{}]", column.to_ascii_uppercase());
                    *ctx.counts.entry(format!("column:{column}")).or_default() += 1;
                } else if !masker.detectors().is_empty()
                    && let std::borrow::Cow::Owned(masked) = masker.mask_text(value, ctx)
                {
                    *value = masked;
                }
            }
        }
        out
    }

    /// Destination verdicts the kernel can apply at connect time, before a byte is sent:
    /// under `unmatched = "deny"`, an `ALLOW` entry for every address/port space a target may
    /// match (hosts are unknown at connect time, so a host-only target allows its ports on
    /// every address) and a `DENY` default for everything else. Empty when nothing can be
    /// decided from address and port; the proxy enforces the rest (identity-specific denials,
    /// hosts) on accept.
    pub fn kernel_verdicts(&self) -> Vec<KernelVerdict> {
        if self.defaults.unmatched != Unmatched::Deny {
            return Vec::new();
        }
        let any: [ipnet::IpNet; 2] = [
            ipnet::IpNet::V4(ipnet::Ipv4Net::default()),
            ipnet::IpNet::V6(ipnet::Ipv6Net::default()),
        ];
        let mut out = Vec::new();
        for target in &self.targets {
            if target.addresses.is_empty() && target.ports.is_empty() {
                return Vec::new();
            }
            let nets: &[ipnet::IpNet] = if target.addresses.is_empty() {
                &any
            } else {
                &target.addresses
            };
            for net in nets {
                if target.ports.is_empty() {
                    out.push(KernelVerdict {
                        net: *net,
                        port: None,
                        deny: false,
                    });
                }
                for &port in &target.ports {
                    out.push(KernelVerdict {
                        net: *net,
                        port: Some(port),
                        deny: false,
                    });
                    // IPv4 targets are also reached through v4-mapped IPv6 sockets; connect6
                    // folds those to IPv4 before the lookup, so no extra entry is needed.
                }
            }
        }
        out.extend(any.iter().map(|net| KernelVerdict {
            net: *net,
            port: None,
            deny: true,
        }));
        out.sort_by_key(|v| (v.net, v.port, v.deny));
        out.dedup();
        out
    }

    /// Names of rules, for recording.
    pub fn rule_names(&self, indexes: &[usize]) -> Vec<String> {
        indexes
            .iter()
            .map(|&i| self.rules[i].name.clone())
            .collect()
    }
}

thread_local! {
    /// Glob hits of [`Policy::identities_of`], reused so matching does not allocate.
    static SCRATCH: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// All identities' globs compiled into two sets (cgroup, exe): one pass each per caller.
#[derive(Debug, Default)]
pub struct IdentityIndex {
    cgroups: globset::GlobSet,
    cgroup_owner: Vec<usize>,
    exes: globset::GlobSet,
    exe_owner: Vec<usize>,
    /// Identities without a cgroup / exe / uid condition (which therefore hold).
    no_cgroup: IdSet,
    no_exe: IdSet,
    no_uid: IdSet,
}

impl IdentityIndex {
    pub(crate) fn build(identities: &[Identity]) -> Self {
        let mut cgroups = globset::GlobSetBuilder::new();
        let mut exes = globset::GlobSetBuilder::new();
        let mut index = Self::default();
        for (i, identity) in identities.iter().enumerate() {
            match &identity.cgroup {
                Some((_, matcher)) => {
                    cgroups.add(matcher.glob().clone());
                    index.cgroup_owner.push(i);
                }
                None => index.no_cgroup.insert(i),
            }
            if identity.exe.is_empty() {
                index.no_exe.insert(i);
            }
            for (_, matcher) in &identity.exe {
                exes.add(matcher.glob().clone());
                index.exe_owner.push(i);
            }
            if identity.uids.is_empty() {
                index.no_uid.insert(i);
            }
        }
        // Each glob compiled on its own already; together they cannot fail.
        index.cgroups = cgroups
            .build()
            .unwrap_or_else(|_| globset::GlobSet::empty());
        index.exes = exes.build().unwrap_or_else(|_| globset::GlobSet::empty());
        index
    }
}

/// Each condition of an identity with whether it holds for `who` (for `explain`).
pub fn identity_matches(identity: &Identity, who: &Who<'_>) -> Vec<(String, bool)> {
    let mut checks = Vec::new();
    if let Some((pattern, glob)) = &identity.cgroup {
        let ok = who.cgroup.is_some_and(|c| glob.is_match(c));
        checks.push((format!("cgroup {pattern:?}"), ok));
    }
    if !identity.uids.is_empty() {
        let ok = who.uid.is_some_and(|u| identity.uids.contains(&u));
        checks.push((format!("uid in {:?}", identity.uids), ok));
    }
    if !identity.exe.is_empty() {
        let ok = who
            .exe
            .is_some_and(|e| identity.exe.iter().any(|(_, g)| g.is_match(e)));
        let patterns: Vec<&str> = identity.exe.iter().map(|(p, _)| p.as_str()).collect();
        checks.push((format!("exe in {patterns:?}"), ok));
    }
    checks
}

pub(crate) fn applies_to(rule: &Rule, ids: IdSet) -> bool {
    rule.identities.is_none_or(|wanted| wanted.intersects(ids))
}

pub(crate) fn direction_matches(direction: Direction, op: &Operation<'_>) -> bool {
    direction_includes(direction, op.is_request())
}

/// Whether a rule of `direction` acts on requests (`request`) or on responses.
fn direction_includes(direction: Direction, request: bool) -> bool {
    match direction {
        Direction::Both => true,
        Direction::Request => request,
        Direction::Response => !request,
    }
}

/// All given conditions hold; a condition about another protocol than `op`'s does not.
pub(crate) fn conditions_hold(
    c: &Conditions,
    op: &Operation<'_>,
    sql_kinds: &OnceCell<BTreeSet<&'static str>>,
) -> bool {
    let sql_text = match op {
        Operation::Sql { text } => Some(*text),
        _ => None,
    };
    if !c.sql_statement.is_empty() {
        let Some(text) = sql_text else { return false };
        let kinds = sql_kinds.get_or_init(|| sql::classify(text));
        if !c.sql_statement.iter().any(|k| kinds.contains(k)) {
            return false;
        }
    }
    if !c.sql.is_empty() && !sql_text.is_some_and(|t| c.sql.iter().any(|r| r.is_match(t))) {
        return false;
    }
    let request = match op {
        Operation::HttpRequest { method, path, .. } => Some((*method, *path)),
        _ => None,
    };
    if !c.http_method.is_empty()
        && !request.is_some_and(|(m, _)| c.http_method.iter().any(|w| w.eq_ignore_ascii_case(m)))
    {
        return false;
    }
    if !c.http_path.is_empty() {
        let Some((_, path)) = request else {
            return false;
        };
        let path = path.split(['?', '#']).next().unwrap_or(path);
        if !c.http_path.iter().any(|(_, g)| g.is_match(path)) {
            return false;
        }
    }
    if !c.body.is_empty() {
        let body = match op {
            Operation::HttpRequest { body, .. } | Operation::HttpResponse { body, .. } => *body,
            _ => return false,
        };
        if !c.body.iter().any(|r| r.is_match(body)) {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::policy::compile::{Source, compile};

    fn policy(text: &str) -> Policy {
        compile(&[Source {
            path: PathBuf::from("test.toml"),
            text: text.to_string(),
        }])
        .unwrap_or_else(|e| panic!("{e}"))
    }

    const POLICY: &str = r#"
version = 1
[defaults]
unmatched = "deny"

[[identity]]
name = "agents"
cgroup = "/react-gateway/*"

[[identity]]
name = "python"
exe = ["/usr/bin/python3*"]
uid = [1000]

[[target]]
name = "llm"
hosts = ["*.example.test"]
ports = [443]

[[target]]
name = "db"
addresses = ["127.0.0.3/32", "::1/128"]
ports = [5432]

[[target]]
name = "internal"
addresses = ["10.0.0.0/8"]

[[rule]]
name = "mask-llm"
target = "llm"
action = "mask"
detectors = ["email"]

[[rule]]
name = "mask-llm-python"
target = "llm"
identities = ["python"]
action = "mask"
detectors = ["credit_card"]

[[rule]]
name = "block-admin"
target = "llm"
action = "block"
[rule.match]
http_method = ["delete"]
http_path = ["/admin/*"]

[[rule]]
name = "drop"
target = "db"
action = "block"
[rule.match]
sql_statement = ["drop", "delete_without_where"]

[[rule]]
name = "writes"
target = "db"
action = "approve"
[rule.match]
sql_statement = ["insert", "update", "delete"]

[[rule]]
name = "no-internal-for-python"
target = "internal"
identities = ["python"]
action = "block"
"#;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn identity_matching() {
        let p = policy(POLICY);
        let agent = p.identities_of(&Who {
            cgroup: Some("/react-gateway/agent-1"),
            uid: Some(1000),
            exe: Some("/usr/bin/curl"),
        });
        assert!(agent.contains(0) && !agent.contains(1));
        // `*` does not cross `/`.
        let nested = p.identities_of(&Who {
            cgroup: Some("/react-gateway/a/b"),
            ..Who::default()
        });
        assert!(!nested.contains(0));
        let py = p.identities_of(&Who {
            cgroup: Some("/other"),
            uid: Some(1000),
            exe: Some("/usr/bin/python3.11"),
        });
        assert!(!py.contains(0) && py.contains(1));
        let root_py = p.identities_of(&Who {
            uid: Some(0),
            exe: Some("/usr/bin/python3.11"),
            ..Who::default()
        });
        assert_eq!(root_py, IdSet::EMPTY);
        // The glob-set index agrees with each identity's own conditions (what `explain` shows).
        for who in [
            Who {
                cgroup: Some("/react-gateway/x"),
                uid: Some(1000),
                exe: Some("/usr/bin/python3"),
            },
            Who {
                cgroup: None,
                uid: None,
                exe: Some("/usr/bin/python3.12"),
            },
            Who {
                cgroup: Some("/other/y"),
                uid: Some(7),
                exe: None,
            },
        ] {
            let ids = p.identities_of(&who);
            for (i, identity) in p.identities.iter().enumerate() {
                let holds = identity_matches(identity, &who).iter().all(|(_, ok)| *ok);
                assert_eq!(ids.contains(i), holds, "{} for {who:?}", identity.name);
            }
        }
    }

    #[test]
    fn target_resolution_address_port_host() {
        let p = policy(POLICY);
        assert_eq!(p.resolve(ip("127.0.0.3"), 5432, None).target, Some(1));
        assert_eq!(
            p.resolve(ip("::ffff:127.0.0.3"), 5432, None).target,
            Some(1)
        );
        assert_eq!(p.resolve(ip("::1"), 5432, None).target, Some(1));
        assert_eq!(p.resolve(ip("127.0.0.3"), 5433, None).target, None);
        assert_eq!(p.resolve(ip("10.2.3.4"), 80, None).target, Some(2));
        let pending = p.resolve(ip("127.0.0.9"), 443, None);
        assert_eq!(
            pending,
            Resolution {
                target: None,
                pending: true
            }
        );
        assert_eq!(
            p.resolve(ip("127.0.0.9"), 443, Some("API.example.test"))
                .target,
            Some(0)
        );
        assert_eq!(
            p.resolve(ip("127.0.0.9"), 443, Some("example.test")).target,
            None
        );
        assert_eq!(
            p.resolve(ip("127.0.0.9"), 443, Some("evil.test")).target,
            None
        );
    }

    #[test]
    fn connection_verdicts() {
        let p = policy(POLICY);
        let py = p.identities_of(&Who {
            uid: Some(1000),
            exe: Some("/usr/bin/python3"),
            ..Who::default()
        });
        let other = IdSet::EMPTY;
        let internal = p.resolve(ip("10.0.0.1"), 80, None);
        assert_eq!(
            p.connection(py, internal),
            ConnVerdict::Deny { rule: Some(5) }
        );
        assert!(matches!(
            p.connection(other, internal),
            ConnVerdict::Allow {
                target: Some(2),
                ..
            }
        ));
        let nowhere = p.resolve(ip("127.0.0.1"), 9, None);
        assert_eq!(
            p.connection(other, nowhere),
            ConnVerdict::Deny { rule: None }
        );
    }

    #[test]
    fn kernel_verdicts_carve_targets_out_of_a_deny_default() {
        let p = policy(POLICY);
        let v = p.kernel_verdicts();
        let has = |net: &str, port: Option<u16>, deny: bool| {
            v.contains(&KernelVerdict {
                net: net.parse().unwrap(),
                port,
                deny,
            })
        };
        assert!(has("0.0.0.0/0", None, true) && has("::/0", None, true));
        assert!(
            has("0.0.0.0/0", Some(443), false),
            "host-only target: its port, any address"
        );
        assert!(has("127.0.0.3/32", Some(5432), false));
        assert!(has("10.0.0.0/8", None, false));
        let open = policy("[defaults]\nunmatched = \"allow\"\n");
        assert!(open.kernel_verdicts().is_empty());
        let everything = policy("[[target]]\nname = \"all\"\nhosts = [\"*.x\"]\n");
        assert!(
            everything.kernel_verdicts().is_empty(),
            "a host-only target without ports can be anywhere"
        );
    }

    #[test]
    fn precedence_block_over_approve_over_mask() {
        let p = policy(POLICY);
        let ids = IdSet::EMPTY;
        let db = Some(1);
        let d = p.evaluate(
            ids,
            db,
            &Operation::Sql {
                text: "DELETE FROM users",
            },
        );
        assert_eq!(d.verdict, Verdict::Block(3));
        assert_eq!(p.rule_names(&d.acting), ["drop"]);
        let d = p.evaluate(
            ids,
            db,
            &Operation::Sql {
                text: "delete from users where id=1",
            },
        );
        assert_eq!(d.verdict, Verdict::Approve(4));
        let d = p.evaluate(ids, db, &Operation::Sql { text: "select 1" });
        assert_eq!(d.verdict, Verdict::Allow);
        assert!(d.acting.is_empty());

        let py = p.identities_of(&Who {
            uid: Some(1000),
            exe: Some("/usr/bin/python3"),
            ..Who::default()
        });
        let llm = Some(0);
        let post = Operation::HttpRequest {
            method: "POST",
            path: "/v1/chat",
            body: b"{}",
        };
        let d = p.evaluate(py, llm, &post);
        assert_eq!(d.verdict, Verdict::Allow);
        assert_eq!(p.rule_names(&d.masks), ["mask-llm", "mask-llm-python"]);
        assert_eq!(p.evaluate(IdSet::EMPTY, llm, &post).masks, [0]);
        let delete = Operation::HttpRequest {
            method: "DELETE",
            path: "/admin/users/1?x=1",
            body: b"",
        };
        let d = p.evaluate(py, llm, &delete);
        assert_eq!(d.verdict, Verdict::Block(2));
        assert!(d.masks.is_empty());
        let get = Operation::HttpRequest {
            method: "GET",
            path: "/admin/users",
            body: b"",
        };
        assert_eq!(p.evaluate(py, llm, &get).verdict, Verdict::Allow);
        // http conditions never hold for SQL, and vice versa.
        assert_eq!(
            p.evaluate(
                py,
                llm,
                &Operation::Sql {
                    text: "drop table x"
                }
            )
            .verdict,
            Verdict::Allow
        );
    }

    #[test]
    fn masks_bodies_through_the_decision() {
        let p = policy(POLICY);
        let d = p.evaluate(
            IdSet::EMPTY,
            Some(0),
            &Operation::HttpResponse {
                status: 200,
                body: b"",
            },
        );
        let mut ctx = MaskContext::new(std::sync::Arc::from(&b"k"[..]));
        let out = p
            .mask_body(&d, Some("text/plain"), b"write to a@b.io", &mut ctx)
            .unwrap();
        assert_eq!(out, b"write to [REDACTED:EMAIL]");
    }
}
