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
    let ours = decide(&policies, &query, &grants);
    c.bench_function("policy/decide/20-grants/50-fields/5-asked", |b| b.iter(|| decide(&policies, &query, &grants)));

    // The same decisions written as Cedar policies: one permit per grant and
    // purpose (its window and revocation in the condition), a forbid per
    // category a purpose may not touch, and a forbid for objections; one
    // authorization request per field.
    let cedar = cedar::Setup::new(&policies, &grants);
    let cedar_answers: Vec<bool> =
        fields.iter().map(|field| cedar.allows("acme", "marketing", field, 600, &[])).collect();
    let our_answers: Vec<bool> =
        ours.iter().map(|(_, d)| matches!(d, consentvault::policy::engine::FieldDecision::Released { .. })).collect();
    assert_eq!(cedar_answers, our_answers, "Cedar and the engine must decide alike");
    c.bench_function("policy/cedar/20-grants/50-fields/5-asked", |b| {
        b.iter(|| fields.iter().map(|field| cedar.allows("acme", "marketing", field, 600, &[])).collect::<Vec<bool>>())
    });
}

mod cedar {
    use std::str::FromStr;

    use cedar_policy::{Authorizer, Context, Decision, Entities, EntityUid, PolicySet, Request, RestrictedExpression};
    use consentvault::policy::Policies;
    use consentvault::policy::engine::GrantView;

    pub struct Setup {
        policies: PolicySet,
        authorizer: Authorizer,
        entities: Entities,
    }

    impl Setup {
        pub fn new(policies: &Policies, grants: &[GrantView]) -> Self {
            let mut text = String::new();
            for grant in grants {
                let end = grant.revoked_at.map_or(grant.expires_at, |at| at.min(grant.expires_at));
                let fields: Vec<String> = grant.fields.iter().map(|f| format!("Field::\"{f}\"")).collect();
                for purpose in &grant.purposes {
                    text.push_str(&format!(
                        "permit(principal == Business::\"{}\", action == Action::\"read\", resource) when {{ [{}].contains(resource) && context.purpose == \"{purpose}\" && context.now >= {} && context.now < {end} }};\n",
                        grant.business,
                        fields.join(", "),
                        grant.starts_at
                    ));
                }
            }
            for purpose in policies.rules.purposes.values() {
                let outside: Vec<String> = policies
                    .catalogue
                    .fields()
                    .filter(|f| !purpose.categories.contains(&f.category))
                    .map(|f| format!("Field::\"{}\"", f.name))
                    .collect();
                if !outside.is_empty() {
                    text.push_str(&format!(
                        "forbid(principal, action, resource) when {{ [{}].contains(resource) && context.purpose == \"{}\" }};\n",
                        outside.join(", "),
                        purpose.name
                    ));
                }
            }
            text.push_str(
                "forbid(principal, action, resource) when { context.objections.contains(context.purpose) };\n",
            );
            Self {
                policies: PolicySet::from_str(&text).unwrap(),
                authorizer: Authorizer::new(),
                entities: Entities::empty(),
            }
        }

        pub fn allows(&self, business: &str, purpose: &str, field: &str, now: i64, objections: &[&str]) -> bool {
            let context = Context::from_pairs([
                ("purpose".to_owned(), RestrictedExpression::new_string(purpose.to_owned())),
                ("now".to_owned(), RestrictedExpression::new_long(now)),
                (
                    "objections".to_owned(),
                    RestrictedExpression::new_set(
                        objections.iter().map(|o| RestrictedExpression::new_string((*o).to_owned())),
                    ),
                ),
            ])
            .unwrap();
            let request = Request::new(
                EntityUid::from_str(&format!("Business::\"{business}\"")).unwrap(),
                EntityUid::from_str("Action::\"read\"").unwrap(),
                EntityUid::from_str(&format!("Field::\"{field}\"")).unwrap(),
                context,
                None,
            )
            .unwrap();
            self.authorizer.is_authorized(&request, &self.policies, &self.entities).decision() == Decision::Allow
        }
    }
}

criterion_group!(benches, decision);
criterion_main!(benches);
