//! The command line as a user meets it. (Being an integration test of this package, it also makes
//! `cargo test --workspace` build the `mirror-agent` binary that the end-to-end tests run.)

use std::process::Command;

fn agent(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mirror-agent")).args(args).output().expect("run mirror-agent")
}

#[test]
fn help_names_the_commands_and_keeps_dash_h_for_the_host() {
    let out = agent(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("server") && text.contains("client"), "{text}");
    let out = agent(&["client", "--help"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("-h, --host <HOST>"), "{text}");
    assert!(text.contains("-l, --local <LOCAL>") && text.contains("-r, --remote <REMOTE>"), "{text}");
    assert!(text.contains("[default: 49172]"), "{text}");
}

#[test]
fn missing_arguments_and_unknown_watchers_are_clear_errors() {
    let out = agent(&["client", "-l", "/tmp/x", "--insecure"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--host"));
    let out = agent(&["server", "--watcher", "fanotify", "--insecure", "--listen", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"fanotify\" is not available") && err.contains("inotify"), "{err}");
}

/// Regression (issue 11, item 16): `--insecure` on a non-loopback address only warned.
#[test]
fn insecure_off_loopback_is_refused_and_names_the_flag() {
    let state = tempfile::tempdir().unwrap();
    let st = state.path().to_str().unwrap();
    let out = agent(&["server", "--insecure", "--listen", "0.0.0.0:0", "--root", st, "--state-dir", st]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("loopback") && err.contains("--insecure-any-address"), "{err}");
    // Said once (issue 11, item 17: CLI errors were printed twice).
    assert_eq!(err.matches("--insecure-any-address").count(), 1, "{err}");
    let local = state.path().join("l");
    let out = agent(&[
        "client",
        "-h",
        "192.0.2.1",
        "-l",
        local.to_str().unwrap(),
        "-r",
        "x",
        "--insecure",
        "--state-dir",
        st,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("-h 192.0.2.1") && err.contains("--insecure-any-address"), "{err}");
}
