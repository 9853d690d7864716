//! What the command-line tools share: an error told once with its causes, the version
//! with the commit it was built from, and output that ends quietly when its reader
//! goes away.

use std::error::Error;
use std::io::Write;

/// `ledgerd`'s and `ledgerctl`'s version: the crate's, and the commit built from
/// (`unknown` outside a git checkout).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("LEDGER_COMMIT"),
    ")"
);

/// The commit this build comes from (`unknown` outside a git checkout).
pub const COMMIT: &str = env!("LEDGER_COMMIT");

/// `error` and its causes on one line, each cause once: many errors already repeat
/// their source in their own message, which `{:#}` would print again.
pub fn describe(error: &(dyn Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Writes `text` and a newline to standard output. A reader that went away (`| head`)
/// is no error: there is nobody left to tell.
pub fn print(text: &str) -> std::io::Result<()> {
    match writeln!(std::io::stdout().lock(), "{text}") {
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        result => result,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{path}: {source}")]
    struct Repeats {
        path: String,
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("starting the node")]
    struct Outer(#[source] Repeats);

    #[test]
    fn each_cause_is_told_once() {
        let error = Outer(Repeats {
            path: "/etc/ledger/genesis.toml".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
        assert_eq!(
            describe(&error),
            "starting the node: /etc/ledger/genesis.toml: entity not found"
        );
    }
}
