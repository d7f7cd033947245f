//! Names that are one name on this file system: case-insensitive (APFS and HFS+ by default) and
//! normalization-insensitive (`é` as one code point or as `e` + accent) file systems. A Linux peer
//! may hold `Readme` and `README`; here they would be the same file. The replica uses the fold
//! key of each path to refuse such a second spelling instead of letting it overwrite (or delete)
//! the first, and reports the collision; it never syncs both, so nothing ping-pongs.

use mirror_protocol::RelPath;
use unicode_normalization::UnicodeNormalization;

/// How the local file system compares names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Folding {
    pub case: bool,
    pub unicode: bool,
}

impl Folding {
    /// Whether any two different spellings can name one file here.
    pub fn active(self) -> bool {
        self.case || self.unicode
    }

    /// A behaviour named on the command line (the hidden `--test-folding`): `case`, `unicode`,
    /// both comma-separated, or `none`.
    pub fn parse(s: &str) -> Result<Folding, String> {
        let mut f = Folding::default();
        for word in s.split(',').map(str::trim) {
            match word {
                "case" => f.case = true,
                "unicode" => f.unicode = true,
                "none" => {}
                _ => return Err(format!("{word:?} is not a folding (case, unicode, case,unicode or none)")),
            }
        }
        Ok(f)
    }

    /// The name every spelling of `p` shares here (NFC, then lower case, as they apply).
    pub fn key(self, p: &RelPath) -> Vec<u8> {
        let bytes = p.as_bytes();
        match std::str::from_utf8(bytes) {
            Ok(s) => {
                let s: String = if self.unicode { s.nfc().collect() } else { s.to_string() };
                let s = if self.case { s.to_lowercase() } else { s };
                s.into_bytes()
            }
            // Not UTF-8 (not possible on APFS): only ASCII case folds.
            Err(_) if self.case => bytes.to_ascii_lowercase(),
            Err(_) => bytes.to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> RelPath {
        RelPath::new(s).unwrap()
    }

    #[test]
    fn keys_fold_what_the_file_system_folds_and_nothing_else() {
        let none = Folding::default();
        assert!(!none.active());
        assert_ne!(none.key(&r("Readme")), none.key(&r("README")));
        let case = Folding { case: true, unicode: false };
        assert_eq!(case.key(&r("docs/Readme.md")), case.key(&r("DOCS/README.MD")));
        assert_ne!(case.key(&r("caf\u{e9}")), case.key(&r("cafe\u{301}")));
        let uni = Folding { case: false, unicode: true };
        assert_eq!(uni.key(&r("caf\u{e9}")), uni.key(&r("cafe\u{301}")));
        assert_ne!(uni.key(&r("A")), uni.key(&r("a")));
        let both = Folding { case: true, unicode: true };
        assert_eq!(both.key(&r("CAF\u{c9}")), both.key(&r("cafe\u{301}")));
    }

    #[test]
    fn a_folding_named_on_the_command_line_is_parsed_strictly() {
        assert_eq!(Folding::parse("none"), Ok(Folding::default()));
        assert_eq!(Folding::parse("case"), Ok(Folding { case: true, unicode: false }));
        assert_eq!(Folding::parse("unicode, case"), Ok(Folding { case: true, unicode: true }));
        assert!(Folding::parse("cases").is_err());
    }
}
