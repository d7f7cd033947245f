//! Two hosts on one machine: network namespaces joined by a veth pair, made by the test and
//! removed when it ends. Everything a test does to the network (links down, packet loss) stays
//! inside these namespaces.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Namespaces `a` (address `addr_a`) and `b` (`addr_b`), joined by a veth pair.
#[derive(Debug)]
pub struct NetPair {
    pub a: String,
    pub b: String,
    pub addr_a: String,
    pub addr_b: String,
    link_a: String,
    link_b: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).stdin(Stdio::null()).output().map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl NetPair {
    /// Creates the pair, or says why it cannot be made here (not root, no `ip`).
    pub fn create() -> Result<NetPair, String> {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{}{n}", std::process::id() % 100_000);
        // A subnet per pair, so pairs of tests running at once do not meet.
        let subnet = (std::process::id() * 7 + n) % 250 + 1;
        let pair = NetPair {
            a: format!("mirror-{tag}-a"),
            b: format!("mirror-{tag}-b"),
            addr_a: format!("10.77.{subnet}.1"),
            addr_b: format!("10.77.{subnet}.2"),
            link_a: format!("mv{tag}a"),
            link_b: format!("mv{tag}b"),
        };
        ip(&["netns", "add", &pair.a])?;
        ip(&["netns", "add", &pair.b])?;
        ip(&[
            "link",
            "add",
            &pair.link_a,
            "netns",
            &pair.a,
            "type",
            "veth",
            "peer",
            "name",
            &pair.link_b,
            "netns",
            &pair.b,
        ])?;
        for (ns, link, addr) in [(&pair.a, &pair.link_a, &pair.addr_a), (&pair.b, &pair.link_b, &pair.addr_b)] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", link])?;
            ip(&["-n", ns, "link", "set", link, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(pair)
    }

    /// `program args...` to run inside namespace `ns`.
    pub fn command(&self, ns: &str, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).arg(program);
        c
    }

    /// Takes the link down (the cable pulled: no reset, packets just stop) or up again.
    pub fn set_link(&self, up: bool) {
        ip(&["-n", &self.a, "link", "set", &self.link_a, if up { "up" } else { "down" }]).unwrap();
    }

    /// Drops `percent`% of the packets each namespace sends, at random (nftables).
    pub fn lose(&self, percent: u32) -> Result<(), String> {
        for ns in [&self.a, &self.b] {
            let rules = format!(
                "table inet mirror_test {{\n chain out {{\n  type filter hook output priority 0;\n  \
                 numgen random mod 100 < {percent} drop\n }}\n}}\n"
            );
            let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
            let file = dir.path().join("rules.nft");
            std::fs::write(&file, rules).map_err(|e| e.to_string())?;
            let out = Command::new("ip")
                .args(["netns", "exec", ns, "nft", "-f"])
                .arg(&file)
                .output()
                .map_err(|e| format!("nft: {e}"))?;
            if !out.status.success() {
                return Err(format!("nft: {}", String::from_utf8_lossy(&out.stderr).trim()));
            }
        }
        Ok(())
    }

    /// Limits what namespace `b` sends to `rate` (a `tc` rate such as `40mbit`).
    pub fn limit_b(&self, rate: &str) -> Result<(), String> {
        let out = Command::new("tc")
            .args(["-n", &self.b, "qdisc", "add", "dev", &self.link_b, "root", "tbf", "rate", rate])
            .args(["burst", "64kb", "latency", "400ms"])
            .output()
            .map_err(|e| format!("tc: {e}"))?;
        if out.status.success() { Ok(()) } else { Err(format!("tc: {}", String::from_utf8_lossy(&out.stderr).trim())) }
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth pair, and with it the other end.
        let _ = ip(&["netns", "del", &self.a]);
        let _ = ip(&["netns", "del", &self.b]);
    }
}
