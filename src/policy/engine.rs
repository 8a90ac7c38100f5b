//! The decision engine: for one read by a business, per requested field,
//! released (with the grant that covers it) or withheld with a stable
//! reason code. Pure: no I/O, no clock; the time is an argument.
//!
//! A field is released only if all hold: the customer is connected to the
//! business; the customer has no objection to the purpose; the purpose may
//! touch the field's category; no deny rule matches; and a live grant covers
//! (business, purpose, field) at `now`. A grant's window is half-open:
//! live for `starts_at <= now < expires_at`, and a revocation takes effect at
//! its own time. Deny wins: the first failing condition, in that order, is
//! the reason.

use std::fmt;

use super::Policies;

/// Why a requested field was withheld. The wire form is [`Reason::code`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The field is not in the catalogue.
    UnknownField,
    /// The purpose is not defined.
    UnknownPurpose,
    /// The customer is not connected to the business.
    NoRelationship,
    /// The customer objects to the purpose.
    Objection,
    /// The purpose may not touch the field's category.
    CategoryNotAllowed,
    /// An organisation rule denies it (`rule:<id>`).
    Rule(String),
    /// A grant covered it, but was revoked.
    GrantRevoked,
    /// A grant covered it, but has ended.
    GrantExpired,
    /// A live grant covers the purpose, but not this field.
    FieldNotGranted,
    /// Live grants exist, but none for this purpose.
    PurposeNotGranted,
    /// No grant at all.
    NoConsent,
}

impl Reason {
    /// The code of every reason but [`Reason::Rule`], which names its rule
    /// (`rule:<id>`): the reason codes an API client can match on.
    pub const FIXED_CODES: &[&str] = &[
        "unknown_field",
        "unknown_purpose",
        "no_relationship",
        "objection",
        "category_not_allowed",
        "grant_revoked",
        "grant_expired",
        "field_not_granted",
        "purpose_not_granted",
        "no_consent",
    ];

    /// The stable reason code.
    pub fn code(&self) -> String {
        match self {
            Self::UnknownField => "unknown_field".to_owned(),
            Self::UnknownPurpose => "unknown_purpose".to_owned(),
            Self::NoRelationship => "no_relationship".to_owned(),
            Self::Objection => "objection".to_owned(),
            Self::CategoryNotAllowed => "category_not_allowed".to_owned(),
            Self::Rule(id) => format!("rule:{id}"),
            Self::GrantRevoked => "grant_revoked".to_owned(),
            Self::GrantExpired => "grant_expired".to_owned(),
            Self::FieldNotGranted => "field_not_granted".to_owned(),
            Self::PurposeNotGranted => "purpose_not_granted".to_owned(),
            Self::NoConsent => "no_consent".to_owned(),
        }
    }
}

/// A reason code as the API description names it: one of
/// [`FixedReasonCode`], or `rule:<id>` naming the organisation rule that
/// denied the field.
#[derive(Debug)]
pub struct ReasonCode;

/// The reason codes that name no rule ([`Reason::FIXED_CODES`]), as the API
/// description names them.
#[derive(Debug)]
pub struct FixedReasonCode;

impl utoipa::PartialSchema for ReasonCode {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        let rule = ObjectBuilder::new().schema_type(Type::String).pattern(Some("^rule:.+$")).build();
        OneOfBuilder::new()
            .item(utoipa::openapi::Ref::from_schema_name("FixedReasonCode"))
            .item(rule)
            .description(Some(
                "Why a requested field was withheld: a fixed code, or `rule:<id>` for an organisation rule",
            ))
            .into()
    }
}

impl utoipa::ToSchema for ReasonCode {
    fn schemas(schemas: &mut Vec<(String, utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>)>) {
        use utoipa::PartialSchema;
        schemas.push(("FixedReasonCode".to_owned(), FixedReasonCode::schema()));
    }
}

impl utoipa::PartialSchema for FixedReasonCode {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(Reason::FIXED_CODES.iter().copied()))
            .description(Some("A reason code that names no rule"))
            .into()
    }
}

impl utoipa::ToSchema for FixedReasonCode {}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.code())
    }
}

/// A grant as the engine sees it. Times are Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantView {
    /// The grant id.
    pub id: String,
    /// The business it was given to.
    pub business: String,
    /// The purposes it covers.
    pub purposes: Vec<String>,
    /// The fields it covers.
    pub fields: Vec<String>,
    /// First second it is live.
    pub starts_at: i64,
    /// First second it is no longer live.
    pub expires_at: i64,
    /// When it was revoked, if it was.
    pub revoked_at: Option<i64>,
}

impl GrantView {
    fn revoked_by(&self, now: i64) -> bool {
        self.revoked_at.is_some_and(|at| at <= now)
    }

    fn in_window(&self, now: i64) -> bool {
        self.starts_at <= now && now < self.expires_at
    }

    /// Whether the grant is live at `now`.
    pub fn is_live(&self, now: i64) -> bool {
        self.in_window(now) && !self.revoked_by(now)
    }

    fn covers(&self, purpose: &str, field: &str) -> bool {
        self.purposes.iter().any(|p| p == purpose) && self.fields.iter().any(|f| f == field)
    }
}

/// One read to decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadQuery<'a> {
    /// The business reading.
    pub business: &'a str,
    /// The purpose it reads for.
    pub purpose: &'a str,
    /// The fields it asks for.
    pub fields: &'a [String],
    /// The time of the read (Unix seconds).
    pub now: i64,
    /// Whether the customer is connected to the business.
    pub connected: bool,
    /// The purposes the customer objects to.
    pub objections: &'a [String],
}

/// The verdict for one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldDecision {
    /// Released under the grant with this id.
    Released {
        /// The grant relied on.
        grant: String,
    },
    /// Withheld, with the reason.
    Withheld(Reason),
}

/// Decides `query` against the customer's `grants` (all of them; the engine
/// picks the business's). Returns one decision per requested field, in order.
pub fn decide(policies: &Policies, query: &ReadQuery<'_>, grants: &[GrantView]) -> Vec<(String, FieldDecision)> {
    let mine: Vec<&GrantView> = grants.iter().filter(|grant| grant.business == query.business).collect();
    query.fields.iter().map(|field| (field.clone(), decide_field(policies, query, &mine, field))).collect()
}

fn decide_field(policies: &Policies, query: &ReadQuery<'_>, grants: &[&GrantView], field: &str) -> FieldDecision {
    use FieldDecision::Withheld;
    let Some(spec) = policies.catalogue.field(field) else { return Withheld(Reason::UnknownField) };
    let Some(purpose) = policies.rules.purposes.get(query.purpose) else { return Withheld(Reason::UnknownPurpose) };
    if !query.connected {
        return Withheld(Reason::NoRelationship);
    }
    if query.objections.iter().any(|objection| objection == query.purpose) {
        return Withheld(Reason::Objection);
    }
    if !purpose.categories.contains(&spec.category) {
        return Withheld(Reason::CategoryNotAllowed);
    }
    let denied = policies.rules.deny.iter().find(|rule| {
        rule.purpose.as_ref().is_none_or(|p| p == query.purpose)
            && rule.category.as_ref().is_none_or(|c| *c == spec.category)
            && rule.sensitivity.is_none_or(|s| s == spec.sensitivity)
            && rule.business.as_ref().is_none_or(|b| b == query.business)
    });
    if let Some(rule) = denied {
        return Withheld(Reason::Rule(rule.id.clone()));
    }
    let now = query.now;
    if let Some(grant) = grants.iter().find(|grant| grant.is_live(now) && grant.covers(query.purpose, field)) {
        return FieldDecision::Released { grant: grant.id.clone() };
    }
    let covering: Vec<&&GrantView> = grants.iter().filter(|grant| grant.covers(query.purpose, field)).collect();
    if covering.iter().any(|grant| grant.revoked_by(now)) {
        Withheld(Reason::GrantRevoked)
    } else if covering.iter().any(|grant| now >= grant.expires_at) {
        Withheld(Reason::GrantExpired)
    } else if grants.iter().any(|grant| grant.is_live(now) && grant.purposes.iter().any(|p| p == query.purpose)) {
        Withheld(Reason::FieldNotGranted)
    } else if grants.iter().any(|grant| grant.is_live(now)) {
        Withheld(Reason::PurposeNotGranted)
    } else {
        Withheld(Reason::NoConsent)
    }
}

/// Why a grant (or an approval) is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantProblem {
    /// A purpose is not defined.
    #[error("unknown purpose `{0}`")]
    UnknownPurpose(String),
    /// The business is not registered for a purpose.
    #[error("the business is not registered for the purpose `{0}`")]
    PurposeNotRegistered(String),
    /// A field is not in the catalogue.
    #[error("unknown field `{0}`")]
    UnknownField(String),
    /// A field could never be released for any of the purposes.
    #[error("field `{field}` can never be used for {purposes}")]
    FieldNeverReleasable {
        /// The field.
        field: String,
        /// The purposes asked for, joined.
        purposes: String,
    },
    /// The duration is longer than a purpose or rule allows.
    #[error("a grant for `{purpose}` may last at most {max_days} days")]
    TooLong {
        /// The purpose whose limit is exceeded.
        purpose: String,
        /// Its limit.
        max_days: u32,
    },
    /// Nothing was asked for.
    #[error("a grant needs at least one purpose, one field and one day")]
    Empty,
    /// A purpose or field is named more than once.
    #[error("`{list}` names `{name}` more than once")]
    Duplicate {
        /// `purposes` or `fields`.
        list: &'static str,
        /// The name given twice.
        name: String,
    },
}

/// Checks a grant (or request) for `business`, registered for
/// `registered_purposes`: known purposes it is registered for, known fields
/// (special-category fields are only ever covered when named, as here),
/// every field releasable for at least one of the purposes, and a duration
/// within every purpose's limit and cap.
pub fn check_grant(
    policies: &Policies,
    business: &str,
    registered_purposes: &[String],
    purposes: &[String],
    fields: &[String],
    duration_days: u32,
) -> Result<(), GrantProblem> {
    if purposes.is_empty() || fields.is_empty() || duration_days == 0 {
        return Err(GrantProblem::Empty);
    }
    for (list, names) in [("purposes", purposes), ("fields", fields)] {
        let mut seen = std::collections::BTreeSet::new();
        if let Some(name) = names.iter().find(|name| !seen.insert(name.as_str())) {
            return Err(GrantProblem::Duplicate { list, name: name.clone() });
        }
    }
    for purpose in purposes {
        let max_days =
            policies.rules.max_duration_days(purpose).ok_or_else(|| GrantProblem::UnknownPurpose(purpose.clone()))?;
        if !registered_purposes.contains(purpose) {
            return Err(GrantProblem::PurposeNotRegistered(purpose.clone()));
        }
        if duration_days > max_days {
            return Err(GrantProblem::TooLong { purpose: purpose.clone(), max_days });
        }
    }
    for field in fields {
        if policies.catalogue.field(field).is_none() {
            return Err(GrantProblem::UnknownField(field.clone()));
        }
        let fields_one = [field.clone()];
        let releasable = purposes.iter().any(|purpose| {
            let query = ReadQuery { business, purpose, fields: &fields_one, now: 0, connected: true, objections: &[] };
            let probe = GrantView {
                id: String::new(),
                business: business.to_owned(),
                purposes: vec![purpose.clone()],
                fields: fields_one.to_vec(),
                starts_at: 0,
                expires_at: 1,
                revoked_at: None,
            };
            matches!(decide_field(policies, &query, &[&probe], field), FieldDecision::Released { .. })
        });
        if !releasable {
            return Err(GrantProblem::FieldNeverReleasable { field: field.clone(), purposes: purposes.join(", ") });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::policy::PolicyTexts;
    use proptest::prelude::*;

    #[test]
    fn every_reason_but_a_rule_has_its_code_among_the_fixed_codes() {
        let reasons = [
            Reason::UnknownField,
            Reason::UnknownPurpose,
            Reason::NoRelationship,
            Reason::Objection,
            Reason::CategoryNotAllowed,
            Reason::Rule("r".to_owned()),
            Reason::GrantRevoked,
            Reason::GrantExpired,
            Reason::FieldNotGranted,
            Reason::PurposeNotGranted,
            Reason::NoConsent,
        ];
        let mut fixed = 0;
        for reason in reasons {
            // A new variant fails to compile here until it is listed above.
            match &reason {
                Reason::Rule(id) => assert_eq!(reason.code(), format!("rule:{id}")),
                Reason::UnknownField
                | Reason::UnknownPurpose
                | Reason::NoRelationship
                | Reason::Objection
                | Reason::CategoryNotAllowed
                | Reason::GrantRevoked
                | Reason::GrantExpired
                | Reason::FieldNotGranted
                | Reason::PurposeNotGranted
                | Reason::NoConsent => {
                    assert!(Reason::FIXED_CODES.contains(&reason.code().as_str()), "{reason}");
                    fixed += 1;
                }
            }
        }
        assert_eq!(fixed, Reason::FIXED_CODES.len());
    }

    fn shipped() -> Policies {
        let texts = PolicyTexts {
            catalogue: crate::policy::DEFAULT_CATALOGUE,
            purposes: crate::policy::DEFAULT_PURPOSES,
            rules: crate::policy::DEFAULT_RULES,
        };
        Policies::parse(std::path::Path::new("policies"), texts).unwrap()
    }

    fn grant(
        id: &str,
        business: &str,
        purposes: &[&str],
        fields: &[&str],
        window: (i64, i64),
        revoked_at: Option<i64>,
    ) -> GrantView {
        GrantView {
            id: id.to_owned(),
            business: business.to_owned(),
            purposes: purposes.iter().map(|p| (*p).to_owned()).collect(),
            fields: fields.iter().map(|f| (*f).to_owned()).collect(),
            starts_at: window.0,
            expires_at: window.1,
            revoked_at,
        }
    }

    /// One row: who reads what, when, against which grants; the expected
    /// code per field (`released:<grant>` or a reason code).
    struct Case {
        name: &'static str,
        purpose: &'static str,
        fields: &'static [&'static str],
        now: i64,
        connected: bool,
        objections: &'static [&'static str],
        grants: Vec<GrantView>,
        expect: &'static [&'static str],
    }

    fn check(policies: &Policies, case: &Case) {
        let fields: Vec<String> = case.fields.iter().map(|f| (*f).to_owned()).collect();
        let objections: Vec<String> = case.objections.iter().map(|o| (*o).to_owned()).collect();
        let query = ReadQuery {
            business: "acme",
            purpose: case.purpose,
            fields: &fields,
            now: case.now,
            connected: case.connected,
            objections: &objections,
        };
        let got: Vec<String> = decide(policies, &query, &case.grants)
            .into_iter()
            .map(|(_, decision)| match decision {
                FieldDecision::Released { grant } => format!("released:{grant}"),
                FieldDecision::Withheld(reason) => reason.code(),
            })
            .collect();
        assert_eq!(got, case.expect, "{}", case.name);
    }

    #[test]
    fn decisions_follow_grants_rules_and_objections() {
        let policies = shipped();
        let marketing = || grant("g1", "acme", &["marketing"], &["email", "phone"], (100, 200), None);
        let cases = vec![
            Case {
                name: "a live grant releases its fields",
                purpose: "marketing",
                fields: &["email", "phone"],
                now: 150,
                connected: true,
                objections: &[],
                grants: vec![marketing()],
                expect: &["released:g1", "released:g1"],
            },
            Case {
                name: "window start is inclusive",
                purpose: "marketing",
                fields: &["email"],
                now: 100,
                connected: true,
                objections: &[],
                grants: vec![marketing()],
                expect: &["released:g1"],
            },
            Case {
                name: "one second before the start",
                purpose: "marketing",
                fields: &["email"],
                now: 99,
                connected: true,
                objections: &[],
                grants: vec![marketing()],
                expect: &["no_consent"],
            },
            Case {
                name: "last second of the window",
                purpose: "marketing",
                fields: &["email"],
                now: 199,
                connected: true,
                objections: &[],
                grants: vec![marketing()],
                expect: &["released:g1"],
            },
            Case {
                name: "window end is exclusive",
                purpose: "marketing",
                fields: &["email"],
                now: 200,
                connected: true,
                objections: &[],
                grants: vec![marketing()],
                expect: &["grant_expired"],
            },
            Case {
                name: "revoked before the read",
                purpose: "marketing",
                fields: &["email"],
                now: 150,
                connected: true,
                objections: &[],
                grants: vec![grant("g1", "acme", &["marketing"], &["email"], (100, 200), Some(150))],
                expect: &["grant_revoked"],
            },
            Case {
                name: "revoked after the read",
                purpose: "marketing",
                fields: &["email"],
                now: 150,
                connected: true,
                objections: &[],
                grants: vec![grant("g1", "acme", &["marketing"], &["email"], (100, 200), Some(151))],
                expect: &["released:g1"],
            },
            Case {
                name: "a field the grant does not name",
                purpose: "marketing",
                fields: &["email", "country"],
                now: 150,
                connected: true,
                objections: &[],
                grants: vec![marketing()],
                expect: &["released:g1", "category_not_allowed"],
            },
            Case {
                name: "a field of an allowed category not granted",
                purpose: "marketing",
                fields: &["given_name"],
                now: 150,
                connected: true,
                objections: &[],
                grants: vec![marketing()],
                expect: &["field_not_granted"],
            },
            Case {
                name: "another purpose than granted",
                purpose: "customer-care",
                fields: &["email"],
                now: 150,
                connected: true,
                objections: &[],
                grants: vec![marketing()],
                expect: &["purpose_not_granted"],
            },
            Case {
                name: "no grant at all",
                purpose: "marketing",
                fields: &["email"],
                now: 150,
                connected: true,
                objections: &[],
                grants: vec![],
                expect: &["no_consent"],
            },
            Case {
                name: "another business's grant does not count",
                purpose: "marketing",
                fields: &["email"],
                now: 150,
                connected: true,
                objections: &[],
                grants: vec![grant("g9", "other", &["marketing"], &["email"], (100, 200), None)],
                expect: &["no_consent"],
            },
            Case {
                name: "an objection overrides the grant",
                purpose: "marketing",
                fields: &["email"],
                now: 150,
                connected: true,
                objections: &["marketing"],
                grants: vec![marketing()],
                expect: &["objection"],
            },
            Case {
                name: "a disconnected customer releases nothing",
                purpose: "marketing",
                fields: &["email"],
                now: 150,
                connected: false,
                objections: &[],
                grants: vec![marketing()],
                expect: &["no_relationship"],
            },
            Case {
                name: "special category is never for marketing",
                purpose: "marketing",
                fields: &["allergies"],
                now: 150,
                connected: true,
                objections: &[],
                grants: vec![grant("g2", "acme", &["marketing"], &["allergies"], (100, 200), None)],
                expect: &["category_not_allowed"],
            },
            Case {
                name: "special-category data named in an order-fulfilment grant is released",
                purpose: "order-fulfilment",
                fields: &["allergies"],
                now: 150,
                connected: true,
                objections: &[],
                grants: vec![grant("g3", "acme", &["order-fulfilment"], &["allergies"], (100, 200), None)],
                expect: &["released:g3"],
            },
            Case {
                name: "unknown field and purpose",
                purpose: "marketing",
                fields: &["shoe_colour"],
                now: 150,
                connected: true,
                objections: &[],
                grants: vec![marketing()],
                expect: &["unknown_field"],
            },
            Case {
                name: "unknown purpose",
                purpose: "resale",
                fields: &["email"],
                now: 150,
                connected: true,
                objections: &[],
                grants: vec![marketing()],
                expect: &["unknown_purpose"],
            },
        ];
        for case in &cases {
            check(&policies, case);
        }
    }

    #[test]
    fn deny_rules_name_their_id() {
        let texts = PolicyTexts {
            catalogue: crate::policy::DEFAULT_CATALOGUE,
            purposes: "[purposes.analytics]\ndescription = \"x\"\ndpv = \"dpv:ServiceOptimisation\"\ncategories = [\"health\", \"purchases\"]\nmax_duration_days = 90\n",
            rules: "[[deny]]\nid = \"no-health-analytics\"\ndescription = \"x\"\npurpose = \"analytics\"\ncategory = \"health\"\n",
        };
        let policies = Policies::parse(std::path::Path::new("test"), texts).unwrap();
        let case = Case {
            name: "a rule withholds despite a grant",
            purpose: "analytics",
            fields: &["allergies", "loyalty_points"],
            now: 5,
            connected: true,
            objections: &[],
            grants: vec![grant("g", "acme", &["analytics"], &["allergies", "loyalty_points"], (0, 10), None)],
            expect: &["rule:no-health-analytics", "released:g"],
        };
        check(&policies, &case);
    }

    #[test]
    fn grants_are_checked_against_purposes_registration_and_caps() {
        let policies = shipped();
        let s = |items: &[&str]| items.iter().map(|i| (*i).to_owned()).collect::<Vec<_>>();
        let registered = s(&["marketing", "order-fulfilment", "analytics"]);
        assert_eq!(check_grant(&policies, "acme", &registered, &s(&["marketing"]), &s(&["email"]), 90), Ok(()));
        assert_eq!(
            check_grant(&policies, "acme", &registered, &s(&["customer-care"]), &s(&["email"]), 30),
            Err(GrantProblem::PurposeNotRegistered("customer-care".to_owned()))
        );
        assert_eq!(
            check_grant(&policies, "acme", &registered, &s(&["analytics"]), &s(&["loyalty_points"]), 91),
            Err(GrantProblem::TooLong { purpose: "analytics".to_owned(), max_days: 90 })
        );
        assert!(matches!(
            check_grant(&policies, "acme", &registered, &s(&["marketing"]), &s(&["allergies"]), 30),
            Err(GrantProblem::FieldNeverReleasable { .. })
        ));
        assert_eq!(
            check_grant(&policies, "acme", &registered, &s(&["resale"]), &s(&["email"]), 30),
            Err(GrantProblem::UnknownPurpose("resale".to_owned()))
        );
        assert_eq!(
            check_grant(&policies, "acme", &registered, &s(&["marketing"]), &s(&[]), 30),
            Err(GrantProblem::Empty)
        );
        assert_eq!(
            check_grant(&policies, "acme", &registered, &s(&["order-fulfilment"]), &s(&["allergies"]), 365),
            Ok(())
        );
    }

    #[test]
    fn shipped_purposes_fit_the_specification() {
        let policies = shipped();
        for purpose in ["order-fulfilment", "marketing"] {
            let spec = &policies.rules.purposes[purpose];
            assert!(spec.categories.contains(&"contact".to_owned()), "{purpose}");
            assert!(policies.rules.max_duration_days(purpose).unwrap() >= 90, "{purpose}");
        }
        assert_eq!(policies.rules.max_duration_days("analytics"), Some(90));
    }

    #[test]
    fn policy_errors_name_file_line_and_problem() {
        let catalogue = crate::policy::DEFAULT_CATALOGUE;
        let purposes_ok = crate::policy::DEFAULT_PURPOSES;
        let cases = [
            (
                "[purposes.x]\ndescription = \"d\"\ndpv = \"dpv:Marketing\"\ncategories = [\"astrology\"]\nmax_duration_days = 9\n",
                "",
                "purposes.toml",
                1,
                "astrology",
            ),
            (
                "[purposes.x]\ndescription = \"d\"\ndpv = \"Marketing\"\ncategories = [\"contact\"]\nmax_duration_days = 9\n",
                "",
                "purposes.toml",
                1,
                "dpv",
            ),
            (
                "[purposes.x]\ndescription = \"d\"\ndpv = \"dpv:Marketing\"\ncategories = [\"contact\"]\nmax_duration_days = 0\n",
                "",
                "purposes.toml",
                1,
                "max_duration_days",
            ),
            (
                purposes_ok,
                "\n[[deny]]\nid = \"r\"\ndescription = \"d\"\npurpose = \"resale\"\n",
                "rules.toml",
                2,
                "resale",
            ),
            (purposes_ok, "[[deny]]\nid = \"r\"\ndescription = \"d\"\n", "rules.toml", 1, "at least one condition"),
            (
                purposes_ok,
                "[[duration_cap]]\nid = \"c\"\ndescription = \"d\"\npurpose = \"marketing\"\nmax_days = 0\n",
                "rules.toml",
                1,
                "max_days",
            ),
            (
                purposes_ok,
                "[[deny]]\nid = \"r\"\ndescription = \"d\"\npurpose = \"marketing\"\ncolour = \"red\"\n",
                "rules.toml",
                5,
                "colour",
            ),
            (purposes_ok, "\n\n[retention]\nerase_inactive_after_days = 0\n", "rules.toml", 3, "1 to 36500"),
            (purposes_ok, "[retention]\nerase_inactive_after_days = 40000\n", "rules.toml", 1, "1 to 36500"),
            (purposes_ok, "[retention]\nerase_inactive_after_days = -3\n", "rules.toml", 2, "invalid value"),
            (purposes_ok, "[retention]\nerase_after = 30\n", "rules.toml", 2, "erase_after"),
        ];
        for (purposes, rules, file, line, needle) in cases {
            let texts = PolicyTexts { catalogue, purposes, rules };
            let error = Policies::parse(std::path::Path::new("dir"), texts).unwrap_err();
            assert!(error.file.ends_with(file), "{error}");
            assert_eq!(error.line, line, "{error}");
            assert!(error.problem.contains(needle), "{error} should mention {needle}");
        }
    }

    #[test]
    fn the_retention_rule_is_off_unless_a_retention_table_sets_it() {
        assert_eq!(shipped().rules.retention, None, "the shipped rules leave it off");
        let texts = PolicyTexts {
            catalogue: crate::policy::DEFAULT_CATALOGUE,
            purposes: crate::policy::DEFAULT_PURPOSES,
            rules: "[retention]\nerase_inactive_after_days = 730\n",
        };
        let policies = Policies::parse(std::path::Path::new("dir"), texts).unwrap();
        assert_eq!(policies.rules.retention, Some(crate::policy::Retention { erase_inactive_after_days: 730 }));
    }

    #[test]
    fn pending_requests_per_customer_default_to_three_and_a_requests_table_sets_them() {
        assert_eq!(shipped().rules.requests_pending_per_customer_max, 3);
        let parse = |rules: &str| {
            let texts = PolicyTexts {
                catalogue: crate::policy::DEFAULT_CATALOGUE,
                purposes: crate::policy::DEFAULT_PURPOSES,
                rules,
            };
            Policies::parse(std::path::Path::new("dir"), texts)
        };
        let five = parse("[requests]\npending_per_customer_max = 5\n").unwrap();
        assert_eq!(five.rules.requests_pending_per_customer_max, 5);
        let error = parse("\n[requests]\npending_per_customer_max = 0\n").unwrap_err();
        assert_eq!(error.line, 2, "{error}");
        assert!(error.problem.contains("pending_per_customer_max must be 1 to 100"), "{error}");
    }

    #[test]
    fn a_grant_naming_a_purpose_or_field_twice_is_refused() {
        let policies = shipped();
        let registered = ["marketing".to_owned()];
        let check = |purposes: &[&str], fields: &[&str]| {
            let purposes: Vec<String> = purposes.iter().map(|p| p.to_string()).collect();
            let fields: Vec<String> = fields.iter().map(|f| f.to_string()).collect();
            check_grant(&policies, "acme", &registered, &purposes, &fields, 30)
        };
        assert_eq!(check(&["marketing"], &["email"]), Ok(()));
        assert_eq!(
            check(&["marketing"], &["email", "email"]),
            Err(GrantProblem::Duplicate { list: "fields", name: "email".to_owned() })
        );
        assert_eq!(
            check(&["marketing", "marketing"], &["email"]),
            Err(GrantProblem::Duplicate { list: "purposes", name: "marketing".to_owned() })
        );
    }

    fn arbitrary_grant() -> impl Strategy<Value = GrantView> {
        let purposes = prop::sample::subsequence(vec!["marketing", "order-fulfilment", "analytics"], 1..=3);
        let fields = prop::sample::subsequence(vec!["email", "phone", "allergies", "loyalty_points", "country"], 1..=5);
        (0..3u8, purposes, fields, 0i64..50, 1i64..50, prop::option::of(0i64..100)).prop_map(
            |(id, purposes, fields, start, length, revoked_at)| GrantView {
                id: format!("g{id}"),
                business: if id == 2 { "other".to_owned() } else { "acme".to_owned() },
                purposes: purposes.into_iter().map(str::to_owned).collect(),
                fields: fields.into_iter().map(str::to_owned).collect(),
                starts_at: start,
                expires_at: start + length,
                revoked_at,
            },
        )
    }

    proptest! {
        #[test]
        fn a_released_field_always_has_a_live_grant_covering_it(
            grants in prop::collection::vec(arbitrary_grant(), 0..5).prop_map(|mut grants| {
                // Ids are unique, as stored grants' are.
                for (index, grant) in grants.iter_mut().enumerate() {
                    grant.id = format!("g{index}");
                }
                grants
            }),
            purpose in prop::sample::select(vec!["marketing", "order-fulfilment", "analytics"]),
            now in 0i64..120,
            connected in any::<bool>(),
            objects in any::<bool>(),
        ) {
            let policies = shipped();
            let fields: Vec<String> = ["email", "phone", "allergies", "loyalty_points", "country"].iter().map(|f| (*f).to_owned()).collect();
            let objections: Vec<String> = if objects { vec![purpose.to_owned()] } else { vec![] };
            let query = ReadQuery { business: "acme", purpose, fields: &fields, now, connected, objections: &objections };
            for (field, decision) in decide(&policies, &query, &grants) {
                if let FieldDecision::Released { grant } = decision {
                    prop_assert!(connected && !objects, "released without a relationship or despite an objection");
                    let relied = grants.iter().find(|g| g.id == grant && g.business == "acme").expect("the grant exists");
                    prop_assert!(relied.is_live(now));
                    prop_assert!(relied.purposes.iter().any(|p| p == purpose));
                    prop_assert!(relied.fields.contains(&field));
                }
            }
        }
    }
}
