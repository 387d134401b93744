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
