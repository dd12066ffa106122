//! The first bytes of an agent's connection → protocol sniffing and ClientHello parsing, and
//! the offer check against TLS settings; and the `PostgreSQL` messages the handler reads
//! (`postgres/wire.rs`): none may panic or read out of bounds, whatever the bytes.
#![no_main]

use gateway_user::{
    policy::TlsVersion,
    postgres::wire,
    proxy::sniff::classify,
    tls::{LegPolicy, config::check_offer, hello},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = classify(data);
    let _ = wire::startup_params(data);
    let _ = wire::query(data);
    let _ = wire::parse(data);
    if let Ok(bind) = wire::bind(data) {
        let params: Vec<_> = bind.params.iter().map(|p| p.map(<[u8]>::to_vec)).collect();
        assert_eq!(wire::bind(&bind.encode(&params)).ok().map(|b| b.params), Some(bind.params));
    }
    let _ = wire::row_description(data);
    if let Ok(values) = wire::data_row(data) {
        let again = wire::encode_data_row(values.iter().copied());
        assert_eq!(wire::data_row(&again).ok(), Some(values));
    }
    let _ = wire::fields(data);
    let _ = wire::command_tag(data);
    if let hello::Parse::Hello(offer) = hello::parse(data) {
        let _ = offer.to_json();
        for min_version in [TlsVersion::V1_2, TlsVersion::V1_3] {
            let leg = LegPolicy {
                min_version,
                cipher_suites: vec!["TLS13_AES_256_GCM_SHA384".into()],
                upstream_ca: None,
            };
            let _ = check_offer(&offer, &leg);
        }
    }
});
