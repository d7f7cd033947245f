//! [`Origin`]: the host name of the replica that made a version, held once per name.
//!
//! Every entry of an index names its origin (conflict copies are named after it), and a tree
//! holds millions of entries from a handful of hosts: one shared string per host instead of one
//! allocation per entry (about 40 bytes an entry). Names are interned as they are made or
//! decoded, up to [`MAX_INTERNED`] distinct ones: past that (a peer sending a new name with each
//! entry) each is its own allocation, as before, and the table stops growing.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::HashSet;
use std::fmt;
use std::ops::Deref;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

/// Distinct names kept in the table at most.
pub const MAX_INTERNED: usize = 4096;

/// A host name, shared by every entry that names it. On the wire, a string.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Origin(Arc<str>);

fn table() -> &'static Mutex<HashSet<Arc<str>>> {
    static TABLE: OnceLock<Mutex<HashSet<Arc<str>>>> = OnceLock::new();
    TABLE.get_or_init(Mutex::default)
}

impl Origin {
    pub fn new(name: &str) -> Self {
        let mut t = table().lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(a) = t.get(name) {
            return Origin(a.clone());
        }
        let a: Arc<str> = Arc::from(name);
        if t.len() < MAX_INTERNED {
            t.insert(a.clone());
        }
        Origin(a)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `self` and `other` share one string (both came through the table).
    pub fn shares_with(&self, other: &Origin) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Default for Origin {
    fn default() -> Self {
        Origin::new("")
    }
}

impl Deref for Origin {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Origin {
    fn from(s: &str) -> Self {
        Origin::new(s)
    }
}

impl From<String> for Origin {
    fn from(s: String) -> Self {
        Origin::new(&s)
    }
}

impl From<&String> for Origin {
    fn from(s: &String) -> Self {
        Origin::new(s)
    }
}

impl PartialEq<str> for Origin {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<String> for Origin {
    fn eq(&self, other: &String) -> bool {
        *self.0 == **other
    }
}

impl fmt::Debug for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Origin {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Origin {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Name;
        impl serde::de::Visitor<'_> for Name {
            type Value = Origin;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a host name")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Origin, E> {
                Ok(Origin::new(v))
            }
        }
        d.deserialize_str(Name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One test, not two: the table is the process's, and a flood would leave the other no room.
    #[test]
    fn one_name_is_one_string_however_it_came_and_a_flood_stops_at_the_cap() {
        let made = Origin::new("laptop-origin-test");
        let bytes = postcard::to_stdvec(&made).unwrap();
        assert_eq!(bytes, postcard::to_stdvec(&"laptop-origin-test").unwrap(), "on the wire, a string");
        let decoded: Origin = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(decoded, made);
        assert!(decoded.shares_with(&made), "a decoded name was allocated again");
        assert!(Origin::from("laptop-origin-test".to_string()).shares_with(&made));

        for i in 0..MAX_INTERNED + 10 {
            let _ = Origin::new(&format!("flood-{i}"));
        }
        let t = table().lock().unwrap().len();
        assert!(t <= MAX_INTERNED, "the table grew to {t}");
        let late = Origin::new("after-the-table-is-full");
        assert_eq!(late.as_str(), "after-the-table-is-full");
        assert!(Origin::new("laptop-origin-test").shares_with(&made), "a name interned before the flood");
    }
}
