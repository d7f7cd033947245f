//! The fixed 12-byte preamble each side sends first: magic bytes and the protocol version.
//!
//! It sits outside the framed, serde-encoded part on purpose: whatever later versions do to the
//! message encoding, a peer can still read these 12 bytes and say precisely what is wrong
//! (not our protocol at all, TLS where plaintext was expected, or another version).

use std::fmt;

/// Magic bytes that open every connection.
pub const MAGIC: [u8; 8] = *b"MIRRAGNT";

/// Length of the encoded preamble.
pub const PREAMBLE_LEN: usize = 12;

/// The opening bytes of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preamble {
    pub version: u32,
}

/// Why a peer's preamble was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreambleError {
    /// The bytes look like a TLS handshake: the peer uses TLS and we do not (or the reverse).
    LooksLikeTls,
    /// The bytes are not the mirror-agent magic.
    BadMagic,
    /// A mirror-agent peer, but of another protocol version.
    VersionMismatch { ours: u32, theirs: u32 },
}

impl fmt::Display for PreambleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LooksLikeTls => {
                write!(f, "peer opened a TLS handshake but this side speaks plaintext (--insecure on one side only?)")
            }
            Self::BadMagic => write!(f, "peer does not speak the mirror-agent protocol (bad magic bytes)"),
            Self::VersionMismatch { ours, theirs } => write!(
                f,
                "protocol version mismatch: we speak version {ours}, the peer speaks version {theirs}; \
                 run the same mirror-agent release on both sides"
            ),
        }
    }
}

impl std::error::Error for PreambleError {}

impl Preamble {
    /// The preamble of this build.
    pub fn ours() -> Self {
        Self { version: crate::PROTOCOL_VERSION }
    }

    /// The 12 bytes on the wire.
    pub fn encode(&self) -> [u8; PREAMBLE_LEN] {
        let mut out = [0u8; PREAMBLE_LEN];
        out[..8].copy_from_slice(&MAGIC);
        out[8..].copy_from_slice(&self.version.to_be_bytes());
        out
    }

    /// Parses a peer's preamble from the start of `bytes`.
    ///
    /// `Ok(None)` means more bytes are needed; the magic is checked as soon as the bytes that
    /// disagree have arrived, so a wrong peer is refused without waiting for all twelve.
    pub fn decode(bytes: &[u8]) -> Result<Option<Self>, PreambleError> {
        // A TLS record header: handshake (22), major version 3.
        if bytes.len() >= 2 && bytes[0] == 0x16 && bytes[1] == 0x03 {
            return Err(PreambleError::LooksLikeTls);
        }
        let n = bytes.len().min(MAGIC.len());
        if bytes[..n] != MAGIC[..n] {
            return Err(PreambleError::BadMagic);
        }
        if bytes.len() < PREAMBLE_LEN {
            return Ok(None);
        }
        let mut v = [0u8; 4];
        v.copy_from_slice(&bytes[8..PREAMBLE_LEN]);
        let version = u32::from_be_bytes(v);
        if version != crate::PROTOCOL_VERSION {
            return Err(PreambleError::VersionMismatch { ours: crate::PROTOCOL_VERSION, theirs: version });
        }
        Ok(Some(Self { version }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_bytes() {
        assert_eq!(&Preamble::ours().encode(), b"MIRRAGNT\x00\x00\x00\x05");
    }

    #[test]
    fn partial_input_needs_more() {
        let full = Preamble::ours().encode();
        for cut in 0..PREAMBLE_LEN {
            assert_eq!(Preamble::decode(&full[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(Preamble::decode(&full), Ok(Some(Preamble::ours())));
    }

    #[test]
    fn wrong_magic_is_refused_early() {
        assert_eq!(Preamble::decode(b"GET / HTTP/1.1"), Err(PreambleError::BadMagic));
        assert_eq!(Preamble::decode(b"MIX"), Err(PreambleError::BadMagic));
    }

    #[test]
    fn tls_client_hello_is_named() {
        assert_eq!(Preamble::decode(&[0x16, 0x03, 0x01, 0x02]), Err(PreambleError::LooksLikeTls));
    }

    #[test]
    fn version_mismatch_names_both_versions() {
        let other = Preamble { version: 7 }.encode();
        let err = Preamble::decode(&other).unwrap_err();
        assert_eq!(err, PreambleError::VersionMismatch { ours: 5, theirs: 7 });
        let text = err.to_string();
        assert!(text.contains("version 5") && text.contains("version 7"), "{text}");
    }
}
