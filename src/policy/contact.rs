//! Contact on the customer's terms, the pure part: her preferences for one
//! business (which kinds of message, how many per period, quiet hours,
//! channel) and whether a business's message reaches her. No I/O and no
//! clock: the caller reads the state in the sending transaction and passes
//! the time; the compliance replay (`audit::replay`) decides again from the
//! log with the same functions.
//!
//! The checks run in a fixed order and the first that fails names the
//! refusal, which the audit log records exactly; the business is told only
//! the coarse [`Refusal::told`].

use jiff::Timestamp;
use jiff::civil::Time;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};

use super::Policies;

/// The most messages a customer may take from one business in a period.
pub const CAP_MESSAGES_MAX: u32 = 100;

/// The period a cap counts over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    /// The last 24 hours.
    Day,
    /// The last 7 days.
    Week,
    /// The last 30 days.
    Month,
}

impl Period {
    /// The longest period: how long deliveries are remembered for caps.
    pub const LONGEST: Self = Self::Month;

    /// Its length in seconds.
    pub fn secs(self) -> i64 {
        match self {
            Self::Day => 86_400,
            Self::Week => 7 * 86_400,
            Self::Month => 30 * 86_400,
        }
    }

    /// Its wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Day => "day",
            Self::Week => "week",
            Self::Month => "month",
        }
    }
}

/// How many messages one business may deliver to her per period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Cap {
    /// Messages per period (0 to 100; 0 takes none).
    pub messages: u32,
    /// The period, counted back from the moment of sending.
    pub period: Period,
}

/// When she takes no messages, on her wall clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuietHours {
    /// First quiet minute (`HH:MM`).
    pub from: String,
    /// First minute that is not quiet (`HH:MM`); before `from` to wrap
    /// midnight.
    pub to: String,
    /// Her time zone (IANA name, `Europe/Paris`); daylight saving applies.
    pub time_zone: String,
}

/// How she hears of a business's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    /// In her inbox only (the API and the privacy center).
    Inbox,
    /// In her inbox, and announced to her own webhook endpoints
    /// (`message.delivered`, ids only).
    Webhook,
}

impl Channel {
    /// Its wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inbox => "inbox",
            Self::Webhook => "webhook",
        }
    }
}

/// A customer's contact preferences for one business.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Preferences {
    /// The kinds of message she takes from this business
    /// (`message_kinds` in the policies).
    pub kinds: Vec<String>,
    /// How many messages per period.
    pub cap: Cap,
    /// When she takes none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiet_hours: Option<QuietHours>,
    /// How she hears of them.
    pub channel: Channel,
    /// When she last set them (RFC 3339); absent while they are the
    /// defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub updated_at: Option<String>,
}

/// The default cap: five messages a week.
pub const CAP_DEFAULT: Cap = Cap { messages: 5, period: Period::Week };

/// Preferences as a `contact.changed` event writes them under `related`:
/// the texts the vault logs and the replay parses back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreferenceTexts {
    /// The kinds, comma-joined (empty: none).
    pub kinds: String,
    /// `5/week`.
    pub cap: String,
    /// `22:00-07:00 Europe/Paris`, or `none`.
    pub quiet_hours: String,
    /// `inbox` or `webhook`.
    pub channel: String,
}

impl Preferences {
    /// What a `contact.changed` event logs of them.
    pub fn texts(&self) -> PreferenceTexts {
        PreferenceTexts {
            kinds: self.kinds.join(","),
            cap: format!("{}/{}", self.cap.messages, self.cap.period.as_str()),
            quiet_hours: match &self.quiet_hours {
                Some(quiet) => format!("{}-{} {}", quiet.from, quiet.to, quiet.time_zone),
                None => "none".to_owned(),
            },
            channel: self.channel.as_str().to_owned(),
        }
    }

    /// The preferences a `contact.changed` event logged; `None` if the
    /// texts are not ones [`Preferences::texts`] makes.
    pub fn from_texts(texts: &PreferenceTexts) -> Option<Self> {
        let kinds = texts.kinds.split(',').filter(|kind| !kind.is_empty()).map(str::to_owned).collect();
        let (messages, period) = texts.cap.split_once('/')?;
        let period = [Period::Day, Period::Week, Period::Month].into_iter().find(|p| p.as_str() == period)?;
        let quiet_hours = match texts.quiet_hours.as_str() {
            "none" => None,
            quiet => {
                let (hours, time_zone) = quiet.split_once(' ')?;
                let (from, to) = hours.split_once('-')?;
                Some(QuietHours { from: from.to_owned(), to: to.to_owned(), time_zone: time_zone.to_owned() })
            }
        };
        let channel = [Channel::Inbox, Channel::Webhook].into_iter().find(|c| c.as_str() == texts.channel)?;
        Some(Self {
            kinds,
            cap: Cap { messages: messages.parse().ok()?, period },
            quiet_hours,
            channel,
            updated_at: None,
        })
    }

    /// What she takes before she sets anything: the kinds the policies mark
    /// `default` (service messages), five a week, no quiet hours, inbox.
    pub fn defaults(policies: &Policies) -> Self {
        let kinds = policies.rules.message_kinds.values().filter(|kind| kind.default).map(|kind| kind.name.clone());
        Self { kinds: kinds.collect(), cap: CAP_DEFAULT, quiet_hours: None, channel: Channel::Inbox, updated_at: None }
    }

    /// Checks preferences she sends against the policies and the limits;
    /// returns them in canonical form (kinds sorted, without repeats).
    pub fn checked(mut self, policies: &Policies) -> Result<Self, String> {
        let invalid = |detail: String| detail;
        self.kinds.sort();
        self.kinds.dedup();
        if let Some(unknown) = self.kinds.iter().find(|kind| !policies.rules.message_kinds.contains_key(*kind)) {
            return Err(invalid(format!("`{}` is not a message kind of the policies", shortened(unknown))));
        }
        if self.cap.messages > CAP_MESSAGES_MAX {
            return Err(invalid(format!("`cap.messages` must be 0 to {CAP_MESSAGES_MAX}")));
        }
        if let Some(quiet) = &self.quiet_hours {
            let (Some(from), Some(to)) = (wall_time(&quiet.from), wall_time(&quiet.to)) else {
                return Err(invalid("`quiet_hours.from` and `quiet_hours.to` must be times like 22:00".to_owned()));
            };
            if from == to {
                return Err(invalid("`quiet_hours.from` and `quiet_hours.to` must differ".to_owned()));
            }
            if quiet.time_zone.len() > 64 || TimeZone::get(&quiet.time_zone).is_err() {
                return Err(invalid(format!(
                    "`quiet_hours.time_zone`: `{}` is not a time zone name like Europe/Paris",
                    shortened(&quiet.time_zone)
                )));
            }
        }
        self.updated_at = None;
        Ok(self)
    }
}

/// At most 64 characters of a caller's text, for an error message.
fn shortened(text: &str) -> String {
    text.chars().take(64).collect()
}

/// Items one customer's inbox holds at most; past it, businesses' messages
/// are refused (`inbox_full`) until she deletes some.
pub const INBOX_ITEMS_MAX: usize = 500;

/// Why a message was refused, as the audit log records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// The pairwise id names no connected customer.
    NotConnected,
    /// She blocked this business: no requests, no messages.
    Blocked,
    /// She objects to the purpose the kind serves.
    Objection,
    /// She does not take this kind from this business.
    KindNotAllowed,
    /// It is within her quiet hours.
    QuietHours,
    /// This business reached her cap for the period.
    CapReached,
    /// Her inbox is full.
    InboxFull,
}

/// What the business is told of a refusal: no more than it needs to act.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Told {
    /// No connected customer has this pairwise id.
    NotConnected,
    /// She does not take this message from you (her choices, her
    /// objections or a block: which is hers to know).
    NotAccepted,
    /// Not now: try again later (quiet hours).
    NotNow,
    /// You reached the number of messages she takes from you in a period.
    CapReached,
}

impl Refusal {
    /// The stable code, as logged in `related.cause`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotConnected => "not_connected",
            Self::Blocked => "blocked",
            Self::Objection => "objection",
            Self::KindNotAllowed => "kind_not_allowed",
            Self::QuietHours => "quiet_hours",
            Self::CapReached => "cap_reached",
            Self::InboxFull => "inbox_full",
        }
    }

    /// The refusal a logged `related.cause` names.
    pub fn parse(code: &str) -> Option<Self> {
        [
            Self::NotConnected,
            Self::Blocked,
            Self::Objection,
            Self::KindNotAllowed,
            Self::QuietHours,
            Self::CapReached,
            Self::InboxFull,
        ]
        .into_iter()
        .find(|refusal| refusal.as_str() == code)
    }

    /// What the business is told.
    pub fn told(self) -> Told {
        match self {
            Self::NotConnected => Told::NotConnected,
            Self::Blocked | Self::Objection | Self::KindNotAllowed | Self::InboxFull => Told::NotAccepted,
            Self::QuietHours => Told::NotNow,
            Self::CapReached => Told::CapReached,
        }
    }
}

impl Told {
    /// The stable code sent to the business.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotConnected => "not_connected",
            Self::NotAccepted => "not_accepted",
            Self::NotNow => "not_now",
            Self::CapReached => "cap_reached",
        }
    }
}

/// What a decision looks at, read in the sending transaction.
#[derive(Debug, Clone)]
pub struct Situation<'a> {
    /// Her preferences for this business (the defaults if she set none).
    pub preferences: &'a Preferences,
    /// Whether she blocked this business.
    pub blocked: bool,
    /// The purposes she objects to.
    pub objections: &'a [String],
    /// The kind of the message, and the purpose it serves.
    pub kind: &'a str,
    /// The purpose the kind serves.
    pub purpose: &'a str,
    /// How many messages this business delivered to her within the cap's
    /// period before `now_secs` (deleted ones too).
    pub delivered_in_period: usize,
    /// Items in her inbox.
    pub inbox_items: usize,
    /// Now (Unix seconds).
    pub now_secs: i64,
}

/// Delivered (`Ok`) or refused, and why.
pub fn decide(situation: &Situation<'_>) -> Result<(), Refusal> {
    if situation.blocked {
        return Err(Refusal::Blocked);
    }
    if situation.objections.iter().any(|purpose| purpose == situation.purpose) {
        return Err(Refusal::Objection);
    }
    if !situation.preferences.kinds.iter().any(|kind| kind == situation.kind) {
        return Err(Refusal::KindNotAllowed);
    }
    if let Some(quiet) = &situation.preferences.quiet_hours
        && quiet_at(quiet, situation.now_secs)
    {
        return Err(Refusal::QuietHours);
    }
    if situation.delivered_in_period >= situation.preferences.cap.messages as usize {
        return Err(Refusal::CapReached);
    }
    if situation.inbox_items >= INBOX_ITEMS_MAX {
        return Err(Refusal::InboxFull);
    }
    Ok(())
}

/// The first second of the cap's period that ends at `now_secs`: the cap
/// counts over a sliding window.
pub fn period_start(cap: &Cap, now_secs: i64) -> i64 {
    now_secs - cap.period.secs()
}

/// Whether `now_secs` falls in her quiet hours, read on her wall clock in
/// her time zone (daylight saving included). Hours that wrap midnight
/// (`22:00` to `07:00`) are quiet from the first until the second.
pub fn quiet_at(quiet: &QuietHours, now_secs: i64) -> bool {
    let (Some(from), Some(to)) = (wall_time(&quiet.from), wall_time(&quiet.to)) else { return false };
    let Ok(zone) = TimeZone::get(&quiet.time_zone) else { return false };
    let Ok(now) = Timestamp::from_second(now_secs) else { return false };
    let local = now.to_zoned(zone).time();
    if from < to { from <= local && local < to } else { local >= from || local < to }
}

/// `HH:MM` as a wall-clock time.
pub fn wall_time(text: &str) -> Option<Time> {
    let (hours, minutes) = text.split_once(':')?;
    let two_digits = |part: &str| part.len() == 2 && part.bytes().all(|byte| byte.is_ascii_digit());
    if !two_digits(hours) || !two_digits(minutes) {
        return None;
    }
    Time::new(hours.parse().ok()?, minutes.parse().ok()?, 0, 0).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn preferences(kinds: &[&str], quiet: Option<(&str, &str, &str)>) -> Preferences {
        Preferences {
            kinds: kinds.iter().map(|k| k.to_string()).collect(),
            cap: Cap { messages: 2, period: Period::Week },
            quiet_hours: quiet.map(|(from, to, zone)| QuietHours {
                from: from.to_owned(),
                to: to.to_owned(),
                time_zone: zone.to_owned(),
            }),
            channel: Channel::Inbox,
            updated_at: None,
        }
    }

    /// 2026-12-02 12:00:00 UTC.
    const NOON_UTC: i64 = 1_796_212_800;

    /// The decision for a `service` message (purpose `order-fulfilment`)
    /// with `change` applied to a situation where everything allows it.
    fn check(prefs: &Preferences, change: impl FnOnce(&mut Situation<'_>)) -> Result<(), Refusal> {
        let objections = ["marketing".to_owned()];
        let mut situation = Situation {
            preferences: prefs,
            blocked: false,
            objections: &objections,
            kind: "service",
            purpose: "order-fulfilment",
            delivered_in_period: 0,
            inbox_items: 0,
            now_secs: NOON_UTC,
        };
        change(&mut situation);
        decide(&situation)
    }

    #[test]
    fn each_refusal_in_its_order() {
        let prefs = preferences(&["service", "offers"], Some(("22:00", "07:00", "Europe/Paris")));
        assert_eq!(check(&prefs, |_| {}), Ok(()));
        assert_eq!(check(&prefs, |s| s.blocked = true), Err(Refusal::Blocked));
        assert_eq!(
            check(&prefs, |s| {
                s.kind = "offers";
                s.purpose = "marketing";
            }),
            Err(Refusal::Objection)
        );
        assert_eq!(check(&prefs, |s| s.kind = "feedback"), Err(Refusal::KindNotAllowed));
        // 23:30 in Paris (UTC+1 in December).
        assert_eq!(check(&prefs, |s| s.now_secs = NOON_UTC + 10 * 3_600 + 30 * 60), Err(Refusal::QuietHours));
        assert_eq!(check(&prefs, |s| s.delivered_in_period = 2), Err(Refusal::CapReached));
        assert_eq!(check(&prefs, |s| s.inbox_items = INBOX_ITEMS_MAX), Err(Refusal::InboxFull));
        // A block outranks everything, and the business learns only coarse
        // reasons.
        assert_eq!(
            check(&prefs, |s| {
                s.blocked = true;
                s.delivered_in_period = 9;
            }),
            Err(Refusal::Blocked)
        );
        assert_eq!(Refusal::Objection.told(), Told::NotAccepted);
        assert_eq!(Refusal::KindNotAllowed.told(), Told::NotAccepted);
        assert_eq!(Refusal::Blocked.told(), Told::NotAccepted);
    }

    #[test]
    fn quiet_hours_follow_her_wall_clock_and_wrap_midnight() {
        let paris = QuietHours { from: "22:00".into(), to: "07:00".into(), time_zone: "Europe/Paris".into() };
        // 12:00 UTC is 13:00 in Paris: not quiet. 21:00 UTC is 22:00: quiet
        // from its first second. 06:00 UTC next day is 07:00: over.
        assert!(!quiet_at(&paris, NOON_UTC));
        assert!(quiet_at(&paris, NOON_UTC + 9 * 3_600));
        assert!(!quiet_at(&paris, NOON_UTC + 9 * 3_600 - 1));
        assert!(quiet_at(&paris, NOON_UTC + 18 * 3_600 - 1));
        assert!(!quiet_at(&paris, NOON_UTC + 18 * 3_600));
        // In July Paris is UTC+2: 20:00 UTC is already 22:00 there.
        let july_20_utc = 1_784_145_600; // 2026-07-15 20:00:00 UTC
        assert!(quiet_at(&paris, july_20_utc));
        let lunch = QuietHours { from: "12:00".into(), to: "14:00".into(), time_zone: "UTC".into() };
        assert!(quiet_at(&lunch, NOON_UTC));
        assert!(!quiet_at(&lunch, NOON_UTC + 2 * 3_600));
    }

    #[test]
    fn logged_preferences_parse_back_to_the_same_preferences() {
        let with_quiet =
            preferences(&["offers", "service"], Some(("22:00", "07:00", "America/Argentina/Buenos_Aires")));
        let none = preferences(&[], None);
        for prefs in [with_quiet, none] {
            assert_eq!(Preferences::from_texts(&prefs.texts()), Some(prefs.clone()));
        }
        let mut bad = preferences(&["service"], None).texts();
        bad.cap = "5/year".to_owned();
        assert_eq!(Preferences::from_texts(&bad), None);
    }

    #[test]
    fn wall_times_are_two_digit_hours_and_minutes() {
        assert_eq!(wall_time("07:05"), Some(Time::new(7, 5, 0, 0).unwrap()));
        for bad in ["7:05", "24:00", "12:60", "12-00", "", "aa:bb", "12:000", "+7:00", "-0:00", "07:+5"] {
            assert_eq!(wall_time(bad), None, "{bad}");
        }
    }
}
