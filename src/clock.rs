//! Time as the vault uses it: UTC, whole seconds, RFC 3339 on the wire.
//!
//! Only the edges (HTTP handlers, the commit of a change) read the clock;
//! everything that decides takes the time as an argument.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The current time, truncated to whole seconds.
pub fn now() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(0).unwrap_or(now)
}

/// `time` as RFC 3339 (`2026-11-23T19:09:16Z`).
pub fn rfc3339(time: OffsetDateTime) -> String {
    // Formatting a UTC time with a four-digit year cannot fail; fall back to
    // the Unix timestamp rather than panic if it ever does.
    time.format(&Rfc3339).unwrap_or_else(|_| time.unix_timestamp().to_string())
}
