//! The human-readable form of `GET /v1/me/export`: the same export document
//! as the JSON answer, rendered as one self-contained HTML page for the
//! customer to read or print.
//!
//! Every value that came from the store or a client (field values, ids, a
//! business's justification, a denial reason) goes through [`escape`], so
//! no stored text can become markup; the page loads nothing and runs no
//! script, and the response's `Content-Security-Policy` forbids both anyway.
//! Which form a client gets is decided by [`wants_html`] from its `Accept`
//! header; JSON is the default.

use std::fmt::Write as _;

use serde_json::Value;

/// The `Content-Security-Policy` of the page: nothing may load, run, frame
/// it or be submitted from it; only its own inline style applies.
pub const CONTENT_SECURITY_POLICY: &str =
    "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `text` with the five characters that are markup in HTML text or in a
/// quoted attribute replaced by character references.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            other => out.push(other),
        }
    }
    out
}

/// Which form of the export an `Accept` header asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportForm {
    /// `application/json` (also for no `Accept`, `*/*`, or a tie).
    Json,
    /// `text/html`, preferred over JSON.
    Html,
    /// Neither form is acceptable.
    Neither,
}

/// Chooses the export's form from an `Accept` header (RFC 9110 §12.5.1): the
/// most specific media range that matches each form gives its quality; HTML
/// only when the client prefers it strictly. An unparsable quality counts as
/// 1, so a sloppy client still gets an answer.
pub fn wants_html(accept: Option<&str>) -> ExportForm {
    let Some(accept) = accept.map(str::trim).filter(|accept| !accept.is_empty()) else {
        return ExportForm::Json;
    };
    let quality = |kind: &str, subtype: &str| -> f32 {
        let mut best: Option<(u8, f32)> = None;
        for range in accept.split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|param| param.split_once('='))
                .find(|(name, _)| name.trim().eq_ignore_ascii_case("q"))
                .map_or(1.0, |(_, value)| value.trim().parse::<f32>().unwrap_or(1.0));
            let specificity = match media.split_once('/') {
                Some((k, s)) if k == kind && s == subtype => 3,
                Some((k, "*")) if k == kind => 2,
                Some(("*", "*")) => 1,
                _ => continue,
            };
            if best.is_none_or(|(seen, _)| specificity > seen) {
                best = Some((specificity, q));
            }
        }
        best.map_or(0.0, |(_, q)| q)
    };
    let (json, html) = (quality("application", "json"), quality("text", "html"));
    if json <= 0.0 && html <= 0.0 {
        ExportForm::Neither
    } else if html > json {
        ExportForm::Html
    } else {
        ExportForm::Json
    }
}

/// A value as escaped text: strings as they are, anything else as compact
/// JSON, a missing value as an empty cell.
fn text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(text) => escape(text),
        Value::Array(items) if items.iter().all(Value::is_string) => {
            escape(&items.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "))
        }
        other => escape(&other.to_string()),
    }
}

/// Unix seconds as RFC 3339 (escaped), or the value as text.
fn time(value: &Value) -> String {
    match value.as_i64().and_then(|secs| time::OffsetDateTime::from_unix_timestamp(secs).ok()) {
        Some(at) => escape(&crate::clock::rfc3339(at)),
        None => text(value),
    }
}

/// The items of the array at `key`, or none.
fn items<'a>(document: &'a Value, key: &str) -> &'a [Value] {
    document.get(key).and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

/// One section: a heading, then a table of `rows` (cells already escaped)
/// or a line saying there is nothing.
fn section(out: &mut String, id: &str, title: &str, intro: &str, headers: &[&str], rows: Vec<Vec<String>>) {
    // Writing to a String cannot fail.
    let _ = write!(out, "<section id=\"{id}\"><h2>{title}</h2><p>{intro}</p>");
    if rows.is_empty() {
        out.push_str("<p class=\"none\">None.</p></section>");
        return;
    }
    out.push_str("<table><thead><tr>");
    for header in headers {
        let _ = write!(out, "<th scope=\"col\">{header}</th>");
    }
    out.push_str("</tr></thead><tbody>");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{cell}</td>");
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></section>");
}

/// The export document (as `Rights::subject_export` makes it) as an HTML page.
pub fn render(document: &Value) -> String {
    let mut out = String::with_capacity(16 * 1024);
    out.push_str(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Everything held about you</title><style>\
         body{font-family:system-ui,sans-serif;margin:2rem;max-width:72rem;color:#111}\
         table{border-collapse:collapse;width:100%;margin:.5rem 0 1.5rem}\
         th,td{border:1px solid #bbb;padding:.3rem .5rem;text-align:left;vertical-align:top}\
         th{background:#eee}td{overflow-wrap:anywhere}.none{color:#555}\
         pre{white-space:pre-wrap;font-size:.8rem}</style></head><body>",
    );
    let _ = write!(
        out,
        "<h1>Everything held about you</h1><p>Customer id <code>{}</code>. This page is the same export as the \
         JSON form of <code>GET /v1/me/export</code>; the export itself is recorded in the audit log.</p>",
        text(document.get("subject").unwrap_or(&Value::Null))
    );

    let data = document.get("data").and_then(Value::as_object).map(|data| {
        data.iter().map(|(field, value)| vec![format!("<code>{}</code>", escape(field)), text(value)]).collect()
    });
    section(
        &mut out,
        "data",
        "My data",
        "The values you stored, as the vault holds them.",
        &["Field", "Value"],
        data.unwrap_or_default(),
    );

    let relationships = items(document, "relationships")
        .iter()
        .map(|r| {
            vec![
                text(&r["business_id"]),
                text(&r["pairwise_id"]),
                text(&r["connected_at"]),
                text(&r["relationship_id"]),
            ]
        })
        .collect();
    section(
        &mut out,
        "relationships",
        "Relationships",
        "Businesses you are connected to, and the id each of them knows you by.",
        &["Business", "The business's id for you", "Connected at", "Relationship id"],
        relationships,
    );

    let requests = items(document, "access_requests")
        .iter()
        .map(|r| {
            vec![
                text(&r["request_id"]),
                text(&r["business_id"]),
                text(&r["purposes"]),
                text(&r["fields"]),
                text(&r["duration_days"]),
                text(&r["justification"]),
                text(&r["benefit"]),
                text(&r["status"]),
                time(&r["created_at"]),
                time(&r["expires_at"]),
                text(&r["reason"]),
                text(&r["grant_id"]),
            ]
        })
        .collect();
    section(
        &mut out,
        "access-requests",
        "Access requests",
        "What businesses asked you for, why, and how you answered.",
        &[
            "Request",
            "Business",
            "Purposes",
            "Fields",
            "Days",
            "Why",
            "What you get",
            "Status",
            "Asked at",
            "Expires at",
            "Your reason",
            "Grant",
        ],
        requests,
    );

    let grants = items(document, "grants")
        .iter()
        .map(|item| {
            let grant = &item["grant"];
            let receipts: String = items(item, "receipts")
                .iter()
                .map(|record| {
                    format!(
                        "<details><summary>{} ({})</summary><pre>{}</pre></details>",
                        text(&record["receipt"]["consentReceiptID"]),
                        text(&record["receipt"]["recordType"]),
                        text(&record["signed_note"])
                    )
                })
                .collect();
            vec![
                text(&grant["grant_id"]),
                text(&grant["business_id"]),
                text(&grant["purposes"]),
                text(&grant["fields"]),
                time(&grant["starts_at"]),
                time(&grant["expires_at"]),
                text(&item["status"]),
                text(&grant["audit_index"]),
                receipts,
            ]
        })
        .collect();
    section(
        &mut out,
        "grants",
        "Grants",
        "Your consents: which business may use which fields, for what, until when; each with its signed receipt.",
        &["Grant", "Business", "Purposes", "Fields", "From", "Until", "Status", "Audit index", "Signed receipts"],
        grants,
    );

    let objections = items(document, "objections").iter().map(|purpose| vec![text(purpose)]).collect();
    section(
        &mut out,
        "objections",
        "Objections",
        "Purposes your data is never used for, whatever a grant says.",
        &["Purpose"],
        objections,
    );

    let access_log = items(document, "access_log")
        .iter()
        .map(|read| {
            let withheld = read
                .get("withheld")
                .and_then(Value::as_array)
                .map(|withheld| {
                    withheld
                        .iter()
                        .map(|w| format!("{}: {}", text(&w["field"]), text(&w["reason"])))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            vec![
                text(&read["audit_index"]),
                text(&read["time"]),
                text(&read["role"]),
                text(&read["business_id"]),
                text(&read["purpose"]),
                text(&read["fields"]),
                text(&read["decision"]),
                withheld,
            ]
        })
        .collect();
    section(
        &mut out,
        "access-log",
        "Access log",
        "Every read of your data, by you or a business, with its place in the audit log.",
        &["Audit index", "Time", "Who", "Business", "Purpose", "Fields released", "Decision", "Withheld (reason)"],
        access_log,
    );

    let inbox = items(document, "inbox")
        .iter()
        .map(|item| {
            let title = item.pointer("/text/title").map(text).unwrap_or_default();
            let body = item.pointer("/text/body").map(text).unwrap_or_default();
            vec![
                text(&item["time"]),
                text(&item["type"]),
                text(&item["business_id"]),
                text(item.get("kind").or_else(|| item.get("notice")).unwrap_or(&Value::Null)),
                title,
                body,
                text(&item["audit_index"]),
            ]
        })
        .collect();
    section(
        &mut out,
        "inbox",
        "Inbox",
        "Messages businesses sent you, what you wrote to them, and the vault's notices to you.",
        &["Time", "Type", "Business", "Kind", "Title", "Text", "Audit index"],
        inbox,
    );

    let contact = items(document, "contact_preferences")
        .iter()
        .map(|item| {
            let preferences = &item["preferences"];
            let quiet = preferences
                .get("quiet_hours")
                .filter(|quiet| !quiet.is_null())
                .map(|quiet| format!("{}–{} {}", text(&quiet["from"]), text(&quiet["to"]), text(&quiet["time_zone"])));
            vec![
                text(&item["business_id"]),
                text(&preferences["kinds"]),
                format!("{} a {}", text(&preferences["cap"]["messages"]), text(&preferences["cap"]["period"])),
                quiet.unwrap_or_default(),
                text(&preferences["channel"]),
            ]
        })
        .collect();
    section(
        &mut out,
        "contact",
        "Contact preferences",
        "What each business you are connected to may send you.",
        &["Business", "Kinds", "At most", "Quiet hours", "Channel"],
        contact,
    );
    out.push_str("</body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn escape_neutralises_markup_quotes_and_ampersands() {
        assert_eq!(escape("<script>alert(1)</script>"), "&lt;script&gt;alert(1)&lt;/script&gt;");
        assert_eq!(escape("\"double\" and 'single'"), "&quot;double&quot; and &#39;single&#39;");
        assert_eq!(escape("fish & chips &amp;"), "fish &amp; chips &amp;amp;");
        assert_eq!(escape("plain text, ünïcødé"), "plain text, ünïcødé");
        assert_eq!(escape(""), "");
    }

    #[test]
    fn json_is_the_default_and_html_only_when_preferred() {
        let cases = [
            (None, ExportForm::Json),
            (Some(""), ExportForm::Json),
            (Some("*/*"), ExportForm::Json),
            (Some("application/json"), ExportForm::Json),
            (Some("text/html"), ExportForm::Html),
            (Some("TEXT/HTML; charset=utf-8"), ExportForm::Html),
            (Some("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"), ExportForm::Html),
            (Some("application/json, text/html"), ExportForm::Json),
            (Some("application/json;q=0.5, text/html"), ExportForm::Html),
            (Some("text/html;q=0, */*"), ExportForm::Json),
            (Some("text/*"), ExportForm::Html),
            (Some("image/png"), ExportForm::Neither),
            (Some("application/json;q=0"), ExportForm::Neither),
        ];
        for (accept, form) in cases {
            assert_eq!(wants_html(accept), form, "{accept:?}");
        }
    }

    #[test]
    fn rendering_escapes_every_stored_text() {
        let hostile = "<script>alert(\"x\")</script> & 'y'";
        let document = json!({
            "subject": "0123",
            "data": {"given_name": hostile, "marketing_topics": [hostile]},
            "relationships": [{"business_id": hostile, "pairwise_id": "p", "connected_at": "t", "relationship_id": "r"}],
            "access_requests": [{"request_id": "q", "business_id": "b", "purposes": ["marketing"], "fields": ["email"],
                                 "duration_days": 30, "justification": hostile, "benefit": hostile, "status": "denied",
                                 "created_at": 0, "expires_at": 86400, "reason": hostile}],
            "grants": [{"grant": {"grant_id": "g", "business_id": "b", "purposes": ["marketing"], "fields": ["email"],
                                  "starts_at": 0, "expires_at": 1, "audit_index": 7},
                        "status": "active",
                        "receipts": [{"receipt": {"consentReceiptID": hostile, "recordType": "given"},
                                      "signed_note": hostile}]}],
            "objections": [hostile],
            "access_log": [{"audit_index": 9, "time": "t", "role": "business", "business_id": hostile,
                            "purpose": "marketing", "fields": [], "decision": "deny",
                            "withheld": [{"field": "email", "reason": hostile}]}],
            "inbox": [{"message_id": "m", "type": "message", "business_id": "b", "kind": "service", "time": "t",
                       "audit_index": 3, "text": {"title": hostile, "body": hostile}}],
            "contact_preferences": [{"business_id": hostile, "business_name": "n",
                                     "preferences": {"kinds": ["service"], "cap": {"messages": 5, "period": "week"},
                                                     "channel": "inbox"}}],
        });
        let page = render(&document);
        assert!(!page.contains("<script"), "{page}");
        assert!(!page.contains("'y'"), "{page}");
        assert_eq!(
            page.matches("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;").count(),
            14,
            "{page}"
        );
        for id in ["data", "relationships", "access-requests", "grants", "objections", "access-log", "inbox", "contact"]
        {
            assert!(page.contains(&format!("<section id=\"{id}\">")), "{id}");
        }
        assert!(page.contains("1970-01-02T00:00:00Z"), "request times are shown as dates: {page}");
    }

    #[test]
    fn an_empty_section_says_so() {
        let page = render(&json!({"subject": "0123", "data": {}}));
        assert_eq!(page.matches("<p class=\"none\">None.</p>").count(), 8);
    }
}
