//! A reference model of the grant rules, written here as plainly as
//! possible, and the running HTTP service must agree on every one of at
//! least 10,000 generated reads, with random grants, revocations, objections
//! and times on the window edges (start − 1 s, start, end − 1 s, end).
//! `CONSENTVAULT_DIFFERENTIAL_READS` raises the count.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;

use common::{TestRng, roles};
use serde_json::{Value, json};

const FIELDS: [&str; 5] = ["email", "phone", "given_name", "country", "allergies"];
const PURPOSES: [&str; 3] = ["marketing", "order-fulfilment", "personalisation"];
const DAY: i64 = 86_400;

/// The category of each field, as the shipped catalogue says.
fn category(field: &str) -> &'static str {
    match field {
        "email" | "phone" => "contact",
        "given_name" => "identity",
        "country" => "address",
        _ => "health",
    }
}

/// Whether a purpose may touch a category, as the shipped purposes say.
fn allowed(purpose: &str, category: &str) -> bool {
    match purpose {
        "marketing" => ["identity", "contact", "preferences", "purchases"].contains(&category),
        "order-fulfilment" => ["identity", "contact", "address", "purchases", "health"].contains(&category),
        _ => ["preferences", "purchases"].contains(&category),
    }
}

#[derive(Debug, Clone)]
struct Grant {
    id: String,
    purposes: Vec<&'static str>,
    fields: Vec<&'static str>,
    start: i64,
    end: i64,
    revoked_at: Option<i64>,
}

impl Grant {
    fn live(&self, now: i64) -> bool {
        self.start <= now && now < self.end && self.revoked_at.is_none_or(|at| at > now)
    }
    fn covers(&self, purpose: &str, field: &str) -> bool {
        self.purposes.contains(&purpose) && self.fields.contains(&field)
    }
}

/// The model's answer for one field: Ok(covering live grant ids) or the reason.
fn model(
    purpose: &str,
    field: &str,
    now: i64,
    grants: &[Grant],
    objections: &[&str],
) -> Result<Vec<String>, &'static str> {
    if objections.contains(&purpose) {
        return Err("objection");
    }
    if !allowed(purpose, category(field)) {
        return Err("category_not_allowed");
    }
    let live: Vec<String> =
        grants.iter().filter(|g| g.live(now) && g.covers(purpose, field)).map(|g| g.id.clone()).collect();
    if !live.is_empty() {
        return Ok(live);
    }
    let covering: Vec<&Grant> = grants.iter().filter(|g| g.covers(purpose, field)).collect();
    if covering.iter().any(|g| g.revoked_at.is_some_and(|at| at <= now)) {
        Err("grant_revoked")
    } else if covering.iter().any(|g| now >= g.end) {
        Err("grant_expired")
    } else if grants.iter().any(|g| g.live(now) && g.purposes.contains(&purpose)) {
        Err("field_not_granted")
    } else if grants.iter().any(|g| g.live(now)) {
        Err("purpose_not_granted")
    } else {
        Err("no_consent")
    }
}

fn pick<'a>(rng: &mut TestRng, items: &[&'a str]) -> Vec<&'a str> {
    loop {
        let chosen: Vec<&str> = items.iter().copied().filter(|_| rng.range(0..2) == 1).collect();
        if !chosen.is_empty() {
            return chosen;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_agrees_with_a_reference_model_on_every_generated_read() {
    let reads_wanted: usize =
        std::env::var("CONSENTVAULT_DIFFERENTIAL_READS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let mut rng = TestRng::from_env();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let server = common::InProcessServer::start(&data_dir).await;
    let vault = server.vault.clone();
    let client = reqwest::Client::new();
    let base = server.base_url.clone();
    let admin = roles::admin_token(&client, &base, &data_dir).await;
    let (business_id, business) = roles::client_principal(&client, &base, &admin, "businesses").await;
    let (_, customer) = roles::customer(&client, &base).await;
    let values = json!({"email": "ada@example.org", "phone": "+44 20 7946 0000", "given_name": "Ada",
                        "country": "GB", "allergies": ["peanuts"]});
    client.put(format!("{base}/v1/me/data")).bearer_auth(&customer).json(&values).send().await.unwrap();
    let relationship = roles::connect(&client, &base, &customer, &business_id).await;
    let pairwise = relationship["pairwise_id"].as_str().unwrap().to_owned();

    let base_time = 1_900_000_000i64;
    let mut now = base_time;
    vault.insecure_pin_clock_secs(Some(now));
    let mut grants: Vec<Grant> = Vec::new();
    let mut objections: Vec<&str> = Vec::new();
    let (mut reads, mut allowed_reads, mut edge_reads) = (0usize, 0usize, 0usize);

    while reads < reads_wanted {
        match rng.range(0..100) {
            0..=7 => {
                // A grant, valid for the policies: every field usable for some purpose.
                let purposes = pick(&mut rng, &PURPOSES[..2]);
                let fields: Vec<&str> = pick(&mut rng, &FIELDS)
                    .into_iter()
                    .filter(|f| purposes.iter().any(|p| allowed(p, category(f))))
                    .collect();
                if fields.is_empty() {
                    continue;
                }
                let days = rng.range(1..4) as i64;
                let body =
                    json!({"business_id": business_id, "purposes": purposes, "fields": fields, "duration_days": days});
                let (status, grant) = roles::post(&client, format!("{base}/v1/me/grants"), Some(&customer), body).await;
                assert_eq!(status, 201, "{grant}");
                grants.push(Grant {
                    id: grant["grant_id"].as_str().unwrap().to_owned(),
                    purposes,
                    fields,
                    start: now,
                    end: now + days * DAY,
                    revoked_at: None,
                });
            }
            8..=11 => {
                let live: Vec<usize> =
                    (0..grants.len()).filter(|&i| grants[i].live(now) && grants[i].start <= now).collect();
                if live.is_empty() {
                    continue;
                }
                let index = live[rng.range(0..live.len() as u64) as usize];
                let url = format!("{base}/v1/me/grants/{}", grants[index].id);
                let response = client.delete(url).bearer_auth(&customer).send().await.unwrap();
                assert_eq!(response.status(), 200);
                grants[index].revoked_at = Some(now);
            }
            12..=14 => {
                objections = PURPOSES.iter().copied().filter(|_| rng.range(0..4) == 0).collect();
                let response = client
                    .put(format!("{base}/v1/me/objections"))
                    .bearer_auth(&customer)
                    .json(&json!({"purposes": objections}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
            }
            15..=34 => {
                // Time moves: onto a window edge of some grant, or anywhere.
                now = if !grants.is_empty() && rng.range(0..4) != 0 {
                    let grant = &grants[rng.range(0..grants.len() as u64) as usize];
                    edge_reads += 1;
                    match rng.range(0..4) {
                        0 => grant.start - 1,
                        1 => grant.start,
                        2 => grant.end - 1,
                        _ => grant.end,
                    }
                } else {
                    base_time + rng.range(0..(6 * DAY) as u64) as i64
                };
                vault.insecure_pin_clock_secs(Some(now));
            }
            _ => {
                let purpose = PURPOSES[rng.range(0..3) as usize];
                let fields = pick(&mut rng, &FIELDS);
                let url = format!("{base}/v1/subjects/{pairwise}/data?purpose={purpose}&fields={}", fields.join(","));
                let response = client.get(url).bearer_auth(&business).send().await.unwrap();
                let status = response.status().as_u16();
                let body: Value = response.json().await.unwrap();
                let context = format!(
                    "read {reads} at {now} ({} s from base): {purpose} {fields:?}\ngrants {grants:?}\nobjections {objections:?}\nanswer {body}",
                    now - base_time
                );
                let live_for_purpose = grants.iter().any(|g| g.live(now) && g.purposes.contains(&purpose));
                if !live_for_purpose {
                    assert_eq!((status, body["code"].as_str()), (403, Some("no_consent")), "{context}");
                } else {
                    assert_eq!(status, 200, "{context}");
                    let released: BTreeSet<String> = body["data"].as_object().unwrap().keys().cloned().collect();
                    let returned_grants: BTreeSet<String> =
                        body["grant_ids"].as_array().unwrap().iter().map(|g| g.as_str().unwrap().to_owned()).collect();
                    let mut expected_released = BTreeSet::new();
                    let mut expected_withheld = Vec::new();
                    for field in &fields {
                        match model(purpose, field, now, &grants, &objections) {
                            Ok(covering) => {
                                expected_released.insert((*field).to_owned());
                                assert!(
                                    covering.iter().any(|g| returned_grants.contains(g)),
                                    "{field} relies on no live grant: {context}"
                                );
                            }
                            Err(reason) => expected_withheld.push(json!({"field": field, "reason": reason})),
                        }
                    }
                    assert_eq!(released, expected_released, "{context}");
                    assert_eq!(body["withheld"], Value::Array(expected_withheld), "{context}");
                    for grant in &returned_grants {
                        let model_grant = grants.iter().find(|g| &g.id == grant).unwrap();
                        assert!(model_grant.live(now) && model_grant.purposes.contains(&purpose), "{context}");
                    }
                    if !released.is_empty() {
                        allowed_reads += 1;
                    }
                }
                reads += 1;
            }
        }
    }
    eprintln!(
        "{reads} reads agreed ({allowed_reads} released something; {edge_reads} clock moves onto window edges; {} grants)",
        grants.len()
    );
    assert!(allowed_reads > reads / 10 && edge_reads > 100, "the generated reads must exercise both sides");
    server.stop().await;
}
