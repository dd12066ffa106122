//! The first bytes of an agent's connection → protocol sniffing and ClientHello parsing, and
//! the offer check against TLS settings: none may panic or read out of bounds, whatever the
//! bytes.
#![no_main]

use gateway_user::{
    policy::TlsVersion,
    proxy::sniff::classify,
    tls::{LegPolicy, config::check_offer, hello},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = classify(data);
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
