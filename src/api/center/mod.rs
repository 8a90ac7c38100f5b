//! The privacy center: server-rendered pages at `/` where a customer signs
//! in with her customer id and password and sees, and acts on, what the
//! vault holds about her: requests, sharing, businesses, objections, the
//! access log (each entry's inclusion proof checked in the page), her data,
//! export and erasure, her password.
//!
//! Every action goes through the same services as the API, so it is
//! decided, audited and rate-limited alike. Sessions (`auth::session`) ride
//! in an `HttpOnly`, `SameSite=Strict` cookie (`Secure` behind TLS); every
//! form carries the session's CSRF token, and a cross-origin `Origin` is
//! refused. Pages load nothing from elsewhere (`default-src 'self'`).

mod inbox;
mod pages;

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{Markup, html};
use serde::Deserialize;

use super::AppState;
use super::error::ApiError;
use crate::auth::session::Session;
use crate::ids::SubjectId;
use pages::{Section, csrf, field_words, layout, purpose_words, readable_secs, readable_time};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "cv_session";

/// The pages' content security policy: nothing from elsewhere, no inline
/// script or style, no framing, forms only to this origin.
pub const CENTER_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The center's routes, with their security headers.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(home))
        .route("/sign-in", get(sign_in_page).post(sign_in))
        .route("/sign-up", get(sign_up_page).post(sign_up))
        .route("/sign-out", post(sign_out))
        .route("/requests", get(requests_page))
        .route("/requests/{id}/approve", post(request_approve))
        .route("/requests/{id}/deny", post(request_deny))
        .route("/sharing", get(sharing_page))
        .route("/sharing/{id}/revoke", get(revoke_page).post(revoke))
        .route("/sharing/{id}/receipt", get(receipt_download))
        .route("/businesses", get(businesses_page))
        .route("/businesses/{id}/connect", post(connect))
        .route("/relationships/{id}/disconnect", post(disconnect))
        .route("/relationships/{id}/requests", post(requests_block))
        .route("/inbox", get(inbox::inbox_page))
        .route("/inbox/write", post(inbox::inbox_write))
        .route("/inbox/{id}/reply", post(inbox::inbox_reply))
        .route("/inbox/{id}/delete", post(inbox::inbox_delete))
        .route("/contact", get(inbox::contact_page))
        .route("/contact/{id}", post(inbox::contact_save))
        .route("/objections", get(objections_page).post(objections_save))
        .route("/access-log", get(access_log_page))
        .route("/access-log/proofs", get(access_log_proofs))
        .route("/access-log/consistency", get(access_log_consistency))
        .route("/data", get(data_page))
        .route("/data/{field}", post(data_save))
        .route("/data/{field}/delete", post(data_delete))
        .route("/export", get(export_page))
        .route("/export/json", get(export_json))
        .route("/export/page", get(export_readable))
        .route("/erase", get(erase_page).post(erase))
        .route("/password", get(password_page).post(password_change))
        .route("/assets/center.css", get(|| async { asset("text/css; charset=utf-8", pages::CENTER_CSS) }))
        .route("/assets/verify.js", get(|| async { asset("text/javascript; charset=utf-8", pages::VERIFY_JS) }))
        .route("/favicon.ico", get(|| async { asset("image/svg+xml", pages::ICON_SVG) }))
        .layer(axum::middleware::map_response(security_headers))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    // A page with a policy of its own (the readable export) keeps it.
    headers.entry(header::CONTENT_SECURITY_POLICY).or_insert(HeaderValue::from_static(CENTER_CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // Same-origin requests carry the origin (a form post's `Origin`, which
    // `form_check` compares); nothing is sent to other sites.
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// A page answer.
fn page(markup: Markup) -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], markup.into_string()).into_response()
}

/// The notices a page shows after an action; the query names one by code,
/// so nothing a request carries is shown back.
const NOTICES: &[(&str, &str)] = &[
    ("welcome", "Welcome. Keep your customer id: you sign in with it."),
    ("approved", "Approved: the grant is in force now."),
    ("denied", "Denied: the business has been told."),
    ("revoked", "Revoked: from now on the business is refused."),
    ("connected", "Connected: the business can now ask you for access."),
    ("disconnected", "Disconnected: its grants are revoked."),
    ("blocked", "The business can no longer ask you for access or send you messages."),
    ("unblocked", "The business may ask you for access and send you messages again."),
    ("objections", "Your objections are saved."),
    ("saved", "Saved."),
    ("deleted", "Deleted."),
    ("password", "Your password is changed; other sessions are signed out."),
    ("replied", "Your reply is sent."),
    ("written", "Your message is sent."),
    ("message_deleted", "Deleted from your inbox."),
    ("contact", "Your contact preferences are saved."),
];

#[derive(Debug, Default, Deserialize)]
struct NoticeQuery {
    notice: Option<String>,
}

impl NoticeQuery {
    fn text(&self) -> Option<&'static str> {
        let code = self.notice.as_deref()?;
        NOTICES.iter().find(|(name, _)| *name == code).map(|(_, text)| *text)
    }
}

fn see_other(path: &str) -> Response {
    Redirect::to(path).into_response()
}

/// A signed-in customer, from the session cookie; pages redirect to the
/// sign-in page without one.
pub struct SessionCaller {
    cookie: String,
    session: Session,
}

impl std::fmt::Debug for SessionCaller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the cookie: it is the session.
        f.debug_struct("SessionCaller").field("session", &self.session).finish_non_exhaustive()
    }
}

impl SessionCaller {
    fn subject(&self) -> SubjectId {
        self.session.subject
    }
}

fn cookie_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.to_owned())
}

impl FromRequestParts<AppState> for SessionCaller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let cookie = cookie_of(&parts.headers).ok_or_else(|| see_other("/sign-in"))?;
        let session = state.sessions.get(&cookie).ok_or_else(|| see_other("/sign-in"))?;
        // An erased customer's sessions end with her (whatever erased her).
        let exists = state.vault.subjects().subject_exists(session.subject).map_err(|e| problem_page(&e.into()))?;
        if !exists {
            state.sessions.end(&cookie);
            return Err(see_other("/sign-in"));
        }
        // The same per-principal limit as the API's bearer tokens.
        if let Err(wait) = state.principal_requests.take(&format!("customer:{}", session.subject)) {
            return Err(problem_page(&ApiError::too_many("principal_requests", wait)));
        }
        Ok(Self { cookie, session })
    }
}

/// A form body: its members in order (a name may repeat, as checkboxes do).
#[derive(Debug, Default)]
struct Form(Vec<(String, String)>);

impl Form {
    fn one(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(member, _)| member == name).map(|(_, value)| value.as_str())
    }

    fn all(&self, name: &str) -> Vec<String> {
        self.0.iter().filter(|(member, _)| member == name).map(|(_, value)| value.clone()).collect()
    }
}

impl<S: Send + Sync> axum::extract::FromRequest<S> for Form {
    type Rejection = Response;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        let form = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.starts_with("application/x-www-form-urlencoded"));
        if !form {
            return Err(problem_page(&ApiError::body_rejected(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "a form of the privacy center",
            )));
        }
        let body = axum::body::Bytes::from_request(request, state)
            .await
            .map_err(|rejection| problem_page(&ApiError::body_rejected(rejection.status(), rejection.body_text())))?;
        super::identity::url_form_pairs(&body)
            .map(Self)
            .ok_or_else(|| problem_page(&ApiError::invalid_body("the form is not valid")))
    }
}

/// Refuses a form posted from another origin, or without this session's
/// CSRF token; nothing changes then.
fn form_check(headers: &HeaderMap, session: Option<&Session>, form: &Form) -> Result<(), Refusal> {
    let host = headers.get(header::HOST).and_then(|value| value.to_str().ok());
    let origin = headers.get(header::ORIGIN).and_then(|value| value.to_str().ok());
    // A browser names the page a form came from; another site's page, or
    // one that hides its origin (`null`), is refused. A client without an
    // `Origin` (no browser) still needs the session's token.
    if let Some(origin) = origin {
        let same = host.is_some() && origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://")) == host;
        if !same {
            return Err(forbidden_form().into());
        }
    }
    if let Some(session) = session {
        let sent = form.one("csrf").unwrap_or_default();
        if !same_bytes(sent.as_bytes(), session.csrf.as_bytes()) {
            return Err(forbidden_form().into());
        }
    }
    Ok(())
}

/// A form posted by a signed-in customer, checked (origin, CSRF token)
/// before the handler sees it.
struct Posted {
    caller: SessionCaller,
    form: Form,
}

impl axum::extract::FromRequest<AppState> for Posted {
    type Rejection = Response;

    async fn from_request(request: axum::extract::Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = request.into_parts();
        let caller = SessionCaller::from_request_parts(&mut parts, state).await?;
        let headers = parts.headers.clone();
        let form = Form::from_request(axum::extract::Request::from_parts(parts, body), state).await?;
        form_check(&headers, Some(&caller.session), &form).map_err(IntoResponse::into_response)?;
        Ok(Self { caller, form })
    }
}

/// The record id `text` names, or the not-found page.
fn parsed<Id: std::str::FromStr>(text: &str, what: &str) -> Result<Id, Refusal> {
    super::extract::record_id(text, what).map_err(|error| problem_page(&error).into())
}

fn same_bytes(left: &[u8], right: &[u8]) -> bool {
    left.len() == right.len() && left.iter().zip(right).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

fn forbidden_form() -> Response {
    let body = html! {
        p { "This form is not valid any more (it came from another page, or your session changed). Nothing was changed." }
        p { a href="/" { "Back to the privacy center" } }
    };
    (StatusCode::FORBIDDEN, page(layout("Form refused", None, Section::None, None, body))).into_response()
}

/// An error as a page: the problem's title and detail (which never carry
/// personal values), with its status.
fn problem_page(error: &ApiError) -> Response {
    let problem = error.problem();
    let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = html! {
        p { (problem.detail) }
        p { a href="/" { "Back to the privacy center" } }
    };
    (status, page(layout(problem.title, None, Section::None, None, body))).into_response()
}

/// The session cookie for `value`: a browser-session cookie (the vault ends
/// the session itself, idle or old), or, with `ended`, one that clears it;
/// `Secure` when the request came over TLS (as a proxy in front says).
fn session_cookie(headers: &HeaderMap, value: &str, ended: bool) -> HeaderValue {
    let secure = headers
        .get("x-forwarded-proto")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|proto| proto.eq_ignore_ascii_case("https"));
    let cookie = format!(
        "{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict{}{}",
        if ended { "; Max-Age=0" } else { "" },
        if secure { "; Secure" } else { "" }
    );
    HeaderValue::from_str(&cookie).unwrap_or_else(|_| HeaderValue::from_static("cv_session=; Max-Age=0"))
}

fn signed_in(state: &AppState, headers: &HeaderMap, subject: SubjectId, to: &str) -> Response {
    match state.sessions.start(subject, state.vault.core().keys().rng()) {
        Ok((cookie, _)) => {
            let mut response = see_other(to);
            response.headers_mut().insert(header::SET_COOKIE, session_cookie(headers, &cookie, false));
            response
        }
        Err(error) => problem_page(&ApiError::internal(&error)),
    }
}

/// A page that refuses or fails: a response, boxed (responses are large).
#[derive(Debug)]
struct Refusal(Box<Response>);

impl From<Response> for Refusal {
    fn from(response: Response) -> Self {
        Self(Box::new(response))
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        *self.0
    }
}

type PageResult = Result<Response, Refusal>;

fn failed(error: impl Into<ApiError>) -> Response {
    problem_page(&error.into())
}

// ----- signing in and out -------------------------------------------------

async fn sign_in_page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if cookie_of(&headers).is_some_and(|cookie| state.sessions.get(&cookie).is_some()) {
        return see_other("/");
    }
    page(pages::sign_in(None))
}

async fn sign_in(
    State(state): State<AppState>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    form: Form,
) -> PageResult {
    form_check(&headers, None, &form)?;
    let customer_id = form.one("customer_id").unwrap_or_default().trim().to_owned();
    let password = zeroize::Zeroizing::new(form.one("password").unwrap_or_default().to_owned());
    // The token endpoint's limits: per account and per address.
    let limits = state.vault.principals().limits();
    let principal_key = format!("customer:{customer_id}");
    let address_key = crate::principals::Limits::address_key(peer.ip());
    if let Err(wait) = limits.failures_per_client.take(&principal_key) {
        return Err(problem_page(&ApiError::too_many("token_failures_per_client", wait)).into());
    }
    if let Err(wait) = limits.failures_per_address.take(&address_key) {
        limits.failures_per_client.refund(&principal_key);
        return Err(problem_page(&ApiError::too_many("token_failures_per_address", wait)).into());
    }
    match state.vault.principals().password_sign_in(&customer_id, &password).await {
        Ok(subject) => {
            limits.failures_per_client.refund(&principal_key);
            limits.failures_per_address.refund(&address_key);
            Ok(signed_in(&state, &headers, subject, "/"))
        }
        Err(crate::principals::PrincipalError::BadCredentials) => {
            tracing::info!(peer = %peer.ip(), "privacy center sign-in refused");
            Ok((StatusCode::UNAUTHORIZED, page(pages::sign_in(Some("That customer id and password do not match."))))
                .into_response())
        }
        Err(error) => {
            limits.failures_per_client.refund(&principal_key);
            limits.failures_per_address.refund(&address_key);
            Err(failed(error).into())
        }
    }
}

async fn sign_up_page() -> Response {
    page(pages::sign_up(None))
}

async fn sign_up(
    State(state): State<AppState>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    form: Form,
) -> PageResult {
    form_check(&headers, None, &form)?;
    let password = zeroize::Zeroizing::new(form.one("password").unwrap_or_default().to_owned());
    if form.one("password_again") != Some(password.as_str()) {
        return Ok((StatusCode::BAD_REQUEST, page(pages::sign_up(Some("The two passwords differ.")))).into_response());
    }
    let limits = state.vault.principals().limits();
    if let Err(wait) = limits.signups_per_address.take(&crate::principals::Limits::address_key(peer.ip())) {
        return Err(problem_page(&ApiError::too_many("signups_per_address", wait)).into());
    }
    match state.vault.principals().customer_signup(&password).await {
        Ok(subject) => Ok(signed_in(&state, &headers, subject, "/?notice=welcome")),
        Err(crate::principals::PrincipalError::Invalid(detail)) => {
            Ok((StatusCode::BAD_REQUEST, page(pages::sign_up(Some(&detail.replace('`', ""))))).into_response())
        }
        Err(error) => Err(failed(error).into()),
    }
}

async fn sign_out(State(state): State<AppState>, headers: HeaderMap, Posted { caller, .. }: Posted) -> PageResult {
    state.sessions.end(&caller.cookie);
    let mut response = see_other("/sign-in");
    response.headers_mut().insert(header::SET_COOKIE, session_cookie(&headers, "", true));
    Ok(response)
}

// ----- home ---------------------------------------------------------------

async fn home(State(state): State<AppState>, caller: SessionCaller, Query(notice): Query<NoticeQuery>) -> PageResult {
    let vault = &state.vault;
    let subject = caller.subject();
    let now = vault.core().clock().now_secs();
    let pending: Vec<_> = vault
        .consent()
        .requests_of_customer(subject)
        .map_err(failed)?
        .into_iter()
        .filter(|request| request.status_at(now) == crate::consent::requests::RequestStatus::Pending)
        .collect();
    let live: Vec<_> = vault
        .consent()
        .grants(subject)
        .map_err(failed)?
        .into_iter()
        .filter(|grant| grant.status(now) == crate::consent::GrantStatus::Active)
        .collect();
    let inbox = vault.contact().inbox_items(subject).map_err(failed)?;
    // Her own looks at her data are in the access log; here, the businesses'.
    let (latest, _) = latest_reads(&state, subject, 5, |read| read.business_id.is_some())?;
    let names =
        business_names(&state, pending.iter().map(|r| &r.business_id).chain(live.iter().map(|g| &g.business_id)))?;
    let body = html! {
        p.account { "Your customer id: " code { (subject) } }
        section {
            h2 { "Waiting for you" }
            @if pending.is_empty() {
                p { "No business is waiting for an answer." }
            } @else {
                ul {
                    @for request in &pending {
                        li { strong { (names.name(&request.business_id)) } " asks for access. " a href="/requests" { "Answer" } }
                    }
                }
            }
        }
        section {
            h2 { "Inbox" }
            @if inbox.is_empty() {
                p { "Nothing in your inbox." }
            } @else {
                p { (inbox.len()) " " (if inbox.len() == 1 { "item" } else { "items" }) " in your inbox, the latest from "
                    (inbox.first().map(|item| readable_time(&item.time)).unwrap_or_default()) ". " a href="/inbox" { "Open your inbox" } }
            }
        }
        section {
            h2 { "Shared now" }
            @if live.is_empty() {
                p { "You share nothing with any business." }
            } @else {
                ul {
                    @for grant in &live {
                        li { strong { (names.name(&grant.business_id)) } ": " (grant.fields.join(", ")) " until " (readable_secs(grant.expires_at)) }
                    }
                }
                p { a href="/sharing" { "See and change what you share" } }
            }
        }
        section {
            h2 { "Latest reads by businesses" }
            @if latest.is_empty() {
                p { "No business has read your data." }
            } @else {
                ul {
                    @for read in latest.iter().rev() {
                        li { (read_sentence(read)) }
                    }
                }
                p { a href="/access-log" { "The whole access log, with proofs" } }
            }
        }
    };
    Ok(page(layout("Your privacy", Some(&caller.session), Section::Home, notice.text(), body)))
}

/// Reads shown at most on the access-log page (the export holds them all).
const READS_SHOWN_MAX: usize = 200;

/// The latest `keep` reads of `subject`'s data that `pick` keeps, oldest
/// first, and how many reads there are in all. Walks her whole access log:
/// the log is read forward, and the page shows its end.
fn latest_reads(
    state: &AppState,
    subject: SubjectId,
    keep: usize,
    pick: impl Fn(&crate::consent::AccessLogItem) -> bool,
) -> Result<(Vec<crate::consent::AccessLogItem>, u64), Refusal> {
    let mut latest = std::collections::VecDeque::with_capacity(keep + 1);
    let (mut from, mut total) = (0, 0u64);
    loop {
        let (items, next) = state.vault.consent().access_log(subject, from, 1000).map_err(failed)?;
        for item in items {
            total += 1;
            if pick(&item) {
                latest.push_back(item);
                if latest.len() > keep {
                    latest.pop_front();
                }
            }
        }
        match next {
            Some(next) => from = next,
            None => return Ok((latest.into(), total)),
        }
    }
}

/// Names of businesses by id, looked up once per page.
struct Names(BTreeMap<String, Option<String>>);

impl Names {
    fn name(&self, id: &crate::ids::BusinessId) -> String {
        self.0.get(id.as_ref()).cloned().flatten().unwrap_or_else(|| "A business no longer registered".to_owned())
    }
}

fn business_names<'a>(
    state: &AppState,
    ids: impl Iterator<Item = &'a crate::ids::BusinessId>,
) -> Result<Names, Refusal> {
    let mut names = BTreeMap::new();
    for id in ids {
        if !names.contains_key(id.as_ref()) {
            names.insert(id.to_string(), super::consent::business_name(state, id).map_err(|e| problem_page(&e))?);
        }
    }
    Ok(Names(names))
}

/// One read, as a sentence.
fn read_sentence(read: &crate::consent::AccessLogItem) -> Markup {
    use crate::audit::Decision;
    if read.role == crate::audit::Role::Customer {
        let what = if read.fields.is_empty() { "nothing was stored".to_owned() } else { read.fields.join(", ") };
        return html! { (readable_time(&read.time)) ": " strong { "You" } " looked at your data (" (what) ")" };
    }
    let who = read.business_name.clone().unwrap_or_else(|| "A business no longer registered".to_owned());
    let outcome = match read.decision {
        Some(Decision::Allow) => "and got",
        Some(Decision::Partial) => "and got only",
        Some(Decision::Deny) | None => "and was refused",
    };
    html! {
        (readable_time(&read.time)) ": " strong { (who) } " asked"
        @if let Some(purpose) = &read.purpose { " for " (purpose) }
        " " (outcome)
        @if !read.fields.is_empty() { " " (read.fields.join(", ")) }
    }
}

// ----- requests -------------------------------------------------------------

async fn requests_page(
    State(state): State<AppState>,
    caller: SessionCaller,
    Query(notice): Query<NoticeQuery>,
) -> PageResult {
    let vault = &state.vault;
    let now = vault.core().clock().now_secs();
    let mut requests = vault.consent().requests_of_customer(caller.subject()).map_err(failed)?;
    requests.sort_by_key(|request| std::cmp::Reverse(request.created_at));
    let names = business_names(&state, requests.iter().map(|r| &r.business_id))?;
    let policies = vault.policies();
    let session = &caller.session;
    let body = html! {
        @if requests.is_empty() { p { "No business has asked you for access." } }
        @for request in &requests {
            @let pending = request.status_at(now) == crate::consent::requests::RequestStatus::Pending;
            @let id = request.request_id.to_string();
            article.request {
                h2 { (names.name(&request.business_id)) }
                dl {
                    dt { "Asks to use" } dd { ul { @for field in &request.fields { li { (field_words(&policies.catalogue, field)) } } } }
                    dt { "For" } dd { ul { @for purpose in &request.purposes { li { (purpose_words(&policies, purpose)) } } } }
                    dt { "For how long" } dd { (request.duration_days) " days" }
                    dt { "Why" } dd { (request.justification) }
                    @if let Some(benefit) = &request.benefit { dt { "What you get" } dd { (benefit) } }
                    dt { "Status" } dd { (format!("{:?}", request.status_at(now)).to_lowercase()) }
                }
                @if pending {
                    form method="post" action={ "/requests/" (id) "/approve" } {
                        (csrf(session))
                        fieldset {
                            legend { "Share only the data you want" }
                            @for field in &request.fields {
                                @let input_id = format!("{id}-field-{field}");
                                div.choice { input type="checkbox" id=(input_id) name="fields" value=(field) checked; label for=(input_id) { (field_words(&policies.catalogue, field)) } }
                            }
                        }
                        fieldset {
                            legend { "Only for" }
                            @for purpose in &request.purposes {
                                @let input_id = format!("{id}-purpose-{purpose}");
                                div.choice { input type="checkbox" id=(input_id) name="purposes" value=(purpose) checked; label for=(input_id) { (purpose_words(&policies, purpose)) } }
                            }
                            @let days_id = format!("{id}-days");
                            label for=(days_id) { "Days (at most " (request.duration_days) ")" }
                            input id=(days_id) type="number" name="duration_days" min="1" max=(request.duration_days) value=(request.duration_days);
                        }
                        button type="submit" { "Approve" }
                    }
                    form method="post" action={ "/requests/" (id) "/deny" } {
                        (csrf(session))
                        @let reason_id = format!("{id}-reason");
                        label for=(reason_id) { "Reason (optional, the business sees it)" }
                        input id=(reason_id) name="reason" maxlength="500";
                        button.secondary type="submit" { "Deny" }
                    }
                }
            }
        }
    };
    Ok(page(layout("Access requests", Some(session), Section::Requests, notice.text(), body)))
}

async fn request_approve(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Posted { caller, form }: Posted,
) -> PageResult {
    let request_id = parsed(&id, "request")?;
    let duration_days = match form.one("duration_days").filter(|days| !days.is_empty()) {
        Some(days) => Some(
            days.parse::<u32>()
                .map_err(|_| failed(ApiError::invalid_body("the number of days is not a whole number")))?,
        ),
        None => None,
    };
    let narrowing = crate::consent::requests::Narrowing {
        purposes: Some(form.all("purposes")),
        fields: Some(form.all("fields")),
        duration_days,
    };
    state.vault.consent().request_approve(caller.subject(), &request_id, narrowing).await.map_err(failed)?;
    Ok(see_other("/requests?notice=approved"))
}

async fn request_deny(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Posted { caller, form }: Posted,
) -> PageResult {
    let request_id = parsed(&id, "request")?;
    let reason = form.one("reason").map(str::trim).filter(|reason| !reason.is_empty()).map(str::to_owned);
    state.vault.consent().request_deny(caller.subject(), &request_id, reason).await.map_err(failed)?;
    Ok(see_other("/requests?notice=denied"))
}

// ----- sharing ------------------------------------------------------------

async fn sharing_page(
    State(state): State<AppState>,
    caller: SessionCaller,
    Query(notice): Query<NoticeQuery>,
) -> PageResult {
    let vault = &state.vault;
    let now = vault.core().clock().now_secs();
    let grants = vault.consent().grants(caller.subject()).map_err(failed)?;
    let names = business_names(&state, grants.iter().map(|g| &g.business_id))?;
    let policies = vault.policies();
    let mut by_business: BTreeMap<String, Vec<&crate::consent::GrantRecord>> = BTreeMap::new();
    for grant in &grants {
        by_business.entry(names.name(&grant.business_id)).or_default().push(grant);
    }
    let body = html! {
        @if grants.is_empty() { p { "You have not shared anything." } }
        @for (name, grants) in &by_business {
            section.business {
                h2 { (name) }
                @for grant in grants {
                    @let status = grant.status(now);
                    @let id = grant.grant_id.to_string();
                    article.grant {
                        dl {
                            dt { "Data" }
                            dd { ul { @for field in &grant.fields { li { (field_words(&policies.catalogue, field)) } } } }
                            dt { "For" }
                            dd { ul { @for purpose in &grant.purposes { li { (purpose_words(&policies, purpose)) } } } }
                        }
                        p.small {
                            @match status {
                                crate::consent::GrantStatus::Active => { "In force until " (readable_secs(grant.expires_at)) }
                                crate::consent::GrantStatus::Revoked => { "Revoked" }
                                crate::consent::GrantStatus::Expired => { "Ended " (readable_secs(grant.expires_at)) }
                            }
                        }
                        p.actions {
                            a href={ "/sharing/" (id) "/receipt" } download={ "consent-receipt-" (id) ".json" } { "Download the signed receipt" }
                            @if status == crate::consent::GrantStatus::Active {
                                " · " a href={ "/sharing/" (id) "/revoke" } { "Revoke" }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(page(layout("What you share", Some(&caller.session), Section::Sharing, notice.text(), body)))
}

async fn revoke_page(State(state): State<AppState>, caller: SessionCaller, Path(id): Path<String>) -> PageResult {
    let grant_id = parsed(&id, "grant")?;
    let grant = state.vault.consent().grant(caller.subject(), &grant_id).map_err(failed)?;
    let names = business_names(&state, std::iter::once(&grant.business_id))?;
    let body = html! {
        p { "From the moment you confirm, " strong { (names.name(&grant.business_id)) } " is refused every read this grant allowed (" (grant.fields.join(", ")) ")." }
        form method="post" action={ "/sharing/" (id) "/revoke" } {
            (csrf(&caller.session))
            button type="submit" { "Revoke now" }
            " " a href="/sharing" { "Keep it" }
        }
    };
    Ok(page(layout("Revoke this grant?", Some(&caller.session), Section::Sharing, None, body)))
}

async fn revoke(State(state): State<AppState>, Path(id): Path<String>, Posted { caller, .. }: Posted) -> PageResult {
    let grant_id = parsed(&id, "grant")?;
    state.vault.consent().grant_revoke(caller.subject(), &grant_id).await.map_err(failed)?;
    Ok(see_other("/sharing?notice=revoked"))
}

async fn receipt_download(State(state): State<AppState>, caller: SessionCaller, Path(id): Path<String>) -> PageResult {
    let grant_id = parsed(&id, "grant")?;
    let records = state.vault.consent().grant_receipts(caller.subject(), &grant_id).map_err(failed)?;
    let document = serde_json::json!({
        "records": records,
        "verifier_key": state.vault.audit().verifier_key(),
    });
    Ok(download(&format!("consent-receipt-{id}.json"), &document))
}

fn download(name: &str, document: &serde_json::Value) -> Response {
    let disposition = format!("attachment; filename=\"{}\"", name.replace(['"', '\\'], ""));
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("application/json")),
            (
                header::CONTENT_DISPOSITION,
                HeaderValue::from_str(&disposition).unwrap_or(HeaderValue::from_static("attachment")),
            ),
        ],
        serde_json::to_string_pretty(document).unwrap_or_default(),
    )
        .into_response()
}

// ----- businesses -----------------------------------------------------------

async fn businesses_page(
    State(state): State<AppState>,
    caller: SessionCaller,
    Query(notice): Query<NoticeQuery>,
) -> PageResult {
    let vault = &state.vault;
    let (directory, more) = vault.principals().principals(crate::auth::Role::Business, None, 100).map_err(failed)?;
    let relationships = vault.consent().relationships(caller.subject()).map_err(failed)?;
    let policies = vault.policies();
    let session = &caller.session;
    let body = html! {
        p { "Connect to a business to let it ask you for access. It sees you under a name of its own, never your customer id." }
        ul.directory {
            @for business in directory.iter().filter(|business| !business.disabled) {
                @let connected = relationships.iter().find(|r| r.business_id.as_ref() == business.id);
                li {
                    h2 { (business.name) }
                    p.small { "May ask for: " (business.purposes.iter().map(|p| policies.rules.purposes.get(p).map_or(p.clone(), |s| s.description.clone())).collect::<Vec<_>>().join("; ")) }
                    @match connected {
                        None => {
                            form method="post" action={ "/businesses/" (business.id) "/connect" } {
                                (csrf(session)) button type="submit" { "Connect" }
                            }
                        }
                        Some(relationship) => {
                            p.small { "Connected since " (readable_time(&relationship.connected_at)) "." }
                            form.inline method="post" action={ "/relationships/" (relationship.relationship_id) "/requests" } {
                                (csrf(session))
                                @if relationship.requests_blocked {
                                    input type="hidden" name="blocked" value="false";
                                    button.secondary type="submit" { "Let it ask me again" }
                                } @else {
                                    input type="hidden" name="blocked" value="true";
                                    button.secondary type="submit" { "Block it (no requests, no messages)" }
                                }
                            }
                            p.small { a href="/contact" { "What it may send you" } }
                            form.inline method="post" action={ "/relationships/" (relationship.relationship_id) "/disconnect" } {
                                (csrf(session)) button.secondary type="submit" { "Disconnect (revokes its grants)" }
                            }
                        }
                    }
                }
            }
        }
        @if more { p.small { "The first 100 businesses are shown." } }
    };
    Ok(page(layout("Businesses", Some(session), Section::Businesses, notice.text(), body)))
}

async fn connect(State(state): State<AppState>, Path(id): Path<String>, Posted { caller, .. }: Posted) -> PageResult {
    let business = parsed(&id, "business")?;
    state.vault.consent().relationship_create(caller.subject(), &business).await.map_err(failed)?;
    Ok(see_other("/businesses?notice=connected"))
}

async fn disconnect(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Posted { caller, .. }: Posted,
) -> PageResult {
    let relationship = parsed(&id, "relationship")?;
    state.vault.consent().relationship_end(caller.subject(), &relationship).await.map_err(failed)?;
    Ok(see_other("/businesses?notice=disconnected"))
}

async fn requests_block(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Posted { caller, form }: Posted,
) -> PageResult {
    let relationship = parsed(&id, "relationship")?;
    let blocked = form.one("blocked") == Some("true");
    state
        .vault
        .consent()
        .relationship_requests_block(caller.subject(), &relationship, blocked)
        .await
        .map_err(failed)?;
    Ok(see_other(if blocked { "/businesses?notice=blocked" } else { "/businesses?notice=unblocked" }))
}

// ----- objections -----------------------------------------------------------

async fn objections_page(
    State(state): State<AppState>,
    caller: SessionCaller,
    Query(notice): Query<NoticeQuery>,
) -> PageResult {
    let objections = state.vault.consent().objections(caller.subject()).map_err(failed)?;
    let policies = state.vault.policies();
    let body = html! {
        p { "An objection overrides every grant: no business may use your data for that purpose while it stands." }
        form method="post" action="/objections" {
            (csrf(&caller.session))
            fieldset {
                legend { "I object to my data being used for" }
                @for (name, purpose) in &policies.rules.purposes {
                    @let input_id = format!("object-{name}");
                    div.choice {
                        input type="checkbox" id=(input_id) name="purposes" value=(name) checked[objections.contains(name)];
                        label for=(input_id) { (purpose.description) " " span.name { "(" (name) ")" } }
                    }
                }
            }
            button type="submit" { "Save" }
        }
    };
    Ok(page(layout("Objections", Some(&caller.session), Section::Objections, notice.text(), body)))
}

async fn objections_save(State(state): State<AppState>, Posted { caller, form }: Posted) -> PageResult {
    state.vault.consent().objections_set(caller.subject(), form.all("purposes")).await.map_err(failed)?;
    Ok(see_other("/objections?notice=objections"))
}

// ----- access log -----------------------------------------------------------

async fn access_log_page(State(state): State<AppState>, caller: SessionCaller) -> PageResult {
    let (reads, total) = latest_reads(&state, caller.subject(), READS_SHOWN_MAX, |_| true)?;
    let policies = state.vault.policies();
    let body = html! {
        p { "Every read of your data is written in a tamper-evident log. Your browser checks each entry below against the log's signed checkpoint; "
            strong { "verified" } " means the entry is in the log the vault signed, unchanged." }
        p #checkpoint-status role="status" { "Checking the proofs…" }
        @if reads.is_empty() { p { "Nobody has read your data." } }
        @if total > reads.len() as u64 {
            p.small { "The latest " (reads.len()) " of " (total) " reads; " a href="/export" { "your export" } " holds them all." }
        }
        ol.log reversed {
            @for read in reads.iter().rev() {
                li data-index=(read.audit_index) data-business=(read.business_id.clone().unwrap_or_default())
                    data-fields=(read.fields.join(",")) data-time=(read.time) {
                    p { (read_sentence(read)) }
                    p.small {
                        @if let Some(purpose) = &read.purpose { (purpose_words(&policies, purpose)) ". " }
                        @for withheld in &read.withheld { "Withheld " (withheld.field) " (" (withheld.reason.replace('_', " ")) "). " }
                        "Log entry " (read.audit_index) ". "
                        span.proof { "not checked yet" }
                    }
                }
            }
        }
        script src="/assets/verify.js" {}
    };
    Ok(page(layout("Access log", Some(&caller.session), Section::AccessLog, None, body)))
}

/// The proofs the access-log page checks: the signed checkpoint, the
/// verifier key, and each entry's exact bytes and audit path.
async fn access_log_proofs(State(state): State<AppState>, caller: SessionCaller) -> PageResult {
    let vault = &state.vault;
    let (reads, _) = latest_reads(&state, caller.subject(), READS_SHOWN_MAX, |_| true)?;
    let indices = reads.iter().map(|read| read.audit_index);
    let (checkpoint, proofs) = vault.audit().entry_proofs_latest(vault.store(), indices).map_err(failed)?;
    let items: Vec<_> = proofs.into_iter().flatten().collect();
    let body = serde_json::json!({
        "checkpoint": checkpoint,
        "verifier_key": vault.audit().verifier_key(),
        "items": items,
    });
    Ok(([(header::CACHE_CONTROL, "no-store")], axum::Json(body)).into_response())
}

/// A consistency proof between two sizes of the log, for the page to check
/// that the checkpoint it sees extends the one it saw before.
async fn access_log_consistency(
    State(state): State<AppState>,
    _caller: SessionCaller,
    Query(query): Query<super::audit::ConsistencyQuery>,
) -> PageResult {
    Ok(super::audit::consistency(&state, &query).map_err(|error| problem_page(&error))?.into_response())
}

// ----- data -----------------------------------------------------------------

async fn data_page(
    State(state): State<AppState>,
    caller: SessionCaller,
    Query(notice): Query<NoticeQuery>,
) -> PageResult {
    let data = state.vault.subjects().data_read_own(caller.subject()).await.map_err(failed)?;
    let policies = state.vault.policies();
    let body = html! {
        p { "What the vault keeps about you, sealed. Correct or delete any of it; each change is recorded in the log (without the value)." }
        @for field in policies.catalogue.fields() {
            @let input_id = format!("field-{}", field.name);
            section.field {
                form method="post" action={ "/data/" (field.name) } {
                    (csrf(&caller.session))
                    label for=(input_id) { (field.description) " " span.name { "(" (field.name) ")" } }
                    (pages::value_input(&input_id, &field.value_type, data.get(&field.name)))
                    button type="submit" { "Save" }
                }
                @if data.contains_key(&field.name) {
                    form.inline method="post" action={ "/data/" (field.name) "/delete" } {
                        (csrf(&caller.session))
                        button.secondary type="submit" aria-label={ "Delete " (field.name) } { "Delete" }
                    }
                }
            }
        }
    };
    Ok(page(layout("My data", Some(&caller.session), Section::Data, notice.text(), body)))
}

/// The value a data form carries, as the field's type reads it.
fn form_value(value_type: &crate::policy::ValueType, form: &Form) -> Result<serde_json::Value, ApiError> {
    use crate::policy::ValueType;
    use serde_json::Value;
    let text = form.one("value").unwrap_or_default().trim().to_owned();
    let lines = |text: &str| -> Value {
        Value::Array(text.lines().map(str::trim).filter(|line| !line.is_empty()).map(Value::from).collect())
    };
    Ok(match value_type {
        ValueType::Boolean => Value::Bool(text == "true"),
        ValueType::Integer => {
            Value::from(text.parse::<i64>().map_err(|_| ApiError::invalid_body("the value is not a whole number"))?)
        }
        ValueType::StringList => lines(&text),
        ValueType::PostalAddress => {
            let mut address = serde_json::Map::new();
            address.insert("lines".to_owned(), lines(form.one("lines").unwrap_or_default()));
            for part in ["locality", "region", "postal_code", "country"] {
                if let Some(value) = form.one(part).map(str::trim).filter(|value| !value.is_empty()) {
                    address.insert(part.to_owned(), Value::from(value));
                }
            }
            Value::Object(address)
        }
        ValueType::Json => serde_json::from_str(&text).map_err(|_| ApiError::invalid_body("the value is not JSON"))?,
        _ => Value::String(text),
    })
}

async fn data_save(
    State(state): State<AppState>,
    Path(field): Path<String>,
    Posted { caller, form }: Posted,
) -> PageResult {
    let policies = state.vault.policies();
    let spec = policies.catalogue.field(&field).ok_or_else(|| failed(ApiError::not_found("field")))?;
    let value = form_value(&spec.value_type, &form).map_err(|e| problem_page(&e))?;
    let actor = crate::audit::Actor::customer(caller.subject());
    state.vault.subjects().data_put(&actor, caller.subject(), &field, &value).await.map_err(failed)?;
    Ok(see_other("/data?notice=saved"))
}

async fn data_delete(
    State(state): State<AppState>,
    Path(field): Path<String>,
    Posted { caller, .. }: Posted,
) -> PageResult {
    let actor = crate::audit::Actor::customer(caller.subject());
    state.vault.subjects().data_delete(&actor, caller.subject(), &field).await.map_err(failed)?;
    Ok(see_other("/data?notice=deleted"))
}

// ----- export and erasure -------------------------------------------------

async fn export_page(caller: SessionCaller) -> Response {
    let body = html! {
        p { "Everything the vault holds about you: your data, your connections, the requests made to you, your grants with their signed receipts, your objections and every read of your data. Each export is recorded in the log." }
        ul {
            li { a href="/export/page" { "Read it as a page" } }
            li { a href="/export/json" download="my-data.json" { "Download it as JSON" } }
        }
        h2 { "Erase me" }
        p { "Erasure destroys the key your data is sealed with, revokes every grant and ends every connection. It cannot be undone. " a href="/erase" { "Erase my account…" } }
    };
    page(layout("Export and erase", Some(&caller.session), Section::Export, None, body))
}

async fn export_json(State(state): State<AppState>, caller: SessionCaller) -> PageResult {
    let document = state.vault.rights().subject_export(caller.subject()).await.map_err(failed)?;
    let document = serde_json::to_value(&document).map_err(|error| failed(ApiError::internal(&error)))?;
    Ok(download("my-data.json", &document))
}

async fn export_readable(State(state): State<AppState>, caller: SessionCaller) -> PageResult {
    let document = state.vault.rights().subject_export(caller.subject()).await.map_err(failed)?;
    let document = serde_json::to_value(&document).map_err(|error| failed(ApiError::internal(&error)))?;
    let mut response = super::export_html::render(&document).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers
        .insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(super::export_html::CONTENT_SECURITY_POLICY));
    Ok(response)
}

async fn erase_page(caller: SessionCaller) -> Response {
    let body = html! {
        p { "This destroys the key your data is sealed with (so nobody, not even the operator, can read it again), revokes every grant, and ends every connection and this session. The log keeps the events, with ids only, so the erasure itself can be proved." }
        form method="post" action="/erase" {
            (csrf(&caller.session))
            div.choice {
                input type="checkbox" id="confirm" name="confirm" value="erase" required;
                label for="confirm" { "I understand that this cannot be undone" }
            }
            button.danger type="submit" { "Erase my account" }
        }
    };
    page(layout("Erase my account", Some(&caller.session), Section::Export, None, body))
}

async fn erase(State(state): State<AppState>, headers: HeaderMap, Posted { caller, form }: Posted) -> PageResult {
    if form.one("confirm") != Some("erase") {
        return Err(failed(ApiError::erasure_unconfirmed()).into());
    }
    let receipt = state.vault.rights().subject_erase(caller.subject()).await.map_err(failed)?;
    state.sessions.end_subject(caller.subject());
    let receipt = serde_json::to_value(&receipt).map_err(|error| failed(ApiError::internal(&error)))?;
    let encoded = format!(
        "data:application/json;base64,{}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            serde_json::to_vec_pretty(&receipt).unwrap_or_default()
        )
    );
    let body = html! {
        p { "Your account is erased. Keep this receipt: it names the log entry of the erasure and a signed checkpoint that covers it, so you can prove it happened." }
        (pages::json_block(&receipt))
        p { a href=(encoded) download="erasure-receipt.json" { "Download the receipt" } }
    };
    let mut response = page(layout("Erased", None, Section::None, None, body));
    response.headers_mut().insert(header::SET_COOKIE, session_cookie(&headers, "", true));
    Ok(response)
}

// ----- password -----------------------------------------------------------

async fn password_page(caller: SessionCaller, Query(notice): Query<NoticeQuery>) -> Response {
    page(layout(
        "Password",
        Some(&caller.session),
        Section::Account,
        notice.text(),
        password_form(&caller.session, None),
    ))
}

fn password_form(session: &Session, error: Option<&str>) -> Markup {
    html! {
        @if let Some(error) = error { p.error role="alert" { (error) } }
        form method="post" action="/password" {
            (csrf(session))
            label for="current_password" { "Current password" }
            input #current_password name="current_password" type="password" autocomplete="current-password" required maxlength="1024";
            label for="new_password" { "New password (at least 12 characters)" }
            input #new_password name="new_password" type="password" autocomplete="new-password" required minlength="12" maxlength="1024";
            button type="submit" { "Change my password" }
        }
    }
}

async fn password_change(
    State(state): State<AppState>,
    headers: HeaderMap,
    Posted { caller, form }: Posted,
) -> PageResult {
    let current = zeroize::Zeroizing::new(form.one("current_password").unwrap_or_default().to_owned());
    let new = zeroize::Zeroizing::new(form.one("new_password").unwrap_or_default().to_owned());
    let error = match state.vault.principals().password_change(caller.subject(), &current, &new).await {
        Ok(()) => {
            // Every session of hers ends; this one starts afresh.
            state.sessions.end_subject(caller.subject());
            return Ok(signed_in(&state, &headers, caller.subject(), "/password?notice=password"));
        }
        Err(crate::principals::PrincipalError::BadCredentials) => "That is not your current password.".to_owned(),
        Err(crate::principals::PrincipalError::Invalid(detail)) => detail.replace('`', ""),
        Err(error) => return Err(failed(error).into()),
    };
    let markup =
        layout("Password", Some(&caller.session), Section::Account, None, password_form(&caller.session, Some(&error)));
    Ok((StatusCode::BAD_REQUEST, page(markup)).into_response())
}
