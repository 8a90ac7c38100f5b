//! Test support for the domain's unit tests: the services over an in-memory
//! store, built as the composition root builds them, without a data
//! directory, key file or server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use zeroize::Zeroizing;

use crate::audit::{Actor, AuditLog};
use crate::auth::Role;
use crate::auth::cache::TokenCache;
use crate::auth::token::{TokenIssuer, TokenVerifier, TrustedIssuer};
use crate::consent::Consent;
use crate::core::Core;
use crate::crypto::KeyRing;
use crate::ids::{BusinessId, SubjectId};
use crate::keys::{KeyConfig, Keys};
use crate::principals::{Principals, Tokens};
use crate::rights::Rights;
use crate::store::memory::MemoryBackend;
use crate::store::{Backend, Store, WriteBatch};
use crate::subjects::Subjects;

/// The services of one vault over an in-memory store.
pub(crate) struct Services {
    pub core: Arc<Core>,
    pub backend: Arc<MemoryBackend>,
    pub keys: Keys,
    pub subjects: Subjects,
    pub principals: Principals,
    pub consent: Consent,
    pub rights: Rights,
}

impl Services {
    /// Fresh services with the built-in policies and a fixed KEK.
    pub fn new() -> Self {
        crate::auth::jwt_ring::install();
        let backend = Arc::new(MemoryBackend::default());
        let ring = KeyRing::new(vec![(1, Zeroizing::new([0x5A; 32]))]).unwrap();
        let mut batch = WriteBatch::new();
        batch.extend(AuditLog::init_records(&ring, "test.example/log").unwrap());
        backend.apply(&batch).unwrap();
        let store = Store::new(backend.clone()).unwrap();
        let audit = AuditLog::load(&store, &ring).unwrap();
        store.set_finalizer(audit.finalizer());
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(ring.rng()).unwrap();
        let issuer = TokenIssuer::new("consentvault", "consentvault", pkcs8.as_ref()).unwrap();
        let verifier = TokenVerifier::new(vec![TrustedIssuer::own(&issuer, "consentvault")]);
        let core = Arc::new(Core::new(store, audit, Arc::new(ring), crate::policy::Policies::built_in()));
        let keys = Keys::new(Arc::clone(&core), KeyConfig::default());
        let subjects = Subjects::new(Arc::clone(&core), keys.clone());
        let tokens = Tokens { issuer, verifier, cache: TokenCache::default() };
        let principals = Principals::new(Arc::clone(&core), subjects.clone(), tokens, &Default::default());
        let consent = Consent::new(Arc::clone(&core), principals.clone());
        let contact = crate::contact::Contact::new(Arc::clone(&core), keys.clone(), consent.clone());
        let rights = Rights::new(Arc::clone(&core), subjects.clone(), principals.clone(), consent.clone(), contact);
        Self { core, backend, keys, subjects, principals, consent, rights }
    }

    /// A business registered for marketing and order fulfilment.
    pub async fn business(&self) -> BusinessId {
        let purposes = vec!["marketing".to_owned(), "order-fulfilment".to_owned()];
        let created = self.principals.client_create(&Actor::system(), Role::Business, "Acme", purposes).await.unwrap();
        created.id.parse().unwrap()
    }

    /// A customer with an email and a phone number.
    pub async fn customer(&self) -> SubjectId {
        let subject = self.subjects.subject_create(&Actor::system()).await.unwrap();
        let values = serde_json::json!({"email": "ada@example.org", "phone": "+44 20 7946 0000"});
        let values = values.as_object().unwrap().clone();
        self.subjects.data_merge(&Actor::customer(subject), subject, &values).await.unwrap();
        subject
    }

    /// Every audit event written so far, decoded.
    pub fn events(&self) -> Vec<crate::audit::AuditEvent> {
        let size = self.core.audit().durable_size();
        (0..size)
            .map(|index| {
                let bytes = self.core.audit().entry(self.core.store(), index).unwrap().unwrap();
                crate::audit::AuditEvent::from_bytes(&bytes).unwrap()
            })
            .collect()
    }
}
