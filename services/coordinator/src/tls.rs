//! HTTPS for the coordinator when `coordinator.tls_cert` and `coordinator.tls_key` are
//! set: OpenSSL (already linked for PostgreSQL's TLS) through `tokio-openssl`.
//!
//! [`TlsListener`] is an `axum::serve` listener. Handshakes run in tasks of their own
//! (bounded by [`HANDSHAKE_TIMEOUT`]), so a client that connects and says nothing does
//! not hold up the others; a failed handshake (plain HTTP on the HTTPS port, a client
//! that does not trust the certificate) is logged at debug level and dropped.

use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use openssl::ssl::{Ssl, SslAcceptor, SslFiletype, SslMethod};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_openssl::SslStream;

/// How long a client has to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections whose handshake finished, waiting for the server to take them.
const READY: usize = 64;

/// The certificate or key cannot be used: a fact about a setting, with its fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// `coordinator.tls_cert` is not a readable PEM certificate (chain).
    #[error("cannot use coordinator.tls_cert {path} ({reason}): give a PEM file with the coordinator's certificate, followed by any intermediate certificates")]
    Cert {
        /// The file.
        path: String,
        /// OpenSSL's reason.
        reason: String,
    },
    /// `coordinator.tls_key` is not a readable PEM private key, or not the certificate's.
    #[error("cannot use coordinator.tls_key {path} ({reason}): give the PEM private key of the certificate in coordinator.tls_cert, unencrypted")]
    Key {
        /// The file.
        path: String,
        /// OpenSSL's reason.
        reason: String,
    },
    /// OpenSSL could not set up a server context.
    #[error("setting up TLS: {0}")]
    Setup(String),
}

/// A TLS server context from the PEM files `cert` (certificate chain) and `key`.
pub fn acceptor(cert: &str, key: &str) -> Result<SslAcceptor, TlsError> {
    let mut builder = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())
        .map_err(|e| TlsError::Setup(e.to_string()))?;
    builder
        .set_certificate_chain_file(cert)
        .map_err(|e| TlsError::Cert {
            path: cert.to_owned(),
            reason: reason(&e, cert),
        })?;
    builder
        .set_private_key_file(key, SslFiletype::PEM)
        .map_err(|e| TlsError::Key {
            path: key.to_owned(),
            reason: reason(&e, key),
        })?;
    builder.check_private_key().map_err(|_| TlsError::Key {
        path: key.to_owned(),
        reason: "it does not belong to the certificate".to_owned(),
    })?;
    Ok(builder.build())
}

/// OpenSSL's error stack, or "no such file" when that is the reason.
fn reason(e: &openssl::error::ErrorStack, path: &str) -> String {
    if !std::path::Path::new(path).exists() {
        return "no such file".to_owned();
    }
    e.to_string()
}

/// Accepts TCP connections and hands out the ones whose TLS handshake succeeded.
pub struct TlsListener {
    ready: mpsc::Receiver<(SslStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    /// Accepts and runs the handshakes; aborted (with its handshakes) on drop.
    accepting: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// Serves TLS with `acceptor` on the connections of `listener`.
    pub fn new(listener: TcpListener, acceptor: SslAcceptor) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(READY);
        let accepting = tokio::spawn(accept_loop(listener, acceptor, tx));
        Ok(TlsListener {
            ready,
            local,
            accepting,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: SslAcceptor,
    tx: mpsc::Sender<(SslStream<TcpStream>, SocketAddr)>,
) {
    let mut handshakes = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            () = tx.closed() => return,
            Some(_) = handshakes.join_next() => {}
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let (acceptor, tx) = (acceptor.clone(), tx.clone());
                    handshakes.spawn(async move {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&acceptor, tcp)).await {
                            Ok(Ok(stream)) => {
                                let _ = tx.send((stream, peer)).await;
                            }
                            Ok(Err(reason)) => {
                                tracing::debug!(%peer, %reason, "TLS handshake failed");
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                            }
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait, as axum's own
                    // listener does, instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

async fn handshake(acceptor: &SslAcceptor, tcp: TcpStream) -> Result<SslStream<TcpStream>, String> {
    let ssl = Ssl::new(acceptor.context()).map_err(|e| e.to_string())?;
    let mut stream = SslStream::new(ssl, tcp).map_err(|e| e.to_string())?;
    Pin::new(&mut stream)
        .accept()
        .await
        .map_err(|e| e.to_string())?;
    Ok(stream)
}

impl axum::serve::Listener for TlsListener {
    type Io = SslStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accept loop only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
