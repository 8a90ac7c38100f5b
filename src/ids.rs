//! Identifiers: random 128-bit ids shown as 32 lowercase hex digits.
//!
//! Ids carry no meaning and no personal data, so they are safe in logs,
//! audit entries and URLs.

use std::fmt;
use std::str::FromStr;

use ring::rand::SecureRandom;

use crate::crypto::{CryptoError, random_bytes};

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0F)]));
    }
    out
}

/// Parses exactly `N` bytes of hex (either case).
pub fn hex_decode<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != N * 2 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; N];
    for (index, pair) in text.as_bytes().chunks_exact(2).enumerate() {
        let pair = std::str::from_utf8(pair).ok()?;
        out[index] = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

/// An id that did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an id: expected 32 hex digits")]
pub struct IdError;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; 16]);

        impl $name {
            /// A fresh random id.
            pub fn random(rng: &dyn SecureRandom) -> Result<Self, CryptoError> {
                random_bytes(rng).map(Self)
            }

            /// The id from its 16 bytes.
            pub fn from_bytes(bytes: [u8; 16]) -> Self {
                Self(bytes)
            }

            /// The 16 bytes of the id.
            pub fn as_bytes(&self) -> &[u8; 16] {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex(&self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(text: &str) -> Result<Self, IdError> {
                hex_decode(text).map(Self).ok_or(IdError)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// A subject: one customer record.
    SubjectId
);

/// Whether `text` is an id as the vault writes them: 32 lowercase hex
/// digits.
pub fn is_id(text: &str) -> bool {
    text.len() == 32 && text.bytes().all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
}

macro_rules! text_id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        ///
        /// Kept as its text (32 lowercase hex digits), the form the store's
        /// keys and the wire carry; parsing is the only way to make one
        /// from outside text.
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// A fresh random id.
            pub fn random(rng: &dyn SecureRandom) -> Result<Self, CryptoError> {
                random_bytes::<16>(rng).map(|bytes| Self(hex(&bytes)))
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(text: &str) -> Result<Self, IdError> {
                if is_id(text) { Ok(Self(text.to_owned())) } else { Err(IdError) }
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl From<&$name> for String {
            fn from(id: &$name) -> String {
                id.0.clone()
            }
        }

        /// Its text, for store keys and audit events (which hold ids as
        /// text); a `&str` never becomes an id without parsing.
        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

text_id_type!(
    /// A business (a principal that reads customer data under grants).
    BusinessId
);
text_id_type!(
    /// A customer's connection to one business.
    RelationshipId
);
text_id_type!(
    /// How one business sees one customer; different for every business.
    PairwiseId
);
text_id_type!(
    /// A grant: one consent a customer gave one business.
    GrantId
);
text_id_type!(
    /// A business's access request to a customer.
    RequestId
);
text_id_type!(
    /// An item of a customer's inbox: a message from a business, one she
    /// wrote, or a notice from the vault. Its first 16 digits count down
    /// from `u64::MAX` the time it was made (seconds, shifted left 20 bits,
    /// with a sequence number in the low 20 bits that orders items made in
    /// the same second), so the inbox, kept in id order, lists the newest
    /// first; the other 16 are random, or a notice's audit index.
    MessageId
);

/// Bits of a [`MessageId`]'s time part that hold the sequence number.
const MESSAGE_SEQUENCE_BITS: u32 = 20;

impl MessageId {
    /// The time part: `time_secs` and the sequence number `sequence`,
    /// counted down.
    fn countdown(time_secs: i64, sequence: u64) -> u64 {
        let secs = u64::try_from(time_secs).unwrap_or(0);
        let order = (secs << MESSAGE_SEQUENCE_BITS) | (sequence & ((1 << MESSAGE_SEQUENCE_BITS) - 1));
        u64::MAX - order
    }

    /// A fresh id for an item made at `time_secs` (Unix seconds), the
    /// `sequence`-th its maker made (later items have larger numbers).
    pub fn at(time_secs: i64, sequence: u64, rng: &dyn SecureRandom) -> Result<Self, CryptoError> {
        let random = random_bytes::<8>(rng)?;
        Ok(Self(format!("{:016x}{}", Self::countdown(time_secs, sequence), hex(&random))))
    }

    /// The id of the vault's notice of the audit event at `index`, made at
    /// `time_secs` as its maker's `sequence`-th item: one notice per event,
    /// so the index makes it unique.
    pub fn of_notice(time_secs: i64, sequence: u64, index: u64) -> Self {
        Self(format!("{:016x}{index:016x}", Self::countdown(time_secs, sequence)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn inbox_ids_sort_newest_first_within_a_second_too() {
        let rng = ring::rand::SystemRandom::new();
        let made = [(100, 0), (100, 1), (100, 2), (101, 3), (102, 4)];
        let ids: Vec<String> =
            made.iter().map(|&(secs, sequence)| MessageId::at(secs, sequence, &rng).unwrap().to_string()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
        assert_eq!(sorted, newest_first);
        let notice = MessageId::of_notice(101, 5, 42);
        assert!(ids[3] > notice.to_string() && notice.to_string() > ids[4], "a notice sorts by its time too");
        assert!(notice.to_string().parse::<MessageId>().is_ok());
    }

    #[test]
    fn ids_round_trip_through_text_and_json() {
        let id = SubjectId::random(&ring::rand::SystemRandom::new()).unwrap();
        let text = id.to_string();
        assert_eq!(text.len(), 32);
        assert_eq!(text.parse::<SubjectId>().unwrap(), id);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<SubjectId>(&json).unwrap(), id);
        for bad in ["", "xyz", &text[..31], &format!("{text}0"), "g".repeat(32).as_str(), "é".repeat(16).as_str()] {
            assert!(bad.parse::<SubjectId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn record_ids_parse_only_as_the_vault_writes_them() {
        let id = GrantId::random(&ring::rand::SystemRandom::new()).unwrap();
        assert_eq!(id.as_str().parse::<GrantId>().unwrap(), id);
        assert_eq!(serde_json::from_str::<GrantId>(&serde_json::to_string(&id).unwrap()).unwrap(), id);
        let upper = "0123456789ABCDEF0123456789abcdef";
        for bad in ["", "xyz", &id.as_str()[..31], &format!("{id}0"), upper, "é".repeat(16).as_str()] {
            assert!(bad.parse::<BusinessId>().is_err(), "{bad}");
            assert!(serde_json::from_value::<PairwiseId>(serde_json::json!(bad)).is_err(), "{bad}");
        }
    }
}
