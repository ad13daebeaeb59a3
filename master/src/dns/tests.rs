//! The zone's rules, table-driven: each case is a question and the expected
//! answer in zone-file form (see `Answer`'s `Display`).

use super::*;

const ZONE: &str = "svc.mcp.metacircular.net";
const SOA_LINE: &str = "svc.mcp.metacircular.net. 60 SOA ns1.svc.mcp.metacircular.net. \
                        hostmaster.svc.mcp.metacircular.net. 7 3600 600 1209600 60";

fn cfg() -> DnsConfig {
    DnsConfig {
        ns_addresses: vec![Ipv4Addr::new(10, 0, 0, 53)],
        ..DnsConfig::default()
    }
}

/// web → two addresses; a.b → one (so `b` is an empty non-terminal).
fn records() -> RecordSet {
    let records = Records::with_serial(5);
    records
        .set(
            &format!("web.{ZONE}"),
            vec![Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 1)],
        )
        .expect("valid name");
    records
        .set(&format!("a.b.{ZONE}"), vec![Ipv4Addr::new(10, 0, 0, 3)])
        .expect("valid name");
    RecordSet::clone(&records.snapshot())
}

/// The only caller of `answer` in these tests.
fn check(cfg: &DnsConfig, set: &RecordSet, q_name: &str, q_type: RecordType, expected: &str) {
    let got = answer(q_name, q_type, cfg, set).to_string();
    let expected = expected
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
        .replace("$SOA", SOA_LINE);
    assert_eq!(got, expected, "{q_name} {q_type}");
}

#[test]
fn answers_inside_the_zone() {
    let cfg = cfg();
    let set = records();
    assert_eq!(set.serial(), 7, "two changes after serial 5");
    let cases: &[(&str, RecordType, &str)] = &[
        (
            "web.svc.mcp.metacircular.net.",
            RecordType::A,
            "NOERROR aa
             answer: web.svc.mcp.metacircular.net. 60 A 10.0.0.1
             answer: web.svc.mcp.metacircular.net. 60 A 10.0.0.2",
        ),
        // Without the trailing dot, and in any case: the owner keeps the asker's spelling.
        (
            "web.svc.mcp.metacircular.net",
            RecordType::A,
            "NOERROR aa
             answer: web.svc.mcp.metacircular.net. 60 A 10.0.0.1
             answer: web.svc.mcp.metacircular.net. 60 A 10.0.0.2",
        ),
        (
            "WeB.SVC.mcp.Metacircular.NET.",
            RecordType::A,
            "NOERROR aa
             answer: WeB.SVC.mcp.Metacircular.NET. 60 A 10.0.0.1
             answer: WeB.SVC.mcp.Metacircular.NET. 60 A 10.0.0.2",
        ),
        (
            "web.svc.mcp.metacircular.net.",
            RecordType::ANY,
            "NOERROR aa
             answer: web.svc.mcp.metacircular.net. 60 A 10.0.0.1
             answer: web.svc.mcp.metacircular.net. 60 A 10.0.0.2",
        ),
        // NODATA: the name exists, the type does not.
        (
            "web.svc.mcp.metacircular.net.",
            RecordType::AAAA,
            "NOERROR aa\nauthority: $SOA",
        ),
        (
            "web.svc.mcp.metacircular.net.",
            RecordType::MX,
            "NOERROR aa\nauthority: $SOA",
        ),
        (
            "web.svc.mcp.metacircular.net.",
            RecordType::SOA,
            "NOERROR aa\nauthority: $SOA",
        ),
        // Empty non-terminal: NODATA, not NXDOMAIN (RFC 8020).
        (
            "b.svc.mcp.metacircular.net.",
            RecordType::A,
            "NOERROR aa\nauthority: $SOA",
        ),
        (
            "a.b.svc.mcp.metacircular.net.",
            RecordType::A,
            "NOERROR aa\nanswer: a.b.svc.mcp.metacircular.net. 60 A 10.0.0.3",
        ),
        // NXDOMAIN: unknown names, including below an existing one.
        (
            "nope.svc.mcp.metacircular.net.",
            RecordType::A,
            "NXDOMAIN aa\nauthority: $SOA",
        ),
        (
            "x.web.svc.mcp.metacircular.net.",
            RecordType::A,
            "NXDOMAIN aa\nauthority: $SOA",
        ),
        (
            "nope.svc.mcp.metacircular.net.",
            RecordType::AAAA,
            "NXDOMAIN aa\nauthority: $SOA",
        ),
        // The apex.
        ("svc.mcp.metacircular.net.", RecordType::SOA, "NOERROR aa\nanswer: $SOA"),
        (
            "SVC.mcp.metacircular.net.",
            RecordType::SOA,
            "NOERROR aa
             answer: SVC.mcp.metacircular.net. 60 SOA ns1.svc.mcp.metacircular.net. \
             hostmaster.svc.mcp.metacircular.net. 7 3600 600 1209600 60",
        ),
        (
            "svc.mcp.metacircular.net.",
            RecordType::NS,
            "NOERROR aa
             answer: svc.mcp.metacircular.net. 60 NS ns1.svc.mcp.metacircular.net.
             additional: ns1.svc.mcp.metacircular.net. 60 A 10.0.0.53",
        ),
        (
            "svc.mcp.metacircular.net.",
            RecordType::ANY,
            "NOERROR aa
             answer: $SOA
             answer: svc.mcp.metacircular.net. 60 NS ns1.svc.mcp.metacircular.net.
             additional: ns1.svc.mcp.metacircular.net. 60 A 10.0.0.53",
        ),
        (
            "svc.mcp.metacircular.net.",
            RecordType::A,
            "NOERROR aa\nauthority: $SOA",
        ),
        (
            "svc.mcp.metacircular.net.",
            RecordType::TXT,
            "NOERROR aa\nauthority: $SOA",
        ),
        // The NS name inside the zone answers with its glue.
        (
            "ns1.svc.mcp.metacircular.net.",
            RecordType::A,
            "NOERROR aa\nanswer: ns1.svc.mcp.metacircular.net. 60 A 10.0.0.53",
        ),
        (
            "ns1.svc.mcp.metacircular.net.",
            RecordType::AAAA,
            "NOERROR aa\nauthority: $SOA",
        ),
    ];
    for (name, q_type, expected) in cases {
        check(&cfg, &set, name, *q_type, expected);
    }
}

#[test]
fn refuses_everything_outside_the_zone() {
    let cfg = cfg();
    let set = records();
    for name in [
        "example.com.",
        "web.svc.mcp.metacircular.net.example.com.",
        "mcp.metacircular.net.",
        "metacircular.net.",
        "net.",
        ".",
        "",
        // Shares the suffix, not the label boundary.
        "xsvc.mcp.metacircular.net.",
        "web.xsvc.mcp.metacircular.net.",
    ] {
        for q_type in [RecordType::A, RecordType::SOA, RecordType::NS, RecordType::ANY] {
            check(&cfg, &set, name, q_type, "REFUSED");
        }
    }
}

#[test]
fn zone_settings_shape_the_answers() {
    let set = records();
    // NS names outside the zone get no glue, and the first one is the SOA MNAME.
    let cfg = DnsConfig {
        zone: "Internal.Example.".into(),
        ttl: 300,
        ns: vec!["ns-a.example.net".into(), "ns1.internal.example".into()],
        ns_addresses: vec![Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 2)],
        admin: "ops@example.net".into(),
        ..DnsConfig::default()
    };
    let soa = "internal.example. 300 SOA ns-a.example.net. ops.example.net. 7 3600 600 1209600 300";
    check(
        &cfg,
        &set,
        "internal.example.",
        RecordType::NS,
        "NOERROR aa
         answer: internal.example. 300 NS ns-a.example.net.
         answer: internal.example. 300 NS ns1.internal.example.
         additional: ns1.internal.example. 300 A 192.0.2.1
         additional: ns1.internal.example. 300 A 192.0.2.2",
    );
    check(
        &cfg,
        &set,
        "internal.example.",
        RecordType::SOA,
        &format!("NOERROR aa\nanswer: {soa}"),
    );
    check(
        &cfg,
        &set,
        "nope.internal.example.",
        RecordType::A,
        &format!("NXDOMAIN aa\nauthority: {soa}"),
    );
    // The records of another zone are not served.
    check(&cfg, &set, "web.svc.mcp.metacircular.net.", RecordType::A, "REFUSED");

    // Without glue, the default NS name has no address.
    let bare = DnsConfig::default();
    check(
        &bare,
        &set,
        "svc.mcp.metacircular.net.",
        RecordType::NS,
        "NOERROR aa\nanswer: svc.mcp.metacircular.net. 60 NS ns1.svc.mcp.metacircular.net.",
    );
    check(
        &bare,
        &set,
        "ns1.svc.mcp.metacircular.net.",
        RecordType::A,
        "NXDOMAIN aa\nauthority: $SOA",
    );
}

#[test]
fn records_bump_the_serial_only_on_change() {
    let records = Records::with_serial(100);
    let web = "web.svc.mcp.metacircular.net";
    let ip = |d| Ipv4Addr::new(10, 0, 0, d);
    let before = records.snapshot();

    assert!(records.set(web, vec![ip(1)]).expect("valid"));
    assert_eq!(records.serial(), 101);
    // Same addresses in another order, duplicated, another case, trailing dot: no change.
    assert!(
        !records
            .set("WEB.svc.mcp.metacircular.net.", vec![ip(1), ip(1)])
            .expect("valid")
    );
    assert_eq!(records.serial(), 101);
    assert!(records.set(web, vec![ip(2), ip(1), ip(2)]).expect("valid"));
    assert_eq!(records.serial(), 102);
    assert_eq!(
        records.snapshot().get(web).map(|r| r.a.clone()),
        Some(vec![ip(1), ip(2)])
    );

    // Snapshots are immutable versions.
    assert!(before.is_empty());
    assert_eq!(before.serial(), 100);

    assert!(records.remove("Web.Svc.mcp.metacircular.net."));
    assert_eq!(records.serial(), 103);
    assert!(!records.remove(web));
    assert_eq!(records.serial(), 103);
    assert!(records.snapshot().is_empty());

    // An empty list removes; removing nothing changes nothing.
    assert!(records.set(web, vec![ip(3)]).expect("valid"));
    assert!(records.set(web, vec![]).expect("valid"));
    assert!(!records.set(web, vec![]).expect("valid"));
    assert_eq!(records.serial(), 105);

    // The serial wraps and skips 0.
    let wrapping = Records::with_serial(u32::MAX);
    assert!(wrapping.set(web, vec![ip(1)]).expect("valid"));
    assert_eq!(wrapping.serial(), 1);
}

#[test]
fn records_refuse_invalid_names() {
    let records = Records::with_serial(1);
    let long_label = format!("{}.svc", "a".repeat(64));
    let long_name = format!("{}svc", "abcdefghi.".repeat(26));
    for bad in [
        "",
        ".",
        "web..svc",
        ".web.svc",
        "web svc",
        "web/svc",
        "wéb.svc",
        "-web.svc",
        "web-.svc",
        "web\\.x.svc",
        long_label.as_str(),
        long_name.as_str(),
    ] {
        let result = records.set(bad, vec![Ipv4Addr::LOCALHOST]);
        assert!(matches!(result, Err(DnsError::Name { .. })), "{bad:?}: {result:?}");
    }
    assert_eq!(records.serial(), 1);
    for good in ["web.svc", "WEB.svc.", "_acme-challenge.svc", "a-b.c9.svc", "x"] {
        assert!(records.set(good, vec![Ipv4Addr::LOCALHOST]).is_ok(), "{good:?}");
    }
    assert_eq!(record_name("WEB.Svc.").expect("valid"), "web.svc");
}

#[test]
fn replace_all_swaps_everything_at_once() {
    let records = Records::with_serial(1);
    let ip = |d| Ipv4Addr::new(10, 0, 0, d);
    records.set("old.svc", vec![ip(9)]).expect("valid");
    let changed = records
        .replace_all([
            ("web.svc".to_string(), vec![ip(1)]),
            ("WEB.svc.".to_string(), vec![ip(2), ip(1)]),
            ("api.svc".to_string(), vec![ip(3)]),
            ("empty.svc".to_string(), vec![]),
        ])
        .expect("valid names");
    assert!(changed);
    assert_eq!(records.serial(), 3);
    let set = records.snapshot();
    let listed: Vec<(String, Vec<Ipv4Addr>)> = set.iter().map(|(n, r)| (n.to_string(), r.a.clone())).collect();
    assert_eq!(
        listed,
        vec![
            ("api.svc".to_string(), vec![ip(3)]),
            ("web.svc".to_string(), vec![ip(1), ip(2)])
        ]
    );
    // The same contents again: no change, no new serial.
    assert!(
        !records
            .replace_all([
                ("api.svc".to_string(), vec![ip(3)]),
                ("web.svc".to_string(), vec![ip(2), ip(1)])
            ])
            .expect("valid names")
    );
    assert_eq!(records.serial(), 3);

    // Every invalid name is reported, and nothing changes.
    let err = records
        .replace_all([
            ("ok.svc".to_string(), vec![ip(1)]),
            ("bad name".to_string(), vec![ip(1)]),
            ("also..bad".to_string(), vec![ip(1)]),
        ])
        .expect_err("invalid names");
    let text = err.to_string();
    assert!(text.contains("bad name") && text.contains("also..bad"), "{text}");
    assert_eq!(records.serial(), 3);
    assert_eq!(records.snapshot().len(), 2);
}

#[test]
fn config_defaults_and_unknown_fields() {
    let cfg: DnsConfig = toml::from_str("").expect("empty section");
    assert_eq!(cfg, DnsConfig::default());
    assert!(cfg.listen.is_empty(), "off unless configured");
    assert_eq!(cfg.zone, ZONE);
    assert_eq!(cfg.ttl, 60);
    assert_eq!(cfg.ns_names(), vec![format!("ns1.{ZONE}")]);
    assert_eq!(cfg.admin_name(), format!("hostmaster.{ZONE}"));
    cfg.check().expect("defaults are valid");

    let cfg: DnsConfig = toml::from_str(
        r#"
        listen = ["127.0.0.1:5353", "[::1]:5353"]
        zone = "Internal.Example."
        ttl = 30
        ns = ["NS.Example.net."]
        ns_addresses = ["192.0.2.1"]
        admin = "ops@example.net"
        "#,
    )
    .expect("full section");
    cfg.check().expect("valid");
    assert_eq!(cfg.listen.len(), 2);
    assert_eq!(cfg.apex(), "internal.example");
    assert_eq!(cfg.ns_names(), vec!["ns.example.net".to_string()]);
    assert_eq!(cfg.admin_name(), "ops.example.net");
    assert!(cfg.contains("web.INTERNAL.example."));
    assert!(cfg.contains("internal.example"));
    assert!(!cfg.contains("xinternal.example"));
    assert!(!cfg.contains("example"));

    let err = toml::from_str::<DnsConfig>("listen = []\nport = 53").expect_err("unknown field");
    assert!(err.to_string().contains("port"), "{err}");
}

#[test]
fn config_errors_are_all_reported() {
    let cfg = DnsConfig {
        listen: vec![
            "127.0.0.1:0".parse().expect("addr"),
            "127.0.0.1:5353".parse().expect("addr"),
            "127.0.0.1:5353".parse().expect("addr"),
        ],
        zone: "bad..zone".into(),
        ttl: 0,
        ns: vec!["ns one.example".into()],
        ns_addresses: vec![],
        admin: "a@@b".into(),
    };
    let text = cfg.check().expect_err("invalid").to_string();
    for part in ["zone:", "ttl:", "ns:", "admin:", "port 0", "listed twice"] {
        assert!(text.contains(part), "{part} missing from {text}");
    }
}
