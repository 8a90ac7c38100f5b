//! `/metrics` answers the operator's questions: how many requests per route
//! and status, how fast, how many reads were allowed, partial or denied and
//! why, how many authentication failures and 429s of each kind, how large
//! and slow the commit path's batches are, which build runs, what the
//! process uses. Each family is driven by real traffic and read back; no
//! label carries an id.

#![allow(clippy::unwrap_used)]

mod common;

use common::app::TestApp;
use reqwest::Method;
use serde_json::json;

/// The value of the sample `name{labels}` (labels as written, in order).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_family_counts_the_traffic_that_drives_it() {
    let app = TestApp::start().await;
    let business = app.business("Acme Pizza", &["order-fulfilment", "marketing"]).await;
    let customer = app.customer().await;
    let (status, _) = customer.data_put(&json!({"email": "ada@example.org", "phone": "+44 20 7946 0000"})).await;
    assert_eq!(status, 200);
    let (status, connected) = customer.connect(&business.id).await;
    assert_eq!(status, 201, "{connected}");
    let pairwise = connected["pairwise_id"].as_str().unwrap().to_owned();
    let grant =
        json!({"business_id": business.id, "purposes": ["order-fulfilment"], "fields": ["email"], "duration_days": 30});
    let (status, _) = customer.grant(&grant).await;
    assert_eq!(status, 201);

    // Reads: two allowed, one partial (phone not granted), one denied (no
    // grant for marketing).
    for _ in 0..2 {
        assert_eq!(business.read(&pairwise, "order-fulfilment", &["email"]).await.0, 200);
    }
    let (status, partial) = business.read(&pairwise, "order-fulfilment", &["email", "phone"]).await;
    assert_eq!(status, 200, "{partial}");
    assert_eq!(business.read(&pairwise, "marketing", &["email"]).await.0, 403);

    // Authentication failures: a bad token, a wrong secret at the token
    // endpoint, a customer's token on a business route.
    let anonymous = app.anonymous();
    let bad = app.bearer("not-a-token");
    assert_eq!(bad.get("/v1/me/data").await.0, 401);
    let wrong_secret =
        json!({"grant_type": "client_credentials", "client_id": business.client_id, "client_secret": "wrong"});
    assert_eq!(anonymous.token_request(&wrong_secret).await.0, 401);
    let as_customer = app.bearer(customer.token());
    assert_eq!(as_customer.get("/v1/grants").await.0, 403);
    // 429s: sign-ups from one address beyond its limit.
    let mut refused = 0;
    for _ in 0..12 {
        let (status, _) = anonymous.sign_up("a long enough password").await;
        refused += usize::from(status == 429);
    }
    assert!(refused > 0, "sign-ups were limited");
    // A path no route has.
    assert_eq!(anonymous.caller().get("/v1/no-such-thing").await.0, 404);

    let (status, text) = anonymous.caller().text(Method::GET, "/metrics", None).await;
    assert_eq!(status, 200);

    let read_route = r#"route="/v1/subjects/{pairwise_id}/data",method="GET""#;
    let reads_ok = sample(&text, &format!("consentvault_http_requests_total{{{read_route},status=\"2xx\"}}"));
    assert_eq!(reads_ok, Some(3.0), "{text}");
    let reads_refused = sample(&text, &format!("consentvault_http_requests_total{{{read_route},status=\"4xx\"}}"));
    assert_eq!(reads_refused, Some(1.0));
    let unrouted = sample(&text, r#"consentvault_http_requests_total{route="(unrouted)",method="GET",status="4xx"}"#);
    assert!(unrouted >= Some(1.0), "{text}");
    let timed = sample(&text, &format!("consentvault_http_request_duration_seconds_count{{{read_route}}}"));
    assert_eq!(timed, Some(4.0));
    let under_10s =
        sample(&text, &format!("consentvault_http_request_duration_seconds_bucket{{{read_route},le=\"10\"}}"));
    assert_eq!(under_10s, Some(4.0));

    assert_eq!(sample(&text, r#"consentvault_read_decisions_total{decision="allow"}"#), Some(2.0));
    assert_eq!(sample(&text, r#"consentvault_read_decisions_total{decision="partial"}"#), Some(1.0));
    assert_eq!(sample(&text, r#"consentvault_read_decisions_total{decision="deny"}"#), Some(1.0));
    assert!(sample(&text, r#"consentvault_read_withheld_fields_total{reason="field_not_granted"}"#) >= Some(1.0));

    assert_eq!(sample(&text, r#"consentvault_auth_failures_total{code="unauthorized"}"#), Some(1.0), "{text}");
    assert_eq!(sample(&text, r#"consentvault_auth_failures_total{code="invalid_credentials"}"#), Some(1.0));
    assert_eq!(sample(&text, r#"consentvault_auth_failures_total{code="wrong_role"}"#), Some(1.0));
    let limited = sample(&text, r#"consentvault_rate_limited_total{limit="signups_per_address"}"#);
    assert_eq!(limited, Some(refused as f64));

    let batches = sample(&text, "consentvault_commit_batch_transactions_count").unwrap();
    assert!(batches >= 10.0, "{text}");
    assert_eq!(sample(&text, r#"consentvault_commit_batch_transactions_bucket{le="+Inf"}"#), Some(batches));
    // Every batch that wrote was applied once, timed once.
    let applied = sample(&text, "consentvault_commit_apply_duration_seconds_count").unwrap();
    assert_eq!(Some(applied), sample(&text, "consentvault_commit_batches_total"));
    assert!(applied >= 10.0 && applied <= batches);
    assert!(sample(&text, "consentvault_commit_sync_duration_seconds_count") >= Some(1.0));

    let version = format!("consentvault_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"));
    assert_eq!(sample(&text, &version), Some(1.0));
    for process in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_start_time_seconds",
        "process_open_fds",
        "process_max_fds",
    ] {
        assert!(sample(&text, process).is_some_and(|value| value > 0.0), "{process} in {text}");
    }

    // Labels name routes, codes and kinds: never an id.
    for id in [&pairwise, &business.id, &customer.id, &business.client_id] {
        assert!(!text.contains(id.as_str()), "an id in the metrics: {id}");
    }
    // Every sample line parses as `name{labels} value`.
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        let value = line.rsplit_once(' ').map(|(_, value)| value).unwrap();
        assert!(value.parse::<f64>().is_ok(), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sign_up_limit_is_the_one_configured() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vault.toml");
    std::fs::write(&config, "[limits]\nsignups_per_address = { burst = 2, per_minute = 1 }\n").unwrap();
    let app = TestApp::start_with_config(Some(config)).await;
    let anonymous = app.anonymous();
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(anonymous.sign_up("a long enough password").await.0);
    }
    assert_eq!(statuses, [201, 201, 429]);
    let (_, text) = anonymous.caller().text(Method::GET, "/metrics", None).await;
    assert_eq!(sample(&text, r#"consentvault_rate_limited_total{limit="signups_per_address"}"#), Some(1.0));
}
