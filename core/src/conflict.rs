//! Conflict copy names: `NAME.conflict-HOST-YYYYMMDD-HHMMSS-TAG.EXT`.
//!
//! HOST is the host that wrote the losing version and the time is that version's mtime (UTC), for
//! people. TAG (four hex digits of a digest of the losing *content*) is for machines: the name
//! must be the same on every replica that secures a given loser, so that two copies of one loser
//! made independently meet as identical files, and it must differ between different losers, or
//! copies of two of them (hosts of the same name, the same second) would collide and conflict in
//! turn. The content, not the version vector: one content travels under several vectors (each
//! merge of a conflict it won makes a new one), and a digest of the vector kept one save of ten
//! racing writers under three names (issue 11, item 3).
//!
//! The name always fits the root's file system (`NAME_MAX`, at most 255 bytes): the stem is
//! shortened, never the tag, and never inside a UTF-8 character. A copy whose name does not fit
//! is no copy at all, and a lost version (issue 11 item 8).

use mirror_protocol::{Entry, Kind, RelPath, Timestamp, path::MAX_COMPONENT_LEN};
use time::OffsetDateTime;
use time::macros::format_description;

/// Where the losing version `loser` is kept, its name at most `max` bytes (the root's
/// [`name_limit`]).
pub fn conflict_path_of(loser: &Entry, max: usize) -> RelPath {
    let key = match &loser.kind {
        Kind::File { size, hash, mode } => postcard::to_stdvec(&(size, hash, mode)),
        Kind::Symlink { target } => postcard::to_stdvec(target),
        // Nothing is kept of these; the name only appears in the log.
        Kind::Directory | Kind::Deleted => postcard::to_stdvec(&loser.version),
    };
    let digest = blake3::hash(&key.unwrap_or_default());
    let tag = format!("{:02x}{:02x}", digest.as_bytes()[0], digest.as_bytes()[1]);
    conflict_path_within(&loser.path, &loser.origin, loser.mtime, &tag, max)
}

/// The conflict copy's path for `path`, its name at most `max` bytes (at least
/// [`MIN_NAME_MAX`]): the stem is shortened first, then the extension (or it is dropped), never
/// the conflict tag, and never in the middle of a UTF-8 character. A name that did not fit
/// would not be a shorter copy: it would be no copy at all, and the version would be lost
/// (issue 11 item 8).
pub fn conflict_path_within(path: &RelPath, host: &str, mtime: Timestamp, tag: &str, max: usize) -> RelPath {
    let name = path.file_name();
    let (stem, ext) = match name.iter().rposition(|b| *b == b'.') {
        Some(i) if i > 0 && i + 1 < name.len() => (&name[..i], &name[i..]),
        _ => (name, &b""[..]),
    };
    let host: String = host
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' { c } else { '_' })
        .take(64)
        .collect();
    let when = OffsetDateTime::from_unix_timestamp(mtime.secs)
        .ok()
        .and_then(|t| t.format(format_description!("[year][month][day]-[hour][minute][second]")).ok())
        .unwrap_or_else(|| "00000000-000000".into());
    let tag = format!(".conflict-{host}-{when}-{tag}");
    with_name(path, &fit(stem, tag.as_bytes(), ext, max))
}

/// `path` with a numeric suffix, for when the conflict name is taken by different content,
/// within `max` bytes: the suffix goes after the conflict tag (when there is one), before the
/// extension, and the part before the tag is shortened to make room.
pub fn numbered(path: &RelPath, n: u32, max: usize) -> RelPath {
    let name = path.file_name();
    let suffix = format!("-{n}");
    // A conflict name: the suffix right after its tag, before whatever extension it kept (the
    // host in the tag may hold dots: the last dot need not start the extension).
    if let Some(m) = find_last(name, b".conflict-")
        && let Some(end) = tag_end(&name[m..])
    {
        let mut middle = name[m..m + end].to_vec();
        middle.extend_from_slice(suffix.as_bytes());
        return with_name(path, &fit(&name[..m], &middle, &name[m + end..], max));
    }
    let (stem, ext) = match name.iter().rposition(|b| *b == b'.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, &b""[..]),
    };
    with_name(path, &fit(stem, suffix.as_bytes(), ext, max))
}

/// Where the tag `.conflict-HOST-YYYYMMDD-HHMMSS-TAG` that starts `s` ends: after its last
/// `-DDDDDDDD-DDDDDD-XXXX` (digits, hex tag) that the end of `s` or a dot follows.
fn tag_end(s: &[u8]) -> Option<usize> {
    const SHAPE: &[u8] = b"-DDDDDDDD-DDDDDD-XXXX";
    let matches = |w: &[u8]| {
        w.iter().zip(SHAPE).all(|(c, k)| match k {
            b'D' => c.is_ascii_digit(),
            b'X' => c.is_ascii_hexdigit(),
            k => c == k,
        })
    };
    (0..s.len().saturating_sub(SHAPE.len() - 1))
        .rev()
        .map(|j| j + SHAPE.len())
        .find(|&end| matches(&s[end - SHAPE.len()..end]) && (end == s.len() || s[end] == b'.'))
}

/// The shortest name length a file system may limit us to that still holds a conflict tag.
pub const MIN_NAME_MAX: usize = 128;

/// `stem` + `middle` + `ext` in at most `max` bytes: `middle` kept whole, `ext` shortened only
/// if `middle` and `ext` alone do not fit (dropped if only its dot would be left), `stem`
/// shortened with what is left.
fn fit(stem: &[u8], middle: &[u8], ext: &[u8], max: usize) -> Vec<u8> {
    let budget = max.clamp(MIN_NAME_MAX, MAX_COMPONENT_LEN).saturating_sub(middle.len());
    // An extension too long to fit beside the tag is no real extension: it is cut to half of the
    // room (its dot and its start), and the stem, the user's name for the file, gets the rest.
    let ext = if ext.len() + stem.len().min(1) <= budget { ext } else { truncate(ext, budget / 2) };
    let ext = if ext == b"." { &b""[..] } else { ext };
    let stem = truncate(stem, budget - ext.len());
    let mut out = Vec::with_capacity(stem.len() + middle.len() + ext.len());
    out.extend_from_slice(stem);
    out.extend_from_slice(middle);
    out.extend_from_slice(ext);
    out
}

/// The first `n` bytes of `b` at most, shortened further so as not to end inside a UTF-8
/// character (a continuation byte at the cut means the cut splits one).
fn truncate(b: &[u8], n: usize) -> &[u8] {
    if b.len() <= n {
        return b;
    }
    let mut end = n;
    while end > 0 && b[end] & 0xC0 == 0x80 {
        end -= 1;
    }
    &b[..end]
}

fn find_last(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).rposition(|w| w == needle)
}

fn with_name(path: &RelPath, name: &[u8]) -> RelPath {
    // Every part is a valid path component: the fallback only guards the impossible.
    match path.parent() {
        Some(p) => p.join(name).unwrap_or_else(|_| path.clone()),
        None => RelPath::new(name.to_vec()).unwrap_or_else(|_| path.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn different_losers_get_different_names_and_the_same_loser_the_same() {
        use mirror_protocol::VersionVector;
        let e = |replica| Entry {
            path: RelPath::new("f.txt").unwrap(),
            kind: Kind::Deleted,
            mtime: Timestamp { secs: 1_700_000_000, nanos: 0 },
            version: VersionVector::new().incremented(replica),
            origin: "vm".into(),
        };
        assert_eq!(conflict_path_of(&e(1), 255), conflict_path_of(&e(1), 255));
        assert_ne!(conflict_path_of(&e(1), 255), conflict_path_of(&e(2), 255));
        // A file's copy is named by its content: the same save under another version vector
        // (merged after winning a conflict elsewhere) is the same copy, another save is not.
        let file = |content: &[u8], replica| Entry {
            kind: Kind::File { size: content.len() as u64, hash: *blake3::hash(content).as_bytes(), mode: 0o644 },
            ..e(replica)
        };
        assert_eq!(conflict_path_of(&file(b"a", 1), 255), conflict_path_of(&file(b"a", 2), 255));
        assert_ne!(conflict_path_of(&file(b"a", 1), 255), conflict_path_of(&file(b"b", 1), 255));
    }

    #[test]
    fn names() {
        let t = Timestamp { secs: 1_700_000_000, nanos: 0 }; // 2023-11-14 22:13:20 UTC
        let rows = [
            ("a/report.txt", "laptop", "a/report.conflict-laptop-20231114-221320-ab12.txt"),
            ("Makefile", "desk", "Makefile.conflict-desk-20231114-221320-ab12"),
            (".bashrc", "h", ".bashrc.conflict-h-20231114-221320-ab12"),
            ("x.tar.gz", "my host/1", "x.tar.conflict-my_host_1-20231114-221320-ab12.gz"),
        ];
        for (p, host, want) in rows {
            assert_eq!(
                conflict_path_within(&RelPath::new(p).unwrap(), host, t, "ab12", 255),
                RelPath::new(want).unwrap(),
                "{p}"
            );
        }
        let long = "n".repeat(255);
        assert!(conflict_path_within(&RelPath::new(long).unwrap(), "h", t, "ab12", 255).file_name().len() <= 255);
        assert_eq!(
            numbered(&RelPath::new("d/a.conflict-x.txt").unwrap(), 2, 255),
            RelPath::new("d/a.conflict-x-2.txt").unwrap()
        );
    }

    /// Issue 11 item 8: every conflict-copy name fits the limit, keeps the tag, keeps the
    /// extension while the tag and extension fit, and never splits a UTF-8 character.
    #[test]
    fn long_names_are_shortened_to_fit() {
        let t = Timestamp { secs: 1_700_000_000, nanos: 0 };
        let tag = ".conflict-laptop-20231114-221320-ab12";
        let e3 = "\u{e9}\u{e9}\u{e9}"; // 6 bytes, 2 per character
        // (name, limit, the copy's name must end with, the copy's name length)
        let rows: Vec<(String, usize, String, usize)> = vec![
            // the report: 252 bytes, 255 allowed
            (format!("{}.txt", "n".repeat(248)), 255, format!("{tag}.txt"), 255),
            ("n".repeat(252), 255, tag.to_string(), 255),
            ("n".repeat(255), 255, tag.to_string(), 255),
            // a file system with a shorter NAME_MAX (eCryptfs: 143)
            (format!("{}.txt", "n".repeat(200)), 143, format!("{tag}.txt"), 143),
            // a short name is left alone, whatever the limit
            ("a.txt".into(), 143, format!("{tag}.txt"), 1 + tag.len() + 4),
            // an extension so long that the tag and it do not fit: cut to half the room left
            (format!("a.{}", "x".repeat(250)), 255, String::new(), 1 + tag.len() + 109),
            // multi-byte characters are never cut in half (an odd budget)
            (format!("{}.txt", e3.repeat(41)), 254, format!("{tag}.txt"), 253),
            (format!("a.{}", e3.repeat(41)), 254, String::new(), 1 + tag.len() + 107),
            // a limit above what any replica accepts is capped
            ("n".repeat(250), 4096, tag.to_string(), 255),
        ];
        for (name, max, end, len) in rows {
            let got = conflict_path_within(&RelPath::new(format!("d/{name}")).unwrap(), "laptop", t, "ab12", max);
            let got_name = got.file_name();
            let shown = String::from_utf8_lossy(got_name);
            assert!(got.as_bytes().starts_with(b"d/"), "{shown}");
            assert_eq!(got_name.len(), len, "{name} within {max}: {shown}");
            assert!(got_name.len() <= max, "{shown}");
            assert!(std::str::from_utf8(got_name).is_ok(), "{name}: split a character: {shown:?}");
            assert!(got_name.ends_with(end.as_bytes()), "{name}: {shown}");
            assert!(find_last(got_name, tag.as_bytes()).is_some(), "{name}: the tag is kept: {shown}");
            assert!(got_name.starts_with(&name.as_bytes()[..1]), "{shown}");
            // The long-extension rows keep the start of the extension.
            if name.starts_with("a.") {
                assert!(got_name.starts_with(b"a.conflict-") || got_name.starts_with(b".conflict-"), "{shown}");
                let tail = &got_name[find_last(got_name, tag.as_bytes()).unwrap() + tag.len()..];
                assert!(tail.starts_with(b".") && tail.len() > 1, "{shown}");
            }
            // Numbered variants (the name taken by other content) fit too, and differ.
            let mut seen = std::collections::HashSet::new();
            for n in [2, 9, 10, 4_000_000_000] {
                let num = numbered(&got, n, max);
                let num_name = num.file_name();
                let shown = String::from_utf8_lossy(num_name);
                assert!(num_name.len() <= max.min(255), "{shown}");
                assert!(std::str::from_utf8(num_name).is_ok(), "{shown:?}");
                assert!(find_last(num_name, format!("{tag}-{n}").as_bytes()).is_some(), "{shown}");
                assert_ne!(num, got);
                assert!(seen.insert(num));
            }
        }
        // The usual limit, 255 bytes, with the report's 252-byte name.
        let p = RelPath::new(format!("{}.txt", "n".repeat(248))).unwrap();
        let c = conflict_path_within(&p, "laptop", t, "ab12", 255);
        assert_eq!(c.file_name().len(), 255);
        assert_eq!(numbered(&c, 2, 255).file_name().len(), 255);
        assert!(numbered(&c, 2, 255).file_name().ends_with(format!("{tag}-2.txt").as_bytes()));
    }
}
