//! Who is calling, and may they: the principal of a gRPC call and the
//! access check, the same as the native protocol's and the HTTP API's.
//!
//! A call with `authorization: Bearer sluice-token.ID.SECRET` metadata is
//! the token's owner (`User:NAME`) if the token's record exists, is not
//! revoked and verifies the secret; a call without it is `Anonymous`.
//! Anything else is refused with UNAUTHENTICATED. The principal passes
//! if it is one of the node's superusers, or if the replicated rules
//! allow every access the call needs; otherwise PERMISSION_DENIED. A
//! call is admitted as the native request it amounts to, through the
//! native protocol's map (`sluice_server::authorize`) and quotas.

use std::time::Instant;

use sluice_client::protocol::ClientRequest;
use sluice_model::security::{Principal, Security, Token};
use sluice_model::state::State;
use sluice_server::authorize::{self, Need};
use sluice_server::quota::Quotas;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};

/// The metadata key that carries the bearer token.
pub(crate) const AUTHORIZATION: &str = "authorization";

/// The principal the call's metadata names, checked against the token
/// records in `security`.
pub(crate) fn principal(security: &Security, metadata: &MetadataMap) -> Result<Principal, Status> {
    let Some(value) = metadata.get(AUTHORIZATION) else {
        return Ok(Principal::Anonymous);
    };
    let unauthenticated = |reason: String| Status::new(Code::Unauthenticated, reason);
    let value = value.to_str().map_err(|error| {
        unauthenticated(format!(
            "the authorization metadata is not ASCII ({error}); send `Bearer sluice-token.…`"
        ))
    })?;
    let Some(text) = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
    else {
        return Err(unauthenticated(
            "the authorization metadata is not `Bearer sluice-token.…`".to_owned(),
        ));
    };
    let token = Token::parse(text).map_err(|error| unauthenticated(error.to_string()))?;
    // One answer for unknown, revoked and wrong: a prober learns nothing
    // about which ids exist (as the native protocol answers).
    let refused = || {
        unauthenticated(
            "the token is unknown, revoked or wrong; ask an admin for a new one".to_owned(),
        )
    };
    let record = security.token(token.id()).ok_or_else(refused)?;
    if !record.verifies(&token) {
        return Err(refused());
    }
    Ok(Principal::user(&record.principal))
}

/// Trailing metadata of a RESOURCE_EXHAUSTED answer: how long to wait,
/// in milliseconds, before sending the call again.
pub(crate) const RETRY_AFTER_MS: &str = "retry-after-ms";

/// Lets `request` (the native request the call amounts to) of `size`
/// bytes by `principal` through, as the native protocol admits it:
/// RESOURCE_EXHAUSTED with a retry delay past the principal's quota,
/// then PERMISSION_DENIED unless it is a superuser or the rules allow
/// everything the request needs (`sluice_server::authorize`).
pub(crate) fn admit(
    state: &State,
    superusers: &[Principal],
    quotas: &Quotas,
    principal: &Principal,
    request: &ClientRequest,
    size: usize,
) -> Result<(), Status> {
    let security = state.security();
    if let Principal::User(name) = principal {
        let quota = security.quota(principal);
        if let Err(wait) = quotas.charge(name, quota, size, Instant::now()) {
            let millis = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
            let mut metadata = MetadataMap::new();
            metadata.insert(RETRY_AFTER_MS, MetadataValue::from(millis));
            return Err(Status::with_metadata(
                Code::ResourceExhausted,
                format!(
                    "{principal} is over its quota; send this call again in {millis} ms \
                     (trailing metadata {RETRY_AFTER_MS})"
                ),
                metadata,
            ));
        }
    }
    if superusers.contains(principal) {
        return Ok(());
    }
    authorize::check_needs(request, state, |need| match need {
        Need::Access(access) => security.check(principal, access),
        Need::ProducerName(name) => security
            .confine(principal, name)
            .map_err(|reason| authorize::producer_refusal(principal, name, reason)),
    })
    .map_err(|denied| Status::new(Code::PermissionDenied, denied.to_string()))
}

#[cfg(test)]
mod tests {
    use sluice_model::event::Event;
    use sluice_model::security::SecurityOp;
    use tonic::metadata::MetadataValue;

    use super::*;

    #[test]
    fn without_credentials_a_call_is_anonymous() {
        let security = Security::default();
        let principal = principal(&security, &MetadataMap::new()).expect("no credentials");
        assert_eq!(principal, Principal::Anonymous);
    }

    #[test]
    fn a_token_nobody_issued_is_unauthenticated() {
        let security = Security::default();
        let mut metadata = MetadataMap::new();
        let token = Token::new([7; 8], [9; 32]);
        let value = format!("Bearer {}", token.expose());
        metadata.insert(
            AUTHORIZATION,
            MetadataValue::try_from(value.as_str()).expect("ASCII"),
        );
        let status = principal(&security, &metadata).expect_err("unknown token");
        assert_eq!(status.code(), Code::Unauthenticated);
        metadata.insert(AUTHORIZATION, MetadataValue::from_static("Basic abc"));
        let status = principal(&security, &metadata).expect_err("not a bearer token");
        assert_eq!(status.code(), Code::Unauthenticated);
    }

    #[test]
    fn an_issued_token_names_its_owner() {
        let mut security = Security::default();
        let token = Token::new([1; 8], [2; 32]);
        let record = token.record("bob", [3; 16], 0).expect("a valid name");
        security
            .apply(&SecurityOp::CreateToken(record))
            .expect("the token is stored");
        let mut metadata = MetadataMap::new();
        let value = format!("Bearer {}", token.expose());
        metadata.insert(
            AUTHORIZATION,
            MetadataValue::try_from(value.as_str()).expect("ASCII"),
        );
        let principal = principal(&security, &metadata).expect("a known token");
        assert_eq!(principal, Principal::user("bob"));
        let wrong = Token::parse(&token.expose().replace(".0202", ".0303")).expect("well formed");
        let value = format!("Bearer {}", wrong.expose());
        metadata.insert(
            AUTHORIZATION,
            MetadataValue::try_from(value.as_str()).expect("ASCII"),
        );
        let status = principal_of(&security, &metadata);
        assert_eq!(status, Some(Code::Unauthenticated));
    }

    fn principal_of(security: &Security, metadata: &MetadataMap) -> Option<Code> {
        principal(security, metadata)
            .err()
            .map(|status| status.code())
    }

    fn publish(topic: &str) -> ClientRequest {
        ClientRequest::Publish(vec![Event {
            topic: topic.to_owned(),
            ..Event::default()
        }])
    }

    #[test]
    fn no_rule_denies_and_a_superuser_passes() {
        let state = State::new();
        let quotas = Quotas::default();
        let alice = Principal::user("alice");
        let status = admit(&state, &[], &quotas, &alice, &publish("orders"), 10)
            .expect_err("no rule allows alice");
        assert_eq!(status.code(), Code::PermissionDenied);
        assert!(status.message().contains("User:alice"), "{status:?}");
        admit(
            &state,
            std::slice::from_ref(&alice),
            &quotas,
            &alice,
            &publish("orders"),
            10,
        )
        .expect("a superuser passes");
        let status = admit(
            &state,
            &[alice],
            &quotas,
            &Principal::Anonymous,
            &publish("orders"),
            10,
        )
        .expect_err("Anonymous is no superuser here");
        assert_eq!(status.code(), Code::PermissionDenied);
        admit(
            &state,
            &[],
            &quotas,
            &Principal::Anonymous,
            &ClientRequest::Metadata,
            0,
        )
        .expect("metadata needs nothing");
    }
}
