//! Identity: who is calling, proven by a token, and free of HTTP types.
//!
//! [`token`] issues and verifies JWT access tokens (RFC 8725 checks);
//! [`jwt_ring`] is the `jsonwebtoken` crypto provider built on ring, so ring
//! stays the one cryptographic library; [`cache`] remembers verified tokens
//! until they expire; [`ratelimit`] slows down guessing.

pub mod cache;
pub mod external;
pub mod jwt_ring;
pub mod oidc;
pub mod ratelimit;
pub mod session;
pub mod token;

use serde::{Deserialize, Serialize};

/// The four roles. One role per token; no role can act as another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A person whose data is kept.
    Customer,
    /// A company that asks for and reads customer data.
    Business,
    /// Reads the audit log; never personal data.
    Auditor,
    /// The operator; never personal data.
    Admin,
}

impl Role {
    /// Parses the wire name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "customer" => Some(Self::Customer),
            "business" => Some(Self::Business),
            "auditor" => Some(Self::Auditor),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Customer => "customer",
            Self::Business => "business",
            Self::Auditor => "auditor",
            Self::Admin => "admin",
        }
    }

    /// The role as the audit log names it.
    pub fn audit_role(self) -> crate::audit::Role {
        match self {
            Self::Customer => crate::audit::Role::Customer,
            Self::Business => crate::audit::Role::Business,
            Self::Auditor => crate::audit::Role::Auditor,
            Self::Admin => crate::audit::Role::Admin,
        }
    }
}

/// A caller whose token verified and whose principal is enabled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The role.
    pub role: Role,
    /// The principal id: the customer's subject id, or the business, auditor
    /// or admin id.
    pub id: String,
}

impl Principal {
    /// The actor this principal is in audit events.
    pub fn actor(&self) -> crate::audit::Actor {
        crate::audit::Actor::new(self.role.audit_role(), self.id.clone())
    }
}
