//! Waiting with a deadline instead of sleeping.

use std::future::Future;
use std::time::{Duration, Instant};

const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Polls `f` every 50 ms until it returns `Ok(Some(t))`, then returns `t`.
///
/// `Ok(None)` and `Err(_)` both mean "not yet" (a server may refuse connections while
/// starting); when `deadline` has passed the result is an error naming `what` and
/// carrying the last error `f` returned, if any. `f` is always called at least once.
pub async fn wait_until<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let start = Instant::now();
    let mut last_err: Option<anyhow::Error> = None;
    loop {
        match f().await {
            Ok(Some(t)) => return Ok(t),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if start.elapsed() >= deadline {
            let waited = format!("timed out after {deadline:?} waiting for {what}");
            return Err(match last_err {
                Some(e) => e.context(waited),
                None => anyhow::anyhow!(waited),
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Waits until something accepts TCP connections on `addr` (`host:port`), e.g. a
/// coordinator started by the test.
pub async fn wait_listening(addr: &str, deadline: Duration) -> anyhow::Result<()> {
    wait_until(
        &format!("something to listen on {addr}"),
        deadline,
        || async move { Ok(tokio::net::TcpStream::connect(addr).await.ok().map(|_| ())) },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_the_first_some() {
        let mut n = 0;
        let got = wait_until("n to reach 3", Duration::from_secs(5), || {
            n += 1;
            let v = n;
            async move { Ok((v >= 3).then_some(v)) }
        })
        .await
        .unwrap();
        assert_eq!(got, 3);
    }

    #[tokio::test]
    async fn names_what_it_waited_for_and_the_last_error() {
        let err = wait_until::<(), _, _>("the moon", Duration::from_millis(120), || async {
            Err(anyhow::anyhow!("still dark"))
        })
        .await
        .unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("the moon"), "{text}");
        assert!(text.contains("still dark"), "{text}");
    }
}
