//! `Config::load`: reading files.

use super::*;

#[test]
fn load_reports_unreadable_file() {
    let path = Path::new("/nonexistent/steer/config.toml");
    let errs = match Config::load(path) {
        Ok(_) => panic!("loaded a missing file"),
        Err(e) => e.0,
    };
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].path, "/nonexistent/steer/config.toml");
    assert!(
        errs[0].message.contains("cannot read"),
        "{}",
        errs[0].message
    );
}

#[test]
fn load_reads_a_file() {
    let dir = std::env::temp_dir().join(format!("steer-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("steer.toml");
    std::fs::write(&path, doc("", WEB)).expect("write");
    let loaded = Config::load(&path);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(loaded.map(|c| c.services.len()), Ok(1));
}

/// A scratch directory, removed on drop.
struct Scratch(tempfile::TempDir);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        Scratch(
            tempfile::Builder::new()
                .prefix(&format!("steer-config-{tag}-"))
                .tempdir()
                .expect("scratch dir"),
        )
    }

    fn dir(&self) -> &Path {
        self.0.path()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir().join(name)
    }
}

/// `Config::load(path)` in a thread, failing the test if it takes more than
/// 10 s (a load that blocks would otherwise hang the test run).
fn load_within_10s(path: &Path) -> Result<Config, ConfigErrors> {
    let (tx, rx) = std::sync::mpsc::channel();
    let owned = path.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(Config::load(&owned));
    });
    rx.recv_timeout(std::time::Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("Config::load({}) did not return", path.display()))
}

#[track_caller]
fn load_error(path: &Path) -> ConfigError {
    match load_within_10s(path) {
        Ok(_) => panic!("loaded {}", path.display()),
        Err(e) => {
            assert_eq!(e.0.len(), 1, "{e}");
            e.0[0].clone()
        }
    }
}

#[test]
fn load_rejects_what_is_not_a_regular_file() {
    let dir = Scratch::new("special");
    let fifo = dir.path("fifo.toml");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("no NUL");
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    for (path, what) in [
        (
            fifo.as_path(),
            "is a FIFO (named pipe); steer reads only regular files",
        ),
        (
            Path::new("/dev/zero"),
            "is a character device; steer reads only regular files",
        ),
        (dir.dir(), "is a directory; steer reads only regular files"),
    ] {
        let e = load_error(path);
        assert_eq!(e.path, path.display().to_string());
        assert!(
            e.message.starts_with("cannot read config file: it ") && e.message.contains(what),
            "{}",
            e.message
        );
    }
}

#[test]
fn load_rejects_a_file_over_64_mib() {
    let dir = Scratch::new("big");
    let big = dir.path("big.toml");
    // Sparse: 64 MiB of zeros (valid UTF-8) plus one byte.
    let f = std::fs::File::create(&big).expect("create");
    f.set_len((64 << 20) + 1).expect("set_len");
    drop(f);
    let e = load_error(&big);
    assert!(e.message.contains("larger than 64 MiB"), "{}", e.message);
    // Exactly 64 MiB is read (and then fails as TOML, not as a file).
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&big)
        .expect("open");
    f.set_len(64 << 20).expect("set_len");
    drop(f);
    let e = load_error(&big);
    assert_eq!(e.path, "(syntax)", "{e}");
}

/// A config with one https check whose `ca_file` is `ca`.
fn with_ca_file(ca: &Path) -> String {
    with_check(&format!("kind = \"https\"\nca_file = \"{}\"", ca.display()))
}

fn write_config(dir: &Scratch, text: &str) -> PathBuf {
    let path = dir.path("steer.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

#[test]
fn load_checks_that_ca_file_holds_pem_certificates() {
    let dir = Scratch::new("ca");
    let missing = dir.path("missing.pem");
    let garbage = dir.path("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").expect("write");
    let key_only = dir.path("key.pem");
    let key = rcgen::KeyPair::generate().expect("key");
    std::fs::write(&key_only, key.serialize_pem()).expect("write");
    let broken = dir.path("broken.pem");
    std::fs::write(
        &broken,
        "-----BEGIN CERTIFICATE-----\n!!!! not base64 !!!!\n-----END CERTIFICATE-----\n",
    )
    .expect("write");
    for (ca, needle) in [
        (&missing, "cannot read"),
        (&garbage, "holds no certificate"),
        (&key_only, "holds no certificate"),
        (&broken, "is not valid PEM"),
        (&dir.dir().to_path_buf(), "is a directory"),
    ] {
        let text = with_ca_file(ca);
        // Parsing alone does not read files ...
        ok(&text);
        // ... loading does, and reports the key's path.
        let errs = match load_within_10s(&write_config(&dir, &text)) {
            Ok(_) => panic!("ca_file {} accepted", ca.display()),
            Err(e) => e.0,
        };
        assert_eq!(errs.len(), 1, "{}", ConfigErrors(errs.clone()));
        assert_eq!(errs[0].path, "health_checks[1].ca_file");
        assert!(
            errs[0].message.contains(&ca.display().to_string()) && errs[0].message.contains(needle),
            "{}: {}",
            ca.display(),
            errs[0].message
        );
    }

    // A real certificate (two, as a bundle) is accepted.
    let good = dir.path("ca.pem");
    let mut pem = String::new();
    for name in ["ca-1", "ca-2"] {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("self-signed");
        pem.push_str(&cert.pem());
    }
    std::fs::write(&good, pem).expect("write");
    let cfg = load_within_10s(&write_config(&dir, &with_ca_file(&good))).expect("valid ca_file");
    assert_eq!(
        cfg.health_checks[1].ca_file.as_deref(),
        Some(good.as_path())
    );
}

#[test]
fn ca_file_of_a_non_https_check_is_not_read() {
    // It is already an error to have one; reading it would add noise.
    let dir = Scratch::new("ca-http");
    let text = with_check("kind = \"http\"\nca_file = \"/nonexistent/ca.pem\"");
    let errs = match load_within_10s(&write_config(&dir, &text)) {
        Ok(_) => panic!("accepted"),
        Err(e) => e.0,
    };
    assert_eq!(errs.len(), 1, "{}", ConfigErrors(errs.clone()));
    assert!(errs[0].message.contains("only valid for kind \"https\""));
}
