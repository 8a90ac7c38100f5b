//! Consent receipts: a grant as Kantara Consent Receipt v1.1 fields in
//! canonical JSON, signed as a C2SP signed note with the vault's audit key,
//! for the customer to keep.

use serde_json::Value;

use super::{Consent, ConsentError, corrupt};
use crate::clock;
use crate::ids::{GrantId, SubjectId};

/// The jurisdiction receipts name: the vault is built to GDPR's terms
/// (special categories are Art. 9 data).
pub const RECEIPT_JURISDICTION: &str = "EU";

impl Consent {
    /// A consent receipt for one of the customer's grants, shaped on the
    /// Kantara Consent Receipt v1.1 fields, as canonical JSON, and the same
    /// text signed as a C2SP signed note with the vault's audit key (verify
    /// it with the key at `/v1/audit/public-key`).
    pub fn grant_receipt(&self, subject: SubjectId, grant_id: &GrantId) -> Result<(Value, String), ConsentError> {
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
        let purposes: Vec<Value> = grant
            .purposes
            .iter()
            .map(|purpose| {
                let spec = policies.rules.purposes.get(purpose);
                serde_json::json!({
                    "purpose": spec.map_or(purpose.as_str(), |p| p.description.as_str()),
                    "purposeCategory": [purpose, spec.map_or("", |p| p.dpv.as_str())],
                    "consentType": "EXPLICIT",
                    "piiCategory": categories,
                    "primaryPurpose": false,
                    "termination": format!("on revocation, or at {}", rfc3339(grant.expires_at)),
                    "thirdPartyDisclosure": false,
                })
            })
            .collect();
        // serde_json's map is ordered by key, so this is the canonical form.
        let receipt = serde_json::json!({
            "version": "KI-CR-v1.1.0",
            "jurisdiction": RECEIPT_JURISDICTION,
            "consentTimestamp": grant.starts_at,
            "collectionMethod": "consentvault grant",
            "consentReceiptID": format!("receipt-{}", grant.grant_id),
            "language": "en",
            // The business's own name for her, not her customer id (her
            // login), so two businesses shown her receipts cannot link them.
            "piiPrincipalId": self.grant_pairwise(&grant)?,
            "piiControllers": [{"piiController": controller, "businessId": grant.business_id}],
            "policyUrl": format!("urn:consentvault:policies:{}", policies.sha256),
            "services": [{"service": controller, "purposes": purposes}],
            "sensitive": !sensitive.is_empty(),
            "spiCat": sensitive,
            "fields": grant.fields,
            "grantId": grant.grant_id,
            "status": grant.status(self.core.clock().now_secs()),
            "expiresAt": rfc3339(grant.expires_at),
            "auditIndex": grant.audit_index,
        });
        let text = format!("{}\n", serde_json::to_string(&receipt).map_err(|_| corrupt("receipt"))?);
        let signed = self.core.audit().signer().sign_note(&text)?;
        Ok((receipt, signed))
    }
}
