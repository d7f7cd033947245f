//! `cfg(kqueue)`: the platforms the kqueue backend builds on.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(kqueue)");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if matches!(os.as_str(), "macos" | "freebsd" | "openbsd" | "netbsd" | "dragonfly") {
        println!("cargo::rustc-cfg=kqueue");
    }
}
