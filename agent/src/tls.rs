//! TLS 1.3 with mutually pinned identities.
//!
//! There is no certificate authority: each agent presents its self-signed certificate, and each
//! side accepts exactly the peers whose device ID (a digest of the certificate) is in its trust
//! file. The handshake signature is still verified against the presented certificate, so only
//! the holder of the matching private key passes.

use crate::identity::{DeviceId, Identity, Trust};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};
use std::sync::Arc;

/// The crypto provider: ring. A build without the `ring` feature exists only to be type-checked for
/// targets whose C toolchain this machine lacks, and refuses to make TLS.
#[cfg(feature = "ring")]
fn provider() -> Result<Arc<CryptoProvider>, rustls::Error> {
    Ok(Arc::new(rustls::crypto::ring::default_provider()))
}

#[cfg(not(feature = "ring"))]
fn provider() -> Result<Arc<CryptoProvider>, rustls::Error> {
    Err(rustls::Error::General("built without a crypto provider (cargo feature `ring`)".into()))
}

/// The TLS side of one agent: its identity and whom it trusts.
#[derive(Debug, Clone)]
pub struct Tls {
    pub me: DeviceId,
    pub server: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
}

impl Tls {
    pub fn new(identity: &Identity, trust: Trust) -> Result<Tls, rustls::Error> {
        let provider = provider()?;
        let verifier = Arc::new(Pinned { trust, provider: provider.clone() });
        let cert = vec![CertificateDer::from(identity.cert_der.clone())];
        let key = || PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(identity.key_der.clone()));
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier.clone())
            .with_single_cert(cert.clone(), key())?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(cert, key())?;
        Ok(Tls { me: identity.id.clone(), server: Arc::new(server), client: Arc::new(client) })
    }

    pub fn accept(&self) -> Result<rustls::Connection, rustls::Error> {
        let mut c = rustls::ServerConnection::new(self.server.clone())?;
        c.set_buffer_limit(Some(1 << 20));
        Ok(c.into())
    }

    #[cfg(test)]
    pub fn connect(&self) -> Result<rustls::Connection, rustls::Error> {
        self.connect_to("mirror-agent")
    }

    /// A client connection to `addr` (`host:port`). The host is not checked against the
    /// certificate (identities are pinned); it only lets the verifier say, when a server's
    /// identity changed, which one that host had before.
    pub fn connect_to(&self, addr: &str) -> Result<rustls::Connection, rustls::Error> {
        let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h).trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_owned())
            .or_else(|_| ServerName::try_from("mirror-agent"))
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        let mut c = rustls::ClientConnection::new(self.client.clone(), name)?;
        c.set_buffer_limit(Some(1 << 20));
        Ok(c.into())
    }
}

/// The device ID of the peer of an established connection.
pub fn peer_id(c: &rustls::Connection) -> Option<DeviceId> {
    c.peer_certificates().and_then(|certs| certs.first()).map(|cert| DeviceId::of_cert(cert.as_ref()))
}

/// Accepts exactly the certificates whose device ID is trusted.
#[derive(Debug)]
struct Pinned {
    trust: Trust,
    provider: Arc<CryptoProvider>,
}

impl Pinned {
    fn check(&self, cert: &CertificateDer<'_>, role: &str) -> Result<(), rustls::Error> {
        self.check_host(cert, role, None)
    }

    /// [`Pinned::check`], for a server reached as `host`: a host seen before with another
    /// identity is reported as a changed identity, naming the old one.
    fn check_host(&self, cert: &CertificateDer<'_>, role: &str, host: Option<&str>) -> Result<(), rustls::Error> {
        let id = DeviceId::of_cert(cert.as_ref());
        let before = host.and_then(|h| self.trust.server_seen(h));
        if self.trust.contains(&id) {
            if let Some(h) = host
                && before.as_ref() != Some(&id)
                && let Err(e) = self.trust.remember_server(h, &id)
            {
                log::warn!("cannot record the identity of {h} in {}: {e}", self.trust.path().display());
            }
            Ok(())
        } else if let (Some(h), Some(old)) = (host, before.filter(|old| old != &id)) {
            let known = self.trust.comment(&old).map(|c| format!(", trusted as \"{c}\"")).unwrap_or_default();
            Err(rustls::Error::General(format!(
                "the server at {h} changed its identity: it presents {id}, which is not trusted \
                 here, where the last time it was {old}{known}. If the server was re-installed or \
                 re-keyed on purpose, run `{}` on this machine; if not, something else answers at \
                 that address",
                self.trust.command(&id)
            )))
        } else {
            Err(rustls::Error::General(format!(
                "the {role} presented identity {id}, which is not trusted here; if it is yours, run \
                 `{}` on this machine",
                self.trust.command(&id)
            )))
        }
    }
}

type Verify = fn(
    &[u8],
    &CertificateDer<'_>,
    &DigitallySignedStruct,
    &rustls::crypto::WebPkiSupportedAlgorithms,
) -> Result<HandshakeSignatureValid, rustls::Error>;

impl Pinned {
    /// The handshake signature still proves the peer holds the key of the pinned certificate.
    fn signature(
        &self,
        verify: Verify,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify(message, cert, dss, &self.provider.signature_verification_algorithms)
    }
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let host = server_name.to_str();
        let host = (host != "mirror-agent").then_some(&*host);
        self.check_host(end_entity, "server", host).map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signature(verify_tls12_signature, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signature(verify_tls13_signature, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

impl ClientCertVerifier for Pinned {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity, "client").map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signature(verify_tls12_signature, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signature(verify_tls13_signature, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A rustls error as a user should read it.
pub fn explain(e: &rustls::Error, me: &DeviceId) -> String {
    use rustls::AlertDescription as A;
    match e {
        rustls::Error::General(msg) => msg.clone(),
        rustls::Error::AlertReceived(
            A::BadCertificate | A::CertificateUnknown | A::AccessDenied | A::DecryptError | A::HandshakeFailure,
        ) => format!(
            "the peer refused our identity {me} (most likely it does not trust it); on the other \
             machine, run `mirror-agent trust {me}`"
        ),
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => format!(
            "TLS handshake failed ({e}): is the other side started with --insecure (plaintext)? \
             Both sides must agree"
        ),
        e => format!("TLS error: {e}"),
    }
}

/// What to tell a plaintext (`--insecure`) side whose peer answered with a TLS record: without
/// this, the record's bytes were reported as "bad magic bytes". `None` when it is not that.
pub fn plaintext_met_tls(bytes: &[u8], we_are_plaintext: bool) -> Option<String> {
    // A TLS record header: content type 20-23 (change cipher spec, alert, handshake, data),
    // then major version 3.
    let tls = bytes.len() >= 2 && (20..=23).contains(&bytes[0]) && bytes[1] == 3;
    (tls && we_are_plaintext).then(|| {
        "the peer speaks TLS, and this side was started with --insecure (plaintext): drop --insecure \
         (and pair the agents with `mirror-agent id` / `mirror-agent trust`), or start the peer with \
         --insecure too"
            .to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// Runs a handshake between two in-memory connections; returns the first error.
    fn handshake(client: &mut rustls::Connection, server: &mut rustls::Connection) -> Result<(), rustls::Error> {
        for _ in 0..20 {
            let mut buf = Vec::new();
            client.write_tls(&mut buf).unwrap();
            server.read_tls(&mut &buf[..]).unwrap();
            server.process_new_packets()?;
            let mut buf = Vec::new();
            server.write_tls(&mut buf).unwrap();
            client.read_tls(&mut &buf[..]).unwrap();
            client.process_new_packets()?;
            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok(());
            }
        }
        Err(rustls::Error::General("handshake did not finish".into()))
    }

    fn agent() -> (tempfile::TempDir, Identity, Trust) {
        let d = tempfile::tempdir().unwrap();
        let id = Identity::load_or_create(d.path()).unwrap();
        let t = Trust::new(d.path());
        (d, id, t)
    }

    #[test]
    fn mutually_trusted_agents_talk_and_others_are_refused() {
        let (_a, ida, ta) = agent();
        let (_b, idb, tb) = agent();
        let a = Tls::new(&ida, ta.clone()).unwrap();
        let b = Tls::new(&idb, tb.clone()).unwrap();
        // Nobody trusts anybody yet: the client refuses the server and names its ID.
        let err = handshake(&mut a.connect().unwrap(), &mut b.accept().unwrap()).unwrap_err();
        assert!(explain(&err, &a.me).contains(&idb.id.to_string()), "{err}");
        // The client trusts the server, but the server does not trust the client.
        ta.add(&idb.id, "b").unwrap();
        let mut s = b.accept().unwrap();
        let err = handshake(&mut a.connect().unwrap(), &mut s).unwrap_err();
        assert!(explain(&err, &b.me).contains(&ida.id.to_string()), "{err}");
        // Both trust each other: the handshake completes and each knows the other's ID.
        tb.add(&ida.id, "a").unwrap();
        let (mut c, mut s) = (a.connect().unwrap(), b.accept().unwrap());
        handshake(&mut c, &mut s).unwrap();
        assert_eq!(peer_id(&c), Some(idb.id.clone()));
        assert_eq!(peer_id(&s), Some(ida.id.clone()));
        c.writer().write_all(b"hello").unwrap();
        let mut buf = Vec::new();
        c.write_tls(&mut buf).unwrap();
        assert!(!buf.windows(5).any(|w| w == b"hello"), "plaintext on the wire");
        s.read_tls(&mut &buf[..]).unwrap();
        s.process_new_packets().unwrap();
        let mut got = [0u8; 5];
        s.reader().read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
    }
}
