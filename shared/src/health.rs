//! The liveness endpoint of an exporter or importer (`exporter.health_listen`,
//! `importer.health_listen`), for a cluster's probes: `GET /healthz` answers `200 ok`
//! while the process's runtime serves requests; anything else is 404. It is served on
//! the same runtime as the service's work, so a runtime that stopped making progress
//! fails the probe.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::shutdown::Shutdown;

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {listen} (setting \"{setting}\"): choose a free address")]
pub struct BindError {
    /// The setting that named the address.
    pub setting: &'static str,
    /// The address.
    pub listen: String,
    /// Why.
    #[source]
    pub source: io::Error,
}

/// Binds `listen` and serves `/healthz` until `shutdown` fires. Binding happens before
/// this returns, so a taken address is reported at start.
pub async fn serve(
    setting: &'static str,
    listen: &str,
    mut shutdown: Shutdown,
) -> Result<tokio::task::JoinHandle<()>, BindError> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| BindError {
            setting,
            listen: listen.to_owned(),
            source,
        })?;
    tracing::info!(%listen, "health endpoint serving /healthz");
    Ok(tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                accepted = listener.accept() => {
                    if let Ok((stream, _)) = accepted {
                        tokio::spawn(answer(stream));
                    }
                }
            }
        }
    }))
}

/// [`serve`] when `listen` is set.
pub async fn serve_if_set(
    setting: &'static str,
    listen: Option<&str>,
    shutdown: Shutdown,
) -> Result<Option<tokio::task::JoinHandle<()>>, BindError> {
    match listen {
        Some(listen) => serve(setting, listen, shutdown).await.map(Some),
        None => Ok(None),
    }
}

/// Reads one request head (up to 8 KiB, 5 s) and answers it.
async fn answer(mut stream: TcpStream) {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        true
    })
    .await;
    if read != Ok(true) {
        return;
    }
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, body) = match (method, path) {
        ("GET" | "HEAD", "/healthz") => ("200 OK", "ok\n"),
        _ => (
            "404 Not Found",
            "not found: this endpoint serves GET /healthz\n",
        ),
    };
    let body = if method == "HEAD" { "" } else { body };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    async fn get(addr: std::net::SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.ok();
        let mut out = String::new();
        s.read_to_string(&mut out).await.ok();
        out
    }

    #[tokio::test]
    async fn answers_healthz_and_nothing_else_and_stops_on_shutdown() {
        let (trigger, shutdown) = crate::shutdown::channel();
        // Port 0: the test asks the kernel; read the port back through a probe bind.
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let task = serve("importer.health_listen", &addr.to_string(), shutdown)
            .await
            .unwrap();
        let ok = get(addr, "GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK"), "{ok}");
        assert!(ok.ends_with("\r\n\r\nok\n"), "{ok}");
        let missing = get(addr, "GET /metrics HTTP/1.1\r\n\r\n").await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");

        // A second endpoint on the same address is refused with the setting's name.
        let (_t2, s2) = crate::shutdown::channel();
        let err = serve("importer.health_listen", &addr.to_string(), s2)
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("(setting \"importer.health_listen\")"),
            "{err}"
        );

        trigger.trigger();
        tokio::time::timeout(std::time::Duration::from_secs(5), task)
            .await
            .ok();
        assert!(TcpStream::connect(addr).await.is_err(), "still listening");
    }
}
