//! The four ways to install and run the agent, checked with the tools that would run them (see
//! `shared/VERIFY.md` for what each check proves): the systemd user unit, the launchd agent, the
//! AUR package and the Docker image with its compose file. `.ci/run` installs the tools; where
//! one is missing (a developer machine), its test says `SKIP` and passes.
#![allow(clippy::unwrap_used)]

use mirror_tests::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn have(tool: &str) -> bool {
    let found =
        Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("SKIP: {tool} is not installed (.ci/run installs it)");
    }
    found
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn the_systemd_user_unit_verifies_clean_and_installs() {
    if !have("systemd-analyze") || !have("systemctl") {
        return;
    }
    let unit = fs::read_to_string(repo().join("packaging/systemd/mirror-agent.service")).unwrap();
    for needed in ["Type=notify", "WatchdogSec=", "Restart=on-failure", "ExecStart=/usr/bin/mirror-agent run"] {
        assert!(unit.contains(needed), "the unit lacks {needed}");
    }
    // verify checks that ExecStart exists: point it at the binary under test.
    let area = Area::new();
    let dir = area.path("units");
    fs::create_dir_all(&dir).unwrap();
    fs::create_dir_all(area.path("runtime")).unwrap();
    let file = dir.join("mirror-agent.service");
    fs::write(&file, unit.replace("/usr/bin/mirror-agent", bin().to_str().unwrap())).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--user", "--man=no"])
        .arg(&file)
        .env("XDG_RUNTIME_DIR", area.path("runtime"))
        .env("HOME", area.path("."))
        .output()
        .unwrap();
    // It exits 0 even on errors: any output is a finding.
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify: {said}");
    // And a broken unit does produce output, so the check above can fail.
    fs::write(
        &file,
        unit.replace("Type=notify", "Typ=notify").replace("/usr/bin/mirror-agent", bin().to_str().unwrap()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--user", "--man=no"])
        .arg(&file)
        .env("XDG_RUNTIME_DIR", area.path("runtime"))
        .output()
        .unwrap();
    assert!(!out.stderr.is_empty(), "a misspelt key went unnoticed");
    // [Install]: `systemctl --user enable` links it into default.target.
    let root = area.path("root");
    let units = root.join("usr/lib/systemd/user");
    fs::create_dir_all(&units).unwrap();
    fs::write(units.join("mirror-agent.service"), &unit).unwrap();
    run(Command::new("systemctl").arg(format!("--root={}", root.display())).args([
        "--global",
        "enable",
        "mirror-agent.service",
    ]));
    // A link to the unit's path inside that root (absolute, so not followed from here).
    let link = root.join("etc/systemd/user/default.target.wants/mirror-agent.service");
    assert_eq!(fs::read_link(&link).unwrap(), Path::new("/usr/lib/systemd/user/mirror-agent.service"));
}

#[test]
fn the_launchd_agent_is_installed_with_absolute_paths() {
    if !have("python3") {
        return;
    }
    let checker = repo().join("packaging/launchd/check_plist.py");
    let template = repo().join("packaging/launchd/io.github.mirror-agent.plist");
    run(Command::new("python3").arg(&checker).arg(&template));
    let area = Area::new();
    let home = area.path("home");
    fs::create_dir_all(&home).unwrap();
    run(Command::new("sh")
        .arg(repo().join("packaging/launchd/install.sh"))
        .arg(bin())
        .env("HOME", &home)
        .env("MIRROR_NO_LOAD", "1"));
    let installed = home.join("Library/LaunchAgents/io.github.mirror-agent.plist");
    run(Command::new("python3").arg(&checker).arg(&installed));
    let text = fs::read_to_string(&installed).unwrap();
    assert!(text.contains(bin().to_str().unwrap()), "{text}");
    assert!(text.contains(&format!("{}/Library/Logs/mirror-agent.log", home.display())), "{text}");
    assert!(home.join("Library/Logs").is_dir());
    // The checker does find what launchd would not accept.
    let bad = area.path("io.github.mirror-agent.plist");
    fs::write(&bad, text.replace(bin().to_str().unwrap(), "mirror-agent").replace(&home.display().to_string(), "~"))
        .unwrap();
    let out = Command::new("python3").arg(&checker).arg(&bad).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success() && said.contains("absolute"), "{said}");
}

/// `makepkg` refuses to run as root: build as this unprivileged user.
const BUILDER: &str = "builder";

fn builder_exists() -> bool {
    let ok = Command::new("id").arg(BUILDER).output().is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIP: no user {BUILDER} to run makepkg as (.ci/run creates it)");
    }
    ok
}

#[test]
fn the_aur_package_metadata_is_current_and_its_scripts_lint_clean() {
    if !have("makepkg") || !have("shellcheck") || !have("runuser") || !builder_exists() {
        return;
    }
    let area = Area::new();
    let dir = area.path("aur");
    fs::create_dir_all(&dir).unwrap();
    fs::copy(repo().join("packaging/aur/PKGBUILD"), dir.join("PKGBUILD")).unwrap();
    run(Command::new("chown").args(["-R", BUILDER]).arg(area.path(".")));
    let out = run(Command::new("runuser").args(["-u", BUILDER, "--", "makepkg", "--printsrcinfo"]).current_dir(&dir));
    let srcinfo = fs::read_to_string(repo().join("packaging/aur/.SRCINFO")).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        srcinfo,
        ".SRCINFO is stale: regenerate with makepkg --printsrcinfo"
    );
    run(Command::new("shellcheck")
        .args(["-s", "bash", "-e", "SC2034,SC2154,SC2164"])
        .arg(repo().join("packaging/aur/PKGBUILD")));
    run(Command::new("shellcheck").arg(repo().join("packaging/launchd/install.sh")));
    let pkgbuild = fs::read_to_string(repo().join("packaging/aur/PKGBUILD")).unwrap();
    for needed in ["--locked", "--release", "check()", "/usr/lib/systemd/user/", "/usr/share/licenses/"] {
        assert!(pkgbuild.contains(needed), "the PKGBUILD lacks {needed}");
    }
}

#[test]
fn the_dockerfile_and_compose_file_lint_clean() {
    if !have("hadolint") || !have("check-jsonschema") {
        return;
    }
    let dockerfile = repo().join("packaging/docker/Dockerfile");
    run(Command::new("hadolint").args(["--failure-threshold", "info"]).arg(&dockerfile));
    run(Command::new("check-jsonschema")
        .args(["--builtin-schema", "vendor.compose-spec"])
        .arg(repo().join("packaging/docker/docker-compose.yml")));
    let text = fs::read_to_string(&dockerfile).unwrap();
    for needed in [
        "AS build",
        "USER 10001",
        "VOLUME [\"/data\"]",
        "EXPOSE 49172",
        "HEALTHCHECK",
        "mirror-agent\", \"status",
        "ENV MIRROR_STATE_DIR=/data/state",
    ] {
        assert!(text.contains(needed), "the Dockerfile lacks {needed}");
    }
    // The image's default configuration is one the agent accepts.
    let area = Area::new();
    let out = Command::new(bin())
        .args(["run", "--check", "--config"])
        .arg(repo().join("packaging/docker/config.toml"))
        .args(["--state-dir", area.path("state").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 pairs and a server"));
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A scratch directory other users can reach (the AUR build runs as [`BUILDER`]).
fn shared_scratch() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir_in("/var/tmp").unwrap();
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
    d
}

/// The whole AUR route: `makepkg` as an unprivileged user, `check()` included, the package
/// listed, installed into a throwaway pacman root, and the installed binary run.
#[test]
fn the_aur_package_builds_checks_and_installs() {
    if !is_root() {
        eprintln!("SKIP: the AUR build switches to the {BUILDER} user, which needs root");
        return;
    }
    if !have("makepkg") || !have("pacman") || !have("bsdtar") || !builder_exists() {
        return;
    }
    if !Path::new("/usr/bin/cargo").exists() {
        eprintln!("SKIP: no /usr/bin/cargo for {BUILDER} (Debian's cargo-web; .ci/run installs it)");
        return;
    }
    let scratch = shared_scratch();
    let out = run(Command::new("bash")
        .arg(repo().join("packaging/aur/ci-build.sh"))
        .arg(scratch.path().join("aur"))
        .arg(BUILDER));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("usr/bin/mirror-agent") && said.contains("mirror-agent 0.1.0"), "{said}");
    let root = scratch.path().join("aur/root");
    assert!(root.join("usr/lib/systemd/user/mirror-agent.service").is_file());
    assert!(root.join("usr/share/doc/mirror-agent/README.md").is_file());
}

/// The Docker route without a Docker engine: the image built from the Dockerfile by podman,
/// started as its non-root user, its health check (which asks the agent) healthy.
#[test]
fn the_docker_image_builds_starts_and_is_healthy() {
    if !is_root() {
        eprintln!("SKIP: podman with runc here needs root");
        return;
    }
    if !have("podman") || !have("runc") || !have("debootstrap") {
        return;
    }
    let out = run(Command::new("bash").arg(repo().join("packaging/docker/ci-build.sh")));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("health check: healthy") && said.contains("listening"), "{said}");
}
