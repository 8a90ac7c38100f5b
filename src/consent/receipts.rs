//! Consent receipts: a grant as Kantara Consent Receipt v1.1 fields in
//! canonical JSON, signed as a C2SP signed note with the vault's audit key,
//! for the customer to keep.

use serde::Serialize;

use super::{Consent, ConsentError, corrupt};
use crate::clock;
use crate::ids::{GrantId, SubjectId};

/// The jurisdiction receipts name: the vault is built to GDPR's terms
/// (special categories are Art. 9 data).
pub const RECEIPT_JURISDICTION: &str = "EU";

/// A consent receipt: the Kantara Consent Receipt v1.1 members, and the
/// grant's own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConsentReceipt {
    /// `KI-CR-v1.1.0`.
    pub version: &'static str,
    /// The jurisdiction the vault is built to.
    pub jurisdiction: &'static str,
    /// When the consent was given, Unix seconds.
    pub consent_timestamp: i64,
    /// How the consent was collected.
    pub collection_method: &'static str,
    /// This receipt's id.
    #[serde(rename = "consentReceiptID")]
    pub consent_receipt_id: String,
    /// The language of the receipt's texts.
    pub language: &'static str,
    /// The customer, by the business's pairwise id.
    pub pii_principal_id: String,
    /// The business.
    pub pii_controllers: Vec<ReceiptController>,
    /// The policies in force, by their hash.
    pub policy_url: String,
    /// What the business does with the data, per purpose.
    pub services: Vec<ReceiptService>,
    /// Whether special-category fields are covered.
    pub sensitive: bool,
    /// The special-category fields covered.
    pub spi_cat: Vec<String>,
    /// The fields covered.
    pub fields: Vec<String>,
    /// The grant.
    pub grant_id: String,
    /// Where the grant stands now.
    pub status: super::GrantStatus,
    /// When the grant ends (RFC 3339).
    #[schema(format = DateTime)]
    pub expires_at: String,
    /// The audit index of the grant's creation.
    pub audit_index: u64,
}

/// The business a receipt names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReceiptController {
    /// Its name.
    pub pii_controller: String,
    /// Its id.
    pub business_id: String,
}

/// The business's service, as a receipt names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReceiptService {
    /// Its name.
    pub service: String,
    /// The purposes consented to.
    pub purposes: Vec<ReceiptPurpose>,
}

/// One purpose of a receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReceiptPurpose {
    /// What the purpose is, in words.
    pub purpose: String,
    /// The purpose's name and its DPV term.
    pub purpose_category: Vec<String>,
    /// `EXPLICIT`.
    pub consent_type: &'static str,
    /// The categories of the fields covered.
    pub pii_category: Vec<String>,
    /// Whether it is the service's primary purpose.
    pub primary_purpose: bool,
    /// When the consent ends.
    pub termination: String,
    /// Whether the data goes to third parties.
    pub third_party_disclosure: bool,
}

impl Consent {
    /// A consent receipt for one of the customer's grants, shaped on the
    /// Kantara Consent Receipt v1.1 fields, as canonical JSON, and the same
    /// text signed as a C2SP signed note with the vault's audit key (verify
    /// it with the key at `/v1/audit/public-key`).
    pub fn grant_receipt(
        &self,
        subject: SubjectId,
        grant_id: &GrantId,
    ) -> Result<(ConsentReceipt, String), ConsentError> {
        let grant = self
            .grants(subject)?
            .into_iter()
            .find(|g| g.grant_id == *grant_id)
            .ok_or(ConsentError::NotFound("grant"))?;
        let business = self.principals.principal(crate::auth::Role::Business, &grant.business_id)?;
        let controller = business.map(|b| b.name).unwrap_or_else(|| grant.business_id.to_string());
        let rfc3339 = |secs: i64| {
            time::OffsetDateTime::from_unix_timestamp(secs).map(clock::rfc3339).unwrap_or_else(|_| secs.to_string())
        };
        let policies = self.core.policies();
        let catalogue = &policies.catalogue;
        let categories: std::collections::BTreeSet<String> =
            grant.fields.iter().filter_map(|f| catalogue.field(f)).map(|f| f.category.clone()).collect();
        let sensitive: Vec<&str> = grant
            .fields
            .iter()
            .filter(|f| catalogue.field(f).is_some_and(|spec| spec.sensitivity == crate::policy::Sensitivity::Special))
            .map(String::as_str)
            .collect();
        let purposes = grant
            .purposes
            .iter()
            .map(|purpose| {
                let spec = policies.rules.purposes.get(purpose);
                ReceiptPurpose {
                    purpose: spec.map_or(purpose.clone(), |p| p.description.clone()),
                    purpose_category: vec![purpose.clone(), spec.map_or(String::new(), |p| p.dpv.clone())],
                    consent_type: "EXPLICIT",
                    pii_category: categories.iter().cloned().collect(),
                    primary_purpose: false,
                    termination: format!("on revocation, or at {}", rfc3339(grant.expires_at)),
                    third_party_disclosure: false,
                }
            })
            .collect();
        let receipt = ConsentReceipt {
            version: "KI-CR-v1.1.0",
            jurisdiction: RECEIPT_JURISDICTION,
            consent_timestamp: grant.starts_at,
            collection_method: "consentvault grant",
            consent_receipt_id: format!("receipt-{}", grant.grant_id),
            language: "en",
            // The business's own name for her, not her customer id (her
            // login), so two businesses shown her receipts cannot link them.
            pii_principal_id: self.grant_pairwise(&grant)?.to_string(),
            pii_controllers: vec![ReceiptController {
                pii_controller: controller.clone(),
                business_id: grant.business_id.to_string(),
            }],
            policy_url: format!("urn:consentvault:policies:{}", policies.sha256),
            services: vec![ReceiptService { service: controller, purposes }],
            sensitive: !sensitive.is_empty(),
            spi_cat: sensitive.into_iter().map(str::to_owned).collect(),
            fields: grant.fields.clone(),
            grant_id: grant.grant_id.to_string(),
            status: grant.status(self.core.clock().now_secs()),
            expires_at: rfc3339(grant.expires_at),
            audit_index: grant.audit_index,
        };
        // Members in key order at every level: the same receipt always
        // has the same signed text.
        let value = serde_json::to_value(&receipt).map_err(|_| corrupt("receipt"))?;
        let canonical = crate::policy::catalogue::json_canonical(&value).map_err(|_| corrupt("receipt"))?;
        let text = format!("{}\n", String::from_utf8(canonical).map_err(|_| corrupt("receipt"))?);
        let signed = self.core.audit().signer().sign_note(&text)?;
        Ok((receipt, signed))
    }
}
