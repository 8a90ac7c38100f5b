//! The privacy center's markup, written with maud, which escapes every
//! value it inserts: a business's name, a justification or a field value
//! can never become markup. No page loads anything from elsewhere; the one
//! script (`verify.js`) checks proofs on the access-log page.

use maud::{DOCTYPE, Markup, html};

use crate::auth::session::Session;
use crate::policy::{Catalogue, Policies, ValueType};

/// The sections of the center, for its navigation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// What needs her attention.
    Home,
    /// Messages, notices, contact preferences.
    Inbox,
    /// Access requests.
    Requests,
    /// Grants, by business.
    Sharing,
    /// The directory and her connections.
    Businesses,
    /// Purposes she objects to.
    Objections,
    /// Who read what.
    AccessLog,
    /// Her field values.
    Data,
    /// Export and erasure.
    Export,
    /// Her password.
    Account,
    /// Signed out.
    None,
}

const SECTIONS: [(Section, &str, &str); 10] = [
    (Section::Home, "/", "Home"),
    (Section::Inbox, "/inbox", "Inbox"),
    (Section::Requests, "/requests", "Requests"),
    (Section::Sharing, "/sharing", "Sharing"),
    (Section::Businesses, "/businesses", "Businesses"),
    (Section::Objections, "/objections", "Objections"),
    (Section::AccessLog, "/access-log", "Access log"),
    (Section::Data, "/data", "My data"),
    (Section::Export, "/export", "Export & erase"),
    (Section::Account, "/password", "Password"),
];

/// A page of the center: its title, the signed-in session (for the
/// navigation and the sign-out form), a notice, and its content.
pub fn layout(title: &str, session: Option<&Session>, section: Section, notice: Option<&str>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Privacy center" }
                link rel="stylesheet" href="/assets/center.css";
                link rel="icon" href="/favicon.ico" type="image/svg+xml";
            }
            body {
                header {
                    a.brand href="/" { "Privacy center" }
                    @if let Some(session) = session {
                        nav aria-label="Sections" {
                            ul {
                                @for (item, href, label) in SECTIONS {
                                    li {
                                        @if item == section {
                                            a href=(href) aria-current="page" { (label) }
                                        } @else {
                                            a href=(href) { (label) }
                                        }
                                    }
                                }
                            }
                        }
                        form.sign-out method="post" action="/sign-out" {
                            input type="hidden" name="csrf" value=(session.csrf);
                            button.secondary type="submit" { "Sign out" }
                        }
                    }
                }
                main {
                    h1 { (title) }
                    @if let Some(notice) = notice {
                        p.notice role="status" { (notice) }
                    }
                    (body)
                }
            }
        }
    }
}

/// The hidden CSRF field every form of a session carries.
pub fn csrf(session: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf); }
}

/// A purpose in words: its description, then its name.
pub fn purpose_words(policies: &Policies, purpose: &str) -> Markup {
    match policies.rules.purposes.get(purpose) {
        Some(spec) if !spec.description.is_empty() => html! { (spec.description) " " span.name { "(" (purpose) ")" } },
        _ => html! { (purpose) },
    }
}

/// A field in words: its description, then its name.
pub fn field_words(catalogue: &Catalogue, field: &str) -> Markup {
    match catalogue.field(field) {
        Some(spec) if !spec.description.is_empty() => html! { (spec.description) " " span.name { "(" (field) ")" } },
        _ => html! { (field) },
    }
}

/// An RFC 3339 time as people read it: `2 December 2026, 06:30 UTC`.
pub fn readable_time(rfc3339: &str) -> String {
    time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .ok()
        .and_then(readable)
        .unwrap_or_else(|| rfc3339.to_owned())
}

/// A time in Unix seconds as people read it.
pub fn readable_secs(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs).ok().and_then(readable).unwrap_or_else(|| secs.to_string())
}

fn readable(at: time::OffsetDateTime) -> Option<String> {
    let format = time::macros::format_description!("[day padding:none] [month repr:long] [year], [hour]:[minute] UTC");
    at.to_offset(time::UtcOffset::UTC).format(&format).ok()
}

/// The sign-in or sign-up form, with a message when the last try failed.
pub fn sign_in(error: Option<&str>) -> Markup {
    let body = html! {
        @if let Some(error) = error { p.error role="alert" { (error) } }
        form method="post" action="/sign-in" {
            label for="customer_id" { "Customer id" }
            input #customer_id name="customer_id" autocomplete="username" required spellcheck="false"
                inputmode="latin" maxlength="64";
            label for="password" { "Password" }
            input #password name="password" type="password" autocomplete="current-password" required maxlength="1024";
            button type="submit" { "Sign in" }
        }
        p { "New here? " a href="/sign-up" { "Create an account" } "." }
    };
    layout("Sign in", None, Section::None, None, body)
}

/// The sign-up form.
pub fn sign_up(error: Option<&str>) -> Markup {
    let body = html! {
        @if let Some(error) = error { p.error role="alert" { (error) } }
        p { "Your account keeps your personal data sealed. You decide which business may use which of it, for what, until when." }
        form method="post" action="/sign-up" {
            label for="password" { "Password (at least 12 characters)" }
            input #password name="password" type="password" autocomplete="new-password" required minlength="12" maxlength="1024";
            label for="password_again" { "The same password again" }
            input #password_again name="password_again" type="password" autocomplete="new-password" required minlength="12" maxlength="1024";
            button type="submit" { "Create my account" }
        }
        p { "Have an account? " a href="/sign-in" { "Sign in" } "." }
    };
    layout("Create an account", None, Section::None, None, body)
}

/// An input for one field's value, typed as the catalogue types it; `name`
/// is the form member, `value` the current value, if any.
pub fn value_input(id: &str, value_type: &ValueType, value: Option<&serde_json::Value>) -> Markup {
    let text = value.and_then(serde_json::Value::as_str).unwrap_or_default().to_owned();
    match value_type {
        ValueType::Email => html! { input id=(id) name="value" type="email" value=(text) autocomplete="email"; },
        ValueType::Phone => html! { input id=(id) name="value" type="tel" value=(text) autocomplete="tel"; },
        ValueType::Date => html! { input id=(id) name="value" type="date" value=(text); },
        ValueType::Country => {
            html! { input id=(id) name="value" value=(text) pattern="[A-Z]{2}" maxlength="2" autocomplete="country"; }
        }
        ValueType::Boolean => {
            let yes = value.and_then(serde_json::Value::as_bool);
            html! {
                select id=(id) name="value" {
                    option value="true" selected[yes == Some(true)] { "Yes" }
                    option value="false" selected[yes == Some(false)] { "No" }
                }
            }
        }
        ValueType::Integer => {
            let number = value.and_then(serde_json::Value::as_i64).map(|n| n.to_string()).unwrap_or_default();
            html! { input id=(id) name="value" type="number" step="1" value=(number); }
        }
        ValueType::Enum(options) => html! {
            select id=(id) name="value" {
                @for option in options {
                    option value=(option) selected[text == *option] { (option) }
                }
            }
        },
        ValueType::StringList => {
            let lines: Vec<&str> =
                value.and_then(serde_json::Value::as_array).into_iter().flatten().filter_map(|v| v.as_str()).collect();
            html! { textarea id=(id) name="value" rows="3" { (lines.join("\n")) } }
        }
        ValueType::PostalAddress => {
            let part = |name: &str| {
                value.and_then(|v| v.get(name)).and_then(serde_json::Value::as_str).unwrap_or_default().to_owned()
            };
            let lines: Vec<&str> = value
                .and_then(|v| v.get("lines"))
                .and_then(serde_json::Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str())
                .collect();
            html! {
                textarea id=(id) name="lines" rows="2" aria-label="Street lines" placeholder="Street and number" { (lines.join("\n")) }
                input name="locality" value=(part("locality")) aria-label="Town or city" placeholder="Town or city";
                input name="region" value=(part("region")) aria-label="Region" placeholder="Region";
                input name="postal_code" value=(part("postal_code")) aria-label="Postal code" placeholder="Postal code";
                input name="country" value=(part("country")) aria-label="Country code" placeholder="Country (2 letters)" pattern="[A-Z]{2}" maxlength="2";
            }
        }
        ValueType::Json => {
            let json = value.map(serde_json::Value::to_string).unwrap_or_default();
            html! { textarea id=(id) name="value" rows="3" spellcheck="false" { (json) } }
        }
        ValueType::String | ValueType::Language => html! { input id=(id) name="value" value=(text); },
    }
}

/// The script of the access-log page (served from `/assets/verify.js`).
pub const VERIFY_JS: &str = include_str!("verify.js");

/// The center's icon: a shield.
pub const ICON_SVG: &str = "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 32 32\"><path d=\"M16 2 4 7v8c0 7 5 12 12 15 7-3 12-8 12-15V7z\" fill=\"#0b5cad\"/><path d=\"m10 16 4 4 8-8\" stroke=\"#fff\" stroke-width=\"3\" fill=\"none\"/></svg>";

/// The style sheet of every page (served from `/assets/center.css`).
pub const CENTER_CSS: &str = include_str!("center.css");

/// A block of JSON for a person to read and keep.
pub fn json_block(value: &serde_json::Value) -> Markup {
    let text = serde_json::to_string_pretty(value).unwrap_or_default();
    html! { pre.json { (text) } }
}
