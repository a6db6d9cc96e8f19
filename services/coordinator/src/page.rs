//! The status page for people (`GET /status`): one static HTML document (`page.html`,
//! compiled in) whose script fetches `GET /api/status` every 2 s and redraws in place,
//! without reloading. It shows per table and destination the snapshot's progress,
//! events exported and applied and what remains, rates over 3 and 10 minutes, the ETA,
//! each cutover's steps with their times, and every current error of an exporter or
//! importer instance ([`crate::positions::InstanceError`]).
//!
//! Everything is served from here: no script, style sheet, font or image from anywhere
//! else (the page works where the coordinator runs on a closed network). A coordinator
//! that asks for a token for reads gets it from the page: passed once as
//! `/status?token=…` (then taken out of the address) or pasted when the API answers
//! 401, kept in the tab's session storage and sent as `Authorization: Bearer`.

use axum::http::header;
use axum::response::IntoResponse;

/// The page, HTML with its style and script inline.
pub const PAGE: &str = include_str!("page.html");

/// `GET /status`. The document itself holds no data (the script asks the API), so it can
/// be served to anyone; `no-store` keeps an old copy from outliving an upgrade.
pub async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            // Only this origin's script, style and API; nothing else may load.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            ),
        ],
        PAGE,
    )
}

#[cfg(test)]
mod tests {
    use super::PAGE;

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        for needle in ["http://", "https://", "//cdn", "@import", "url("] {
            assert!(!PAGE.contains(needle), "{needle}");
        }
        assert!(PAGE.contains("\"api/status\""));
        assert!(PAGE.contains("<th scope=\"col\""));
    }
}
