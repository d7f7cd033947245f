//! `mirror-agent run` and its control commands, against a running agent: status, list, pause,
//! resume, add, remove, export, import; supervision; the systemd notification protocol.
#![allow(clippy::unwrap_used)]

use mirror_tests::*;
use std::fs;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// A free port on loopback (bound and released; the agent takes it a moment later).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Setup {
    area: Area,
    state: PathBuf,
    config: PathBuf,
    port: u16,
}

impl Setup {
    /// A config with a plaintext server on loopback and the pairs named, each syncing
    /// `area/NAME` with `server/NAME`.
    fn new(pairs: &[&str]) -> Setup {
        let area = Area::new();
        let port = free_port();
        let mut text = format!(
            "# written by the test\n[server]\nlisten = \"127.0.0.1:{port}\"\nroot = \"{}\"\ninsecure = true\n",
            area.server_root().display()
        );
        fs::create_dir_all(area.server_root()).unwrap();
        for p in pairs {
            text.push_str(&pair_toml(&area, p, port));
        }
        let config = area.path("config.toml");
        fs::write(&config, text).unwrap();
        let state = area.path("state");
        Setup { area, state, config, port }
    }

    fn start(&self) -> Agent {
        self.start_with(&[], &[])
    }

    /// [`Setup::start`] with extra arguments (the agent's hidden test flags) and environment.
    fn start_with(&self, args: &[&str], env: &[(&str, &str)]) -> Agent {
        let a = Agent::spawn_cmd(
            "agent",
            Command::new(bin())
                .args(["run", "--config", self.config.to_str().unwrap(), "--state-dir", self.state.to_str().unwrap()])
                .args(args)
                .envs(env.iter().copied()),
        );
        a.wait_log("control socket");
        a
    }

    /// Runs a control command; returns (exit code, stdout, stderr).
    fn ctl(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(bin()).args(args).args(["--state-dir", self.state.to_str().unwrap()]).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.ctl(args);
        assert_eq!(code, 0, "mirror-agent {args:?}: {err}");
        out
    }

    /// The JSON status of the pair `name`.
    fn status_of(&self, name: &str) -> serde_json::Value {
        let (_, out, err) = self.ctl(&["status", "--json"]);
        let all: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out} {err}"));
        all.into_iter().find(|r| r["name"] == name).unwrap_or(serde_json::Value::Null)
    }

    fn wait_state(&self, name: &str, state: &str) -> serde_json::Value {
        wait_until(&format!("{name} to be {state}"), || {
            let s = self.status_of(name);
            (s["state"] == state).then_some(s)
        })
    }

    fn local(&self, name: &str) -> PathBuf {
        self.area.path(name)
    }

    fn remote(&self, name: &str) -> PathBuf {
        self.area.path(&format!("server/{name}"))
    }
}

fn pair_toml(area: &Area, name: &str, port: u16) -> String {
    format!(
        "\n[[pair]]\nname = \"{name}\"\nlocal = \"{}\"\nhost = \"127.0.0.1\"\nport = {port}\nremote = \"{name}\"\ninsecure = true\n",
        area.path(name).display()
    )
}

#[test]
fn status_pause_resume_add_remove_export_import() {
    let s = Setup::new(&["one", "two"]);
    let _agent = s.start();
    write(&s.local("one").join("a.txt"), "one");
    write(&s.local("two").join("b.txt"), "two");
    wait_content(&s.remote("one").join("a.txt"), b"one");
    wait_content(&s.remote("two").join("b.txt"), b"two");
    // The file is on the server a moment before the server's word that it has it reaches the
    // client (that word is what the status counts as synced).
    let one = wait_until("one to be connected and synced", || {
        let st = s.status_of("one");
        (st["state"] == "connected" && st["last_sync"].is_u64() && st["pending"] == 0).then_some(st)
    });
    assert_eq!(one["scanned"], true);
    let table = s.ok(&["status"]);
    assert!(table.contains("NAME") && table.contains("one") && table.contains("connected"), "{table}");
    let list = s.ok(&["list"]);
    assert!(list.lines().any(|l| l.starts_with("one\t")) && list.lines().any(|l| l.starts_with("two\t")), "{list}");

    // Pause: nothing moves, and the pause is in the configuration.
    s.ok(&["pause", "one"]);
    s.wait_state("one", "paused");
    assert!(fs::read_to_string(&s.config).unwrap().contains("paused = true"));
    write(&s.local("one").join("while-paused.txt"), "made while paused");
    fs::remove_file(s.local("one").join("a.txt")).unwrap();
    write(&s.local("two").join("still.txt"), "two keeps syncing");
    wait_content(&s.remote("two").join("still.txt"), b"two keeps syncing");
    assert!(!s.remote("one").join("while-paused.txt").exists());
    assert!(s.remote("one").join("a.txt").exists());
    // Resume catches up with what changed meanwhile.
    s.ok(&["resume", "one"]);
    wait_content(&s.remote("one").join("while-paused.txt"), b"made while paused");
    wait_gone(&s.remote("one").join("a.txt"));
    s.wait_state("one", "connected");
    assert!(!fs::read_to_string(&s.config).unwrap().contains("paused"));

    // Add and remove, persisted.
    let three = s.local("three");
    write(&three.join("c.txt"), "three");
    s.ok(&[
        "add",
        "three",
        "-h",
        "127.0.0.1",
        "-p",
        &s.port.to_string(),
        "-l",
        three.to_str().unwrap(),
        "-r",
        "three",
        "--insecure",
    ]);
    wait_content(&s.remote("three").join("c.txt"), b"three");
    let exported = s.ok(&["export"]);
    assert!(exported.contains("name = \"three\"") && exported.contains("# written by the test"), "{exported}");
    let (code, _, err) = s.ctl(&["add", "three", "-h", "x", "-l", "/tmp/x", "-r", "x"]);
    assert!(code != 0 && err.contains("exists already"), "{err}");
    s.ok(&["remove", "three"]);
    wait_until("three to be gone", || s.status_of("three").is_null().then_some(()));
    assert!(!s.ok(&["export"]).contains("three"));
    write(&three.join("after-remove.txt"), "not synced");
    write(&s.local("two").join("marker.txt"), "m");
    wait_content(&s.remote("two").join("marker.txt"), b"m");
    assert!(!s.remote("three").join("after-remove.txt").exists());
    let (code, _, err) = s.ctl(&["pause", "nosuch"]);
    assert!(code != 0 && err.contains("no pair named"), "{err}");

    // Import replaces the whole set: "two" goes, "four" comes; a bad file changes nothing.
    let bad = s.area.path("bad.toml");
    fs::write(&bad, "[[pair]]\nname = \"x\"\nhots = 1\n").unwrap();
    let (code, _, err) = s.ctl(&["import", bad.to_str().unwrap()]);
    assert!(code != 0 && err.contains("bad.toml") && err.contains("line 3"), "{err}");
    assert!(!s.status_of("two").is_null());
    let new = s.area.path("new.toml");
    let text = exported
        .replace("name = \"two\"", "name = \"four\"")
        .replace("/two\"", "/four\"")
        .replace("remote = \"two\"", "remote = \"four\"");
    fs::write(&new, &text).unwrap();
    write(&s.local("four").join("d.txt"), "four");
    s.ok(&["import", new.to_str().unwrap()]);
    wait_content(&s.remote("four").join("d.txt"), b"four");
    assert!(s.status_of("two").is_null());
    assert_eq!(fs::read_to_string(&s.config).unwrap(), text);
}

#[test]
fn a_failing_pair_is_restarted_and_reported_while_the_others_sync() {
    let s = Setup::new(&["good"]);
    // A pair whose local directory cannot exist: under a regular file.
    let blocker = s.area.path("blocker");
    write(&blocker, "a file, not a directory");
    let mut text = fs::read_to_string(&s.config).unwrap();
    text.push_str(&format!(
        "\n[[pair]]\nname = \"bad\"\nlocal = \"{}/sub\"\nhost = \"127.0.0.1\"\nport = {}\nremote = \"bad\"\ninsecure = true\n",
        blocker.display(),
        s.port
    ));
    fs::write(&s.config, text).unwrap();
    // Restarts 50 ms, 100 ms, 200 ms... apart instead of 1 s, 2 s, 4 s...
    let agent = s.start_with(&["--test-restart-ms", "50"], &[]);
    write(&s.local("good").join("g.txt"), "good");
    wait_content(&s.remote("good").join("g.txt"), b"good");
    // Retried with backoff, then given up on: failed, with its last error.
    let bad = s.wait_state("bad", "failed");
    assert!(bad["last_error"].as_str().unwrap_or("").contains("blocker"), "{bad}");
    assert!(bad["restarts"].as_u64().unwrap_or(0) >= 4, "{bad}");
    let log = agent.log();
    assert!(log.contains("restarting in 50ms") && log.contains("restarting in 100ms"), "{log}");
    // `status` says something is wrong with its exit code (a health check).
    let (code, table, err) = s.ctl(&["status"]);
    assert_eq!(code, 1, "{table}{err}");
    assert!(table.contains("failed") && err.contains("bad is failed"), "{table}{err}");
    // The others never noticed.
    write(&s.local("good").join("g2.txt"), "still good");
    wait_content(&s.remote("good").join("g2.txt"), b"still good");
    // Fixed by the user, `resume` brings it back at once.
    fs::remove_file(&blocker).unwrap();
    s.ok(&["resume", "bad"]);
    s.wait_state("bad", "connected");
}

/// Issue 12, item 3: the daemon sleeps until something happens (a unit's state changes, the
/// watchdog is due, a signal, a control request) instead of looking every 100 ms. Idle, with a
/// server no client uses, none of its threads wakes: their voluntary context switches (each one
/// a sleep that ended) stay the same over a second, where the old loop made ten.
#[test]
fn an_idle_agent_does_not_wake_up() {
    let s = Setup::new(&[]);
    let mut agent = s.start();
    agent.wait_log("ready: every pair did its first scan");
    let tasks = format!("/proc/{}/task", agent.pid());
    if !std::path::Path::new(&tasks).is_dir() {
        eprintln!("SKIP: no {tasks}");
        return;
    }
    // Per thread (by id and name), since threads come and go while the agent starts.
    let switches = || -> std::collections::BTreeMap<String, u64> {
        fs::read_dir(&tasks)
            .unwrap()
            .filter_map(|t| {
                let t = t.ok()?.path();
                let status = fs::read_to_string(t.join("status")).ok()?;
                let name = status.lines().find_map(|l| l.strip_prefix("Name:"))?.trim().to_string();
                let n = status.lines().find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))?.trim().parse().ok()?;
                Some((format!("{} {name}", t.file_name()?.to_string_lossy()), n))
            })
            .collect()
    };
    // Settled: the start-up's last wake-ups (the status of the server, READY) are over once a
    // status request went through the control socket and back.
    s.ok(&["status"]);
    let before = switches();
    std::thread::sleep(Duration::from_secs(1));
    let after = switches();
    let woke: Vec<String> = after
        .iter()
        .filter_map(|(t, n)| before.get(t).filter(|b| n > *b).map(|b| format!("{t}: {} wake-ups", n - b)))
        .collect();
    assert!(woke.len() <= 1 && after.values().sum::<u64>() <= before.values().sum::<u64>() + 2, "{woke:?}");
    assert_eq!(agent.terminate(), Some(0));
}

/// Under systemd (`JOURNAL_STREAM` set) each line carries its priority for the journal and no
/// time stamp of its own (the journal has one).
#[test]
fn journal_lines_have_priorities_and_no_time_stamps() {
    let s = Setup::new(&[]);
    let agent = s.start_with(&[], &[("JOURNAL_STREAM", "8:1234")]);
    let log = agent.wait_log("<6>running 0 pairs");
    let first = log.lines().find(|l| l.contains("running 0 pairs")).unwrap();
    assert!(first.starts_with("<6>running"), "{first}");
    assert!(!log.contains("Z INFO"), "{log}");
}

#[test]
fn a_bad_config_names_the_file_line_and_key() {
    let area = Area::new();
    let config = area.path("config.toml");
    fs::write(&config, "[[pair]]\nname = \"a\"\nlocal = \"/tmp/a\"\nhost = \"h\"\nremote = \"r\"\nexclude = 3\n")
        .unwrap();
    let out = Command::new(bin())
        .args(["run", "--config", config.to_str().unwrap(), "--state-dir", area.path("state").to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("config.toml") && err.contains("line 6") && err.contains("sequence"), "{err}");
}

#[test]
fn control_commands_without_an_agent_say_so() {
    let area = Area::new();
    let out =
        Command::new(bin()).args(["status", "--state-dir", area.path("state").to_str().unwrap()]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("no mirror-agent is running"), "{err}");
}

#[test]
fn the_control_socket_is_private_and_a_second_agent_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let s = Setup::new(&[]);
    let _agent = s.start();
    let sock = s.state.join("control.sock");
    assert_eq!(fs::metadata(&sock).unwrap().permissions().mode() & 0o777, 0o600);
    let out = Command::new(bin())
        .args(["run", "--config", s.config.to_str().unwrap(), "--state-dir", s.state.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("another mirror-agent is running"), "{err}");
}

/// The test plays systemd: it listens on a datagram socket, starts the agent with
/// `NOTIFY_SOCKET` and a watchdog, and expects readiness only after the first scan, then
/// watchdog pings and a status line.
#[test]
fn systemd_notification_protocol() {
    let s = Setup::new(&["n"]);
    for i in 0..200 {
        write(&s.local("n").join(format!("f{i}.txt")), "x");
    }
    let sock_path = s.area.path("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    // WATCHDOG_PID must be the agent's own pid: exec from a shell that exports its $$.
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "export WATCHDOG_PID=$$; exec \"$0\" \"$@\""])
        .arg(bin())
        .args(["run", "--config", s.config.to_str().unwrap(), "--state-dir", s.state.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "400000");
    let agent = Agent::spawn_cmd("agent", &mut cmd);
    let mut got: Vec<String> = Vec::new();
    wait_until("READY=1, WATCHDOG=1 and STATUS=", || {
        let mut buf = [0u8; 4096];
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        let has = |p: &str| got.iter().any(|m| m.starts_with(p));
        (has("READY=1") && has("WATCHDOG=1") && has("STATUS=")).then_some(())
    });
    // Ready only once the pair had scanned its 200 files.
    let log = agent.wait_log("ready: every pair did its first scan");
    let scanned = log.find("watching ").expect("the pair's first scan is logged");
    let ready = log.find("ready: every pair did its first scan").expect("readiness is logged");
    assert!(scanned < ready, "{log}");
    // Pings keep coming, about twice per WATCHDOG_USEC.
    let before = got.iter().filter(|m| *m == "WATCHDOG=1").count();
    wait_until("more watchdog pings", || {
        let mut buf = [0u8; 4096];
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        (got.iter().filter(|m| *m == "WATCHDOG=1").count() >= before + 3).then_some(())
    });
}

/// Regression (issue 11, item 17): with `--config config.toml` (relative) every control edit
/// said "writing config.toml: No such file or directory" and exited 1, yet wrote the file.
#[test]
fn a_relative_config_path_takes_control_edits() {
    let s = Setup::new(&["one"]);
    let agent = Agent::spawn_cmd(
        "agent",
        Command::new(bin())
            .args(["run", "--config", "config.toml", "--state-dir", s.state.to_str().unwrap()])
            .current_dir(s.area.dir.path()),
    );
    agent.wait_log("control socket");
    s.wait_state("one", "connected");
    s.ok(&["pause", "one"]);
    s.wait_state("one", "paused");
    assert!(fs::read_to_string(&s.config).unwrap().contains("paused = true"));
    s.ok(&["resume", "one"]);
    s.wait_state("one", "connected");
}

/// Regression (issue 11, item 17): a missing `--config` file ran 0 pairs and exited 0.
#[test]
fn a_missing_config_given_explicitly_is_an_error() {
    let area = Area::new();
    let missing = area.path("nope.toml");
    for extra in [&[][..], &["--check"]] {
        let mut agent = Agent::spawn_cmd(
            "agent",
            Command::new(bin())
                .args(["run", "--config", missing.to_str().unwrap(), "--state-dir", area.path("st").to_str().unwrap()])
                .args(extra),
        );
        assert_eq!(agent.wait_exit(), Some(1), "{}", agent.log());
        let err = agent.log();
        assert!(err.contains("there is no configuration file") && err.contains("nope.toml"), "{err}");
    }
}

/// Regression (issue 11, item 17): a halted pair suggested `mirror-agent resume pair NAME`,
/// which fails, and after `resume NAME` the status still showed the old halt.
#[test]
fn a_halted_pair_names_the_working_resume_and_resume_clears_the_halt() {
    let s = Setup::new(&["one"]);
    let agent = s.start();
    write(&s.local("one").join("a.txt"), "one");
    wait_content(&s.remote("one").join("a.txt"), b"one");
    fs::remove_dir_all(s.local("one")).unwrap();
    let halted = s.wait_state("one", "halted");
    assert!(halted["last_error"].is_string(), "{halted}");
    let log = agent.wait_log("`mirror-agent resume one`");
    let (code, _, err) = s.ctl(&["status"]);
    assert!(code == 1 && err.contains("`mirror-agent resume one` accepts its directory"), "{err}");
    assert!(!log.contains("resume pair one"), "{log}");
    fs::create_dir(s.local("one")).unwrap();
    s.ok(&["resume", "one"]);
    let now = s.wait_state("one", "connected");
    assert!(now["last_error"].is_null(), "the old halt is still shown: {now}");
    let (code, table, err) = s.ctl(&["status"]);
    assert_eq!(code, 0, "{table}{err}");
}

/// Regression (issue 11, item 17): another user's `status` said "no mirror-agent is running"
/// when the truth was "permission denied".
#[test]
fn another_users_status_says_permission_denied() {
    if Command::new("setpriv").arg("--version").output().is_err() || !nix_root() {
        eprintln!("SKIP: needs root and setpriv to run a command as another user");
        return;
    }
    let s = Setup::new(&[]);
    let _agent = s.start();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(bin())
        .args(["status", "--state-dir", s.state.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("permission denied") && !err.contains("no mirror-agent is running"), "{err}");
}

fn nix_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Issue 11, item 16: `insecure = true` in the configuration follows the command line's rule:
/// refused off loopback unless `insecure_any_address = true`.
#[test]
fn an_insecure_pair_off_loopback_is_refused() {
    let s = Setup::new(&[]);
    let text = fs::read_to_string(&s.config).unwrap()
        + &format!(
            "\n[[pair]]\nname = \"far\"\nlocal = \"{}\"\nhost = \"192.0.2.1\"\nremote = \"far\"\ninsecure = true\n",
            s.local("far").display()
        );
    fs::write(&s.config, text).unwrap();
    let _agent = s.start();
    let far = wait_until("the pair to report the refusal", || {
        let r = s.status_of("far");
        r["last_error"].as_str().is_some_and(|e| e.contains("loopback")).then_some(r)
    });
    assert!(far["last_error"].as_str().unwrap().contains("insecure_any_address = true"), "{far}");
}
