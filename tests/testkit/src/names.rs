//! Fresh names and ports, so that tests running in parallel never share state.

use rand::Rng;

const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// `prefix` + `'_'` + 10 random characters from `[a-z0-9]`.
///
/// With a prefix of lowercase letters, digits and `_` the result is a valid unquoted
/// PostgreSQL identifier, Kafka topic part, consumer group and migration id.
pub fn unique_name(prefix: &str) -> String {
    let mut rng = rand::rng();
    let mut name = String::with_capacity(prefix.len() + 11);
    name.push_str(prefix);
    name.push('_');
    for _ in 0..10 {
        let i = rng.random_range(0..ALPHABET.len());
        name.push(char::from(ALPHABET[i]));
    }
    name
}

/// A free TCP port on 127.0.0.1: binds port 0, reads the port the kernel chose, closes.
///
/// Another process may take the port before the caller binds it; tests that need a
/// port for a server they start should bind soon after.
#[allow(clippy::panic)] // a machine without a free loopback port cannot run any test
pub fn free_port() -> u16 {
    match std::net::TcpListener::bind(("127.0.0.1", 0)).and_then(|l| l.local_addr()) {
        Ok(addr) => addr.port(),
        Err(e) => panic!("cannot bind a free port on 127.0.0.1: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_have_the_promised_shape() {
        let a = unique_name("t");
        let b = unique_name("t");
        assert_ne!(a, b);
        assert_eq!(a.len(), 12);
        assert!(a.starts_with("t_"));
        assert!(a[2..]
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
    }

    #[test]
    fn free_port_is_bindable() {
        let p = free_port();
        assert!(p > 0);
        assert!(std::net::TcpListener::bind(("127.0.0.1", p)).is_ok());
    }
}
