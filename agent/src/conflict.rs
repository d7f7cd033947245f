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

use mirror_protocol::{Entry, Kind, RelPath, Timestamp};
use time::OffsetDateTime;
use time::macros::format_description;

/// Where the losing version `loser` is kept.
pub fn conflict_path_of(loser: &Entry) -> RelPath {
    let key = match &loser.kind {
        Kind::File { size, hash, executable } => postcard::to_stdvec(&(size, hash, executable)),
        Kind::Symlink { target } => postcard::to_stdvec(target),
        // Nothing is kept of these; the name only appears in the log.
        Kind::Directory | Kind::Deleted => postcard::to_stdvec(&loser.version),
    };
    let digest = blake3::hash(&key.unwrap_or_default());
    let tag = format!("{:02x}{:02x}", digest.as_bytes()[0], digest.as_bytes()[1]);
    conflict_path(&loser.path, &loser.origin, loser.mtime, &tag)
}

pub fn conflict_path(path: &RelPath, host: &str, mtime: Timestamp, tag: &str) -> RelPath {
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
    let keep = 255usize.saturating_sub(tag.len() + ext.len()).min(stem.len());
    let mut out = Vec::with_capacity(255);
    out.extend_from_slice(&stem[..keep]);
    out.extend_from_slice(tag.as_bytes());
    out.extend_from_slice(ext);
    let full = match path.parent() {
        Some(p) => {
            let mut v = p.as_bytes().to_vec();
            v.push(b'/');
            v.extend_from_slice(&out);
            v
        }
        None => out,
    };
    // Every part is a valid path component: the fallback only guards the impossible.
    RelPath::new(full).unwrap_or_else(|_| path.clone())
}

/// `path` with a numeric suffix before the extension, for when the conflict name is taken by
/// different content.
pub fn numbered(path: &RelPath, n: u32) -> RelPath {
    let name = path.file_name();
    let (stem, ext) = match name.iter().rposition(|b| *b == b'.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, &b""[..]),
    };
    let mut out = stem.to_vec();
    out.extend_from_slice(format!("-{n}").as_bytes());
    out.extend_from_slice(ext);
    match path.parent() {
        Some(p) => p.join(&out).unwrap_or_else(|_| path.clone()),
        None => RelPath::new(out).unwrap_or_else(|_| path.clone()),
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
        assert_eq!(conflict_path_of(&e(1)), conflict_path_of(&e(1)));
        assert_ne!(conflict_path_of(&e(1)), conflict_path_of(&e(2)));
        // A file's copy is named by its content: the same save under another version vector
        // (merged after winning a conflict elsewhere) is the same copy, another save is not.
        let file = |content: &[u8], replica| Entry {
            kind: Kind::File { size: content.len() as u64, hash: *blake3::hash(content).as_bytes(), executable: false },
            ..e(replica)
        };
        assert_eq!(conflict_path_of(&file(b"a", 1)), conflict_path_of(&file(b"a", 2)));
        assert_ne!(conflict_path_of(&file(b"a", 1)), conflict_path_of(&file(b"b", 1)));
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
            assert_eq!(conflict_path(&RelPath::new(p).unwrap(), host, t, "ab12"), RelPath::new(want).unwrap(), "{p}");
        }
        let long = "n".repeat(255);
        assert!(conflict_path(&RelPath::new(long).unwrap(), "h", t, "ab12").file_name().len() <= 255);
        assert_eq!(
            numbered(&RelPath::new("d/a.conflict-x.txt").unwrap(), 2),
            RelPath::new("d/a.conflict-x-2.txt").unwrap()
        );
    }
}
