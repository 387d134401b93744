//! TLS for `https` probes: rustls with the *ring* provider.
//!
//! Trust, by check setting:
//!
//! - `ca_file`: only the certificates of that PEM bundle. The parsed
//!   configuration is cached per path and rebuilt when the file's size or
//!   modification time changes, so a rotated CA is picked up without a
//!   restart and the file is not re-read on every probe.
//! - `insecure = true`: any certificate (the handshake signature is still
//!   checked, so the peer must hold the key of the certificate it sends).
//! - neither: the system's roots, loaded once per process with
//!   `rustls-native-certs` (`/etc/ssl/certs` and friends; `SSL_CERT_FILE` /
//!   `SSL_CERT_DIR` override).
//!
//! The server name is the check's `sni` if set (sent as SNI and verified
//! against the certificate's DNS names), else the backend's IP address (no
//! SNI is sent; the certificate must carry that IP address).

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::http::describe_io;
use crate::config::HealthCheck;

fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(ring::default_provider()))
        .clone()
}

fn finish(mut config: ClientConfig) -> Arc<ClientConfig> {
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

fn with_roots(roots: RootCertStore) -> Result<Arc<ClientConfig>, String> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(finish(config))
}

/// The client configuration for `check` (see the module docs for trust).
pub(crate) fn client_config(check: &HealthCheck) -> Result<Arc<ClientConfig>, String> {
    if check.insecure {
        static INSECURE: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();
        return INSECURE.get_or_init(insecure_config).clone();
    }
    match &check.ca_file {
        Some(path) => ca_file_config(path),
        None => {
            static SYSTEM: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();
            SYSTEM.get_or_init(system_config).clone()
        }
    }
}

fn insecure_config() -> Result<Arc<ClientConfig>, String> {
    let provider = provider();
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate { provider }))
        .with_no_client_auth();
    Ok(finish(config))
}

fn system_config() -> Result<Arc<ClientConfig>, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        tracing::warn!(
            target: "steer::health",
            errors = ?found.errors,
            "no system CA certificates found: https checks without ca_file or insecure will fail"
        );
    } else {
        tracing::debug!(target: "steer::health", added, ignored, "loaded system CA certificates");
    }
    with_roots(roots)
}

/// Size and modification time: the cache key of a CA file's contents.
type Stamp = (u64, Option<SystemTime>);
/// Parsed `ca_file` configurations by path.
type CaCache = Mutex<HashMap<PathBuf, (Stamp, Arc<ClientConfig>)>>;

fn ca_file_config(path: &Path) -> Result<Arc<ClientConfig>, String> {
    static CACHE: OnceLock<CaCache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("TLS: cannot read ca_file {}: {e}", path.display()))?;
    let stamp = (meta.len(), meta.modified().ok());
    if let Some((s, config)) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(path) {
        if *s == stamp {
            return Ok(config.clone());
        }
    }
    let pem = std::fs::read(path)
        .map_err(|e| format!("TLS: cannot read ca_file {}: {e}", path.display()))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert =
            cert.map_err(|e| format!("TLS: ca_file {}: invalid PEM: {e}", path.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("TLS: ca_file {}: {e}", path.display()))?;
    }
    if roots.is_empty() {
        return Err(format!(
            "TLS: no certificates in ca_file {}",
            path.display()
        ));
    }
    let config = with_roots(roots)?;
    cache
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(path.to_path_buf(), (stamp, config.clone()));
    Ok(config)
}

/// The name the certificate is verified against: `sni`, else the address.
pub(crate) fn server_name(
    check: &HealthCheck,
    address: IpAddr,
) -> Result<ServerName<'static>, String> {
    match &check.sni {
        Some(sni) => ServerName::try_from(sni.clone())
            .map_err(|_| format!("TLS: invalid sni {sni:?} (not a DNS name)")),
        None => Ok(ServerName::IpAddress(address.into())),
    }
}

/// A failure reason for a failed handshake: `"TLS: <error>"`.
pub(crate) fn describe_handshake_error(e: &io::Error) -> String {
    if let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        return format!("TLS: {tls}");
    }
    match e.kind() {
        io::ErrorKind::UnexpectedEof => "TLS: connection closed during the handshake".into(),
        _ => format!("TLS: {}", describe_io(e)),
    }
}

/// `insecure = true`: accepts any certificate for any name, but still checks
/// the handshake signatures with the provider's algorithms.
#[derive(Debug)]
struct AcceptAnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CheckKind;
    use std::time::Duration;

    fn check() -> HealthCheck {
        HealthCheck {
            jitter: Duration::ZERO,
            ..HealthCheck::new("tls", CheckKind::Https)
        }
    }

    #[test]
    fn server_name_is_sni_or_address() {
        let mut c = check();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(server_name(&c, ip), Ok(ServerName::IpAddress(ip.into())));
        c.sni = Some("api.example.com".into());
        assert_eq!(
            server_name(&c, ip).map(|n| n.to_str().into_owned()),
            Ok("api.example.com".to_string())
        );
        c.sni = Some("bad name!".into());
        assert_eq!(
            server_name(&c, ip),
            Err("TLS: invalid sni \"bad name!\" (not a DNS name)".into())
        );
    }

    #[test]
    fn missing_or_empty_ca_file() {
        let mut c = check();
        c.ca_file = Some(PathBuf::from("/nonexistent/steer/ca.pem"));
        let e = client_config(&c).err().unwrap_or_default();
        assert!(
            e.starts_with("TLS: cannot read ca_file /nonexistent/steer/ca.pem: "),
            "{e}"
        );
        let path =
            std::env::temp_dir().join(format!("steer-health-empty-ca-{}.pem", std::process::id()));
        std::fs::write(&path, "not a certificate\n").expect("write");
        c.ca_file = Some(path.clone());
        let e = client_config(&c).err();
        let _ = std::fs::remove_file(&path);
        assert_eq!(
            e,
            Some(format!(
                "TLS: no certificates in ca_file {}",
                path.display()
            ))
        );
    }

    #[test]
    fn insecure_and_system_configs_build() {
        let mut c = check();
        c.insecure = true;
        let a = client_config(&c).expect("insecure");
        let b = client_config(&c).expect("insecure");
        assert!(Arc::ptr_eq(&a, &b), "cached");
        assert_eq!(a.alpn_protocols, vec![b"http/1.1".to_vec()]);
        c.insecure = false;
        assert!(client_config(&c).is_ok());
    }
}
