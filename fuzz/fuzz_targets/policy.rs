//! Policy text → parse → validate → compile → evaluate, and the other pure parsers of operator
//! and agent input (SQL classification, JSON paths, masking): none may panic, whatever the bytes.
#![no_main]

use gateway_user::{
    mask::JsonPath,
    policy::{
        Operation, Who,
        compile::{Source, compile},
    },
    sql,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = sql::classify(text);
    let _ = JsonPath::parse(text);
    let source = Source {
        path: "fuzz.toml".into(),
        text: text.to_string(),
    };
    let Ok(policy) = compile(&[source]) else {
        return;
    };
    let ids = policy.identities_of(&Who {
        cgroup: Some("/react-gateway/agent-1"),
        uid: Some(1000),
        exe: Some("/usr/bin/python3"),
    });
    let ip = "127.0.0.2".parse().expect("ip");
    let resolution = policy.resolve(ip, 443, Some("api.example.test"));
    let _ = policy.connection(ids, resolution);
    let _ = policy.kernel_verdicts();
    for op in [
        Operation::HttpRequest { method: "POST", path: "/v1/chat", body: data },
        Operation::Sql { text },
    ] {
        let decision = policy.evaluate(ids, resolution.target, &op);
        let mut ctx = gateway_user::mask::MaskContext::new(std::sync::Arc::from(&b"k"[..]));
        let _ = policy.mask_body(&decision, None, data, &mut ctx);
    }
});
