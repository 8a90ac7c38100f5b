//! Identity and access over HTTP: the role × route × method matrix, a corpus
//! of bad tokens that all get the same 401, tokens from an external issuer
//! minted without the vault's JWT library, mass assignment, disabling.

#![allow(clippy::unwrap_used)]

mod common;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::roles;
use serde_json::{Value, json};

const ROLES: [&str; 5] = ["anonymous", "customer", "business", "auditor", "admin"];

struct Actors {
    base: String,
    business_id: String,
    client: reqwest::Client,
    tokens: std::collections::HashMap<&'static str, String>,
    admin_credentials: Value,
}

impl Actors {
    async fn new(server: &common::InProcessServer, data_dir: &std::path::Path) -> Self {
        let client = reqwest::Client::new();
        let base = server.base_url.clone();
        let admin = roles::admin_token(&client, &base, data_dir).await;
        let (business_id, business) = roles::client_principal(&client, &base, &admin, "businesses").await;
        let (_, auditor) = roles::client_principal(&client, &base, &admin, "auditors").await;
        let (_, customer) = roles::customer(&client, &base).await;
        let tokens = [("customer", customer), ("business", business), ("auditor", auditor), ("admin", admin)]
            .into_iter()
            .collect();
        let admin_credentials =
            serde_json::from_str(&std::fs::read_to_string(data_dir.join("admin-credentials.json")).unwrap()).unwrap();
        Self { base, business_id, client, tokens, admin_credentials }
    }

    async fn send(&self, role: &str, method: &str, path: &str, body: Option<&Value>) -> reqwest::Response {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = self.tokens.get(role) {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        request.send().await.unwrap()
    }
}

/// Ids the matrix acts on, made beforehand so every allowed cell can succeed.
struct Fixtures {
    business_to_disable: String,
    auditor_to_disable: String,
    business_to_connect: String,
    relationship_to_end: String,
    grant_to_read: String,
    grant_to_revoke: String,
    pairwise: String,
    request_to_approve: String,
    request_to_deny: String,
}

impl Fixtures {
    async fn new(actors: &Actors) -> Self {
        let (client, base) = (&actors.client, actors.base.as_str());
        let (admin, customer) = (actors.tokens["admin"].as_str(), actors.tokens["customer"].as_str());
        let (business_to_disable, _) = roles::client_principal(client, base, admin, "businesses").await;
        let (auditor_to_disable, _) = roles::client_principal(client, base, admin, "auditors").await;
        let (business_to_connect, _) = roles::client_principal(client, base, admin, "businesses").await;
        let (business_to_leave, _) = roles::client_principal(client, base, admin, "businesses").await;
        let connect = |business: String| async move { roles::connect(client, base, customer, &business).await };
        let pairwise = connect(actors.business_id.clone()).await["pairwise_id"].as_str().unwrap().to_owned();
        let relationship_to_end = connect(business_to_leave).await["relationship_id"].as_str().unwrap().to_owned();
        let grant = |fields: Value| async move {
            let body = json!({"business_id": actors.business_id, "purposes": ["marketing"], "fields": fields, "duration_days": 30});
            let (status, grant) = roles::post(client, format!("{base}/v1/me/grants"), Some(customer), body).await;
            assert_eq!(status, 201, "{grant}");
            grant["grant_id"].as_str().unwrap().to_owned()
        };
        let grant_to_read = grant(json!(["email"])).await;
        let grant_to_revoke = grant(json!(["phone"])).await;
        let business = actors.tokens["business"].as_str();
        let ask = |pairwise: String| async move {
            let body = json!({"pairwise_id": pairwise, "purposes": ["marketing"], "fields": ["email"],
                              "duration_days": 30, "justification": "offers"});
            let (status, created) =
                roles::post(client, format!("{base}/v1/access-requests"), Some(business), body).await;
            assert_eq!(status, 201, "{created}");
            created["request_id"].as_str().unwrap().to_owned()
        };
        let request_to_approve = ask(pairwise.clone()).await;
        let request_to_deny = ask(pairwise.clone()).await;
        Self {
            business_to_disable,
            auditor_to_disable,
            business_to_connect,
            relationship_to_end,
            grant_to_read,
            grant_to_revoke,
            pairwise,
            request_to_approve,
            request_to_deny,
        }
    }
}

/// Every route: method, path, the role allowed (None: anyone), a body.
fn routes(actors: &Actors, fixtures: &Fixtures) -> Vec<(&'static str, String, Option<&'static str>, Option<Value>)> {
    let Fixtures {
        business_to_disable,
        auditor_to_disable,
        business_to_connect,
        relationship_to_end,
        grant_to_read,
        grant_to_revoke,
        pairwise,
        request_to_approve,
        request_to_deny,
    } = fixtures;
    let credentials = json!({
        "grant_type": "client_credentials",
        "client_id": actors.admin_credentials["client_id"],
        "client_secret": actors.admin_credentials["client_secret"],
    });
    vec![
        ("GET", "/healthz".to_owned(), None, None),
        ("GET", "/readyz".to_owned(), None, None),
        ("GET", "/metrics".to_owned(), None, None),
        ("GET", "/v1/audit/checkpoint".to_owned(), None, None),
        ("GET", "/v1/audit/public-key".to_owned(), None, None),
        ("POST", "/v1/token".to_owned(), None, Some(credentials)),
        ("GET", "/v1/me/data".to_owned(), Some("customer"), None),
        ("PUT", "/v1/me/data".to_owned(), Some("customer"), Some(json!({"email": "ada@example.org"}))),
        ("PUT", "/v1/me/data/phone".to_owned(), Some("customer"), Some(json!({"value": "+44 20 7946 0000"}))),
        ("DELETE", "/v1/me/data/phone".to_owned(), Some("customer"), None),
        ("GET", "/v1/me/relationships".to_owned(), Some("customer"), None),
        (
            "POST",
            "/v1/me/relationships".to_owned(),
            Some("customer"),
            Some(json!({"business_id": business_to_connect})),
        ),
        ("DELETE", format!("/v1/me/relationships/{relationship_to_end}"), Some("customer"), None),
        ("GET", "/v1/me/grants".to_owned(), Some("customer"), None),
        (
            "POST",
            "/v1/me/grants".to_owned(),
            Some("customer"),
            Some(
                json!({"business_id": actors.business_id, "purposes": ["marketing"], "fields": ["email"], "duration_days": 30}),
            ),
        ),
        ("GET", format!("/v1/me/grants/{grant_to_read}"), Some("customer"), None),
        ("GET", format!("/v1/me/grants/{grant_to_read}/receipt"), Some("customer"), None),
        ("DELETE", format!("/v1/me/grants/{grant_to_revoke}"), Some("customer"), None),
        ("GET", "/v1/me/objections".to_owned(), Some("customer"), None),
        ("PUT", "/v1/me/objections".to_owned(), Some("customer"), Some(json!({"purposes": []}))),
        ("GET", "/v1/me/access-log?proofs=true".to_owned(), Some("customer"), None),
        ("GET", "/v1/relationships".to_owned(), Some("business"), None),
        ("GET", "/v1/grants".to_owned(), Some("business"), None),
        ("GET", "/v1/access-requests".to_owned(), Some("business"), None),
        ("GET", "/v1/grants/changes".to_owned(), Some("business"), None),
        (
            "POST",
            "/v1/access-requests".to_owned(),
            Some("business"),
            Some(
                json!({"pairwise_id": pairwise, "purposes": ["marketing"], "fields": ["phone"], "duration_days": 30, "justification": "offers"}),
            ),
        ),
        ("GET", format!("/v1/access-requests/{request_to_approve}"), Some("business"), None),
        ("GET", "/v1/me/access-requests".to_owned(), Some("customer"), None),
        ("POST", format!("/v1/me/access-requests/{request_to_approve}/approve"), Some("customer"), Some(json!({}))),
        ("POST", format!("/v1/me/access-requests/{request_to_deny}/deny"), Some("customer"), Some(json!({}))),
        ("GET", format!("/v1/subjects/{pairwise}/data?purpose=marketing"), Some("business"), None),
        ("GET", "/v1/audit/entries".to_owned(), Some("auditor"), None),
        ("GET", "/v1/audit/entries/0".to_owned(), Some("auditor"), None),
        ("GET", "/v1/audit/proof/inclusion?index=0&tree_size=1".to_owned(), Some("auditor"), None),
        ("GET", "/v1/audit/proof/consistency?old_size=1&new_size=1".to_owned(), Some("auditor"), None),
        ("GET", "/v1/admin/businesses".to_owned(), Some("admin"), None),
        (
            "POST",
            "/v1/admin/businesses".to_owned(),
            Some("admin"),
            Some(json!({"name": "Shop", "purposes": ["marketing"]})),
        ),
        ("POST", format!("/v1/admin/businesses/{business_to_disable}/disable"), Some("admin"), None),
        ("GET", "/v1/admin/auditors".to_owned(), Some("admin"), None),
        ("POST", "/v1/admin/auditors".to_owned(), Some("admin"), Some(json!({"name": "External audit"}))),
        ("POST", format!("/v1/admin/auditors/{auditor_to_disable}/disable"), Some("admin"), None),
        ("POST", "/v1/admin/policies/reload".to_owned(), Some("admin"), None),
        ("GET", "/v1/admin/keys".to_owned(), Some("admin"), None),
        ("POST", "/v1/admin/keys/rotate".to_owned(), Some("admin"), None),
        ("GET", "/v1/me/export".to_owned(), Some("customer"), None),
        // Last: erasing the customer ends its login.
        ("DELETE", "/v1/me".to_owned(), Some("customer"), Some(json!({"confirm": "erase"}))),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_reaches_exactly_its_routes_and_other_methods_get_405() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let server = common::InProcessServer::start(&data_dir).await;
    let actors = Actors::new(&server, &data_dir).await;
    let fixtures = Fixtures::new(&actors).await;

    for (method, path, allowed, body) in routes(&actors, &fixtures) {
        for role in ROLES {
            let response = actors.send(role, method, &path, body.as_ref()).await;
            let status = response.status().as_u16();
            let cell = format!("{role} {method} {path}");
            match allowed {
                None => assert!((200..300).contains(&status), "{cell}: public route answered {status}"),
                Some(owner) if owner == role => assert!((200..300).contains(&status), "{cell}: answered {status}"),
                Some(_) if role == "anonymous" => assert_eq!(status, 401, "{cell}"),
                Some(_) => assert_eq!(status, 403, "{cell}"),
            }
        }
    }
    // Every path answers 405 to the methods it does not support, for everyone.
    let paths_and_methods = [
        ("/healthz", &["GET"][..]),
        ("/v1/token", &["POST"][..]),
        ("/v1/customers", &["POST"][..]),
        ("/v1/me/data", &["GET", "PUT"][..]),
        ("/v1/me/data/email", &["PUT", "DELETE"][..]),
        ("/v1/audit/entries", &["GET"][..]),
        ("/v1/audit/checkpoint", &["GET"][..]),
        ("/v1/admin/businesses", &["GET", "POST"][..]),
        ("/v1/admin/auditors", &["GET", "POST"][..]),
    ];
    for (path, supported) in paths_and_methods {
        for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            if supported.contains(&method) {
                continue;
            }
            for role in ROLES {
                let status = actors.send(role, method, path, None).await.status().as_u16();
                assert_eq!(status, 405, "{role} {method} {path}");
            }
        }
    }
    server.stop().await;
}

/// Builds a compact JWS from raw header and claims text and a signature.
fn jws(header: &str, claims: &str, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_token_in_the_corpus_gets_the_same_401() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let server = common::InProcessServer::start(&data_dir).await;
    let actors = Actors::new(&server, &data_dir).await;
    let issuer = server.vault.principals().token_issuer();
    let kid = issuer.kid().to_owned();
    let (customer, _) = roles::customer(&actors.client, &actors.base).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claims = |changes: Value| {
        let mut base = json!({"iss": "consentvault", "sub": customer, "aud": "consentvault",
            "exp": now + 600, "nbf": now, "iat": now, "jti": "j", "role": "customer"});
        for (key, value) in changes.as_object().unwrap() {
            if value.is_null() && key.starts_with('-') {
                base.as_object_mut().unwrap().remove(&key[1..]);
            } else {
                base[key] = value.clone();
            }
        }
        base
    };
    let sign = |value: Value| issuer.sign_claims(&value).unwrap();
    let header = |extra: &str| format!(r#"{{"alg":"EdDSA","typ":"at+jwt","kid":"{kid}"{extra}}}"#);
    let raw = |header_json: &str, claims_json: &str| issuer.sign_raw(header_json, claims_json).unwrap();

    // The baseline works, so every refusal below is about the one change.
    let good = sign(claims(json!({})));
    assert_eq!(
        actors.client.get(format!("{}/v1/me/data", actors.base)).bearer_auth(&good).send().await.unwrap().status(),
        200
    );
    let good_claims = serde_json::to_string(&claims(json!({}))).unwrap();
    let parts: Vec<&str> = good.split('.').collect();
    let other = sign(claims(json!({"jti": "other"})));
    let other_signature = other.split('.').nth(2).unwrap().to_owned();
    let mut flipped = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    flipped[10] ^= 1;
    let public_key =
        actors.client.get(format!("{}/v1/audit/public-key", actors.base)).send().await.unwrap().text().await.unwrap();
    let hs256_with_public_key = {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, public_key.as_bytes());
        let header_json = format!(r#"{{"alg":"HS256","typ":"at+jwt","kid":"{kid}"}}"#);
        let input = format!("{}.{}", URL_SAFE_NO_PAD.encode(&header_json), URL_SAFE_NO_PAD.encode(&good_claims));
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(ring::hmac::sign(&key, input.as_bytes())))
    };

    let mut corpus: Vec<(String, String)> = Vec::new();
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header_json = format!(r#"{{"alg":"{alg}","typ":"at+jwt"}}"#);
        corpus.push((
            format!("alg {alg} unsigned"),
            format!("{}.{}.", URL_SAFE_NO_PAD.encode(&header_json), URL_SAFE_NO_PAD.encode(&good_claims)),
        ));
        corpus.push((format!("alg {alg} with a signature"), jws(&header_json, &good_claims, b"signature")));
    }
    corpus.push(("HS256 signed with the public key".into(), hs256_with_public_key));
    corpus.push(("signature stripped".into(), format!("{}.{}.", parts[0], parts[1])));
    corpus.push(("signature swapped".into(), format!("{}.{}.{}", parts[0], parts[1], other_signature)));
    corpus.push((
        "signature bit flipped".into(),
        format!("{}.{}.{}", parts[0], parts[1], URL_SAFE_NO_PAD.encode(&flipped)),
    ));
    // The exact ±1 s edges of the 30 s leeway are tested with a fixed clock
    // in `auth::token`; over HTTP the server's clock moves on during the test,
    // so these sit a few seconds past the edge.
    corpus.push((
        "expired beyond the leeway".into(),
        sign(claims(json!({"exp": now - 35, "iat": now - 600, "nbf": now - 600}))),
    ));
    corpus.push(("not yet valid beyond the leeway".into(), sign(claims(json!({"nbf": now + 35})))));
    for (name, value) in [("string", json!("9999999999")), ("float", json!(9999999999.5)), ("null", Value::Null)] {
        corpus.push((format!("exp as {name}"), sign(claims(json!({"exp": value.clone()})))));
        corpus.push((format!("nbf as {name}"), sign(claims(json!({"nbf": value})))));
    }
    for claim in ["exp", "nbf", "iat", "iss", "aud", "sub", "role"] {
        corpus.push((format!("{claim} missing"), sign(claims(json!({format!("-{claim}"): null})))));
    }
    corpus.push(("wrong iss".into(), sign(claims(json!({"iss": "someone-else"})))));
    corpus.push(("wrong aud".into(), sign(claims(json!({"aud": "another-service"})))));
    corpus.push(("aud array without a match".into(), sign(claims(json!({"aud": ["a", "b"]})))));
    corpus.push(("aud as a number".into(), sign(claims(json!({"aud": 7})))));
    corpus.push(("lifetime too long".into(), sign(claims(json!({"exp": now + 86_400})))));
    corpus.push(("wrong typ".into(), raw(&format!(r#"{{"alg":"EdDSA","typ":"JWT","kid":"{kid}"}}"#), &good_claims)));
    corpus.push(("missing typ".into(), raw(&format!(r#"{{"alg":"EdDSA","kid":"{kid}"}}"#), &good_claims)));
    for member in ["crit", "jku", "x5u", "jwk", "x5c"] {
        let value = match member {
            "crit" => r#"["exp"]"#.to_owned(),
            "jwk" => r#"{"kty":"OKP","crv":"Ed25519","x":"AAAA"}"#.to_owned(),
            "x5c" => r#"["MIIB"]"#.to_owned(),
            _ => r#""https://attacker.example/keys""#.to_owned(),
        };
        corpus.push((format!("{member} header"), raw(&header(&format!(r#","{member}":{value}"#)), &good_claims)));
    }
    corpus
        .push(("unknown kid".into(), raw(r#"{"alg":"EdDSA","typ":"at+jwt","kid":"0123456789abcdef"}"#, &good_claims)));
    corpus.push((
        "huge kid".into(),
        raw(&format!(r#"{{"alg":"EdDSA","typ":"at+jwt","kid":"{}"}}"#, "k".repeat(4000)), &good_claims),
    ));
    corpus.push((
        "path-like kid".into(),
        raw(r#"{"alg":"EdDSA","typ":"at+jwt","kid":"../../../../etc/passwd"}"#, &good_claims),
    ));
    corpus.push((
        "duplicate header member".into(),
        raw(&format!(r#"{{"alg":"EdDSA","typ":"at+jwt","kid":"{kid}","alg":"EdDSA"}}"#), &good_claims),
    ));
    corpus.push((
        "duplicate claim".into(),
        raw(&header(""), &good_claims.replacen("{", &format!(r#"{{"sub":"{}","#, "someone"), 1)),
    ));
    corpus.push(("padded base64".into(), format!("{}=.{}.{}", parts[0], parts[1], parts[2])));
    let standard = |segment: &str| STANDARD.encode(URL_SAFE_NO_PAD.decode(segment).unwrap());
    corpus.push((
        "standard-alphabet base64".into(),
        format!("{}.{}.{}", standard(parts[0]), standard(parts[1]), standard(parts[2])),
    ));
    corpus.push(("two segments".into(), format!("{}.{}", parts[0], parts[1])));
    corpus.push(("four segments".into(), format!("{good}.{}", parts[2])));
    corpus.push(("8 KiB + 1".into(), format!("{}{}", good, "A".repeat(8 * 1024 + 1 - good.len()))));
    corpus.push(("1 MiB".into(), "A".repeat(1024 * 1024)));

    // A token of a principal who is then disabled.
    let admin = actors.tokens["admin"].clone();
    let (business, business_token) = roles::client_principal(&actors.client, &actors.base, &admin, "businesses").await;
    // Used once, so the verified token sits in the cache: disabling must
    // empty it at once.
    let before =
        actors.client.get(format!("{}/v1/me/data", actors.base)).bearer_auth(&business_token).send().await.unwrap();
    assert_eq!(before.status(), 403, "a live business token is recognised, and is not a customer's");
    let (status, _) = roles::post(
        &actors.client,
        format!("{}/v1/admin/businesses/{business}/disable", actors.base),
        Some(&admin),
        json!({}),
    )
    .await;
    assert_eq!(status, 200);
    corpus.push(("token of a disabled principal".into(), business_token));

    assert!(corpus.len() >= 40, "{} cases", corpus.len());
    let reference = actors.client.get(format!("{}/v1/me/data", actors.base)).send().await.unwrap();
    assert_eq!(reference.status(), 401);
    let reference_body = reference.text().await.unwrap();
    for (name, token) in &corpus {
        let response = actors
            .client
            .get(format!("{}/v1/me/data", actors.base))
            .header("authorization", format!("Bearer {token}"))
            .send()
            .await;
        let response = match response {
            Ok(response) => response,
            Err(error) => panic!("{name}: request failed: {error}"),
        };
        let status = response.status().as_u16();
        if name == "1 MiB" || name == "8 KiB + 1" {
            // Refused for its size before any token check.
            assert_eq!(status, 431, "{name}");
            continue;
        }
        let www = response.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_owned());
        let body = response.text().await.unwrap();
        assert_eq!(status, 401, "{name}: {body}");
        assert_eq!(body, reference_body, "{name}: the 401 must say the same whatever failed");
        assert!(www.is_some_and(|v| v.starts_with("Bearer")), "{name}: WWW-Authenticate");
    }
    server.stop().await;
}

/// A hand-made EdDSA JWS: base64url(header).base64url(claims).base64url(sig),
/// signed with ed25519-dalek, without the vault's JWT library.
fn mint(key: &ed25519_dalek::SigningKey, header: &Value, claims: &Value) -> String {
    use ed25519_dalek::Signer;
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(header).unwrap()),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap())
    );
    let signature = key.sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
}

fn ed25519_public_pem(key: &ed25519_dalek::SigningKey) -> String {
    // SubjectPublicKeyInfo for Ed25519 (RFC 8410): a fixed prefix, then the key.
    let mut der = vec![0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
    der.extend_from_slice(key.verifying_key().as_bytes());
    format!("-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n", STANDARD.encode(der))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_issuers_tokens_are_accepted_and_the_same_claims_under_another_key_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let seed: [u8; 32] = consentvault::crypto::random_bytes(&ring::rand::SystemRandom::new()).unwrap();
    let idp_key = ed25519_dalek::SigningKey::from_bytes(&seed);
    let pem = dir.path().join("idp.pem");
    std::fs::write(&pem, ed25519_public_pem(&idp_key)).unwrap();
    // A second provider publishes its keys as a JWKS file, looked up by kid.
    let jwks_key = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
    let jwks = dir.path().join("jwks.json");
    let jwk = json!({"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": "k1",
        "x": URL_SAFE_NO_PAD.encode(jwks_key.verifying_key().as_bytes())});
    std::fs::write(&jwks, serde_json::to_vec(&json!({"keys": [jwk]})).unwrap()).unwrap();
    let config = dir.path().join("vault.toml");
    std::fs::write(
        &config,
        format!(
            "[[identity.external]]\nissuer = \"https://idp.example.test\"\naudience = \"consentvault\"\nalgorithm = \"EdDSA\"\npublic_key_pem = {:?}\nroles = [\"customer\"]\n\n[[identity.external]]\nissuer = \"https://jwks.example.test\"\naudience = \"consentvault\"\nalgorithm = \"EdDSA\"\njwks_file = {:?}\n",
            pem.display().to_string(),
            jwks.display().to_string()
        ),
    )
    .unwrap();
    let server = common::InProcessServer::start_with_config(&dir.path().join("data"), Some(config)).await;
    let client = reqwest::Client::new();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let header = json!({"alg": "EdDSA", "typ": "at+jwt"});
    let claims = json!({"iss": "https://idp.example.test", "aud": "consentvault", "sub": "alice@idp",
        "role": "customer", "exp": now + 300, "nbf": now, "iat": now, "jti": "x1"});
    let token = mint(&idp_key, &header, &claims);

    let me = format!("{}/v1/me/data", server.base_url);
    let first = client.get(&me).bearer_auth(&token).send().await.unwrap();
    assert_eq!(first.status(), 200, "{}", first.text().await.unwrap());
    let put = client.put(&me).bearer_auth(&token).json(&json!({"email": "alice@example.org"})).send().await.unwrap();
    assert_eq!(put.status(), 200);
    // A second token for the same person reaches the same, provisioned subject.
    let mut second_claims = claims.clone();
    second_claims["jti"] = json!("x2");
    let again = mint(&idp_key, &header, &second_claims);
    let data: Value = client.get(&me).bearer_auth(&again).send().await.unwrap().json().await.unwrap();
    assert_eq!(data["data"]["email"], "alice@example.org");

    let other_key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let forged = mint(&other_key, &header, &claims);
    assert_eq!(client.get(&me).bearer_auth(&forged).send().await.unwrap().status(), 401);
    let mut admin_claims = claims.clone();
    admin_claims["role"] = json!("admin");
    let escalated = mint(&idp_key, &header, &admin_claims);
    let response =
        client.get(format!("{}/v1/admin/businesses", server.base_url)).bearer_auth(&escalated).send().await.unwrap();
    assert_eq!(response.status(), 401, "the issuer may only grant the customer role");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_or_forbidden_properties_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let server = common::InProcessServer::start(&data_dir).await;
    let actors = Actors::new(&server, &data_dir).await;
    let base = actors.base.clone();
    let customer = actors.tokens["customer"].clone();
    let admin = actors.tokens["admin"].clone();
    let me = format!("{base}/v1/me/data");
    let before: Value = actors.client.get(&me).bearer_auth(&customer).send().await.unwrap().json().await.unwrap();
    let businesses_before = roles::get(&actors.client, format!("{base}/v1/admin/businesses"), &admin).await.1;

    let cases: Vec<(&str, String, Option<&str>, Value, &str)> = vec![
        ("PUT", me.clone(), Some(&customer), json!({"email": "ada@example.org", "role": "admin"}), "unknown_field"),
        (
            "PUT",
            me.clone(),
            Some(&customer),
            json!({"email": "ada@example.org", "subject": "00000000000000000000000000000000"}),
            "unknown_field",
        ),
        (
            "PUT",
            format!("{me}/email"),
            Some(&customer),
            json!({"value": "ada@example.org", "subject_id": "x"}),
            "invalid_body",
        ),
        (
            "PUT",
            format!("{me}/email"),
            Some(&customer),
            json!({"value": "ada@example.org", "created_at": "2020-01-01T00:00:00Z"}),
            "invalid_body",
        ),
        (
            "POST",
            format!("{base}/v1/admin/businesses"),
            Some(&admin),
            json!({"name": "X", "purposes": [], "business_id": "00"}),
            "invalid_body",
        ),
        (
            "POST",
            format!("{base}/v1/admin/businesses"),
            Some(&admin),
            json!({"name": "X", "purposes": [], "disabled": false}),
            "invalid_body",
        ),
        (
            "POST",
            format!("{base}/v1/admin/auditors"),
            Some(&admin),
            json!({"name": "X", "role": "admin"}),
            "invalid_body",
        ),
        (
            "POST",
            format!("{base}/v1/customers"),
            None,
            json!({"password": "correct horse battery", "customer_id": "00"}),
            "invalid_body",
        ),
        (
            "POST",
            format!("{base}/v1/customers"),
            None,
            json!({"password": "correct horse battery", "role": "admin"}),
            "invalid_body",
        ),
        (
            "POST",
            format!("{base}/v1/token"),
            None,
            json!({"grant_type": "client_credentials", "client_id": "a", "client_secret": "b", "role": "admin"}),
            "invalid_body",
        ),
        ("PUT", me.clone(), Some(&customer), json!(["not", "an", "object"]), "invalid_body"),
        (
            "PUT",
            me.clone(),
            Some(&customer),
            serde_json::from_str(&format!("{}1{}", "[".repeat(40), "]".repeat(40))).unwrap(),
            "invalid_body",
        ),
    ];
    for (method, url, token, body, code) in cases {
        let mut request =
            actors.client.request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), &url).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 400, "{method} {url} {body}");
        assert_eq!(response.headers()["content-type"], "application/problem+json");
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["code"], code, "{method} {url} {body}: {problem}");
    }
    let after: Value = actors.client.get(&me).bearer_auth(&customer).send().await.unwrap().json().await.unwrap();
    assert_eq!(before, after, "refused writes changed nothing");
    let businesses_after = roles::get(&actors.client, format!("{base}/v1/admin/businesses"), &admin).await.1;
    assert_eq!(businesses_before, businesses_after);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failed_sign_ins_and_sign_up_floods_get_429_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let server = common::InProcessServer::start(&data_dir).await;
    let client = reqwest::Client::new();
    let token_url = format!("{}/v1/token", server.base_url);
    let wrong = json!({"grant_type": "client_credentials", "client_id": "someone", "client_secret": "guess"});
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let response = client.post(&token_url).json(&wrong).send().await.unwrap();
        statuses.push((response.status().as_u16(), response.headers().get("retry-after").is_some()));
    }
    assert!(statuses[..5].iter().all(|(status, _)| *status == 401), "{statuses:?}");
    assert!(statuses[5..].iter().all(|&(status, retry)| status == 429 && retry), "{statuses:?}");

    let signup = format!("{}/v1/customers", server.base_url);
    let mut last = 0;
    for _ in 0..12 {
        let response =
            client.post(&signup).json(&json!({"password": "correct horse battery staple"})).send().await.unwrap();
        last = response.status().as_u16();
        if last == 429 {
            assert!(response.headers().get("retry-after").is_some());
            break;
        }
    }
    assert_eq!(last, 429, "sign-ups from one address are limited");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_lists_exactly_the_routes_the_router_serves() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::InProcessServer::start(&dir.path().join("data")).await;
    let client = reqwest::Client::new();
    let doc: Value =
        client.get(format!("{}/v1/openapi.json", server.base_url)).send().await.unwrap().json().await.unwrap();
    let mut documented = std::collections::BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.insert((method.to_uppercase(), path.clone()));
        }
    }
    // Every documented operation exists: never 404 or 405, whoever asks.
    let concrete = |path: &str| {
        path.replace("{index}", "0").replace("{field}", "email").replace("{id}", "00000000000000000000000000000000")
    };
    for (method, path) in &documented {
        let url = format!("{}{}", server.base_url, concrete(path));
        let status = client
            .request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), &url)
            .send()
            .await
            .unwrap()
            .status();
        assert!(status != 404 && status != 405, "{method} {path} is documented but answered {status}");
        // Every other method on that path is not served.
        for other in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            if documented.contains(&(other.to_owned(), path.clone())) {
                continue;
            }
            let status = client
                .request(reqwest::Method::from_bytes(other.as_bytes()).unwrap(), &url)
                .send()
                .await
                .unwrap()
                .status();
            assert_eq!(status, 405, "{other} {path} is not documented but answered {status}");
        }
    }
    // And the router serves nothing else: every route the vault has today.
    let expected: std::collections::BTreeSet<(String, String)> = [
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/v1/openapi.json"),
        ("GET", "/v1/audit/checkpoint"),
        ("GET", "/v1/audit/public-key"),
        ("GET", "/v1/audit/entries"),
        ("GET", "/v1/audit/entries/{index}"),
        ("GET", "/v1/audit/proof/inclusion"),
        ("GET", "/v1/audit/proof/consistency"),
        ("POST", "/v1/token"),
        ("POST", "/v1/customers"),
        ("GET", "/v1/me/data"),
        ("PUT", "/v1/me/data"),
        ("PUT", "/v1/me/data/{field}"),
        ("DELETE", "/v1/me/data/{field}"),
        ("GET", "/v1/admin/businesses"),
        ("POST", "/v1/admin/businesses"),
        ("POST", "/v1/admin/businesses/{id}/disable"),
        ("GET", "/v1/admin/auditors"),
        ("POST", "/v1/admin/auditors"),
        ("POST", "/v1/admin/auditors/{id}/disable"),
        ("GET", "/v1/me/relationships"),
        ("POST", "/v1/me/relationships"),
        ("DELETE", "/v1/me/relationships/{id}"),
        ("GET", "/v1/me/grants"),
        ("POST", "/v1/me/grants"),
        ("GET", "/v1/me/grants/{id}"),
        ("DELETE", "/v1/me/grants/{id}"),
        ("GET", "/v1/me/objections"),
        ("DELETE", "/v1/me"),
        ("GET", "/v1/me/export"),
        ("PUT", "/v1/me/objections"),
        ("GET", "/v1/relationships"),
        ("GET", "/v1/subjects/{pairwise_id}/data"),
        ("GET", "/v1/me/access-log"),
        ("GET", "/metrics"),
        ("GET", "/v1/grants"),
        ("GET", "/v1/me/grants/{id}/receipt"),
        ("POST", "/v1/admin/policies/reload"),
        ("GET", "/v1/admin/keys"),
        ("POST", "/v1/admin/keys/rotate"),
        ("GET", "/v1/access-requests"),
        ("GET", "/v1/grants/changes"),
        ("POST", "/v1/access-requests"),
        ("GET", "/v1/access-requests/{id}"),
        ("GET", "/v1/me/access-requests"),
        ("POST", "/v1/me/access-requests/{id}/approve"),
        ("POST", "/v1/me/access-requests/{id}/deny"),
    ]
    .into_iter()
    .map(|(m, p)| (m.to_owned(), p.to_owned()))
    .collect();
    assert_eq!(documented, expected);
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    server.stop().await;
}
