//! Table-driven tests: each case is a TOML document and the (field, reason
//! fragment) pairs validation must report, or none.

use super::*;

const BASE: &str = r#"
name = "web"
[[components]]
name = "api"
image = "registry.example.net:5000/web:v1.2.0"
"#;

/// Parses and validates `doc`; returns `(field, reason)` of every problem,
/// parse errors included.
fn problems(doc: &str) -> Vec<(String, String)> {
    match parse("web.toml", doc) {
        Err(DefinitionError::Parse { field, reason, .. }) => vec![(field, reason)],
        Err(e) => panic!("unexpected error {e}"),
        Ok(def) => validate(&def).into_iter().map(|e| (e.field, e.reason)).collect(),
    }
}

/// Every expected `(field, fragment)` must appear, and nothing else.
fn check(doc: &str, expected: &[(&str, &str)]) {
    let got = problems(doc);
    assert_eq!(
        got.len(),
        expected.len(),
        "document:\n{doc}\nexpected {expected:?}\ngot {got:?}"
    );
    for (field, fragment) in expected {
        assert!(
            got.iter().any(|(f, r)| f.starts_with(field) && r.contains(fragment)),
            "document:\n{doc}\nmissing ({field}, {fragment}) in {got:?}"
        );
    }
}

fn with(extra: &str) -> String {
    format!("{BASE}{extra}")
}

#[test]
fn valid_definitions() {
    check(BASE, &[]);
    check(
        r#"
name = "myservice"
node = "rift"
active = true
path = "myservice"
[build.images]
myservice = "Dockerfile"
[[components]]
name = "api"
image = "mcr.svc.mcp.metacircular.net:8443/myservice:v1.2.0"
volumes = ["/srv/myservice:/srv/myservice", "/srv/x:/x:ro,Z"]
cmd = ["server", "--config", "/srv/myservice/myservice.toml"]
env = ["LOG_LEVEL=info"]
network = "mcpnet"
user = "0:0"
restart = "unless-stopped"
memory = "512M"
cpus = 1.5
health = { kind = "http", port = "rest", path = "/healthz" }
[[components.routes]]
name = "rest"
port = 8443
mode = "l4"
hostname = "myservice.example.net"
public = true
[[components.routes]]
name = "grpc"
port = 9443
mode = "l7"
[[components]]
name = "worker"
image = "localhost/w@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
restart = "on-failure:3"
"#,
        &[],
    );
}

#[test]
fn parse_errors_name_the_field() {
    check(&format!("colour = \"red\"\n{BASE}"), &[("colour", "unknown field")]);
    check(&with("imagee = \"x\"\n"), &[("components[0].imagee", "unknown field")]);
    check(
        &with("[[components.routes]]\nport = 1\nmodee = \"l4\"\n"),
        &[("components[0].routes[0].modee", "unknown field")],
    );
    check("name = \n", &[("line 1", "")]);
    check(&with("cpus = \"two\"\n"), &[("components[0].cpus", "")]);
    check(
        "[[components]]\nname = \"a\"\nimage = \"x:1\"\n",
        &[("", "missing field `name`")],
    );
}

#[test]
fn service_rules() {
    let cases: &[(&str, &[(&str, &str)])] = &[
        (
            "name = \"Web\"\n[[components]]\nname = \"a\"\nimage = \"x:1\"\n",
            &[("name", "only a-z")],
        ),
        (
            "name = \"\"\n[[components]]\nname = \"a\"\nimage = \"x:1\"\n",
            &[("name", "must not be empty")],
        ),
        (
            "name = \"-web\"\n[[components]]\nname = \"a\"\nimage = \"x:1\"\n",
            &[("name", "start or end")],
        ),
        (
            &*Box::leak(
                format!(
                    "name = \"{}\"\n[[components]]\nname = \"a\"\nimage = \"x:1\"\n",
                    "a".repeat(64)
                )
                .into_boxed_str(),
            ),
            &[("name", "longer than 63")],
        ),
        (
            "name = \"web\"\nnode = \"rift\"\ntier = \"core\"\n[[components]]\nname = \"a\"\nimage = \"x:1\"\n",
            &[("node", "exclusive")],
        ),
        (
            "name = \"web\"\ntier = \"edge\"\n[[components]]\nname = \"a\"\nimage = \"x:1\"\n",
            &[("tier", "unknown tier")],
        ),
        (
            "name = \"web\"\nnode = \"Rift\"\n[[components]]\nname = \"a\"\nimage = \"x:1\"\n",
            &[("node", "only a-z")],
        ),
        ("name = \"web\"\n", &[("components", "at least one")]),
        (
            "name = \"web\"\npath = \" \"\n[[components]]\nname = \"a\"\nimage = \"x:1\"\n",
            &[("path", "empty")],
        ),
        (
            "name = \"web\"\n[build.images]\nweb = \"\"\n[[components]]\nname = \"a\"\nimage = \"x:1\"\n",
            &[("build.images.web", "Dockerfile")],
        ),
    ];
    for (doc, expected) in cases {
        check(doc, expected);
    }
}

#[test]
fn component_rules() {
    let cases: &[(&str, &[(&str, &str)])] = &[
        (
            "[[components]]\nname = \"api\"\nimage = \"x:1\"\n",
            &[("components[api].name", "duplicate component")],
        ),
        (
            "[[components]]\nname = \"Bad_Name\"\nimage = \"x:1\"\n",
            &[("components[1].name", "only a-z")],
        ),
        (
            "volumes = [\"data:/data\"]\n",
            &[("components[api].volumes[0]", "absolute")],
        ),
        (
            "volumes = [\"/srv/data:data\"]\n",
            &[("components[api].volumes[0]", "target")],
        ),
        (
            "volumes = [\"/srv/data\"]\n",
            &[("components[api].volumes[0]", "source:target")],
        ),
        (
            "volumes = [\"/srv/../etc:/x\"]\n",
            &[("components[api].volumes[0]", "..")],
        ),
        (
            "volumes = [\"/srv/a:/a:rx\"]\n",
            &[("components[api].volumes[0]", "unknown volume option")],
        ),
        ("env = [\"NOVALUE\"]\n", &[("components[api].env[0]", "KEY=VALUE")]),
        ("env = [\"1BAD=x\"]\n", &[("components[api].env[0]", "valid variable")]),
        (
            "env = [\"A=1\", \"A=2\"]\n",
            &[("components[api].env[1]", "duplicate variable")],
        ),
        (
            "network = \"bad net\"\n",
            &[("components[api].network", "valid network")],
        ),
        (
            "network = \"host\"\n[[components.routes]]\nport = 80\n",
            &[("components[api].network", "cannot publish")],
        ),
        ("user = \"a b\"\n", &[("components[api].user", "without spaces")]),
        (
            "restart = \"sometimes\"\n",
            &[("components[api].restart", "unknown restart policy")],
        ),
        (
            "restart = \"on-failure:x\"\n",
            &[("components[api].restart", "unknown restart policy")],
        ),
        ("memory = \"lots\"\n", &[("components[api].memory", "not a size")]),
        ("memory = \"12Q\"\n", &[("components[api].memory", "unknown unit")]),
        ("memory = \"1M\"\n", &[("components[api].memory", "below")]),
        ("cpus = 0.0\n", &[("components[api].cpus", "CPU count")]),
        ("cpus = -1.0\n", &[("components[api].cpus", "CPU count")]),
    ];
    for (extra, expected) in cases {
        check(&with(extra), expected);
    }
}

#[test]
fn image_rules() {
    let cases: &[(&str, Option<&str>)] = &[
        ("busybox", Some("no tag")),
        ("busybox:latest", Some("latest")),
        ("registry:5000/busybox", Some("no tag")),
        ("registry:5000/busybox:latest", Some("latest")),
        ("registry:5000/busybox:1.36", None),
        ("busybox:v1.2.3-rc1_x", None),
        ("busybox:-bad", Some("invalid tag")),
        ("busybox:", Some("invalid tag")),
        ("busybox@sha256:abc", Some("malformed digest")),
        ("bus box:1", Some("whitespace")),
        ("", Some("must not be empty")),
        (":1", Some("no repository")),
    ];
    for (image, expected) in cases {
        let got = check_image(image);
        match expected {
            None => assert!(got.is_ok(), "{image}: {got:?}"),
            Some(fragment) => {
                let e = got.expect_err(image);
                assert!(e.contains(fragment), "{image}: {e}");
            }
        }
    }
    check(
        "name = \"web\"\n[[components]]\nname = \"api\"\nimage = \"busybox:latest\"\n",
        &[("components[api].image", "latest")],
    );
}

#[test]
fn route_rules() {
    let cases: &[(&str, &[(&str, &str)])] = &[
        (
            "[[components.routes]]\nport = 0\n",
            &[("components[api].routes[0].port", "1..=65535")],
        ),
        (
            "[[components.routes]]\nport = 70000\n",
            &[("components[api].routes[0].port", "1..=65535")],
        ),
        (
            "[[components.routes]]\nport = 443\nmode = \"l5\"\n",
            &[("components[api].routes[0].mode", "unknown mode")],
        ),
        (
            "[[components.routes]]\nport = 443\nhostname = \"Bad.example.net\"\n",
            &[("components[api].routes[0].hostname", "lower-case")],
        ),
        (
            "[[components.routes]]\nport = 443\nhostname = \"bad..example.net\"\n",
            &[("components[api].routes[0].hostname", "empty label")],
        ),
        (
            "[[components.routes]]\nport = 443\nhostname = \"-a.example.net\"\n",
            &[("components[api].routes[0].hostname", "starting or ending")],
        ),
        (
            "[[components.routes]]\nport = 443\nhostname = \"localhost\"\n",
            &[("components[api].routes[0].hostname", "fully qualified")],
        ),
        (
            "[[components.routes]]\nport = 443\nhostname = \"a_b.example.net\"\n",
            &[("components[api].routes[0].hostname", "'_'")],
        ),
        (
            "[[components.routes]]\nport = 443\npublic = true\n",
            &[("components[api].routes[0].hostname", "public hostname")],
        ),
        (
            "[[components.routes]]\nport = 443\nbackend_tls = true\n",
            &[("components[api].routes[0].backend_tls", "only l7")],
        ),
        (
            "[[components.routes]]\nport = 443\nmode = \"l7\"\nbackend_tls = true\n",
            &[],
        ),
        (
            "[[components.routes]]\nname = \"a\"\nport = 443\n[[components.routes]]\nname = \"a\"\nport = 444\n",
            &[("components[api].routes[a].name", "duplicate route")],
        ),
        (
            "[[components.routes]]\nport = 443\n[[components.routes]]\nname = \"b\"\nport = 444\n",
            &[("components[api].routes[0].name", "must name each")],
        ),
        (
            "[[components.routes]]\nname = \"a-b\"\nport = 443\n[[components.routes]]\nname = \"a\"\nport = 444\nhostname = \"x.example.net\"\n",
            &[],
        ),
        (
            "[[components.routes]]\nname = \"a\"\nport = 443\n[[components.routes]]\nname = \"b\"\nport = 443\n",
            &[("components[api].routes[b].port", "both claim port 443")],
        ),
        (
            "env = [\"PORT_REST=1\"]\n[[components.routes]]\nname = \"rest\"\nport = 443\n",
            &[("components[api].env", "PORT_REST is set by mcp")],
        ),
        (
            "env = [\"PORT=1\"]\n[[components.routes]]\nport = 443\n",
            &[("components[api].env", "PORT is set by mcp")],
        ),
    ];
    for (extra, expected) in cases {
        check(&with(extra), expected);
    }
}

#[test]
fn health_rules() {
    let cases: &[(&str, &[(&str, &str)])] = &[
        ("health = { kind = \"tcp\" }\n[[components.routes]]\nport = 80\n", &[]),
        (
            "health = { kind = \"icmp\" }\n[[components.routes]]\nport = 80\n",
            &[("components[api].health.kind", "unknown kind")],
        ),
        (
            "health = { kind = \"tcp\", port = \"rest\" }\n[[components.routes]]\nport = 80\n",
            &[("components[api].health.port", "no route named")],
        ),
        (
            "health = { kind = \"tcp\" }\n",
            &[("components[api].health.port", "name the route")],
        ),
        (
            "health = { kind = \"tcp\", path = \"/x\" }\n[[components.routes]]\nport = 80\n",
            &[("components[api].health.path", "only http")],
        ),
        (
            "health = { kind = \"http\", path = \"x\" }\n[[components.routes]]\nport = 80\n",
            &[("components[api].health.path", "start with /")],
        ),
    ];
    for (extra, expected) in cases {
        check(&with(extra), expected);
    }
}

#[test]
fn reports_all_problems_at_once() {
    let doc = "name = \"Web\"\nnode = \"a\"\ntier = \"core\"\n[[components]]\nname = \"api\"\nimage = \"x\"\nvolumes = [\"rel:/x\"]\n[[components.routes]]\nport = 0\nmode = \"l9\"\n";
    let got = problems(doc);
    let fields: Vec<&str> = got.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(
        fields,
        [
            "name",
            "node",
            "components[api].image",
            "components[api].volumes[0]",
            "components[api].routes[0].port",
            "components[api].routes[0].mode"
        ]
    );
}

#[test]
fn file_name_must_match_service_name() {
    let err = parse_file(Path::new("/defs/other.toml"), BASE).unwrap_err().to_string();
    assert!(err.contains("other.toml: name:"), "{err}");
    assert!(err.contains("does not match the file name"), "{err}");
    assert_eq!(parse_file(Path::new("/defs/web.toml"), BASE).unwrap().name, "web");
}

#[test]
fn helpers() {
    assert_eq!(port_env_name(""), "PORT");
    assert_eq!(port_env_name("rest"), "PORT_REST");
    assert_eq!(port_env_name("admin-api"), "PORT_ADMIN_API");
    assert_eq!(container_name("web", "api"), "web-api");
    assert_eq!(container_name("web", "web"), "web");
    assert_eq!(image_version("r:5000/web:v1.2"), "v1.2");
    assert_eq!(image_version("web@sha256:0123456789abcdef0123"), "0123456789ab");
    assert_eq!(parse_memory("512M").unwrap(), 512 << 20);
    assert_eq!(parse_memory("2Gi").unwrap(), 2 << 30);
    assert_eq!(parse_memory("1.5g").unwrap(), 3 << 29);
}

#[test]
fn snapshot_section() {
    let cases: &[(&str, &[(&str, &str)])] = &[
        ("[snapshot]\n", &[]),
        (
            "[snapshot]\nmethod = \"default\"\nexclude = [\"*.log\", \"cache/**\"]\n",
            &[],
        ),
        (
            "[snapshot]\nmethod = \"exec:sqlite3 /d/x.db .dump\"\ncomponent = \"api\"\n",
            &[],
        ),
        (
            "[snapshot]\nmethod = \"tar\"\n",
            &[("snapshot.method", "unknown method")],
        ),
        ("[snapshot]\nexclude = [\"../etc\"]\n", &[("snapshot.exclude[0]", "..")]),
        (
            "[snapshot]\nmethod = \"exec:x\"\ncomponent = \"nope\"\n",
            &[("snapshot.component", "no component")],
        ),
        (
            "[snapshot]\nschedule = \"daily\"\n",
            &[("snapshot.schedule", "unknown field")],
        ),
    ];
    for (extra, want) in cases {
        // [snapshot] must precede [[components]] in TOML.
        let doc = format!(
            "name = \"web\"\n{extra}{}",
            &BASE[BASE.find("[[components]]").unwrap()..]
        );
        check(&doc, want);
    }
}
