//! The TCP stream under a replication session, read either as tokio reads it (every
//! arrival wakes the reader) or coalesced ([`ReadCoalescing`]). Ferry's change to
//! pgwire-replication 0.5.0; FERRY.md at the crate's root says why.
//!
//! Coalesced reading, step by step:
//! - the socket's `SO_RCVLOWAT` is the low-water mark, so the kernel signals it readable
//!   (and wakes the thread parked in `epoll_wait`) only once that many bytes wait, the
//!   receive buffer is under pressure, or the peer closed;
//! - a read clears tokio's readiness, then asks the socket directly, without waiting
//!   for readiness: whatever is there, however little, is returned at once;
//! - when nothing is there, tokio's readiness is awaited (an event after the clear
//!   stays set) and a timer of `period` is armed beside it; whichever comes first
//!   leads to the next direct read.
//!
//! An idle stream is therefore read every `period` (one empty `recv` and one wake-up
//! each), a small fixed cost against one wake-up per arriving message under load.
//!
//! So a busy stream is read in chunks of about the low-water mark, and a lone message
//! waits at most `period`.

use std::future::Future;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

use crate::config::ReadCoalescing;

/// A TCP stream, read coalesced when configured.
#[derive(Debug)]
pub struct Socket {
    tcp: TcpStream,
    coalescing: Option<Coalescing>,
}

#[derive(Debug)]
struct Coalescing {
    period: std::time::Duration,
    /// Armed once the socket was found empty; gone once a read returned bytes.
    tick: Option<Pin<Box<Sleep>>>,
}

impl Socket {
    /// Wraps `tcp`; with `coalescing`, sets its `SO_RCVLOWAT` (an error when the kernel
    /// refuses it).
    pub fn new(tcp: TcpStream, coalescing: Option<ReadCoalescing>) -> io::Result<Socket> {
        let coalescing = match coalescing {
            Some(c) => {
                set_rcvlowat(&tcp, c.low_water)?;
                Some(Coalescing {
                    period: c.period,
                    tick: None,
                })
            }
            None => None,
        };
        Ok(Socket { tcp, coalescing })
    }

    /// The TCP stream.
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }
}

/// `setsockopt(SOL_SOCKET, SO_RCVLOWAT)`: neither std, tokio nor socket2 has it.
fn set_rcvlowat(tcp: &TcpStream, bytes: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a low-water mark of {bytes} bytes is too large"),
        )
    })?;
    // SAFETY: the descriptor is the open socket `tcp` owns for the whole call, and the
    // option value is a live `c_int` whose size is passed with it.
    let rc = unsafe {
        libc::setsockopt(
            tcp.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// One non-blocking read of whatever the socket holds, past tokio's readiness (tokio
/// sets the descriptor non-blocking).
fn read_now(tcp: &TcpStream, buf: &mut ReadBuf<'_>) -> io::Result<()> {
    let socket = socket2::SockRef::from(tcp);
    let dst = buf.initialize_unfilled();
    loop {
        match (&*socket).read(dst) {
            Ok(n) => {
                buf.advance(n);
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(c) = this.coalescing.as_mut() else {
            return Pin::new(&mut this.tcp).poll_read(cx, buf);
        };
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            // Forget any readiness tokio saw (a closure answering WouldBlock clears it,
            // unless an event came since), then read: bytes that came before the clear
            // are read now, and an event after it leaves the readiness set for the
            // wait below, which the low-water mark holds back until enough bytes wait.
            let _ = this.tcp.try_io(Interest::READABLE, || {
                Err::<(), _>(io::ErrorKind::WouldBlock.into())
            });
            match read_now(&this.tcp, buf) {
                Ok(()) => {
                    c.tick = None;
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            match this.tcp.poll_read_ready(cx) {
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
            let period = c.period;
            let tick = c
                .tick
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(period)));
            match tick.as_mut().poll(cx) {
                // The period passed: read whatever waits below the mark.
                Poll::Ready(()) => c.tick = None,
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair(coalescing: Option<ReadCoalescing>) -> (Socket, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (
            Socket::new(client.unwrap(), coalescing).unwrap(),
            server.unwrap().0,
        )
    }

    /// A message far below the low-water mark still arrives, about `period` late at
    /// most; bytes above it arrive whole; the peer's close is seen.
    #[tokio::test]
    async fn coalesced_reads_return_small_writes_within_the_period() {
        let period = Duration::from_millis(20);
        let (mut socket, mut server) = pair(Some(ReadCoalescing {
            low_water: 64 * 1024,
            period,
        }))
        .await;
        for round in 0..3u8 {
            // The reader finds the socket empty and waits before the bytes come: the
            // low-water mark holds their wake-up back, the period's read takes them.
            let reader = tokio::spawn(async move {
                let mut got = [0u8; 10];
                let read =
                    tokio::time::timeout(Duration::from_secs(5), socket.read_exact(&mut got))
                        .await
                        .map(|r| r.map(|_| Instant::now()));
                (socket, got, read)
            });
            tokio::time::sleep(Duration::from_millis(50)).await;
            let written = Instant::now();
            server.write_all(&[round; 10]).await.unwrap();
            let (back, got, read) = reader.await.unwrap();
            socket = back;
            let read = read
                .expect("a small write is read within the period")
                .unwrap();
            assert_eq!(got, [round; 10]);
            assert!(read.duration_since(written) < Duration::from_secs(2));
        }
        let big = vec![7u8; 200 * 1024];
        let writer = tokio::spawn(async move {
            server.write_all(&big).await.unwrap();
            server.shutdown().await.unwrap();
        });
        let mut all = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), socket.read_to_end(&mut all))
            .await
            .expect("the stream and its end are read")
            .unwrap();
        writer.await.unwrap();
        assert_eq!(all.len(), 200 * 1024);
        assert!(all.iter().all(|b| *b == 7));
    }

    /// The low-water mark holds the kernel's wake-up back: 10 bytes waiting do not make
    /// the socket readable to tokio (they do without coalescing), yet they are read.
    #[tokio::test]
    async fn the_low_water_mark_holds_the_wake_up_back() {
        let coalescing = Some(ReadCoalescing {
            low_water: 64 * 1024,
            period: Duration::from_millis(20),
        });
        for (coalesced, mut pair) in [(false, pair(None).await), (true, pair(coalescing).await)] {
            pair.1.write_all(&[1; 10]).await.unwrap();
            let woke =
                tokio::time::timeout(Duration::from_millis(300), pair.0.tcp().readable()).await;
            assert_eq!(woke.is_ok(), !coalesced, "coalesced: {coalesced}");
            let mut got = [0u8; 10];
            pair.0.read_exact(&mut got).await.unwrap();
            assert_eq!(got, [1; 10]);
        }
    }

    /// Writes go through; without coalescing reads are tokio's own.
    #[tokio::test]
    async fn writes_and_plain_reads() {
        let (mut socket, mut server) = pair(None).await;
        socket.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        server.write_all(b"pong").await.unwrap();
        socket.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"pong");
    }
}
