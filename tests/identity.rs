//! Identity and access over HTTP: the role × operation matrix, derived from
//! the served OpenAPI document; a corpus of bad tokens that all get the same
//! 401; tokens from an external issuer minted without the vault's JWT
//! library; mass assignment; rate limits on sign-in and sign-up.
//!
//! Every test runs on a [`TestApp`], which verifies the whole audit log when
//! the test ends.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::app::{Admin, Anonymous, Auditor, Business, Caller, Customer, Role, TestApp};
use common::roles;
use reqwest::Method;
use serde_json::{Value, json};

/// One actor per role, each with a token the matrix sends.
struct Actors {
    anonymous: Anonymous,
    customer: Customer,
    business: Business,
    auditor: Auditor,
    admin: Admin,
}

impl Actors {
    async fn new(app: &TestApp) -> Self {
        Self {
            anonymous: app.anonymous(),
            customer: app.customer().await,
            business: app.business("Acme Pizza", &["order-fulfilment", "marketing"]).await,
            auditor: app.auditor().await,
            admin: app.admin(),
        }
    }

    fn caller(&self, role: Role) -> &Caller {
        match role {
            Role::Anonymous => self.anonymous.caller(),
            Role::Customer => self.customer.caller(),
            Role::Business => self.business.caller(),
            Role::Auditor => self.auditor.caller(),
            Role::Admin => self.admin.caller(),
        }
    }
}

/// Ids the matrix acts on, made beforehand so every allowed cell can succeed.
struct Fixtures {
    admin_client_id: String,
    admin_client_secret: String,
    business_id: String,
    business_secret: String,
    business_to_disable: String,
    auditor_to_disable: String,
    business_to_connect: String,
    relationship_to_end: String,
    relationship_to_change: String,
    grant_to_read: String,
    grant_to_revoke: String,
    pairwise: String,
    request_to_approve: String,
    request_to_deny: String,
    /// The audit index of a grant's creation (an event about the business).
    grant_event_index: u64,
    webhook_endpoint: String,
    webhook_to_delete: String,
    /// Messages in the customer's inbox from the business.
    message_to_answer: String,
    message_to_delete: String,
    /// The relationship whose contact preferences are read and set.
    relationship: String,
    my_webhook_endpoint: String,
    my_webhook_to_delete: String,
}

/// `answer[name]` of a 201 answer, or a panic that says what was made.
fn created(what: &str, (status, answer): (u16, Value), name: &str) -> String {
    assert_eq!(status, 201, "{what}: {answer}");
    answer[name].as_str().unwrap_or_else(|| panic!("{what}: no {name} in {answer}")).to_owned()
}

impl Fixtures {
    async fn new(actors: &Actors) -> Self {
        let Actors { customer, business, admin, .. } = actors;
        let purposes = ["order-fulfilment", "marketing"];
        let register = |name: &'static str| async move {
            created("registering a business", admin.business_register(name, &purposes).await, "business_id")
        };
        let business_to_disable = register("To be disabled").await;
        let auditor_to_disable =
            created("registering an auditor", admin.auditor_register("To be disabled").await, "auditor_id");
        let business_to_connect = register("To be connected").await;
        let business_to_leave = register("To be left").await;
        let business_to_block = register("To be blocked").await;

        // Data for the scoped read to release (and for the closing audit to
        // look for in the log).
        let (status, stored) =
            customer.data_put(&json!({"email": "ada@example.org", "phone": "+44 20 7946 0000"})).await;
        assert_eq!(status, 200, "{stored}");
        let pairwise = created("connecting", customer.connect(&business.id).await, "pairwise_id");
        let relationship_to_end = created("connecting", customer.connect(&business_to_leave).await, "relationship_id");
        let relationship_to_change =
            created("connecting", customer.connect(&business_to_block).await, "relationship_id");
        let grant = |fields: Value| async move {
            let body =
                json!({"business_id": business.id, "purposes": ["marketing"], "fields": fields, "duration_days": 30});
            created("granting", customer.grant(&body).await, "grant_id")
        };
        let grant_to_read = grant(json!(["email"])).await;
        let grant_to_revoke = grant(json!(["phone"])).await;
        let ask = |pairwise: String| async move {
            let body = json!({"pairwise_id": pairwise, "purposes": ["marketing"], "fields": ["email"],
                              "duration_days": 30, "justification": "offers"});
            created("asking for access", business.access_request(&body).await, "request_id")
        };
        let request_to_approve = ask(pairwise.clone()).await;
        let request_to_deny = ask(pairwise.clone()).await;
        let (status, granted) = customer.grant_get(&grant_to_read).await;
        assert_eq!(status, 200, "{granted}");
        let grant_event_index = granted["audit_index"].as_u64().unwrap();
        // Registered last, so no message waits for them.
        let endpoint = |url: &'static str| async move {
            let (status, created) = business.caller().post("/v1/webhooks", &json!({"url": url})).await;
            assert_eq!(status, 201, "registering a webhook endpoint: {created}");
            created["endpoint"]["endpoint_id"].as_str().unwrap().to_owned()
        };
        let message = || async {
            created(
                "sending a message",
                business.message(&pairwise, "service", "Your order", "It left.").await,
                "message_id",
            )
        };
        let message_to_answer = message().await;
        let message_to_delete = message().await;
        let (status, relationships) = customer.relationships().await;
        assert_eq!(status, 200, "{relationships}");
        let relationship = relationships["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["business_id"] == business.id.as_str())
            .and_then(|r| r["relationship_id"].as_str())
            .unwrap()
            .to_owned();
        let webhook_endpoint = endpoint("https://hooks.shop.example/consentvault").await;
        let webhook_to_delete = endpoint("https://hooks.shop.example/old").await;
        let my_endpoint = |url: &'static str| async move {
            let (status, created) = customer.caller().post("/v1/me/webhooks", &json!({"url": url})).await;
            assert_eq!(status, 201, "registering a customer's webhook endpoint: {created}");
            created["endpoint"]["endpoint_id"].as_str().unwrap().to_owned()
        };
        let my_webhook_endpoint = my_endpoint("https://hooks.ada.example/vault").await;
        let my_webhook_to_delete = my_endpoint("https://hooks.ada.example/old").await;
        Self {
            admin_client_id: admin.client_id.clone(),
            admin_client_secret: admin.client_secret.clone(),
            business_id: business.id.clone(),
            business_secret: business.secret.clone(),
            business_to_disable,
            auditor_to_disable,
            business_to_connect,
            relationship_to_end,
            relationship_to_change,
            grant_to_read,
            grant_to_revoke,
            pairwise,
            request_to_approve,
            request_to_deny,
            grant_event_index,
            webhook_endpoint,
            webhook_to_delete,
            message_to_answer,
            message_to_delete,
            relationship,
            my_webhook_endpoint,
            my_webhook_to_delete,
        }
    }
}

/// Who may run an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Allowed {
    /// Every role, and no token at all.
    Anyone,
    /// Only this role's tokens; no token gets 401, another role's 403.
    Only(Role),
}

const CUSTOMER: Allowed = Allowed::Only(Role::Customer);
const BUSINESS: Allowed = Allowed::Only(Role::Business);
const AUDITOR: Allowed = Allowed::Only(Role::Auditor);
const ADMIN: Allowed = Allowed::Only(Role::Admin);

/// One cell row of the matrix, filled in: the path with its parameters and
/// query, and the body.
struct Call {
    path: String,
    body: Option<Value>,
}

fn call(path: impl Into<String>) -> Call {
    Call { path: path.into(), body: None }
}

fn call_with(path: impl Into<String>, body: Value) -> Call {
    Call { path: path.into(), body: Some(body) }
}

/// What the matrix knows of one documented operation: who may run it, and
/// how to fill its path parameters and body from the fixtures.
struct Operation {
    method: &'static str,
    template: &'static str,
    allowed: Allowed,
    fill: fn(&Fixtures) -> Call,
}

impl Operation {
    fn key(&self) -> (String, String) {
        (self.method.to_owned(), self.template.to_owned())
    }
}

fn op(method: &'static str, template: &'static str, allowed: Allowed, fill: fn(&Fixtures) -> Call) -> Operation {
    Operation { method, template, allowed, fill }
}

/// Every operation of the API, in the order the matrix runs them. An
/// operation the OpenAPI document lists and this table does not fails the
/// matrix, and so does an entry the document does not list.
fn operations() -> Vec<Operation> {
    use Allowed::Anyone;
    vec![
        op("GET", "/healthz", Anyone, |_| call("/healthz")),
        op("GET", "/readyz", Anyone, |_| call("/readyz")),
        op("GET", "/metrics", Anyone, |_| call("/metrics")),
        op("GET", "/v1/openapi.json", Anyone, |_| call("/v1/openapi.json")),
        op("GET", "/v1/audit/checkpoint", Anyone, |_| call("/v1/audit/checkpoint")),
        op("GET", "/v1/audit/public-key", Anyone, |_| call("/v1/audit/public-key")),
        op("POST", "/v1/token", Anyone, |f| {
            let body = json!({"grant_type": "client_credentials", "client_id": f.admin_client_id,
                              "client_secret": f.admin_client_secret});
            call_with("/v1/token", body)
        }),
        op("POST", "/v1/customers", Anyone, |_| call_with("/v1/customers", json!({"password": roles::PASSWORD}))),
        op("GET", "/v1/me/data", CUSTOMER, |_| call("/v1/me/data")),
        op("PUT", "/v1/me/data", CUSTOMER, |_| call_with("/v1/me/data", json!({"email": "ada@example.org"}))),
        op("PUT", "/v1/me/data/{field}", CUSTOMER, |_| {
            call_with("/v1/me/data/phone", json!({"value": "+44 20 7946 0000"}))
        }),
        op("DELETE", "/v1/me/data/{field}", CUSTOMER, |_| call("/v1/me/data/phone")),
        op("GET", "/v1/me/relationships", CUSTOMER, |_| call("/v1/me/relationships")),
        op("POST", "/v1/me/relationships", CUSTOMER, |f| {
            call_with("/v1/me/relationships", json!({"business_id": f.business_to_connect}))
        }),
        op("DELETE", "/v1/me/relationships/{id}", CUSTOMER, |f| {
            call(format!("/v1/me/relationships/{}", f.relationship_to_end))
        }),
        op("PATCH", "/v1/me/relationships/{id}", CUSTOMER, |f| {
            call_with(format!("/v1/me/relationships/{}", f.relationship_to_change), json!({"requests_blocked": true}))
        }),
        op("GET", "/v1/me/grants", CUSTOMER, |_| call("/v1/me/grants")),
        op("POST", "/v1/me/grants", CUSTOMER, |f| {
            let body = json!({"business_id": f.business_id, "purposes": ["marketing"], "fields": ["email"],
                              "duration_days": 30});
            call_with("/v1/me/grants", body)
        }),
        op("GET", "/v1/me/grants/{id}", CUSTOMER, |f| call(format!("/v1/me/grants/{}", f.grant_to_read))),
        op("GET", "/v1/me/grants/{id}/receipt", CUSTOMER, |f| {
            call(format!("/v1/me/grants/{}/receipt", f.grant_to_read))
        }),
        op("DELETE", "/v1/me/grants/{id}", CUSTOMER, |f| call(format!("/v1/me/grants/{}", f.grant_to_revoke))),
        op("GET", "/v1/me/objections", CUSTOMER, |_| call("/v1/me/objections")),
        op("PUT", "/v1/me/objections", CUSTOMER, |_| call_with("/v1/me/objections", json!({"purposes": []}))),
        op("GET", "/v1/me/access-log", CUSTOMER, |_| call("/v1/me/access-log?proofs=true")),
        op("GET", "/v1/me/events", CUSTOMER, |_| call("/v1/me/events?proofs=true")),
        op("GET", "/v1/me/proof/consistency", CUSTOMER, |_| call("/v1/me/proof/consistency?old_size=1&new_size=1")),
        op("POST", "/v1/me/password", CUSTOMER, |_| {
            call_with("/v1/me/password", json!({"current_password": roles::PASSWORD, "new_password": roles::PASSWORD}))
        }),
        op("GET", "/v1/relationships", BUSINESS, |_| call("/v1/relationships")),
        op("GET", "/v1/grants", BUSINESS, |_| call("/v1/grants")),
        op("GET", "/v1/access-requests", BUSINESS, |_| call("/v1/access-requests")),
        op("GET", "/v1/grants/changes", BUSINESS, |_| call("/v1/grants/changes")),
        op("POST", "/v1/access-requests", BUSINESS, |f| {
            let body = json!({"pairwise_id": f.pairwise, "purposes": ["marketing"], "fields": ["phone"],
                              "duration_days": 30, "justification": "offers"});
            call_with("/v1/access-requests", body)
        }),
        op("GET", "/v1/access-requests/{id}", BUSINESS, |f| {
            call(format!("/v1/access-requests/{}", f.request_to_approve))
        }),
        op("GET", "/v1/me/access-requests", CUSTOMER, |_| call("/v1/me/access-requests")),
        op("POST", "/v1/me/access-requests/{id}/approve", CUSTOMER, |f| {
            call_with(format!("/v1/me/access-requests/{}/approve", f.request_to_approve), json!({}))
        }),
        op("POST", "/v1/me/access-requests/{id}/deny", CUSTOMER, |f| {
            call_with(format!("/v1/me/access-requests/{}/deny", f.request_to_deny), json!({}))
        }),
        // The business signs in again with the new secret (see the runner).
        op("POST", "/v1/credentials/rotate", BUSINESS, |f| {
            call_with("/v1/credentials/rotate", json!({"client_secret": f.business_secret}))
        }),
        op("GET", "/v1/subjects/{pairwise_id}/data", BUSINESS, |f| {
            call(format!("/v1/subjects/{}/data?purpose=marketing", f.pairwise))
        }),
        op("GET", "/v1/webhooks", BUSINESS, |_| call("/v1/webhooks")),
        op("POST", "/v1/webhooks", BUSINESS, |_| {
            call_with("/v1/webhooks", json!({"url": "https://hooks.shop.example/new"}))
        }),
        op("GET", "/v1/webhooks/{id}", BUSINESS, |f| call(format!("/v1/webhooks/{}", f.webhook_endpoint))),
        op("DELETE", "/v1/webhooks/{id}", BUSINESS, |f| call(format!("/v1/webhooks/{}", f.webhook_to_delete))),
        op("POST", "/v1/webhooks/{id}/enable", BUSINESS, |f| {
            call(format!("/v1/webhooks/{}/enable", f.webhook_endpoint))
        }),
        op("POST", "/v1/webhooks/{id}/secret", BUSINESS, |f| {
            call(format!("/v1/webhooks/{}/secret", f.webhook_endpoint))
        }),
        op("GET", "/v1/webhooks/{id}/deliveries", BUSINESS, |f| {
            call(format!("/v1/webhooks/{}/deliveries", f.webhook_endpoint))
        }),
        op("GET", "/v1/events/{index}/proof", BUSINESS, |f| call(format!("/v1/events/{}/proof", f.grant_event_index))),
        op("GET", "/v1/message-kinds", Anyone, |_| call("/v1/message-kinds")),
        op("POST", "/v1/subjects/{pairwise_id}/messages", BUSINESS, |f| {
            let body = json!({"kind": "service", "title": "Your order", "body": "It has left the warehouse."});
            call_with(format!("/v1/subjects/{}/messages", f.pairwise), body)
        }),
        op("GET", "/v1/me/inbox", CUSTOMER, |_| call("/v1/me/inbox")),
        op("POST", "/v1/me/inbox/{message_id}/reply", CUSTOMER, |f| {
            call_with(format!("/v1/me/inbox/{}/reply", f.message_to_answer), json!({"body": "Thank you."}))
        }),
        op("DELETE", "/v1/me/inbox/{message_id}", CUSTOMER, |f| call(format!("/v1/me/inbox/{}", f.message_to_delete))),
        op("POST", "/v1/me/messages", CUSTOMER, |f| {
            call_with("/v1/me/messages", json!({"business_id": f.business_id, "body": "Great service."}))
        }),
        op("GET", "/v1/subjects/{pairwise_id}/replies", BUSINESS, |f| {
            call(format!("/v1/subjects/{}/replies", f.pairwise))
        }),
        op("GET", "/v1/me/relationships/{id}/contact", CUSTOMER, |f| {
            call(format!("/v1/me/relationships/{}/contact", f.relationship))
        }),
        op("PUT", "/v1/me/relationships/{id}/contact", CUSTOMER, |f| {
            let body = json!({"kinds": ["service", "feedback"], "cap": {"messages": 10, "period": "week"},
                              "channel": "inbox"});
            call_with(format!("/v1/me/relationships/{}/contact", f.relationship), body)
        }),
        op("GET", "/v1/me/webhooks", CUSTOMER, |_| call("/v1/me/webhooks")),
        op("POST", "/v1/me/webhooks", CUSTOMER, |_| {
            call_with("/v1/me/webhooks", json!({"url": "https://hooks.ada.example/new"}))
        }),
        op("DELETE", "/v1/me/webhooks/{id}", CUSTOMER, |f| call(format!("/v1/me/webhooks/{}", f.my_webhook_to_delete))),
        op("POST", "/v1/me/webhooks/{id}/enable", CUSTOMER, |f| {
            call(format!("/v1/me/webhooks/{}/enable", f.my_webhook_endpoint))
        }),
        op("POST", "/v1/me/webhooks/{id}/secret", CUSTOMER, |f| {
            call(format!("/v1/me/webhooks/{}/secret", f.my_webhook_endpoint))
        }),
        op("GET", "/v1/me/webhooks/{id}/deliveries", CUSTOMER, |f| {
            call(format!("/v1/me/webhooks/{}/deliveries", f.my_webhook_endpoint))
        }),
        op("GET", "/v1/audit/entries", AUDITOR, |_| call("/v1/audit/entries")),
        op("GET", "/v1/audit/entries/{index}", AUDITOR, |_| call("/v1/audit/entries/0")),
        op("GET", "/v1/audit/proof/inclusion", AUDITOR, |_| call("/v1/audit/proof/inclusion?index=0&tree_size=1")),
        op("GET", "/v1/audit/proof/consistency", AUDITOR, |_| {
            call("/v1/audit/proof/consistency?old_size=1&new_size=1")
        }),
        op("GET", "/v1/audit/replay", AUDITOR, |_| call("/v1/audit/replay")),
        op("GET", "/v1/audit/policies/{sha256}", AUDITOR, |_| {
            // The shipped policies, which the server under test loaded.
            call(format!("/v1/audit/policies/{}", consentvault::policy::Policies::built_in().sha256))
        }),
        op("GET", "/v1/admin/businesses", ADMIN, |_| call("/v1/admin/businesses")),
        op("POST", "/v1/admin/businesses", ADMIN, |_| {
            call_with("/v1/admin/businesses", json!({"name": "Shop", "purposes": ["marketing"]}))
        }),
        op("POST", "/v1/admin/businesses/{id}/disable", ADMIN, |f| {
            call(format!("/v1/admin/businesses/{}/disable", f.business_to_disable))
        }),
        op("PUT", "/v1/admin/businesses/{id}/controller", ADMIN, |f| {
            let controller = json!({"contact": "Data protection officer", "email": "privacy@shop.example",
                "phone": "+44 20 7946 0000", "privacy_notice_url": "https://shop.example/privacy",
                "address": {"street_address": "1 High Street", "locality": "London", "postal_code": "N1 9GU",
                "country": "GB"}});
            call_with(format!("/v1/admin/businesses/{}/controller", f.business_id), controller)
        }),
        op("GET", "/v1/admin/auditors", ADMIN, |_| call("/v1/admin/auditors")),
        op("POST", "/v1/admin/auditors", ADMIN, |_| call_with("/v1/admin/auditors", json!({"name": "External audit"}))),
        op("POST", "/v1/admin/auditors/{id}/disable", ADMIN, |f| {
            call(format!("/v1/admin/auditors/{}/disable", f.auditor_to_disable))
        }),
        op("POST", "/v1/admin/policies/reload", ADMIN, |_| call("/v1/admin/policies/reload")),
        op("GET", "/v1/admin/keys", ADMIN, |_| call("/v1/admin/keys")),
        op("POST", "/v1/admin/keys/rotate", ADMIN, |_| call("/v1/admin/keys/rotate")),
        op("GET", "/v1/me/export", CUSTOMER, |_| call("/v1/me/export")),
        // Last: erasing the customer ends its login.
        op("DELETE", "/v1/me", CUSTOMER, |_| call_with("/v1/me", json!({"confirm": "erase"}))),
    ]
}

/// The HTTP methods an OpenAPI path item may describe.
const OPENAPI_METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];
/// The other members of an OpenAPI path item.
const OPENAPI_PATH_ITEM_MEMBERS: [&str; 5] = ["$ref", "summary", "description", "servers", "parameters"];

/// The operations of the served OpenAPI document, keyed by (method, path
/// template), each with who may run it as the document says: an operation
/// without a security requirement is for anyone; one that needs the bearer
/// token is for the role its single tag names (the `audit` tag: auditors).
/// A document the matrix cannot read that way is a list of problems.
fn documented_operations(doc: &Value) -> Result<BTreeMap<(String, String), Allowed>, Vec<String>> {
    let mut operations = BTreeMap::new();
    let mut problems = Vec::new();
    let default_security = doc.get("security");
    for (path, item) in doc["paths"].as_object().expect("the document has paths") {
        for (member, operation) in item.as_object().expect("a path item is an object") {
            if OPENAPI_PATH_ITEM_MEMBERS.contains(&member.as_str()) {
                continue;
            }
            let method = member.to_uppercase();
            let name = format!("{method} {path}");
            if !OPENAPI_METHODS.contains(&member.as_str()) {
                problems.push(format!("{path}: `{member}` is neither an HTTP method nor a path item member"));
                continue;
            }
            // OpenAPI: an operation's `security` replaces the document's; an
            // empty list, or an empty requirement in it, means no token needed.
            let requirements: Vec<&Value> = operation
                .get("security")
                .or(default_security)
                .and_then(Value::as_array)
                .map(|list| list.iter().collect())
                .unwrap_or_default();
            let public = requirements.is_empty()
                || requirements.iter().any(|requirement| requirement.as_object().is_some_and(|r| r.is_empty()));
            let allowed = if public {
                Allowed::Anyone
            } else if !requirements.iter().all(|requirement| requirement.get("bearer").is_some()) {
                problems.push(format!("{name}: a security requirement other than the bearer token: {requirements:?}"));
                continue;
            } else {
                let tags: Vec<&str> = operation["tags"]
                    .as_array()
                    .map_or_else(Vec::new, |tags| tags.iter().filter_map(Value::as_str).collect());
                match tags[..] {
                    ["customer"] => CUSTOMER,
                    ["business"] => BUSINESS,
                    ["audit"] => AUDITOR,
                    ["admin"] => ADMIN,
                    _ => {
                        problems.push(format!("{name} needs a bearer token but its tags {tags:?} name no one role"));
                        continue;
                    }
                }
            };
            operations.insert((method, path.clone()), allowed);
        }
    }
    if problems.is_empty() { Ok(operations) } else { Err(problems) }
}

/// Whether `path` (without its query) fills `template`: the same segments,
/// a `{parameter}` segment standing for any non-empty one.
fn fills(template: &str, path: &str) -> bool {
    let path = path.split_once('?').map_or(path, |(path, _)| path);
    let (template, path): (Vec<&str>, Vec<&str>) = (template.split('/').collect(), path.split('/').collect());
    template.len() == path.len()
        && template.iter().zip(&path).all(|(expected, actual)| {
            (expected.starts_with('{') && expected.ends_with('}') && !actual.is_empty()) || expected == actual
        })
}

/// What is wrong between the document's operations and the matrix's table:
/// nothing, or a sentence per problem naming the operation.
fn table_problems(documented: &BTreeMap<(String, String), Allowed>, table: &[Operation]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for operation in table {
        let (method, template) = operation.key();
        if !seen.insert(operation.key()) {
            problems.push(format!("{method} {template} has two entries in the role matrix"));
        }
        match documented.get(&operation.key()) {
            None => problems.push(format!(
                "{method} {template} has an entry in the role matrix but is not in the OpenAPI document"
            )),
            Some(&allowed) if allowed != operation.allowed => problems.push(format!(
                "{method} {template}: the OpenAPI document says {allowed:?}, the role matrix says {:?}",
                operation.allowed
            )),
            Some(_) => {}
        }
    }
    for ((method, template), allowed) in documented {
        if !seen.contains(&(method.clone(), template.clone())) {
            problems.push(format!(
                "{method} {template} is in the OpenAPI document ({allowed:?}) but has no entry in the role matrix: \
                 add one to `operations()` saying who may run it and how to fill its path and body"
            ));
        }
    }
    problems
}

/// The served OpenAPI document's operations, or a panic naming every problem.
async fn served_operations(anonymous: &Anonymous) -> BTreeMap<(String, String), Allowed> {
    let (status, doc) = anonymous.openapi().await;
    assert_eq!(status, 200, "{doc}");
    documented_operations(&doc)
        .unwrap_or_else(|problems| panic!("the OpenAPI document is not readable as a matrix:\n{}", problems.join("\n")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_reaches_exactly_the_documented_operations_it_owns_and_other_methods_get_405() {
    let app = TestApp::start().await;
    let mut actors = Actors::new(&app).await;
    let fixtures = Fixtures::new(&actors).await;

    // The cells are the document's operations: every one needs an entry, and
    // the entry must say what the document says about who may run it.
    let documented = served_operations(&actors.anonymous).await;
    let table = operations();
    let problems = table_problems(&documented, &table);
    assert!(problems.is_empty(), "the role matrix does not match the OpenAPI document:\n{}", problems.join("\n"));

    let (status, unauthorized) = actors.anonymous.caller().text(Method::GET, "/v1/me/data", None).await;
    assert_eq!(status, 401);
    for operation in &table {
        let Call { path, body } = (operation.fill)(&fixtures);
        let (method, template) = (Method::from_bytes(operation.method.as_bytes()).unwrap(), operation.template);
        assert!(fills(template, &path), "{method} {template}: the matrix fills it as {path}");
        for role in Role::ALL {
            let response = actors.caller(role).send(method.clone(), &path, body.as_ref()).await;
            let status = response.status().as_u16();
            let header = |name: &str| response.headers().get(name).map(|value| value.to_str().unwrap().to_owned());
            let (content_type, cache_control) = (header("content-type"), header("cache-control"));
            let authenticate = header("www-authenticate");
            let text = response.text().await.unwrap();
            let cell = format!("{role} {method} {path} ({template})");
            match operation.allowed {
                Allowed::Anyone => {
                    assert!((200..300).contains(&status), "{cell}: public route answered {status}: {text}")
                }
                Allowed::Only(owner) if owner == role => {
                    assert!((200..300).contains(&status), "{cell}: answered {status}: {text}")
                }
                Allowed::Only(_) if role == Role::Anonymous => {
                    assert_eq!(status, 401, "{cell}: {text}");
                    assert!(authenticate.is_some_and(|value| value.starts_with("Bearer")), "{cell}: WWW-Authenticate");
                    assert_eq!(text, unauthorized, "{cell}: the 401 says the same on every route");
                }
                Allowed::Only(_) => {
                    assert_eq!(status, 403, "{cell}: {text}");
                    assert_eq!(content_type.as_deref(), Some("application/problem+json"), "{cell}");
                    let problem: Value = serde_json::from_str(&text).unwrap();
                    assert_eq!(problem["code"], "wrong_role", "{cell}: {problem}");
                }
            }
            assert_eq!(cache_control.as_deref(), Some("no-store"), "{cell}: Cache-Control");
            if operation.template == "/v1/credentials/rotate" && role == Role::Business {
                let rotated: Value = serde_json::from_str(&text).unwrap();
                actors.business.sign_in_with(rotated["client_secret"].as_str().unwrap()).await;
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
            for role in Role::ALL {
                let response =
                    actors.caller(role).send(Method::from_bytes(method.as_bytes()).unwrap(), path, None).await;
                assert_eq!(response.status(), 405, "{role} {method} {path}");
            }
        }
    }
}

/// An OpenAPI document shaped like the served one: the given operations,
/// each with its tag and, unless public, the bearer requirement.
fn openapi_with(operations: &[(&str, &str, &str, bool)]) -> Value {
    let mut paths = serde_json::Map::new();
    for &(method, path, tag, bearer) in operations {
        let mut operation = json!({"tags": [tag], "operationId": format!("{method}_{path}")});
        if bearer {
            operation["security"] = json!([{"bearer": []}]);
        }
        let item = paths.entry(path.to_owned()).or_insert_with(|| json!({}));
        item[method] = operation;
    }
    json!({"openapi": "3.1.0", "paths": paths})
}

#[test]
fn an_operation_the_matrix_has_no_entry_for_fails_it_by_name() {
    let table = [op("GET", "/v1/me/data", CUSTOMER, |_| call("/v1/me/data"))];
    let doc = openapi_with(&[("get", "/v1/me/data", "customer", true), ("post", "/v1/me/messages", "customer", true)]);
    let problems = table_problems(&documented_operations(&doc).unwrap(), &table);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].starts_with("POST /v1/me/messages is in the OpenAPI document"), "{problems:?}");

    let complete = openapi_with(&[("get", "/v1/me/data", "customer", true)]);
    assert_eq!(table_problems(&documented_operations(&complete).unwrap(), &table), Vec::<String>::new());
}

#[test]
fn the_matrix_takes_each_operations_role_from_the_document_and_refuses_a_disagreeing_entry() {
    let doc = openapi_with(&[
        ("get", "/healthz", "health", false),
        ("get", "/v1/audit/checkpoint", "audit", false),
        ("get", "/v1/audit/entries", "audit", true),
        ("get", "/v1/grants", "business", true),
        ("post", "/v1/admin/keys/rotate", "admin", true),
        ("get", "/v1/me/data", "customer", true),
    ]);
    let documented = documented_operations(&doc).unwrap();
    let expected: BTreeMap<(String, String), Allowed> = [
        ("GET", "/healthz", Allowed::Anyone),
        ("GET", "/v1/audit/checkpoint", Allowed::Anyone),
        ("GET", "/v1/audit/entries", AUDITOR),
        ("GET", "/v1/grants", BUSINESS),
        ("POST", "/v1/admin/keys/rotate", ADMIN),
        ("GET", "/v1/me/data", CUSTOMER),
    ]
    .into_iter()
    .map(|(method, path, allowed)| ((method.to_owned(), path.to_owned()), allowed))
    .collect();
    assert_eq!(documented, expected);

    // The table says business where the document says auditor; and it has
    // an entry the document does not list.
    let table = [
        op("GET", "/v1/audit/entries", BUSINESS, |_| call("/v1/audit/entries")),
        op("GET", "/v1/me/grants", CUSTOMER, |_| call("/v1/me/grants")),
    ];
    let only = documented_operations(&openapi_with(&[("get", "/v1/audit/entries", "audit", true)])).unwrap();
    let problems = table_problems(&only, &table);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].contains("GET /v1/audit/entries: the OpenAPI document says Only(Auditor)"), "{problems:?}");
    assert!(problems[1].starts_with("GET /v1/me/grants has an entry in the role matrix but is not"), "{problems:?}");

    // A protected operation whose tag names no role cannot be placed.
    let unplaceable = openapi_with(&[("get", "/v1/me/data", "meta", true)]);
    let problems = documented_operations(&unplaceable).unwrap_err();
    assert!(problems[0].contains("GET /v1/me/data needs a bearer token but its tags [\"meta\"]"), "{problems:?}");
}

#[test]
fn a_filled_path_must_fit_its_template() {
    assert!(fills("/v1/me/grants/{id}", "/v1/me/grants/abc"));
    assert!(fills("/v1/subjects/{pairwise_id}/data", "/v1/subjects/p/data?purpose=marketing"));
    assert!(!fills("/v1/me/grants/{id}", "/v1/me/grants/"));
    assert!(!fills("/v1/me/grants/{id}", "/v1/me/grants/abc/receipt"));
    assert!(!fills("/v1/me/grants", "/v1/grants"));
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
    let app = TestApp::start().await;
    let anonymous = app.anonymous();
    let issuer = app.vault().principals().token_issuer();
    let kid = issuer.kid().to_owned();
    let customer = app.customer().await.id;
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
    assert_eq!(app.bearer(&good).get("/v1/me/data").await.0, 200);
    let good_claims = serde_json::to_string(&claims(json!({}))).unwrap();
    let parts: Vec<&str> = good.split('.').collect();
    let other = sign(claims(json!({"jti": "other"})));
    let other_signature = other.split('.').nth(2).unwrap().to_owned();
    let mut flipped = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    flipped[10] ^= 1;
    let (status, public_key) = anonymous.public_key().await;
    assert_eq!(status, 200);
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
    let admin = app.admin();
    let business = app.business("Acme Pizza", &["order-fulfilment", "marketing"]).await;
    // Used once, so the verified token sits in the cache: disabling must
    // empty it at once.
    let (status, _) = business.caller().get("/v1/me/data").await;
    assert_eq!(status, 403, "a live business token is recognised, and is not a customer's");
    let (status, disabled) = admin.business_disable(&business.id).await;
    assert_eq!(status, 200, "{disabled}");
    corpus.push(("token of a disabled principal".into(), business.token().to_owned()));

    assert!(corpus.len() >= 40, "{} cases", corpus.len());
    let (status, reference_body) = anonymous.caller().text(Method::GET, "/v1/me/data", None).await;
    assert_eq!(status, 401);
    for (name, token) in &corpus {
        let response = match app.bearer(token).try_send(Method::GET, "/v1/me/data", None).await {
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
    let app = TestApp::start_with_config(Some(config)).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let header = json!({"alg": "EdDSA", "typ": "at+jwt"});
    let claims = json!({"iss": "https://idp.example.test", "aud": "consentvault", "sub": "alice@idp",
        "role": "customer", "exp": now + 300, "nbf": now, "iat": now, "jti": "x1"});
    let token = mint(&idp_key, &header, &claims);

    let person = app.bearer(&token);
    let (status, first) = person.get("/v1/me/data").await;
    assert_eq!(status, 200, "{first}");
    let (status, stored) = person.put("/v1/me/data", &json!({"email": "alice@example.org"})).await;
    assert_eq!(status, 200, "{stored}");
    // A second token for the same person reaches the same, provisioned subject.
    let mut second_claims = claims.clone();
    second_claims["jti"] = json!("x2");
    let again = mint(&idp_key, &header, &second_claims);
    let (status, data) = app.bearer(&again).get("/v1/me/data").await;
    assert_eq!(status, 200, "{data}");
    assert_eq!(data["data"]["email"], "alice@example.org");

    let other_key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let forged = mint(&other_key, &header, &claims);
    assert_eq!(app.bearer(&forged).get("/v1/me/data").await.0, 401);
    let mut admin_claims = claims.clone();
    admin_claims["role"] = json!("admin");
    let escalated = mint(&idp_key, &header, &admin_claims);
    let (status, _) = app.bearer(&escalated).get("/v1/admin/businesses").await;
    assert_eq!(status, 401, "the issuer may only grant the customer role");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_or_forbidden_properties_are_refused_and_change_nothing() {
    let app = TestApp::start().await;
    let (anonymous, customer, admin) = (app.anonymous(), app.customer().await, app.admin());
    let (status, before) = customer.data().await;
    assert_eq!(status, 200, "{before}");
    let (status, businesses_before) = admin.businesses().await;
    assert_eq!(status, 200, "{businesses_before}");

    let me = "/v1/me/data";
    let cases: Vec<(&str, &str, &Caller, Value, &str)> = vec![
        ("PUT", me, customer.caller(), json!({"email": "ada@example.org", "role": "admin"}), "unknown_field"),
        (
            "PUT",
            me,
            customer.caller(),
            json!({"email": "ada@example.org", "subject": "00000000000000000000000000000000"}),
            "unknown_field",
        ),
        (
            "PUT",
            "/v1/me/data/email",
            customer.caller(),
            json!({"value": "ada@example.org", "subject_id": "x"}),
            "invalid_body",
        ),
        (
            "PUT",
            "/v1/me/data/email",
            customer.caller(),
            json!({"value": "ada@example.org", "created_at": "2020-01-01T00:00:00Z"}),
            "invalid_body",
        ),
        (
            "POST",
            "/v1/admin/businesses",
            admin.caller(),
            json!({"name": "X", "purposes": [], "business_id": "00"}),
            "invalid_body",
        ),
        (
            "POST",
            "/v1/admin/businesses",
            admin.caller(),
            json!({"name": "X", "purposes": [], "disabled": false}),
            "invalid_body",
        ),
        ("POST", "/v1/admin/auditors", admin.caller(), json!({"name": "X", "role": "admin"}), "invalid_body"),
        (
            "POST",
            "/v1/customers",
            anonymous.caller(),
            json!({"password": "correct horse battery", "customer_id": "00"}),
            "invalid_body",
        ),
        (
            "POST",
            "/v1/customers",
            anonymous.caller(),
            json!({"password": "correct horse battery", "role": "admin"}),
            "invalid_body",
        ),
        (
            "POST",
            "/v1/token",
            anonymous.caller(),
            json!({"grant_type": "client_credentials", "client_id": "a", "client_secret": "b", "role": "admin"}),
            "invalid_body",
        ),
        ("PUT", me, customer.caller(), json!(["not", "an", "object"]), "invalid_body"),
        (
            "PUT",
            me,
            customer.caller(),
            serde_json::from_str(&format!("{}1{}", "[".repeat(40), "]".repeat(40))).unwrap(),
            "invalid_body",
        ),
    ];
    for (method, path, caller, body, code) in cases {
        let response = caller.send(Method::from_bytes(method.as_bytes()).unwrap(), path, Some(&body)).await;
        assert_eq!(response.status(), 400, "{method} {path} {body}");
        assert_eq!(response.headers()["content-type"], "application/problem+json");
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["code"], code, "{method} {path} {body}: {problem}");
    }
    let (status, after) = customer.data().await;
    assert_eq!(status, 200, "{after}");
    assert_eq!(before, after, "refused writes changed nothing");
    let (status, businesses_after) = admin.businesses().await;
    assert_eq!(status, 200, "{businesses_after}");
    assert_eq!(businesses_before, businesses_after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failed_sign_ins_and_sign_up_floods_get_429_with_retry_after() {
    let app = TestApp::start().await;
    let anonymous = app.anonymous();
    let wrong = json!({"grant_type": "client_credentials", "client_id": "someone", "client_secret": "guess"});
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let response = anonymous.caller().send(Method::POST, "/v1/token", Some(&wrong)).await;
        statuses.push((response.status().as_u16(), response.headers().get("retry-after").is_some()));
    }
    assert!(statuses[..5].iter().all(|(status, _)| *status == 401), "{statuses:?}");
    assert!(statuses[5..].iter().all(|&(status, retry)| status == 429 && retry), "{statuses:?}");

    let mut last = 0;
    for _ in 0..12 {
        let body = json!({"password": "correct horse battery staple"});
        let response = anonymous.caller().send(Method::POST, "/v1/customers", Some(&body)).await;
        last = response.status().as_u16();
        if last == 429 {
            assert!(response.headers().get("retry-after").is_some());
            break;
        }
    }
    assert_eq!(last, 429, "sign-ups from one address are limited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_lists_exactly_the_routes_the_router_serves() {
    let app = TestApp::start().await;
    let anonymous = app.anonymous();
    let (status, doc) = anonymous.openapi().await;
    assert_eq!(status, 200, "{doc}");
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.insert((method.to_uppercase(), path.clone()));
        }
    }
    // Every documented operation exists: never 404 or 405, whoever asks.
    let concrete = |path: &str| {
        path.replace("{index}", "0")
            .replace("{field}", "email")
            .replace("{id}", "00000000000000000000000000000000")
            .replace("{pairwise_id}", "00000000000000000000000000000000")
    };
    for (method, path) in &documented {
        let url = concrete(path);
        let status = anonymous.caller().send(Method::from_bytes(method.as_bytes()).unwrap(), &url, None).await.status();
        assert!(status != 404 && status != 405, "{method} {path} is documented but answered {status}");
        // Every other method on that path is not served.
        for other in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            if documented.contains(&(other.to_owned(), path.clone())) {
                continue;
            }
            let status =
                anonymous.caller().send(Method::from_bytes(other.as_bytes()).unwrap(), &url, None).await.status();
            assert_eq!(status, 405, "{other} {path} is not documented but answered {status}");
        }
    }
    // And the router serves nothing else: every route the vault has today,
    // which is the role matrix's table.
    let expected: BTreeSet<(String, String)> = operations().iter().map(Operation::key).collect();
    assert_eq!(documented, expected);
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_guesses_made_at_once_are_limited_like_guesses_made_one_after_another() {
    let app = TestApp::start().await;
    let customer = app.customer().await;
    let anonymous = app.anonymous();
    // Each attempt is counted before its password is checked: of 24 made at
    // once for one customer, exactly the limit (5) are checked, and every
    // other one is refused without a hash.
    let guesses = (0..24).map(|attempt| {
        let body =
            json!({"grant_type": "password", "username": customer.id, "password": format!("wrong guess {attempt}")});
        let anonymous = app.anonymous();
        async move { anonymous.token_request(&body).await.0 }
    });
    let mut statuses = futures_join_all(guesses).await;
    statuses.sort_unstable();
    let checked = statuses.iter().filter(|&&status| status == 401).count();
    let refused = statuses.iter().filter(|&&status| status == 429).count();
    assert_eq!((checked, refused), (5, 19), "{statuses:?}");
    // The limit holds for the right password too, until it refills.
    let right = json!({"grant_type": "password", "username": customer.id, "password": "correct horse battery staple"});
    assert_eq!(anonymous.token_request(&right).await.0, 429);
}

/// Runs every future at once and collects their outputs in order.
async fn futures_join_all<F: Future<Output = u16> + Send + 'static>(futures: impl Iterator<Item = F>) -> Vec<u16> {
    let tasks: Vec<_> = futures.map(tokio::spawn).collect();
    let mut outputs = Vec::with_capacity(tasks.len());
    for task in tasks {
        outputs.push(task.await.unwrap());
    }
    outputs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_business_rotates_its_own_secret_and_the_old_secret_and_its_tokens_stop_working() {
    let app = TestApp::start().await;
    let admin = app.admin();
    let (status, registered) = admin.business_register("Acme Pizza", &["order-fulfilment", "marketing"]).await;
    assert_eq!(status, 201, "{registered}");
    let business_id = registered["business_id"].as_str().unwrap().to_owned();
    let client_id = registered["client_id"].as_str().unwrap().to_owned();
    let old_secret = registered["client_secret"].as_str().unwrap().to_owned();
    let anonymous = app.anonymous();
    let sign_in = |secret: String| {
        let (anonymous, client_id) = (anonymous.clone(), client_id.clone());
        async move {
            anonymous
                .token_request(&json!({"grant_type": "client_credentials", "client_id": client_id,
                                       "client_secret": secret}))
                .await
        }
    };
    // The business signs in; the admin, who saw the secret, holds a token too.
    let (status, answer) = sign_in(old_secret.clone()).await;
    assert_eq!(status, 200, "{answer}");
    let business = app.bearer(answer["access_token"].as_str().unwrap());
    let (_, answer) = sign_in(old_secret.clone()).await;
    let admins_copy = app.bearer(answer["access_token"].as_str().unwrap());
    assert_eq!(admins_copy.get("/v1/grants").await.0, 200);

    // A customer grants the business something, to see it still works after.
    let customer = app.customer().await;
    assert_eq!(customer.data_put(&json!({"email": "ada@example.org"})).await.0, 200);
    let (_, connected) = customer.connect(&business_id).await;
    let pairwise = connected["pairwise_id"].as_str().unwrap().to_owned();
    let grant =
        json!({"business_id": business_id, "purposes": ["marketing"], "fields": ["email"], "duration_days": 30});
    assert_eq!(customer.grant(&grant).await.0, 201);

    // A token alone does not rotate the secret: the current one is needed.
    for wrong in [json!({}), json!({"client_secret": "not-the-secret"})] {
        let (status, problem) = business.post("/v1/credentials/rotate", &wrong).await;
        assert!(status == 400 || (status, problem["code"].as_str()) == (401, Some("invalid_credentials")), "{problem}");
    }
    assert_eq!(admins_copy.get("/v1/grants").await.0, 200, "a refused rotation changes nothing");
    let (status, rotated) = business.post("/v1/credentials/rotate", &json!({"client_secret": old_secret})).await;
    assert_eq!(status, 200, "{rotated}");
    assert_eq!(rotated["business_id"], business_id.as_str());
    assert_eq!(rotated["client_id"], client_id.as_str(), "the client id stays; only the secret changes");
    let new_secret = rotated["client_secret"].as_str().unwrap().to_owned();
    assert_ne!(new_secret, old_secret);
    assert!(new_secret.len() >= 43, "{new_secret}: 256 random bits");

    // The old secret no longer signs in, and no token made with it works:
    // not the business's own, not the admin's copy.
    let (status, refused) = sign_in(old_secret.clone()).await;
    assert_eq!(status, 401, "{refused}");
    for stale in [&business, &admins_copy] {
        let (status, problem) = stale.get("/v1/grants").await;
        assert_eq!(status, 401, "{problem}");
        let (status, _) = stale.post("/v1/credentials/rotate", &json!({"client_secret": old_secret})).await;
        assert_eq!(status, 401, "a stale token cannot rotate the secret again");
    }
    // The new secret works, and the customer's grant is the business's still.
    let (status, answer) = sign_in(new_secret.clone()).await;
    assert_eq!(status, 200, "{answer}");
    let business = app.bearer(answer["access_token"].as_str().unwrap());
    let (status, read) = business.get(&format!("/v1/subjects/{pairwise}/data?purpose=marketing&fields=email")).await;
    assert_eq!((status, &read["data"]["email"]), (200, &json!("ada@example.org")), "{read}");

    // Audited, by the business, without the secret.
    let auditor = app.auditor().await;
    let entries = auditor.entries_all().await;
    let rotation: Vec<&Value> =
        entries.iter().filter(|item| item["entry"]["kind"] == "principal.secret_rotated").collect();
    assert_eq!(rotation.len(), 1, "one rotation, one event");
    assert_eq!(rotation[0]["entry"]["actor"]["id"], business_id.as_str(), "{}", rotation[0]);
    assert_eq!(rotation[0]["entry"]["business"], business_id.as_str(), "{}", rotation[0]);
    let log = serde_json::to_string(&entries).unwrap();
    for secret in [&old_secret, &new_secret] {
        assert!(!log.contains(secret.as_str()), "a client secret is in the audit log");
    }
    // Only a business rotates its own: another role is refused.
    let (status, problem) =
        customer.caller().post("/v1/credentials/rotate", &json!({"client_secret": new_secret})).await;
    assert_eq!((status, problem["code"].as_str()), (403, Some("wrong_role")), "{problem}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_refuses_undefined_purposes_and_taken_names_and_lists_businesses_by_business_id() {
    let app = TestApp::start().await;
    let admin = app.admin();
    let listed = |admin: Admin| async move {
        let (status, page) = admin.businesses().await;
        assert_eq!(status, 200, "{page}");
        page["items"].as_array().unwrap().clone()
    };

    // A purpose the policies do not define: 422, nothing registered.
    let (status, problem) = admin.business_register("Acme Pizza", &["marketing", "resale-to-brokers"]).await;
    assert_eq!((status, problem["code"].as_str()), (422, Some("unknown_purpose")), "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("resale-to-brokers"), "{problem}");
    assert!(listed(admin.clone()).await.is_empty());
    let (status, problem) = admin.business_register("Acme Pizza", &["marketing", "marketing"]).await;
    assert_eq!(status, 400, "a purpose named twice: {problem}");

    let (status, acme) = admin.business_register("Acme Pizza", &["marketing"]).await;
    assert_eq!(status, 201, "{acme}");
    // The same name, however it is cased or spaced, is taken: 409.
    for name in ["Acme Pizza", "acme pizza", "  ACME   Pizza "] {
        let (status, problem) = admin.business_register(name, &["order-fulfilment"]).await;
        assert_eq!((status, problem["code"].as_str()), (409, Some("name_taken")), "{name}: {problem}");
    }
    // Still taken once the business is disabled: a customer may know it.
    assert_eq!(admin.business_disable(acme["business_id"].as_str().unwrap()).await.0, 200);
    let (status, _) = admin.business_register("Acme Pizza", &["marketing"]).await;
    assert_eq!(status, 409);
    let (status, globex) = admin.business_register("Globex", &["order-fulfilment"]).await;
    assert_eq!(status, 201, "{globex}");

    // The list names each business's id as creation does: `business_id`.
    let items = listed(admin.clone()).await;
    assert_eq!(items.len(), 2, "{items:?}");
    let listed_ids: BTreeSet<&str> = items.iter().map(|item| item["business_id"].as_str().unwrap()).collect();
    let created_ids: BTreeSet<&str> =
        [acme["business_id"].as_str().unwrap(), globex["business_id"].as_str().unwrap()].into_iter().collect();
    assert_eq!(listed_ids, created_ids);
    assert!(items.iter().all(|item| item.get("id").is_none()), "{items:?}");
    let (status, page) = admin.auditors().await;
    assert_eq!(status, 200);
    let auditor = app.auditor().await;
    let (_, page_after) = admin.auditors().await;
    assert_eq!(page["items"].as_array().unwrap().len() + 1, page_after["items"].as_array().unwrap().len());
    assert!(page_after["items"].as_array().unwrap().iter().any(|item| item["auditor_id"] == auditor.id.as_str()));
}

/// A small OpenID provider on loopback: a discovery document and a JWKS the
/// test changes; it counts the JWKS fetches.
struct Provider {
    base: String,
    keys: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
    fetches: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    server: tokio::task::JoinHandle<()>,
}

impl Provider {
    /// Serves discovery naming `issuer` (its own address when `None`).
    async fn start(issuer: Option<&str>) -> Self {
        use axum::routing::get;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let keys = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let fetches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let discovery = json!({"issuer": issuer.unwrap_or(&base), "jwks_uri": format!("{base}/jwks"),
            "id_token_signing_alg_values_supported": ["EdDSA"]});
        let (served_keys, counted) = (std::sync::Arc::clone(&keys), std::sync::Arc::clone(&fetches));
        let app = axum::Router::new()
            .route("/.well-known/openid-configuration", get(move || async move { axum::Json(discovery) }))
            .route(
                "/jwks",
                get(move || async move {
                    counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    axum::Json(json!({"keys": served_keys.lock().unwrap().clone()}))
                }),
            );
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { base, keys, fetches, server }
    }

    fn publish(&self, keys: &[(&str, &ed25519_dalek::SigningKey)]) {
        *self.keys.lock().unwrap() = keys
            .iter()
            .map(|(kid, key)| {
                json!({"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": kid,
                    "x": URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes())})
            })
            .collect();
    }

    fn fetches(&self) -> usize {
        self.fetches.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The vault's configuration trusting `issuer` by discovery over plain
/// HTTP on loopback, with `refresh_min_secs` and `max_age_secs`.
fn discovery_config(
    dir: &std::path::Path,
    issuer: &str,
    refresh_min_secs: u64,
    max_age_secs: u64,
) -> std::path::PathBuf {
    let config = dir.join("vault.toml");
    std::fs::write(
        &config,
        format!(
            "[[identity.external]]\nissuer = {issuer:?}\naudience = \"consentvault\"\nalgorithm = \"EdDSA\"\n\
             discovery = true\ninsecure_http = true\nrefresh_min_secs = {refresh_min_secs}\n\
             max_age_secs = {max_age_secs}\nroles = [\"customer\"]\n"
        ),
    )
    .unwrap();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_found_by_discovery_is_trusted_refreshed_on_a_new_kid_and_refused_while_unreachable() {
    let provider = Provider::start(None).await;
    let key_a = ed25519_dalek::SigningKey::from_bytes(&[21u8; 32]);
    provider.publish(&[("a", &key_a)]);
    let dir = tempfile::tempdir().unwrap();
    // One fetch a second at most; fetched keys trusted for five seconds.
    let (refresh_min, max_age) = (std::time::Duration::from_secs(1), 5);
    let app = TestApp::start_with_config(Some(discovery_config(dir.path(), &provider.base, 1, max_age))).await;
    assert_eq!(provider.fetches(), 1, "the keys are fetched at start");

    let issuer = provider.base.clone();
    let mut jti = 0;
    let mut token = |kid: &str, key: &ed25519_dalek::SigningKey| {
        // A new jti each time: the vault's token cache must not answer.
        jti += 1;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let claims = json!({"iss": issuer, "aud": "consentvault", "sub": "grace@idp", "role": "customer",
            "exp": now + 300, "nbf": now, "iat": now, "jti": format!("t{jti}")});
        mint(key, &json!({"alg": "EdDSA", "typ": "at+jwt", "kid": kid}), &claims)
    };
    let status = |token: String| {
        let caller = app.bearer(&token);
        async move { caller.get("/v1/me/data").await.0 }
    };
    assert_eq!(status(token("a", &key_a)).await, 200);

    // The provider rotates to a new key: the first token under it brings
    // one fetch, and is accepted.
    tokio::time::sleep(refresh_min).await;
    let key_b = ed25519_dalek::SigningKey::from_bytes(&[22u8; 32]);
    provider.publish(&[("a", &key_a), ("b", &key_b)]);
    assert_eq!(status(token("b", &key_b)).await, 200);
    assert_eq!(provider.fetches(), 2);

    // Made-up kids within the interval cost the provider nothing more.
    let stranger = ed25519_dalek::SigningKey::from_bytes(&[23u8; 32]);
    for kid in ["x1", "x2", "x3"] {
        assert_eq!(status(token(kid, &stranger)).await, 401);
    }
    assert_eq!(provider.fetches(), 2, "at most one fetch per interval");
    // A known kid with another key's signature is still refused.
    assert_eq!(status(token("a", &stranger)).await, 401);

    // The provider goes away: cached keys serve until they are too old,
    // then its tokens are refused (401, never a 5xx) until it answers again.
    // A key it publishes as it goes away is never fetched: refused.
    provider.publish(&[("a", &key_a), ("b", &key_b), ("c", &stranger)]);
    provider.server.abort();
    tokio::time::sleep(refresh_min).await;
    assert_eq!(status(token("c", &stranger)).await, 401, "a fetch that fails refuses");
    assert_eq!(status(token("a", &key_a)).await, 200, "cached keys serve within max_age");
    tokio::time::sleep(std::time::Duration::from_secs(max_age)).await;
    assert_eq!(status(token("a", &key_a)).await, 401, "keys past max_age serve nothing without a fetch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discovery_document_that_names_another_issuer_is_not_trusted() {
    let provider = Provider::start(Some("https://elsewhere.example.test")).await;
    let key = ed25519_dalek::SigningKey::from_bytes(&[24u8; 32]);
    provider.publish(&[("a", &key)]);
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::start_with_config(Some(discovery_config(dir.path(), &provider.base, 1, 3600))).await;
    assert_eq!(provider.fetches(), 0, "its JWKS is never fetched");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claims = json!({"iss": provider.base, "aud": "consentvault", "sub": "mallory@idp", "role": "customer",
        "exp": now + 300, "nbf": now, "iat": now, "jti": "m1"});
    let token = mint(&key, &json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "a"}), &claims);
    assert_eq!(app.bearer(&token).get("/v1/me/data").await.0, 401);
}
