//! Consent receipts: the record of a grant the customer keeps. Each is a
//! Kantara Consent Receipt v1.1 (valid against its JSON schema), with the
//! ISO/IEC TS 27560 record fields that fit (record type, legal basis,
//! notice version, recipients, retention, event history) and what she
//! agreed to: the justification and benefit the business gave.
//!
//! A receipt is issued in the transaction that creates the grant, signed as
//! a C2SP signed note with the vault's audit key (`/v1/audit/public-key`)
//! and stored once; it is never changed. When the grant ends (revoked,
//! expired, or by a disconnect or erasure) a second signed record is issued
//! in the transaction that ends it, referring to the first.

use serde::{Deserialize, Serialize};

use super::{Consent, ConsentError, GrantEnd, GrantRecord, corrupt};
use crate::audit::AuditLog;
use crate::core::VaultClock;
use crate::ids::{BusinessId, GrantId, SubjectId};
use crate::store::{Key, Txn};

/// The jurisdiction receipts name: the vault is built to GDPR's terms
/// (special categories are Art. 9 data).
pub const RECEIPT_JURISDICTION: &str = "EU";
/// The Kantara Consent Receipt version receipts follow.
pub const RECEIPT_VERSION: &str = "KI-CR-v1.1.0";

/// What a receipt records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReceiptRecordType {
    /// Consent was given: the grant was created.
    Given,
    /// Consent was withdrawn: revoked by her, or ended by a disconnect or
    /// an erasure.
    Withdrawn,
    /// The grant's window closed.
    Expired,
}

/// A consent receipt: the Kantara Consent Receipt v1.1 members, then the
/// ISO/IEC TS 27560 record fields and the grant's own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsentReceipt {
    /// `KI-CR-v1.1.0`.
    pub version: String,
    /// The jurisdiction the vault is built to.
    pub jurisdiction: String,
    /// When the consent was given, Unix seconds.
    pub consent_timestamp: i64,
    /// How the consent was collected.
    pub collection_method: String,
    /// This record's id.
    #[serde(rename = "consentReceiptID")]
    pub consent_receipt_id: String,
    /// The signed-note verifier key the record is signed under.
    pub public_key: String,
    /// The language of the record's texts.
    pub language: String,
    /// The customer, by the business's pairwise id (never her own id).
    pub pii_principal_id: String,
    /// The business, with its controller details.
    pub pii_controllers: Vec<ReceiptController>,
    /// The business's privacy notice, or the vault's policies by hash if
    /// the business registered none.
    pub policy_url: String,
    /// What the business does with the data, per purpose.
    pub services: Vec<ReceiptService>,
    /// Whether special-category fields are covered.
    pub sensitive: bool,
    /// The special-category fields covered.
    pub spi_cat: Vec<String>,
    /// Given, withdrawn or expired (ISO/IEC TS 27560: the record's event).
    pub record_type: ReceiptRecordType,
    /// When this record was issued (RFC 3339).
    #[schema(format = DateTime)]
    pub issued_at: String,
    /// For a withdrawal or expiry, the id of the receipt of the consent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refers_to: Option<String>,
    /// The grant.
    pub grant_id: String,
    /// The access request she approved, if the grant came from one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The fields covered.
    pub fields: Vec<String>,
    /// When the grant became live (RFC 3339).
    #[schema(format = DateTime)]
    pub starts_at: String,
    /// When it stops being live, unless withdrawn before (RFC 3339).
    #[schema(format = DateTime)]
    pub expires_at: String,
    /// Why the business asked, in its words, as she saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub justification: Option<String>,
    /// What she gets, in the business's words, as she saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub benefit: Option<String>,
    /// The legal basis of the processing.
    pub legal_basis: Vec<String>,
    /// The policies in force when the record was issued (their SHA-256,
    /// as `policy.loaded` names them).
    pub notice_version: String,
    /// Who receives the data.
    pub recipients: Vec<String>,
    /// How long the consent, and the business's use of the data under it,
    /// lasts.
    pub retention: String,
    /// The audit index of the event this record is about.
    pub audit_index: u64,
    /// The consent's events up to this record, oldest first.
    pub history: Vec<ReceiptHistoryItem>,
}

/// One event of a consent's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReceiptHistoryItem {
    /// What happened.
    pub record_type: ReceiptRecordType,
    /// When (RFC 3339).
    #[schema(format = DateTime)]
    pub time: String,
    /// Its audit event.
    pub audit_index: u64,
    /// The record issued for it.
    #[serde(rename = "consentReceiptID")]
    pub consent_receipt_id: String,
}

/// The business a receipt names (a Kantara `piiControllers` item).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReceiptController {
    /// Its name.
    pub pii_controller: String,
    /// Whether it acts for another controller (never, here).
    pub on_behalf: bool,
    /// Whom to contact about personal data.
    pub contact: String,
    /// Its postal address.
    pub address: ReceiptAddress,
    /// Where to write about personal data.
    pub email: String,
    /// Its phone number.
    pub phone: String,
    /// Its privacy notice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pii_controller_url: Option<String>,
    /// Its id in the vault.
    pub business_id: String,
    /// Whether the business had registered its controller details; if not,
    /// `contact` is its name and the other details are empty.
    pub details_registered: bool,
}

/// A postal address, in schema.org `PostalAddress` terms.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReceiptAddress {
    /// Street and number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub street_address: Option<String>,
    /// Town or city.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_locality: Option<String>,
    /// Postal code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postal_code: Option<String>,
    /// ISO 3166-1 alpha-2 country code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_country: Option<String>,
}

/// The business's service, as a receipt names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReceiptService {
    /// Its name.
    pub service: String,
    /// The purposes consented to.
    pub purposes: Vec<ReceiptPurpose>,
}

/// One purpose of a receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReceiptPurpose {
    /// What the purpose is, in words.
    pub purpose: String,
    /// The purpose's name and its DPV term.
    pub purpose_category: Vec<String>,
    /// `EXPLICIT`.
    pub consent_type: String,
    /// The categories of the fields covered.
    pub pii_category: Vec<String>,
    /// Whether it is the service's primary purpose.
    pub primary_purpose: bool,
    /// When the consent ends.
    pub termination: String,
    /// Whether the data goes to third parties (never: only the business
    /// reads it).
    pub third_party_disclosure: bool,
}

/// A receipt and its signed note (the receipt's canonical JSON, signed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct SignedReceipt {
    /// The receipt.
    pub receipt: ConsentReceipt,
    /// Its JSON text, members sorted at every level, as a C2SP signed note
    /// signed with the key at `/v1/audit/public-key`.
    pub signed_note: String,
}

/// What the access request a grant comes from said.
#[derive(Debug, Clone)]
pub(crate) struct RequestTerms<'a> {
    pub(crate) request_id: &'a str,
    pub(crate) justification: &'a str,
    pub(crate) benefit: Option<&'a str>,
}

/// Signs `receipt` as a note and stores it under `subject`, naming the key
/// it is signed with.
fn receipt_store_in(
    txn: &mut Txn<'_>,
    log: &AuditLog,
    subject: SubjectId,
    receipt: &mut ConsentReceipt,
) -> Result<(), ConsentError> {
    receipt.public_key = log.verifier_key();
    // Members in key order at every level: the text a verifier sees is the
    // canonical form of the JSON.
    let value = serde_json::to_value(&*receipt).map_err(|_| corrupt("receipt"))?;
    let canonical = crate::policy::catalogue::json_canonical(&value).map_err(|_| corrupt("receipt"))?;
    let text = format!("{}\n", String::from_utf8(canonical).map_err(|_| corrupt("receipt"))?);
    let signed = log.signer().sign_note(&text)?;
    let key = Key::receipt(subject.as_bytes(), &receipt.consent_receipt_id);
    // Issued once: a record is never replaced.
    if txn.contains(&key)? {
        return Err(ConsentError::Invalid(format!("consent record {} was issued already", receipt.consent_receipt_id)));
    }
    txn.put(key, signed.into_bytes());
    Ok(())
}

/// The receipt a stored signed note holds.
fn receipt_of_note(note: &str) -> Result<ConsentReceipt, ConsentError> {
    // The text is one line of JSON; the signature lines follow a blank line.
    let text = note.split_once("\n\n").map(|(text, _)| text).ok_or(corrupt("receipt"))?;
    Ok(serde_json::from_str(text).map_err(|_| corrupt("receipt"))?)
}

/// Issues the receipt of a new grant in `txn`: `draft` (made by
/// [`Consent::receipt_draft`]) with the pairwise id the business knows her
/// by and the audit index of the `grant.created` event, signed and stored.
pub(crate) fn receipt_issue_in(
    txn: &mut Txn<'_>,
    log: &AuditLog,
    subject: SubjectId,
    mut draft: ConsentReceipt,
    pairwise_id: &str,
    audit_index: u64,
) -> Result<(), ConsentError> {
    draft.pii_principal_id = pairwise_id.to_owned();
    draft.audit_index = audit_index;
    draft.history = vec![ReceiptHistoryItem {
        record_type: ReceiptRecordType::Given,
        time: draft.issued_at.clone(),
        audit_index,
        consent_receipt_id: draft.consent_receipt_id.clone(),
    }];
    receipt_store_in(txn, log, subject, &mut draft)
}

/// Issues the record of `grant`'s end in `txn`, referring to its first
/// receipt, for the event at `audit_index` at `time`; returns its id, or
/// `None` for a grant made before receipts were issued or whose end was
/// recorded already.
pub(crate) fn receipt_end_in(
    txn: &mut Txn<'_>,
    log: &AuditLog,
    subject: SubjectId,
    grant: &GrantRecord,
    end: GrantEnd,
    time: &str,
    audit_index: u64,
) -> Result<Option<String>, ConsentError> {
    let Some(first_id) = grant.receipt_ids.first() else { return Ok(None) };
    // Its end has a record already: only a clock pinned back
    // (`Vault::insecure_pin_clock_secs`) makes an ended grant end again, and
    // the first end stands.
    if grant.receipt_ids.len() > 1 {
        return Ok(None);
    }
    let note = txn.get(&Key::receipt(subject.as_bytes(), first_id))?.ok_or(corrupt("receipt"))?;
    let first = receipt_of_note(std::str::from_utf8(&note).map_err(|_| corrupt("receipt"))?)?;
    let record_type = if end == GrantEnd::Expired { ReceiptRecordType::Expired } else { ReceiptRecordType::Withdrawn };
    let id = format!("{first_id}-{}", if end == GrantEnd::Expired { "expired" } else { "withdrawn" });
    let mut record = first.clone();
    record.consent_receipt_id = id.clone();
    record.record_type = record_type;
    record.issued_at = time.to_owned();
    record.refers_to = Some(first.consent_receipt_id.clone());
    record.audit_index = audit_index;
    let ended = match end.cause() {
        Some(cause) => format!("ended at {time} ({cause})"),
        None if end == GrantEnd::Expired => format!("expired at {time}"),
        None => format!("withdrawn at {time}"),
    };
    for service in &mut record.services {
        for purpose in &mut service.purposes {
            purpose.termination = ended.clone();
        }
    }
    record.retention = format!("none: the consent {ended}; the business may no longer read data under it");
    record.history.push(ReceiptHistoryItem {
        record_type,
        time: time.to_owned(),
        audit_index,
        consent_receipt_id: id.clone(),
    });
    receipt_store_in(txn, log, subject, &mut record)?;
    Ok(Some(id))
}

impl Consent {
    /// The receipt of `grant` as far as it is known before its transaction:
    /// the business's name and controller details, the purposes in words,
    /// the policies in force, and the request's justification and benefit.
    /// [`receipt_issue_in`] completes it.
    pub(crate) fn receipt_draft(
        &self,
        business: &BusinessId,
        grant: &GrantRecord,
        receipt_id: &str,
        request: Option<RequestTerms<'_>>,
    ) -> Result<ConsentReceipt, ConsentError> {
        let record = self.principals.principal(crate::auth::Role::Business, business)?;
        let name = record.as_ref().map_or_else(|| business.to_string(), |record| record.name.clone());
        let details = record.and_then(|record| record.controller);
        let policies = self.core.policies();
        let catalogue = &policies.catalogue;
        let categories: std::collections::BTreeSet<String> =
            grant.fields.iter().filter_map(|f| catalogue.field(f)).map(|f| f.category.clone()).collect();
        let special: Vec<String> = grant
            .fields
            .iter()
            .filter(|f| catalogue.field(f).is_some_and(|spec| spec.sensitivity == crate::policy::Sensitivity::Special))
            .cloned()
            .collect();
        let expires_at = VaultClock::rfc3339_at(grant.expires_at);
        let purposes = grant
            .purposes
            .iter()
            .enumerate()
            .map(|(position, purpose)| {
                let spec = policies.rules.purposes.get(purpose);
                ReceiptPurpose {
                    purpose: spec.map_or(purpose.clone(), |p| p.description.clone()),
                    purpose_category: vec![purpose.clone(), spec.map_or(String::new(), |p| p.dpv.clone())],
                    consent_type: "EXPLICIT".to_owned(),
                    pii_category: categories.iter().cloned().collect(),
                    primary_purpose: position == 0,
                    termination: format!("on withdrawal, or at {expires_at}"),
                    third_party_disclosure: false,
                }
            })
            .collect();
        let mut legal_basis = vec!["GDPR Art. 6(1)(a): consent".to_owned()];
        if !special.is_empty() {
            legal_basis.push("GDPR Art. 9(2)(a): explicit consent to special-category data".to_owned());
        }
        let controller = ReceiptController {
            pii_controller: name.clone(),
            on_behalf: false,
            contact: details.as_ref().map_or_else(|| name.clone(), |d| d.contact.clone()),
            address: details.as_ref().map_or_else(ReceiptAddress::default, |d| ReceiptAddress {
                street_address: Some(d.address.street_address.clone()),
                address_locality: Some(d.address.locality.clone()),
                postal_code: Some(d.address.postal_code.clone()),
                address_country: Some(d.address.country.clone()),
            }),
            email: details.as_ref().map_or_else(String::new, |d| d.email.clone()),
            phone: details.as_ref().map_or_else(String::new, |d| d.phone.clone()),
            pii_controller_url: details.as_ref().map(|d| d.privacy_notice_url.clone()),
            business_id: business.to_string(),
            details_registered: details.is_some(),
        };
        let issued_at = VaultClock::rfc3339_at(grant.starts_at);
        Ok(ConsentReceipt {
            version: RECEIPT_VERSION.to_owned(),
            jurisdiction: RECEIPT_JURISDICTION.to_owned(),
            consent_timestamp: grant.starts_at,
            collection_method: match &request {
                Some(terms) => format!("the customer approved access request {} in consentvault", terms.request_id),
                None => "the customer granted access in consentvault".to_owned(),
            },
            consent_receipt_id: receipt_id.to_owned(),
            public_key: self.core.audit().verifier_key(),
            language: "en".to_owned(),
            // Completed in the transaction: the business's own name for
            // her, not her customer id (her login), so two businesses shown
            // her receipts cannot link them.
            pii_principal_id: String::new(),
            policy_url: details.as_ref().map_or_else(
                || format!("urn:consentvault:policies:{}", policies.sha256),
                |d| d.privacy_notice_url.clone(),
            ),
            pii_controllers: vec![controller],
            services: vec![ReceiptService { service: name.clone(), purposes }],
            sensitive: !special.is_empty(),
            spi_cat: special,
            record_type: ReceiptRecordType::Given,
            issued_at,
            refers_to: None,
            grant_id: grant.grant_id.to_string(),
            request_id: request.as_ref().map(|terms| terms.request_id.to_owned()),
            fields: grant.fields.clone(),
            starts_at: VaultClock::rfc3339_at(grant.starts_at),
            expires_at: expires_at.clone(),
            justification: request.as_ref().map(|terms| terms.justification.to_owned()),
            benefit: request.as_ref().and_then(|terms| terms.benefit.map(str::to_owned)),
            legal_basis,
            notice_version: policies.sha256.clone(),
            recipients: vec![name],
            retention: format!("until {expires_at}, or until she withdraws consent if sooner"),
            audit_index: 0,
            history: Vec::new(),
        })
    }

    /// Every record issued for one of the customer's grants, as stored and
    /// signed: the receipt of the consent first, then the record of its
    /// end, if it ended. [`ConsentError::NotFound`] for another customer's
    /// grant, or one made before receipts were issued.
    pub fn grant_receipts(&self, subject: SubjectId, grant_id: &GrantId) -> Result<Vec<SignedReceipt>, ConsentError> {
        let grant = self.grant(subject, grant_id)?;
        if grant.receipt_ids.is_empty() {
            return Err(ConsentError::NotFound("receipt"));
        }
        grant
            .receipt_ids
            .iter()
            .map(|id| {
                let note = self.core.store().get(&Key::receipt(subject.as_bytes(), id))?.ok_or(corrupt("receipt"))?;
                let signed_note = String::from_utf8(note).map_err(|_| corrupt("receipt"))?;
                Ok(SignedReceipt { receipt: receipt_of_note(&signed_note)?, signed_note })
            })
            .collect()
    }
}
