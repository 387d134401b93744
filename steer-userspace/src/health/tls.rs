//! TLS for `https` probes: rustls with the *ring* provider.
//!
//! Trust, by check setting:
//!
//! - `ca_file`: only the certificates of that PEM bundle.
//! - `insecure = true`: any certificate (the handshake signature is still
//!   checked, so the peer must hold the key of the certificate it sends).
//! - neither: the system's roots, loaded once per process with
//!   `rustls-native-certs` (`/etc/ssl/certs` and friends; `SSL_CERT_FILE` /
//!   `SSL_CERT_DIR` override).
//!
//! Client configurations are built ahead of the probes, off the async
//! workers, by [`TlsConfigs::refresh`], one per distinct (`ca_file`,
//! `insecure`); probes take a ready `Arc<ClientConfig>` and never touch the
//! file system. A refresh re-reads a CA file only when its size,
//! modification time or inode changed; a CA file that cannot be read or
//! parsed any more keeps the certificates loaded before (with a warning),
//! so a rotation in progress does not fail every probe.
//!
//! The server name is the check's `sni` if set (sent as SNI and verified
//! against the certificate's DNS names), else the backend's IP address (no
//! SNI is sent; the certificate must carry that IP address).

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::sync::{watch, Notify};

use super::http::io_failure;
use crate::config::{CheckKind, HealthCheck};

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

/// What a client configuration depends on.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct TlsKey {
    /// `None` with `insecure`: the CA file is then not used.
    ca_file: Option<PathBuf>,
    insecure: bool,
}

impl TlsKey {
    fn of(check: &HealthCheck) -> TlsKey {
        TlsKey {
            ca_file: if check.insecure {
                None
            } else {
                check.ca_file.clone()
            },
            insecure: check.insecure,
        }
    }
}

/// Size, modification time and inode: a CA file's contents are re-read when
/// any of them changes (a rewrite in place, or a new file renamed over it).
type Stamp = (u64, Option<SystemTime>, u64);

fn stamp(path: &Path) -> io::Result<Stamp> {
    let meta = std::fs::metadata(path)?;
    Ok((meta.len(), meta.modified().ok(), meta.ino()))
}

struct Loaded {
    /// Of the CA file the configuration was read from.
    stamp: Option<Stamp>,
    /// The configuration, or why there is none (the probe's failure reason).
    config: Result<Arc<ClientConfig>, String>,
    /// Why the CA file could not be reloaded, while an older configuration
    /// is kept (logged once per distinct problem).
    problem: Option<String>,
}

#[derive(Default)]
struct State {
    wanted: HashSet<TlsKey>,
    loaded: HashMap<TlsKey, Loaded>,
}

struct Inner {
    state: Mutex<State>,
    /// Bumped after every refresh; probes waiting for a configuration
    /// watch it.
    version: watch::Sender<u64>,
}

/// The TLS client configurations of a set of https checks, built ahead of
/// the probes.
///
/// [`set_wanted`](TlsConfigs::set_wanted) says which checks need one (no
/// I/O); [`refresh`](TlsConfigs::refresh) (blocking file I/O: run it on a
/// blocking thread) loads the missing ones and re-reads changed CA files;
/// probes take the current configuration without any I/O. Clones share the
/// same configurations.
#[derive(Clone)]
pub struct TlsConfigs {
    inner: Arc<Inner>,
}

impl Default for TlsConfigs {
    fn default() -> TlsConfigs {
        TlsConfigs::new()
    }
}

impl std::fmt::Debug for TlsConfigs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state();
        f.debug_struct("TlsConfigs")
            .field("wanted", &state.wanted.len())
            .field("loaded", &state.loaded.len())
            .finish()
    }
}

impl TlsConfigs {
    /// No configurations yet.
    pub fn new() -> TlsConfigs {
        TlsConfigs {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                version: watch::Sender::new(0),
            }),
        }
    }

    /// Sets wanted, then refreshes on tokio's blocking pool: the
    /// configurations of `checks`, ready for [`probe`](super::probe).
    pub async fn load<'a>(checks: impl IntoIterator<Item = &'a HealthCheck>) -> TlsConfigs {
        let configs = TlsConfigs::new();
        configs.set_wanted(checks);
        let c = configs.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || c.refresh()).await {
            tracing::warn!(target: "steer::health", "loading TLS configurations failed: {e}");
        }
        configs
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Which configurations are needed: those of the https checks among
    /// `checks`. No I/O: the next [`refresh`](TlsConfigs::refresh) loads the
    /// new ones and forgets the others.
    pub fn set_wanted<'a>(&self, checks: impl IntoIterator<Item = &'a HealthCheck>) {
        let wanted = checks
            .into_iter()
            .filter(|c| c.kind == CheckKind::Https)
            .map(TlsKey::of)
            .collect();
        self.state().wanted = wanted;
    }

    /// Loads the wanted configurations not loaded yet and re-reads the CA
    /// files that changed since they were read; forgets the configurations
    /// no longer wanted. **Blocking** (file I/O, and the system trust store
    /// the first time): call it from a blocking thread, not an async worker.
    pub fn refresh(&self) {
        let todo: Vec<(TlsKey, Option<Stamp>, bool)> = {
            let state = self.state();
            state
                .wanted
                .iter()
                .map(|k| {
                    let l = state.loaded.get(k);
                    (
                        k.clone(),
                        l.and_then(|l| l.stamp),
                        l.is_some_and(|l| l.config.is_ok()),
                    )
                })
                .collect()
        };
        let mut updates = Vec::new();
        for (key, old_stamp, have_config) in todo {
            match &key.ca_file {
                None if have_config => {}
                None if key.insecure => updates.push((key, Update::New(None, insecure_config()))),
                None => updates.push((key, Update::New(None, system_config()))),
                Some(path) => match stamp(path) {
                    Ok(s) if Some(s) == old_stamp => updates.push((key, Update::Unchanged)),
                    Ok(s) => {
                        let config = ca_file_config(path);
                        updates.push((key, Update::New(Some(s), config)));
                    }
                    Err(e) => {
                        let reason = format!("TLS: cannot read ca_file {}: {e}", path.display());
                        updates.push((key, Update::New(None, Err(reason))));
                    }
                },
            }
        }
        {
            let mut guard = self.state();
            let state = &mut *guard;
            for (key, update) in updates {
                let old = state.loaded.get_mut(&key);
                match (update, old) {
                    (Update::Unchanged, Some(old)) => {
                        if old.problem.take().is_some() {
                            if let Some(path) = &key.ca_file {
                                tracing::info!(
                                    target: "steer::health",
                                    ca_file = %path.display(),
                                    "ca_file {} is readable again (unchanged)",
                                    path.display()
                                );
                            }
                        }
                    }
                    (Update::Unchanged, None) => {}
                    (Update::New(stamp, Ok(config)), old) => {
                        if let (Some(path), Some(_)) = (&key.ca_file, &old) {
                            tracing::info!(
                                target: "steer::health",
                                ca_file = %path.display(),
                                "ca_file {} changed: reloaded", path.display()
                            );
                        }
                        let loaded = Loaded {
                            stamp,
                            config: Ok(config),
                            problem: None,
                        };
                        state.loaded.insert(key, loaded);
                    }
                    // Keep the configuration loaded before.
                    (Update::New(_, Err(reason)), Some(old)) if old.config.is_ok() => {
                        if old.problem.as_ref() != Some(&reason) {
                            tracing::warn!(
                                target: "steer::health",
                                "{reason}; https probes keep using the certificates loaded before"
                            );
                            old.problem = Some(reason);
                        }
                    }
                    (Update::New(stamp, Err(reason)), old) => {
                        let known = old.is_some_and(|o| o.config.as_ref().err() == Some(&reason));
                        if !known {
                            tracing::warn!(target: "steer::health", "{reason}; https probes using it fail");
                        }
                        let loaded = Loaded {
                            stamp,
                            config: Err(reason),
                            problem: None,
                        };
                        state.loaded.insert(key, loaded);
                    }
                }
            }
            let State { wanted, loaded } = state;
            loaded.retain(|k, _| wanted.contains(k));
        }
        self.inner.version.send_modify(|v| *v += 1);
    }

    /// Refreshes on the blocking pool whenever `wake` is notified, and at
    /// least every `period`. Runs until cancelled.
    pub(crate) async fn refresh_periodically(self, wake: Arc<Notify>, period: Duration) {
        loop {
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(period) => {}
            }
            let configs = self.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || configs.refresh()).await {
                tracing::warn!(target: "steer::health", "refreshing TLS configurations failed: {e}");
            }
        }
    }

    /// The configuration for the https check `check`, without I/O. If it is
    /// wanted but not loaded yet, waits for the refresh that loads it.
    pub(crate) async fn config(&self, check: &HealthCheck) -> Result<Arc<ClientConfig>, String> {
        let key = TlsKey::of(check);
        let mut version = self.inner.version.subscribe();
        loop {
            {
                let state = self.state();
                if let Some(l) = state.loaded.get(&key) {
                    return l.config.clone();
                }
                if !state.wanted.contains(&key) {
                    return Err(
                        "TLS: no client configuration for this check (it was not registered \
                         with TlsConfigs::set_wanted)"
                            .into(),
                    );
                }
            }
            // The sender lives in `self`: this cannot fail.
            let _ = version.changed().await;
        }
    }
}

enum Update {
    /// The CA file has the stamp of the loaded configuration.
    Unchanged,
    /// A configuration (or why there is none) and the stamp it was read at.
    New(Option<Stamp>, Result<Arc<ClientConfig>, String>),
}

fn insecure_config() -> Result<Arc<ClientConfig>, String> {
    static INSECURE: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();
    INSECURE
        .get_or_init(|| {
            let provider = provider();
            let config = ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("TLS: {e}"))?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate { provider }))
                .with_no_client_auth();
            Ok(finish(config))
        })
        .clone()
}

/// The system's trust store, loaded once per process (blocking).
fn system_config() -> Result<Arc<ClientConfig>, String> {
    static SYSTEM: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();
    SYSTEM
        .get_or_init(|| {
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
        })
        .clone()
}

/// Reads and parses a CA bundle (blocking).
fn ca_file_config(path: &Path) -> Result<Arc<ClientConfig>, String> {
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
    with_roots(roots)
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
        _ => format!("TLS: {}", io_failure(e).reason),
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
    use std::sync::atomic::{AtomicU64, Ordering};

    fn check() -> HealthCheck {
        HealthCheck {
            jitter: Duration::ZERO,
            ..HealthCheck::new("tls", CheckKind::Https)
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    /// The configuration `check` gets, bounded in time.
    fn config_of(configs: &TlsConfigs, check: &HealthCheck) -> Result<Arc<ClientConfig>, String> {
        block_on(async {
            tokio::time::timeout(Duration::from_secs(5), configs.config(check))
                .await
                .unwrap_or_else(|_| Err("timed out".into()))
        })
    }

    /// A file under the temp dir, removed on drop.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(tag: &str) -> TempFile {
            static N: AtomicU64 = AtomicU64::new(0);
            TempFile(std::env::temp_dir().join(format!(
                "steer-tls-unit-{}-{tag}-{}.pem",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            )))
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn ca_pem() -> String {
        rcgen::generate_simple_self_signed(vec!["localhost".into()])
            .expect("certificate")
            .cert
            .pem()
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
        let configs = TlsConfigs::new();
        configs.set_wanted([&c]);
        configs.refresh();
        let e = config_of(&configs, &c).err().unwrap_or_default();
        assert!(
            e.starts_with("TLS: cannot read ca_file /nonexistent/steer/ca.pem: "),
            "{e}"
        );
        let file = TempFile::new("empty");
        std::fs::write(&file.0, "not a certificate\n").expect("write");
        c.ca_file = Some(file.0.clone());
        configs.set_wanted([&c]);
        configs.refresh();
        assert_eq!(
            config_of(&configs, &c).err(),
            Some(format!(
                "TLS: no certificates in ca_file {}",
                file.0.display()
            ))
        );
    }

    #[test]
    fn insecure_and_system_configs_build() {
        let mut c = check();
        c.insecure = true;
        let configs = TlsConfigs::new();
        let system = check();
        configs.set_wanted([&c, &system]);
        configs.refresh();
        let a = config_of(&configs, &c).expect("insecure");
        configs.refresh();
        let b = config_of(&configs, &c).expect("insecure");
        assert!(Arc::ptr_eq(&a, &b), "cached");
        assert_eq!(a.alpn_protocols, vec![b"http/1.1".to_vec()]);
        assert!(config_of(&configs, &system).is_ok());
    }

    #[test]
    fn unregistered_checks_get_an_error_not_a_wait() {
        let configs = TlsConfigs::new();
        let e = config_of(&configs, &check()).err().unwrap_or_default();
        assert!(e.contains("not registered"), "{e}");
    }

    #[test]
    fn a_probe_waits_for_the_refresh_that_loads_its_config() {
        let mut c = check();
        c.insecure = true;
        let configs = TlsConfigs::new();
        configs.set_wanted([&c]);
        let got = block_on(async {
            let waiter = {
                let (configs, c) = (configs.clone(), c.clone());
                tokio::spawn(async move { configs.config(&c).await })
            };
            tokio::task::yield_now().await;
            assert!(!waiter.is_finished(), "nothing loaded yet");
            let loader = configs.clone();
            tokio::task::spawn_blocking(move || loader.refresh())
                .await
                .expect("refresh");
            tokio::time::timeout(Duration::from_secs(5), waiter).await
        });
        assert!(matches!(got, Ok(Ok(Ok(_)))), "{got:?}");
    }

    #[test]
    fn ca_file_changes_are_reloaded_and_a_vanished_file_keeps_the_old_config() {
        let file = TempFile::new("rotate");
        let first = ca_pem();
        std::fs::write(&file.0, &first).expect("write");
        let mut c = check();
        c.ca_file = Some(file.0.clone());
        let configs = TlsConfigs::new();
        configs.set_wanted([&c]);
        configs.refresh();
        let a = config_of(&configs, &c).expect("first CA");
        configs.refresh();
        let same = config_of(&configs, &c).expect("first CA");
        assert!(Arc::ptr_eq(&a, &same), "unchanged file: not rebuilt");

        // Another CA; one byte longer, so the size differs whatever the
        // timestamp granularity.
        std::fs::write(&file.0, format!("{}\n", ca_pem())).expect("rewrite");
        configs.refresh();
        let b = config_of(&configs, &c).expect("second CA");
        assert!(!Arc::ptr_eq(&a, &b), "changed file: rebuilt");

        // Gone, then garbage: the last good configuration stays.
        std::fs::remove_file(&file.0).expect("remove");
        configs.refresh();
        let kept = config_of(&configs, &c).expect("kept");
        assert!(Arc::ptr_eq(&b, &kept));
        std::fs::write(&file.0, "garbage").expect("write garbage");
        configs.refresh();
        assert!(Arc::ptr_eq(&b, &config_of(&configs, &c).expect("kept")));

        // A set without the check forgets it.
        configs.set_wanted([]);
        configs.refresh();
        assert!(config_of(&configs, &c).is_err());
    }

    #[test]
    fn periodic_refresh_picks_up_a_changed_ca_file() {
        let file = TempFile::new("periodic");
        std::fs::write(&file.0, ca_pem()).expect("write");
        let mut c = check();
        c.ca_file = Some(file.0.clone());
        let configs = TlsConfigs::new();
        configs.set_wanted([&c]);
        let wake = Arc::new(Notify::new());
        block_on(async {
            let task = tokio::spawn(
                configs
                    .clone()
                    .refresh_periodically(wake.clone(), Duration::from_millis(20)),
            );
            // Loaded by the first period.
            let a = tokio::time::timeout(Duration::from_secs(5), configs.config(&c))
                .await
                .expect("loaded in time")
                .expect("first CA");
            std::fs::write(&file.0, format!("{}\n", ca_pem())).expect("rewrite");
            // Refreshes keep coming (no wake needed): wait for the change.
            let mut version = configs.inner.version.subscribe();
            let changed = tokio::time::timeout(Duration::from_secs(5), async {
                loop {
                    let _ = version.changed().await;
                    match configs.config(&c).await {
                        Ok(b) if !Arc::ptr_eq(&a, &b) => return,
                        _ => {}
                    }
                }
            })
            .await;
            task.abort();
            assert!(changed.is_ok(), "the new CA file was not picked up");
        });
    }

    #[test]
    fn a_wake_refreshes_at_once() {
        let mut c = check();
        c.insecure = true;
        let configs = TlsConfigs::new();
        configs.set_wanted([&c]);
        let wake = Arc::new(Notify::new());
        block_on(async {
            let task = tokio::spawn(
                configs
                    .clone()
                    .refresh_periodically(wake.clone(), Duration::from_secs(3600)),
            );
            wake.notify_one();
            let got = tokio::time::timeout(Duration::from_secs(5), configs.config(&c)).await;
            task.abort();
            assert!(matches!(got, Ok(Ok(_))), "not loaded after a wake");
        });
    }

    #[test]
    fn forgetting() {
        let mut c = check();
        c.insecure = true;
        let configs = TlsConfigs::new();
        configs.set_wanted([&c]);
        configs.refresh();
        assert!(config_of(&configs, &c).is_ok());
        configs.set_wanted([]);
        configs.refresh();
        assert!(config_of(&configs, &c).is_err());
    }
}
