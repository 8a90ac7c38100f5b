//! Access requests: a business asks a connected customer for purposes ×
//! fields × duration, saying why and what the customer gets; the customer
//! approves (possibly narrowing, never widening) or denies. Pending requests
//! expire: they read as expired from `expires_at` on, and the expiry sweep
//! ([`Consent::requests_expire`]) closes them (`access_request.closed`,
//! `cause: expired`) from an expiry index, as it ends grants.

use serde::{Deserialize, Serialize};

use super::{
    Consent, ConsentError, DAY_SECS, GrantRecord, Page, Relationship, RequestRefused, customer_acts_in, decode, encode,
    grant_write, objections_in,
};
use crate::audit::{Actor, AuditEvent, EventKind, Related, Role};
use crate::ids::{BusinessId, GrantId, PairwiseId, RequestId, SubjectId};
use crate::policy::engine;
use crate::store::{Key, Txn};

/// How long a request waits for an answer.
pub const REQUEST_TTL_DAYS: i64 = 30;
/// Longest justification or benefit text.
pub const TEXT_BYTES_MAX: usize = 1000;

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RequestStatus {
    /// Waiting for the customer.
    Pending,
    /// Approved; a grant was created.
    Approved,
    /// Denied by the customer.
    Denied,
    /// Not answered in time.
    Expired,
}

/// A stored access request. The texts are the business's words to the
/// customer; they are not personal data of the customer and are never
/// written to the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessRequest {
    /// The request id.
    #[schema(value_type = String)]
    pub request_id: RequestId,
    /// The business asking.
    #[schema(value_type = String)]
    pub business_id: BusinessId,
    /// How the business knows the customer.
    #[schema(value_type = String)]
    pub pairwise_id: PairwiseId,
    /// Purposes asked for.
    pub purposes: Vec<String>,
    /// Fields asked for.
    pub fields: Vec<String>,
    /// Duration asked for, in days.
    pub duration_days: u32,
    /// Why the business asks.
    pub justification: String,
    /// What the customer gets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub benefit: Option<String>,
    /// Stored status (a pending request past `expires_at` reads as expired).
    pub status: RequestStatus,
    /// When it was made (Unix seconds).
    pub created_at: i64,
    /// When it expires if unanswered (Unix seconds).
    pub expires_at: i64,
    /// The customer's reason for a denial.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The grant an approval created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub grant_id: Option<GrantId>,
}

impl AccessRequest {
    /// The status at `now`.
    pub fn status_at(&self, now: i64) -> RequestStatus {
        if self.status == RequestStatus::Pending && now >= self.expires_at {
            RequestStatus::Expired
        } else {
            self.status
        }
    }
}

/// What a customer may narrow when approving.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Narrowing {
    /// A subset of the purposes asked for.
    pub purposes: Option<Vec<String>>,
    /// A subset of the fields asked for.
    pub fields: Option<Vec<String>>,
    /// At most the duration asked for.
    pub duration_days: Option<u32>,
}

/// What an approval grants: the request, narrowed. Refuses anything the
/// request did not ask for, so an approval can never widen it.
pub fn narrowed(
    request: &AccessRequest,
    narrowing: Narrowing,
) -> Result<(Vec<String>, Vec<String>, u32), ConsentError> {
    let purposes = narrowing.purposes.unwrap_or_else(|| request.purposes.clone());
    let fields = narrowing.fields.unwrap_or_else(|| request.fields.clone());
    let duration_days = narrowing.duration_days.unwrap_or(request.duration_days);
    if purposes.iter().any(|p| !request.purposes.contains(p))
        || fields.iter().any(|f| !request.fields.contains(f))
        || duration_days > request.duration_days
    {
        return Err(ConsentError::Invalid("an approval may narrow the request, never widen it".to_owned()));
    }
    Ok((purposes, fields, duration_days))
}

fn text_check(name: &str, text: &str, required: bool) -> Result<(), ConsentError> {
    let trimmed = text.trim();
    if (required && trimmed.is_empty())
        || text.len() > TEXT_BYTES_MAX
        || text.chars().any(|c| c.is_control() && c != '\n')
    {
        return Err(ConsentError::Invalid(format!(
            "`{name}` must be {} to {TEXT_BYTES_MAX} bytes of text",
            if required { 1 } else { 0 }
        )));
    }
    Ok(())
}

impl Consent {
    /// A business asks the customer it knows as `pairwise`.
    #[allow(clippy::too_many_arguments)]
    pub async fn request_create(
        &self,
        business: &BusinessId,
        pairwise: &PairwiseId,
        purposes: Vec<String>,
        fields: Vec<String>,
        duration_days: u32,
        justification: String,
        benefit: Option<String>,
    ) -> Result<AccessRequest, ConsentError> {
        text_check("justification", &justification, true)?;
        if let Some(benefit) = &benefit {
            text_check("benefit", benefit, false)?;
        }
        let registered = self.business_purposes(business)?;
        engine::check_grant(&self.core.policies(), business, &registered, &purposes, &fields, duration_days)?;
        let now = self.core.clock().now_secs();
        let request = AccessRequest {
            request_id: RequestId::random(self.core.keys().rng())?,
            business_id: business.clone(),
            pairwise_id: pairwise.clone(),
            purposes,
            fields,
            duration_days,
            justification,
            benefit,
            status: RequestStatus::Pending,
            created_at: now,
            expires_at: now + REQUEST_TTL_DAYS * DAY_SECS,
            reason: None,
            grant_id: None,
        };
        let log = self.core.audit().clone();
        let stored = request.clone();
        let time = self.core.clock().rfc3339();
        let pending_max = self.core.policies().rules.requests_pending_per_customer_max;
        let (appended, durable) = self
            .core
            .store()
            .commit_durable(move |txn| {
                // Only a connected customer can be asked, and only as she
                // lets this business ask.
                let subject = Consent::pairwise_subject(txn, &stored.business_id, &stored.pairwise_id)?
                    .ok_or(ConsentError::NotFound("customer"))?;
                requests_taken_in(txn, subject, &stored, pending_max)?;
                let mut event = AuditEvent::new(
                    EventKind::AccessRequestCreated,
                    Actor::new(Role::Business, &stored.business_id),
                    &time,
                )
                .subject(subject)
                .fields(stored.fields.clone())
                .related(Related::RequestId, &stored.request_id);
                event.purposes = stored.purposes.clone();
                event.business = Some(stored.business_id.to_string());
                txn.put(Key::request(subject.as_bytes(), &stored.request_id), encode(&stored, "request")?);
                txn.put(
                    Key::request_of_business(&stored.business_id, &stored.request_id),
                    subject.to_string().into_bytes(),
                );
                txn.put(Key::request_expiry(stored.expires_at, subject.as_bytes(), &stored.request_id), Vec::new());
                Ok::<_, ConsentError>(log.append(txn, &event)?)
            })
            .await?;
        self.core.audit().confirm(appended, &durable)?;
        Ok(request)
    }

    /// Every request made to the customer, newest last (for her export).
    pub fn requests_of_customer(&self, subject: SubjectId) -> Result<Vec<AccessRequest>, ConsentError> {
        let mut requests: Vec<AccessRequest> = self.records(&Key::requests_of(subject.as_bytes()), "request")?;
        requests.sort_by_key(|request| request.created_at);
        Ok(requests)
    }

    /// One page of the requests made to the customer, in request id order
    /// after `after`.
    pub fn requests_of_customer_page(
        &self,
        subject: SubjectId,
        after: Option<&RequestId>,
        limit: usize,
    ) -> Result<Page<AccessRequest>, ConsentError> {
        self.records_page(&Key::requests_of(subject.as_bytes()), after.map(|id| id.as_str()), limit, "request")
    }

    /// One page of the requests `business` made, in request id order after
    /// `after`.
    pub fn requests_of_business(
        &self,
        business: &BusinessId,
        after: Option<&RequestId>,
        limit: usize,
    ) -> Result<Page<AccessRequest>, ConsentError> {
        let index = self.business_index_page::<RequestId>(
            &Key::requests_of_business(business),
            after.map(|id| id.as_str()),
            limit,
            "request index",
        )?;
        let mut requests = Vec::with_capacity(index.items.len());
        for (request_id, subject) in index.items {
            if let Some(bytes) = self.core.store().get(&Key::request(subject.as_bytes(), &request_id))? {
                requests.push(decode::<AccessRequest>(&bytes, "request")?);
            }
        }
        Ok(Page { items: requests, next: index.next })
    }

    /// One request `business` made.
    pub fn request_of_business(
        &self,
        business: &BusinessId,
        request_id: &RequestId,
    ) -> Result<AccessRequest, ConsentError> {
        let subject = self
            .core
            .store()
            .get(&Key::request_of_business(business, request_id))?
            .ok_or(ConsentError::NotFound("request"))?;
        let subject: SubjectId = String::from_utf8(subject)
            .ok()
            .and_then(|text| text.parse().ok())
            .ok_or(super::corrupt("request index"))?;
        self.request_of_customer(subject, request_id)
    }

    fn request_of_customer(&self, subject: SubjectId, request_id: &RequestId) -> Result<AccessRequest, ConsentError> {
        self.record(&Key::request(subject.as_bytes(), request_id), "request")
    }

    /// The customer approves a pending request, optionally narrowed: the
    /// grant never covers more than was asked.
    pub async fn request_approve(
        &self,
        subject: SubjectId,
        request_id: &RequestId,
        narrowing: Narrowing,
    ) -> Result<GrantRecord, ConsentError> {
        let request = self.request_of_customer(subject, request_id)?;
        if request.status_at(self.core.clock().now_secs()) != RequestStatus::Pending {
            return Err(ConsentError::Invalid(
                format!("the request is {:?}, not pending", request.status_at(self.core.clock().now_secs()))
                    .to_lowercase(),
            ));
        }
        let (purposes, fields, duration_days) = narrowed(&request, narrowing)?;
        let terms = super::RequestTerms {
            request_id: request_id.as_str(),
            justification: &request.justification,
            benefit: request.benefit.as_deref(),
        };
        let (grant, grant_event, receipt) =
            self.grant_prepare(subject, &request.business_id, purposes, fields, duration_days, Some(terms))?;
        let log = self.core.audit().clone();
        let time = self.core.clock().rfc3339();
        let stored_grant = grant.clone();
        let request_id = request_id.to_owned();
        let vclock = self.core.clock().clone();
        let (((first, index), second), durable) = self
            .core
            .store()
            .commit_durable(move |txn| {
                let (key, mut request) = pending_request_take(txn, subject, &request_id, vclock.now_secs())?;
                // A purpose she objects to (now) could never be used.
                let objections = objections_in(txn, subject)?;
                if let Some(purpose) = stored_grant.purposes.iter().find(|purpose| objections.contains(purpose)) {
                    return Err(RequestRefused::Objected(purpose.clone()).into());
                }
                let (first, index) = grant_write(txn, &log, subject, stored_grant.clone(), &grant_event, receipt)?;
                request.status = RequestStatus::Approved;
                request.grant_id = Some(stored_grant.grant_id.clone());
                txn.put(key, encode(&request, "request")?);
                let mut event = AuditEvent::new(EventKind::AccessRequestApproved, Actor::customer(subject), &time)
                    .subject(subject)
                    .fields(stored_grant.fields.clone())
                    .related(Related::RequestId, &request_id)
                    .related(Related::GrantId, &stored_grant.grant_id);
                event.business = Some(request.business_id.to_string());
                Ok(((first, index), log.append(txn, &event)?))
            })
            .await?;
        self.core.audit().confirm(first, &durable)?;
        self.core.audit().confirm(second, &durable)?;
        Ok(GrantRecord { audit_index: index, ..grant })
    }

    /// The customer denies a pending request, with an optional reason.
    pub async fn request_deny(
        &self,
        subject: SubjectId,
        request_id: &RequestId,
        reason: Option<String>,
    ) -> Result<AccessRequest, ConsentError> {
        if let Some(reason) = &reason {
            text_check("reason", reason, false)?;
        }
        let log = self.core.audit().clone();
        let time = self.core.clock().rfc3339();
        let request_id = request_id.to_owned();
        let vclock = self.core.clock().clone();
        let ((request, appended), durable) = self
            .core
            .store()
            .commit_durable(move |txn| {
                let (key, mut request) = pending_request_take(txn, subject, &request_id, vclock.now_secs())?;
                request.status = RequestStatus::Denied;
                request.reason = reason;
                txn.put(key, encode(&request, "request")?);
                let mut event = AuditEvent::new(EventKind::AccessRequestDenied, Actor::customer(subject), &time)
                    .subject(subject)
                    .related(Related::RequestId, &request_id);
                event.business = Some(request.business_id.to_string());
                let appended = log.append(txn, &event)?;
                Ok::<_, ConsentError>((request, appended))
            })
            .await?;
        self.core.audit().confirm(appended, &durable)?;
        Ok(request)
    }
}

impl Consent {
    /// Closes every pending request whose time ran out by now: stored status
    /// `expired` and an `access_request.closed` event with `cause: expired`
    /// (actor the vault), so the business sees the end in the request's
    /// stored status and the log records when it was closed. Requests
    /// already read as expired at their edge; this makes the end a fact.
    /// Returns how many requests it closed.
    pub async fn requests_expire(&self) -> Result<usize, ConsentError> {
        let now = self.core.clock().now_secs();
        let time = self.core.clock().rfc3339();
        let start = Key::request_expiries_all();
        let end = Key::request_expiry(now.saturating_add(1), &[0u8; 16], "");
        let log = self.core.audit().clone();
        let count = self
            .expiries_sweep(start, end, move |txn, subject, request_id| {
                let request_key = Key::request(subject.as_bytes(), &request_id);
                let Some(bytes) = txn.get(&request_key)? else { return Ok(None) };
                let mut request: AccessRequest = decode(&bytes, "request")?;
                // Answered (or closed by an erasure) in the meantime.
                if request.status != RequestStatus::Pending || request.expires_at > now {
                    return Ok(None);
                }
                request.status = RequestStatus::Expired;
                txn.put(request_key, encode(&request, "request")?);
                let mut event = AuditEvent::new(EventKind::AccessRequestClosed, Actor::system(), &time)
                    .subject(subject)
                    .related(Related::RequestId, &request.request_id)
                    .related(Related::Cause, "expired");
                event.business = Some(request.business_id.to_string());
                Ok(Some(log.append(txn, &event)?))
            })
            .await?;
        if count > 0 {
            tracing::info!(count, "access requests expired");
        }
        Ok(count)
    }
}

/// The answer to a pending request starts here, in its transaction: the
/// customer acts (recorded as activity), the request is read and must still
/// be pending, and its expiry marker goes (the sweep has nothing left to
/// close). Returns the request's key and the request.
fn pending_request_take(
    txn: &mut Txn<'_>,
    subject: SubjectId,
    request_id: &RequestId,
    now: i64,
) -> Result<(Key, AccessRequest), ConsentError> {
    customer_acts_in(txn, subject, now)?;
    let key = Key::request(subject.as_bytes(), request_id);
    let request: AccessRequest = decode(&txn.get(&key)?.ok_or(ConsentError::NotFound("request"))?, "request")?;
    if request.status_at(now) != RequestStatus::Pending {
        return Err(ConsentError::Invalid("the request is no longer pending".to_owned()));
    }
    txn.delete(&Key::request_expiry(request.expires_at, subject.as_bytes(), request_id));
    Ok((key, request))
}

/// Whether `subject` takes `request` from its business, as `txn` sees her:
/// not blocked, no purpose she objects to, and fewer than `pending_max` of
/// its requests waiting for her answer.
fn requests_taken_in(
    txn: &Txn<'_>,
    subject: SubjectId,
    request: &AccessRequest,
    pending_max: u32,
) -> Result<(), ConsentError> {
    let relationship = txn
        .get(&Key::relationship(subject.as_bytes(), &request.business_id))?
        .ok_or(ConsentError::NotFound("customer"))?;
    if decode::<Relationship>(&relationship, "relationship")?.requests_blocked {
        return Err(RequestRefused::Blocked.into());
    }
    let objections = objections_in(txn, subject)?;
    if let Some(purpose) = request.purposes.iter().find(|purpose| objections.contains(purpose)) {
        return Err(RequestRefused::Objected(purpose.clone()).into());
    }
    let mut pending = 0u32;
    for (_, bytes) in txn.scan_prefix(&Key::requests_of(subject.as_bytes()))? {
        let waiting: AccessRequest = decode(&bytes, "request")?;
        if waiting.business_id == request.business_id && waiting.status_at(request.created_at) == RequestStatus::Pending
        {
            pending += 1;
        }
    }
    if pending >= pending_max {
        return Err(RequestRefused::TooManyPending { max: pending_max }.into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    const NAMES: [&str; 5] = ["email", "phone", "marketing", "order-fulfilment", "country"];

    fn names() -> impl Strategy<Value = Vec<String>> {
        prop::sample::subsequence(NAMES.to_vec(), 0..=5).prop_map(|v| v.into_iter().map(str::to_owned).collect())
    }

    proptest! {
        #[test]
        fn an_approval_never_widens_the_request(
            asked_purposes in names(), asked_fields in names(), asked_days in 1u32..400,
            purposes in prop::option::of(names()), fields in prop::option::of(names()), days in prop::option::of(0u32..500),
        ) {
            let request = AccessRequest {
                request_id: "0000000000000000000000000000000a".parse().unwrap(),
                business_id: "0000000000000000000000000000000b".parse().unwrap(),
                pairwise_id: "0000000000000000000000000000000c".parse().unwrap(),
                purposes: asked_purposes.clone(),
                fields: asked_fields.clone(),
                duration_days: asked_days,
                justification: "j".to_owned(),
                benefit: None,
                status: RequestStatus::Pending,
                created_at: 0,
                expires_at: 1,
                reason: None,
                grant_id: None,
            };
            if let Ok((granted_purposes, granted_fields, granted_days)) =
                narrowed(&request, Narrowing { purposes, fields, duration_days: days })
            {
                prop_assert!(granted_purposes.iter().all(|p| asked_purposes.contains(p)));
                prop_assert!(granted_fields.iter().all(|f| asked_fields.contains(f)));
                prop_assert!(granted_days <= asked_days);
            }
        }
    }
}
