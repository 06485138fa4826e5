//! Who may change the host: every mutation (any method but GET and HEAD) carries
//! `Authorization: Bearer <token>`; reads stay open.
//!
//! Owns the token check and its answers: no header → 401 with `WWW-Authenticate: Bearer`, a
//! wrong token → 403, no token configured → 403 saying how to turn mutations on. The token
//! itself never appears in a response or a log line.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest as _, Sha256};

use super::AdminState;
use super::error::ApiError;

/// True for methods that change something.
pub fn is_mutation(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD)
}

/// Why a mutation was not let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No token is configured: every mutation is refused.
    Off,
    /// No `Authorization: Bearer` header.
    Missing,
    /// A token that is not the configured one.
    Wrong,
}

impl Denied {
    fn into_error(self) -> ApiError {
        match self {
            Denied::Off => ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "mutations are off: no admin token is configured; set `admin.token` in the config or {} in the environment and restart",
                    super::TOKEN_ENV
                ),
            ),
            Denied::Missing => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "this request changes the host and needs `Authorization: Bearer <token>`",
            ),
            Denied::Wrong => ApiError::new(StatusCode::FORBIDDEN, "the bearer token is not valid"),
        }
    }
}

/// Checks the `Authorization` header value against the configured token.
pub fn check(expected: Option<&str>, authorization: Option<&str>) -> Result<(), Denied> {
    let expected = expected.ok_or(Denied::Off)?;
    let given = authorization
        .and_then(|value| {
            let (scheme, token) = value.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .ok_or(Denied::Missing)?;
    if same_token(expected, given) {
        Ok(())
    } else {
        Err(Denied::Wrong)
    }
}

/// Compares two tokens in constant time. Both are hashed first, so the loop always runs over
/// 32 bytes whatever the lengths, and it visits every byte instead of stopping at the first
/// difference: how long a refusal takes tells an attacker nothing about how much of a guess was
/// right. (A plain `==` returns at the first differing byte, which leaks the matching prefix.)
fn same_token(expected: &str, given: &str) -> bool {
    let (a, b) = (
        Sha256::digest(expected.as_bytes()),
        Sha256::digest(given.as_bytes()),
    );
    a.iter()
        .zip(b.iter())
        .fold(0u8, |diff, (x, y)| diff | (x ^ y))
        == 0
}

/// Lets reads through, and mutations that carry the token.
pub async fn require_token(
    State(state): State<Arc<AdminState>>,
    request: Request,
    next: Next,
) -> Response {
    if !is_mutation(request.method()) {
        return next.run(request).await;
    }
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let expected = state.token.as_ref().map(|t| t.expose());
    match check(expected, authorization) {
        Ok(()) => next.run(request).await,
        Err(denied) => {
            let mut response = denied.into_error().into_response();
            if denied == Denied::Missing {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer"),
                );
            }
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_decides() {
        assert_eq!(check(None, Some("Bearer x")), Err(Denied::Off));
        assert_eq!(check(Some("s3cret"), None), Err(Denied::Missing));
        assert_eq!(
            check(Some("s3cret"), Some("Basic s3cret")),
            Err(Denied::Missing)
        );
        assert_eq!(
            check(Some("s3cret"), Some("Bearer s3cre")),
            Err(Denied::Wrong)
        );
        assert_eq!(
            check(Some("s3cret"), Some("Bearer s3cret!")),
            Err(Denied::Wrong)
        );
        assert_eq!(check(Some("s3cret"), Some("Bearer s3cret")), Ok(()));
        assert_eq!(check(Some("s3cret"), Some("bearer  s3cret ")), Ok(()));
    }
}
