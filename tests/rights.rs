//! Data-subject rights over HTTP: the customer exports everything held about
//! them, then erases it; afterwards no path reaches their data, the business
//! sees the consent end, and the audit log still verifies.

#![allow(clippy::unwrap_used)]

mod common;

use common::roles::{self, send};
use serde_json::json;

const CANARY: &str = "erasure-canary-7f3a@example.org";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_holds_everything_and_erasure_leaves_nothing_reachable() {
    use reqwest::Method;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let common::World { server, client, base, admin: _, business_id, business, auditor } =
        common::World::start(&data_dir).await;
    let (customer_id, customer) = roles::customer(&client, &base).await;
    let (status, _) = send(
        &client,
        Method::PUT,
        format!("{base}/v1/me/data"),
        Some(&customer),
        Some(json!({"email": CANARY, "phone": "+44 20 7946 0001"})),
    )
    .await;
    assert_eq!(status, 200);
    let relationship = roles::connect(&client, &base, &customer, &business_id).await;
    let pairwise = relationship["pairwise_id"].as_str().unwrap().to_owned();
    let body = json!({"business_id": business_id, "purposes": ["marketing"], "fields": ["email"], "duration_days": 30});
    let (status, grant) = roles::post(&client, format!("{base}/v1/me/grants"), Some(&customer), body).await;
    assert_eq!(status, 201, "{grant}");
    let grant_id = grant["grant_id"].as_str().unwrap().to_owned();
    let read_url = format!("{base}/v1/subjects/{pairwise}/data?purpose=marketing");
    let (status, read) = send(&client, Method::GET, read_url.clone(), Some(&business), None).await;
    assert_eq!((status, &read["data"]), (200, &json!({"email": CANARY})));
    // Two requests: one the customer denies with a reason of her own, one left waiting.
    let ask = json!({"pairwise_id": pairwise, "purposes": ["marketing"], "fields": ["phone"], "duration_days": 30,
                     "justification": "Send our monthly offers"});
    let mut request_ids = Vec::new();
    for _ in 0..2 {
        let (status, created) =
            roles::post(&client, format!("{base}/v1/access-requests"), Some(&business), ask.clone()).await;
        assert_eq!(status, 201, "{created}");
        request_ids.push(created["request_id"].as_str().unwrap().to_owned());
    }
    let (denied_id, waiting_id) = (&request_ids[0], &request_ids[1]);
    let reason = json!({"reason": "my own words about why not"});
    let deny_url = format!("{base}/v1/me/access-requests/{denied_id}/deny");
    assert_eq!(roles::post(&client, deny_url, Some(&customer), reason).await.0, 200);

    // Export: the data, the relationship, the grant with its signed receipt,
    // and the read the business just made.
    let (status, export) = send(&client, Method::GET, format!("{base}/v1/me/export"), Some(&customer), None).await;
    assert_eq!(status, 200, "{export}");
    let text = export.to_string();
    assert!(text.contains(CANARY) && text.contains("+44 20 7946 0001"), "{export}");
    assert!(text.contains(&pairwise) && text.contains(&grant_id), "{export}");
    assert_eq!(export["grants"][0]["receipts"][0]["receipt"]["recordType"], "given", "{export}");
    assert!(export["grants"][0]["receipts"][0]["signed_note"].is_string(), "{export}");
    assert!(text.contains(&business_id), "the export names who read the data: {export}");

    // Erasure needs an explicit confirmation; without it nothing changes.
    let (status, problem) =
        send(&client, Method::DELETE, format!("{base}/v1/me"), Some(&customer), Some(json!({"confirm": "yes"}))).await;
    assert_eq!((status, problem["code"].as_str()), (400, Some("confirmation_required")), "{problem}");
    let (status, _) = send(&client, Method::GET, read_url.clone(), Some(&business), None).await;
    assert_eq!(status, 200, "a refused erasure changes nothing");

    let (status, receipt) =
        send(&client, Method::DELETE, format!("{base}/v1/me"), Some(&customer), Some(json!({"confirm": "erase"})))
            .await;
    assert_eq!(status, 200, "{receipt}");
    assert_eq!(receipt["erased"], true);
    let erased_at = receipt["audit_index"].as_u64().unwrap();
    let verifier = server.vault.audit().verifier();
    let checkpoint =
        verifier.open_checkpoint(receipt["checkpoint"].as_str().unwrap(), server.vault.audit().origin()).unwrap();
    assert!(checkpoint.tree_size > erased_at, "the receipt's checkpoint covers the erasure");

    // No path reaches the customer any more.
    for (method, path) in [(Method::GET, "/v1/me/data"), (Method::GET, "/v1/me/export"), (Method::GET, "/v1/me/grants")]
    {
        let (status, _) = send(&client, method.clone(), format!("{base}{path}"), Some(&customer), None).await;
        assert_eq!(status, 401, "{method} {path} with the erased customer's token");
    }
    let login = json!({"grant_type": "password", "username": customer_id, "password": "correct horse battery staple"});
    let (status, _) = roles::post(&client, format!("{base}/v1/token"), None, login).await;
    assert!((400..500).contains(&status), "the erased customer cannot log in: {status}");
    let (status, denied) = send(&client, Method::GET, read_url, Some(&business), None).await;
    assert_eq!(status, 403, "{denied}");
    assert!(!denied.to_string().contains(CANARY));
    let (_, grants) = send(&client, Method::GET, format!("{base}/v1/grants"), Some(&business), None).await;
    assert!(
        grants["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|g| g["grant_id"] != grant_id.as_str() || g["status"] != "active"),
        "{grants}"
    );
    let (_, changes) = send(&client, Method::GET, format!("{base}/v1/grants/changes"), Some(&business), None).await;
    assert!(changes.to_string().contains("revoked"), "the feed tells the business the grant ended: {changes}");
    let (_, waiting) =
        send(&client, Method::GET, format!("{base}/v1/access-requests/{waiting_id}"), Some(&business), None).await;
    assert_eq!(waiting["status"], "expired", "a waiting request is closed: {waiting}");
    let (_, denied) =
        send(&client, Method::GET, format!("{base}/v1/access-requests/{denied_id}"), Some(&business), None).await;
    assert_eq!(denied["status"], "denied");
    assert!(denied.get("reason").is_none_or(serde_json::Value::is_null), "the customer's words go: {denied}");

    // The log keeps the erasure, with ids only.
    let (_, entries) = send(
        &client,
        Method::GET,
        format!("{base}/v1/audit/entries?subject={customer_id}&limit=1000"),
        Some(&auditor),
        None,
    )
    .await;
    let entries = entries["items"].as_array().unwrap();
    assert!(entries.iter().any(|e| e["entry"]["kind"] == "subject.erased" && e["index"] == erased_at));
    assert!(entries.iter().all(|e| !e["entry"].to_string().contains(CANARY)));
    let vault = server.vault.clone();
    server.stop().await;
    drop(vault);

    // Nothing at rest holds the value in the clear, and the log verifies.
    for (path, bytes) in common::files_under(&data_dir) {
        assert!(!common::contains(&bytes, CANARY.as_bytes()), "{} holds the erased value", path.display());
    }
    let (verified, _, stderr) = common::audit_verify(&data_dir);
    assert!(verified, "{stderr}");
}

/// A value that is markup if it is not escaped.
const HOSTILE: &str = "<script>alert(\"x\")</script> & 'y'";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_html_export_is_the_same_document_escaped_and_audited_once_per_export() {
    use reqwest::Method;
    use reqwest::header::{ACCEPT, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS};
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let common::World { server, client, base, admin: _, business_id, business, auditor } =
        common::World::start(&data_dir).await;
    let (customer_id, customer) = roles::customer(&client, &base).await;
    let data = json!({"email": CANARY, "given_name": HOSTILE});
    let (status, _) = send(&client, Method::PUT, format!("{base}/v1/me/data"), Some(&customer), Some(data)).await;
    assert_eq!(status, 200);
    let relationship = roles::connect(&client, &base, &customer, &business_id).await;
    let pairwise = relationship["pairwise_id"].as_str().unwrap().to_owned();
    let body = json!({"business_id": business_id, "purposes": ["marketing"], "fields": ["email"], "duration_days": 30});
    let (_, grant) = roles::post(&client, format!("{base}/v1/me/grants"), Some(&customer), body).await;
    let grant_id = grant["grant_id"].as_str().unwrap().to_owned();
    let ask = json!({"pairwise_id": pairwise, "purposes": ["marketing"], "fields": ["phone"], "duration_days": 30,
                     "justification": HOSTILE});
    let (status, _) = roles::post(&client, format!("{base}/v1/access-requests"), Some(&business), ask).await;
    assert_eq!(status, 201);
    let read_url = format!("{base}/v1/subjects/{pairwise}/data?purpose=marketing&fields=email");
    let (status, read) = send(&client, Method::GET, read_url, Some(&business), None).await;
    assert_eq!(status, 200, "{read}");
    let read_index = read["audit_index"].as_u64().unwrap();

    let export_url = format!("{base}/v1/me/export");
    let html = client
        .get(&export_url)
        .bearer_auth(&customer)
        .header(ACCEPT, "text/html,application/xhtml+xml,*/*;q=0.8")
        .send()
        .await
        .unwrap();
    assert_eq!(html.status(), 200);
    let header = |name| html.headers().get(name).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    assert_eq!(header(CONTENT_TYPE), "text/html; charset=utf-8");
    assert_eq!(header(CACHE_CONTROL), "no-store");
    assert_eq!(header(X_CONTENT_TYPE_OPTIONS), "nosniff");
    assert!(header(CONTENT_SECURITY_POLICY).starts_with("default-src 'none'; style-src 'unsafe-inline'"));
    let page = html.text().await.unwrap();
    assert!(!page.contains("<script"), "no stored text becomes markup");
    let escaped = "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;";
    assert_eq!(page.matches(escaped).count(), 2, "the stored name and the business's justification, escaped");
    assert!(
        page.contains(CANARY) && page.contains(&pairwise) && page.contains(&grant_id) && page.contains(&business_id)
    );
    assert!(page.contains(&format!("<td>{read_index}</td>")), "the access log shows audit indices");
    assert!(page.contains("(given)</summary>") && page.contains("Signed receipts"), "grants come with their receipts");
    for heading in ["My data", "Relationships", "Access requests", "Grants", "Objections", "Access log"] {
        assert!(page.contains(&format!("<h2>{heading}</h2>")), "{heading}");
    }

    // JSON stays the default; an Accept that allows neither is refused and exports nothing.
    for accept in [None, Some("*/*"), Some("application/json")] {
        let mut request = client.get(&export_url).bearer_auth(&customer);
        if let Some(accept) = accept {
            request = request.header(ACCEPT, accept);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json", "{accept:?}");
        let document: serde_json::Value = response.json().await.unwrap();
        assert_eq!(document["data"]["given_name"], HOSTILE, "{accept:?}");
    }
    let refused = client.get(&export_url).bearer_auth(&customer).header(ACCEPT, "image/png").send().await.unwrap();
    assert_eq!(refused.status(), 406);
    let problem: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(problem["code"], "not_acceptable");

    let (_, exported) = send(
        &client,
        Method::GET,
        format!("{base}/v1/audit/entries?subject={customer_id}&kind=data.exported&limit=100"),
        Some(&auditor),
        None,
    )
    .await;
    let exported = exported["items"].as_array().unwrap();
    assert_eq!(exported.len(), 4, "one event per export, HTML or JSON, none for the refused one: {exported:?}");
    assert!(exported.iter().all(|e| !e["entry"].to_string().contains("script")), "no value in the log");
    server.stop().await;
}

/// A business registered through the library, and a customer connected to it.
async fn customer_of_a_business(
    vault: &std::sync::Arc<consentvault::vault::Vault>,
) -> (consentvault::ids::SubjectId, consentvault::ids::BusinessId) {
    use consentvault::audit::Actor;
    use consentvault::auth::Role;
    let business = vault
        .principals()
        .client_create(&Actor::system(), Role::Business, "Acme Pizza", vec!["marketing".to_owned()])
        .await
        .unwrap()
        .id
        .parse()
        .unwrap();
    let subject = vault.principals().customer_signup("correct horse battery staple").await.unwrap();
    vault.subjects().data_put(&Actor::customer(subject), subject, "email", &json!(CANARY)).await.unwrap();
    vault.consent().relationship_create(subject, &business).await.unwrap();
    (subject, business)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasing_twice_answers_with_the_first_erasure_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (vault, _) = common::open_vault(dir.path());
    let (subject, _) = customer_of_a_business(&vault).await;
    let first = vault.rights().subject_erase(subject).await.unwrap();
    let size = consentvault::audit::size(vault.store()).unwrap();
    let checkpoint = vault.audit().checkpoint_latest().unwrap();
    let second = vault.rights().subject_erase(subject).await.unwrap();
    assert_eq!(second, first, "the same index and checkpoint");
    assert_eq!(consentvault::audit::size(vault.store()).unwrap(), size, "no audit event the second time");
    assert_eq!(vault.audit().checkpoint_latest().unwrap(), checkpoint, "no new checkpoint either");
    let record = vault.subjects().subject_record(subject).unwrap().unwrap();
    assert_eq!(record.erasure_index, Some(first.audit_index));
    assert_eq!(record.last_active_at, None, "the tombstone keeps no activity time");
    vault.close().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_changes_for_an_erased_customer_fail_inside_their_transaction() {
    use consentvault::consent::ConsentError;
    let dir = tempfile::tempdir().unwrap();
    let (vault, _) = common::open_vault(dir.path());
    let (subject, business) = customer_of_a_business(&vault).await;
    let grant = vault
        .consent()
        .grant_create(subject, &business, vec!["marketing".to_owned()], vec!["email".to_owned()], 30)
        .await;
    let grant_id = grant.unwrap().grant_id;
    vault.rights().subject_erase(subject).await.unwrap();
    let size = consentvault::audit::size(vault.store()).unwrap();

    // Each call passes its checks outside the transaction (the business exists,
    // the grant record is still there, revoked); only the check at commit stops it.
    let connect = vault.consent().relationship_create(subject, &business).await;
    assert!(matches!(connect, Err(ConsentError::SubjectErased)), "{connect:?}");
    let object = vault.consent().objections_set(subject, vec!["marketing".to_owned()]).await;
    assert!(matches!(object, Err(ConsentError::SubjectErased)), "{object:?}");
    let regrant = vault
        .consent()
        .grant_create(subject, &business, vec!["marketing".to_owned()], vec!["email".to_owned()], 30)
        .await;
    assert!(matches!(regrant, Err(ConsentError::SubjectErased)), "{regrant:?}");
    let revoke = vault.consent().grant_revoke(subject, &grant_id).await;
    assert!(matches!(revoke, Err(ConsentError::SubjectErased)), "{revoke:?}");

    assert_eq!(consentvault::audit::size(vault.store()).unwrap(), size, "nothing was recorded");
    assert!(vault.consent().relationships(subject).unwrap().is_empty());
    assert!(vault.consent().objections(subject).unwrap().is_empty());
    assert_eq!(vault.consent().grants(subject).unwrap().len(), 1, "only the grant the erasure revoked");
    vault.close().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_retention_rule_nobody_is_erased_however_long_inactive() {
    let dir = tempfile::tempdir().unwrap();
    let (vault, _) = common::open_vault(dir.path());
    let (subject, _) = customer_of_a_business(&vault).await;
    assert_eq!(vault.policies().rules.retention, None);
    vault.insecure_pin_clock_secs(Some(consentvault::clock::now().unix_timestamp() + 100 * 365 * 86_400));
    assert_eq!(vault.sweep().retention_sweep().await.unwrap(), 0);
    assert_eq!(vault.sweep().sweep().await.subjects_erased, 0);
    assert!(vault.subjects().subject_exists(subject).unwrap());
    assert_eq!(vault.subjects().data_read_own(subject).await.unwrap()["email"], CANARY);
    vault.close().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retention_rule_erases_inactive_customers_only_through_the_erasure_path() {
    use reqwest::Method;
    let dir = tempfile::tempdir().unwrap();
    let policies = common::policies_copy(dir.path());
    let rules = std::fs::read_to_string(policies.join("rules.toml")).unwrap();
    std::fs::write(policies.join("rules.toml"), format!("{rules}\n[retention]\nerase_inactive_after_days = 30\n"))
        .unwrap();
    let data_dir = dir.path().join("data");
    let server = common::InProcessServer::start_with(&data_dir, None, policies).await;
    let client = reqwest::Client::new();
    let base = server.base_url.clone();
    let admin = roles::admin_token(&client, &base, &data_dir).await;
    let (business_id, business) = roles::client_principal(&client, &base, &admin, "businesses").await;
    let (_, auditor) = roles::client_principal(&client, &base, &admin, "auditors").await;
    let mut customers = Vec::new();
    for _ in 0..2 {
        let (id, token) = roles::customer(&client, &base).await;
        let (status, _) =
            send(&client, Method::PUT, format!("{base}/v1/me/data"), Some(&token), Some(json!({"email": CANARY})))
                .await;
        assert_eq!(status, 200);
        let pairwise =
            roles::connect(&client, &base, &token, &business_id).await["pairwise_id"].as_str().unwrap().to_owned();
        let body =
            json!({"business_id": business_id, "purposes": ["marketing"], "fields": ["email"], "duration_days": 90});
        assert_eq!(roles::post(&client, format!("{base}/v1/me/grants"), Some(&token), body).await.0, 201);
        customers.push((id, token, pairwise));
    }
    let [(inactive_id, inactive, inactive_pairwise), (active_id, active, active_pairwise)] =
        customers.try_into().unwrap();

    // Twenty days on, one customer acts; thirty-one days on, the other has not.
    let now = consentvault::clock::now().unix_timestamp();
    server.vault.insecure_pin_clock_secs(Some(now + 20 * 86_400));
    let (status, _) = send(
        &client,
        Method::PUT,
        format!("{base}/v1/me/data"),
        Some(&active),
        Some(json!({"phone": "+44 20 7946 0002"})),
    )
    .await;
    assert_eq!(status, 200);
    server.vault.insecure_pin_clock_secs(Some(now + 31 * 86_400));
    server.vault.sweep().retention_sweep().await.unwrap();
    assert_eq!(server.vault.sweep().retention_sweep().await.unwrap(), 0, "an erased customer is erased once");

    let read = |pairwise: String| {
        let (client, business) = (client.clone(), business.clone());
        let url = format!("{base}/v1/subjects/{pairwise}/data?purpose=marketing&fields=email");
        async move { send(&client, Method::GET, url, Some(&business), None).await }
    };
    let (status, denied) = read(inactive_pairwise).await;
    assert_eq!(status, 403, "{denied}");
    assert_eq!(send(&client, Method::GET, format!("{base}/v1/me/data"), Some(&inactive), None).await.0, 401);
    let login = json!({"grant_type": "password", "username": inactive_id, "password": "correct horse battery staple"});
    assert_eq!(roles::post(&client, format!("{base}/v1/token"), None, login).await.0, 401);
    let (status, kept) = read(active_pairwise).await;
    assert_eq!((status, &kept["data"]), (200, &json!({"email": CANARY})), "the active customer is kept");
    assert_eq!(send(&client, Method::GET, format!("{base}/v1/me/data"), Some(&active), None).await.0, 200);

    let entries = |subject: String| {
        let (client, auditor) = (client.clone(), auditor.clone());
        let url = format!("{base}/v1/audit/entries?subject={subject}&limit=1000");
        async move { send(&client, Method::GET, url, Some(&auditor), None).await.1["items"].as_array().unwrap().clone() }
    };
    let erased = entries(inactive_id).await;
    let erasures: Vec<&serde_json::Value> = erased.iter().filter(|e| e["entry"]["kind"] == "subject.erased").collect();
    assert_eq!(erasures.len(), 1, "{erased:?}");
    assert_eq!(erasures[0]["entry"]["related"]["cause"], "retention");
    assert_eq!(erasures[0]["entry"]["actor"], json!({"role": "system"}));
    let revoked = erased.iter().find(|e| e["entry"]["kind"] == "grant.revoked").unwrap();
    assert_eq!(revoked["entry"]["related"]["cause"], "retention", "the same erasure steps, with their cause");
    assert!(erased.iter().all(|e| !e["entry"].to_string().contains(CANARY)));
    assert!(entries(active_id).await.iter().all(|e| e["entry"]["kind"] != "subject.erased"));
    server.stop().await;
}

/// The recorded activity moves to the hour; the retention rule waits that
/// hour longer, so a customer is never erased before the rule's time after
/// their last action.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activity_kept_to_the_hour_never_makes_a_retention_erasure_early() {
    use consentvault::audit::Actor;
    let dir = tempfile::tempdir().unwrap();
    let policies = common::policies_copy(dir.path());
    let rules = std::fs::read_to_string(policies.join("rules.toml")).unwrap();
    std::fs::write(policies.join("rules.toml"), format!("{rules}\n[retention]\nerase_inactive_after_days = 30\n"))
        .unwrap();
    let (vault, _) =
        consentvault::vault::Vault::open(common::vault_options(&dir.path().join("data"), &policies)).unwrap();
    let now = consentvault::clock::now().unix_timestamp();
    vault.insecure_pin_clock_secs(Some(now));
    let (subject, _) = customer_of_a_business(&vault).await;
    // Half an hour later the customer acts again: the record, an hour
    // coarse, stays at the sign-up.
    let last_action = now + 1_800;
    vault.insecure_pin_clock_secs(Some(last_action));
    vault.subjects().data_put(&Actor::customer(subject), subject, "phone", &json!("+44 20 7946 0003")).await.unwrap();

    // Thirty days after the sign-up, but not yet after the last action.
    vault.insecure_pin_clock_secs(Some(last_action + 30 * 86_400 - 600));
    assert_eq!(vault.sweep().retention_sweep().await.unwrap(), 0, "erased before thirty days without any action");
    assert!(vault.subjects().subject_exists(subject).unwrap());
    // Once the recorded time, the rule's thirty days and the hour have
    // passed, the rule applies.
    vault.insecure_pin_clock_secs(Some(now + 30 * 86_400 + 3_600 + 1));
    assert_eq!(vault.sweep().retention_sweep().await.unwrap(), 1);
    assert!(!vault.subjects().subject_exists(subject).unwrap());
    vault.close().unwrap();
}
