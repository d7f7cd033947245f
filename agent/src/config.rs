//! The configuration of `mirror-agent run`: any number of sync pairs and an optional server, in
//! TOML. Edits made through the control socket (`add`, `remove`, `pause`, `resume`, `import`)
//! are written back with `toml_edit`, so the user's comments and layout survive.
//!
//! ```toml
//! [server]                 # optional: serve directories under `root`
//! listen = "0.0.0.0:49172"
//! root = "/srv/sync"
//!
//! [[pair]]
//! name = "app"
//! local = "~/work/app"
//! host = "desktop"
//! remote = "src/app"       # inside the server's root
//! include = ["*-SNAPSHOT.jar"]
//! exclude = ["*.log"]
//! ```

use crate::cli::DEFAULT_PORT;
use crate::worker::{ClientSpec, ServerSpec};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use toml_edit::{Array, DocumentMut, Item, Table, value};

/// A configuration problem, located as precisely as the file allows.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: Option<RawServer>,
    #[serde(default)]
    pair: Vec<toml::Spanned<RawPair>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    root: Option<String>,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    insecure_any_address: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPair {
    name: String,
    local: String,
    host: String,
    port: Option<u16>,
    remote: String,
    #[serde(default)]
    include: Vec<String>,
    #[serde(default)]
    exclude: Vec<String>,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    insecure_any_address: bool,
    #[serde(default)]
    paused: bool,
}

/// One configured pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairConfig {
    pub name: String,
    pub spec: ClientSpec,
    pub insecure: bool,
    /// `insecure` may be used with a host that is not a loopback address.
    pub insecure_any_address: bool,
    pub paused: bool,
}

/// The server section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    pub spec: ServerSpec,
    pub insecure: bool,
    /// `insecure` may be used with a listen address that is not a loopback one.
    pub insecure_any_address: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    pub server: Option<ServerConfig>,
    pub pairs: Vec<PairConfig>,
}

/// `~/x` is `$HOME/x` (launchd and systemd do not expand it for us).
fn expand(p: &str) -> PathBuf {
    match (p.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => Path::new(&home).join(rest),
        _ if p == "~" => std::env::var_os("HOME").map_or_else(|| PathBuf::from(p), PathBuf::from),
        _ => PathBuf::from(p),
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|b| *b == b'\n').count() + 1
}

/// A name a user can type: letters, digits, `.`, `_`, `-`.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
        return Err(format!("{name:?} is not a valid pair name (letters, digits, '.', '_', '-'; at most 64)"));
    }
    Ok(())
}

fn check_patterns(key: &str, pats: &[String]) -> Result<(), String> {
    for p in pats {
        let mut b = ignore::gitignore::GitignoreBuilder::new("/");
        if let Err(e) = b.add_line(None, p) {
            return Err(format!("key `{key}`: invalid pattern {p:?}: {e}"));
        }
    }
    Ok(())
}

impl Config {
    /// Parses and checks `text`, read from `file` (named in errors, with the line).
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let at = e.span().map(|s| format!(", line {}", line_of(text, s.start))).unwrap_or_default();
            ConfigError(format!("{}{at}: {}", file.display(), e.message()))
        })?;
        let mut cfg = Config::default();
        if let Some(s) = raw.server {
            let root = s.root.as_deref().map(expand).or_else(|| std::env::var_os("HOME").map(PathBuf::from));
            let root =
                root.ok_or_else(|| ConfigError(format!("{}: [server]: key `root` is missing", file.display())))?;
            let listen = s.listen.unwrap_or_else(|| format!("0.0.0.0:{DEFAULT_PORT}"));
            cfg.server = Some(ServerConfig {
                spec: ServerSpec { listen, root },
                insecure: s.insecure,
                insecure_any_address: s.insecure_any_address,
            });
        }
        for sp in raw.pair {
            let line = line_of(text, sp.span().start);
            let p = sp.into_inner();
            let at = |what: String| ConfigError(format!("{}, line {line}: pair {:?}: {what}", file.display(), p.name));
            check_name(&p.name).map_err(|e| at(format!("key `name`: {e}")))?;
            if cfg.pairs.iter().any(|q| q.name == p.name) {
                return Err(at("key `name`: another pair has this name".into()));
            }
            if p.local.is_empty() {
                return Err(at("key `local`: empty".into()));
            }
            if p.host.is_empty() {
                return Err(at("key `host`: empty".into()));
            }
            if p.remote.is_empty() {
                return Err(at("key `remote`: empty".into()));
            }
            check_patterns("include", &p.include).map_err(at)?;
            check_patterns("exclude", &p.exclude).map_err(at)?;
            let local = expand(&p.local);
            if let Some(q) = cfg.pairs.iter().find(|q| q.spec.local == local) {
                return Err(at(format!("key `local`: pair {:?} syncs the same directory", q.name)));
            }
            cfg.pairs.push(PairConfig {
                name: p.name,
                spec: ClientSpec {
                    local,
                    host: p.host,
                    port: p.port.unwrap_or(DEFAULT_PORT),
                    remote: p.remote,
                    include: p.include,
                    exclude: p.exclude,
                },
                insecure: p.insecure,
                insecure_any_address: p.insecure_any_address,
                paused: p.paused,
            });
        }
        Ok(cfg)
    }

    /// Reads `file`; a missing file is an empty configuration.
    pub fn load(file: &Path) -> Result<(Config, String), ConfigError> {
        match std::fs::read_to_string(file) {
            Ok(text) => Ok((Config::parse(&text, file)?, text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((Config::default(), String::new())),
            Err(e) => Err(ConfigError(format!("{}: {e}", file.display()))),
        }
    }
}

/// What `add` asks for.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct NewPair {
    pub name: String,
    pub local: String,
    pub host: String,
    pub port: Option<u16>,
    pub remote: String,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub insecure: bool,
}

fn strings(v: &[String]) -> Item {
    let mut a = Array::new();
    for s in v {
        a.push(s.as_str());
    }
    value(a)
}

fn parse_doc(text: &str, file: &Path) -> Result<DocumentMut, ConfigError> {
    text.parse::<DocumentMut>().map_err(|e| ConfigError(format!("{}: {e}", file.display())))
}

fn pairs_mut(doc: &mut DocumentMut) -> Option<&mut toml_edit::ArrayOfTables> {
    doc.get_mut("pair").and_then(Item::as_array_of_tables_mut)
}

/// `text` with the pair `p` appended.
pub fn with_pair(text: &str, file: &Path, p: &NewPair) -> Result<String, ConfigError> {
    let mut doc = parse_doc(text, file)?;
    let mut t = Table::new();
    t["name"] = value(p.name.as_str());
    t["local"] = value(p.local.as_str());
    t["host"] = value(p.host.as_str());
    if let Some(port) = p.port {
        t["port"] = value(i64::from(port));
    }
    t["remote"] = value(p.remote.as_str());
    if !p.include.is_empty() {
        t["include"] = strings(&p.include);
    }
    if !p.exclude.is_empty() {
        t["exclude"] = strings(&p.exclude);
    }
    if p.insecure {
        t["insecure"] = value(true);
    }
    if doc.get("pair").is_none() {
        doc["pair"] = Item::ArrayOfTables(toml_edit::ArrayOfTables::new());
    }
    pairs_mut(&mut doc)
        .ok_or_else(|| ConfigError(format!("{}: `pair` is not an array of tables", file.display())))?
        .push(t);
    Ok(doc.to_string())
}

/// `text` without the pair `name`; `None` if there is no such pair.
pub fn without_pair(text: &str, file: &Path, name: &str) -> Result<Option<String>, ConfigError> {
    let mut doc = parse_doc(text, file)?;
    let Some(pairs) = pairs_mut(&mut doc) else { return Ok(None) };
    let Some(i) = pairs.iter().position(|t| t.get("name").and_then(Item::as_str) == Some(name)) else {
        return Ok(None);
    };
    pairs.remove(i);
    Ok(Some(doc.to_string()))
}

/// `text` with pair `name` marked paused (or not); `None` if there is no such pair.
pub fn with_paused(text: &str, file: &Path, name: &str, paused: bool) -> Result<Option<String>, ConfigError> {
    let mut doc = parse_doc(text, file)?;
    let Some(pairs) = pairs_mut(&mut doc) else { return Ok(None) };
    let Some(t) = pairs.iter_mut().find(|t| t.get("name").and_then(Item::as_str) == Some(name)) else {
        return Ok(None);
    };
    if paused {
        t["paused"] = value(true);
    } else {
        t.remove("paused");
    }
    Ok(Some(doc.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: &str = "/cfg/config.toml";

    #[test]
    fn a_full_config_parses() {
        let text = r#"
[server]
listen = "127.0.0.1:4000"
root = "/srv"

[[pair]]
name = "app"
local = "/w/app"
host = "desk"
remote = "src/app"
include = ["*-SNAPSHOT.jar"]
paused = true
"#;
        let c = Config::parse(text, Path::new(F)).unwrap();
        let s = c.server.unwrap();
        assert_eq!((s.spec.listen.as_str(), s.spec.root.as_path()), ("127.0.0.1:4000", Path::new("/srv")));
        assert_eq!(c.pairs.len(), 1);
        let p = &c.pairs[0];
        assert_eq!((p.name.as_str(), p.spec.port, p.paused), ("app", DEFAULT_PORT, true));
        assert_eq!(p.spec.include, ["*-SNAPSHOT.jar"]);
    }

    #[test]
    fn errors_name_the_file_the_line_and_the_key() {
        let unknown = "[[pair]]\nname = \"a\"\nlocal = \"/a\"\nhost = \"h\"\nremote = \"r\"\nhots = \"x\"\n";
        let e = Config::parse(unknown, Path::new(F)).unwrap_err().to_string();
        assert!(e.contains(F) && e.contains("line 6") && e.contains("hots"), "{e}");
        let missing = "\n\n[[pair]]\nname = \"a\"\nlocal = \"/a\"\nremote = \"r\"\n";
        let e = Config::parse(missing, Path::new(F)).unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("host"), "{e}");
        let dup = "[[pair]]\nname = \"a\"\nlocal = \"/a\"\nhost = \"h\"\nremote = \"r\"\n\n\
                   [[pair]]\nname = \"a\"\nlocal = \"/b\"\nhost = \"h\"\nremote = \"r\"\n";
        let e = Config::parse(dup, Path::new(F)).unwrap_err().to_string();
        assert!(e.contains("line 7") && e.contains("`name`") && e.contains("another pair"), "{e}");
        let port = "[[pair]]\nname = \"a\"\nlocal = \"/a\"\nhost = \"h\"\nremote = \"r\"\nport = 70000\n";
        let e = Config::parse(port, Path::new(F)).unwrap_err().to_string();
        assert!(e.contains("line 6"), "{e}");
        let bad_name = "[[pair]]\nname = \"a b\"\nlocal = \"/a\"\nhost = \"h\"\nremote = \"r\"\n";
        let e = Config::parse(bad_name, Path::new(F)).unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("not a valid pair name"), "{e}");
    }

    #[test]
    fn edits_keep_comments_and_round_trip() {
        let text = "# my pairs\n[[pair]] # the first\nname = \"a\"\nlocal = \"/a\"\nhost = \"h\"\nremote = \"r\"\n";
        let p = NewPair {
            name: "b".into(),
            local: "/b".into(),
            host: "h2".into(),
            port: Some(5000),
            remote: "r2".into(),
            include: vec!["*.jar".into()],
            exclude: vec![],
            insecure: true,
        };
        let added = with_pair(text, Path::new(F), &p).unwrap();
        assert!(added.contains("# my pairs") && added.contains("# the first"), "{added}");
        let c = Config::parse(&added, Path::new(F)).unwrap();
        assert_eq!(c.pairs.len(), 2);
        assert_eq!((c.pairs[1].spec.port, c.pairs[1].insecure), (5000, true));
        let paused = with_paused(&added, Path::new(F), "b", true).unwrap().unwrap();
        assert!(Config::parse(&paused, Path::new(F)).unwrap().pairs[1].paused);
        let removed = without_pair(&paused, Path::new(F), "b").unwrap().unwrap();
        let c = Config::parse(&removed, Path::new(F)).unwrap();
        assert_eq!(c.pairs.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["a"]);
        assert!(removed.contains("# my pairs") && removed.contains("# the first"), "{removed}");
        assert_eq!(without_pair(&removed, Path::new(F), "zzz").unwrap(), None);
        // Into an empty file too.
        let fresh = with_pair("", Path::new(F), &p).unwrap();
        assert_eq!(Config::parse(&fresh, Path::new(F)).unwrap().pairs.len(), 1);
    }
}
