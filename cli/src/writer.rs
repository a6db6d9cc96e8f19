//! A writer whose bytes reach the file on a thread of its own.
//!
//! `ferry replay --to-file` encodes batches on the runtime's worker threads and writes them
//! in order. A `write` to a file blocks while the kernel takes the bytes (page cache, a
//! disk under writeback) and a `write` to stdout blocks while the reader at the other end
//! of the pipe is slow: done on a worker, that held one of the two workers of a 2-core
//! machine, and the replay of 3M events ran on one core (docs/benchmarks.md). Here the
//! worker only hands the bytes over; a bounded queue keeps memory bounded when the file
//! takes less than the replay makes.

use std::io::{self, Write};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;

/// Writes waiting for the writing thread, at most (the replay writes a batch of lines at
/// a time, so a few MiB in all for usual rows).
const QUEUED: usize = 16;

enum Msg {
    Bytes(Vec<u8>),
    /// Write what came before, flush, and answer.
    Flush(mpsc::Sender<io::Result<()>>),
}

/// Writes on a thread of its own (module doc). [`Write::flush`] returns once every byte
/// written before it is in the inner writer and that writer is flushed; an error of the
/// inner writer is returned by the next `write` or `flush`.
pub struct ThreadWriter {
    tx: Option<SyncSender<Msg>>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl ThreadWriter {
    /// Starts the thread that writes into `inner`.
    pub fn spawn<W: Write + Send + 'static>(inner: W) -> io::Result<ThreadWriter> {
        let (tx, rx) = mpsc::sync_channel(QUEUED);
        let thread = std::thread::Builder::new()
            .name("ferry-writer".into())
            .spawn(move || write_loop(inner, &rx))?;
        Ok(ThreadWriter {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    fn send(&mut self, msg: Msg) -> io::Result<()> {
        let sent = match &self.tx {
            Some(tx) => tx.send(msg).is_ok(),
            None => false,
        };
        if sent {
            Ok(())
        } else {
            Err(self.failure())
        }
    }

    /// Why the thread stopped taking bytes (it stops only on an error).
    fn failure(&mut self) -> io::Error {
        self.tx = None;
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(Err(e))) => e,
            Some(Err(_)) => io::Error::other("the writing thread panicked"),
            Some(Ok(Ok(()))) | None => io::Error::other("the writing thread has stopped"),
        }
    }
}

/// The thread: writes what comes, in order, until the sender is gone or a write fails.
fn write_loop<W: Write>(mut inner: W, rx: &Receiver<Msg>) -> io::Result<()> {
    for msg in rx {
        match msg {
            Msg::Bytes(b) => inner.write_all(&b)?,
            Msg::Flush(ack) => {
                let flushed = inner.flush();
                let failed = flushed
                    .as_ref()
                    .err()
                    .map(|e| io::Error::new(e.kind(), e.to_string()));
                let _ = ack.send(flushed);
                if let Some(e) = failed {
                    return Err(e);
                }
            }
        }
    }
    inner.flush()
}

impl Write for ThreadWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !buf.is_empty() {
            self.send(Msg::Bytes(buf.to_vec()))?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let (ack, done) = mpsc::channel();
        self.send(Msg::Flush(ack))?;
        match done.recv() {
            Ok(result) => result,
            Err(_) => Err(self.failure()),
        }
    }
}

impl Drop for ThreadWriter {
    /// Waits for the thread to write what it holds (callers flush first to see errors).
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::sync::{Arc, Mutex};

    /// Keeps what is written where the test can see it; fails past `limit` bytes.
    #[derive(Clone)]
    struct Shared {
        bytes: Arc<Mutex<Vec<u8>>>,
        limit: usize,
    }

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let mut b = self.bytes.lock().unwrap();
            if b.len() + buf.len() > self.limit {
                return Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"));
            }
            b.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn everything_written_before_a_flush_is_in_the_file_in_order_when_it_returns() {
        let file = Shared {
            bytes: Arc::default(),
            limit: usize::MAX,
        };
        let mut w = ThreadWriter::spawn(file.clone()).unwrap();
        let mut expected = Vec::new();
        for i in 0..1000u32 {
            let line = format!("{i}\n");
            w.write_all(line.as_bytes()).unwrap();
            expected.extend_from_slice(line.as_bytes());
        }
        w.flush().unwrap();
        assert_eq!(*file.bytes.lock().unwrap(), expected);
        w.write_all(b"more").unwrap();
        drop(w);
        assert!(file.bytes.lock().unwrap().ends_with(b"999\nmore"));
    }

    #[test]
    fn the_inner_writers_error_comes_back() {
        let file = Shared {
            bytes: Arc::default(),
            limit: 10,
        };
        let mut w = ThreadWriter::spawn(file).unwrap();
        let mut err = None;
        for _ in 0..100 {
            if let Err(e) = w.write_all(b"0123456789").and_then(|()| w.flush()) {
                err = Some(e);
                break;
            }
        }
        let err = err.expect("a write past the limit fails");
        assert_eq!(err.kind(), io::ErrorKind::StorageFull, "{err}");
        // And keeps failing.
        assert!(w.write_all(b"x").and_then(|()| w.flush()).is_err());
    }
}
