//! The consent path over HTTP: connect, grant, read exactly what is granted,
//! object, revoke, disconnect, and the log order that proves it.

#![allow(clippy::unwrap_used)]

mod common;

use common::roles::{self, get};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_business_reads_exactly_what_a_live_grant_allows_and_revocation_is_immediate() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let common::World { server, client, base, admin: _, business_id, business, auditor } =
        common::World::start(&data_dir).await;
    let (customer_id, customer) = roles::customer(&client, &base).await;
    let put = client
        .put(format!("{base}/v1/me/data"))
        .bearer_auth(&customer)
        .json(&json!({"email": "ada@example.org", "phone": "+44 20 7946 0000", "allergies": ["peanuts"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);

    let relationship = roles::connect(&client, &base, &customer, &business_id).await;
    let pairwise = relationship["pairwise_id"].as_str().unwrap().to_owned();
    let (_, listed) = get(&client, format!("{base}/v1/relationships"), &business).await;
    assert_eq!(listed["items"][0]["pairwise_id"], pairwise);

    let read = |purpose: &'static str, fields: &'static str| {
        let url = format!("{base}/v1/subjects/{pairwise}/data?purpose={purpose}&fields={fields}");
        let (client, business) = (client.clone(), business.clone());
        async move { get(&client, url, &business).await }
    };
    let (status, before) = read("marketing", "email").await;
    assert_eq!((status, before["code"].as_str()), (403, Some("no_consent")), "no grant yet");
    let (status, stranger) =
        get(&client, format!("{base}/v1/subjects/00000000000000000000000000000000/data?purpose=marketing"), &business)
            .await;
    assert_eq!(status, 403, "an unknown customer looks the same as one without a grant");
    assert_eq!(stranger, before);

    // Policies refuse what can never be granted.
    let too_long =
        json!({"business_id": business_id, "purposes": ["marketing"], "fields": ["email"], "duration_days": 400});
    let (status, problem) = roles::post(&client, format!("{base}/v1/me/grants"), Some(&customer), too_long).await;
    assert_eq!((status, problem["code"].as_str()), (422, Some("policy_violation")), "{problem}");
    let special =
        json!({"business_id": business_id, "purposes": ["marketing"], "fields": ["allergies"], "duration_days": 30});
    let (status, _) = roles::post(&client, format!("{base}/v1/me/grants"), Some(&customer), special).await;
    assert_eq!(status, 422, "special-category data is never for marketing");

    let body = json!({"business_id": business_id, "purposes": ["marketing"], "fields": ["email", "phone"], "duration_days": 90});
    let (status, grant) = roles::post(&client, format!("{base}/v1/me/grants"), Some(&customer), body).await;
    assert_eq!(status, 201, "{grant}");
    assert_eq!(grant["status"], "active");
    let grant_id = grant["grant_id"].as_str().unwrap().to_owned();
    // A signed receipt the customer can keep, naming the grant's audit event.
    let (status, receipt) = get(&client, format!("{base}/v1/me/grants/{grant_id}/receipt"), &customer).await;
    assert_eq!(status, 200, "{receipt}");
    assert_eq!(receipt["receipt"]["version"], "KI-CR-v1.1.0");
    assert_eq!(receipt["receipt"]["auditIndex"], grant["audit_index"]);
    assert_eq!(receipt["receipt"]["piiControllers"][0]["piiController"], "Acme Pizza");
    assert_eq!(receipt["receipt"]["services"][0]["purposes"][0]["purposeCategory"][1], "dpv:Marketing");
    let verifier =
        consentvault::audit::checkpoint::NoteVerifier::parse(receipt["verifier_key"].as_str().unwrap()).unwrap();
    let text = verifier.open(receipt["signed_note"].as_str().unwrap()).expect("the receipt's signature verifies");
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), receipt["receipt"]);
    let forged = receipt["signed_note"].as_str().unwrap().replacen("EXPLICIT", "IMPLICIT", 1);
    assert!(verifier.open(&forged).is_err(), "an edited receipt does not verify");

    let (_, given) = get(&client, format!("{base}/v1/grants"), &business).await;
    assert_eq!(given["items"][0]["grant_id"], grant_id.as_str());
    assert_eq!(
        given["items"][0]["pairwise_id"],
        pairwise.as_str(),
        "the business sees the customer by pairwise id only"
    );
    assert!(!given.to_string().contains(&customer_id), "never by subject id");

    let (status, allowed) = read("marketing", "email,given_name,allergies").await;
    assert_eq!(status, 200, "{allowed}");
    assert_eq!(allowed["data"], json!({"email": "ada@example.org"}));
    assert_eq!(
        allowed["withheld"],
        json!([
            {"field": "given_name", "reason": "field_not_granted"},
            {"field": "allergies", "reason": "category_not_allowed"}
        ])
    );
    assert_eq!(allowed["grant_ids"], json!([grant_id]));
    let (status, all) = read("marketing", "").await;
    assert_eq!(status, 200);
    assert_eq!(
        all["data"],
        json!({"email": "ada@example.org", "phone": "+44 20 7946 0000"}),
        "no list: every granted field"
    );

    // An objection overrides the grant.
    let objection = client
        .put(format!("{base}/v1/me/objections"))
        .bearer_auth(&customer)
        .json(&json!({"purposes": ["marketing"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(objection.status(), 200);
    let (status, objected) = read("marketing", "email").await;
    assert_eq!(status, 200);
    assert_eq!(objected["data"], json!({}));
    assert_eq!(objected["withheld"][0]["reason"], "objection");
    client
        .put(format!("{base}/v1/me/objections"))
        .bearer_auth(&customer)
        .json(&json!({"purposes": []}))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();

    let revoked = client.delete(format!("{base}/v1/me/grants/{grant_id}")).bearer_auth(&customer).send().await.unwrap();
    let revoked: Value = revoked.json().await.unwrap();
    assert_eq!(revoked["status"], "revoked");
    let (status, after) = read("marketing", "email").await;
    assert_eq!((status, after["code"].as_str()), (403, Some("no_consent")), "the next read after a revoke is denied");

    // The log: the allowed reads come before the revoke, the denied one after.
    let (_, entries) =
        get(&client, format!("{base}/v1/audit/entries?subject={}&limit=1000", customer_id), &auditor).await;
    let entries = entries["items"].as_array().unwrap();
    let index_of = |kind: &str, decision: Option<&str>| -> Vec<u64> {
        entries
            .iter()
            .filter(|e| e["entry"]["kind"] == kind && decision.is_none_or(|d| e["entry"]["decision"] == d))
            .map(|e| e["index"].as_u64().unwrap())
            .collect()
    };
    let revoke_at = index_of("grant.revoked", None)[0];
    assert!(index_of("data.read", Some("allow")).iter().all(|&i| i < revoke_at));
    assert!(index_of("grant.created", None)[0] < index_of("data.read", Some("allow"))[0]);
    let last_deny = *index_of("data.read", Some("deny")).last().unwrap();
    assert!(last_deny > revoke_at);
    assert!(entries.iter().all(|e| !e["entry"].to_string().contains("ada@example.org")), "no value in the log");

    // The customer sees every read of their data, and can prove each is in
    // the log the vault signed.
    let (status, log) = get(&client, format!("{base}/v1/me/access-log?proofs=true"), &customer).await;
    assert_eq!(status, 200, "{log}");
    let reads: Vec<&Value> = log["items"].as_array().unwrap().iter().filter(|i| i["role"] == "business").collect();
    assert!(reads.len() >= 5, "{log}");
    assert!(reads.iter().any(|i| i["decision"] == "allow" && i["business_id"] == business_id.as_str()));
    assert!(reads.iter().any(|i| i["decision"] == "deny"));
    let verifier = server.vault.audit().verifier();
    let checkpoint =
        verifier.open_checkpoint(log["checkpoint"].as_str().unwrap(), server.vault.audit().origin()).unwrap();
    for item in &reads {
        use base64::Engine;
        let proof = &item["inclusion_proof"];
        let entry = base64::engine::general_purpose::STANDARD.decode(proof["entry"].as_str().unwrap()).unwrap();
        let hashes: Vec<[u8; 32]> = proof["hashes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| base64::engine::general_purpose::STANDARD.decode(h.as_str().unwrap()).unwrap().try_into().unwrap())
            .collect();
        let leaf = consentvault::audit::merkle::leaf_hash(&entry);
        let index = item["audit_index"].as_u64().unwrap();
        consentvault::audit::merkle::verify_inclusion(&leaf, index, checkpoint.tree_size, &hashes, &checkpoint.root)
            .unwrap_or_else(|e| panic!("entry {index}: {e}"));
    }

    // Disconnecting ends the pairwise id.
    let relationship_id = relationship["relationship_id"].as_str().unwrap();
    let ended = client
        .delete(format!("{base}/v1/me/relationships/{relationship_id}"))
        .bearer_auth(&customer)
        .send()
        .await
        .unwrap();
    assert_eq!(ended.status(), 200);
    let (_, listed) = get(&client, format!("{base}/v1/relationships"), &business).await;
    assert!(listed["items"].as_array().unwrap().is_empty());

    // The business's feed tells it what to delete, by pairwise id only.
    let (_, feed) = get(&client, format!("{base}/v1/grants/changes"), &business).await;
    let changes: Vec<(&str, &str)> = feed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["change"].as_str().unwrap(), c["pairwise_id"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(
        changes,
        vec![("created", pairwise.as_str()), ("revoked", pairwise.as_str()), ("disconnected", pairwise.as_str())]
    );
    assert!(!feed.to_string().contains(&customer_id));
    let cursor = feed["cursor"].as_str().unwrap();
    let (_, later) = get(&client, format!("{base}/v1/grants/changes?cursor={cursor}"), &business).await;
    assert!(later["items"].as_array().unwrap().is_empty(), "the cursor moves past what was seen");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_business_asks_and_the_customer_narrows_approves_or_denies() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let common::World { server, client, base, admin: _, business_id, business, auditor: _ } =
        common::World::start(&data_dir).await;
    let (_, customer) = roles::customer(&client, &base).await;
    client
        .put(format!("{base}/v1/me/data"))
        .bearer_auth(&customer)
        .json(&json!({"email": "ada@example.org", "phone": "+44 20 7946 0000"}))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    let relationship = roles::connect(&client, &base, &customer, &business_id).await;
    let pairwise = relationship["pairwise_id"].as_str().unwrap().to_owned();
    let ask = |fields: Value, days: u32| {
        json!({"pairwise_id": pairwise, "purposes": ["marketing"], "fields": fields, "duration_days": days,
               "justification": "Send our monthly offers", "benefit": "10% off every order"})
    };
    let (status, created) =
        roles::post(&client, format!("{base}/v1/access-requests"), Some(&business), ask(json!(["email", "phone"]), 90))
            .await;
    assert_eq!((status, created["status"].as_str()), (201, Some("pending")), "{created}");
    let request_id = created["request_id"].as_str().unwrap().to_owned();

    // Refusals: unknown customer, no justification, a policy violation.
    let mut stranger = ask(json!(["email"]), 30);
    stranger["pairwise_id"] = json!("00000000000000000000000000000000");
    assert_eq!(roles::post(&client, format!("{base}/v1/access-requests"), Some(&business), stranger).await.0, 404);
    let mut silent = ask(json!(["email"]), 30);
    silent["justification"] = json!("  ");
    assert_eq!(roles::post(&client, format!("{base}/v1/access-requests"), Some(&business), silent).await.0, 400);
    assert_eq!(
        roles::post(&client, format!("{base}/v1/access-requests"), Some(&business), ask(json!(["allergies"]), 30))
            .await
            .0,
        422
    );

    let (_, mine) = get(&client, format!("{base}/v1/me/access-requests"), &customer).await;
    let pending = &mine["items"][0];
    assert_eq!(pending["business_name"], "Acme Pizza");
    assert_eq!(pending["justification"], "Send our monthly offers");
    assert_eq!(pending["benefit"], "10% off every order");
    assert_eq!(pending["status"], "pending");
    assert!(pending.get("pairwise_id").is_none(), "the customer is not shown the business's id for them");

    let widen = roles::post(
        &client,
        format!("{base}/v1/me/access-requests/{request_id}/approve"),
        Some(&customer),
        json!({"fields": ["email", "phone", "given_name"]}),
    )
    .await;
    assert_eq!(widen.0, 400, "an approval never widens: {}", widen.1);
    let (status, grant) = roles::post(
        &client,
        format!("{base}/v1/me/access-requests/{request_id}/approve"),
        Some(&customer),
        json!({"fields": ["email"], "duration_days": 30}),
    )
    .await;
    assert_eq!(status, 201, "{grant}");
    assert_eq!(grant["fields"], json!(["email"]));
    assert_eq!(grant["purposes"], json!(["marketing"]));
    let (status, read) =
        get(&client, format!("{base}/v1/subjects/{pairwise}/data?purpose=marketing&fields=email,phone"), &business)
            .await;
    assert_eq!(status, 200);
    assert_eq!(read["data"], json!({"email": "ada@example.org"}));
    assert_eq!(read["withheld"], json!([{"field": "phone", "reason": "field_not_granted"}]));
    let again =
        roles::post(&client, format!("{base}/v1/me/access-requests/{request_id}/approve"), Some(&customer), json!({}))
            .await;
    assert_eq!(again.0, 400, "a request is answered once");

    let (_, second) =
        roles::post(&client, format!("{base}/v1/access-requests"), Some(&business), ask(json!(["phone"]), 30)).await;
    let second_id = second["request_id"].as_str().unwrap();
    let (status, denied) = roles::post(
        &client,
        format!("{base}/v1/me/access-requests/{second_id}/deny"),
        Some(&customer),
        json!({"reason": "not now"}),
    )
    .await;
    assert_eq!((status, denied["status"].as_str()), (200, Some("denied")));
    let (_, theirs) = get(&client, format!("{base}/v1/access-requests/{second_id}"), &business).await;
    assert_eq!(theirs["status"], "denied");
    assert_eq!(theirs["reason"], "not now");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloaded_policies_apply_to_the_next_read_and_a_broken_file_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let policies = common::policies_copy(dir.path());
    let data_dir = dir.path().join("data");
    let server = common::InProcessServer::start_with(&data_dir, None, policies.clone()).await;
    let client = reqwest::Client::new();
    let base = server.base_url.clone();
    let admin = roles::admin_token(&client, &base, &data_dir).await;
    let (business_id, business) = roles::client_principal(&client, &base, &admin, "businesses").await;
    let (_, auditor) = roles::client_principal(&client, &base, &admin, "auditors").await;
    let (_, customer) = roles::customer(&client, &base).await;
    client
        .put(format!("{base}/v1/me/data"))
        .bearer_auth(&customer)
        .json(&json!({"email": "ada@example.org"}))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    let relationship = roles::connect(&client, &base, &customer, &business_id).await;
    let pairwise = relationship["pairwise_id"].as_str().unwrap().to_owned();
    let body = json!({"business_id": business_id, "purposes": ["marketing"], "fields": ["email"], "duration_days": 30});
    assert_eq!(roles::post(&client, format!("{base}/v1/me/grants"), Some(&customer), body).await.0, 201);
    let read_url = format!("{base}/v1/subjects/{pairwise}/data?purpose=marketing&fields=email");
    let (_, before) = get(&client, read_url.clone(), &business).await;
    assert_eq!(before["data"]["email"], "ada@example.org");

    // A broken file: refused with its line, and the policies in force stay.
    let rules = policies.join("rules.toml");
    let good_rules = std::fs::read_to_string(&rules).unwrap();
    std::fs::write(&rules, format!("{good_rules}\n[[deny]]\nid = \"broken\"\n")).unwrap();
    let (status, problem) =
        roles::post(&client, format!("{base}/v1/admin/policies/reload"), Some(&admin), json!({})).await;
    assert_eq!((status, problem["code"].as_str()), (400, Some("invalid_policy")), "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("rules.toml:"), "{problem}");
    assert_eq!(get(&client, read_url.clone(), &business).await.1["data"]["email"], "ada@example.org");

    // A new rule: the next read is withheld with its id, and the log records the new policies.
    std::fs::write(
        &rules,
        format!("{good_rules}\n[[deny]]\nid = \"no-contact-marketing\"\ndescription = \"x\"\npurpose = \"marketing\"\ncategory = \"contact\"\n"),
    )
    .unwrap();
    let (status, reloaded) =
        roles::post(&client, format!("{base}/v1/admin/policies/reload"), Some(&admin), json!({})).await;
    assert_eq!(status, 200, "{reloaded}");
    let (status, after) = get(&client, read_url, &business).await;
    assert_eq!(status, 200);
    assert_eq!(after["withheld"], json!([{"field": "email", "reason": "rule:no-contact-marketing"}]));
    let (_, loaded) = get(&client, format!("{base}/v1/audit/entries?kind=policy.loaded"), &auditor).await;
    let hashes: Vec<&str> = loaded["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["entry"]["related"]["policy_sha256"].as_str().unwrap())
        .collect();
    assert_eq!(hashes.len(), 2, "at start and at the reload: {loaded}");
    assert_eq!(hashes[1], reloaded["sha256"].as_str().unwrap());
    assert_ne!(hashes[0], hashes[1]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_grant_is_denied_at_its_edge_and_announced_in_the_feed_by_the_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let common::World { server, client, base, admin: _, business_id, business, auditor: _ } =
        common::World::start(&data_dir).await;
    let (_, customer) = roles::customer(&client, &base).await;
    client
        .put(format!("{base}/v1/me/data"))
        .bearer_auth(&customer)
        .json(&json!({"email": "ada@example.org"}))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    let relationship = roles::connect(&client, &base, &customer, &business_id).await;
    let pairwise = relationship["pairwise_id"].as_str().unwrap().to_owned();
    let start = 1_900_000_000;
    server.vault.insecure_pin_clock_secs(Some(start));
    let body = json!({"business_id": business_id, "purposes": ["marketing"], "fields": ["email"], "duration_days": 1});
    let (_, grant) = roles::post(&client, format!("{base}/v1/me/grants"), Some(&customer), body).await;
    let grant_id = grant["grant_id"].as_str().unwrap().to_owned();
    let read_url = format!("{base}/v1/subjects/{pairwise}/data?purpose=marketing&fields=email");

    server.vault.insecure_pin_clock_secs(Some(start + 86_400 - 1));
    assert_eq!(get(&client, read_url.clone(), &business).await.0, 200, "the last second of the window");
    assert_eq!(server.vault.consent().grants_expire().await.unwrap(), 0, "nothing has ended yet");
    server.vault.insecure_pin_clock_secs(Some(start + 86_400));
    assert_eq!(get(&client, read_url, &business).await.0, 403, "the window is half-open");
    let (_, view) = get(&client, format!("{base}/v1/me/grants/{grant_id}"), &customer).await;
    assert_eq!(view["status"], "expired");

    assert_eq!(server.vault.consent().grants_expire().await.unwrap(), 1);
    assert_eq!(server.vault.consent().grants_expire().await.unwrap(), 0, "each end is recorded once");
    let (_, feed) = get(&client, format!("{base}/v1/grants/changes"), &business).await;
    let changes: Vec<&str> = feed["items"].as_array().unwrap().iter().map(|c| c["change"].as_str().unwrap()).collect();
    assert_eq!(changes, vec!["created", "expired"]);
    assert_eq!(feed["items"][1]["pairwise_id"], pairwise.as_str());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_request_is_closed_by_the_sweep_and_the_business_sees_it_expired() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let common::World { server, client, base, admin: _, business_id, business, auditor } =
        common::World::start(&data_dir).await;
    let (_, customer) = roles::customer(&client, &base).await;
    let relationship = roles::connect(&client, &base, &customer, &business_id).await;
    let start = 1_900_000_000;
    server.vault.insecure_pin_clock_secs(Some(start));
    let ask = json!({"pairwise_id": relationship["pairwise_id"], "purposes": ["marketing"], "fields": ["email"],
                     "duration_days": 30, "justification": "Send our monthly offers"});
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (status, created) =
            roles::post(&client, format!("{base}/v1/access-requests"), Some(&business), ask.clone()).await;
        assert_eq!(status, 201, "{created}");
        ids.push(created["request_id"].as_str().unwrap().to_owned());
    }
    let (unanswered, approved) = (&ids[0], &ids[1]);
    let (status, _) =
        roles::post(&client, format!("{base}/v1/me/access-requests/{approved}/approve"), Some(&customer), json!({}))
            .await;
    assert_eq!(status, 201);
    let expires_at = start + 30 * 86_400;

    server.vault.insecure_pin_clock_secs(Some(expires_at - 1));
    server.vault.consent().requests_expire().await.unwrap();
    let (_, theirs) = get(&client, format!("{base}/v1/access-requests/{unanswered}"), &business).await;
    assert_eq!(theirs["status"], "pending", "the last second of its time");

    server.vault.insecure_pin_clock_secs(Some(expires_at));
    server.vault.consent().requests_expire().await.unwrap();
    assert_eq!(server.vault.consent().requests_expire().await.unwrap(), 0, "each request is closed once");
    let (_, theirs) = get(&client, format!("{base}/v1/access-requests/{unanswered}"), &business).await;
    assert_eq!(theirs["status"], "expired");
    let (_, theirs) = get(&client, format!("{base}/v1/access-requests/{approved}"), &business).await;
    assert_eq!(theirs["status"], "approved", "an answered request is not the sweep's");
    let stored = server.vault.consent().requests_of_business(&business_id.parse().unwrap(), None, 100).unwrap().items;
    assert!(
        stored.iter().any(|r| r.request_id.as_str() == *unanswered
            && r.status == consentvault::consent::requests::RequestStatus::Expired),
        "the stored status is expired, not only its reading"
    );
    let (status, late) =
        roles::post(&client, format!("{base}/v1/me/access-requests/{unanswered}/approve"), Some(&customer), json!({}))
            .await;
    assert_eq!(status, 400, "{late}");

    let (_, closed) =
        get(&client, format!("{base}/v1/audit/entries?kind=access_request.closed&limit=100"), &auditor).await;
    let closed = closed["items"].as_array().unwrap();
    assert_eq!(closed.len(), 1, "{closed:?}");
    let entry = &closed[0]["entry"];
    assert_eq!(entry["related"]["request_id"], unanswered.as_str());
    assert_eq!(entry["related"]["cause"], "expired");
    assert_eq!(entry["actor"], json!({"role": "system"}));
    assert_eq!(entry["business"], business_id.as_str());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_business_asking_too_often_gets_429() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let common::World { server, client, base, admin: _, business_id, business, auditor: _ } =
        common::World::start(&data_dir).await;
    let (_, customer) = roles::customer(&client, &base).await;
    let relationship = roles::connect(&client, &base, &customer, &business_id).await;
    let ask = json!({"pairwise_id": relationship["pairwise_id"], "purposes": ["marketing"], "fields": ["email"],
                     "duration_days": 30, "justification": "offers"});
    let mut statuses = Vec::new();
    for _ in 0..40 {
        let response =
            client.post(format!("{base}/v1/access-requests")).bearer_auth(&business).json(&ask).send().await.unwrap();
        statuses.push((response.status().as_u16(), response.headers().contains_key("retry-after")));
    }
    // The first three wait for her; the next are refused by her pending cap
    // (409), and count against the business's rate all the same.
    assert!(statuses[..3].iter().all(|(status, _)| *status == 201), "{statuses:?}");
    assert!(statuses[3..30].iter().all(|(status, _)| *status == 409), "{statuses:?}");
    assert!(statuses[30..].iter().any(|&(status, retry)| status == 429 && retry), "{statuses:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_or_body_that_names_something_twice_is_refused_and_changes_nothing() {
    let app = common::app::TestApp::start().await;
    let business = app.business("Acme Pizza", &["marketing"]).await;
    let customer = app.customer().await;
    assert_eq!(customer.data_put(&json!({"email": "ada@example.org"})).await.0, 200);
    let (status, relationship) = customer.connect(&business.id).await;
    assert_eq!(status, 201, "{relationship}");
    let pairwise = relationship["pairwise_id"].as_str().unwrap().to_owned();

    // Thousands of copies of one field or purpose: a 400 that says so, never
    // a 500 from an audit event grown too large, and nothing stored.
    let auditor = app.auditor().await;
    let size = auditor.entries_all().await.len();
    let grant = |purposes: Vec<&str>, fields: Vec<&str>| json!({"business_id": business.id, "purposes": purposes, "fields": fields, "duration_days": 30});
    for body in [grant(vec!["marketing"], vec!["email"; 3000]), grant(vec!["marketing"; 2500], vec!["email"])] {
        let (status, problem) = customer.grant(&body).await;
        assert_eq!(status, 400, "{problem}");
        assert!(problem["detail"].as_str().unwrap().contains("more than once"), "{problem}");
    }
    let ask = json!({"pairwise_id": pairwise, "purposes": vec!["marketing"; 2500], "fields": ["email", "email"],
                     "duration_days": 30, "justification": "offers"});
    let (status, problem) = business.access_request(&ask).await;
    assert_eq!(status, 400, "{problem}");
    assert_eq!(customer.grants().await.1["items"], json!([]));
    assert_eq!(customer.access_requests().await.1["items"], json!([]));

    // A data body naming a member twice is refused like every other body.
    let response = reqwest::Client::new()
        .put(format!("{}/v1/me/data", app.base_url()))
        .bearer_auth(customer.token())
        .header("content-type", "application/json")
        .body(r#"{"email": "first@example.org", "email": "second@example.org"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let problem: Value = response.json().await.unwrap();
    assert!(problem["detail"].as_str().unwrap().contains("duplicate field `email`"), "{problem}");
    assert!(!problem.to_string().contains("example.org"), "the problem quotes no value: {problem}");
    assert_eq!(customer.data().await.1["data"]["email"], "ada@example.org");
    // Nothing refused reached the log; the closing audit checks the rest.
    assert_eq!(auditor.entries_all().await.len(), size + 1, "only the data read");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_and_a_businesss_grants_name_the_customer_only_by_that_businesss_pairwise_id() {
    let app = common::app::TestApp::start().await;
    let business = app.business("Acme Pizza", &["marketing"]).await;
    let customer = app.customer().await;
    let grant_body =
        json!({"business_id": business.id, "purposes": ["marketing"], "fields": ["email"], "duration_days": 30});
    let (_, first) = customer.connect(&business.id).await;
    let first_pairwise = first["pairwise_id"].as_str().unwrap().to_owned();
    let (status, old_grant) = customer.grant(&grant_body).await;
    assert_eq!(status, 201, "{old_grant}");
    let old_grant = old_grant["grant_id"].as_str().unwrap().to_owned();

    // The receipt names her by this business's pairwise id, never by her
    // customer id (her login, the same for every business).
    let (status, receipt) = customer.receipt(&old_grant).await;
    assert_eq!(status, 200, "{receipt}");
    assert_eq!(receipt["receipt"]["piiPrincipalId"], first_pairwise.as_str());
    assert!(!receipt.to_string().contains(&customer.id), "the receipt carries her customer id: {receipt}");

    // Disconnected and connected again: a new pairwise id, and the old grant
    // does not tell the business that the two are the same customer.
    customer.disconnect(first["relationship_id"].as_str().unwrap()).await;
    let (_, second) = customer.connect(&business.id).await;
    let second_pairwise = second["pairwise_id"].as_str().unwrap().to_owned();
    assert_ne!(first_pairwise, second_pairwise);
    let (status, new_grant) = customer.grant(&grant_body).await;
    assert_eq!(status, 201, "{new_grant}");
    let (status, grants) = business.grants().await;
    assert_eq!(status, 200, "{grants}");
    let items = grants["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{grants}");
    for item in items {
        let named = item["pairwise_id"].as_str();
        if item["grant_id"] == old_grant.as_str() {
            assert_eq!(named, None, "the old grant names the customer by her new pairwise id: {item}");
        } else {
            assert_eq!(named, Some(second_pairwise.as_str()), "{item}");
        }
    }
    assert!(!grants.to_string().contains(&customer.id));
    // The old grant's receipt keeps the id it was given under.
    assert_eq!(customer.receipt(&old_grant).await.1["receipt"]["piiPrincipalId"], first_pairwise.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_business_cannot_ask_against_an_objection_past_the_pending_cap_or_once_blocked() {
    let app = common::app::TestApp::start().await;
    let business = app.business("Acme Pizza", &["marketing", "order-fulfilment"]).await;
    let customer = app.customer().await;
    let (_, relationship) = customer.connect(&business.id).await;
    let pairwise = relationship["pairwise_id"].as_str().unwrap().to_owned();
    let relationship_id = relationship["relationship_id"].as_str().unwrap().to_owned();
    let ask = |purpose: &str| {
        json!({"pairwise_id": pairwise, "purposes": [purpose], "fields": ["email"], "duration_days": 30,
               "justification": "offers"})
    };

    // A request made before she objected cannot be approved into a grant
    // she could never use, and no new one is taken for that purpose.
    let (status, before) = business.access_request(&ask("marketing")).await;
    assert_eq!(status, 201, "{before}");
    assert_eq!(customer.objections_put(&["marketing"]).await.0, 200);
    let (status, refused) = business.access_request(&ask("marketing")).await;
    assert_eq!((status, refused["code"].as_str()), (409, Some("objected")), "{refused}");
    let (status, refused) = customer.approve(before["request_id"].as_str().unwrap(), &json!({})).await;
    assert_eq!((status, refused["code"].as_str()), (409, Some("objected")), "{refused}");
    assert_eq!(customer.grants().await.1["items"], json!([]), "no grant was made");

    // At most three requests of one business wait for her at once.
    for _ in 0..2 {
        assert_eq!(business.access_request(&ask("order-fulfilment")).await.0, 201);
    }
    let (status, refused) = business.access_request(&ask("order-fulfilment")).await;
    assert_eq!((status, refused["code"].as_str()), (409, Some("too_many_pending_requests")), "{refused}");
    assert_eq!(customer.deny(before["request_id"].as_str().unwrap(), None).await.0, 200);
    let (status, third) = business.access_request(&ask("order-fulfilment")).await;
    assert_eq!(status, 201, "answering one makes room: {third}");

    // She blocks the business from asking, without disconnecting; then lets
    // it ask again.
    let path = format!("/v1/me/relationships/{relationship_id}");
    for pending in customer.access_requests().await.1["items"].as_array().unwrap() {
        customer.deny(pending["request_id"].as_str().unwrap(), None).await;
    }
    let (status, blocked) =
        customer.caller().json(reqwest::Method::PATCH, &path, Some(&json!({"requests_blocked": true}))).await;
    assert_eq!(status, 200, "{blocked}");
    assert_eq!(blocked["requests_blocked"], true);
    assert_eq!(customer.relationships().await.1["items"][0]["requests_blocked"], true);
    let (status, refused) = business.access_request(&ask("order-fulfilment")).await;
    assert_eq!((status, refused["code"].as_str()), (409, Some("requests_blocked")), "{refused}");
    let (status, still) = business.relationships().await;
    assert_eq!(still["items"].as_array().map(Vec::len), Some(1), "still connected: {status} {still}");
    let (status, _) =
        customer.caller().json(reqwest::Method::PATCH, &path, Some(&json!({"requests_blocked": false}))).await;
    assert_eq!(status, 200);
    assert_eq!(business.access_request(&ask("order-fulfilment")).await.0, 201);
    let changes = app.auditor().await.entries_all().await;
    let changed = changes.iter().filter(|item| item["entry"]["kind"] == "relationship.changed").count();
    assert_eq!(changed, 2, "each block and unblock is logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_that_is_not_an_id_names_no_record_and_gets_the_same_answer_as_an_unknown_id() {
    let app = common::app::TestApp::start().await;
    let business = app.business("Acme Pizza", &["marketing"]).await;
    let customer = app.customer().await;
    let unknown = "0123456789abcdef0123456789abcdef";
    for not_an_id in ["not-an-id", "0123456789ABCDEF0123456789ABCDEF", "0123456789abcdef0123456789abcdef00"] {
        assert_eq!(customer.revoke(not_an_id).await, customer.revoke(unknown).await, "{not_an_id}");
        assert_eq!(customer.receipt(not_an_id).await, customer.receipt(unknown).await, "{not_an_id}");
        assert_eq!(customer.connect(not_an_id).await, customer.connect(unknown).await, "{not_an_id}");
        assert_eq!(customer.revoke(not_an_id).await.0, 404);
    }
    // A malformed pairwise id is refused before a read is decided or logged.
    let auditor = app.auditor().await;
    let size = auditor.entries_all().await.len();
    let (status, problem) = business.read("NOT-A-PAIRWISE-ID", "marketing", &["email"]).await;
    assert_eq!((status, problem["code"].as_str()), (400, Some("invalid_query")), "{problem}");
    assert_eq!(auditor.entries_all().await.len(), size, "nothing was logged");
}

/// Every item of the listing at `path`, page by page with `limit`, and how
/// many pages it took; a page never holds more than `limit`, and the last
/// says `cursor: null`.
async fn all_pages(caller: &common::app::Caller, path: &str, limit: usize) -> (Vec<Value>, usize) {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let limit_text = limit.to_string();
        let mut pairs = vec![("limit", limit_text.as_str())];
        if let Some(cursor) = &cursor {
            pairs.push(("cursor", cursor.as_str()));
        }
        let (status, page) = caller.get(&common::app::with_query(path, &pairs)).await;
        assert_eq!(status, 200, "{path}: {page}");
        let listed = page["items"].as_array().unwrap();
        assert!(listed.len() <= limit, "{path}: a page of {} for limit {limit}", listed.len());
        items.extend(listed.iter().cloned());
        pages += 1;
        assert!(pages <= 50, "{path}: the cursor never ends");
        match page["cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    (items, pages)
}

fn ids(items: &[Value], name: &str) -> std::collections::BTreeSet<String> {
    items.iter().map(|item| item[name].as_str().unwrap().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_list_is_paged_with_a_capped_limit_and_an_opaque_cursor() {
    let app = common::app::TestApp::start().await;
    let purposes = &["order-fulfilment", "marketing"];
    let (acme, globex, initech) = (
        app.business("Acme Pizza", purposes).await,
        app.business("Globex", purposes).await,
        app.business("Initech", purposes).await,
    );
    // Ada deals with three businesses; Acme has three customers.
    let ada = app.customer().await;
    let mut acme_customers = Vec::new();
    for business in [&acme, &globex, &initech] {
        let (status, connected) = ada.connect(&business.id).await;
        assert_eq!(status, 201, "{connected}");
        if business.id == acme.id {
            acme_customers.push(connected["pairwise_id"].as_str().unwrap().to_owned());
        }
        let body = json!({"pairwise_id": connected["pairwise_id"], "purposes": ["marketing"], "fields": ["email"],
                          "duration_days": 30, "justification": "offers"});
        let (status, asked) = business.access_request(&body).await;
        assert_eq!(status, 201, "{asked}");
        let body = json!({"business_id": business.id, "purposes": ["marketing"], "fields": ["email"],
                          "duration_days": 30});
        assert_eq!(ada.grant(&body).await.0, 201);
    }
    for _ in 0..2 {
        let other = app.customer().await;
        let (status, connected) = other.connect(&acme.id).await;
        assert_eq!(status, 201);
        acme_customers.push(connected["pairwise_id"].as_str().unwrap().to_owned());
        let body = json!({"pairwise_id": connected["pairwise_id"], "purposes": ["marketing"], "fields": ["email"],
                          "duration_days": 30, "justification": "offers"});
        assert_eq!(acme.access_request(&body).await.0, 201);
        let body = json!({"business_id": acme.id, "purposes": ["marketing"], "fields": ["phone"], "duration_days": 30});
        assert_eq!(other.grant(&body).await.0, 201);
    }

    // Each list, walked one item a page, gives every item exactly once.
    let listings: [(&common::app::Caller, &str, &str); 6] = [
        (ada.caller(), "/v1/me/relationships", "relationship_id"),
        (ada.caller(), "/v1/me/grants", "grant_id"),
        (ada.caller(), "/v1/me/access-requests", "request_id"),
        (acme.caller(), "/v1/relationships", "pairwise_id"),
        (acme.caller(), "/v1/grants", "grant_id"),
        (acme.caller(), "/v1/access-requests", "request_id"),
    ];
    for (caller, path, id) in listings {
        let (whole, pages) = all_pages(caller, path, 100).await;
        assert_eq!((whole.len(), pages), (3, 1), "{path}: one page holds all three");
        let (one_by_one, pages) = all_pages(caller, path, 1).await;
        assert_eq!(one_by_one.len(), 3, "{path}");
        assert!(pages >= 3, "{path}: {pages} pages of one");
        assert_eq!(ids(&one_by_one, id), ids(&whole, id), "{path}: paging lost or repeated an item");
        let (_, pages_of_two) = all_pages(caller, path, 2).await;
        assert_eq!(pages_of_two, 2, "{path}");

        // The limit is capped, and must be a page size.
        for bad in ["0", "101", "-1", "many"] {
            let (status, problem) = caller.get(&format!("{path}?limit={bad}")).await;
            assert_eq!(status, 400, "{path}?limit={bad}: {problem}");
        }
        // A cursor is the vault's: made up, or from another listing, it is refused.
        let (_, first) = caller.get(&format!("{path}?limit=1")).await;
        let cursor = first["cursor"].as_str().unwrap();
        for other in ["/v1/me/relationships", "/v1/me/grants", "/v1/relationships", "/v1/grants"] {
            if other == path || (other.starts_with("/v1/me/") != path.starts_with("/v1/me/")) {
                continue;
            }
            let (status, problem) = caller.get(&format!("{other}?cursor={cursor}")).await;
            assert_eq!((status, problem["code"].as_str()), (400, Some("invalid_cursor")), "{path} cursor on {other}");
        }
        let (status, problem) = caller.get(&format!("{path}?cursor=bm90LWEtY3Vyc29y")).await;
        assert_eq!((status, problem["code"].as_str()), (400, Some("invalid_cursor")), "{path}: {problem}");
        // Unknown parameters are refused, not ignored.
        let (status, problem) = caller.get(&format!("{path}?limit=1&limt=2")).await;
        assert_eq!((status, problem["code"].as_str()), (400, Some("invalid_query")), "{path}: {problem}");
        assert!(problem["detail"].as_str().unwrap().contains("limt"), "{problem}");
    }
    assert_eq!(ids(&all_pages(acme.caller(), "/v1/relationships", 1).await.0, "pairwise_id").len(), 3);
    assert_eq!(
        ids(&all_pages(acme.caller(), "/v1/relationships", 1).await.0, "pairwise_id"),
        acme_customers.into_iter().collect()
    );

    // Routes without query parameters refuse one too.
    for path in ["/v1/me/data?fields=email", "/v1/me/objections?all=1", "/v1/me/export?format=csv"] {
        let (status, problem) = ada.caller().get(path).await;
        assert_eq!((status, problem["code"].as_str()), (400, Some("invalid_query")), "{path}: {problem}");
    }
    let admin = app.admin();
    for path in ["/v1/admin/businesses", "/v1/admin/auditors"] {
        let (status, problem) = admin.caller().get(&format!("{path}?name=Acme")).await;
        assert_eq!((status, problem["code"].as_str()), (400, Some("invalid_query")), "{path}: {problem}");
    }
    let (businesses, pages) = all_pages(admin.caller(), "/v1/admin/businesses", 1).await;
    assert_eq!((businesses.len(), pages), (3, 3));
    assert_eq!(ids(&businesses, "business_id"), [&acme.id, &globex.id, &initech.id].into_iter().cloned().collect());
}
