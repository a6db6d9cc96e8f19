//! Who may use the coordinator's HTTP API (DESIGN.md §10; docs/architecture.md,
//! "Coordinator access").
//!
//! One middleware sits in front of every route, the built-in registry's included, and
//! decides before any handler runs, so a refused request changes nothing:
//!
//! - `/healthz` is always open (container and load-balancer probes);
//! - `GET` and `HEAD` read: open when `coordinator.public_read` is set, else they need
//!   the token;
//! - every other method needs the token: `POST /api/cutover`, `POST /api/end`, and the
//!   registry's `POST`/`PUT`/`DELETE`. The rule goes by method alone, so the registry's
//!   lookups and compatibility checks (POSTs that change nothing) need it too: one rule
//!   that can be read off a request is easier to trust than a list of exceptions.
//!
//! The token comes as `Authorization: Bearer <token>`, or as HTTP basic auth with the
//! token as password and any user name (Confluent registry clients and browsers speak
//! basic auth). Tokens are compared in constant time: both sides are hashed with SHA-256
//! and the digests compared with OpenSSL's `CRYPTO_memcmp`, so neither the position of
//! the first wrong byte nor the token's length shows in the answer's timing.
//!
//! A refusal is `401` with `WWW-Authenticate` (Bearer and Basic) and a JSON body that
//! says what to do, readable by the CLI (`error`) and by registry clients
//! (`error_code`, `message`).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use ferry_shared::config::Secret;

/// The realm named in `WWW-Authenticate`.
const REALM: &str = "ferry-coordinator";

/// What the 401 answer tells the caller.
pub const UNAUTHORIZED_MESSAGE: &str = "missing or wrong coordinator token: pass it as \
    \"Authorization: Bearer <token>\" (or as the password of HTTP basic auth); ferry and its \
    services read it from coordinator.token (FERRY_COORDINATOR__TOKEN), coordinator.token_file \
    or ./ferry-coordinator.token, and the coordinator logs the path of the file it uses";

/// The token the coordinator requires, and whether reads are open.
pub struct Access {
    /// SHA-256 of the token: what requests are compared against.
    digest: [u8; 32],
    public_read: bool,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("public_read", &self.public_read)
            .finish_non_exhaustive()
    }
}

impl Access {
    /// Requires `token` (without surrounding whitespace, which no header keeps);
    /// `public_read` opens `GET` and `HEAD`.
    pub fn new(token: &Secret, public_read: bool) -> Access {
        Access {
            digest: openssl::sha::sha256(token.expose().trim().as_bytes()),
            public_read,
        }
    }

    /// True when an `Authorization` header carries the token.
    fn authorizes(&self, headers: &HeaderMap) -> bool {
        headers
            .get_all(header::AUTHORIZATION)
            .iter()
            .filter_map(presented_token)
            .any(|presented| self.matches(&presented))
    }

    fn matches(&self, presented: &[u8]) -> bool {
        let digest = openssl::sha::sha256(presented);
        openssl::memcmp::eq(&digest, &self.digest)
    }

    /// True when `method` on `path` may go through without the token.
    fn open(&self, method: &Method, path: &str) -> bool {
        path == "/healthz"
            || (self.public_read && (method == Method::GET || method == Method::HEAD))
    }
}

/// `router` with every route behind `access`.
pub fn protect(router: Router, access: Arc<Access>) -> Router {
    router.layer(axum::middleware::from_fn_with_state(access, check))
}

async fn check(State(access): State<Arc<Access>>, request: Request, next: Next) -> Response {
    if access.open(request.method(), request.uri().path()) || access.authorizes(request.headers()) {
        return next.run(request).await;
    }
    tracing::warn!(
        method = %request.method(),
        path = %request.uri().path(),
        "refused a request without the coordinator token"
    );
    unauthorized()
}

/// The token in `Bearer <token>` or `Basic base64(<user>:<token>)`.
fn presented_token(value: &HeaderValue) -> Option<Vec<u8>> {
    let text = value.to_str().ok()?.trim();
    let (scheme, credentials) = text.split_once(' ')?;
    let credentials = credentials.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(credentials.as_bytes().to_vec());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = openssl::base64::decode_block(credentials).ok()?;
        let colon = decoded.iter().position(|b| *b == b':')?;
        return Some(decoded[colon + 1..].to_vec());
    }
    None
}

fn unauthorized() -> Response {
    let body = serde_json::json!({
        "error": UNAUTHORIZED_MESSAGE,
        "error_code": 40101,
        "message": UNAUTHORIZED_MESSAGE,
    });
    let mut response = (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
    let headers = response.headers_mut();
    for challenge in [
        format!("Bearer realm=\"{REALM}\""),
        format!("Basic realm=\"{REALM}\", charset=\"UTF-8\""),
    ] {
        if let Ok(value) = HeaderValue::from_str(&challenge) {
            headers.append(header::WWW_AUTHENTICATE, value);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn the_token_is_taken_from_bearer_or_basic_auth_and_nothing_else() {
        let access = Access::new(&Secret::new("t0ken:with-colon"), false);
        assert!(access.authorizes(&headers("Bearer t0ken:with-colon")));
        assert!(access.authorizes(&headers("bearer  t0ken:with-colon ")));
        let basic = openssl::base64::encode_block(b"anyone:t0ken:with-colon");
        assert!(access.authorizes(&headers(&format!("Basic {basic}"))));
        assert!(!access.authorizes(&headers("Bearer t0ken")));
        assert!(!access.authorizes(&headers("Bearer t0ken:with-colonX")));
        assert!(!access.authorizes(&headers("Bearer ")));
        assert!(!access.authorizes(&headers("t0ken:with-colon")));
        let no_colon = openssl::base64::encode_block(b"t0ken:with-colon");
        assert!(!access.authorizes(&headers(&format!("Basic {no_colon}"))));
        assert!(!access.authorizes(&headers("Basic !!!")));
        assert!(!access.authorizes(&HeaderMap::new()));
    }

    #[test]
    fn only_healthz_is_open_unless_reads_are_public() {
        let closed = Access::new(&Secret::new("x"), false);
        assert!(closed.open(&Method::GET, "/healthz"));
        assert!(!closed.open(&Method::GET, "/api/status"));
        assert!(!closed.open(&Method::POST, "/api/cutover"));
        let public = Access::new(&Secret::new("x"), true);
        assert!(public.open(&Method::GET, "/api/status"));
        assert!(public.open(&Method::HEAD, "/metrics"));
        assert!(!public.open(&Method::POST, "/api/end"));
        assert!(!public.open(&Method::PUT, "/config"));
        assert!(!public.open(&Method::DELETE, "/subjects/s"));
    }

    #[test]
    fn debug_shows_no_token_digest() {
        let text = format!("{:?}", Access::new(&Secret::new("x"), true));
        assert_eq!(text, "Access { public_read: true, .. }");
    }
}
