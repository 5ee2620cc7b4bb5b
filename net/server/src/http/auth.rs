//! Who is asking, and may they: the principal of an HTTP request and the
//! audit ACL check.
//!
//! A request with `Authorization: Bearer sluice-token.ID.SECRET` is the
//! token's owner (`User:NAME`), if the token's record exists, is not
//! revoked and verifies the secret; else a request over HTTPS with a
//! client certificate is the certificate's principal; a request without
//! credentials is `Anonymous`. Anything else is refused with 401. The principal then
//! passes if it is one of the node's superusers, or if the replicated
//! rules allow the operation on the audit trail; otherwise 403.

use axum::Json;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use sluice_model::security::{Access, Denied, Operation, Principal, Resource, Token};

use super::HttpState;

/// The principal a connection's verified client certificate names (a
/// request extension on HTTPS connections that presented one).
#[derive(Debug, Clone)]
pub(crate) struct CertificatePrincipal(pub(crate) Principal);

/// A refused request: 401 or 403, with a JSON body.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// No principal could be established from the credentials given.
    Unauthenticated {
        operation: Operation,
        reason: String,
    },
    /// The principal may not do this.
    Forbidden(Denied),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Unauthenticated { operation, reason } => {
                let body = json!({
                    "error": "unauthenticated",
                    "principal": null,
                    "operation": operation.name(),
                    "resource": Resource::Audit.to_string(),
                    "reason": reason,
                });
                let mut response = (StatusCode::UNAUTHORIZED, Json(body)).into_response();
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"sluice\""),
                );
                response
            }
            Refusal::Forbidden(denied) => {
                let body = json!({
                    "error": "forbidden",
                    "principal": denied.principal,
                    "operation": denied.operation,
                    "resource": denied.resource,
                    "reason": denied.reason,
                });
                (StatusCode::FORBIDDEN, Json(body)).into_response()
            }
        }
    }
}

/// The principal of a request, authorized for `operation` on the audit
/// trail.
pub(crate) fn authorize(
    state: &HttpState,
    certificate: Option<CertificatePrincipal>,
    headers: &HeaderMap,
    operation: Operation,
) -> Result<Principal, Refusal> {
    let principal = principal(state, certificate, headers)
        .map_err(|reason| Refusal::Unauthenticated { operation, reason })?;
    if state.superusers.contains(&principal) {
        return Ok(principal);
    }
    let access = Access {
        operation,
        resource: Resource::Audit,
    };
    state
        .bus
        .state()
        .security()
        .check(&principal, access)
        .map_err(Refusal::Forbidden)?;
    Ok(principal)
}

/// Who the request's credentials name; why not, if they name nobody.
fn principal(
    state: &HttpState,
    certificate: Option<CertificatePrincipal>,
    headers: &HeaderMap,
) -> Result<Principal, String> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(certificate.map_or(Principal::Anonymous, |CertificatePrincipal(p)| p));
    };
    let value = value
        .to_str()
        .map_err(|_| "the Authorization header is not ASCII".to_owned())?;
    let Some(text) = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
    else {
        return Err("the Authorization header is not `Bearer sluice-token.…`".to_owned());
    };
    let token = Token::parse(text).map_err(|error| error.to_string())?;
    let state = state.bus.state();
    let record = state.security().token(token.id()).ok_or_else(|| {
        format!(
            "token {} does not exist or was revoked; ask an administrator for a new one",
            token.id()
        )
    })?;
    if !record.verifies(&token) {
        return Err(format!(
            "token {}: the secret does not match; check the token",
            token.id()
        ));
    }
    Ok(Principal::user(&record.principal))
}
