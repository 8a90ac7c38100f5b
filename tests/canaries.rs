//! No personal value in logs, error bodies, metrics or the audit log: string
//! and numeric canaries go through every endpoint of the real server (logging
//! at `trace`), valid and invalid, and every log line, every error body, the
//! metrics text and every audit entry are searched for them afterwards.
//! Responses that are meant to carry the value (the customer's own reads and
//! export, the business's allowed read) are the only places it may appear.

#![allow(clippy::unwrap_used)]

mod common;

use common::ServerProcess;
use reqwest::Method;
use serde_json::{Value, json};

use common::roles::send_text as call;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canaries_through_every_endpoint_never_reach_logs_errors_metrics_or_the_audit_log() {
    let mut rng = common::TestRng::from_env();
    let tag = format!("{:016x}", rng.next_u64());
    let numeric = 700_000_000_000 + (rng.next_u64() % 99_999_999) as i64;
    let email = format!("canary{tag}@example.org");
    let name = format!("Canary{tag}");
    let password = format!("pw-canary-{tag}");
    let reason = format!("reason-canary-{tag}");
    let strings = [format!("canary{tag}"), format!("Canary{tag}"), format!("pw-canary-{tag}"), numeric.to_string()];

    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let server = ServerProcess::start(&data_dir, &[], &[("CONSENTVAULT_LOG", "trace")]).unwrap();
    let base = server.base_url.clone();
    let client = reqwest::Client::new();
    let admin = common::roles::admin_token(&client, &base, &data_dir).await;
    let (business_id, business) = common::roles::client_principal(&client, &base, &admin, "businesses").await;
    let (_, auditor) = common::roles::client_principal(&client, &base, &admin, "auditors").await;

    // Every non-2xx body, to be searched.
    let mut errors: Vec<(String, String)> = Vec::new();
    let mut expect_error = |what: &str, (status, body): (u16, String)| {
        assert!(status >= 400, "{what}: expected an error, got {status} {body}");
        errors.push((what.to_owned(), body));
    };

    // Sign-up and sign-in with a canary password, then a wrong one.
    let (status, created) =
        call(&client, Method::POST, format!("{base}/v1/customers"), None, Some(json!({"password": password}))).await;
    assert_eq!(status, 201, "{created}");
    let customer_id = serde_json::from_str::<Value>(&created).unwrap()["customer_id"].as_str().unwrap().to_owned();
    let sign_in = |password: &str| json!({"grant_type": "password", "username": customer_id, "password": password});
    let (status, answer) =
        call(&client, Method::POST, format!("{base}/v1/token"), None, Some(sign_in(&password))).await;
    assert_eq!(status, 200);
    let customer = serde_json::from_str::<Value>(&answer).unwrap()["access_token"].as_str().unwrap().to_owned();
    expect_error(
        "wrong password",
        call(&client, Method::POST, format!("{base}/v1/token"), None, Some(sign_in(&format!("{password}x")))).await,
    );
    expect_error(
        "password as a client secret",
        call(
            &client,
            Method::POST,
            format!("{base}/v1/token"),
            None,
            Some(json!({"grant_type": "client_credentials", "client_id": password, "client_secret": password})),
        )
        .await,
    );

    // Valid values, then values that fail their type or size, each with a canary.
    let url = format!("{base}/v1/me/data");
    let (status, body) = call(
        &client,
        Method::PUT,
        url.clone(),
        Some(&customer),
        Some(json!({"email": email, "given_name": name, "loyalty_points": numeric})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for (what, body) in [
        ("number as e-mail", json!({"email": numeric})),
        ("text as number", json!({"loyalty_points": email})),
        ("oversized name", json!({"given_name": name.repeat(400)})),
        ("e-mail without @", json!({"email": format!("canary{tag}")})),
        ("unknown field holding a canary", json!({"nickname": name})),
        ("canary inside an array field", json!({"allergies": numeric})),
    ] {
        expect_error(what, call(&client, Method::PUT, url.clone(), Some(&customer), Some(body)).await);
    }
    expect_error(
        "one field, wrong type",
        call(&client, Method::PUT, format!("{url}/loyalty_points"), Some(&customer), Some(json!(email))).await,
    );
    expect_error("body that is not JSON", {
        let response = client
            .put(url.clone())
            .bearer_auth(&customer)
            .header("content-type", "application/json")
            .body(format!("{{\"email\": {email}"))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    });

    // Consent: connect, a request with a denial reason, a grant, the reads.
    let relationship = common::roles::connect(&client, &base, &customer, &business_id).await;
    let pairwise = relationship["pairwise_id"].as_str().unwrap().to_owned();
    let request = json!({"pairwise_id": pairwise, "purposes": ["marketing"], "fields": ["email"], "duration_days": 90,
                         "justification": "Monthly offers"});
    let (status, asked) =
        call(&client, Method::POST, format!("{base}/v1/access-requests"), Some(&business), Some(request)).await;
    assert_eq!(status, 201, "{asked}");
    let request_id = serde_json::from_str::<Value>(&asked).unwrap()["request_id"].as_str().unwrap().to_owned();
    let (status, _) = call(
        &client,
        Method::POST,
        format!("{base}/v1/me/access-requests/{request_id}/deny"),
        Some(&customer),
        Some(json!({"reason": reason})),
    )
    .await;
    assert_eq!(status, 200);
    let grant = json!({"business_id": business_id, "purposes": ["marketing"], "fields": ["email", "given_name"], "duration_days": 30});
    let (status, body) =
        call(&client, Method::POST, format!("{base}/v1/me/grants"), Some(&customer), Some(grant)).await;
    assert_eq!(status, 201, "{body}");
    let read = format!("{base}/v1/subjects/{pairwise}/data?purpose=marketing&fields=email,given_name,loyalty_points");
    let (status, body) = call(&client, Method::GET, read, Some(&business), None).await;
    assert_eq!(status, 200);
    assert!(body.contains(&email), "the allowed read carries the value");
    expect_error(
        "read for an ungranted purpose",
        call(
            &client,
            Method::GET,
            format!("{base}/v1/subjects/{pairwise}/data?purpose=order-fulfilment&fields=email"),
            Some(&business),
            None,
        )
        .await,
    );
    // A field or purpose that is not in the policies is refused before the
    // read is decided or logged (the error names it: it is the caller's text).
    for query in [format!("purpose=marketing&fields=email,{name}"), format!("purpose={name}&fields=email")] {
        let url = format!("{base}/v1/subjects/{pairwise}/data?{query}");
        let (status, body) = call(&client, Method::GET, url, Some(&business), None).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["code"], "invalid_query");
    }
    for path in ["/v1/me/data", "/v1/me/export", "/v1/me/access-log", "/v1/me/grants", "/v1/me/access-requests"] {
        let (status, _) = call(&client, Method::GET, format!("{base}{path}"), Some(&customer), None).await;
        assert_eq!(status, 200, "{path}");
    }
    let response = client
        .get(format!("{base}/v1/me/export"))
        .bearer_auth(&customer)
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    expect_error(
        "canary as a bearer token",
        call(&client, Method::GET, format!("{base}/v1/me/data"), Some(&email), None).await,
    );
    expect_error(
        "canary in a path",
        call(&client, Method::GET, format!("{base}/v1/me/grants/{name}"), Some(&customer), None).await,
    );

    // What nobody may see a value in: metrics, every audit entry.
    let (status, metrics) = call(&client, Method::GET, format!("{base}/metrics"), None, None).await;
    assert_eq!(status, 200);
    let (status, checkpoint) = call(&client, Method::GET, format!("{base}/v1/audit/checkpoint"), None, None).await;
    assert_eq!(status, 200);
    let size: u64 = checkpoint.lines().nth(1).unwrap().parse().unwrap();
    let mut audit = String::new();
    for index in 0..size {
        let (status, entry) =
            call(&client, Method::GET, format!("{base}/v1/audit/entries/{index}"), Some(&auditor), None).await;
        assert_eq!(status, 200);
        audit.push_str(&entry);
        audit.push('\n');
    }
    let (status, listing) =
        call(&client, Method::GET, format!("{base}/v1/audit/entries?limit=1000"), Some(&auditor), None).await;
    assert_eq!(status, 200);
    audit.push_str(&listing);
    assert!(audit.contains("data.read") && audit.contains("data.exported"), "the reads were audited");

    // Erasure, then a read that must fail, and the logs.
    let (status, _) =
        call(&client, Method::DELETE, format!("{base}/v1/me"), Some(&customer), Some(json!({"confirm": "erase"})))
            .await;
    assert_eq!(status, 200);
    expect_error(
        "read after erasure",
        call(&client, Method::GET, format!("{base}/v1/me/data"), Some(&customer), None).await,
    );
    let logs = server.stderr_text();
    assert!(logs.lines().count() > 50, "trace logging was on");

    for canary in strings.iter().chain([&reason]) {
        for (what, body) in &errors {
            assert!(!body.contains(canary.as_str()), "error body of {what} holds a canary: {body}");
        }
        assert!(!metrics.contains(canary.as_str()), "metrics hold a canary");
        assert!(!audit.contains(canary.as_str()), "the audit log holds a canary");
        assert!(
            !logs.contains(canary.as_str()),
            "a log line holds a canary: {}",
            logs.lines().find(|line| line.contains(canary.as_str())).unwrap_or_default()
        );
    }
    assert!(errors.len() >= 14, "{} error bodies searched", errors.len());
}
