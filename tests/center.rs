//! The privacy center over plain HTTP, as an attacker would try it: the
//! session cookie's attributes, the pages' security headers, forms without
//! their token or from another origin, sign-in guessing, a session after a
//! password change or erasure, and a second customer's session. The whole
//! flow in a real browser is `scripts/browser-test`.

#![allow(clippy::unwrap_used)]

mod common;

use common::app::TestApp;
use common::roles;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_SECURITY_POLICY, CONTENT_TYPE, LOCATION, ORIGIN, SET_COOKIE};
use serde_json::{Value, json};

/// A client that does not follow redirects, so each answer is seen.
fn client() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// Signs `customer_id` in; returns the session cookie's value and the whole
/// `Set-Cookie` line.
async fn sign_in(base: &str, customer_id: &str) -> (String, String) {
    let answer = client()
        .post(format!("{base}/sign-in"))
        .form(&[("customer_id", customer_id), ("password", roles::PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::SEE_OTHER, "{}", answer.text().await.unwrap());
    let line = answer.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    let value = line.split(';').next().unwrap().strip_prefix("cv_session=").unwrap().to_owned();
    (value, line)
}

async fn page(base: &str, path: &str, session: &str) -> (StatusCode, String) {
    let answer = client().get(format!("{base}{path}")).header("cookie", format!("cv_session={session}")).send().await;
    let answer = answer.unwrap();
    let status = answer.status();
    let location = answer.headers().get(LOCATION).map(|value| value.to_str().unwrap().to_owned());
    (status, location.unwrap_or(answer.text().await.unwrap()))
}

fn csrf_of(page: &str) -> String {
    let start = page.find("name=\"csrf\" value=\"").unwrap() + "name=\"csrf\" value=\"".len();
    page[start..].split('"').next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_cookie_and_the_pages_carry_their_protections() {
    let app = TestApp::start().await;
    let base = app.anonymous().caller().base_url().to_owned();
    let customer = app.customer().await;
    let (session, line) = sign_in(&base, &customer.id).await;
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(line.contains(attribute), "{line}");
    }
    assert!(!line.contains("Secure"), "plain HTTP gets no Secure cookie: {line}");
    let behind_tls = client()
        .post(format!("{base}/sign-in"))
        .header("x-forwarded-proto", "https")
        .form(&[("customer_id", customer.id.as_str()), ("password", roles::PASSWORD)])
        .send()
        .await
        .unwrap();
    assert!(behind_tls.headers()[SET_COOKIE].to_str().unwrap().contains("; Secure"));

    let answer =
        client().get(format!("{base}/")).header("cookie", format!("cv_session={session}")).send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let headers = answer.headers().clone();
    let policy = headers[CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(policy.contains("default-src 'self'") && policy.contains("frame-ancestors 'none'"), "{policy}");
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["cache-control"], "no-store");
    assert!(headers[CONTENT_TYPE].to_str().unwrap().starts_with("text/html"));
    let text = answer.text().await.unwrap();
    assert!(text.contains(&customer.id), "the home page names her id");
    assert!(
        !text.contains("<script>") && !text.contains("http://") && !text.contains("https://"),
        "nothing from elsewhere"
    );

    // Signed out or never signed in: the sign-in page, nothing else.
    for (cookie, path) in [("", "/"), ("made-up", "/sharing"), ("", "/access-log/proofs")] {
        let (status, location) = page(&base, path, cookie).await;
        assert_eq!((status, location.as_str()), (StatusCode::SEE_OTHER, "/sign-in"), "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_form_without_its_token_or_from_another_origin_changes_nothing() {
    let app = TestApp::start().await;
    let base = app.anonymous().caller().base_url().to_owned();
    let customer = app.customer().await;
    let (session, _) = sign_in(&base, &customer.id).await;
    let (_, objections_page) = page(&base, "/objections", &session).await;
    let csrf = csrf_of(&objections_page);
    let post = |form: Vec<(&'static str, String)>, origin: Option<&'static str>| {
        let mut request =
            client().post(format!("{base}/objections")).header("cookie", format!("cv_session={session}")).form(&form);
        if let Some(origin) = origin {
            request = request.header(ORIGIN, origin);
        }
        request.send()
    };
    let refused = [
        (vec![("purposes", "marketing".to_owned())], None),
        (vec![("purposes", "marketing".to_owned()), ("csrf", "forged".to_owned())], None),
        (vec![("purposes", "marketing".to_owned()), ("csrf", csrf.clone())], Some("https://evil.example")),
        (vec![("purposes", "marketing".to_owned()), ("csrf", csrf.clone())], Some("null")),
    ];
    for (form, origin) in refused {
        let answer = post(form, origin).await.unwrap();
        assert_eq!(answer.status(), StatusCode::FORBIDDEN, "{origin:?}");
        assert!(answer.text().await.unwrap().contains("Nothing was changed"));
    }
    assert_eq!(customer.objections().await.1["purposes"], json!([]), "nothing changed");
    let same_origin = base.strip_prefix("http://").map(|host| format!("http://{host}")).unwrap();
    let accepted = client()
        .post(format!("{base}/objections"))
        .header("cookie", format!("cv_session={session}"))
        .header(ORIGIN, same_origin)
        .form(&[("purposes", "marketing"), ("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), StatusCode::SEE_OTHER);
    assert_eq!(customer.objections().await.1["purposes"], json!(["marketing"]), "the real form works");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_end_at_a_password_change_and_at_erasure_and_guessing_is_limited() {
    let app = TestApp::start().await;
    let base = app.anonymous().caller().base_url().to_owned();
    let customer = app.customer().await;
    let (first, _) = sign_in(&base, &customer.id).await;
    let (second, _) = sign_in(&base, &customer.id).await;
    // A password change through the API ends every session of hers.
    let (status, changed) = customer
        .caller()
        .post("/v1/me/password", &json!({"current_password": roles::PASSWORD, "new_password": roles::PASSWORD}))
        .await;
    assert_eq!(status, 200, "{changed}");
    for session in [&first, &second] {
        assert_eq!(page(&base, "/", session).await.1, "/sign-in");
    }
    let (status, wrong) = customer
        .caller()
        .post("/v1/me/password", &json!({"current_password": "not my password at all", "new_password": "x".repeat(12)}))
        .await;
    assert_eq!(status, 401, "{wrong}");

    // Erased through the API: her session opens nothing.
    let (session, _) = sign_in(&base, &customer.id).await;
    let (status, _) = customer.caller().delete("/v1/me", Some(&json!({"confirm": "erase"}))).await;
    assert_eq!(status, 200);
    assert_eq!(page(&base, "/data", &session).await.1, "/sign-in");

    // Guessing a password is limited as at the token endpoint.
    let other = app.customer().await;
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let answer = client()
            .post(format!("{base}/sign-in"))
            .form(&[("customer_id", other.id.as_str()), ("password", "a wrong guess, again")])
            .send()
            .await
            .unwrap();
        statuses.push(answer.status().as_u16());
    }
    assert_eq!(statuses.first(), Some(&401));
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");

    // So is guessing the current password with her token.
    let third = app.customer().await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let body = json!({"current_password": "another wrong guess", "new_password": "y".repeat(12)});
        statuses.push(third.caller().post("/v1/me/password", &body).await.0);
    }
    assert_eq!((statuses.first(), statuses.last()), (Some(&401), Some(&429)), "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_sees_businesses_by_name_and_nobody_elses_records() {
    let app = TestApp::start().await;
    let base = app.anonymous().caller().base_url().to_owned();
    let business = app.business("Acme Pizza", &["order-fulfilment", "marketing"]).await;
    let ada = app.customer().await;
    let (status, relationship) = ada.connect(&business.id).await;
    assert_eq!(status, 201, "{relationship}");
    assert_eq!(relationship["business_name"], "Acme Pizza");
    let (status, grant) = ada
        .grant(
            &json!({"business_id": business.id, "purposes": ["marketing"], "fields": ["email"], "duration_days": 30}),
        )
        .await;
    assert_eq!(status, 201, "{grant}");
    assert_eq!(grant["business_name"], "Acme Pizza");
    let (_, relationships) = ada.relationships().await;
    assert_eq!(relationships["items"][0]["business_name"], "Acme Pizza");

    let (ada_session, _) = sign_in(&base, &ada.id).await;
    let (_, sharing) = page(&base, "/sharing", &ada_session).await;
    assert!(sharing.contains("Acme Pizza") && !sharing.contains(&business.id), "names, not ids");

    // Bob's session: her grant is not his to see, download or revoke.
    let bob = app.customer().await;
    let (bob_session, _) = sign_in(&base, &bob.id).await;
    let grant_id = grant["grant_id"].as_str().unwrap();
    let (_, bob_sharing) = page(&base, "/sharing", &bob_session).await;
    assert!(!bob_sharing.contains("Acme Pizza"));
    assert_eq!(page(&base, &format!("/sharing/{grant_id}/receipt"), &bob_session).await.0, StatusCode::NOT_FOUND);
    let answer = client()
        .post(format!("{base}/sharing/{grant_id}/revoke"))
        .header("cookie", format!("cv_session={bob_session}"))
        .form(&[("csrf", csrf_of(&bob_sharing))])
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::NOT_FOUND);
    assert_eq!(ada.grant_get(grant_id).await.1["status"], "active", "her grant stands");
}

/// Every event about her, not only reads, comes with an inclusion proof that
/// leads to the signed checkpoint given, and nobody else's event is among
/// them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_about_her_is_listed_with_an_inclusion_proof_that_verifies() {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use consentvault::audit::merkle::{leaf_hash, verify_inclusion};
    let app = TestApp::start().await;
    let business = app.business("Acme Pizza", &["order-fulfilment", "marketing"]).await;
    let ada = app.customer().await;
    let bob = app.customer().await;
    assert_eq!(bob.data_put(&json!({"email": "bob@example.org"})).await.0, 200);
    assert_eq!(ada.data_put(&json!({"email": "ada@example.org"})).await.0, 200);
    assert_eq!(ada.connect(&business.id).await.0, 201);
    let (_, grant) = ada
        .grant(
            &json!({"business_id": business.id, "purposes": ["marketing"], "fields": ["email"], "duration_days": 30}),
        )
        .await;
    assert_eq!(ada.revoke(grant["grant_id"].as_str().unwrap()).await.0, 200);

    let (status, page) = ada.caller().get("/v1/me/events?proofs=true").await;
    assert_eq!(status, 200, "{page}");
    let checkpoint = page["checkpoint"].as_str().unwrap();
    let mut lines = checkpoint.lines().skip(1);
    let size: u64 = lines.next().unwrap().parse().unwrap();
    let root: [u8; 32] = STANDARD.decode(lines.next().unwrap()).unwrap().try_into().unwrap();
    let mut kinds = Vec::new();
    for item in page["items"].as_array().unwrap() {
        let event = &item["event"];
        assert_eq!(event["subject"], ada.id, "only events about her: {event}");
        let proof = &item["inclusion_proof"];
        let entry = STANDARD.decode(proof["entry"].as_str().unwrap()).unwrap();
        assert_eq!(serde_json::from_slice::<Value>(&entry).unwrap(), *event, "the proof is of this event");
        let hashes: Vec<[u8; 32]> = proof["hashes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|hash| STANDARD.decode(hash.as_str().unwrap()).unwrap().try_into().unwrap())
            .collect();
        let index = item["audit_index"].as_u64().unwrap();
        verify_inclusion(&leaf_hash(&entry), index, size, &hashes, &root).unwrap();
        kinds.push(event["kind"].as_str().unwrap().to_owned());
    }
    for kind in ["subject.created", "data.written", "relationship.created", "grant.created", "grant.revoked"] {
        assert!(kinds.iter().any(|seen| seen == kind), "{kind} missing from {kinds:?}");
    }
}

/// The inbox shows what a business wrote as text, never as markup; another
/// customer's session can neither read, answer nor delete her messages; a
/// contact form without its token changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbox_escapes_what_businesses_write_and_nobody_reaches_anothers_messages() {
    let app = TestApp::start().await;
    let base = app.anonymous().caller().base_url().to_owned();
    let business = app.business("Acme Pizza", &["order-fulfilment", "marketing"]).await;
    let ada = app.customer().await;
    let (_, relationship) = ada.connect(&business.id).await;
    let pairwise = relationship["pairwise_id"].as_str().unwrap();
    let hostile = "<script>alert(\"inbox\")</script> & 'more'";
    let (status, sent) = business.message(pairwise, "service", hostile, hostile).await;
    assert_eq!(status, 201, "{sent}");
    let message_id = sent["message_id"].as_str().unwrap();

    let (ada_session, _) = sign_in(&base, &ada.id).await;
    let (status, inbox) = page(&base, "/inbox", &ada_session).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!inbox.contains("<script>alert"), "markup from a business reached the page");
    assert!(inbox.contains("&lt;script&gt;alert(&quot;inbox&quot;)&lt;/script&gt; &amp; 'more'"), "{inbox}");
    assert!(inbox.contains("Acme Pizza") && !inbox.contains(&business.id), "names, not ids");

    let bob = app.customer().await;
    let (bob_session, _) = sign_in(&base, &bob.id).await;
    let (_, bob_inbox) = page(&base, "/inbox", &bob_session).await;
    assert!(!bob_inbox.contains("alert(&quot;inbox") && !bob_inbox.contains(message_id), "her message is in his inbox");
    let csrf = csrf_of(&bob_inbox);
    for action in ["reply", "delete"] {
        let answer = client()
            .post(format!("{base}/inbox/{message_id}/{action}"))
            .header("cookie", format!("cv_session={bob_session}"))
            .form(&[("csrf", csrf.as_str()), ("body", "not yours")])
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::NOT_FOUND, "{action}");
    }
    assert_eq!(business.replies(pairwise).await.1["items"], json!([]), "nothing was written in her name");

    // Her contact form without its token: refused, nothing changed.
    let relationship_id = relationship["relationship_id"].as_str().unwrap();
    let answer = client()
        .post(format!("{base}/contact/{relationship_id}"))
        .header("cookie", format!("cv_session={ada_session}"))
        .form(&[("kinds", "offers"), ("cap_messages", "9"), ("cap_period", "day"), ("channel", "inbox")])
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::FORBIDDEN);
    let (_, contact) = ada.caller().get(&format!("/v1/me/relationships/{relationship_id}/contact")).await;
    assert_eq!(contact["preferences"]["kinds"], json!(["service"]), "{contact}");
    // With it, saved.
    let (_, contact_page) = page(&base, "/contact", &ada_session).await;
    let answer = client()
        .post(format!("{base}/contact/{relationship_id}"))
        .header("cookie", format!("cv_session={ada_session}"))
        .form(&[
            ("csrf", csrf_of(&contact_page).as_str()),
            ("kinds", "offers"),
            ("kinds", "service"),
            ("cap_messages", "9"),
            ("cap_period", "day"),
            ("quiet_from", "22:00"),
            ("quiet_to", "07:30"),
            ("time_zone", "Europe/Paris"),
            ("channel", "webhook"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    let (_, contact) = ada.caller().get(&format!("/v1/me/relationships/{relationship_id}/contact")).await;
    let preferences = &contact["preferences"];
    assert_eq!(preferences["kinds"], json!(["offers", "service"]), "{contact}");
    assert_eq!(preferences["cap"], json!({"messages": 9, "period": "day"}));
    assert_eq!(preferences["quiet_hours"], json!({"from": "22:00", "to": "07:30", "time_zone": "Europe/Paris"}));
    assert_eq!(preferences["channel"], "webhook");
}
