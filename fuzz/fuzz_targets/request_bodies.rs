//! Request bodies and query strings: every body type and query type of the
//! API, and every catalogue field's value check, refuse bad input with an
//! error and never panic.
#![no_main]

use std::sync::LazyLock;

use consentvault::policy::Policies;
use libfuzzer_sys::fuzz_target;

static POLICIES: LazyLock<Policies> = LazyLock::new(Policies::built_in);

fuzz_target!(|data: &[u8]| {
    let (query, body) = match data.iter().position(|&b| b == 0) {
        Some(at) => (std::str::from_utf8(&data[..at]).unwrap_or(""), &data[at + 1..]),
        None => ("", data),
    };
    consentvault::api::fuzz_request_parsing(body, query);
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) {
        for field in POLICIES.catalogue.fields() {
            let _ = POLICIES.catalogue.validate(&field.name, &value);
        }
    }
});
