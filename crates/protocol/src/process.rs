//! The one line a data-plane server prints on stdout once its listener is bound, so whoever
//! started it with port 0 (a test harness, a standalone gateway starting its entities) learns the
//! port it got, instead of guessing a free port and racing others for it.
//!
//! The line is `sluice-listening <name> <address>`, e.g. `sluice-listening serve 127.0.0.1:39127`.

use std::net::SocketAddr;

/// The first word of the line.
const PREFIX: &str = "sluice-listening";

/// The line announcing that listener `name` (`serve`, `capture`, `gateway`, `admin`) is bound to
/// `address`.
pub fn listening_line(name: &str, address: SocketAddr) -> String {
    format!("{PREFIX} {name} {address}")
}

/// The listener name and address a line announces, if it is such a line.
pub fn parse_listening_line(line: &str) -> Option<(&str, SocketAddr)> {
    let mut words = line.split_whitespace();
    if words.next()? != PREFIX {
        return None;
    }
    let name = words.next()?;
    let address = words.next()?.parse().ok()?;
    words.next().is_none().then_some((name, address))
}

/// Prints the line for `name` on stdout, flushed at once (stdout may be a pipe or a file).
pub fn announce(name: &str, address: SocketAddr) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", listening_line(name, address));
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_reads_back_and_anything_else_is_not_one() {
        let address: SocketAddr = "127.0.0.1:39127".parse().expect("address");
        let line = listening_line("serve", address);
        assert_eq!(line, "sluice-listening serve 127.0.0.1:39127");
        assert_eq!(parse_listening_line(&line), Some(("serve", address)));
        assert_eq!(parse_listening_line("READY iris curl …"), None);
        assert_eq!(parse_listening_line("sluice-listening serve nowhere"), None);
        assert_eq!(
            parse_listening_line("sluice-listening serve 127.0.0.1:1 x"),
            None
        );
    }
}
