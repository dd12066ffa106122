//! `policy explain`: the identity and target resolved for a caller and destination, and for
//! each rule whether it applies and why. Built from the same functions the data path uses.

use std::{fmt::Write as _, net::IpAddr};

use super::{
    Action, ConnVerdict, Direction, Policy, Who,
    eval::{applies_to, identity_matches},
};

/// A caller given on the command line: cgroup, uid, exe.
pub type CallerArgs = (Option<String>, Option<u32>, Option<String>);

/// `--identity cgroup=/react-gateway/agent-1,uid=1000,exe=/usr/bin/curl`.
pub fn parse_identity(text: &str) -> Result<CallerArgs, String> {
    let (mut cgroup, mut uid, mut exe) = (None, None, None);
    for part in text.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('=') {
            Some(("cgroup", v)) => cgroup = Some(v.to_string()),
            Some(("uid", v)) => {
                uid = Some(
                    v.parse()
                        .map_err(|_| format!("uid `{v}` is not a number"))?,
                );
            }
            Some(("exe", v)) => exe = Some(v.to_string()),
            _ => return Err(format!("`{part}`: expected cgroup=PATH, uid=N or exe=PATH")),
        }
    }
    Ok((cgroup, uid, exe))
}

/// `--dest 127.0.0.2:8443`, `--dest [::1]:5432`, optionally `host@127.0.0.2:8443`.
pub fn parse_dest(text: &str) -> Result<(IpAddr, u16, Option<String>), String> {
    let (host, addr) = match text.split_once('@') {
        Some((host, addr)) => (Some(host.to_string()), addr),
        None => (None, text),
    };
    let socket: std::net::SocketAddr = addr.parse().map_err(|_| {
        format!("`{addr}`: expected ADDRESS:PORT, e.g. 127.0.0.2:8443 or [::1]:5432")
    })?;
    Ok((socket.ip(), socket.port(), host))
}

/// The explanation, as lines of text.
#[expect(
    clippy::too_many_lines,
    reason = "one section per step of the evaluation, in order"
)]
pub fn explain(
    policy: &Policy,
    who: &Who<'_>,
    ip: IpAddr,
    port: u16,
    host: Option<&str>,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "policy {} ({} files)",
        policy.version,
        policy.sources.len()
    );
    let _ = writeln!(
        out,
        "caller: cgroup={} uid={} exe={}",
        who.cgroup.unwrap_or("?"),
        who.uid.map_or("?".into(), |u| u.to_string()),
        who.exe.unwrap_or("?")
    );
    let _ = writeln!(out, "\nidentities:");
    let ids = policy.identities_of(who);
    for (index, identity) in policy.identities.iter().enumerate() {
        let checks = identity_matches(identity, who);
        let mark = if ids.contains(index) { "✓" } else { "✗" };
        let detail: Vec<String> = checks
            .iter()
            .map(|(what, ok)| format!("{what} {}", if *ok { "holds" } else { "fails" }))
            .collect();
        let detail = if detail.is_empty() {
            "no conditions".to_string()
        } else {
            detail.join(", ")
        };
        let _ = writeln!(out, "  {mark} {}: {detail}", identity.name);
    }

    let _ = writeln!(
        out,
        "\ndestination {ip} port {port}{}:",
        host.map_or(String::new(), |h| format!(" host {h}"))
    );
    let resolution = policy.resolve(ip, port, host);
    for (index, target) in policy.targets.iter().enumerate() {
        let why = if !target.matches_address(ip, port) {
            format!(
                "address/port not in addresses {:?} ports {:?}",
                target
                    .addresses
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>(),
                target.ports
            )
        } else if target.hosts.is_empty() {
            "address and port match".to_string()
        } else {
            let hosts: Vec<String> = target.hosts.iter().map(ToString::to_string).collect();
            match host {
                Some(h) if target.hosts.iter().any(|p| p.matches(h)) => {
                    format!("address, port and host match {hosts:?}")
                }
                Some(h) => format!("host {h} not in {hosts:?}"),
                None => format!("needs a host (SNI or HTTP Host) in {hosts:?}; none given"),
            }
        };
        let mark = if resolution.target == Some(index) {
            "→"
        } else if resolution.target.is_some_and(|t| t < index) && target.matches_address(ip, port) {
            "·"
        } else {
            " "
        };
        let _ = writeln!(out, "  {mark} {}: {why}", target.name);
    }
    let verdict = policy.connection(ids, resolution);
    let _ = writeln!(out);
    match verdict {
        ConnVerdict::Deny { rule: None } => {
            let _ = writeln!(
                out,
                "connection: DENIED — no target matches and defaults.unmatched = \"deny\""
            );
        }
        ConnVerdict::Deny { rule: Some(r) } => {
            let _ = writeln!(
                out,
                "connection: DENIED by rule `{}` (unconditional block)",
                policy.rules[r].name
            );
        }
        ConnVerdict::Allow { target, record } => {
            let name = target.map_or("(none)".to_string(), |t| policy.targets[t].name.clone());
            let _ = writeln!(out, "connection: allowed, target {name}, record {record:?}");
        }
    }

    let _ = writeln!(out, "\nrules:");
    for rule in &policy.rules {
        let why = match resolution.target {
            _ if !applies_to(rule, ids) => "identity not among the rule's identities".to_string(),
            None => "no target resolved".to_string(),
            Some(t) if !rule.targets.contains(&t) => {
                format!(
                    "for other targets ({})",
                    rule.targets
                        .iter()
                        .map(|t| policy.targets[*t].name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
            Some(_) => {
                let direction = match rule.direction {
                    Direction::Request => "requests",
                    Direction::Response => "responses",
                    Direction::Both => "requests and responses",
                };
                if rule.conditions.is_empty() {
                    format!("APPLIES to every operation ({direction})")
                } else {
                    format!(
                        "APPLIES to {direction} when {}",
                        describe_conditions(&rule.conditions)
                    )
                }
            }
        };
        let _ = writeln!(
            out,
            "  {:<8} {} [{}]: {why}",
            rule.action.as_str(),
            rule.name,
            rule.origin
        );
        if let (Action::Mask, Some(masker)) = (rule.action, &rule.masker) {
            let names: Vec<&str> = masker.detectors().iter().map(|d| d.name.as_str()).collect();
            let _ = writeln!(out, "           detectors: {}", names.join(", "));
        }
    }
    let _ = writeln!(
        out,
        "\nprecedence when several apply: block > approve > mask > allow; all masks apply"
    );
    out
}

fn describe_conditions(c: &super::Conditions) -> String {
    let mut parts = Vec::new();
    if !c.sql_statement.is_empty() {
        parts.push(format!("SQL statement is one of {:?}", c.sql_statement));
    }
    if !c.sql.is_empty() {
        parts.push(format!(
            "SQL matches {:?}",
            c.sql.iter().map(regex::Regex::as_str).collect::<Vec<_>>()
        ));
    }
    if !c.http_method.is_empty() {
        parts.push(format!("method is one of {:?}", c.http_method));
    }
    if !c.http_path.is_empty() {
        parts.push(format!(
            "path matches {:?}",
            c.http_path
                .iter()
                .map(|(p, _)| p.as_str())
                .collect::<Vec<_>>()
        ));
    }
    if !c.body.is_empty() {
        parts.push(format!(
            "body matches {:?}",
            c.body
                .iter()
                .map(regex::bytes::Regex::as_str)
                .collect::<Vec<_>>()
        ));
    }
    parts.join(" and ")
}
