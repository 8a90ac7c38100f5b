//! A business's controller details: who it is and how to reach it about
//! personal data (GDPR Art. 13(1)(a) and (b)), as the admin registers them.
//! Consent receipts name the business by them (the Kantara Consent Receipt
//! v1.1 requires contact, address, e-mail and phone of every controller).
//! They describe an organisation, never a customer.

use serde::{Deserialize, Serialize};

/// Longest text of a detail, in bytes.
const DETAIL_BYTES_MAX: usize = 200;
/// Longest privacy-notice URL, in bytes.
const URL_BYTES_MAX: usize = 2_000;

/// How to reach the business about personal data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ControllerDetails {
    /// Whom to contact (a person, role or team: "Data protection officer").
    pub contact: String,
    /// Where to write about personal data.
    #[schema(format = Email)]
    pub email: String,
    /// The phone number, international form (`+44 20 7946 0000`).
    pub phone: String,
    /// The postal address.
    pub address: PostalAddress,
    /// The business's privacy notice (an `https` URL).
    #[schema(format = "uri")]
    pub privacy_notice_url: String,
}

/// A postal address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PostalAddress {
    /// Street and number.
    pub street_address: String,
    /// Town or city.
    pub locality: String,
    /// Postal code.
    pub postal_code: String,
    /// ISO 3166-1 alpha-2 country code (`GB`, `FR`).
    pub country: String,
}

/// Controller details that do not make sense; the text says which and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ControllerError(pub String);

/// Checks a text detail: 1 to [`DETAIL_BYTES_MAX`] bytes, no control
/// characters, trimmed.
fn text(name: &str, value: &str) -> Result<String, ControllerError> {
    let trimmed = value.trim();
    if trimmed.is_empty() || trimmed.len() > DETAIL_BYTES_MAX || trimmed.chars().any(char::is_control) {
        return Err(ControllerError(format!(
            "`controller.{name}` must be 1 to {DETAIL_BYTES_MAX} bytes of text without control characters"
        )));
    }
    Ok(trimmed.to_owned())
}

impl ControllerDetails {
    /// The details with each text trimmed, or why they are refused.
    pub fn checked(self) -> Result<Self, ControllerError> {
        let email = text("email", &self.email)?;
        let well_formed = email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !domain.starts_with('.') && !domain.ends_with('.')
        }) && !email.chars().any(char::is_whitespace)
            && email.matches('@').count() == 1;
        if !well_formed {
            return Err(ControllerError("`controller.email` must be an e-mail address (name@example.org)".to_owned()));
        }
        let phone = text("phone", &self.phone)?;
        let digits = phone.chars().filter(char::is_ascii_digit).count();
        let allowed = phone
            .chars()
            .enumerate()
            .all(|(i, c)| c.is_ascii_digit() || matches!(c, ' ' | '-' | '(' | ')' | '.') || (i == 0 && c == '+'));
        if !allowed || !(5..=20).contains(&digits) {
            return Err(ControllerError(
                "`controller.phone` must be a phone number: digits, spaces, `-`, `(`, `)`, `.`, and a leading `+`"
                    .to_owned(),
            ));
        }
        let url = self.privacy_notice_url.trim().to_owned();
        let host = url.strip_prefix("https://").map(|rest| rest.split(['/', '?', '#']).next().unwrap_or_default());
        if url.len() > URL_BYTES_MAX
            || url.chars().any(|c| c.is_whitespace() || c.is_control())
            || host.is_none_or(|host| host.is_empty())
        {
            return Err(ControllerError(format!(
                "`controller.privacy_notice_url` must be an https URL of at most {URL_BYTES_MAX} bytes"
            )));
        }
        let country = self.address.country.trim().to_owned();
        if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(ControllerError(
                "`controller.address.country` must be an ISO 3166-1 alpha-2 code (`GB`, `FR`)".to_owned(),
            ));
        }
        Ok(Self {
            contact: text("contact", &self.contact)?,
            email,
            phone,
            address: PostalAddress {
                street_address: text("address.street_address", &self.address.street_address)?,
                locality: text("address.locality", &self.address.locality)?,
                postal_code: text("address.postal_code", &self.address.postal_code)?,
                country,
            },
            privacy_notice_url: url,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn details() -> ControllerDetails {
        ControllerDetails {
            contact: " Data protection officer ".to_owned(),
            email: "privacy@acme.example".to_owned(),
            phone: "+44 20 7946 0000".to_owned(),
            address: PostalAddress {
                street_address: "1 High Street".to_owned(),
                locality: "London".to_owned(),
                postal_code: "N1 9GU".to_owned(),
                country: "GB".to_owned(),
            },
            privacy_notice_url: "https://acme.example/privacy".to_owned(),
        }
    }

    #[test]
    fn good_details_are_kept_trimmed() {
        assert_eq!(details().checked().unwrap().contact, "Data protection officer");
    }

    /// A change that spoils one detail.
    type Spoil = fn(&mut ControllerDetails);

    #[test]
    fn each_bad_detail_is_refused_by_name() {
        let cases: [(&str, Spoil); 7] = [
            ("email", |d| d.email = "privacy".to_owned()),
            ("email", |d| d.email = "a@b@c.example".to_owned()),
            ("phone", |d| d.phone = "call us".to_owned()),
            ("privacy_notice_url", |d| d.privacy_notice_url = "http://acme.example/privacy".to_owned()),
            ("privacy_notice_url", |d| d.privacy_notice_url = "https:///privacy".to_owned()),
            ("country", |d| d.address.country = "United Kingdom".to_owned()),
            ("contact", |d| d.contact = "\u{7}".to_owned()),
        ];
        for (name, spoil) in cases {
            let mut spoilt = details();
            spoil(&mut spoilt);
            let refused = spoilt.checked().unwrap_err();
            assert!(refused.0.contains(name), "{name}: {refused}");
        }
    }
}
