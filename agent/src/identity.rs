//! This agent's identity and the identities it trusts.
//!
//! Each agent generates, once, a key pair and a self-signed certificate in its state directory.
//! Its **device ID** is derived from the certificate: blake3 of the DER, in base32, cut into four
//! groups of 13 characters, each followed by a check character (Luhn mod 32, as syncthing does),
//! shown in eight groups of seven. A mistyped or truncated ID is caught before it is trusted.
//! Trust is a plain file of IDs, read at every handshake, so `mirror-agent trust` takes effect in
//! a running agent at once.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// A peer's identity, in canonical form (`XXXXXXX-XXXXXXX-...`, 8 groups of 7).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(String);

/// Why a string is not a device ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdError {
    Length(usize),
    Character(char),
    Check { group: usize },
}

impl fmt::Display for IdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Length(n) => write!(f, "a device ID has 56 characters (without dashes), this has {n}"),
            Self::Character(c) => write!(f, "{c:?} cannot appear in a device ID (A-Z and 2-7 only)"),
            Self::Check { group } => write!(f, "check character of group {} is wrong: a typo?", group + 1),
        }
    }
}

impl std::error::Error for IdError {}

fn base32(bytes: &[u8]) -> String {
    let mut out = String::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((acc << (5 - bits)) & 31) as usize] as char);
    }
    out
}

fn value(c: u8) -> Option<u32> {
    ALPHABET.iter().position(|a| *a == c).map(|p| p as u32)
}

/// The Luhn mod 32 check character of `group`.
fn luhn32(group: &[u8]) -> u8 {
    let (mut factor, mut sum) = (1u32, 0u32);
    for &c in group {
        let mut addend = factor * value(c).unwrap_or(0);
        factor = if factor == 2 { 1 } else { 2 };
        addend = addend / 32 + addend % 32;
        sum += addend;
    }
    ALPHABET[((32 - sum % 32) % 32) as usize]
}

impl DeviceId {
    /// The ID of a certificate.
    pub fn of_cert(der: &[u8]) -> DeviceId {
        let b32 = base32(blake3::hash(der).as_bytes()); // 52 characters
        let mut flat = Vec::with_capacity(56);
        for g in b32.as_bytes().chunks(13) {
            flat.extend_from_slice(g);
            flat.push(luhn32(g));
        }
        DeviceId(group7(&flat))
    }

    /// Parses an ID as a user may type it: any case, with or without dashes and spaces.
    pub fn parse(s: &str) -> Result<DeviceId, IdError> {
        let flat: Vec<u8> =
            s.chars().filter(|c| !matches!(c, '-' | ' ')).map(|c| c.to_ascii_uppercase() as u8).collect();
        if let Some(c) =
            s.chars().filter(|c| !matches!(c, '-' | ' ')).find(|c| value(c.to_ascii_uppercase() as u8).is_none())
        {
            return Err(IdError::Character(c));
        }
        if flat.len() != 56 {
            return Err(IdError::Length(flat.len()));
        }
        for (i, g) in flat.chunks(14).enumerate() {
            if luhn32(&g[..13]) != g[13] {
                return Err(IdError::Check { group: i });
            }
        }
        Ok(DeviceId(group7(&flat)))
    }
}

fn group7(flat: &[u8]) -> String {
    flat.chunks(7).map(|c| String::from_utf8_lossy(c).into_owned()).collect::<Vec<_>>().join("-")
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// This agent's key and certificate.
#[derive(Debug)]
pub struct Identity {
    pub cert_der: Vec<u8>,
    pub key_der: Vec<u8>,
    pub id: DeviceId,
}

/// A new self-signed certificate and its PKCS#8 key, both DER.
#[cfg(feature = "ring")]
fn generate() -> io::Result<(Vec<u8>, Vec<u8>)> {
    let ck = rcgen::generate_simple_self_signed(vec!["mirror-agent".to_string()]).map_err(io::Error::other)?;
    Ok((ck.cert.der().to_vec(), ck.signing_key.serialize_der()))
}

/// See `tls::provider`: a build without `ring` is only type-checked, never run.
#[cfg(not(feature = "ring"))]
fn generate() -> io::Result<(Vec<u8>, Vec<u8>)> {
    Err(io::Error::other("built without a crypto provider (cargo feature `ring`)"))
}

impl Identity {
    /// Loads the identity in `state_dir`, generating it on first use.
    pub fn load_or_create(state_dir: &Path) -> io::Result<Identity> {
        let dir = state_dir.join("identity");
        let (cert_path, key_path) = (dir.join("cert.der"), dir.join("key.der"));
        if let (Ok(cert_der), Ok(key_der)) = (fs::read(&cert_path), fs::read(&key_path)) {
            let id = DeviceId::of_cert(&cert_der);
            return Ok(Identity { cert_der, key_der, id });
        }
        crate::store::private_dir(&dir)?;
        let (cert_der, key_der) = generate()?;
        write_private(&key_path, &key_der)?;
        crate::store::write_atomic(&cert_path, &cert_der)?;
        let id = DeviceId::of_cert(&cert_der);
        log::info!("generated this agent's identity: {id}");
        Ok(Identity { cert_der, key_der, id })
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)
}

/// The file of trusted device IDs: one per line, `#` starts a comment.
#[derive(Debug, Clone)]
pub struct Trust {
    path: PathBuf,
    /// ` --state-dir DIR` when the state dir is not the default: suggested commands need it.
    flag: String,
}

impl Trust {
    pub fn new(state_dir: &Path) -> Trust {
        Trust { path: state_dir.join("trusted"), flag: String::new() }
    }

    /// The same, for a state dir the user named (`--state-dir`, `MIRROR_STATE_DIR`): the
    /// commands we suggest name it too.
    pub fn named(state_dir: &Path) -> Trust {
        let dir = std::path::absolute(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
        Trust { flag: format!(" --state-dir {}", shell_word(&dir.to_string_lossy())), ..Trust::new(state_dir) }
    }

    /// The command that trusts `id` here.
    pub fn command(&self, id: &DeviceId) -> String {
        format!("mirror-agent trust {id}{}", self.flag)
    }

    /// Whether `id` is trusted, read from disk now (so a `trust` takes effect at once).
    pub fn contains(&self, id: &DeviceId) -> bool {
        fs::read_to_string(&self.path)
            .map(|s| {
                s.lines()
                    .filter_map(|l| DeviceId::parse(l.split('#').next().unwrap_or("").trim()).ok())
                    .any(|t| &t == id)
            })
            .unwrap_or(false)
    }

    /// Adds `id` (with a comment); returns false if it was trusted already.
    pub fn add(&self, id: &DeviceId, comment: &str) -> io::Result<bool> {
        if self.contains(id) {
            return Ok(false);
        }
        if let Some(d) = self.path.parent() {
            crate::store::private_dir(d)?;
        }
        // Owner only whatever the umask: whoever can write this file decides who may sync.
        let mut f = fs::OpenOptions::new().create(true).append(true).mode(0o600).open(&self.path)?;
        writeln!(f, "{id}  # {comment}")?;
        f.sync_all()?;
        Ok(true)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The comment beside `id` in the trust file, if it is there with one.
    pub fn comment(&self, id: &DeviceId) -> Option<String> {
        let text = fs::read_to_string(&self.path).ok()?;
        text.lines().find_map(|l| {
            let (key, comment) = l.split_once('#').unwrap_or((l, ""));
            (DeviceId::parse(key.trim()).ok().as_ref() == Some(id) && !comment.trim().is_empty())
                .then(|| comment.trim().to_owned())
        })
    }

    /// The file of servers this client reached, and the identity each presented last:
    /// `HOST ID` a line, beside the trust file.
    fn servers_path(&self) -> PathBuf {
        self.path.with_file_name("servers")
    }

    /// The identity `host` presented when this client last reached it.
    pub fn server_seen(&self, host: &str) -> Option<DeviceId> {
        let text = fs::read_to_string(self.servers_path()).ok()?;
        text.lines().find_map(|l| {
            let (h, id) = l.split_once(' ')?;
            (h == host).then(|| DeviceId::parse(id.trim()).ok()).flatten()
        })
    }

    /// Records that `host` presented `id` (a trusted one).
    pub fn remember_server(&self, host: &str, id: &DeviceId) -> io::Result<()> {
        let path = self.servers_path();
        let old = fs::read_to_string(&path).unwrap_or_default();
        let mut text: String = old
            .lines()
            .filter(|l| l.split_once(' ').is_none_or(|(h, _)| h != host))
            .map(|l| format!("{l}\n"))
            .collect();
        text.push_str(&format!("{host} {id}\n"));
        crate::store::write_atomic(&path, text.as_bytes())
    }
}

/// Warns about a state dir (or trust file) other users may write, left so by an older version
/// or by hand: any of them could add their own ID to the trust file.
pub fn warn_if_open(state_dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for (p, fix) in [(state_dir.to_path_buf(), "700"), (state_dir.join("trusted"), "600")] {
        if let Ok(m) = fs::symlink_metadata(&p)
            && m.permissions().mode() & 0o022 != 0
        {
            log::warn!(
                "{} is writable by other users, so any of them could trust their own ID here: \
                 `chmod {fix} {}`",
                p.display(),
                shell_word(&p.to_string_lossy())
            );
        }
    }
}

/// `s` as one shell word: as it is when it holds nothing a shell would split or expand.
fn shell_word(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+:@%,=".contains(c)) {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_catch_typos() {
        let id = DeviceId::of_cert(b"some certificate");
        let s = id.to_string();
        assert_eq!(s.len(), 63, "{s}");
        assert_eq!(s.split('-').count(), 8);
        assert_eq!(DeviceId::parse(&s), Ok(id.clone()));
        assert_eq!(DeviceId::parse(&s.to_lowercase().replace('-', " ")), Ok(id.clone()));
        // Change one character: some group's check fails.
        let mut typo: Vec<char> = s.chars().collect();
        typo[3] = if typo[3] == 'A' { 'B' } else { 'A' };
        let typo: String = typo.into_iter().collect();
        assert!(matches!(DeviceId::parse(&typo), Err(IdError::Check { group: 0 })), "{typo}");
        assert!(matches!(DeviceId::parse(&s[..20]), Err(IdError::Length(_))));
        assert!(matches!(DeviceId::parse(&s.replace('A', "1")), Err(IdError::Character('1')) | Ok(_)));
    }

    #[test]
    fn identity_is_stable_and_trust_is_read_live() {
        let d = tempfile::tempdir().unwrap();
        let a = Identity::load_or_create(d.path()).unwrap();
        let b = Identity::load_or_create(d.path()).unwrap();
        assert_eq!(a.id, b.id);
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(d.path().join("identity/key.der")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let t = Trust::new(d.path());
        let other = DeviceId::of_cert(b"other");
        assert!(!t.contains(&other));
        assert!(t.add(&other, "laptop").unwrap());
        assert!(!t.add(&other, "again").unwrap());
        assert!(Trust::new(d.path()).contains(&other));
    }
}
