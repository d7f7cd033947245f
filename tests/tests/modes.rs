//! Permission bits travel with the file (issue 11, item 11): a `0600` file is never more readable
//! on the other side than where it was written, and a permission change is a change.
#![allow(clippy::unwrap_used)]

use mirror_tests::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn mode_of(p: &Path) -> Option<u32> {
    fs::symlink_metadata(p).ok().map(|m| m.permissions().mode() & 0o7777)
}

fn wait_mode(p: &Path, mode: u32) {
    wait_until(&format!("{} to have mode {mode:o}", p.display()), || (mode_of(p) == Some(mode)).then_some(()));
}

#[test]
fn permission_bits_are_carried_both_ways_and_a_chmod_is_a_change() {
    let area = Area::new();
    let (c, s) = (area.path("client"), area.path("server/p"));
    let server = Server::start(&area.server_root(), &[]);
    let _client = server.client("client", &c, "p", &[]);
    for (name, mode) in [("secret.env", 0o600), ("build.sh", 0o750), ("notes.txt", 0o644), ("shared.txt", 0o664)] {
        let p = c.join(name);
        write(&p, format!("{name} content"));
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    }
    for (name, mode) in [("secret.env", 0o600), ("build.sh", 0o750), ("notes.txt", 0o644), ("shared.txt", 0o664)] {
        wait_content(&s.join(name), format!("{name} content").as_bytes());
        wait_mode(&s.join(name), mode);
    }
    // A chmod alone, on either side, reaches the other.
    fs::set_permissions(s.join("secret.env"), fs::Permissions::from_mode(0o640)).unwrap();
    wait_mode(&c.join("secret.env"), 0o640);
    fs::set_permissions(c.join("notes.txt"), fs::Permissions::from_mode(0o400)).unwrap();
    wait_mode(&s.join("notes.txt"), 0o400);
    // Unreadable for a moment, then readable again: it ends readable everywhere, content intact.
    fs::set_permissions(c.join("build.sh"), fs::Permissions::from_mode(0o000)).unwrap();
    wait_mode(&s.join("build.sh"), 0o000);
    fs::set_permissions(c.join("build.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    wait_mode(&s.join("build.sh"), 0o755);
    wait_content(&s.join("build.sh"), b"build.sh content");
    wait_same(&c, &s);
}
