//! Policy evaluation throughput on a generated 100-rule policy (`cargo xtask bench policy`).
//!
//! Measures, with the engine the daemon uses: the per-connection work (identities of the
//! caller, target of the destination, connection verdict) and the per-operation work (the
//! rules acting on an HTTP request and on an SQL statement). Each figure is printed with its
//! ratio to the goal (1,000,000 evaluations/s) and to the same evaluation under a one-rule
//! policy run in the same invocation, which shows what the 99 other rules cost.

use std::{
    fmt::Write as _,
    hint::black_box,
    net::IpAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use gateway_user::policy::{
    Operation, Policy, Who,
    compile::{Source, compile},
};

const GOAL: f64 = 1_000_000.0;
const RUN_FOR: Duration = Duration::from_secs(2);

fn policy_with(rules: usize) -> Policy {
    let mut text = String::from("version = 1\n[defaults]\nunmatched = \"deny\"\n");
    for i in 0..10 {
        let _ = write!(
            text,
            "[[identity]]\nname = \"id{i}\"\ncgroup = \"/react-gateway/team-{i}/*\"\nexe = [\"/usr/bin/python3*\", \"**/agent-{i}\"]\n"
        );
    }
    for t in 0..10 {
        let _ = write!(
            text,
            "[[target]]\nname = \"t{t}\"\nhosts = [\"api{t}.example.test\", \"*.svc{t}.internal\"]\naddresses = [\"10.{t}.0.0/16\", \"fd00:{t}::/32\"]\nports = [443, 8443, {}]\n",
            5000 + t
        );
    }
    for r in 0..rules {
        let t = r % 10;
        let id = (r / 10) % 10;
        let rule = match r % 5 {
            0 => "action = \"mask\"\ndetectors = [\"email\", \"credit_card\"]\njson_paths = [\"$.messages[*].content\"]\n".to_string(),
            1 => format!(
                "action = \"block\"\n[rule.match]\nhttp_method = [\"DELETE\", \"PUT\"]\nhttp_path = [\"/admin/{r}/*\"]\n"
            ),
            2 => format!(
                "action = \"approve\"\n[rule.match]\nsql_statement = [\"insert\", \"update\"]\nsql = [\"(?i)\\\\btable_{r}\\\\b\"]\n"
            ),
            3 => format!(
                "action = \"block\"\n[rule.match]\nbody = [\"(?i)ignore previous instructions {r}\"]\n"
            ),
            _ => "action = \"allow\"\n[rule.match]\nhttp_path = [\"/v1/*\"]\n".to_string(),
        };
        // A third of the rules apply to every identity, the rest to one team.
        let identities = if r % 3 == 0 {
            String::new()
        } else {
            format!("identities = [\"id{id}\"]\n")
        };
        let _ = write!(
            text,
            "[[rule]]\nname = \"r{r}\"\ntarget = \"t{t}\"\n{identities}{rule}"
        );
    }
    compile(&[Source {
        path: PathBuf::from("bench.toml"),
        text,
    }])
    .unwrap_or_else(|e| panic!("bench policy does not compile: {e}"))
}

/// Runs `f` for about [`RUN_FOR`] and returns calls per second.
fn rate(mut f: impl FnMut(usize)) -> f64 {
    let mut calls = 0usize;
    let start = Instant::now();
    while start.elapsed() < RUN_FOR {
        for _ in 0..1_000 {
            f(calls);
            calls += 1;
        }
    }
    #[expect(clippy::cast_precision_loss, reason = "call counts are far below 2^52")]
    let per_second = calls as f64 / start.elapsed().as_secs_f64();
    per_second
}

fn main() {
    let big = policy_with(100);
    let small = policy_with(1);
    assert_eq!(big.rules.len(), 100);
    let who = Who {
        cgroup: Some("/react-gateway/team-3/agent-7"),
        uid: Some(1000),
        exe: Some("/usr/bin/python3.11"),
    };
    let ip: IpAddr = "10.3.1.2".parse().expect("ip");
    let body = br#"{"model":"m","messages":[{"role":"user","content":"summarise the quarterly report for the board, please"}]}"#;
    let request = Operation::HttpRequest {
        method: "POST",
        path: "/v1/chat/completions",
        body,
    };
    let sql = Operation::Sql {
        text: "UPDATE accounts SET tier = 'gold' WHERE id = 42",
    };

    println!(
        "policy evaluation, {} rules / {} targets / {} identities, {:?} per figure",
        big.rules.len(),
        big.targets.len(),
        big.identities.len(),
        RUN_FOR
    );
    println!(
        "{:<44} {:>14} {:>10} {:>12}",
        "evaluation", "evals/s", "vs goal", "vs 1 rule"
    );
    let report = |name: &str, f: &dyn Fn(&Policy, usize)| {
        let big_rate = rate(|i| f(&big, i));
        let small_rate = rate(|i| f(&small, i));
        println!(
            "{name:<44} {big_rate:>14.0} {:>9.2}× {:>11.2}×",
            big_rate / GOAL,
            big_rate / small_rate
        );
    };
    report("connection (identity + target + verdict)", &|p, i| {
        let ids = p.identities_of(black_box(&who));
        let port = if i % 2 == 0 { 443 } else { 5003 };
        let resolution = p.resolve(black_box(ip), port, Some("api3.example.test"));
        black_box(p.connection(ids, resolution));
    });
    let ids = big.identities_of(&who);
    let target = big.resolve(ip, 443, Some("api3.example.test")).target;
    assert!(target.is_some());
    let per_target = big
        .rules
        .iter()
        .filter(|r| r.targets == [target.unwrap_or(0)])
        .count();
    assert_eq!(per_target, 10);
    report("HTTP request: rules acting", &|p, _| {
        black_box(p.evaluate(black_box(ids), target, black_box(&request)));
    });
    report("SQL statement: rules acting", &|p, _| {
        black_box(p.evaluate(black_box(ids), target, black_box(&sql)));
    });
}
