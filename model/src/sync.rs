//! The plan of `mcp sync` (SPEC §7): what to deploy, redeploy and undeploy so
//! the fleet matches the services dir.
//!
//! Pure: it compares definitions and returns actions; the CLI prints the plan
//! (`--dry-run`) or carries it out.

use std::collections::{BTreeMap, BTreeSet};

use crate::service::{ComponentDef, HealthDef, RouteDef, ServiceDef};

/// One step of a sync plan.
#[derive(Debug, Clone, PartialEq)]
pub enum SyncAction {
    /// In the services dir, not deployed.
    Deploy { service: String },
    /// Deployed with a different definition; `changed` lists the differing fields.
    Redeploy { service: String, changed: Vec<String> },
    /// Deployed, no longer in the services dir.
    Undeploy { service: String },
    /// Deployed exactly as defined.
    Unchanged { service: String },
}

impl SyncAction {
    /// Name of the service the action is about.
    pub fn service(&self) -> &str {
        match self {
            SyncAction::Deploy { service }
            | SyncAction::Redeploy { service, .. }
            | SyncAction::Undeploy { service }
            | SyncAction::Unchanged { service } => service,
        }
    }

    /// `deploy`, `redeploy`, `undeploy` or `unchanged`.
    pub fn kind(&self) -> &'static str {
        match self {
            SyncAction::Deploy { .. } => "deploy",
            SyncAction::Redeploy { .. } => "redeploy",
            SyncAction::Undeploy { .. } => "undeploy",
            SyncAction::Unchanged { .. } => "unchanged",
        }
    }
}

/// Plans a sync: `desired` are the definitions in the services dir, `deployed`
/// what the master has placed (name → definition). Sorted by service name;
/// every service of either side appears exactly once (for a name defined
/// twice in `desired`, the first definition counts).
pub fn plan(desired: &[ServiceDef], deployed: &BTreeMap<String, ServiceDef>) -> Vec<SyncAction> {
    let mut want: BTreeMap<&str, &ServiceDef> = BTreeMap::new();
    for def in desired {
        want.entry(def.name.as_str()).or_insert(def);
    }
    let names: BTreeSet<&str> = want
        .keys()
        .copied()
        .chain(deployed.keys().map(String::as_str))
        .collect();
    names
        .into_iter()
        .filter_map(|name| {
            let service = name.to_string();
            Some(match (want.get(name), deployed.get(name)) {
                (Some(_), None) => SyncAction::Deploy { service },
                (None, Some(_)) => SyncAction::Undeploy { service },
                (Some(new), Some(old)) => {
                    let changed = changed_fields(old, new);
                    if changed.is_empty() {
                        SyncAction::Unchanged { service }
                    } else {
                        SyncAction::Redeploy { service, changed }
                    }
                }
                (None, None) => return None,
            })
        })
        .collect()
}

/// Field-level differences between two definitions of the same service, in a stable order.
///
/// Service fields first (`name`, `node`, `tier`, `active`, `path`,
/// `build.images.<image>`), then each component of `new` in order
/// (`components[<name>]` when added, else `components[<name>].<field>`),
/// then removed components, then `components (order)` when the components
/// both sides share are in a different order. Routes follow the same scheme
/// under `components[<name>].routes[<route name or index>]`. Values that
/// mean the same are equal: an absent tier and `worker`, an absent mode and
/// `l4`, an absent and an empty string or build table.
pub fn changed_fields(old: &ServiceDef, new: &ServiceDef) -> Vec<String> {
    let mut d = Diff::default();
    d.field("name", &old.name, &new.name);
    d.field("node", &text(&old.node), &text(&new.node));
    d.field("tier", &tier(old), &tier(new));
    d.field("active", &old.active, &new.active);
    d.field("path", &text(&old.path), &text(&new.path));
    let images = |def: &ServiceDef| def.build.as_ref().map(|b| b.images.clone()).unwrap_or_default();
    let (old_images, new_images) = (images(old), images(new));
    for image in old_images.keys().chain(new_images.keys()).collect::<BTreeSet<_>>() {
        d.field(
            &format!("build.images.{image}"),
            &old_images.get(image),
            &new_images.get(image),
        );
    }
    let key = |c: &ComponentDef| c.name.clone();
    d.list("components", &old.components, &new.components, key, component);
    d.out
}

fn component(d: &mut Diff, at: &str, old: &ComponentDef, new: &ComponentDef) {
    d.field(&format!("{at}.image"), &old.image, &new.image);
    d.field(&format!("{at}.volumes"), &old.volumes, &new.volumes);
    d.field(&format!("{at}.cmd"), &old.cmd, &new.cmd);
    d.field(&format!("{at}.env"), &old.env, &new.env);
    d.field(&format!("{at}.network"), &text(&old.network), &text(&new.network));
    d.field(&format!("{at}.user"), &text(&old.user), &text(&new.user));
    d.field(&format!("{at}.restart"), &text(&old.restart), &text(&new.restart));
    d.field(&format!("{at}.memory"), &text(&old.memory), &text(&new.memory));
    let cpus = |c: &ComponentDef| c.cpus.filter(|&n| n != 0.0);
    d.field(&format!("{at}.cpus"), &cpus(old), &cpus(new));
    match (&old.health, &new.health) {
        (Some(o), Some(n)) => health(d, &format!("{at}.health"), o, n),
        (o, n) => d.field(&format!("{at}.health"), &o.is_some(), &n.is_some()),
    }
    d.list(
        &format!("{at}.routes"),
        &numbered(&old.routes),
        &numbered(&new.routes),
        route_key,
        route,
    );
}

fn health(d: &mut Diff, at: &str, old: &HealthDef, new: &HealthDef) {
    d.field(&format!("{at}.kind"), &old.kind, &new.kind);
    d.field(&format!("{at}.port"), &text(&old.port), &text(&new.port));
    d.field(&format!("{at}.path"), &text(&old.path), &text(&new.path));
}

/// Routes with their index, which keys an unnamed route.
fn numbered(routes: &[RouteDef]) -> Vec<(usize, &RouteDef)> {
    routes.iter().enumerate().collect()
}

fn route_key(r: &(usize, &RouteDef)) -> String {
    match &r.1.name {
        Some(name) if !name.is_empty() => name.clone(),
        _ => r.0.to_string(),
    }
}

fn route(d: &mut Diff, at: &str, old: &(usize, &RouteDef), new: &(usize, &RouteDef)) {
    let (old, new) = (old.1, new.1);
    d.field(&format!("{at}.port"), &old.port, &new.port);
    d.field(&format!("{at}.mode"), &old.mode(), &new.mode());
    d.field(&format!("{at}.hostname"), &text(&old.hostname), &text(&new.hostname));
    d.field(&format!("{at}.public"), &old.public, &new.public);
    d.field(&format!("{at}.backend_tls"), &old.backend_tls, &new.backend_tls);
}

/// An optional string with empty meaning absent, as the gRPC edge maps it.
fn text(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|s| !s.is_empty())
}

fn tier(def: &ServiceDef) -> &str {
    text(&def.tier).unwrap_or("worker")
}

/// Accumulates changed field paths, each once.
#[derive(Default)]
struct Diff {
    out: Vec<String>,
}

impl Diff {
    fn push(&mut self, path: String) {
        if !self.out.contains(&path) {
            self.out.push(path);
        }
    }

    fn field<T: PartialEq + ?Sized>(&mut self, path: &str, old: &T, new: &T) {
        if old != new {
            self.push(path.to_string());
        }
    }

    /// Diffs two lists whose items are identified by `key`: changed fields of
    /// shared items (via `fields`), added, then removed items, then order.
    fn list<T>(
        &mut self,
        at: &str,
        old: &[T],
        new: &[T],
        key: impl Fn(&T) -> String,
        fields: impl Fn(&mut Diff, &str, &T, &T),
    ) {
        let old_keys: Vec<String> = old.iter().map(&key).collect();
        let new_keys: Vec<String> = new.iter().map(&key).collect();
        for (k, n) in new_keys.iter().zip(new) {
            match old_keys.iter().position(|o| o == k) {
                Some(i) => fields(self, &format!("{at}[{k}]"), &old[i], n),
                None => self.push(format!("{at}[{k}]")),
            }
        }
        for k in old_keys.iter().filter(|k| !new_keys.contains(k)) {
            self.push(format!("{at}[{k}]"));
        }
        let old_shared: Vec<&String> = old_keys.iter().filter(|k| new_keys.contains(k)).collect();
        let new_shared: Vec<&String> = new_keys.iter().filter(|k| old_keys.contains(k)).collect();
        if old_shared != new_shared {
            self.push(format!("{at} (order)"));
        }
    }
}

#[cfg(test)]
mod tests {
    //! Table-driven: definitions are TOML documents; a plan is written as
    //! `<kind> <service>[: <changed>, ...]`.

    use super::*;
    use crate::service::parse;

    const WEB: &str = r#"
name = "web"
[[components]]
name = "api"
image = "r.example.net/web:v1"
"#;

    fn def(doc: &str) -> ServiceDef {
        parse("test.toml", doc).unwrap_or_else(|e| panic!("bad test document {doc}: {e}"))
    }

    fn check(old: &str, new: &str, expected: &[&str]) {
        let got = changed_fields(&def(old), &def(new));
        assert_eq!(got, expected, "old:\n{old}\nnew:\n{new}");
    }

    /// `WEB` with `service` lines at the top and `component` lines in `api`.
    fn web(service: &str, component: &str) -> String {
        format!(
            "name = \"web\"\n{service}\n[[components]]\nname = \"api\"\nimage = \"r.example.net/web:v1\"\n{component}\n"
        )
    }

    #[test]
    fn identical() {
        check(WEB, WEB, &[]);
        let full = web(
            "path = \"web\"\n[build.images]\nweb = \"Dockerfile\"",
            "env = [\"A=1\"]\nmemory = \"1G\"\ncpus = 1.5\nhealth = { kind = \"tcp\" }\n\
             [[components.routes]]\nport = 8443",
        );
        check(&full, &full, &[]);
    }

    #[test]
    fn same_meaning_is_no_change() {
        check(WEB, &web("tier = \"worker\"", ""), &[]);
        check(WEB, &web("active = true", ""), &[]);
        check(WEB, &web("[build.images]", ""), &[]);
        check(WEB, &web("path = \"\"", ""), &[]);
        check(WEB, &web("", "network = \"\""), &[]);
        check(
            &web("", "[[components.routes]]\nport = 8443"),
            &web("", "[[components.routes]]\nport = 8443\nmode = \"l4\""),
            &[],
        );
    }

    #[test]
    fn service_fields() {
        check(WEB, &web("node = \"rift\"", ""), &["node"]);
        check(&web("node = \"rift\"", ""), &web("node = \"vade\"", ""), &["node"]);
        check(WEB, &web("tier = \"core\"", ""), &["tier"]);
        check(&web("tier = \"core\"", ""), &web("tier = \"worker\"", ""), &["tier"]);
        check(WEB, &web("active = false", ""), &["active"]);
        check(WEB, &web("path = \"src/web\"", ""), &["path"]);
        check(&WEB.replace("\"web\"", "\"www\""), WEB, &["name"]);
        check(
            WEB,
            &web("node = \"rift\"\nactive = false\npath = \"w\"", ""),
            &["node", "active", "path"],
        );
    }

    #[test]
    fn build_images() {
        let build = |images: &str| web(&format!("[build.images]\n{images}"), "");
        check(WEB, &build("web = \"Dockerfile\""), &["build.images.web"]);
        check(&build("web = \"Dockerfile\""), WEB, &["build.images.web"]);
        check(
            &build("web = \"Dockerfile\""),
            &build("web = \"Dockerfile.prod\""),
            &["build.images.web"],
        );
        check(
            &build("b = \"B\"\nc = \"C\""),
            &build("a = \"A\"\nb = \"B2\"\nc = \"C\""),
            &["build.images.a", "build.images.b"],
        );
    }

    #[test]
    fn component_fields() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "image = \"r.example.net/web:v1\"",
                "image = \"r.example.net/web:v2\"",
                "image",
            ),
            ("", "volumes = [\"/srv/a:/a\"]", "volumes"),
            ("volumes = [\"/srv/a:/a\"]", "volumes = [\"/srv/a:/a:ro\"]", "volumes"),
            ("cmd = [\"serve\"]", "cmd = [\"serve\", \"-v\"]", "cmd"),
            ("env = [\"A=1\"]", "env = [\"A=2\"]", "env"),
            ("env = [\"A=1\", \"B=2\"]", "env = [\"B=2\", \"A=1\"]", "env"),
            ("", "network = \"mcpnet\"", "network"),
            ("user = \"0:0\"", "user = \"1000\"", "user"),
            ("restart = \"always\"", "restart = \"unless-stopped\"", "restart"),
            ("memory = \"512M\"", "memory = \"1G\"", "memory"),
            ("", "memory = \"1G\"", "memory"),
            ("cpus = 1.0", "cpus = 1.5", "cpus"),
            ("cpus = 1.0", "", "cpus"),
            ("", "health = { kind = \"tcp\" }", "health"),
            ("health = { kind = \"tcp\" }", "", "health"),
            (
                "health = { kind = \"tcp\" }",
                "health = { kind = \"grpc\" }",
                "health.kind",
            ),
            (
                "health = { kind = \"tcp\" }",
                "health = { kind = \"tcp\", port = \"rest\" }",
                "health.port",
            ),
            (
                "health = { kind = \"http\", path = \"/a\" }",
                "health = { kind = \"http\", path = \"/b\" }",
                "health.path",
            ),
        ];
        for (old, new, field) in cases {
            // The image line of a case replaces the default one.
            let doc = |c: &str| {
                if c.starts_with("image") {
                    WEB.replace("image = \"r.example.net/web:v1\"", c)
                } else {
                    web("", c)
                }
            };
            check(&doc(old), &doc(new), &[&format!("components[api].{field}")]);
        }
    }

    #[test]
    fn routes() {
        let routes = |r: &str| web("", r);
        let rest = "[[components.routes]]\nname = \"rest\"\nport = 8443";
        let grpc = "[[components.routes]]\nname = \"grpc\"\nport = 9443";
        let cases: &[(String, String, &[&str])] = &[
            // Unnamed single route: keyed by index.
            (
                routes("[[components.routes]]\nport = 8443"),
                routes("[[components.routes]]\nport = 9443"),
                &["components[api].routes[0].port"],
            ),
            (
                routes(rest),
                routes(&rest.replace("8443", "443")),
                &["components[api].routes[rest].port"],
            ),
            (
                routes(rest),
                routes(&format!("{rest}\nmode = \"l7\"")),
                &["components[api].routes[rest].mode"],
            ),
            (
                routes(rest),
                routes(&format!("{rest}\nhostname = \"web.example.net\"")),
                &["components[api].routes[rest].hostname"],
            ),
            (
                routes(&format!("{rest}\nhostname = \"web.example.net\"")),
                routes(&format!("{rest}\nhostname = \"web.example.net\"\npublic = true")),
                &["components[api].routes[rest].public"],
            ),
            (
                routes(rest),
                routes(&format!("{rest}\n{grpc}")),
                &["components[api].routes[grpc]"],
            ),
            (
                routes(&format!("{rest}\n{grpc}")),
                routes(grpc),
                &["components[api].routes[rest]"],
            ),
            (WEB.to_string(), routes(rest), &["components[api].routes[rest]"]),
            // Naming the single route replaces it.
            (
                routes("[[components.routes]]\nport = 8443"),
                routes(rest),
                &["components[api].routes[rest]", "components[api].routes[0]"],
            ),
            (
                routes(&format!("{rest}\n{grpc}")),
                routes(&format!("{grpc}\n{rest}")),
                &["components[api].routes (order)"],
            ),
            (
                routes(&format!("{rest}\n{grpc}")),
                routes(&format!("{}\n{rest}\nmode = \"l7\"", grpc.replace("9443", "9444"))),
                &[
                    "components[api].routes[grpc].port",
                    "components[api].routes[rest].mode",
                    "components[api].routes (order)",
                ],
            ),
        ];
        for (old, new, expected) in cases {
            check(old, new, expected);
        }
    }

    #[test]
    fn components() {
        let worker = "[[components]]\nname = \"worker\"\nimage = \"r.example.net/worker:v1\"";
        let cron = "[[components]]\nname = \"cron\"\nimage = \"r.example.net/cron:v1\"";
        let head = "name = \"web\"\n";
        let api = "[[components]]\nname = \"api\"\nimage = \"r.example.net/web:v1\"";
        let svc = |parts: &[&str]| format!("{head}{}\n", parts.join("\n"));
        check(&svc(&[api]), &svc(&[api, worker]), &["components[worker]"]);
        check(&svc(&[api, worker]), &svc(&[api]), &["components[worker]"]);
        check(&svc(&[api, worker]), &svc(&[worker, api]), &["components (order)"]);
        // Adding or removing alone does not reorder what both sides share.
        check(&svc(&[api, worker]), &svc(&[cron, api, worker]), &["components[cron]"]);
        check(&svc(&[cron, api, worker]), &svc(&[api, worker]), &["components[cron]"]);
        // Service fields, new components in order, removed ones, then order.
        let new = r#"
name = "web"
tier = "core"
[[components]]
name = "worker"
image = "r.example.net/worker:v2"
[[components]]
name = "db"
image = "r.example.net/db:v1"
[[components]]
name = "api"
image = "r.example.net/web:v1"
cmd = ["serve"]
"#;
        check(
            &svc(&[api, cron, worker]),
            new,
            &[
                "tier",
                "components[worker].image",
                "components[db]",
                "components[api].cmd",
                "components[cron]",
                "components (order)",
            ],
        );
    }

    fn check_plan(desired: &[&str], deployed: &[&str], expected: &[&str]) {
        let desired: Vec<ServiceDef> = desired.iter().map(|d| def(d)).collect();
        let deployed: BTreeMap<String, ServiceDef> =
            deployed.iter().map(|d| def(d)).map(|d| (d.name.clone(), d)).collect();
        let got: Vec<String> = plan(&desired, &deployed)
            .iter()
            .map(|a| match a {
                SyncAction::Redeploy { changed, .. } => format!("{} {}: {}", a.kind(), a.service(), changed.join(", ")),
                _ => format!("{} {}", a.kind(), a.service()),
            })
            .collect();
        assert_eq!(got, expected, "desired {desired:?}\ndeployed {deployed:?}");
    }

    fn named(name: &str, image: &str) -> String {
        format!("name = \"{name}\"\n[[components]]\nname = \"{name}\"\nimage = \"r.example.net/{name}:{image}\"\n")
    }

    #[test]
    fn plans() {
        let (a1, a2, b1, c1, d1) = (
            named("a", "v1"),
            named("a", "v2"),
            named("b", "v1"),
            named("c", "v1"),
            named("d", "v1"),
        );
        check_plan(&[], &[], &[]);
        check_plan(&[&b1, &a1], &[], &["deploy a", "deploy b"]);
        check_plan(&[], &[&a1, &b1], &["undeploy a", "undeploy b"]);
        check_plan(&[&a1], &[&a1], &["unchanged a"]);
        check_plan(&[&a2], &[&a1], &["redeploy a: components[a].image"]);
        check_plan(
            &[&d1, &a2, &c1],
            &[&c1, &b1, &a1],
            &[
                "redeploy a: components[a].image",
                "undeploy b",
                "unchanged c",
                "deploy d",
            ],
        );
        // A name defined twice counts once, by its first definition.
        check_plan(&[&a1, &a2], &[&a1], &["unchanged a"]);
    }

    #[test]
    fn action_accessors() {
        let s = || "web".to_string();
        let cases = [
            (SyncAction::Deploy { service: s() }, "deploy"),
            (
                SyncAction::Redeploy {
                    service: s(),
                    changed: vec!["node".into()],
                },
                "redeploy",
            ),
            (SyncAction::Undeploy { service: s() }, "undeploy"),
            (SyncAction::Unchanged { service: s() }, "unchanged"),
        ];
        for (action, kind) in cases {
            assert_eq!((action.service(), action.kind()), ("web", kind));
        }
    }
}
