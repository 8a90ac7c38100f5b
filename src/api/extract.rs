//! Extractors that turn malformed input into problem documents that say what
//! is wrong, instead of axum's plain-text rejections.

use axum::extract::{FromRequest, FromRequestParts};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::problem::Problem;

/// A query string deserialised into `T`; unknown parameters are refused when
/// `T` denies them.
#[derive(Debug, Clone)]
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| Self(value))
            .map_err(|rejection| {
                Problem::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_query",
                    "Invalid query",
                    without_values(&rejection.body_text()),
                )
            })
    }
}

/// Path parameters deserialised into `T`.
#[derive(Debug, Clone)]
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| Self(value))
            .map_err(|rejection| {
                Problem::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_path",
                    "Invalid path",
                    without_values(&rejection.body_text()),
                )
            })
    }
}

/// Deepest JSON nesting accepted in a request body.
pub const JSON_DEPTH_MAX: usize = 32;

/// The nesting depth of a JSON text, counted without parsing it, so a
/// hostile body cannot make the parser recurse.
fn json_depth(bytes: &[u8]) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &byte in bytes {
        if in_string {
            match (escaped, byte) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

fn invalid_body(detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::BAD_REQUEST, "invalid_body", "Invalid body", detail)
}

/// Parses a JSON body into `T` (`application/json`, nesting at most
/// [`JSON_DEPTH_MAX`]); unknown members are refused where `T` denies them.
pub fn json_body<T: DeserializeOwned>(headers: &axum::http::HeaderMap, bytes: &[u8]) -> Result<T, Problem> {
    let content_type = headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let media_type = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if media_type != "application/json" {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Unsupported media type",
            "send the body as application/json",
        ));
    }
    if json_depth(bytes) > JSON_DEPTH_MAX {
        return Err(invalid_body(format!("the body is nested deeper than {JSON_DEPTH_MAX} levels")));
    }
    serde_json::from_slice(bytes).map_err(|error| {
        let message = error.to_string();
        invalid_body(format!(
            "the body is not valid: {}",
            without_values(message.split(" at line").next().unwrap_or(""))
        ))
    })
}

/// Where serde and axum quote the value that failed, and what stands
/// before it: `invalid type: string "ada@example.org", expected u32`,
/// `unknown variant `x``, `Cannot parse `x` to a `u64``.
const VALUE_MARKERS: [&str; 4] = ["invalid type: ", "invalid value: ", "unknown variant ", "Cannot parse "];

/// A deserialisation message without the values it quotes: what kind of
/// value failed and what was expected stay, the value itself (which may be
/// personal data sent to the wrong field) does not. Member names stay, as
/// they name the schema.
fn without_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some((at, marker)) =
        VALUE_MARKERS.iter().filter_map(|marker| rest.find(marker).map(|at| (at, *marker))).min_by_key(|(at, _)| *at)
    {
        out.push_str(&rest[..at + marker.len()]);
        rest = &rest[at + marker.len()..];
        // The kind words before the quoted value ("string ", "floating point ").
        let quote_at = rest.find(['"', '`']).unwrap_or(rest.len());
        let kind = &rest[..quote_at];
        if kind.contains(',') {
            // Nothing quoted right here (`invalid type: map, expected ...`).
            continue;
        }
        out.push_str(kind.trim_end());
        rest = &rest[quote_at..];
        let mut chars = rest.char_indices();
        let Some((_, quote)) = chars.next() else { break };
        let mut escaped = false;
        let mut end = rest.len();
        for (index, c) in chars {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') if quote == '"' => escaped = true,
                (false, c) if c == quote => {
                    end = index + c.len_utf8();
                    break;
                }
                _ => {}
            }
        }
        out.push_str(if kind.trim().is_empty() { "a value" } else { "" });
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// A JSON request body deserialised into `T` (see [`json_body`]).
#[derive(Debug, Clone)]
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = Problem;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, Problem> {
        let headers = request.headers().clone();
        let bytes = axum::body::Bytes::from_request(request, state).await.map_err(|rejection| {
            Problem::new(rejection.status(), "invalid_body", "Invalid body", rejection.body_text())
        })?;
        json_body(&headers, &bytes).map(Self)
    }
}

/// A JSON object whose members all have different names: a body that
/// names a member twice is refused (as every typed body refuses it), not
/// read as "the last one wins".
#[derive(Debug, Clone, Default)]
pub struct UniqueMap(pub serde_json::Map<String, serde_json::Value>);

impl<'de> serde::Deserialize<'de> for UniqueMap {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = UniqueMap;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut access: A) -> Result<UniqueMap, A::Error> {
                let mut map = serde_json::Map::new();
                while let Some((name, value)) = access.next_entry::<String, serde_json::Value>()? {
                    if map.contains_key(&name) {
                        return Err(serde::de::Error::custom(format_args!("duplicate field `{name}`")));
                    }
                    map.insert(name, value);
                }
                Ok(UniqueMap(map))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

/// A page size from the query: `default` when absent, refused outside
/// 1..=`max`.
pub fn page_limit(limit: Option<usize>, default: usize, max: usize) -> Result<usize, Problem> {
    let limit = limit.unwrap_or(default);
    if limit == 0 || limit > max {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid_limit",
            "Invalid query",
            format!("`limit` must be between 1 and {max}"),
        ));
    }
    Ok(limit)
}

/// An opaque cursor for position `next` in a listing of `kind`.
pub fn cursor_encode(kind: &str, next: impl std::fmt::Display) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{kind}:{next}"))
}

/// The position in a cursor made by [`cursor_encode`] for `kind`.
pub fn cursor_decode<T: std::str::FromStr>(kind: &str, cursor: &str) -> Result<T, Problem> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| text.strip_prefix(kind).and_then(|rest| rest.strip_prefix(':')).and_then(|n| n.parse().ok()))
        .ok_or_else(|| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid_cursor",
                "Invalid query",
                "`cursor` is not one this vault issued",
            )
        })
}

/// Largest page of a listing of records (relationships, grants, requests,
/// principals), and its size when `limit` is absent.
pub const LIST_ITEMS_MAX: usize = 100;

/// The paging of a listing of records: up to `limit` items after the
/// position in `cursor`. Any other parameter is refused.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Page size: 1 to 100, 100 when absent.
    limit: Option<usize>,
    /// The `cursor` of the previous page; absent for the first page.
    cursor: Option<String>,
}

impl PageParams {
    /// The page size asked for.
    pub fn limit(&self) -> Result<usize, Problem> {
        page_limit(self.limit, LIST_ITEMS_MAX, LIST_ITEMS_MAX)
    }

    /// Where the page starts: after the id in the cursor, which must be one
    /// a listing of `kind` issued.
    pub fn after<T: std::str::FromStr>(&self, kind: &str) -> Result<Option<T>, Problem> {
        self.cursor.as_deref().map(|cursor| cursor_decode(kind, cursor)).transpose()
    }
}

/// The record id in `text` (a path segment or a body field), for a record
/// of kind `what`: text that is not an id names no record, so it gets the
/// same 404 as an id nobody holds.
pub fn record_id<Id: std::str::FromStr>(text: &str, what: &str) -> Result<Id, super::error::ApiError> {
    text.parse().map_err(|_| super::error::ApiError::not_found(what))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn deserialisation_messages_lose_the_values_they_quote() {
        let cases = [
            (r#"invalid type: string "ada@example.org", expected u32"#, "invalid type: string, expected u32"),
            (r#"invalid type: string "a \" b", expected u32"#, "invalid type: string, expected u32"),
            (
                "invalid value: integer `42`, expected a positive number",
                "invalid value: integer, expected a positive number",
            ),
            ("invalid type: floating point `1.5`, expected u8", "invalid type: floating point, expected u8"),
            ("unknown variant `ada@example.org`, expected `erase`", "unknown variant a value, expected `erase`"),
            ("Cannot parse `secret` to a `u64`", "Cannot parse a value to a `u64`"),
            ("invalid type: map, expected a string", "invalid type: map, expected a string"),
            ("unknown field `role`, expected one of `email`", "unknown field `role`, expected one of `email`"),
            ("missing field `password`", "missing field `password`"),
        ];
        for (message, expected) in cases {
            assert_eq!(without_values(message), expected, "{message}");
        }
        // Real serde errors.
        let error = serde_json::from_str::<u32>(r#""canary@example.org""#).unwrap_err().to_string();
        assert!(!without_values(&error).contains("canary"), "{error}");
        let error = serde_json::from_str::<bool>("7123456789").unwrap_err().to_string();
        assert!(!without_values(&error).contains("7123456789"), "{error}");
    }

    #[test]
    fn depth_counts_nesting_outside_strings() {
        assert_eq!(json_depth(br#"{"a": [1, {"b": "[[[["}]}"#), 3);
        assert_eq!(json_depth(br#""\"{{""#), 0);
        assert_eq!(json_depth(&[b'['; 100]), 100);
    }

    #[test]
    fn an_object_naming_a_member_twice_is_refused() {
        let once: UniqueMap = serde_json::from_str(r#"{"email": "a@b.org", "phone": "1"}"#).unwrap();
        assert_eq!(once.0.len(), 2);
        let twice = serde_json::from_str::<UniqueMap>(r#"{"email": "a@b.org", "email": "c@d.org"}"#);
        assert!(twice.unwrap_err().to_string().contains("duplicate field `email`"));
        assert!(serde_json::from_str::<UniqueMap>("[1]").is_err());
    }
}
