//! One read decision by the pure policy engine: a subject with 20 grants
//! over a 50-field catalogue, five fields asked for.

#![allow(clippy::unwrap_used)]

use consentvault::policy::engine::{GrantView, ReadQuery, decide};
use consentvault::policy::{Policies, PolicyTexts};
use criterion::{Criterion, criterion_group, criterion_main};

/// A 50-field catalogue: the shipped fields plus generated ones, spread
/// over the shipped categories.
fn catalogue() -> String {
    let mut text = String::from(consentvault::policy::DEFAULT_CATALOGUE);
    let categories = ["identity", "contact", "address", "preferences", "purchases"];
    for index in 0..35 {
        text.push_str(&format!(
            "\n[fields.extra_{index}]\ncategory = \"{}\"\nsensitivity = \"standard\"\ntype = \"string\"\nmax_bytes = 100\ndescription = \"generated\"\n",
            categories[index % categories.len()]
        ));
    }
    text
}

fn decision(c: &mut Criterion) {
    let catalogue = catalogue();
    let texts = PolicyTexts {
        catalogue: &catalogue,
        purposes: consentvault::policy::DEFAULT_PURPOSES,
        rules: consentvault::policy::DEFAULT_RULES,
    };
    let policies = Policies::parse(std::path::Path::new("bench"), texts).unwrap();
    assert_eq!(policies.catalogue.fields().count(), 50);
    let purposes = ["marketing", "order-fulfilment", "customer-care", "personalisation"];
    let grants: Vec<GrantView> = (0..20)
        .map(|index| GrantView {
            id: format!("grant-{index}"),
            business: if index % 4 == 0 { "other".to_owned() } else { "acme".to_owned() },
            purposes: vec![purposes[index % purposes.len()].to_owned()],
            fields: (0..6).map(|f| format!("extra_{}", (index * 3 + f) % 35)).chain(["email".to_owned()]).collect(),
            starts_at: 0,
            expires_at: 1_000 + index as i64,
            revoked_at: (index % 7 == 0).then_some(500),
        })
        .collect();
    let fields: Vec<String> =
        ["email", "phone", "extra_4", "extra_9", "allergies"].iter().map(|f| (*f).to_owned()).collect();
    let objections: Vec<String> = Vec::new();
    let query = ReadQuery {
        business: "acme",
        purpose: "marketing",
        fields: &fields,
        now: 600,
        connected: true,
        objections: &objections,
    };
    c.bench_function("policy/decide/20-grants/50-fields/5-asked", |b| b.iter(|| decide(&policies, &query, &grants)));
}

criterion_group!(benches, decision);
criterion_main!(benches);
