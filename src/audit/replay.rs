//! The compliance replay: the log read from its first entry in order, the
//! consent state rebuilt from the events alone, and every read that released
//! a field decided again by the pure engine under the policies then in force
//! (content-addressed in the store, named by `policy.loaded`). It proves
//! SPEC §3.3: each released field was covered, at the read's position, by a
//! live grant of that business for that purpose and field, which the read
//! names, inside its window, with the customer connected, no objection to
//! the purpose and no rule denying it. Every message a business delivered to
//! a customer is decided again too, by the pure `policy::contact::decide`
//! on her contact preferences, block, objections and the business's earlier
//! deliveries as the log recorded them. The rules are written out for
//! outside verifiers in `docs/AUDIT.md`.
//!
//! The replay trusts the entries it is given: run it on a log that verifies
//! (`audit verify`, or proofs against signed checkpoints).

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use super::event::{AuditEvent, EventKind, Related, Role};
use crate::ids::SubjectId;
use crate::policy::Policies;
use crate::policy::contact::{self, PreferenceTexts, Preferences};
use crate::policy::engine::{self, FieldDecision, GrantView, ReadQuery, Reason};

/// The step of `consentvault audit replay` that replays entries, as its
/// progress names it.
pub const REPLAY_STEP: &str = "audit entries replayed";

/// The rule a violation breaks; the wire name is the snake-case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ViolationRule {
    /// An entry is not a canonical event.
    Malformed,
    /// An entry of format 1 follows one of format 2: the format never goes
    /// back.
    FormatWentBack,
    /// A read released fields with no policies in force: no `policy.loaded`
    /// before it, or the bundle it names is not held or is not the one its
    /// SHA-256 names.
    NoPolicy,
    /// A read that released fields does not name its business, subject,
    /// purpose or the grants it relied on.
    Incomplete,
    /// A `grant.created` of format 2 has no window or purposes, or reuses a
    /// grant id.
    GrantMalformed,
    /// A read names a grant no earlier `grant.created` made, or one of
    /// another customer or business.
    GrantUnknown,
    /// A released field is covered by no grant the read names that is live
    /// at the read's position: created before it, not revoked, expired or
    /// ended by an erasure before it, inside its window at the read's time,
    /// for the read's purpose and that field.
    NotCovered,
    /// The policies then in force withhold a released field: the customer
    /// was not connected, objects to the purpose, the purpose may not touch
    /// the field's category, or a rule denies it.
    DeniedByPolicy,
    /// A business's message was delivered that the customer's choices then
    /// refused: not connected, blocked, an objection to the kind's purpose,
    /// a kind she did not take, her quiet hours, or over her cap; or a kind
    /// the policies in force do not define.
    MessageNotAllowed,
}

/// The first read the log does not justify.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Violation {
    /// The entry's index in the log.
    pub index: u64,
    /// The rule it breaks.
    pub rule: ViolationRule,
    /// What is wrong, in words (ids and field names only).
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rule = serde_json::to_value(self.rule).ok().and_then(|v| v.as_str().map(str::to_owned));
        write!(formatter, "entry {}: {} ({})", self.index, self.detail, rule.unwrap_or_default())
    }
}

/// What a replay found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ReplaySummary {
    /// Entries replayed (the log's size, or up to the first violation).
    pub entries: u64,
    /// Reads that released fields, each proven covered.
    pub reads_released: u64,
    /// Fields those reads released.
    pub fields_released: u64,
    /// Reads that released nothing.
    pub reads_denied: u64,
    /// Reads by the customer of her own record (her data, her export).
    pub reads_own: u64,
    /// Reads that released fields but cannot be decided again: logged in
    /// format 1, or relying on a grant logged in format 1 (before events
    /// carried windows).
    pub reads_unchecked: u64,
    /// Grants created.
    pub grants_created: u64,
    /// Grants revoked, expired or ended by an erasure.
    pub grants_ended: u64,
    /// Businesses' messages delivered, each proven allowed by her choices.
    pub messages_delivered: u64,
    /// The SHA-256 of every policy version loaded, in order of first load.
    pub policies: Vec<String>,
    /// The first read the log does not justify; `None` if every one is.
    pub violation: Option<Violation>,
}

/// A grant as the events made it.
struct ReplayGrant {
    subject: SubjectId,
    business: String,
    purposes: Vec<String>,
    fields: Vec<String>,
    /// `None` for a grant logged in format 1, which has no window.
    window: Option<(i64, i64)>,
    /// The index of the event that ended it.
    ended_at: Option<u64>,
}

impl ReplayGrant {
    fn view(&self, id: &str) -> GrantView {
        let (starts_at, expires_at) = self.window.unwrap_or((i64::MIN, i64::MAX));
        GrantView {
            id: id.to_owned(),
            business: self.business.clone(),
            purposes: self.purposes.clone(),
            fields: self.fields.clone(),
            starts_at,
            expires_at,
            // Ended by position, whatever the clock said.
            revoked_at: self.ended_at.map(|_| i64::MIN),
        }
    }
}

/// A customer's contact state for one business, as the events made it.
#[derive(Default)]
struct ReplayContact {
    /// Her preferences, once a `contact.changed` set them.
    preferences: Option<Preferences>,
    blocked: bool,
    /// When the business's messages were delivered (Unix seconds).
    delivered: Vec<i64>,
}

/// The policies in force: named by a `policy.loaded`, parsed when a read
/// first needs them.
enum InForce {
    None,
    Named(String),
    Loaded(Arc<Policies>),
}

/// A replay in progress: fed every entry in order by [`replay`].
struct Replay<'a> {
    /// The stored bundle with this SHA-256, if the vault holds it.
    bundle_of: &'a dyn Fn(&str) -> Option<Vec<u8>>,
    in_force: InForce,
    parsed: HashMap<String, Arc<Policies>>,
    grants: HashMap<String, ReplayGrant>,
    /// Each subject's grant ids, in order of creation.
    grants_of: HashMap<SubjectId, Vec<String>>,
    connected: BTreeSet<(SubjectId, String)>,
    objections: HashMap<SubjectId, Vec<String>>,
    /// Contact state by customer and business, while connected.
    contact: HashMap<(SubjectId, String), ReplayContact>,
    format_2_seen: bool,
    summary: ReplaySummary,
}

/// Unix seconds of an RFC 3339 time, as events write them.
fn unix_secs(text: &str) -> Option<i64> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(time::OffsetDateTime::unix_timestamp)
}

/// Purposes of a format 1 event (comma-joined under `related`).
fn purposes_of_format_1(event: &AuditEvent) -> Vec<String> {
    event
        .related_value(Related::Purposes)
        .map(|joined| joined.split(',').filter(|p| !p.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default()
}

impl<'a> Replay<'a> {
    /// A replay from an empty log; `bundle_of` finds stored policy bundles
    /// by their SHA-256 (hex).
    fn new(bundle_of: &'a dyn Fn(&str) -> Option<Vec<u8>>) -> Self {
        Self {
            bundle_of,
            in_force: InForce::None,
            parsed: HashMap::new(),
            grants: HashMap::new(),
            grants_of: HashMap::new(),
            connected: BTreeSet::new(),
            objections: HashMap::new(),
            contact: HashMap::new(),
            format_2_seen: false,
            summary: ReplaySummary::default(),
        }
    }

    /// Replays entry `index` (the next one); the first violation ends the
    /// replay, and later calls change nothing.
    fn step(&mut self, index: u64, bytes: &[u8]) {
        if self.summary.violation.is_some() {
            return;
        }
        self.summary.entries = index + 1;
        if let Err(violation) = self.apply(index, bytes) {
            self.summary.violation = Some(violation);
        }
    }

    /// What the replay found.
    fn finish(self) -> ReplaySummary {
        self.summary
    }

    fn apply(&mut self, index: u64, bytes: &[u8]) -> Result<(), Violation> {
        let violation = |rule, detail: String| Violation { index, rule, detail };
        let event = AuditEvent::from_bytes(bytes)
            .map_err(|error| violation(ViolationRule::Malformed, format!("not an audit event: {error}")))?;
        if event.v >= 2 {
            self.format_2_seen = true;
        } else if self.format_2_seen {
            return Err(violation(ViolationRule::FormatWentBack, "an event of format 1 after format 2".to_owned()));
        }
        match event.kind {
            EventKind::PolicyLoaded => {
                let sha256 = event.related_value(Related::PolicySha256).ok_or_else(|| {
                    violation(ViolationRule::Malformed, "a policy.loaded that names no policy_sha256".to_owned())
                })?;
                if !self.summary.policies.iter().any(|seen| seen == sha256) {
                    self.summary.policies.push(sha256.to_owned());
                }
                self.in_force = match self.parsed.get(sha256) {
                    Some(policies) => InForce::Loaded(Arc::clone(policies)),
                    None => InForce::Named(sha256.to_owned()),
                };
            }
            EventKind::RelationshipCreated | EventKind::RelationshipEnded => {
                if let (Some(subject), Some(business)) = (event.subject, event.business.clone()) {
                    // Contact state goes with the relationship; a new one
                    // starts from the defaults.
                    self.contact.remove(&(subject, business.clone()));
                    if event.kind == EventKind::RelationshipCreated {
                        self.connected.insert((subject, business));
                    } else {
                        self.connected.remove(&(subject, business));
                    }
                }
            }
            EventKind::RelationshipChanged => {
                if let (Some(subject), Some(business)) = (event.subject, event.business.clone()) {
                    let blocked = event.related_value(Related::RequestsBlocked) == Some("true");
                    self.contact.entry((subject, business)).or_default().blocked = blocked;
                }
            }
            EventKind::ContactChanged => {
                if let (Some(subject), Some(business)) = (event.subject, event.business.clone()) {
                    let text = |name| event.related_value(name).unwrap_or_default().to_owned();
                    let texts = PreferenceTexts {
                        kinds: text(Related::ContactKinds),
                        cap: text(Related::ContactCap),
                        quiet_hours: text(Related::QuietHours),
                        channel: text(Related::Channel),
                    };
                    let preferences = Preferences::from_texts(&texts).ok_or_else(|| {
                        violation(
                            ViolationRule::Malformed,
                            "a contact.changed whose preferences do not parse".to_owned(),
                        )
                    })?;
                    self.contact.entry((subject, business)).or_default().preferences = Some(preferences);
                }
            }
            EventKind::MessageDelivered => self.message_delivered(&event, &violation)?,
            EventKind::GrantCreated => self.grant_created(&event, &violation)?,
            EventKind::GrantRevoked | EventKind::GrantExpired => {
                let grant = event.related_value(Related::GrantId).and_then(|id| self.grants.get_mut(id));
                if let Some(grant) = grant.filter(|grant| grant.ended_at.is_none()) {
                    grant.ended_at = Some(index);
                    self.summary.grants_ended += 1;
                }
            }
            EventKind::ObjectionChanged => {
                if let Some(subject) = event.subject {
                    let purposes = if event.v >= 2 { event.purposes.clone() } else { purposes_of_format_1(&event) };
                    self.objections.insert(subject, purposes);
                }
            }
            EventKind::SubjectErased => {
                if let Some(subject) = event.subject {
                    for id in self.grants_of.get(&subject).into_iter().flatten() {
                        if let Some(grant) = self.grants.get_mut(id).filter(|grant| grant.ended_at.is_none()) {
                            grant.ended_at = Some(index);
                            self.summary.grants_ended += 1;
                        }
                    }
                    self.connected.retain(|(connected, _)| *connected != subject);
                    self.objections.remove(&subject);
                    self.contact.retain(|(of, _), _| *of != subject);
                }
            }
            EventKind::DataRead => self.read(index, &event, &violation)?,
            _ => {}
        }
        Ok(())
    }

    fn grant_created(
        &mut self,
        event: &AuditEvent,
        violation: &dyn Fn(ViolationRule, String) -> Violation,
    ) -> Result<(), Violation> {
        let malformed = |what: &str| violation(ViolationRule::GrantMalformed, format!("a grant.created {what}"));
        let (Some(subject), Some(business), Some(id)) =
            (event.subject, event.business.clone(), event.related_value(Related::GrantId))
        else {
            return Err(malformed("without its subject, business or grant id"));
        };
        if self.grants.contains_key(id) {
            return Err(malformed(&format!("reuses the grant id {id}")));
        }
        let (purposes, window) = if event.v >= 2 {
            let window = event
                .window
                .as_ref()
                .and_then(|window| Some((unix_secs(&window.starts_at)?, unix_secs(&window.expires_at)?)))
                .ok_or_else(|| malformed(&format!("of grant {id} without a window")))?;
            if event.purposes.is_empty() {
                return Err(malformed(&format!("of grant {id} without purposes")));
            }
            (event.purposes.clone(), Some(window))
        } else {
            (purposes_of_format_1(event), None)
        };
        let grant = ReplayGrant { subject, business, purposes, fields: event.fields.clone(), window, ended_at: None };
        self.grants.insert(id.to_owned(), grant);
        self.grants_of.entry(subject).or_default().push(id.to_owned());
        self.summary.grants_created += 1;
        Ok(())
    }

    /// Decides a delivered message again from the state the log built:
    /// the customer connected, her preferences for the business (the
    /// defaults of the policies in force until she set them), her block and
    /// objections, and the business's deliveries in the cap's period.
    fn message_delivered(
        &mut self,
        event: &AuditEvent,
        violation: &dyn Fn(ViolationRule, String) -> Violation,
    ) -> Result<(), Violation> {
        let not_allowed = |detail: String| violation(ViolationRule::MessageNotAllowed, detail);
        let (Some(subject), Some(business), Some(kind), Some(now)) =
            (event.subject, event.business.clone(), event.related_value(Related::MessageKind), unix_secs(&event.time))
        else {
            return Err(violation(
                ViolationRule::Incomplete,
                "a message.delivered names no subject, business, kind or time".to_owned(),
            ));
        };
        let message = event.related_value(Related::MessageId).unwrap_or("(no id)");
        let policies = self.policies_in_force().map_err(|detail| violation(ViolationRule::NoPolicy, detail))?;
        let Some(kind) = policies.rules.message_kinds.get(kind) else {
            return Err(not_allowed(format!(
                "message {message} is of kind `{kind}`, which the policies in force ({}) do not define",
                policies.sha256
            )));
        };
        if !self.connected.contains(&(subject, business.clone())) {
            return Err(not_allowed(format!("message {message} was delivered to a customer not connected")));
        }
        let objections = self.objections.get(&subject).cloned().unwrap_or_default();
        let state = self.contact.entry((subject, business)).or_default();
        let preferences = state.preferences.clone().unwrap_or_else(|| Preferences::defaults(&policies));
        state.delivered.retain(|&at| at > now - contact::Period::LONGEST.secs());
        let since = contact::period_start(&preferences.cap, now);
        let situation = contact::Situation {
            preferences: &preferences,
            blocked: state.blocked,
            objections: &objections,
            kind: &kind.name,
            purpose: &kind.purpose,
            delivered_in_period: state.delivered.iter().filter(|&&at| at > since).count(),
            // What her inbox held is not in the log; a delivery says it
            // had room.
            inbox_items: 0,
            now_secs: now,
        };
        contact::decide(&situation).map_err(|refusal| {
            not_allowed(format!(
                "message {message} was delivered, but her choices then refuse it: {}",
                refusal.as_str()
            ))
        })?;
        state.delivered.push(now);
        self.summary.messages_delivered += 1;
        Ok(())
    }

    /// The policies in force, parsed (once per version) from the bundle
    /// the store holds under the SHA-256 the last `policy.loaded` named.
    fn policies_in_force(&mut self) -> Result<Arc<Policies>, String> {
        let sha256 = match &self.in_force {
            InForce::Loaded(policies) => return Ok(Arc::clone(policies)),
            InForce::None => return Err("no policy.loaded precedes it".to_owned()),
            InForce::Named(sha256) => sha256.clone(),
        };
        let bundle =
            (self.bundle_of)(&sha256).ok_or_else(|| format!("the policies in force ({sha256}) are not held"))?;
        let policies = Policies::from_bundle(Path::new(&format!("policies {sha256}")), &bundle)
            .map_err(|error| format!("the policies in force ({sha256}) do not parse: {error}"))?;
        if policies.sha256 != sha256 {
            return Err(format!("the bundle held under {sha256} has the SHA-256 {}", policies.sha256));
        }
        let policies = Arc::new(policies);
        self.parsed.insert(sha256, Arc::clone(&policies));
        self.in_force = InForce::Loaded(Arc::clone(&policies));
        Ok(policies)
    }

    fn read(
        &mut self,
        index: u64,
        event: &AuditEvent,
        violation: &dyn Fn(ViolationRule, String) -> Violation,
    ) -> Result<(), Violation> {
        // `fields` are the released fields, whatever `decision` says.
        if event.fields.is_empty() {
            self.summary.reads_denied += 1;
            return Ok(());
        }
        // The customer reading her own record needs no grant.
        let own = event.actor.role == Role::Customer
            && event.business.is_none()
            && event.subject.is_some_and(|subject| event.actor.id.as_deref() == Some(subject.to_string().as_str()));
        if own {
            self.summary.reads_own += 1;
            return Ok(());
        }
        if event.v < 2 {
            self.summary.reads_unchecked += 1;
            return Ok(());
        }
        let incomplete =
            |what: &str| violation(ViolationRule::Incomplete, format!("a read that released fields {what}"));
        let (Some(subject), Some(business), Some(purpose)) = (event.subject, &event.business, &event.purpose) else {
            return Err(incomplete("names no subject, business or purpose"));
        };
        if event.grants.is_empty() {
            return Err(incomplete("names no grant it relied on"));
        }
        let now = unix_secs(&event.time).ok_or_else(|| incomplete("has no valid time"))?;
        let policies = self.policies_in_force().map_err(|detail| violation(ViolationRule::NoPolicy, detail))?;
        let mut format_1 = false;
        for id in &event.grants {
            let grant = self.grants.get(id).filter(|grant| grant.subject == subject && grant.business == *business);
            let grant = grant.ok_or_else(|| {
                violation(
                    ViolationRule::GrantUnknown,
                    format!(
                        "the read names grant {id}, which no earlier grant.created gave this business for this customer"
                    ),
                )
            })?;
            format_1 |= grant.window.is_none();
        }
        // The engine, as the vault ran it, on the state rebuilt from the log.
        let views: Vec<GrantView> = self
            .grants_of
            .get(&subject)
            .into_iter()
            .flatten()
            .filter_map(|id| self.grants.get(id).map(|grant| grant.view(id)))
            .collect();
        let objections = self.objections.get(&subject).cloned().unwrap_or_default();
        let query = ReadQuery {
            business,
            purpose,
            fields: &event.fields,
            now,
            connected: self.connected.contains(&(subject, business.clone())),
            objections: &objections,
        };
        for (field, decision) in engine::decide(&policies, &query, &views) {
            let FieldDecision::Withheld(reason) = decision else { continue };
            let uncovered = matches!(
                reason,
                Reason::GrantRevoked
                    | Reason::GrantExpired
                    | Reason::FieldNotGranted
                    | Reason::PurposeNotGranted
                    | Reason::NoConsent
            );
            if uncovered {
                return Err(self.not_covered(index, event, &field, now));
            }
            return Err(violation(
                ViolationRule::DeniedByPolicy,
                format!(
                    "`{field}` was released for `{purpose}`, but the policies in force ({}) withhold it: {}",
                    policies.sha256,
                    reason.code()
                ),
            ));
        }
        // Each released field by a grant the read itself names.
        for field in &event.fields {
            let covered = event.grants.iter().filter_map(|id| self.grants.get(id)).any(|grant| {
                grant.ended_at.is_none()
                    && grant.window.is_none_or(|(starts_at, expires_at)| starts_at <= now && now < expires_at)
                    && grant.purposes.contains(purpose)
                    && grant.fields.contains(field)
            });
            if !covered {
                return Err(self.not_covered(index, event, field, now));
            }
        }
        if format_1 {
            self.summary.reads_unchecked += 1;
        } else {
            self.summary.reads_released += 1;
            self.summary.fields_released += event.fields.len() as u64;
        }
        Ok(())
    }

    /// The violation for `field`, released by the read at `index` but not
    /// covered, saying why each grant it names does not cover it.
    fn not_covered(&self, index: u64, event: &AuditEvent, field: &str, now: i64) -> Violation {
        let purpose = event.purpose.as_deref().unwrap_or_default();
        let why: Vec<String> = event
            .grants
            .iter()
            .map(|id| match self.grants.get(id) {
                None => format!("{id} was never created"),
                Some(grant) => match (grant.ended_at, grant.window) {
                    (Some(ended), _) => format!("{id} ended at entry {ended}"),
                    (None, Some((starts_at, expires_at))) if now < starts_at || now >= expires_at => {
                        format!("{id} is live from {starts_at} to {expires_at} (Unix seconds), not at {now}")
                    }
                    _ if !grant.purposes.iter().any(|p| p == purpose) => format!("{id} is not for `{purpose}`"),
                    _ => format!("{id} does not name `{field}`"),
                },
            })
            .collect();
        Violation {
            index,
            rule: ViolationRule::NotCovered,
            detail: format!(
                "`{field}` was released for `{purpose}` with no live grant covering it: {}",
                why.join("; ")
            ),
        }
    }
}

/// Replays `entries` (every entry from index 0, in order) with the stored
/// policy bundles `bundle_of`; stops at the first violation. An `Err` from
/// `entries` ends the replay and is returned.
pub fn replay<E>(
    entries: impl IntoIterator<Item = Result<(u64, Vec<u8>), E>>,
    bundle_of: &dyn Fn(&str) -> Option<Vec<u8>>,
    progress: &dyn Fn(u64),
) -> Result<ReplaySummary, E> {
    let mut replay = Replay::new(bundle_of);
    for entry in entries {
        let (index, bytes) = entry?;
        replay.step(index, &bytes);
        progress(index + 1);
        if replay.summary.violation.is_some() {
            break;
        }
    }
    Ok(replay.finish())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::audit::{Actor, Decision, Window};

    const ALICE: [u8; 16] = [1; 16];
    const BOB: [u8; 16] = [2; 16];

    /// A log under construction: events at whole seconds from a fixed start.
    struct Log(Vec<AuditEvent>);

    fn at(secs: i64) -> String {
        crate::core::VaultClock::rfc3339_at(1_800_000_000 + secs)
    }

    impl Log {
        fn new() -> Self {
            let policies = Policies::built_in();
            let loaded = AuditEvent::new(EventKind::PolicyLoaded, Actor::system(), &at(0))
                .related(Related::PolicySha256, &policies.sha256);
            let mut log = Self(vec![loaded]);
            log.connect(ALICE, "shop");
            log
        }

        fn push(&mut self, event: AuditEvent) -> u64 {
            self.0.push(event);
            self.0.len() as u64 - 1
        }

        fn connect(&mut self, subject: [u8; 16], business: &str) {
            let mut event = AuditEvent::new(EventKind::RelationshipCreated, Actor::system(), &at(0))
                .subject(SubjectId::from_bytes(subject));
            event.business = Some(business.to_owned());
            self.push(event);
        }

        fn grant(&mut self, id: &str, subject: [u8; 16], purpose: &str, fields: &[&str], window: (i64, i64)) -> u64 {
            let mut event = AuditEvent::new(EventKind::GrantCreated, Actor::system(), &at(window.0))
                .subject(SubjectId::from_bytes(subject))
                .fields(fields.iter().map(|f| (*f).to_owned()).collect())
                .related(Related::GrantId, id);
            event.business = Some("shop".to_owned());
            event.purposes = vec![purpose.to_owned()];
            event.window = Some(Window { starts_at: at(window.0), expires_at: at(window.1) });
            self.push(event)
        }

        fn end(&mut self, kind: EventKind, id: &str, time: i64) -> u64 {
            let event = AuditEvent::new(kind, Actor::system(), &at(time))
                .subject(SubjectId::from_bytes(ALICE))
                .related(Related::GrantId, id);
            self.push(event)
        }

        fn read(&mut self, subject: [u8; 16], purpose: &str, fields: &[&str], grants: &[&str], time: i64) -> u64 {
            let mut event = AuditEvent::new(EventKind::DataRead, Actor::new(Role::Business, "shop"), &at(time))
                .subject(SubjectId::from_bytes(subject))
                .fields(fields.iter().map(|f| (*f).to_owned()).collect());
            event.business = Some("shop".to_owned());
            event.purpose = Some(purpose.to_owned());
            event.decision = Some(Decision::Allow);
            event.requested = event.fields.clone();
            event.grants = grants.iter().map(|g| (*g).to_owned()).collect();
            self.push(event)
        }

        fn message(&mut self, kind: &str, time: i64) -> u64 {
            let mut event = AuditEvent::new(EventKind::MessageDelivered, Actor::new(Role::Business, "shop"), &at(time))
                .subject(SubjectId::from_bytes(ALICE))
                .related(Related::MessageKind, kind)
                .related(Related::MessageId, format!("m{time}"));
            event.business = Some("shop".to_owned());
            self.push(event)
        }

        fn contact(&mut self, preferences: &Preferences, time: i64) -> u64 {
            let texts = preferences.texts();
            let mut event = AuditEvent::new(EventKind::ContactChanged, Actor::system(), &at(time))
                .subject(SubjectId::from_bytes(ALICE))
                .related(Related::ContactKinds, texts.kinds)
                .related(Related::ContactCap, texts.cap)
                .related(Related::QuietHours, texts.quiet_hours)
                .related(Related::Channel, texts.channel);
            event.business = Some("shop".to_owned());
            self.push(event)
        }

        fn replay(&self) -> ReplaySummary {
            let bundle = Policies::built_in().bundle().to_vec();
            let sha256 = Policies::built_in().sha256;
            let bundle_of = move |wanted: &str| (wanted == sha256).then(|| bundle.clone());
            let entries = self.0.iter().enumerate().map(|(i, e)| Ok::<_, ()>((i as u64, e.to_bytes().unwrap())));
            replay(entries, &bundle_of, &|_| {}).unwrap()
        }
    }

    /// The first violation's index and rule, or `None`.
    fn check(log: &Log) -> Option<(u64, ViolationRule)> {
        log.replay().violation.map(|violation| (violation.index, violation.rule))
    }

    #[test]
    fn reads_inside_live_grants_replay_clean() {
        let mut log = Log::new();
        log.grant("g1", ALICE, "order-fulfilment", &["email", "phone"], (10, 100));
        log.read(ALICE, "order-fulfilment", &["email"], &["g1"], 10);
        log.read(ALICE, "order-fulfilment", &["email", "phone"], &["g1"], 99);
        let summary = log.replay();
        assert_eq!(summary.violation, None);
        assert_eq!((summary.reads_released, summary.fields_released, summary.grants_created), (2, 3, 1));
        assert_eq!(summary.policies, vec![Policies::built_in().sha256]);
    }

    #[test]
    fn a_read_with_no_live_grant_fails_at_its_index() {
        let mut log = Log::new();
        let read = log.read(ALICE, "order-fulfilment", &["email"], &["g1"], 10);
        assert_eq!(check(&log), Some((read, ViolationRule::GrantUnknown)));
        let mut log = Log::new();
        log.grant("g1", ALICE, "order-fulfilment", &["phone"], (10, 100));
        let read = log.read(ALICE, "order-fulfilment", &["email"], &["g1"], 20);
        assert_eq!(check(&log), Some((read, ViolationRule::NotCovered)));
        let mut log = Log::new();
        log.grant("g1", ALICE, "order-fulfilment", &["email"], (10, 100));
        let read = log.read(ALICE, "marketing", &["email"], &["g1"], 20);
        assert_eq!(check(&log), Some((read, ViolationRule::NotCovered)));
    }

    #[test]
    fn a_read_after_a_revoke_or_an_expiry_event_fails_at_its_index() {
        for kind in [EventKind::GrantRevoked, EventKind::GrantExpired] {
            let mut log = Log::new();
            log.grant("g1", ALICE, "order-fulfilment", &["email"], (10, 100));
            log.read(ALICE, "order-fulfilment", &["email"], &["g1"], 20);
            log.end(kind, "g1", 30);
            // Same second as the revoke: the position decides, not the clock.
            let read = log.read(ALICE, "order-fulfilment", &["email"], &["g1"], 30);
            let violation = log.replay().violation.unwrap();
            assert_eq!((violation.index, violation.rule), (read, ViolationRule::NotCovered));
            assert!(violation.detail.contains("g1 ended at entry 4"), "{}", violation.detail);
        }
    }

    #[test]
    fn a_read_outside_the_window_fails_at_its_index() {
        let mut log = Log::new();
        log.grant("g1", ALICE, "order-fulfilment", &["email"], (10, 100));
        let read = log.read(ALICE, "order-fulfilment", &["email"], &["g1"], 100);
        assert_eq!(check(&log), Some((read, ViolationRule::NotCovered)));
        let mut log = Log::new();
        log.grant("g1", ALICE, "order-fulfilment", &["email"], (50, 100));
        let read = log.read(ALICE, "order-fulfilment", &["email"], &["g1"], 49);
        assert_eq!(check(&log), Some((read, ViolationRule::NotCovered)));
    }

    #[test]
    fn objections_disconnects_erasures_and_rules_are_replayed() {
        // An objection to the purpose.
        let mut log = Log::new();
        log.grant("g1", ALICE, "marketing", &["email"], (10, 100));
        let mut objection = AuditEvent::new(EventKind::ObjectionChanged, Actor::system(), &at(20))
            .subject(SubjectId::from_bytes(ALICE));
        objection.purposes = vec!["marketing".to_owned()];
        log.push(objection);
        let read = log.read(ALICE, "marketing", &["email"], &["g1"], 30);
        assert_eq!(check(&log), Some((read, ViolationRule::DeniedByPolicy)));
        // Not connected (the relationship ended).
        let mut log = Log::new();
        log.grant("g1", ALICE, "order-fulfilment", &["email"], (10, 100));
        let mut ended = AuditEvent::new(EventKind::RelationshipEnded, Actor::system(), &at(20))
            .subject(SubjectId::from_bytes(ALICE));
        ended.business = Some("shop".to_owned());
        log.push(ended);
        let read = log.read(ALICE, "order-fulfilment", &["email"], &["g1"], 30);
        assert_eq!(check(&log), Some((read, ViolationRule::DeniedByPolicy)));
        // Erased: her relationships and grants ended with her.
        let mut log = Log::new();
        log.grant("g1", ALICE, "order-fulfilment", &["email"], (10, 100));
        log.push(
            AuditEvent::new(EventKind::SubjectErased, Actor::system(), &at(20)).subject(SubjectId::from_bytes(ALICE)),
        );
        let read = log.read(ALICE, "order-fulfilment", &["email"], &["g1"], 30);
        let violation = log.replay().violation.unwrap();
        assert_eq!((violation.index, violation.rule), (read, ViolationRule::DeniedByPolicy));
        assert!(violation.detail.contains("no_relationship"), "{}", violation.detail);
        assert_eq!(log.replay().grants_ended, 1);
        // Another customer's grant.
        let mut log = Log::new();
        log.connect(BOB, "shop");
        log.grant("g1", BOB, "order-fulfilment", &["email"], (10, 100));
        let read = log.read(ALICE, "order-fulfilment", &["email"], &["g1"], 30);
        assert_eq!(check(&log), Some((read, ViolationRule::GrantUnknown)));
    }

    #[test]
    fn policies_must_be_in_force_and_held() {
        let mut log = Log::new();
        log.0.remove(0);
        log.grant("g1", ALICE, "order-fulfilment", &["email"], (10, 100));
        let read = log.read(ALICE, "order-fulfilment", &["email"], &["g1"], 30);
        assert_eq!(check(&log), Some((read, ViolationRule::NoPolicy)));
        let mut log = Log::new();
        log.push(
            AuditEvent::new(EventKind::PolicyLoaded, Actor::system(), &at(1)).related(Related::PolicySha256, "00"),
        );
        log.grant("g1", ALICE, "order-fulfilment", &["email"], (10, 100));
        let read = log.read(ALICE, "order-fulfilment", &["email"], &["g1"], 30);
        assert_eq!(check(&log), Some((read, ViolationRule::NoPolicy)));
    }

    #[test]
    fn format_1_reads_are_counted_unchecked_and_the_format_never_goes_back() {
        let mut log = Log::new();
        let mut old = AuditEvent::new(EventKind::DataRead, Actor::new(Role::Business, "shop"), &at(5))
            .fields(vec!["email".to_owned()]);
        old.v = 1;
        old.decision = Some(Decision::Allow);
        log.0.insert(0, old.clone());
        log.grant("g1", ALICE, "order-fulfilment", &["email"], (10, 100));
        assert_eq!(log.replay().reads_unchecked, 1);
        assert_eq!(check(&log), None);
        let at_index = log.push(old);
        assert_eq!(check(&log), Some((at_index, ViolationRule::FormatWentBack)));
    }

    #[test]
    fn her_own_reads_need_no_grant_but_nobody_else_passes_as_her() {
        let mut log = Log::new();
        let subject = SubjectId::from_bytes(ALICE);
        let own = AuditEvent::new(EventKind::DataRead, Actor::customer(subject), &at(5))
            .subject(subject)
            .fields(vec!["email".to_owned()]);
        log.push(own.clone());
        assert_eq!((check(&log), log.replay().reads_own), (None, 1));
        let mut other = own;
        other.actor = Actor::customer(SubjectId::from_bytes(BOB));
        let index = log.push(other);
        assert_eq!(check(&log), Some((index, ViolationRule::Incomplete)));
    }

    #[test]
    fn a_denied_read_needs_no_grant() {
        let mut log = Log::new();
        let mut denied = AuditEvent::new(EventKind::DataRead, Actor::new(Role::Business, "shop"), &at(5))
            .subject(SubjectId::from_bytes(ALICE));
        denied.decision = Some(Decision::Deny);
        log.push(denied);
        let summary = log.replay();
        assert_eq!((summary.violation, summary.reads_denied), (None, 1));
    }

    /// The rule of the first violation, if any.
    fn broken(log: &Log) -> Option<(u64, ViolationRule)> {
        log.replay().violation.map(|violation| (violation.index, violation.rule))
    }

    #[test]
    fn each_delivered_message_is_decided_again_on_her_choices_then() {
        // Service messages by default, five a week.
        let mut log = Log::new();
        for day in 0..5 {
            log.message("service", day * 86_400);
        }
        assert_eq!(log.replay().messages_delivered, 5);
        let sixth = log.message("service", 5 * 86_400);
        assert_eq!(broken(&log), Some((sixth, ViolationRule::MessageNotAllowed)), "over the default cap");

        // A kind she never took; then takes; then objects to its purpose.
        let mut log = Log::new();
        let offer = log.message("offers", 10);
        assert_eq!(broken(&log), Some((offer, ViolationRule::MessageNotAllowed)));
        let mut log = Log::new();
        let mut takes_offers = Preferences::defaults(&Policies::built_in());
        takes_offers.kinds = vec!["offers".to_owned(), "service".to_owned()];
        log.contact(&takes_offers, 5);
        log.message("offers", 10);
        assert_eq!(broken(&log), None);
        let mut objection = AuditEvent::new(EventKind::ObjectionChanged, Actor::system(), &at(20))
            .subject(SubjectId::from_bytes(ALICE));
        objection.purposes = vec!["marketing".to_owned()];
        log.push(objection);
        let objected = log.message("offers", 30);
        assert_eq!(broken(&log), Some((objected, ViolationRule::MessageNotAllowed)));

        // Blocked, then unblocked.
        let mut log = Log::new();
        let block = |blocked: bool, time| {
            let mut event = AuditEvent::new(EventKind::RelationshipChanged, Actor::system(), &at(time))
                .subject(SubjectId::from_bytes(ALICE))
                .related(Related::RequestsBlocked, blocked.to_string());
            event.business = Some("shop".to_owned());
            event
        };
        log.push(block(true, 5));
        log.push(block(false, 6));
        log.message("service", 10);
        assert_eq!(broken(&log), None);
        log.push(block(true, 11));
        let blocked = log.message("service", 12);
        assert_eq!(broken(&log), Some((blocked, ViolationRule::MessageNotAllowed)));

        // Quiet hours on her wall clock: 1_800_000_000 is 08:00 UTC.
        let mut log = Log::new();
        let mut quiet = Preferences::defaults(&Policies::built_in());
        quiet.quiet_hours =
            Some(contact::QuietHours { from: "07:30".to_owned(), to: "08:30".to_owned(), time_zone: "UTC".to_owned() });
        log.contact(&quiet, 1);
        log.message("service", 3_600);
        assert_eq!(broken(&log), None, "08:00 + 1 h is after her quiet hours");
        let in_quiet = log.message("service", 2 * 86_400);
        assert_eq!(broken(&log), Some((in_quiet, ViolationRule::MessageNotAllowed)));
    }

    #[test]
    fn contact_state_goes_with_the_relationship_and_the_customer() {
        // A disconnect drops her preferences and the cap's count: after
        // reconnecting, the defaults again.
        let mut log = Log::new();
        let mut takes_offers = Preferences::defaults(&Policies::built_in());
        takes_offers.kinds = vec!["offers".to_owned()];
        log.contact(&takes_offers, 1);
        log.message("offers", 2);
        let mut ended = AuditEvent::new(EventKind::RelationshipEnded, Actor::system(), &at(3))
            .subject(SubjectId::from_bytes(ALICE));
        ended.business = Some("shop".to_owned());
        log.push(ended);
        let disconnected = log.message("service", 4);
        assert_eq!(broken(&log), Some((disconnected, ViolationRule::MessageNotAllowed)), "not connected");
        let mut log_again = Log(log.0[..log.0.len() - 1].to_vec());
        log_again.connect(ALICE, "shop");
        let offer = log_again.message("offers", 5);
        assert_eq!(broken(&log_again), Some((offer, ViolationRule::MessageNotAllowed)), "the defaults again");
        // Another customer's preferences are hers only.
        let mut log = Log::new();
        log.connect(BOB, "shop");
        log.contact(&takes_offers, 1);
        let mut to_bob = AuditEvent::new(EventKind::MessageDelivered, Actor::new(Role::Business, "shop"), &at(2))
            .subject(SubjectId::from_bytes(BOB))
            .related(Related::MessageKind, "offers");
        to_bob.business = Some("shop".to_owned());
        let bob = log.push(to_bob);
        assert_eq!(broken(&log), Some((bob, ViolationRule::MessageNotAllowed)));
    }
}
