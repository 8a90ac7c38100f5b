//! Policy files: the catalogue, purposes and rules parsers must refuse any
//! text with an error (never panic), and accept only policies that parse
//! again to the same hash.
#![no_main]

use std::path::Path;

use consentvault::policy::{DEFAULT_CATALOGUE, DEFAULT_PURPOSES, DEFAULT_RULES, Policies, PolicyTexts};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // The first byte picks which file the text replaces; `\u{1}` splits it
    // into all three.
    let parts: Vec<&str> = text.split('\u{1}').collect();
    let texts = match (parts.as_slice(), data.first().map(|b| b % 4)) {
        ([catalogue, purposes, rules], _) => PolicyTexts { catalogue, purposes, rules },
        (_, Some(0)) => PolicyTexts { catalogue: text, purposes: DEFAULT_PURPOSES, rules: DEFAULT_RULES },
        (_, Some(1)) => PolicyTexts { catalogue: DEFAULT_CATALOGUE, purposes: text, rules: DEFAULT_RULES },
        _ => PolicyTexts { catalogue: DEFAULT_CATALOGUE, purposes: DEFAULT_PURPOSES, rules: text },
    };
    if let Ok(policies) = Policies::parse(Path::new("fuzz"), texts) {
        let again = Policies::parse(Path::new("fuzz"), texts).expect("accepted policies parse again");
        assert_eq!(policies.sha256, again.sha256);
    }
});
