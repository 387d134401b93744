//! `[[client_classes]]` and `[geoip]`: prefixes inline, from files and from
//! a MaxMind database; references; prefixes across classes; residency.

use std::net::IpAddr;
use std::time::Instant;

use super::*;

/// A scratch directory, removed on drop.
struct Scratch(tempfile::TempDir);

impl Scratch {
    fn new() -> Scratch {
        Scratch(
            tempfile::Builder::new()
                .prefix(&format!("steer-config-classes-{}-", std::process::id()))
                .tempdir()
                .expect("scratch dir"),
        )
    }

    fn write(&self, name: &str, content: impl AsRef<[u8]>) -> PathBuf {
        let path = self.0.path().join(name);
        std::fs::write(&path, content).expect("write");
        path
    }

    /// Writes `steer.toml` (`doc("", rest)`) and loads it.
    fn load(&self, rest: &str) -> Result<Config, ConfigErrors> {
        Config::load(&self.write("steer.toml", doc("", rest)))
    }
}

fn p(s: &str) -> ClientPrefix {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

#[track_caller]
fn load_ok(dir: &Scratch, rest: &str) -> Config {
    dir.load(rest)
        .unwrap_or_else(|e| panic!("unexpected errors:\n{e}"))
}

#[track_caller]
fn load_error(dir: &Scratch, rest: &str, path: &str, needle: &str) {
    let errs = match dir.load(rest) {
        Ok(_) => panic!("accepted:\n{rest}"),
        Err(e) => e.0,
    };
    assert!(
        has_error(&errs, path, needle),
        "no error at {path} containing {needle:?}; got:\n{}",
        ConfigErrors(errs.clone())
    );
}

fn class(name: &str, body: &str) -> String {
    format!("\n[[client_classes]]\nname = \"{name}\"\n{body}\n")
}

#[test]
fn inline_prefixes_are_sorted_and_kept_once() {
    let cfg = ok(&doc(
        "",
        &format!(
            "{WEB}{}",
            class(
                "eu",
                "prefixes = [\"2001:db8:1::/48\", \"198.51.100.0/24\", \"192.0.2.0/24\", \"198.51.100.0/24\"]\nregions = [\"eu-west\"]\nallowed_regions = [\"eu-west\"]"
            )
        ),
    ));
    let c = cfg.class("eu").expect("eu");
    assert_eq!(
        c.prefixes,
        [
            p("192.0.2.0/24"),
            p("198.51.100.0/24"),
            p("2001:db8:1::/48")
        ]
    );
    assert_eq!(c.regions, ["eu-west"]);
    assert_eq!(
        c.allowed_regions.as_deref(),
        Some(&["eu-west".to_string()][..])
    );
    assert!(c.prefixes[0].contains_addr("192.0.2.77".parse().expect("literal")));
    assert!(!c.prefixes[0].contains_addr("192.0.3.1".parse().expect("literal")));
    assert_eq!(c.prefixes[2].to_string(), "2001:db8:1::/48");
    assert!(cfg.class("us").is_none());
}

#[test]
fn inline_prefixes_are_checked() {
    let text = doc(
        "",
        &class(
            "eu",
            "prefixes = [\"192.0.2.0/25\", \"2001:db8::/64\", \"192.0.2.1/24\", \"0.0.0.0/0\", \"eu\", \"::ffff:192.0.2.0/120\", 7]",
        ),
    );
    let errs = errors(&text);
    for (path, needle) in [
        (
            "client_classes[0].prefixes[0]",
            "an IPv4 client prefix length must be between 1 and 24",
        ),
        (
            "client_classes[0].prefixes[1]",
            "an IPv6 client prefix length must be between 1 and 48",
        ),
        (
            "client_classes[0].prefixes[2]",
            "has host bits set (did you mean \"192.0.2.0/24\"?)",
        ),
        (
            "client_classes[0].prefixes[3]",
            "length must be between 1 and 24",
        ),
        ("client_classes[0].prefixes[4]", "is not a prefix"),
        ("client_classes[0].prefixes[5]", "IPv4-mapped"),
        ("client_classes[0].prefixes[6]", "expected a string"),
    ] {
        assert!(
            has_error(&errs, path, needle),
            "no {path}: {needle}; got:\n{}",
            ConfigErrors(errs.clone())
        );
    }
}

#[test]
fn class_references_and_shape() {
    let text = doc(
        "",
        &format!(
            "{}{}{}{}",
            class(
                "eu",
                "prefixes = [\"192.0.2.0/24\"]\nregions = [\"eu-west\", \"mars\", \"eu-west\"]\nallowed_regions = [\"venus\"]"
            ),
            class("empty", "regions = [\"eu-west\"]"),
            class("res", "prefixes = [\"198.51.100.0/24\"]\nallowed_regions = []"),
            class("eu", "prefixes = [\"203.0.113.0/24\"]"),
        ),
    );
    let errs = errors(&text);
    for (path, needle) in [
        (
            "client_classes[0].regions[1]",
            "unknown region \"mars\" (defined regions: eu-west, us-east)",
        ),
        ("client_classes[0].regions[2]", "listed twice"),
        (
            "client_classes[0].allowed_regions[0]",
            "unknown region \"venus\"",
        ),
        (
            "client_classes[1]",
            "matches no client: give prefixes, prefix_files, countries or continents",
        ),
        (
            "client_classes[2].allowed_regions",
            "is empty, which would drop every new flow of the class",
        ),
        (
            "client_classes[3].name",
            "duplicate name \"eu\" (also client_classes[0])",
        ),
    ] {
        assert!(
            has_error(&errs, path, needle),
            "no {path}: {needle}; got:\n{}",
            ConfigErrors(errs.clone())
        );
    }
}

#[test]
fn at_most_255_classes() {
    let many: String = (0..256)
        .map(|i| {
            class(
                &format!("c{i}"),
                &format!("prefixes = [\"10.{}.{}.0/24\"]", i / 256, i % 256),
            )
        })
        .collect();
    assert_error(
        &doc("", &many),
        "client_classes",
        "256 classes are more than the data plane can tell apart (255)",
    );
    let most: String = (0..255)
        .map(|i| class(&format!("c{i}"), &format!("prefixes = [\"10.0.{i}.0/24\"]")))
        .collect();
    assert_eq!(ok(&doc("", &most)).client_classes.len(), 255);
}

#[test]
fn a_prefix_in_two_classes_names_both() {
    let text = doc(
        "",
        &format!(
            "{}{}",
            class("eu", "prefixes = [\"192.0.2.0/24\", \"198.51.100.0/24\"]"),
            class(
                "us",
                "prefixes = [\"203.0.113.0/24\", \"192.0.2.0/24\", \"198.51.100.0/24\"]"
            ),
        ),
    );
    assert_error(
        &text,
        "client_classes[1].prefixes[1]",
        "prefix 192.0.2.0/24 is also in class \"eu\" (client_classes[0]) (2 prefixes in common): a client prefix can be in one class only",
    );
}

#[test]
fn classes_inside_a_residency_class_stay_inside_its_regions() {
    let eu = class(
        "eu",
        "prefixes = [\"192.0.0.0/16\", \"2001:db8::/32\"]\nallowed_regions = [\"eu-west\"]",
    );
    // A nested class without residency, and one allowed more.
    let text = doc(
        "",
        &format!(
            "{eu}{}{}",
            class("office", "prefixes = [\"192.0.2.0/24\"]"),
            class(
                "lab",
                "prefixes = [\"2001:db8:5::/48\"]\nallowed_regions = [\"eu-west\", \"us-east\"]"
            ),
        ),
    );
    let errs = errors(&text);
    for (path, needle) in [
        (
            "client_classes[1].prefixes[0]",
            "prefix 192.0.2.0/24 lies inside 192.0.0.0/16 of residency class \"eu\" (client_classes[0]), but it has no allowed_regions",
        ),
        (
            "client_classes[2].prefixes[0]",
            "prefix 2001:db8:5::/48 lies inside 2001:db8::/32 of residency class \"eu\" (client_classes[0]), but its allowed_regions [\"eu-west\", \"us-east\"] are not a subset of that class's [\"eu-west\"]",
        ),
    ] {
        assert!(
            has_error(&errs, path, needle),
            "no {path}: {needle}; got:\n{}",
            ConfigErrors(errs.clone())
        );
    }
    // A subset is fine, and so is a class next to (not inside) it, and a
    // residency class inside a plain class.
    let cfg = ok(&doc(
        "",
        &(format!(
            "{eu}{}{}{}",
            class(
                "office",
                "prefixes = [\"192.0.2.0/24\"]\nallowed_regions = [\"eu-west\"]"
            ),
            class("next", "prefixes = [\"192.1.0.0/24\"]"),
            class(
                "wide",
                "prefixes = [\"10.0.0.0/8\"]\nregions = [\"us-east\"]"
            ),
        ) + &class(
            "inner",
            "prefixes = [\"10.1.0.0/16\"]\nallowed_regions = [\"us-east\"]",
        )),
    ));
    assert_eq!(cfg.client_classes.len(), 5);
}

#[test]
fn countries_need_geoip_and_valid_codes() {
    let text = doc(
        "",
        &format!(
            "{}{}",
            class("de", "countries = [\"DE\"]"),
            class(
                "bad",
                "countries = [\"de\", \"DEU\"]\ncontinents = [\"XX\"]"
            ),
        ),
    );
    let errs = errors(&text);
    for (path, needle) in [
        (
            "client_classes[0].countries",
            "countries are resolved through a MaxMind-format database: add [geoip] database =",
        ),
        (
            "client_classes[1].countries[0]",
            "\"de\" is not a country code (use ISO 3166 alpha-2 codes in upper case",
        ),
        ("client_classes[1].countries[1]", "is not a country code"),
        (
            "client_classes[1].continents[0]",
            "\"XX\" is not a continent code (expected one of: AF, AN, AS, EU, NA, OC, SA)",
        ),
    ] {
        assert!(
            has_error(&errs, path, needle),
            "no {path}: {needle}; got:\n{}",
            ConfigErrors(errs.clone())
        );
    }
    assert_error(
        &doc("", &class("eu", "continents = [\"EU\"]")),
        "client_classes[0].continents",
        "continents are resolved through a MaxMind-format database",
    );
}

#[test]
fn prefix_files_are_read_relative_to_the_config() {
    let dir = Scratch::new();
    dir.write(
        "eu.txt",
        "# EU prefixes\n\n192.0.2.0/24\n  198.51.100.0/24   # office\n2001:db8:1::/48\n\n",
    );
    let cfg = load_ok(
        &dir,
        &format!(
            "{WEB}{}",
            class(
                "eu",
                "prefixes = [\"203.0.113.0/24\"]\nprefix_files = [\"eu.txt\"]\nregions = [\"eu-west\"]"
            )
        ),
    );
    let c = cfg.class("eu").expect("eu");
    assert_eq!(
        c.prefixes,
        [
            p("192.0.2.0/24"),
            p("198.51.100.0/24"),
            p("203.0.113.0/24"),
            p("2001:db8:1::/48")
        ]
    );
    assert_eq!(c.prefix_files, [dir.0.path().join("eu.txt")]);
    // Reading the same files again gives an equal config; a changed file
    // does not (the daemon compares configs on reload).
    let again = load_ok(
        &dir,
        &format!(
            "{WEB}{}",
            class(
                "eu",
                "prefixes = [\"203.0.113.0/24\"]\nprefix_files = [\"eu.txt\"]\nregions = [\"eu-west\"]"
            )
        ),
    );
    assert_eq!(cfg, again);
    dir.write("eu.txt", "192.0.2.0/24\n");
    let changed = load_ok(
        &dir,
        &format!(
            "{WEB}{}",
            class(
                "eu",
                "prefixes = [\"203.0.113.0/24\"]\nprefix_files = [\"eu.txt\"]\nregions = [\"eu-west\"]"
            )
        ),
    );
    assert_ne!(cfg, changed);
    // An absolute path is used as it is.
    let abs = dir.write("abs.txt", "10.0.0.0/8\n");
    let cfg = load_ok(
        &dir,
        &class(
            "a",
            &format!("prefix_files = [{:?}]", abs.display().to_string()),
        ),
    );
    assert_eq!(cfg.client_classes[0].prefixes, [p("10.0.0.0/8")]);
}

#[test]
fn prefix_file_errors_name_the_file_and_line() {
    let dir = Scratch::new();
    let eu = dir.write(
        "eu.txt",
        "192.0.2.0/24\n# fine\n192.0.2.1/24\nnot-a-prefix\n",
    );
    let body = class("eu", "prefix_files = [\"missing.txt\", \"eu.txt\"]");
    let errs = dir.load(&body).expect_err("bad files").0;
    let missing = dir.0.path().join("missing.txt");
    for (path, needle) in [
        (
            "client_classes[0].prefix_files[0]".to_string(),
            format!("cannot read {}: no such file", missing.display()),
        ),
        (
            "client_classes[0].prefix_files[1]".to_string(),
            format!(
                "{} line 3: \"192.0.2.1/24\" has host bits set (did you mean \"192.0.2.0/24\"?)",
                eu.display()
            ),
        ),
        (
            "client_classes[0].prefix_files[1]".to_string(),
            format!("{} line 4: \"not-a-prefix\" is not a prefix", eu.display()),
        ),
    ] {
        assert!(
            has_error(&errs, &path, &needle),
            "no {path}: {needle}; got:\n{}",
            ConfigErrors(errs.clone())
        );
    }
    // Many bad lines: the first ten, then a count.
    dir.write("bad.txt", "x\n".repeat(25));
    let errs = dir
        .load(&class("b", "prefix_files = [\"bad.txt\"]"))
        .expect_err("bad lines")
        .0;
    assert_eq!(errs.len(), 11, "{}", ConfigErrors(errs.clone()));
    assert!(errs[10]
        .message
        .ends_with("15 more bad lines not shown (25 in all)"));
    // At most 1024 files per class.
    let list = vec!["\"eu.txt\""; 1025].join(", ");
    assert_error(
        &doc("", &class("eu", &format!("prefix_files = [{list}]"))),
        "client_classes[0].prefix_files",
        "1025 files are more than a class may list (1024)",
    );
    // Without a config file there is no directory to read them from.
    assert_error(
        &doc("", &class("eu", "prefix_files = [\"eu.txt\"]")),
        "client_classes[0].prefix_files[0]",
        "prefix files are read only when the config is loaded from a file",
    );
    // parse_in reads them relative to the directory given.
    let cfg = Config::parse_in(
        &doc("", &class("eu", "prefix_files = [\"ok.txt\"]")),
        dir.0.path(),
    );
    assert!(cfg.is_err(), "ok.txt does not exist yet");
    dir.write("ok.txt", "192.0.2.0/24\n");
    let cfg = Config::parse_in(
        &doc("", &class("eu", "prefix_files = [\"ok.txt\"]")),
        dir.0.path(),
    )
    .expect("parse_in");
    assert_eq!(cfg.client_classes[0].prefixes, [p("192.0.2.0/24")]);
}

#[test]
fn a_prefix_from_a_file_in_two_classes_names_the_line() {
    let dir = Scratch::new();
    let us = dir.write("us.txt", "203.0.113.0/24\n192.0.2.0/24\n");
    load_error(
        &dir,
        &format!(
            "{}{}",
            class("eu", "prefixes = [\"192.0.2.0/24\"]"),
            class("us", "prefix_files = [\"us.txt\"]"),
        ),
        "client_classes[1].prefix_files[0]",
        &format!(
            "prefix 192.0.2.0/24 ({} line 2) is also in class \"eu\" (client_classes[0])",
            us.display()
        ),
    );
}

/// The test database: DE and FR in Europe, US in North America; IPv4 and
/// IPv6; networks longer than the data plane accepts (/25, /64).
fn geo_db(dir: &Scratch) -> PathBuf {
    dir.write(
        "geo.mmdb",
        super::mmdb::write(&[
            ("192.0.2.0/24", "DE", "EU"),
            ("198.51.100.0/24", "FR", "EU"),
            ("203.0.113.0/25", "US", "NA"),
            // One /24 split between DE and FR.
            ("100.64.0.0/25", "DE", "EU"),
            ("100.64.0.128/25", "FR", "EU"),
            ("2001:db8:10::/48", "DE", "EU"),
            ("2001:db8:20::/64", "FR", "EU"),
        ]),
    )
}

#[test]
fn countries_and_continents_resolve_through_geoip() {
    let dir = Scratch::new();
    geo_db(&dir);
    let geoip = "\n[geoip]\ndatabase = \"geo.mmdb\"\n";
    let cfg = load_ok(
        &dir,
        &format!(
            "{geoip}{}{}{}",
            class("de", "countries = [\"DE\"]"),
            class("fr", "countries = [\"FR\"]"),
            class("na", "continents = [\"NA\"]"),
        ),
    );
    assert_eq!(
        cfg.geoip.as_ref().map(|g| g.database.clone()),
        Some(dir.0.path().join("geo.mmdb"))
    );
    // 100.64.0.0/24 would be in both DE and FR once cut to /24: in neither.
    assert_eq!(
        cfg.class("de").map(|c| c.prefixes.clone()),
        Some(vec![p("192.0.2.0/24"), p("2001:db8:10::/48")])
    );
    assert_eq!(
        cfg.class("fr").map(|c| c.prefixes.clone()),
        Some(vec![p("198.51.100.0/24"), p("2001:db8:20::/48")])
    );
    // A /25 alone in its /24 is cut to the /24.
    assert_eq!(
        cfg.class("na").map(|c| c.prefixes.clone()),
        Some(vec![p("203.0.113.0/24")])
    );
    assert_eq!(
        cfg.class("de").map(|c| c.countries.clone()),
        Some(vec!["DE".to_string()])
    );
    // One class for the continent keeps the split /24 (both halves are its).
    let cfg = load_ok(
        &dir,
        &format!(
            "{geoip}{}",
            class("eu", "continents = [\"EU\"]\nprefixes = [\"10.0.0.0/8\"]")
        ),
    );
    assert_eq!(
        cfg.client_classes[0].prefixes,
        [
            p("10.0.0.0/8"),
            p("100.64.0.0/24"),
            p("192.0.2.0/24"),
            p("198.51.100.0/24"),
            p("2001:db8:10::/48"),
            p("2001:db8:20::/48")
        ]
    );
    // A geoip prefix in a class and inline in another: named, with where
    // it came from.
    load_error(
        &dir,
        &format!(
            "{geoip}{}{}",
            class("office", "prefixes = [\"192.0.2.0/24\"]"),
            class("de", "countries = [\"DE\"]"),
        ),
        "client_classes[1].countries",
        "prefix 192.0.2.0/24 (from the geoip database) is also in class \"office\" (client_classes[0])",
    );
}

#[test]
fn geoip_database_errors() {
    let dir = Scratch::new();
    load_error(
        &dir,
        &format!(
            "\n[geoip]\ndatabase = \"none.mmdb\"\n{}",
            class("de", "countries = [\"DE\"]")
        ),
        "geoip.database",
        &format!(
            "cannot read {}: no such file",
            dir.0.path().join("none.mmdb").display()
        ),
    );
    dir.write("junk.mmdb", "not a database");
    load_error(
        &dir,
        &format!(
            "\n[geoip]\ndatabase = \"junk.mmdb\"\n{}",
            class("de", "countries = [\"DE\"]")
        ),
        "geoip.database",
        "is not a MaxMind DB (.mmdb) database",
    );
    // An unused database is not read.
    let cfg = load_ok(
        &dir,
        &format!(
            "\n[geoip]\ndatabase = \"none.mmdb\"\n{}",
            class("x", "prefixes = [\"192.0.2.0/24\"]")
        ),
    );
    assert!(cfg.geoip.is_some());
    assert_error(
        &doc("", "[geoip]\n"),
        "geoip.database",
        "missing (required)",
    );
    // Text only: no directory to read the database from.
    geo_db(&dir);
    assert_error(
        &doc(
            "",
            &format!(
                "\n[geoip]\ndatabase = {:?}\n{}",
                dir.0.path().join("geo.mmdb").display().to_string(),
                class("de", "countries = [\"DE\"]")
            ),
        ),
        "geoip.database",
        "read only when the config is loaded from a file",
    );
}

/// 1,000,000 prefixes (900,000 IPv4 /24s, 100,000 IPv6 /48s) from one
/// file, in two classes (one a residency class with a class nested in
/// it), load within 2 s even in a debug build. Prints the time (run with
/// `--release --nocapture` for the release figure).
#[test]
fn a_million_prefixes_load_quickly() {
    let dir = Scratch::new();
    let mut text = String::with_capacity(20_000_000);
    text.push_str("# generated\n");
    for i in 0u32..900_000 {
        let a = IpAddr::V4(std::net::Ipv4Addr::from((1u32 << 24) + (i << 8)));
        text.push_str(&format!("{a}/24\n"));
    }
    for i in 0u32..100_000 {
        text.push_str(&format!(
            "2001:{:x}:{:x}::/48\n",
            0x1000 + (i >> 16),
            i & 0xffff
        ));
    }
    dir.write("big.txt", &text);
    let body = format!(
        "{}{}",
        class(
            "big",
            "prefix_files = [\"big.txt\"]\nregions = [\"eu-west\"]\nallowed_regions = [\"eu-west\"]"
        ),
        class(
            "inner",
            "prefixes = [\"1.0.0.0/8\"]\nallowed_regions = [\"eu-west\"]"
        ),
    );
    let start = Instant::now();
    let cfg = load_ok(&dir, &body);
    let took = start.elapsed();
    eprintln!(
        "loaded 1,000,000 prefixes in {took:?} ({} build)",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    assert_eq!(cfg.client_classes[0].prefixes.len(), 1_000_000);
    assert_eq!(cfg.client_classes[0].prefixes[0], p("1.0.0.0/24"));
    assert!(took < Duration::from_secs(2), "took {took:?}");
}
