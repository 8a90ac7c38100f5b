//! Audit events: the catalogue of kinds and the canonical byte form.
//!
//! An event is serialised once, to compact JSON with its keys in
//! lexicographic order and absent values omitted, and those exact bytes are
//! stored and hashed as the Merkle leaf. Events hold ids, field names,
//! purposes, decisions and reason codes, never a personal value.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::SubjectId;

/// Version of the event format, stored in every event as `v`. Format 2
/// added what a replay needs (`grants`, `purposes`, `requested`, `window`,
/// and a grant's `receipt_id`); a format 1 entry has none of them and reads
/// back as it was written.
pub const EVENT_FORMAT_VERSION: u8 = 2;
/// Largest stored event, in bytes; an event is ids and names only, so
/// anything larger is a bug, and is refused rather than stored.
pub const EVENT_BYTES_MAX: usize = 16 * 1024;

/// Every kind of event the log records. The wire name is the dotted string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum EventKind {
    /// A subject (customer record) was created, with its data key.
    #[serde(rename = "subject.created")]
    SubjectCreated,
    /// A subject was erased: its data key destroyed, its values removed.
    #[serde(rename = "subject.erased")]
    SubjectErased,
    /// Field values were written (`fields` names them).
    #[serde(rename = "data.written")]
    DataWritten,
    /// Field values were deleted.
    #[serde(rename = "data.deleted")]
    DataDeleted,
    /// Data was read: `decision` is `allow`, `partial` or `deny`; `fields`
    /// are the released fields, `reasons` say why each other requested field
    /// was withheld.
    #[serde(rename = "data.read")]
    DataRead,
    /// Everything held about a subject was exported to the subject.
    #[serde(rename = "data.exported")]
    DataExported,
    /// A customer connected to a business.
    #[serde(rename = "relationship.created")]
    RelationshipCreated,
    /// A relationship ended (disconnect or erasure).
    #[serde(rename = "relationship.ended")]
    RelationshipEnded,
    /// The customer blocked or unblocked a business's access requests.
    #[serde(rename = "relationship.changed")]
    RelationshipChanged,
    /// A business asked a customer for access.
    #[serde(rename = "access_request.created")]
    AccessRequestCreated,
    /// The customer approved a request (possibly narrowed).
    #[serde(rename = "access_request.approved")]
    AccessRequestApproved,
    /// The customer denied a request.
    #[serde(rename = "access_request.denied")]
    AccessRequestDenied,
    /// A pending request expired or was closed by erasure.
    #[serde(rename = "access_request.closed")]
    AccessRequestClosed,
    /// A grant was created.
    #[serde(rename = "grant.created")]
    GrantCreated,
    /// A grant was revoked (by the customer, a disconnect or erasure).
    #[serde(rename = "grant.revoked")]
    GrantRevoked,
    /// A grant reached its end.
    #[serde(rename = "grant.expired")]
    GrantExpired,
    /// The customer's objections changed.
    #[serde(rename = "objection.changed")]
    ObjectionChanged,
    /// A key-encryption key rotation started, progressed or finished.
    #[serde(rename = "key.rotated")]
    KeyRotated,
    /// Policies were loaded (`related.policy_sha256` names their hash).
    #[serde(rename = "policy.loaded")]
    PolicyLoaded,
    /// A principal (business, auditor, admin, customer login) was created.
    #[serde(rename = "principal.created")]
    PrincipalCreated,
    /// A principal was disabled; its tokens stop working.
    #[serde(rename = "principal.disabled")]
    PrincipalDisabled,
    /// A principal's registration changed (a business's controller
    /// details).
    #[serde(rename = "principal.changed")]
    PrincipalChanged,
    /// A principal's client secret was replaced; the old one, and every
    /// token issued under it, stopped working.
    #[serde(rename = "principal.secret_rotated")]
    PrincipalSecretRotated,
    /// The vault was restored from a backup: the first event after the
    /// backup's log (`related` names the backup's checkpoint size and root
    /// hash and the backup file's SHA-256).
    #[serde(rename = "vault.restored")]
    VaultRestored,
    /// A business's message was delivered to a customer's inbox
    /// (`related`: `message_id`, `message_kind`, `pairwise_id`; `purpose`
    /// the kind's). The text is sealed in her inbox, never logged.
    #[serde(rename = "message.delivered")]
    MessageDelivered,
    /// A business's message was refused (`related.cause` says why:
    /// `not_connected`, `blocked`, `kind_not_allowed`, `objection`,
    /// `cap_reached`, `quiet_hours`, `inbox_full`).
    #[serde(rename = "message.refused")]
    MessageRefused,
    /// The customer wrote to a business: a reply (`related.in_reply_to`)
    /// or feedback.
    #[serde(rename = "message.sent")]
    MessageSent,
    /// Message texts were opened for a reader: the customer (her inbox) or
    /// a business (her replies to it). `messages` names them.
    #[serde(rename = "message.read")]
    MessageRead,
    /// The customer changed her contact preferences for a business.
    #[serde(rename = "contact.changed")]
    ContactChanged,
    /// The vault told the customer a grant of hers ends soon
    /// (`related.grant_id`).
    #[serde(rename = "grant.expiring")]
    GrantExpiring,
    /// An operator accepted that the store is behind a checkpoint the vault
    /// had published (`related` names the size published and the size
    /// held): the vault signs again from what it holds.
    #[serde(rename = "vault.rollback_accepted")]
    VaultRollbackAccepted,
}

impl EventKind {
    /// The wire name (`data.read`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SubjectCreated => "subject.created",
            Self::SubjectErased => "subject.erased",
            Self::DataWritten => "data.written",
            Self::DataDeleted => "data.deleted",
            Self::DataRead => "data.read",
            Self::DataExported => "data.exported",
            Self::RelationshipCreated => "relationship.created",
            Self::RelationshipEnded => "relationship.ended",
            Self::RelationshipChanged => "relationship.changed",
            Self::AccessRequestCreated => "access_request.created",
            Self::AccessRequestApproved => "access_request.approved",
            Self::AccessRequestDenied => "access_request.denied",
            Self::AccessRequestClosed => "access_request.closed",
            Self::GrantCreated => "grant.created",
            Self::GrantRevoked => "grant.revoked",
            Self::GrantExpired => "grant.expired",
            Self::ObjectionChanged => "objection.changed",
            Self::KeyRotated => "key.rotated",
            Self::PolicyLoaded => "policy.loaded",
            Self::PrincipalCreated => "principal.created",
            Self::PrincipalDisabled => "principal.disabled",
            Self::PrincipalChanged => "principal.changed",
            Self::PrincipalSecretRotated => "principal.secret_rotated",
            Self::VaultRestored => "vault.restored",
            Self::VaultRollbackAccepted => "vault.rollback_accepted",
            Self::MessageDelivered => "message.delivered",
            Self::MessageRefused => "message.refused",
            Self::MessageSent => "message.sent",
            Self::MessageRead => "message.read",
            Self::ContactChanged => "contact.changed",
            Self::GrantExpiring => "grant.expiring",
        }
    }

    /// Parses a wire name.
    pub fn parse(name: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(name.to_owned())).ok()
    }
}

/// Who acted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A customer acting on their own record.
    Customer,
    /// A business.
    Business,
    /// An auditor.
    Auditor,
    /// The operator.
    Admin,
    /// The vault itself (expiry sweeps, key rotation, start-up).
    System,
}

/// The names under which an event relates ids and facts (`related`). New
/// events are built only from these, so a name cannot be misspelt; the
/// stored form is the name as text, and a log written before reads the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Related {
    /// A grant's id.
    GrantId,
    /// The grants a read relied on, comma-separated (format 1; format 2
    /// lists them in `grants`).
    GrantIds,
    /// An access request's id.
    RequestId,
    /// A relationship's id.
    RelationshipId,
    /// The customer, as the business concerned knows them.
    PairwiseId,
    /// Why it happened (`disconnect`, `erasure`, `retention`, `expired`,
    /// `reload`, `encryption_limit`, ...).
    Cause,
    /// Purposes, comma-separated (format 1; format 2 lists them in
    /// `purposes`).
    Purposes,
    /// The id of the consent receipt issued with a grant.
    ReceiptId,
    /// How many requested field names were not in the catalogue.
    UnknownFields,
    /// The principal created or disabled, under its role's name.
    Principal(Role),
    /// The external issuer of a customer's first token.
    Issuer,
    /// The SHA-256 of the policies loaded.
    PolicySha256,
    /// A key rotation's step.
    Step,
    /// The KEK version a rotation moves to.
    KekVersion,
    /// The KEK versions a rotation retires, comma-separated.
    RetiringVersions,
    /// A replaced DEK's new generation.
    DekVersion,
    /// The tree size of a restored backup's checkpoint.
    BackupCheckpointSize,
    /// The root hash of a restored backup's checkpoint.
    BackupCheckpointRoot,
    /// The SHA-256 of a restored backup file.
    BackupSha256,
    /// Whether a relationship's business may ask for access (`true`,
    /// `false`).
    RequestsBlocked,
    /// The size of the newest checkpoint the vault had published.
    PublishedSize,
    /// The size of the log the store held.
    HeldSize,
    /// A message's id.
    MessageId,
    /// A message's kind (`message_kinds` in the policies).
    MessageKind,
    /// The message a customer's message answers.
    InReplyTo,
    /// Contact preferences after a change: the kinds taken,
    /// comma-separated.
    ContactKinds,
    /// Contact preferences after a change: the cap (`5/week`).
    ContactCap,
    /// Contact preferences after a change: quiet hours (`22:00-07:00
    /// Europe/Paris`), or `none`.
    QuietHours,
    /// Contact preferences after a change: the channel.
    Channel,
}

impl Related {
    /// The name as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::GrantId => "grant_id",
            Self::GrantIds => "grant_ids",
            Self::RequestId => "request_id",
            Self::RelationshipId => "relationship_id",
            Self::PairwiseId => "pairwise_id",
            Self::Cause => "cause",
            Self::Purposes => "purposes",
            Self::ReceiptId => "receipt_id",
            Self::UnknownFields => "unknown_fields",
            Self::Principal(Role::Customer) => "customer",
            Self::Principal(Role::Business) => "business",
            Self::Principal(Role::Auditor) => "auditor",
            Self::Principal(Role::Admin) => "admin",
            Self::Principal(Role::System) => "system",
            Self::Issuer => "issuer",
            Self::PolicySha256 => "policy_sha256",
            Self::Step => "step",
            Self::KekVersion => "kek_version",
            Self::RetiringVersions => "retiring_versions",
            Self::DekVersion => "dek_version",
            Self::BackupCheckpointSize => "backup_checkpoint_size",
            Self::BackupCheckpointRoot => "backup_checkpoint_root",
            Self::BackupSha256 => "backup_sha256",
            Self::RequestsBlocked => "requests_blocked",
            Self::PublishedSize => "published_size",
            Self::HeldSize => "held_size",
            Self::MessageId => "message_id",
            Self::MessageKind => "message_kind",
            Self::InReplyTo => "in_reply_to",
            Self::ContactKinds => "contact_kinds",
            Self::ContactCap => "contact_cap",
            Self::QuietHours => "quiet_hours",
            Self::Channel => "channel",
        }
    }
}

/// The actor of an event: a role and an id (the vault itself has none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Actor {
    /// The actor's id within its role.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub id: Option<String>,
    /// The actor's role.
    pub role: Role,
}

impl Actor {
    /// A customer acting on their own subject.
    pub fn customer(subject: SubjectId) -> Self {
        Self { id: Some(subject.to_string()), role: Role::Customer }
    }

    /// The vault itself.
    pub fn system() -> Self {
        Self { id: None, role: Role::System }
    }

    /// An actor of `role` with `id`.
    pub fn new(role: Role, id: impl Into<String>) -> Self {
        Self { id: Some(id.into()), role }
    }
}

/// The outcome of a read decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// Every requested field was released.
    Allow,
    /// Some requested fields were released, some withheld.
    Partial,
    /// Nothing was released.
    Deny,
}

impl Decision {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Partial => "partial",
            Self::Deny => "deny",
        }
    }

    /// Parses a wire name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "allow" => Some(Self::Allow),
            "partial" => Some(Self::Partial),
            "deny" => Some(Self::Deny),
            _ => None,
        }
    }
}

/// A requested field that was not released, with a stable reason code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Withheld {
    /// The field name (always a catalogue name).
    pub field: String,
    /// The reason code (`field_not_granted`, `objection`, ...).
    #[schema(value_type = crate::policy::engine::ReasonCode)]
    pub reason: String,
}

/// A grant's window: live from `starts_at` up to, not including,
/// `expires_at` (RFC 3339, UTC, whole seconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// The first second the grant is no longer live.
    #[schema(format = DateTime)]
    pub expires_at: String,
    /// The first second the grant is live.
    #[schema(format = DateTime)]
    pub starts_at: String,
}

/// One audit event. Field order here is the lexicographic key order of the
/// canonical JSON, so serialising this struct is the canonical form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditEvent {
    /// Who acted.
    pub actor: Actor,
    /// The business concerned, if any.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub business: Option<String>,
    /// The read decision, for `data.read`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub decision: Option<Decision>,
    /// Field names concerned (written, deleted, released, granted).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub fields: Vec<String>,
    /// The grants a read relied on, in the order of `fields` first covered.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub grants: Vec<String>,
    /// What happened.
    pub kind: EventKind,
    /// The messages whose texts a `message.read` opened (ids only).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub messages: Vec<String>,
    /// The purpose concerned, if any.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub purpose: Option<String>,
    /// The purposes concerned: a grant's, a request's, or the customer's
    /// objections after the change.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub purposes: Vec<String>,
    /// Per withheld field, the reason code.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub reasons: Vec<Withheld>,
    /// Related ids by name (`grant_id`, `request_id`, `relationship_id`,
    /// `policy_sha256`, ...).
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub related: BTreeMap<String, String>,
    /// The catalogue fields a read asked for (released or not).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub requested: Vec<String>,
    /// The subject concerned, if any.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    #[schema(value_type = Option<String>)]
    pub subject: Option<SubjectId>,
    /// When it happened (RFC 3339, UTC, whole seconds).
    #[schema(format = DateTime)]
    pub time: String,
    /// The event format version.
    pub v: u8,
    /// A grant's window.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub window: Option<Window>,
}

/// An event that cannot be stored or a stored entry that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// The event's canonical form is larger than [`EVENT_BYTES_MAX`].
    #[error("audit event is larger than {EVENT_BYTES_MAX} bytes")]
    TooLarge,
    /// Stored bytes are not a valid event.
    #[error("stored audit entry is not a valid event")]
    Malformed,
    /// Stored bytes are not in canonical form (re-encoding differs).
    #[error("stored audit entry is not in canonical form")]
    NotCanonical,
}

impl AuditEvent {
    /// A new event of `kind` by `actor` at `time`, with nothing else set.
    pub fn new(kind: EventKind, actor: Actor, time: &str) -> Self {
        Self {
            actor,
            business: None,
            decision: None,
            fields: Vec::new(),
            grants: Vec::new(),
            kind,
            messages: Vec::new(),
            purpose: None,
            purposes: Vec::new(),
            reasons: Vec::new(),
            related: BTreeMap::new(),
            requested: Vec::new(),
            subject: None,
            time: time.to_owned(),
            v: EVENT_FORMAT_VERSION,
            window: None,
        }
    }

    /// Sets the subject.
    pub fn subject(mut self, subject: SubjectId) -> Self {
        self.subject = Some(subject);
        self
    }

    /// Sets the field names.
    pub fn fields(mut self, fields: Vec<String>) -> Self {
        self.fields = fields;
        self
    }

    /// Adds a related id or fact under its name.
    pub fn related(mut self, name: Related, value: impl Into<String>) -> Self {
        self.related.insert(name.as_str().to_owned(), value.into());
        self
    }

    /// The related value under `name`, if the event carries one.
    pub fn related_value(&self, name: Related) -> Option<&str> {
        self.related.get(name.as_str()).map(String::as_str)
    }

    /// The canonical bytes: the exact leaf input.
    pub fn to_bytes(&self) -> Result<Vec<u8>, EventError> {
        // Serialising plain strings, numbers and maps into a Vec cannot fail.
        let bytes = serde_json::to_vec(self).map_err(|_| EventError::Malformed)?;
        if bytes.len() > EVENT_BYTES_MAX {
            return Err(EventError::TooLarge);
        }
        Ok(bytes)
    }

    /// Parses stored bytes and checks they are canonical.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, EventError> {
        let event: Self = serde_json::from_slice(bytes).map_err(|_| EventError::Malformed)?;
        if event.to_bytes()? != bytes {
            return Err(EventError::NotCanonical);
        }
        Ok(event)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn canonical_form_has_sorted_keys_and_round_trips() {
        let event = AuditEvent::new(EventKind::DataRead, Actor::new(Role::Business, "b1"), "2026-11-23T19:00:00Z")
            .subject(SubjectId::from_bytes([1; 16]))
            .fields(vec!["email".to_owned()])
            .related(Related::GrantId, "g1");
        let bytes = event.to_bytes().unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert_eq!(
            text,
            r#"{"actor":{"id":"b1","role":"business"},"fields":["email"],"kind":"data.read","related":{"grant_id":"g1"},"subject":"01010101010101010101010101010101","time":"2026-11-23T19:00:00Z","v":2}"#
        );
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let keys: Vec<&String> = value.as_object().unwrap().keys().collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        assert_eq!(AuditEvent::from_bytes(&bytes).unwrap(), event);
    }

    #[test]
    fn format_2_members_sort_into_place_and_format_1_entries_still_read() {
        let mut event = AuditEvent::new(EventKind::GrantCreated, Actor::system(), "2026-11-23T19:00:00Z");
        event.grants = vec!["g".to_owned()];
        event.purposes = vec!["marketing".to_owned()];
        event.requested = vec!["email".to_owned()];
        event.window = Some(Window { expires_at: "b".to_owned(), starts_at: "a".to_owned() });
        let bytes = event.to_bytes().unwrap();
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let keys: Vec<&String> = value.as_object().unwrap().keys().collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        assert_eq!(AuditEvent::from_bytes(&bytes).unwrap(), event);
        let format_1 = r#"{"actor":{"id":"c","role":"customer"},"business":"b","fields":["email"],"kind":"grant.created","related":{"grant_id":"g","purposes":"marketing,order-fulfilment"},"time":"2026-11-23T19:00:00Z","v":1}"#;
        let read = AuditEvent::from_bytes(format_1.as_bytes()).unwrap();
        assert_eq!(read.v, 1);
        assert_eq!(read.to_bytes().unwrap(), format_1.as_bytes());
    }

    #[test]
    fn non_canonical_or_unknown_entries_are_refused() {
        let event = AuditEvent::new(EventKind::SubjectCreated, Actor::system(), "2026-11-23T19:00:00Z");
        let bytes = event.to_bytes().unwrap();
        let spaced = String::from_utf8(bytes).unwrap().replace(':', ": ");
        assert_eq!(AuditEvent::from_bytes(spaced.as_bytes()), Err(EventError::NotCanonical));
        let extra = r#"{"actor":{"role":"system"},"kind":"subject.created","time":"t","v":1,"value":"x"}"#;
        assert_eq!(AuditEvent::from_bytes(extra.as_bytes()), Err(EventError::Malformed));
    }

    #[test]
    fn every_kind_round_trips_through_its_wire_name() {
        let kinds = [
            EventKind::SubjectCreated,
            EventKind::SubjectErased,
            EventKind::DataWritten,
            EventKind::DataDeleted,
            EventKind::DataRead,
            EventKind::DataExported,
            EventKind::RelationshipCreated,
            EventKind::RelationshipEnded,
            EventKind::RelationshipChanged,
            EventKind::AccessRequestCreated,
            EventKind::AccessRequestApproved,
            EventKind::AccessRequestDenied,
            EventKind::AccessRequestClosed,
            EventKind::GrantCreated,
            EventKind::GrantRevoked,
            EventKind::GrantExpired,
            EventKind::ObjectionChanged,
            EventKind::KeyRotated,
            EventKind::PolicyLoaded,
            EventKind::PrincipalCreated,
            EventKind::PrincipalDisabled,
            EventKind::PrincipalChanged,
            EventKind::PrincipalSecretRotated,
            EventKind::VaultRestored,
            EventKind::VaultRollbackAccepted,
        ];
        for kind in kinds {
            assert_eq!(EventKind::parse(kind.as_str()), Some(kind));
            assert_eq!(serde_json::to_value(kind).unwrap(), serde_json::json!(kind.as_str()));
        }
    }
}
