//! consentvault: a privacy-first, permission-based customer data vault.
//!
//! Customers keep their personal data here; every value is sealed with
//! AES-256-GCM under a per-subject key, and every change goes through one
//! durable, group-committed path. See `docs/ARCHITECTURE.md` for the map.

pub mod api;
pub mod audit;
pub mod auth;
pub mod backup;
pub mod cli;
pub mod clock;
pub mod config;
pub mod consent;
pub mod contact;
pub mod control;
pub mod controller;
pub mod core;
pub mod crypto;
pub mod directory;
pub mod files;
pub mod ids;
pub mod keys;
pub mod metrics;
pub mod policy;
pub mod principals;
pub mod release;
pub mod rights;
pub mod server;
pub mod store;
pub mod subjects;
pub mod sweep;
pub mod telemetry;
#[cfg(test)]
mod testing;
pub mod vault;
pub mod webhooks;
