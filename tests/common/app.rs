//! A test app with actors: the real server on 127.0.0.1 port 0 over a
//! temporary data directory, and one object per role (anonymous, customer,
//! business, auditor, admin) that holds its token and id and offers that
//! role's operations over HTTP as typed methods returning (status, body), so
//! a test can check refusals as easily as successes.
//!
//! When a [`TestApp`] is dropped it checks the invariant every test relies
//! on: the whole audit log verifies. While the server still runs, a newly
//! registered auditor fetches every entry's exact bytes and the latest signed
//! checkpoint over HTTP; the checkpoint's signature is checked against the
//! verifier key published when the app started, and its root is recomputed
//! from the entries with the outside RFC 9162 code in [`super::tlog`]. Then
//! the server stops and `consentvault audit verify` checks the stopped data
//! directory. A failure panics, unless the test is already panicking.
//!
//! The server runs on the test's runtime while `Drop` blocks its thread, so
//! tests using a [`TestApp`] run on a multi-thread runtime:
//! `#[tokio::test(flavor = "multi_thread", worker_threads = 2)]`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use reqwest::Method;
use serde_json::{Value, json};

use super::tlog::{self, Hash};
use super::{InProcessServer, audit_replay, roles};

/// The five ways to call the API, in the order the role matrix tries them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Anonymous,
    Customer,
    Business,
    Auditor,
    Admin,
}

impl Role {
    /// Every role, anonymous first.
    pub const ALL: [Role; 5] = [Role::Anonymous, Role::Customer, Role::Business, Role::Auditor, Role::Admin];

    /// The role's name as the vault's tokens and documents spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Anonymous => "anonymous",
            Role::Customer => "customer",
            Role::Business => "business",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// Personal values customers stored through their actors: the log must
/// never hold any of them.
type PersonalValues = Arc<Mutex<BTreeSet<String>>>;

/// Values shorter than this are not looked for in the log: they could occur
/// there by chance (inside an id or a field name) without being leaked.
const PERSONAL_VALUE_BYTES_MIN: usize = 6;

/// `path` with `pairs` as its query string, percent-encoded.
pub fn with_query(path: &str, pairs: &[(&str, &str)]) -> String {
    if pairs.is_empty() {
        return path.to_owned();
    }
    let mut url = reqwest::Url::parse("http://query.invalid/").unwrap();
    url.query_pairs_mut().extend_pairs(pairs);
    format!("{path}?{}", url.query().unwrap())
}

/// Someone calling the API: a client, the server's address and, unless
/// anonymous, a bearer token.
#[derive(Debug, Clone)]
pub struct Caller {
    client: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Caller {
    /// The bearer token sent, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The server's base URL (`http://127.0.0.1:<port>`).
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Sends `method path` (the path with its query) with this caller's
    /// token and a JSON body when given. Panics if the server does not answer.
    pub async fn send(&self, method: Method, path: &str, body: Option<&Value>) -> reqwest::Response {
        let what = format!("{method} {path}");
        self.try_send(method, path, body).await.unwrap_or_else(|error| panic!("{what}: no answer: {error}"))
    }

    /// Like [`Caller::send`], with the transport error (no answer: the
    /// server is gone or refused the connection) instead of a panic.
    pub async fn try_send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<reqwest::Response, reqwest::Error> {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        request.send().await
    }

    /// [`Caller::send`], returning (status, body text).
    pub async fn text(&self, method: Method, path: &str, body: Option<&Value>) -> (u16, String) {
        let response = self.send(method, path, body).await;
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    }

    /// [`Caller::send`], returning (status, body bytes).
    pub async fn bytes(&self, method: Method, path: &str, body: Option<&Value>) -> (u16, Vec<u8>) {
        let response = self.send(method, path, body).await;
        let status = response.status().as_u16();
        (status, response.bytes().await.unwrap().to_vec())
    }

    /// [`Caller::send`], returning (status, body as JSON, `Null` if it is not JSON).
    pub async fn json(&self, method: Method, path: &str, body: Option<&Value>) -> (u16, Value) {
        let (status, text) = self.text(method, path, body).await;
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.json(Method::GET, path, None).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.json(Method::POST, path, Some(body)).await
    }

    /// `PUT path` with a JSON body.
    pub async fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        self.json(Method::PUT, path, Some(body)).await
    }

    /// `DELETE path`, with a JSON body when given.
    pub async fn delete(&self, path: &str, body: Option<&Value>) -> (u16, Value) {
        self.json(Method::DELETE, path, body).await
    }
}

/// Someone without a token: the public routes.
#[derive(Debug, Clone)]
pub struct Anonymous {
    caller: Caller,
}

impl Anonymous {
    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    /// `POST /v1/customers`: sign up with `password`.
    pub async fn sign_up(&self, password: &str) -> (u16, Value) {
        self.caller.post("/v1/customers", &json!({"password": password})).await
    }

    /// `POST /v1/token` with `body` (either grant type).
    pub async fn token_request(&self, body: &Value) -> (u16, Value) {
        self.caller.post("/v1/token", body).await
    }

    /// `GET /v1/audit/checkpoint`: the latest signed checkpoint, as text.
    pub async fn checkpoint(&self) -> (u16, String) {
        self.caller.text(Method::GET, "/v1/audit/checkpoint", None).await
    }

    /// `GET /v1/audit/public-key`: the signed-note verifier key, as text.
    pub async fn public_key(&self) -> (u16, String) {
        self.caller.text(Method::GET, "/v1/audit/public-key", None).await
    }

    /// `GET /v1/openapi.json`.
    pub async fn openapi(&self) -> (u16, Value) {
        self.caller.get("/v1/openapi.json").await
    }
}

/// A customer of the built-in identity, signed in.
#[derive(Debug, Clone)]
pub struct Customer {
    pub id: String,
    caller: Caller,
    personal_values: PersonalValues,
}

impl Customer {
    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    pub fn token(&self) -> &str {
        self.caller.token().unwrap()
    }

    fn remember(&self, value: &Value) {
        let mut values = self.personal_values.lock().unwrap();
        match value {
            Value::String(text) if text.len() >= PERSONAL_VALUE_BYTES_MIN => {
                values.insert(text.clone());
            }
            Value::Object(map) => map.values().filter_map(Value::as_str).for_each(|text| {
                if text.len() >= PERSONAL_VALUE_BYTES_MIN {
                    values.insert(text.to_owned());
                }
            }),
            _ => {}
        }
    }

    /// `GET /v1/me/data`.
    pub async fn data(&self) -> (u16, Value) {
        self.caller.get("/v1/me/data").await
    }

    /// `PUT /v1/me/data`: merges `values` (field name → value).
    pub async fn data_put(&self, values: &Value) -> (u16, Value) {
        self.remember(values);
        self.caller.put("/v1/me/data", values).await
    }

    /// `PUT /v1/me/data/{field}`.
    pub async fn field_put(&self, field: &str, value: &Value) -> (u16, Value) {
        self.remember(value);
        self.caller.put(&format!("/v1/me/data/{field}"), &json!({"value": value})).await
    }

    /// `DELETE /v1/me/data/{field}`.
    pub async fn field_delete(&self, field: &str) -> (u16, Value) {
        self.caller.delete(&format!("/v1/me/data/{field}"), None).await
    }

    /// `GET /v1/me/relationships`.
    pub async fn relationships(&self) -> (u16, Value) {
        self.caller.get("/v1/me/relationships").await
    }

    /// `POST /v1/me/relationships`: connects to a business.
    pub async fn connect(&self, business_id: &str) -> (u16, Value) {
        self.caller.post("/v1/me/relationships", &json!({"business_id": business_id})).await
    }

    /// `DELETE /v1/me/relationships/{id}`: disconnects (revokes its grants).
    pub async fn disconnect(&self, relationship_id: &str) -> (u16, Value) {
        self.caller.delete(&format!("/v1/me/relationships/{relationship_id}"), None).await
    }

    /// `GET /v1/me/access-requests`.
    pub async fn access_requests(&self) -> (u16, Value) {
        self.caller.get("/v1/me/access-requests").await
    }

    /// `POST /v1/me/access-requests/{id}/approve`, narrowing with `narrowing`
    /// (`{}` approves as asked).
    pub async fn approve(&self, request_id: &str, narrowing: &Value) -> (u16, Value) {
        self.caller.post(&format!("/v1/me/access-requests/{request_id}/approve"), narrowing).await
    }

    /// `POST /v1/me/access-requests/{id}/deny`, with an optional reason.
    pub async fn deny(&self, request_id: &str, reason: Option<&str>) -> (u16, Value) {
        let body = match reason {
            Some(reason) => json!({"reason": reason}),
            None => json!({}),
        };
        self.caller.post(&format!("/v1/me/access-requests/{request_id}/deny"), &body).await
    }

    /// `GET /v1/me/grants`.
    pub async fn grants(&self) -> (u16, Value) {
        self.caller.get("/v1/me/grants").await
    }

    /// `POST /v1/me/grants` with `body` (`business_id`, `purposes`, `fields`,
    /// `duration_days`).
    pub async fn grant(&self, body: &Value) -> (u16, Value) {
        self.caller.post("/v1/me/grants", body).await
    }

    /// `GET /v1/me/grants/{id}`.
    pub async fn grant_get(&self, grant_id: &str) -> (u16, Value) {
        self.caller.get(&format!("/v1/me/grants/{grant_id}")).await
    }

    /// `DELETE /v1/me/grants/{id}`: revokes.
    pub async fn revoke(&self, grant_id: &str) -> (u16, Value) {
        self.caller.delete(&format!("/v1/me/grants/{grant_id}"), None).await
    }

    /// `GET /v1/me/grants/{id}/receipt`.
    pub async fn receipt(&self, grant_id: &str) -> (u16, Value) {
        self.caller.get(&format!("/v1/me/grants/{grant_id}/receipt")).await
    }

    /// `GET /v1/me/objections`.
    pub async fn objections(&self) -> (u16, Value) {
        self.caller.get("/v1/me/objections").await
    }

    /// `PUT /v1/me/objections`.
    pub async fn objections_put(&self, purposes: &[&str]) -> (u16, Value) {
        self.caller.put("/v1/me/objections", &json!({"purposes": purposes})).await
    }

    /// `GET /v1/me/access-log`, with inclusion proofs when `proofs`.
    pub async fn access_log(&self, proofs: bool) -> (u16, Value) {
        let pairs: &[(&str, &str)] = if proofs { &[("proofs", "true")] } else { &[] };
        self.caller.get(&with_query("/v1/me/access-log", pairs)).await
    }

    /// `GET /v1/me/export`.
    pub async fn export(&self) -> (u16, Value) {
        self.caller.get("/v1/me/export").await
    }

    /// `DELETE /v1/me` with the confirmation: erasure.
    pub async fn erase(&self) -> (u16, Value) {
        self.caller.delete("/v1/me", Some(&json!({"confirm": "erase"}))).await
    }

    /// `GET /v1/me/inbox` (first page).
    pub async fn inbox(&self) -> (u16, Value) {
        self.caller.get("/v1/me/inbox").await
    }

    /// `PUT /v1/me/relationships/{id}/contact`.
    pub async fn contact_put(&self, relationship_id: &str, preferences: &Value) -> (u16, Value) {
        self.caller.put(&format!("/v1/me/relationships/{relationship_id}/contact"), preferences).await
    }

    /// `POST /v1/me/inbox/{id}/reply`.
    pub async fn reply(&self, message_id: &str, body: &str) -> (u16, Value) {
        self.caller.post(&format!("/v1/me/inbox/{message_id}/reply"), &json!({"body": body})).await
    }

    /// `POST /v1/me/messages`: feedback to a connected business.
    pub async fn write(&self, business_id: &str, body: &str) -> (u16, Value) {
        self.caller.post("/v1/me/messages", &json!({"business_id": business_id, "body": body})).await
    }
}

/// A business registered by the admin, signed in with its client credentials.
#[derive(Debug, Clone)]
pub struct Business {
    pub id: String,
    pub name: String,
    pub client_id: String,
    /// The client secret it signs in with now.
    pub secret: String,
    caller: Caller,
}

impl Business {
    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    pub fn token(&self) -> &str {
        self.caller.token().unwrap()
    }

    /// `GET /v1/relationships`: connected customers, by pairwise id.
    pub async fn relationships(&self) -> (u16, Value) {
        self.caller.get("/v1/relationships").await
    }

    /// `POST /v1/access-requests` with `body` (`pairwise_id`, `purposes`,
    /// `fields`, `duration_days`, `justification`, optional `benefit`).
    pub async fn access_request(&self, body: &Value) -> (u16, Value) {
        self.caller.post("/v1/access-requests", body).await
    }

    /// `GET /v1/access-requests`.
    pub async fn access_requests(&self) -> (u16, Value) {
        self.caller.get("/v1/access-requests").await
    }

    /// `GET /v1/access-requests/{id}`.
    pub async fn access_request_get(&self, request_id: &str) -> (u16, Value) {
        self.caller.get(&format!("/v1/access-requests/{request_id}")).await
    }

    /// `GET /v1/subjects/{pairwise_id}/data?purpose=&fields=`: the scoped
    /// read (no `fields`: every field granted for the purpose).
    pub async fn read(&self, pairwise_id: &str, purpose: &str, fields: &[&str]) -> (u16, Value) {
        let fields = fields.join(",");
        let mut pairs = vec![("purpose", purpose)];
        if !fields.is_empty() {
            pairs.push(("fields", fields.as_str()));
        }
        self.caller.get(&with_query(&format!("/v1/subjects/{pairwise_id}/data"), &pairs)).await
    }

    /// `POST /v1/subjects/{pairwise_id}/messages`.
    pub async fn message(&self, pairwise_id: &str, kind: &str, title: &str, body: &str) -> (u16, Value) {
        let message = json!({"kind": kind, "title": title, "body": body});
        self.caller.post(&format!("/v1/subjects/{pairwise_id}/messages"), &message).await
    }

    /// `GET /v1/subjects/{pairwise_id}/replies` (first page).
    pub async fn replies(&self, pairwise_id: &str) -> (u16, Value) {
        self.caller.get(&format!("/v1/subjects/{pairwise_id}/replies")).await
    }

    /// `GET /v1/grants`: grants given to this business.
    pub async fn grants(&self) -> (u16, Value) {
        self.caller.get("/v1/grants").await
    }

    /// `GET /v1/grants/changes`, from `cursor` (absent: the start).
    pub async fn grant_changes(&self, cursor: Option<&str>) -> (u16, Value) {
        let pairs: Vec<(&str, &str)> = cursor.map(|cursor| ("cursor", cursor)).into_iter().collect();
        self.caller.get(&with_query("/v1/grants/changes", &pairs)).await
    }

    /// Signs in again with `secret` (after a rotation), acting with the new
    /// token and secret from then on.
    pub async fn sign_in_with(&mut self, secret: &str) {
        let token = roles::client_token(&self.caller.client, &self.caller.base, &self.client_id, secret).await;
        self.caller.token = Some(token);
        secret.clone_into(&mut self.secret);
    }
}

/// An auditor registered by the admin, signed in.
#[derive(Debug, Clone)]
pub struct Auditor {
    pub id: String,
    caller: Caller,
}

impl Auditor {
    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    pub fn token(&self) -> &str {
        self.caller.token().unwrap()
    }

    /// `GET /v1/audit/entries` with `filters` (`start`, `end`, `subject`,
    /// `business`, `kind`, `decision`, `since`, `until`, `limit`, `cursor`).
    pub async fn entries(&self, filters: &[(&str, &str)]) -> (u16, Value) {
        self.caller.get(&with_query("/v1/audit/entries", filters)).await
    }

    /// Every item of `GET /v1/audit/entries`, following the cursor.
    pub async fn entries_all(&self) -> Vec<Value> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut filters = vec![("limit", "1000")];
            if let Some(cursor) = &cursor {
                filters.push(("cursor", cursor.as_str()));
            }
            let (status, page) = self.entries(&filters).await;
            assert_eq!(status, 200, "GET /v1/audit/entries: {page}");
            items.extend(page["items"].as_array().unwrap().iter().cloned());
            match page["cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return items,
            }
        }
    }

    /// `GET /v1/audit/entries/{index}`: the exact stored bytes.
    pub async fn entry(&self, index: u64) -> (u16, Vec<u8>) {
        self.caller.bytes(Method::GET, &format!("/v1/audit/entries/{index}"), None).await
    }

    /// `GET /v1/audit/checkpoint`, as text.
    pub async fn checkpoint(&self) -> (u16, String) {
        self.caller.text(Method::GET, "/v1/audit/checkpoint", None).await
    }

    /// `GET /v1/audit/public-key`, as text.
    pub async fn public_key(&self) -> (u16, String) {
        self.caller.text(Method::GET, "/v1/audit/public-key", None).await
    }

    /// `GET /v1/audit/proof/inclusion?index=&tree_size=`.
    pub async fn inclusion(&self, index: u64, tree_size: u64) -> (u16, Value) {
        self.caller.get(&format!("/v1/audit/proof/inclusion?index={index}&tree_size={tree_size}")).await
    }

    /// `GET /v1/audit/proof/consistency?old_size=&new_size=`.
    pub async fn consistency(&self, old_size: u64, new_size: u64) -> (u16, Value) {
        self.caller.get(&format!("/v1/audit/proof/consistency?old_size={old_size}&new_size={new_size}")).await
    }
}

/// The operator, signed in with the credentials written on first start.
#[derive(Debug, Clone)]
pub struct Admin {
    pub client_id: String,
    pub client_secret: String,
    caller: Caller,
}

impl Admin {
    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    pub fn token(&self) -> &str {
        self.caller.token().unwrap()
    }

    /// `POST /v1/admin/businesses`: answers `business_id`, `client_id` and
    /// `client_secret` (shown once).
    pub async fn business_register(&self, name: &str, purposes: &[&str]) -> (u16, Value) {
        self.caller.post("/v1/admin/businesses", &json!({"name": name, "purposes": purposes})).await
    }

    /// `GET /v1/admin/businesses`.
    pub async fn businesses(&self) -> (u16, Value) {
        self.caller.get("/v1/admin/businesses").await
    }

    /// `POST /v1/admin/businesses/{id}/disable`.
    pub async fn business_disable(&self, business_id: &str) -> (u16, Value) {
        self.caller.post(&format!("/v1/admin/businesses/{business_id}/disable"), &json!({})).await
    }

    /// `POST /v1/admin/auditors`: answers `auditor_id`, `client_id` and
    /// `client_secret` (shown once).
    pub async fn auditor_register(&self, name: &str) -> (u16, Value) {
        self.caller.post("/v1/admin/auditors", &json!({"name": name})).await
    }

    /// `GET /v1/admin/auditors`.
    pub async fn auditors(&self) -> (u16, Value) {
        self.caller.get("/v1/admin/auditors").await
    }

    /// `POST /v1/admin/auditors/{id}/disable`.
    pub async fn auditor_disable(&self, auditor_id: &str) -> (u16, Value) {
        self.caller.post(&format!("/v1/admin/auditors/{auditor_id}/disable"), &json!({})).await
    }

    /// `GET /v1/admin/keys`: the keys and the latest rotation.
    pub async fn keys(&self) -> (u16, Value) {
        self.caller.get("/v1/admin/keys").await
    }

    /// `POST /v1/admin/keys/rotate`: starts a KEK rotation (202).
    pub async fn keys_rotate(&self) -> (u16, Value) {
        self.caller.json(Method::POST, "/v1/admin/keys/rotate", None).await
    }

    /// `POST /v1/admin/policies/reload`.
    pub async fn policies_reload(&self) -> (u16, Value) {
        self.caller.json(Method::POST, "/v1/admin/policies/reload", None).await
    }
}

/// The real server over a temporary data directory, with the admin signed
/// in; verifies the whole audit log when dropped (see the module docs).
pub struct TestApp {
    server: Option<InProcessServer>,
    data_dir: PathBuf,
    client: reqwest::Client,
    base: String,
    admin: Admin,
    /// The checkpoint and verifier key an outside auditor saw at the start:
    /// the log at the end must extend that checkpoint, under that key.
    first_checkpoint: String,
    verifier_key: String,
    personal_values: PersonalValues,
    // Last: removed after the server has stopped.
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for TestApp {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("TestApp").field("base", &self.base).field("data_dir", &self.data_dir).finish()
    }
}

impl TestApp {
    /// Starts the server with the shipped policies and no configuration file.
    pub async fn start() -> Self {
        Self::start_with_config(None).await
    }

    /// Starts the server with the configuration file `config`, if given.
    pub async fn start_with_config(config: Option<PathBuf>) -> Self {
        assert_eq!(
            tokio::runtime::Handle::current().runtime_flavor(),
            tokio::runtime::RuntimeFlavor::MultiThread,
            "a TestApp needs #[tokio::test(flavor = \"multi_thread\")]: its Drop waits for the server"
        );
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let server = InProcessServer::start_with_config(&data_dir, config).await;
        let client = reqwest::Client::new();
        let base = server.base_url.clone();
        let admin = admin_sign_in(&client, &base, &data_dir).await;
        let anonymous = Caller { client: client.clone(), base: base.clone(), token: None };
        let (status, verifier_key) = anonymous.text(Method::GET, "/v1/audit/public-key", None).await;
        assert_eq!(status, 200, "{verifier_key}");
        let (status, first_checkpoint) = anonymous.text(Method::GET, "/v1/audit/checkpoint", None).await;
        assert_eq!(status, 200, "{first_checkpoint}");
        Self {
            server: Some(server),
            data_dir,
            client,
            base,
            admin,
            first_checkpoint,
            verifier_key,
            personal_values: PersonalValues::default(),
            _dir: dir,
        }
    }

    /// The server's base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The data directory (inside a temporary directory removed on drop).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The vault inside the server, for the few checks HTTP cannot make
    /// (minting tokens with the vault's own key).
    pub fn vault(&self) -> &Arc<consentvault::vault::Vault> {
        &self.server.as_ref().unwrap().vault
    }

    /// A caller with the raw bearer `token` (one minted by hand, say).
    pub fn bearer(&self, token: &str) -> Caller {
        Caller { client: self.client.clone(), base: self.base.clone(), token: Some(token.to_owned()) }
    }

    /// Someone without a token.
    pub fn anonymous(&self) -> Anonymous {
        Anonymous { caller: Caller { client: self.client.clone(), base: self.base.clone(), token: None } }
    }

    /// The admin, signed in at the start.
    pub fn admin(&self) -> Admin {
        self.admin.clone()
    }

    /// Registers a business for `purposes` and signs it in.
    pub async fn business(&self, name: &str, purposes: &[&str]) -> Business {
        self.business_with(&json!({"name": name, "purposes": purposes})).await
    }

    /// Registers a business with the registration `body` (`name`,
    /// `purposes`, `controller`) and signs it in.
    pub async fn business_with(&self, body: &Value) -> Business {
        let name = body["name"].as_str().unwrap().to_owned();
        let (status, created) = self.admin.caller.post("/v1/admin/businesses", body).await;
        assert_eq!(status, 201, "registering business {name}: {created}");
        let (id, client_id, secret) = credentials(&created, "business_id");
        let token = roles::client_token(&self.client, &self.base, &client_id, &secret).await;
        Business { id, name: name.to_owned(), client_id, secret, caller: self.bearer(&token) }
    }

    /// Registers an auditor ("Internal audit") and signs it in.
    pub async fn auditor(&self) -> Auditor {
        auditor_sign_in(&self.client, &self.base, &self.admin, "Internal audit").await
    }

    /// Signs a customer up with [`roles::PASSWORD`] and signs them in.
    pub async fn customer(&self) -> Customer {
        let (status, created) = roles::sign_up(&self.client, &self.base).await.unwrap();
        assert_eq!(status, 201, "sign-up: {created}");
        let id = created["customer_id"].as_str().unwrap().to_owned();
        let (status, answer) = roles::sign_in(&self.client, &self.base, &id).await.unwrap();
        assert_eq!(status, 200, "sign-in: {answer}");
        let token = answer["access_token"].as_str().unwrap();
        Customer { id, caller: self.bearer(token), personal_values: Arc::clone(&self.personal_values) }
    }

    /// The whole log as `auditor` sees it now, with the checkpoint and key
    /// published when the app started: what the closing audit verifies.
    pub async fn audit_snapshot(&self, auditor: &Auditor) -> LogSnapshot {
        LogSnapshot::fetch(auditor, &self.first_checkpoint, &self.verifier_key).await
    }

    /// The personal values customers stored through their actors so far.
    pub fn personal_values(&self) -> Vec<String> {
        self.personal_values.lock().unwrap().iter().cloned().collect()
    }

    /// The checks made on drop, while the server runs: registers an auditor
    /// and fetches the whole log; panics if it does not verify. Runs on a
    /// thread of its own, with its own runtime, so it can be called where
    /// blocking is not allowed.
    fn closing_audit(&self) -> Result<u64, String> {
        let (base, admin) = (self.base.clone(), self.admin.clone());
        let (first_checkpoint, verifier_key) = (self.first_checkpoint.clone(), self.verifier_key.clone());
        let personal_values = self.personal_values();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                // A client of this runtime: connections belong to the runtime
                // that opened them.
                let client = reqwest::Client::new();
                let admin = Admin { caller: Caller { client: client.clone(), ..admin.caller.clone() }, ..admin };
                let auditor = auditor_sign_in(&client, &base, &admin, "Closing audit").await;
                let snapshot = LogSnapshot::fetch(&auditor, &first_checkpoint, &verifier_key).await;
                snapshot.verify(&personal_values);
                // The vault's own replay, as an auditor asks for it.
                let (status, replayed) = auditor.caller().get("/v1/audit/replay").await;
                assert_eq!(status, 200, "{replayed}");
                assert!(replayed["replay"]["violation"].is_null(), "the replay over the API found: {replayed}");
                snapshot.size()
            })
        });
        thread.join().map_err(|panic| panic_text(&*panic))
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let Some(server) = self.server.take() else { return };
        // A failing test has said what failed; its log is not checked, and
        // nothing here may panic a second time.
        let panicking = std::thread::panicking();
        let mut failures = Vec::new();
        if !panicking {
            match self.closing_audit() {
                Ok(size) => eprintln!("closing audit: the {size} entries of the log verify"),
                Err(failure) => failures.push(format!("the audit log did not verify over HTTP: {failure}")),
            }
        }
        if let Err(failure) = server.stop_blocking() {
            failures.push(format!("the server did not stop cleanly: {failure}"));
        }
        if !panicking && failures.is_empty() {
            // Verifies the whole log, then replays it: every read that
            // released a field was covered by a live grant at its position.
            let (code, stdout, stderr) = audit_replay(&self.data_dir);
            if code != Some(0) {
                failures.push(format!("`consentvault audit replay` refused the stopped vault: {stdout}{stderr}"));
            }
        }
        if !panicking && !failures.is_empty() {
            panic!("at the end of the test: {}", failures.join("; "));
        }
    }
}

/// The whole log as an outside auditor fetched it.
#[derive(Debug, Clone)]
pub struct LogSnapshot {
    /// The verifier key published when the app started.
    pub verifier_key: String,
    /// The checkpoint an auditor saw when the app started.
    pub first_checkpoint: String,
    /// The latest checkpoint, which covers every listed entry.
    pub checkpoint: String,
    /// The items of `GET /v1/audit/entries`, every page.
    pub listed: Vec<Value>,
    /// The exact bytes of every entry the checkpoint covers.
    pub entries: Vec<Vec<u8>>,
    /// The served consistency proof from the first checkpoint to the latest.
    pub consistency: Vec<Hash>,
    /// The served inclusion proof of the last entry in the latest checkpoint.
    pub inclusion_last: Vec<Hash>,
}

/// How long the closing audit waits for a checkpoint that covers the listed
/// entries. Every writing batch signs one, but it is published a moment
/// after the batch's entries are; this bound is for a loaded machine.
const CHECKPOINT_WAIT_SECS: u64 = 10;

impl LogSnapshot {
    /// Fetches every entry and a checkpoint that covers them all, as `auditor`.
    pub async fn fetch(auditor: &Auditor, first_checkpoint: &str, verifier_key: &str) -> Self {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(CHECKPOINT_WAIT_SECS);
        let (listed, checkpoint, size) = loop {
            let listed = auditor.entries_all().await;
            let (status, checkpoint) = auditor.checkpoint().await;
            assert_eq!(status, 200, "GET /v1/audit/checkpoint: {checkpoint}");
            let (_, size, _) = tlog::open_checkpoint(&checkpoint, verifier_key);
            if size >= listed.len() as u64 {
                break (listed, checkpoint, size);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no checkpoint covers the {} listed entries; the latest covers {size}",
                listed.len()
            );
            // Waiting for the condition just checked, which the vault
            // publishes without being asked; not a stand-in for it.
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        };
        let mut entries = Vec::new();
        for index in 0..size {
            let (status, bytes) = auditor.entry(index).await;
            assert_eq!(status, 200, "GET /v1/audit/entries/{index}: {}", String::from_utf8_lossy(&bytes));
            entries.push(bytes);
        }
        let (_, first_size, _) = tlog::open_checkpoint(first_checkpoint, verifier_key);
        let consistency = if first_size == 0 || first_size > size {
            Vec::new()
        } else {
            let (status, proof) = auditor.consistency(first_size, size).await;
            assert_eq!(status, 200, "consistency proof {first_size} → {size}: {proof}");
            tlog::hashes(&proof)
        };
        let inclusion_last = if size == 0 {
            Vec::new()
        } else {
            let (status, proof) = auditor.inclusion(size - 1, size).await;
            assert_eq!(status, 200, "inclusion proof of {}: {proof}", size - 1);
            tlog::hashes(&proof)
        };
        Self {
            verifier_key: verifier_key.to_owned(),
            first_checkpoint: first_checkpoint.to_owned(),
            checkpoint,
            listed,
            entries,
            consistency,
            inclusion_last,
        }
    }

    /// The size of the latest checkpoint.
    pub fn size(&self) -> u64 {
        self.entries.len() as u64
    }

    /// Panics unless: both checkpoints carry a valid signature under the
    /// key published at the start; the latest one's root is the RFC 9162
    /// Merkle tree hash of exactly the fetched entries and the first one's
    /// root that of its prefix (nothing under it was rewritten); the served
    /// proofs verify; the listing shows those same entries in index order;
    /// and no entry holds any of `personal_values`.
    pub fn verify(&self, personal_values: &[String]) {
        let (origin, size, root) = tlog::open_checkpoint(&self.checkpoint, &self.verifier_key);
        let (first_origin, first_size, first_root) = tlog::open_checkpoint(&self.first_checkpoint, &self.verifier_key);
        assert_eq!(first_origin, origin, "both checkpoints are of one log");
        assert_eq!(self.entries.len() as u64, size, "one entry fetched per leaf of the latest checkpoint");
        let leaves: Vec<Hash> = self.entries.iter().map(|entry| tlog::leaf(entry)).collect();
        assert!(tlog::root(&leaves) == root, "the latest checkpoint's root is not the tree hash of the {size} entries");
        assert!(first_size <= size, "the log shrank from {first_size} to {size} entries");
        assert!(
            tlog::root(&leaves[..first_size as usize]) == first_root,
            "the first {first_size} entries are not those the first checkpoint signed"
        );
        if first_size > 0 {
            assert!(
                tlog::verify_consistency(first_size, size, &first_root, &root, &self.consistency),
                "the served consistency proof {first_size} → {size} does not verify"
            );
        }
        if size > 0 {
            assert!(
                tlog::verify_inclusion(size - 1, size, leaves[size as usize - 1], &self.inclusion_last, &root),
                "the served inclusion proof of entry {} does not verify",
                size - 1
            );
        }
        assert!(self.listed.len() as u64 <= size, "{} entries listed, {size} covered", self.listed.len());
        for (index, item) in self.listed.iter().enumerate() {
            assert_eq!(item["index"], json!(index), "the listing is in index order, without gaps");
            let stored: Value = serde_json::from_slice(&self.entries[index])
                .unwrap_or_else(|error| panic!("entry {index} is not JSON: {error}"));
            assert_eq!(item["entry"], stored, "the listing shows entry {index} as stored");
        }
        for (index, entry) in self.entries.iter().enumerate() {
            for value in personal_values {
                assert!(
                    !super::contains(entry, value.as_bytes()),
                    "entry {index} holds a personal value a customer stored"
                );
            }
        }
    }
}

/// (id, client id, client secret) of a registration answer.
fn credentials(created: &Value, id_name: &str) -> (String, String, String) {
    let text = |name: &str| created[name].as_str().unwrap_or_else(|| panic!("no {name} in {created}")).to_owned();
    (text(id_name), text("client_id"), text("client_secret"))
}

async fn admin_sign_in(client: &reqwest::Client, base: &str, data_dir: &Path) -> Admin {
    let text = std::fs::read_to_string(data_dir.join("admin-credentials.json")).unwrap();
    let file: Value = serde_json::from_str(&text).unwrap();
    let client_id = file["client_id"].as_str().unwrap().to_owned();
    let client_secret = file["client_secret"].as_str().unwrap().to_owned();
    let token = roles::client_token(client, base, &client_id, &client_secret).await;
    let caller = Caller { client: client.clone(), base: base.to_owned(), token: Some(token) };
    Admin { client_id, client_secret, caller }
}

async fn auditor_sign_in(client: &reqwest::Client, base: &str, admin: &Admin, name: &str) -> Auditor {
    let (status, created) = admin.auditor_register(name).await;
    assert_eq!(status, 201, "registering auditor {name}: {created}");
    let (id, client_id, secret) = credentials(&created, "auditor_id");
    let token = roles::client_token(client, base, &client_id, &secret).await;
    Auditor { id, caller: Caller { client: client.clone(), base: base.to_owned(), token: Some(token) } }
}

/// The message of a panic payload.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    match (payload.downcast_ref::<String>(), payload.downcast_ref::<&str>()) {
        (Some(text), _) => text.clone(),
        (None, Some(text)) => (*text).to_owned(),
        (None, None) => "a panic without a message".to_owned(),
    }
}
