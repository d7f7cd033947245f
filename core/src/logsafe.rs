//! Peer-controlled text, made safe to log.
//!
//! A peer picks its host name and the reasons it gives (`Goodbye`, `DataAbort`). Logged raw, a
//! newline starts a record the peer wrote (under journald, `\n<0>...` even sets its priority),
//! and an escape sequence can rewrite a terminal. So every peer string is escaped where it
//! enters: control characters (C0, DEL, C1) and the Unicode line and paragraph separators are
//! written as Rust escapes (`\n`, `\u{1b}`); everything else is kept as it is.

use std::fmt;

/// `s`, displayed with its control characters escaped.
pub fn shown(s: &str) -> Shown<'_> {
    Shown(s)
}

/// `s` with its control characters escaped, for a peer string kept and logged later.
pub fn clean(s: &str) -> String {
    if s.chars().any(needs_escape) { shown(s).to_string() } else { s.to_owned() }
}

/// See [`shown`].
#[derive(Debug, Clone, Copy)]
pub struct Shown<'a>(&'a str);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for ch in self.0.chars() {
            if needs_escape(ch) {
                write!(f, "{}", ch.escape_default())?;
            } else {
                write!(f, "{ch}")?;
            }
        }
        Ok(())
    }
}

fn needs_escape(ch: char) -> bool {
    ch.is_control() || matches!(ch, '\u{2028}' | '\u{2029}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(clean("x\n<0>FORGED"), "x\\n<0>FORGED");
        assert_eq!(clean("a\rb\tc\u{1b}[2Jd\u{7f}e\u{85}f\u{2028}g"), "a\\rb\\tc\\u{1b}[2Jd\\u{7f}e\\u{85}f\\u{2028}g");
        assert_eq!(clean("laptop-\u{e9}t\u{e9} \"q\" \\"), "laptop-\u{e9}t\u{e9} \"q\" \\");
        assert_eq!(shown("a\0b").to_string(), "a\\u{0}b");
        assert!(!clean("\n\r\u{0}\u{1f}\u{7f}\u{9f}").chars().any(char::is_control));
    }
}
