//! Which paths are synced: nested `.gitignore` files, `.git/info/exclude`, the `.git` directory,
//! our own temp files, and the `-i`/`-e` patterns of the command line (gitignore syntax).
//!
//! Precedence, as in stephenh/mirror: an `-i` include wins over every ignore rule; then `-e`
//! excludes; then `.gitignore` files from the deepest directory up (a `!pattern` re-includes);
//! then `.git/info/exclude`. A path inside an ignored directory is ignored unless an include
//! names it. The `ignore` crate does the pattern matching; this module does the layering.

use ignore::gitignore::{Gitignore, GitignoreBuilder};
use mirror_backends::DirRules;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

pub use mirror_core::paths::{AGENT_DIR, BESIDE_PREFIX, is_beside_temp, is_temp};

/// A bad `-i`/`-e` pattern.
#[derive(Debug)]
pub struct PatternError {
    pub pattern: String,
    pub reason: String,
}

impl std::fmt::Display for PatternError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid pattern {:?}: {}", self.pattern, self.reason)
    }
}

impl std::error::Error for PatternError {}

#[derive(Debug, Clone)]
pub struct Rules {
    root: PathBuf,
    includes: Option<Gitignore>,
    excludes: Option<Gitignore>,
    info_exclude: Option<Gitignore>,
    /// Each directory's `.gitignore`, loaded on first use; `None` when it has none.
    dirs: HashMap<PathBuf, Option<Arc<Gitignore>>>,
}

fn build(root: &Path, patterns: &[String]) -> Result<Option<Gitignore>, PatternError> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut b = GitignoreBuilder::new(root);
    for p in patterns {
        b.add_line(None, p).map_err(|e| PatternError { pattern: p.clone(), reason: e.to_string() })?;
    }
    b.build().map(Some).map_err(|e| PatternError { pattern: patterns.join(" "), reason: e.to_string() })
}

fn load_file(dir: &Path, file: &Path) -> Option<Gitignore> {
    if !file.is_file() {
        return None;
    }
    let mut b = GitignoreBuilder::new(dir);
    if let Some(e) = b.add(file) {
        log::warn!("{}: {e}", file.display());
    }
    match b.build() {
        Ok(g) if !g.is_empty() => Some(g),
        Ok(_) => None,
        Err(e) => {
            log::warn!("{}: {e}", file.display());
            None
        }
    }
}

impl Rules {
    pub fn new(root: &Path, includes: &[String], excludes: &[String]) -> Result<Self, PatternError> {
        Ok(Self {
            root: root.to_path_buf(),
            includes: build(root, includes)?,
            excludes: build(root, excludes)?,
            info_exclude: load_file(root, &root.join(".git/info/exclude")),
            dirs: HashMap::new(),
        })
    }

    pub fn has_includes(&self) -> bool {
        self.includes.is_some()
    }

    /// Forgets the cached rules of `dir` (its `.gitignore` changed). `dir` relative to the root.
    pub fn invalidate(&mut self, dir: &Path) {
        self.dirs.remove(dir);
        if dir == Path::new(".git/info") || dir == Path::new(".git") {
            self.info_exclude = load_file(&self.root, &self.root.join(".git/info/exclude"));
        }
    }

    /// Forgets every cached rule file (anything may have changed).
    pub fn invalidate_all(&mut self) {
        self.dirs.clear();
        self.info_exclude = load_file(&self.root, &self.root.join(".git/info/exclude"));
    }

    /// Whether an include pattern names `rel` or one of its ancestors.
    pub fn is_included(&self, rel: &Path, is_dir: bool) -> bool {
        self.includes.as_ref().is_some_and(|g| g.matched_path_or_any_parents(rel, is_dir).is_ignore())
    }

    /// Whether `rel` is ignored, considering its ancestors too.
    pub fn is_ignored(&mut self, rel: &Path, is_dir: bool) -> bool {
        if is_temp(rel) {
            return true;
        }
        if self.is_included(rel, is_dir) {
            return false;
        }
        if self.ignored_here(rel, is_dir) {
            return true;
        }
        let ancestors: Vec<PathBuf> =
            rel.ancestors().skip(1).filter(|a| !a.as_os_str().is_empty()).map(Path::to_path_buf).collect();
        ancestors.iter().rev().any(|a| self.ignored_here(a, true))
    }

    /// Whether `rel` itself is ignored, assuming its ancestors are not (a walk that prunes
    /// ignored directories only needs this).
    pub fn ignored_here(&mut self, rel: &Path, is_dir: bool) -> bool {
        if is_temp(rel) {
            return true;
        }
        if rel.file_name() == Some(OsStr::new(".git")) {
            return true;
        }
        if self.excludes.as_ref().is_some_and(|g| g.matched(rel, is_dir).is_ignore()) {
            return true;
        }
        let abs = self.root.join(rel);
        let mut dir = rel.parent();
        while let Some(d) = dir {
            if let Some(g) = self.dir_rules(d) {
                let m = g.matched(&abs, is_dir);
                if m.is_ignore() {
                    return true;
                }
                if m.is_whitelist() {
                    return false;
                }
            }
            dir = d.parent();
        }
        self.info_exclude.as_ref().is_some_and(|g| g.matched(&abs, is_dir).is_ignore())
    }

    fn dir_rules(&mut self, dir: &Path) -> Option<Arc<Gitignore>> {
        if let Some(g) = self.dirs.get(dir) {
            return g.clone();
        }
        let abs = self.root.join(dir);
        let g = load_file(&abs, &abs.join(".gitignore")).map(Arc::new);
        self.dirs.insert(dir.to_path_buf(), g.clone());
        g
    }
}

impl mirror_core::ignore::Ignore for Rules {
    fn has_includes(&self) -> bool {
        Rules::has_includes(self)
    }
    fn is_included(&self, rel: &Path, is_dir: bool) -> bool {
        Rules::is_included(self, rel, is_dir)
    }
    fn is_ignored(&mut self, rel: &Path, is_dir: bool) -> bool {
        Rules::is_ignored(self, rel, is_dir)
    }
    fn ignored_here(&mut self, rel: &Path, is_dir: bool) -> bool {
        Rules::ignored_here(self, rel, is_dir)
    }
    fn invalidate(&mut self, dir: &Path) {
        Rules::invalidate(self, dir);
    }
    fn info_exclude(&self) -> Option<Vec<u8>> {
        std::fs::read(self.root.join(".git/info/exclude")).ok()
    }
}

/// The watcher's own copy of a root's rules: which directories it watches and walks. The engine
/// keeps its [`Rules`] to itself; when it sees a `.gitignore` change it asks the watcher to
/// refresh that directory, and the watcher has this copy read it again ([`DirRules::reload`]).
/// The lock is for the watcher's thread alone (the trait asks for `Sync`); nobody else takes it.
#[derive(Debug)]
pub struct WatchRules(Mutex<Rules>);

impl WatchRules {
    pub fn new(rules: Rules) -> Self {
        Self(Mutex::new(rules))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Rules> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl DirRules for WatchRules {
    fn descend(&self, rel: &Path) -> bool {
        let mut r = self.lock();
        !is_temp(rel) && (r.has_includes() || !r.is_ignored(rel, true))
    }

    fn reload(&self, dir: &Path) {
        let mut r = self.lock();
        if dir.as_os_str().is_empty() {
            r.invalidate_all();
        } else {
            r.invalidate(dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn rules(setup: &[(&str, &str)], inc: &[&str], exc: &[&str]) -> (tempfile::TempDir, Rules) {
        let d = tempfile::tempdir().unwrap();
        for (p, content) in setup {
            let p = d.path().join(p);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, content).unwrap();
        }
        let inc: Vec<String> = inc.iter().map(|s| s.to_string()).collect();
        let exc: Vec<String> = exc.iter().map(|s| s.to_string()).collect();
        let r = Rules::new(d.path(), &inc, &exc).unwrap();
        (d, r)
    }

    #[test]
    fn table() {
        let (_d, mut r) = rules(
            &[
                (".gitignore", "target/\n*.log\n!keep.log\n"),
                ("sub/.gitignore", "gen/\n!important.log\n"),
                (".git/info/exclude", "secret\n"),
            ],
            &["*-SNAPSHOT.jar"],
            &["*.tmp"],
        );
        let rows: &[(&str, bool, bool)] = &[
            ("src/main.rs", false, false),
            ("target", true, true),
            ("target/classes/A.class", false, true),
            ("target/app-1.0-SNAPSHOT.jar", false, false), // include wins
            ("x.log", false, true),
            ("keep.log", false, false),
            ("sub/gen", true, true),
            ("sub/gen/a.rs", false, true),
            ("sub/important.log", false, false), // deeper whitelist wins
            ("other/gen", true, false),
            ("a.tmp", false, true),
            (".git", true, true),
            (".git/config", false, true),
            ("secret", false, true),
            // The agent's directory, at the root only; temp files beside their destination.
            (".mirror-agent.tmp", true, true),
            (".mirror-agent.tmp/recv-0123456789abcdef", false, true),
            ("dir/.mirror-agent.tmp-0123456789abcdef", false, true),
            ("dir/.mirror-agent.tmp-0123456789abcdeg", false, false),
            ("dir/.mirror-agent.tmp-notes", false, false),
            // Users' files that look like the temp names of old versions are theirs.
            (".mirror-tmp-my-notes.txt", false, false),
            ("sub/.mirror-tmp-config", false, false),
        ];
        for (p, is_dir, want) in rows {
            assert_eq!(r.is_ignored(Path::new(p), *is_dir), *want, "{p}");
        }
    }

    #[test]
    fn only_agent_directories_and_recorded_temp_names_are_ours() {
        for (p, ours) in [
            (".mirror-agent.tmp", true),
            (".mirror-agent.tmp/stash-0123456789abcdef", true),
            // Another served root's (`-r a` and `-r a/sub` on one server): not the user's either.
            ("dir/.mirror-agent.tmp", true),
            ("dir/.mirror-agent.tmp/x", true),
            ("dir/.mirror-agent.tmpx", false),
            ("dir/.mirror-agent.tmp-0123456789abcdef", true),
            (".mirror-agent.tmp-0123456789abcdef0", false),
            (".mirror-tmp-0123456789abcdef", false),
        ] {
            assert_eq!(is_temp(Path::new(p)), ours, "{p}");
        }
        // An include pattern does not reach into it.
        let (_d, mut r) = rules(&[], &["*"], &[]);
        assert!(r.is_ignored(Path::new(".mirror-agent.tmp/recv-0123456789abcdef"), false));
    }

    #[test]
    fn include_of_a_git_directory_wins() {
        let (_d, mut r) = rules(&[], &[".git/"], &[]);
        assert!(!r.is_ignored(Path::new(".git/HEAD"), false));
    }

    #[test]
    fn changed_gitignore_takes_effect_after_invalidate() {
        let (d, mut r) = rules(&[(".gitignore", "a\n")], &[], &[]);
        assert!(r.is_ignored(Path::new("a"), false));
        fs::write(d.path().join(".gitignore"), "b\n").unwrap();
        assert!(r.is_ignored(Path::new("a"), false), "cached until invalidated");
        r.invalidate(Path::new(""));
        assert!(!r.is_ignored(Path::new("a"), false));
        assert!(r.is_ignored(Path::new("b"), false));
    }

    #[test]
    fn bad_pattern_is_reported() {
        let d = tempfile::tempdir().unwrap();
        let err = Rules::new(d.path(), &["a{b".into()], &[]).unwrap_err();
        assert!(err.to_string().contains("a{b"), "{err}");
    }
}
