//! The privacy center's inbox and contact pages: messages from businesses
//! (opened through the same audited read as `GET /v1/me/inbox`), her
//! replies and feedback, the vault's notices, and her contact preferences
//! per business.

use axum::extract::{Path, Query, State};
use maud::{Markup, html};
use serde::Deserialize;

use super::pages::{Section, csrf, field_words, layout, purpose_words, readable_time};
use super::{
    AppState, NoticeQuery, PageResult, Posted, SessionCaller, business_names, failed, page, parsed, see_other,
};
use crate::contact::{
    BODY_BYTES_MAX, CAP_MESSAGES_MAX, Cap, Channel, INBOX_ITEMS_MAX, InboxView, ItemType, NoticeKind, Period,
    Preferences, QuietHours, Recipient,
};
use crate::ids::MessageId;
use crate::policy::Policies;

/// Items shown on one inbox page.
const INBOX_PAGE_ITEMS: usize = 25;

/// The query of the inbox page: where the page starts.
#[derive(Debug, Default, Deserialize)]
pub(super) struct InboxQuery {
    after: Option<String>,
    notice: Option<String>,
}

/// `GET /inbox`: messages, what she wrote, notices, newest first, with a
/// reply form under each message and a form to write to a business.
pub(super) async fn inbox_page(
    State(state): State<AppState>,
    caller: SessionCaller,
    Query(query): Query<InboxQuery>,
) -> PageResult {
    let subject = caller.subject();
    let after: Option<MessageId> = query.after.as_deref().and_then(|after| after.parse().ok());
    let contact = state.vault.contact();
    let inbox = contact.inbox(subject, after.as_ref(), INBOX_PAGE_ITEMS).await.map_err(failed)?;
    let relationships = state.vault.consent().relationships(subject).map_err(failed)?;
    let names = business_names(
        &state,
        inbox
            .items
            .iter()
            .filter_map(|view| view.item.business_id.as_ref())
            .chain(relationships.iter().map(|r| &r.business_id)),
    )?;
    let policies = state.vault.policies();
    let session = &caller.session;
    let notice = NoticeQuery { notice: query.notice };
    let body = html! {
        p { "Businesses you are connected to reach you here, never at an address of yours, and only with the kinds of message you take from them. "
            a href="/contact" { "Choose what each may send you" } "." }
        @if !relationships.is_empty() {
            details.write {
                summary { "Write to a business" }
                form method="post" action="/inbox/write" {
                    (csrf(session))
                    label for="write-business" { "To" }
                    select #write-business name="relationship_id" required {
                        @for relationship in &relationships {
                            option value=(relationship.relationship_id) { (names.name(&relationship.business_id)) }
                        }
                    }
                    label for="write-body" { "Your message" }
                    textarea #write-body name="body" rows="4" required maxlength=(BODY_BYTES_MAX) {}
                    button type="submit" { "Send" }
                }
            }
        }
        @if inbox.items.is_empty() {
            p { "Your inbox is empty." }
        } @else {
            ol.inbox {
                @for view in &inbox.items {
                    @let answerable = relationships.iter().any(|relationship| {
                        Some(&relationship.business_id) == view.item.business_id.as_ref()
                            && Some(&relationship.pairwise_id) == view.item.pairwise_id.as_ref()
                    });
                    li id={ "m-" (view.item.message_id) } { (item_markup(view, answerable, &names, &policies, session)) }
                }
            }
        }
        @if let Some(next) = &inbox.next {
            p { a href={ "/inbox?after=" (next) } { "Older messages" } }
        }
        p.small { "Your inbox holds up to " (INBOX_ITEMS_MAX) " items; delete what you no longer need. Opening your messages is recorded in the audit log, like every read of your data." }
    };
    Ok(page(layout("Inbox", Some(session), Section::Inbox, notice.text(), body)))
}

/// One inbox item: a message with its reply form (when she is still
/// connected under the id it was sent to, `answerable`), what she wrote, or
/// a notice in words.
fn item_markup(
    view: &InboxView,
    answerable: bool,
    names: &super::Names,
    policies: &Policies,
    session: &crate::auth::session::Session,
) -> Markup {
    let item = &view.item;
    let business = item.business_id.as_ref().map(|id| names.name(id)).unwrap_or_default();
    let kind = item.kind.as_deref().map(|kind| {
        policies.rules.message_kinds.get(kind).map_or_else(|| kind.to_owned(), |spec| spec.description.clone())
    });
    html! {
        @match item.item_type {
            ItemType::Message => {
                p.small { strong { (business) } " · " (kind.unwrap_or_default()) " · " (readable_time(&item.time)) }
                @if let Some(text) = &view.text {
                    @if let Some(title) = &text.title { h2 { (title) } }
                    p.body { (text.body) }
                }
                @if answerable {
                    form method="post" action={ "/inbox/" (item.message_id) "/reply" } {
                        (csrf(session))
                        label for={ "reply-" (item.message_id) } { "Reply to " (business) }
                        textarea id={ "reply-" (item.message_id) } name="body" rows="2" required maxlength=(BODY_BYTES_MAX) {}
                        button type="submit" { "Reply" }
                    }
                } @else {
                    p.small { "You disconnected from " (business) " since this message came: it can no longer be answered." }
                }
            }
            ItemType::Sent => {
                p.small { "You wrote to " strong { (business) } " · " (readable_time(&item.time))
                    @if item.in_reply_to.is_some() { " · a reply" } }
                @if let Some(text) = &view.text {
                    @if let Some(title) = &text.title { h2 { (title) } }
                    p.body { (text.body) }
                }
            }
            ItemType::Notice => {
                p.small { "From the vault · " (readable_time(&item.time)) }
                p { (notice_sentence(item, &business, policies)) }
            }
        }
        form.inline method="post" action={ "/inbox/" (item.message_id) "/delete" } {
            (csrf(session)) button.secondary type="submit" { "Delete" }
        }
    }
}

/// A notice in plain words.
fn notice_sentence(item: &crate::contact::Item, business: &str, policies: &Policies) -> Markup {
    match item.notice {
        Some(NoticeKind::AccessRequest) => html! {
            strong { (business) } " asks you for access."
            @if let Some(purpose) = &item.purpose { " Purpose: " (purpose_words(policies, purpose)) "." }
            " " a href="/requests" { "Answer" }
        },
        Some(NoticeKind::GrantExpiring) => html! {
            "What you share with " strong { (business) } " ends on "
            (item.expires_at.as_deref().map(readable_time).unwrap_or_default()) ". "
            a href="/sharing" { "See what you share" }
        },
        Some(NoticeKind::SpecialRead) => html! {
            strong { (business) } " read sensitive data of yours: "
            @for (at, field) in item.fields.iter().enumerate() {
                @if at > 0 { ", " }
                (field_words(&policies.catalogue, field))
            }
            "."
            @if let Some(purpose) = &item.purpose { " Purpose: " (purpose_words(policies, purpose)) "." }
            " " a href="/access-log" { "See the access log" }
        },
        None => html! { "A notice." },
    }
}

/// `POST /inbox/{id}/reply`.
pub(super) async fn inbox_reply(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Posted { caller, form }: Posted,
) -> PageResult {
    let message: MessageId = parsed(&id, "message")?;
    let body = form.one("body").unwrap_or_default().to_owned();
    state
        .vault
        .contact()
        .message_write(caller.subject(), Recipient::ReplyTo(message), None, body)
        .await
        .map_err(failed)?;
    Ok(see_other("/inbox?notice=replied"))
}

/// `POST /inbox/write`: feedback to a business she is connected to.
pub(super) async fn inbox_write(State(state): State<AppState>, Posted { caller, form }: Posted) -> PageResult {
    let relationship: crate::ids::RelationshipId =
        parsed(form.one("relationship_id").unwrap_or_default(), "relationship")?;
    let business = state.vault.consent().relationship(caller.subject(), &relationship).map_err(failed)?.business_id;
    let body = form.one("body").unwrap_or_default().to_owned();
    state
        .vault
        .contact()
        .message_write(caller.subject(), Recipient::Business(business), None, body)
        .await
        .map_err(failed)?;
    Ok(see_other("/inbox?notice=written"))
}

/// `POST /inbox/{id}/delete`.
pub(super) async fn inbox_delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Posted { caller, .. }: Posted,
) -> PageResult {
    let message: MessageId = parsed(&id, "message")?;
    state.vault.contact().inbox_delete(caller.subject(), &message).await.map_err(failed)?;
    Ok(see_other("/inbox?notice=message_deleted"))
}

/// `GET /contact`: per business she is connected to, what it may send her.
pub(super) async fn contact_page(
    State(state): State<AppState>,
    caller: SessionCaller,
    Query(notice): Query<NoticeQuery>,
) -> PageResult {
    let all = state.vault.contact().preferences_all(caller.subject()).map_err(failed)?;
    let names = business_names(&state, all.iter().map(|(relationship, _)| &relationship.business_id))?;
    let policies = state.vault.policies();
    let session = &caller.session;
    let zones: Vec<String> = jiff::tz::db().available().map(|name| name.as_str().to_owned()).collect();
    let body = html! {
        p { "Choose, business by business, what may reach your inbox: which kinds of message, how many, and never during your quiet hours. Until you choose, only service messages reach you, five a week at most. An objection to a purpose stops its messages too." }
        @if all.is_empty() {
            p { "You are not connected to any business. " a href="/businesses" { "Find businesses" } }
        }
        datalist #time-zones { @for zone in &zones { option value=(zone) {} } }
        @for (relationship, preferences) in &all {
            @let id = relationship.relationship_id.to_string();
            section {
                h2 { (names.name(&relationship.business_id)) }
                @if relationship.requests_blocked {
                    p.error { "You blocked this business: it can send you nothing until you let it ask you again on the " a href="/businesses" { "businesses page" } "." }
                }
                form method="post" action={ "/contact/" (id) } {
                    (csrf(session))
                    fieldset {
                        legend { "It may send me" }
                        @for (name, kind) in &policies.rules.message_kinds {
                            @let input_id = format!("kind-{id}-{name}");
                            div.choice {
                                input type="checkbox" id=(input_id) name="kinds" value=(name) checked[preferences.kinds.contains(name)];
                                label for=(input_id) { (kind.description) " " span.name { "(" (name) ")" } }
                            }
                        }
                    }
                    fieldset {
                        legend { "At most" }
                        div.row {
                            input type="number" name="cap_messages" min="0" max=(CAP_MESSAGES_MAX) value=(preferences.cap.messages) aria-label="Messages" required;
                            select name="cap_period" aria-label="Period" {
                                @for period in [Period::Day, Period::Week, Period::Month] {
                                    option value=(period.as_str()) selected[preferences.cap.period == period] { "messages a " (period.as_str()) }
                                }
                            }
                        }
                    }
                    fieldset {
                        legend { "Quiet hours (leave empty for none)" }
                        @let quiet = preferences.quiet_hours.as_ref();
                        div.row {
                            label for={ "from-" (id) } { "From" }
                            input type="time" id={ "from-" (id) } name="quiet_from" value=(quiet.map(|q| q.from.as_str()).unwrap_or_default());
                            label for={ "to-" (id) } { "to" }
                            input type="time" id={ "to-" (id) } name="quiet_to" value=(quiet.map(|q| q.to.as_str()).unwrap_or_default());
                        }
                        label for={ "zone-" (id) } { "Your time zone" }
                        input id={ "zone-" (id) } name="time_zone" list="time-zones" maxlength="64" spellcheck="false"
                            value=(quiet.map_or("UTC", |q| q.time_zone.as_str()));
                    }
                    label for={ "channel-" (id) } { "How I hear of its messages" }
                    select id={ "channel-" (id) } name="channel" {
                        option value="inbox" selected[preferences.channel == Channel::Inbox] { "In my inbox" }
                        option value="webhook" selected[preferences.channel == Channel::Webhook] { "In my inbox, and a notice to my webhook endpoints" }
                    }
                    button type="submit" { "Save" }
                }
            }
        }
    };
    Ok(page(layout("Contact preferences", Some(session), Section::Inbox, notice.text(), body)))
}

/// `POST /contact/{relationship_id}`.
pub(super) async fn contact_save(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Posted { caller, form }: Posted,
) -> PageResult {
    let relationship = parsed(&id, "relationship")?;
    let invalid = |detail: &str| failed(crate::contact::ContactError::Invalid(detail.to_owned()));
    let messages = form
        .one("cap_messages")
        .and_then(|text| text.trim().parse::<u32>().ok())
        .ok_or_else(|| invalid("the number of messages must be a whole number"))?;
    let period = match form.one("cap_period") {
        Some("day") => Period::Day,
        Some("week") => Period::Week,
        Some("month") => Period::Month,
        _ => return Err(invalid("the period must be a day, a week or a month").into()),
    };
    let quiet_hours = match (form.one("quiet_from").unwrap_or_default(), form.one("quiet_to").unwrap_or_default()) {
        ("", "") => None,
        (from, to) => Some(QuietHours {
            from: from.to_owned(),
            to: to.to_owned(),
            time_zone: form.one("time_zone").unwrap_or("UTC").trim().to_owned(),
        }),
    };
    let channel = match form.one("channel") {
        Some("webhook") => Channel::Webhook,
        _ => Channel::Inbox,
    };
    let preferences =
        Preferences { kinds: form.all("kinds"), cap: Cap { messages, period }, quiet_hours, channel, updated_at: None };
    state.vault.contact().preferences_set(caller.subject(), &relationship, preferences).await.map_err(failed)?;
    Ok(see_other("/contact?notice=contact"))
}
