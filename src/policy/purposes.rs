//! Purposes (`policies/purposes.toml`) and organisation rules
//! (`policies/rules.toml`): pure parsing with errors that name file, line and
//! problem, checked against the field catalogue.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::PolicyError;
use super::catalogue::{Catalogue, Sensitivity, is_identifier};

/// The longest grant any purpose may allow, in days.
pub const DURATION_DAYS_LIMIT: u32 = 3650;
/// The longest inactivity the retention rule may allow, in days (100 years).
pub const INACTIVE_DAYS_LIMIT: u32 = 36_500;

/// One purpose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purpose {
    /// The purpose name (`marketing`).
    pub name: String,
    /// What it means, for customers.
    pub description: String,
    /// The W3C DPV purpose it corresponds to (`dpv:Marketing`).
    pub dpv: String,
    /// The field categories it may ever touch.
    pub categories: Vec<String>,
    /// The longest grant for it, in days (before duration caps).
    pub max_duration_days: u32,
}

/// A rule that withholds a field whenever all its given conditions hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenyRule {
    /// Stable id; the reason code is `rule:<id>`.
    pub id: String,
    /// Why, in words.
    pub description: String,
    /// Only for this purpose.
    pub purpose: Option<String>,
    /// Only for fields of this category.
    pub category: Option<String>,
    /// Only for fields of this sensitivity.
    pub sensitivity: Option<Sensitivity>,
    /// Only for this business.
    pub business: Option<String>,
}

/// A cap on how long grants for a purpose may last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurationCap {
    /// Stable id.
    pub id: String,
    /// Why, in words.
    pub description: String,
    /// The purpose capped.
    pub purpose: String,
    /// The cap, in days.
    pub max_days: u32,
}

/// A kind of message a business may send a connected customer
/// (`[message_kinds.<name>]` in `purposes.toml`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageKind {
    /// The kind's name (`service`).
    pub name: String,
    /// What such a message is about, for customers.
    pub description: String,
    /// The purpose it serves: a customer who objects to it takes none.
    pub purpose: String,
    /// Whether a customer who has set no preferences takes it.
    pub default: bool,
}

/// The retention rule: customers inactive for longer are erased.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Days without activity after which the vault erases a customer.
    pub erase_inactive_after_days: u32,
}

/// The longest message kind name, in bytes.
pub const MESSAGE_KIND_BYTES_MAX: usize = 40;

/// Pending access requests one business may have waiting for one customer
/// when the rules say nothing (`[requests] pending_per_customer_max`).
pub const PENDING_PER_CUSTOMER_DEFAULT: u32 = 3;
/// The most a rule may allow.
const PENDING_PER_CUSTOMER_LIMIT: u32 = 100;

/// Purposes and rules, checked against the catalogue.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rules {
    /// Purposes by name.
    pub purposes: BTreeMap<String, Purpose>,
    /// Kinds of message businesses may send, by name (none when
    /// `purposes.toml` defines none: then no business can send any).
    pub message_kinds: BTreeMap<String, MessageKind>,
    /// Deny rules, in file order.
    pub deny: Vec<DenyRule>,
    /// Duration caps, in file order.
    pub duration_caps: Vec<DurationCap>,
    /// The retention rule; `None` (no `[retention]` table) means off.
    pub retention: Option<Retention>,
    /// Pending access requests one business may have waiting for one
    /// customer; a further request is refused until she answers one.
    pub requests_pending_per_customer_max: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PurposesFile {
    purposes: BTreeMap<String, toml::Spanned<PurposeEntry>>,
    #[serde(default)]
    message_kinds: BTreeMap<String, toml::Spanned<MessageKindEntry>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageKindEntry {
    description: String,
    purpose: String,
    #[serde(default)]
    default: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PurposeEntry {
    description: String,
    dpv: String,
    categories: Vec<String>,
    max_duration_days: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    deny: Vec<toml::Spanned<DenyEntry>>,
    #[serde(default)]
    duration_cap: Vec<toml::Spanned<CapEntry>>,
    retention: Option<toml::Spanned<RetentionEntry>>,
    requests: Option<toml::Spanned<RequestsEntry>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestsEntry {
    pending_per_customer_max: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RetentionEntry {
    erase_inactive_after_days: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DenyEntry {
    id: String,
    description: String,
    purpose: Option<String>,
    category: Option<String>,
    sensitivity: Option<Sensitivity>,
    business: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CapEntry {
    id: String,
    description: String,
    purpose: String,
    max_days: u32,
}

impl Rules {
    /// Parses the purposes file and the rules file and checks them against
    /// `catalogue`.
    pub fn parse(
        catalogue: &Catalogue,
        purposes_file: &str,
        purposes_text: &str,
        rules_file: &str,
        rules_text: &str,
    ) -> Result<Self, PolicyError> {
        let known_category = |category: &str| catalogue.fields().any(|field| field.category == category);
        let parsed: PurposesFile = toml::from_str(purposes_text)
            .map_err(|error| PolicyError::from_toml(purposes_file, purposes_text, &error))?;
        let mut purposes = BTreeMap::new();
        for (name, entry) in parsed.purposes {
            let line = PolicyError::line_of(purposes_text, entry.span().start);
            let problem = |problem: String| PolicyError { file: purposes_file.to_owned(), line, problem };
            let entry = entry.into_inner();
            if !is_identifier(&name) {
                return Err(problem(format!("purpose name `{name}` must match [a-z][a-z0-9_-]*")));
            }
            if entry.description.trim().is_empty() {
                return Err(problem(format!("purpose `{name}`: description must say what it means")));
            }
            if !entry.dpv.starts_with("dpv:") || entry.dpv.len() <= 4 {
                return Err(problem(format!("purpose `{name}`: dpv must name a W3C DPV purpose like dpv:Marketing")));
            }
            if entry.categories.is_empty() {
                return Err(problem(format!("purpose `{name}`: categories must list at least one category")));
            }
            if let Some(unknown) = entry.categories.iter().find(|c| !known_category(c)) {
                return Err(problem(format!("purpose `{name}`: no field has the category `{unknown}`")));
            }
            if entry.max_duration_days == 0 || entry.max_duration_days > DURATION_DAYS_LIMIT {
                return Err(problem(format!("purpose `{name}`: max_duration_days must be 1 to {DURATION_DAYS_LIMIT}")));
            }
            let purpose = Purpose {
                name: name.clone(),
                description: entry.description,
                dpv: entry.dpv,
                categories: entry.categories,
                max_duration_days: entry.max_duration_days,
            };
            purposes.insert(name, purpose);
        }
        if purposes.is_empty() {
            return Err(PolicyError {
                file: purposes_file.to_owned(),
                line: 1,
                problem: "no purpose is defined".to_owned(),
            });
        }

        let mut message_kinds = BTreeMap::new();
        for (name, entry) in parsed.message_kinds {
            let line = PolicyError::line_of(purposes_text, entry.span().start);
            let problem = |problem: String| PolicyError { file: purposes_file.to_owned(), line, problem };
            let entry = entry.into_inner();
            if !is_identifier(&name) || name.len() > MESSAGE_KIND_BYTES_MAX {
                return Err(problem(format!(
                    "message kind `{name}` must match [a-z][a-z0-9_-]* and be at most {MESSAGE_KIND_BYTES_MAX} bytes"
                )));
            }
            if entry.description.trim().is_empty() {
                return Err(problem(format!("message kind `{name}`: description must say what it is about")));
            }
            if !purposes.contains_key(&entry.purpose) {
                return Err(problem(format!("message kind `{name}`: unknown purpose `{}`", entry.purpose)));
            }
            let kind = MessageKind {
                name: name.clone(),
                description: entry.description,
                purpose: entry.purpose,
                default: entry.default,
            };
            message_kinds.insert(name, kind);
        }

        let parsed: RulesFile =
            toml::from_str(rules_text).map_err(|error| PolicyError::from_toml(rules_file, rules_text, &error))?;
        let mut ids = std::collections::BTreeSet::new();
        let mut deny = Vec::new();
        for entry in parsed.deny {
            let line = PolicyError::line_of(rules_text, entry.span().start);
            let problem = |problem: String| PolicyError { file: rules_file.to_owned(), line, problem };
            let entry = entry.into_inner();
            if !is_identifier(&entry.id) || !ids.insert(entry.id.clone()) {
                return Err(problem(format!("rule id `{}` must be a unique name like no-health-marketing", entry.id)));
            }
            if let Some(purpose) = entry.purpose.as_ref().filter(|p| !purposes.contains_key(*p)) {
                return Err(problem(format!("rule `{}`: unknown purpose `{purpose}`", entry.id)));
            }
            if let Some(category) = entry.category.as_ref().filter(|c| !known_category(c)) {
                return Err(problem(format!("rule `{}`: no field has the category `{category}`", entry.id)));
            }
            if entry.purpose.is_none()
                && entry.category.is_none()
                && entry.sensitivity.is_none()
                && entry.business.is_none()
            {
                return Err(problem(format!("rule `{}`: give at least one condition", entry.id)));
            }
            deny.push(DenyRule {
                id: entry.id,
                description: entry.description,
                purpose: entry.purpose,
                category: entry.category,
                sensitivity: entry.sensitivity,
                business: entry.business,
            });
        }
        let mut duration_caps = Vec::new();
        for entry in parsed.duration_cap {
            let line = PolicyError::line_of(rules_text, entry.span().start);
            let problem = |problem: String| PolicyError { file: rules_file.to_owned(), line, problem };
            let entry = entry.into_inner();
            if !is_identifier(&entry.id) || !ids.insert(entry.id.clone()) {
                return Err(problem(format!("rule id `{}` must be a unique name like analytics-90-days", entry.id)));
            }
            if !purposes.contains_key(&entry.purpose) {
                return Err(problem(format!("rule `{}`: unknown purpose `{}`", entry.id, entry.purpose)));
            }
            if entry.max_days == 0 {
                return Err(problem(format!("rule `{}`: max_days must be at least 1", entry.id)));
            }
            duration_caps.push(DurationCap {
                id: entry.id,
                description: entry.description,
                purpose: entry.purpose,
                max_days: entry.max_days,
            });
        }
        let retention = match parsed.retention {
            None => None,
            Some(entry) => {
                let line = PolicyError::line_of(rules_text, entry.span().start);
                let days = entry.into_inner().erase_inactive_after_days;
                if days == 0 || days > INACTIVE_DAYS_LIMIT {
                    return Err(PolicyError {
                        file: rules_file.to_owned(),
                        line,
                        problem: format!(
                            "retention: erase_inactive_after_days must be 1 to {INACTIVE_DAYS_LIMIT} (remove the table to switch the rule off)"
                        ),
                    });
                }
                Some(Retention { erase_inactive_after_days: days })
            }
        };
        let requests_pending_per_customer_max = match parsed.requests {
            None => PENDING_PER_CUSTOMER_DEFAULT,
            Some(entry) => {
                let line = PolicyError::line_of(rules_text, entry.span().start);
                let max = entry.into_inner().pending_per_customer_max;
                if max == 0 || max > PENDING_PER_CUSTOMER_LIMIT {
                    return Err(PolicyError {
                        file: rules_file.to_owned(),
                        line,
                        problem: format!(
                            "requests: pending_per_customer_max must be 1 to {PENDING_PER_CUSTOMER_LIMIT}"
                        ),
                    });
                }
                max
            }
        };
        Ok(Self { purposes, message_kinds, deny, duration_caps, retention, requests_pending_per_customer_max })
    }

    /// The longest grant for `purpose`, in days, after every cap.
    pub fn max_duration_days(&self, purpose: &str) -> Option<u32> {
        let purpose = self.purposes.get(purpose)?;
        let capped = self.duration_caps.iter().filter(|cap| cap.purpose == purpose.name).map(|cap| cap.max_days);
        Some(capped.fold(purpose.max_duration_days, u32::min))
    }
}
