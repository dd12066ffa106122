//! The JSON list of API records that `cargo xtask bench http` masks through the proxy (the
//! mock upstream serves it at `/json/N`) and `cargo xtask bench mask` masks in process (its
//! `records` corpus, which includes this file), so both measure the same document.

/// The `/json/N` body: a JSON object of about `size` bytes, customer records of prose, ids,
/// dates and versions; one record in eight carries an e-mail address (what masking finds).
pub fn json_document(size: usize) -> Vec<u8> {
    let mut records = Vec::new();
    let mut length = 16;
    let mut i = 0u64;
    while length < size {
        let email = if i.is_multiple_of(8) {
            serde_json::Value::String(format!("customer{i}@example.com"))
        } else {
            serde_json::Value::Null
        };
        let record = serde_json::json!({
            "id": 100_000 + i,
            "name": format!("Customer {i}"),
            "status": "active",
            "note": format!("Order {} shipped on 2026-11-{:02} by route {}; client v2.{}.{} reported no issues with the delivery window.", 40_000 + i * 7, 1 + i % 28, i % 13, i % 10, i % 7),
            "email": email,
        });
        length += record.to_string().len() + 1;
        records.push(record);
        i += 1;
    }
    serde_json::json!({ "object": "list", "data": records })
        .to_string()
        .into_bytes()
}
