//! Service definitions (SPEC §3): the TOML model and its validation.
//!
//! Validation is pure: it takes a parsed definition and returns every problem
//! found, each naming the source, the field and the reason. The same rules
//! run in the CLI (on files) and in the agent (on gRPC requests), so a raw
//! gRPC client cannot slip in what the CLI would refuse.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Zone of internal service names when none is configured.
pub const DEFAULT_ZONE: &str = "svc.mcp.metacircular.net";

/// One service: a set of components placed together on one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceDef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    #[serde(default = "default_true")]
    pub active: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<BuildDef>,
    /// `[snapshot]`: how the service's data is archived (SPEC §11).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<crate::snapshot::SnapshotDef>,
    #[serde(default)]
    pub components: Vec<ComponentDef>,
}

/// `[build.images]`: image name → Dockerfile, for `mcp build`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildDef {
    #[serde(default)]
    pub images: BTreeMap<String, String>,
}

/// One container of a service.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentDef {
    pub name: String,
    pub image: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cmd: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthDef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteDef>,
}

/// A port the component serves, exposed through the proxy.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteDef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Kept wide so an out-of-range value is reported by validation, not by
    /// the TOML decoder with a less helpful message.
    pub port: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default)]
    pub public: bool,
    /// L7 only: the container itself speaks TLS (with the service's
    /// certificate) and the proxy connects to it over TLS.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub backend_tls: bool,
}

/// How to tell that a component is up.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthDef {
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

fn default_true() -> bool {
    true
}

/// Placement tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Core,
    Worker,
}

/// Proxy mode of a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteMode {
    /// TLS passthrough routed by SNI.
    L4,
    /// TLS terminated at the proxy, HTTP reverse-proxied.
    L7,
}

impl ServiceDef {
    /// Tier after defaults; only meaningful on a validated definition.
    pub fn tier(&self) -> Tier {
        match self.tier.as_deref() {
            Some("core") => Tier::Core,
            _ => Tier::Worker,
        }
    }

    /// The component with this name.
    pub fn component(&self, name: &str) -> Option<&ComponentDef> {
        self.components.iter().find(|c| c.name == name)
    }

    /// Container name of a component (SPEC §14): `<service>-<component>`, or
    /// just `<service>` for a component named like its service.
    pub fn container_name(&self, component: &str) -> String {
        container_name(&self.name, component)
    }
}

/// Container name of `component` in `service` (SPEC §14).
pub fn container_name(service: &str, component: &str) -> String {
    if service == component {
        service.to_string()
    } else {
        format!("{service}-{component}")
    }
}

impl RouteDef {
    /// Mode after defaults (`l4`); only meaningful on a validated route.
    pub fn mode(&self) -> RouteMode {
        match self.mode.as_deref() {
            Some("l7") => RouteMode::L7,
            _ => RouteMode::L4,
        }
    }

    /// Name used as key and in `$PORT_<NAME>`; empty for an unnamed single route.
    pub fn key(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }

    /// Hostname after defaults: `<service>.svc.<zone>`.
    pub fn hostname_or_default(&self, service: &str, zone: &str) -> String {
        match &self.hostname {
            Some(h) => h.clone(),
            None => format!("{service}.{zone}"),
        }
    }
}

impl RouteMode {
    /// Wire/config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteMode::L4 => "l4",
            RouteMode::L7 => "l7",
        }
    }
}

/// Environment variable carrying a route's host port: `PORT` for a single
/// unnamed route, else `PORT_<NAME>` (upper-cased, `-` → `_`).
pub fn port_env_name(route_name: &str) -> String {
    if route_name.is_empty() {
        "PORT".to_string()
    } else {
        format!("PORT_{}", route_name.to_ascii_uppercase().replace('-', "_"))
    }
}

/// One problem with a definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path of the offending field, e.g. `components[api].image`.
    pub field: String,
    pub reason: String,
}

/// Every problem found in one definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationErrors {
    /// File path, or a description such as `deploy request`.
    pub source: String,
    pub errors: Vec<FieldError>,
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}: {}: {}", self.source, e.field, e.reason)?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationErrors {}

/// Why a definition could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {field}: {reason}")]
    Parse {
        path: String,
        field: String,
        reason: String,
    },
    #[error("{0}")]
    Invalid(ValidationErrors),
}

/// Parses and validates the text of one definition file. The file name
/// (without `.toml`) must equal the service name, so `mcp deploy <svc>` and
/// `mcp sync` agree on which file describes which service.
pub fn parse_file(path: &Path, text: &str) -> Result<ServiceDef, DefinitionError> {
    let shown = path.display().to_string();
    let def = parse(&shown, text)?;
    let mut problems = validate(&def);
    if let Some(stem) = path.file_stem().and_then(|s| s.to_str())
        && stem != def.name
        && !def.name.is_empty()
    {
        problems.push(FieldError {
            field: "name".into(),
            reason: format!(
                "service name {:?} does not match the file name {:?} (expected {}.toml)",
                def.name, stem, def.name
            ),
        });
    }
    if problems.is_empty() {
        Ok(def)
    } else {
        Err(DefinitionError::Invalid(ValidationErrors {
            source: shown,
            errors: problems,
        }))
    }
}

/// Parses TOML into the model. Unknown fields and type errors are reported
/// with the path of the field and the line.
pub fn parse(source: &str, text: &str) -> Result<ServiceDef, DefinitionError> {
    crate::parse_toml(text).map_err(|(field, reason)| DefinitionError::Parse {
        path: source.to_string(),
        field,
        reason,
    })
}

/// Checks every rule of SPEC §3 and returns all violations (empty = valid).
pub fn validate(def: &ServiceDef) -> Vec<FieldError> {
    let mut v = Validator::default();
    v.service(def);
    v.errors
}

/// Validates and wraps the problems with their source, for callers that
/// want a `Result`.
pub fn check(source: &str, def: &ServiceDef) -> Result<(), ValidationErrors> {
    let errors = validate(def);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ValidationErrors {
            source: source.to_string(),
            errors,
        })
    }
}

#[derive(Default)]
struct Validator {
    errors: Vec<FieldError>,
}

impl Validator {
    fn err(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.errors.push(FieldError {
            field: field.into(),
            reason: reason.into(),
        });
    }

    fn service(&mut self, def: &ServiceDef) {
        if let Err(r) = check_name(&def.name) {
            self.err("name", r);
        }
        if def.node.is_some() && def.tier.is_some() {
            self.err("node", "`node` and `tier` are exclusive: a pinned service has no tier");
        }
        if let Some(node) = &def.node
            && let Err(r) = check_name(node)
        {
            self.err("node", r);
        }
        if let Some(tier) = &def.tier
            && tier != "core"
            && tier != "worker"
        {
            self.err(
                "tier",
                format!("unknown tier {tier:?}: expected \"core\" or \"worker\""),
            );
        }
        if let Some(path) = &def.path
            && path.trim().is_empty()
        {
            self.err("path", "must not be empty");
        }
        if let Some(build) = &def.build {
            for (image, dockerfile) in &build.images {
                let field = format!("build.images.{image}");
                if image.is_empty() {
                    self.err(field.clone(), "image name must not be empty");
                }
                if dockerfile.trim().is_empty() {
                    self.err(field, "Dockerfile path must not be empty");
                }
            }
        }
        if let Some(snap) = &def.snapshot {
            let names: Vec<&str> = def.components.iter().map(|c| c.name.as_str()).collect();
            for (field, reason) in crate::snapshot::validate(snap, &names) {
                self.err(field, reason);
            }
        }
        if def.components.is_empty() {
            self.err("components", "a service needs at least one [[components]] entry");
        }
        let mut seen = BTreeSet::new();
        // (listener port, hostname) → route label: the proxy keys routes so.
        let mut listeners: BTreeMap<(i64, String), String> = BTreeMap::new();
        for (i, c) in def.components.iter().enumerate() {
            let at = if c.name.is_empty() || check_name(&c.name).is_err() {
                format!("components[{i}]")
            } else {
                format!("components[{}]", c.name)
            };
            if let Err(r) = check_name(&c.name) {
                self.err(format!("{at}.name"), r);
            } else if !seen.insert(c.name.clone()) {
                self.err(format!("{at}.name"), format!("duplicate component name {:?}", c.name));
            }
            self.component(&at, def, c, &mut listeners);
        }
    }

    fn component(
        &mut self,
        at: &str,
        def: &ServiceDef,
        c: &ComponentDef,
        listeners: &mut BTreeMap<(i64, String), String>,
    ) {
        if let Err(r) = check_image(&c.image) {
            self.err(format!("{at}.image"), r);
        }
        for (i, vol) in c.volumes.iter().enumerate() {
            if let Err(r) = check_volume(vol) {
                self.err(format!("{at}.volumes[{i}]"), r);
            }
        }
        let mut env_keys = BTreeSet::new();
        for (i, e) in c.env.iter().enumerate() {
            match check_env(e) {
                Ok(key) => {
                    if !env_keys.insert(key.to_string()) {
                        self.err(format!("{at}.env[{i}]"), format!("duplicate variable {key}"));
                    }
                }
                Err(r) => self.err(format!("{at}.env[{i}]"), r),
            }
        }
        if let Some(net) = &c.network {
            if let Err(r) = check_network(net) {
                self.err(format!("{at}.network"), r);
            } else if (net == "host" || net == "none") && !c.routes.is_empty() {
                self.err(
                    format!("{at}.network"),
                    format!("network {net:?} cannot publish the ports its routes need"),
                );
            }
        }
        if let Some(user) = &c.user
            && (user.is_empty() || user.chars().any(|ch| ch.is_whitespace() || ch.is_control()))
        {
            self.err(format!("{at}.user"), "must be a user name or uid[:gid] without spaces");
        }
        if let Some(restart) = &c.restart
            && let Err(r) = check_restart(restart)
        {
            self.err(format!("{at}.restart"), r);
        }
        if let Some(mem) = &c.memory
            && let Err(r) = parse_memory(mem)
        {
            self.err(format!("{at}.memory"), r);
        }
        if let Some(cpus) = c.cpus
            && !(cpus.is_finite() && cpus > 0.0 && cpus <= 1024.0)
        {
            self.err(format!("{at}.cpus"), format!("{cpus} is not a CPU count in (0, 1024]"));
        }

        let mut names = BTreeSet::new();
        let mut env_names: BTreeMap<String, String> = BTreeMap::new();
        for (i, r) in c.routes.iter().enumerate() {
            let rat = match &r.name {
                Some(n) if check_route_name(n).is_ok() => format!("{at}.routes[{n}]"),
                _ => format!("{at}.routes[{i}]"),
            };
            match &r.name {
                None if c.routes.len() > 1 => self.err(
                    format!("{rat}.name"),
                    "a component with several routes must name each of them",
                ),
                None => {}
                Some(n) => {
                    if let Err(reason) = check_route_name(n) {
                        self.err(format!("{rat}.name"), reason);
                    } else if !names.insert(n.clone()) {
                        self.err(format!("{rat}.name"), format!("duplicate route name {n:?}"));
                    } else {
                        let var = port_env_name(n);
                        if let Some(other) = env_names.insert(var.clone(), n.clone()) {
                            self.err(
                                format!("{rat}.name"),
                                format!("routes {other:?} and {n:?} both map to ${var}"),
                            );
                        }
                    }
                }
            }
            if !(1..=65535).contains(&r.port) {
                self.err(format!("{rat}.port"), format!("{} is not a port in 1..=65535", r.port));
            }
            if let Some(mode) = &r.mode
                && mode != "l4"
                && mode != "l7"
            {
                self.err(
                    format!("{rat}.mode"),
                    format!("unknown mode {mode:?}: expected \"l4\" or \"l7\""),
                );
            }
            if let Some(h) = &r.hostname
                && let Err(reason) = check_hostname(h)
            {
                self.err(format!("{rat}.hostname"), reason);
            }
            if r.backend_tls && r.mode() != RouteMode::L7 {
                self.err(
                    format!("{rat}.backend_tls"),
                    "only l7 routes choose TLS to the backend (l4 passes the client's TLS through)",
                );
            }
            if r.public && r.hostname.is_none() {
                self.err(
                    format!("{rat}.hostname"),
                    "a public route needs an explicit public hostname",
                );
            }
            let host = r.hostname_or_default(&def.name, DEFAULT_ZONE);
            let label = format!("{}/{}", c.name, r.key());
            if let Some(other) = listeners.insert((r.port, host.clone()), label.clone()) {
                self.err(
                    format!("{rat}.port"),
                    format!("routes {other} and {label} both claim port {} for {host}", r.port),
                );
            }
        }
        for (var, _) in env_names.iter() {
            if env_keys.contains(var) {
                self.err(
                    format!("{at}.env"),
                    format!("{var} is set by mcp from the route's host port"),
                );
            }
        }
        if c.routes.len() == 1 && c.routes[0].name.is_none() && env_keys.contains("PORT") {
            self.err(format!("{at}.env"), "PORT is set by mcp from the route's host port");
        }
        if let Some(h) = &c.health {
            self.health(at, c, h);
        }
    }

    fn health(&mut self, at: &str, c: &ComponentDef, h: &HealthDef) {
        let at = format!("{at}.health");
        if !matches!(h.kind.as_str(), "tcp" | "http" | "grpc") {
            self.err(
                format!("{at}.kind"),
                format!("unknown kind {:?}: expected \"tcp\", \"http\" or \"grpc\"", h.kind),
            );
        }
        match &h.port {
            Some(p) if !c.routes.iter().any(|r| r.name.as_deref() == Some(p.as_str())) => {
                self.err(format!("{at}.port"), format!("no route named {p:?} in this component"));
            }
            Some(_) => {}
            None if c.routes.len() != 1 => self.err(
                format!("{at}.port"),
                "name the route to probe (the component does not have exactly one route)",
            ),
            None => {}
        }
        if let Some(path) = &h.path {
            if h.kind != "http" {
                self.err(format!("{at}.path"), "only http health checks take a path");
            } else if !path.starts_with('/') {
                self.err(format!("{at}.path"), "must start with /");
            }
        }
    }
}

/// Service, component and node names: `[a-z0-9-]`, 1..=63, a DNS label.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > 63 {
        return Err(format!("{:?} is longer than 63 characters", name));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(format!("{name:?} has {bad:?}: only a-z, 0-9 and - are allowed"));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(format!("{name:?} must not start or end with -"));
    }
    Ok(())
}

fn check_route_name(name: &str) -> Result<(), String> {
    check_name(name)
}

/// Image references must pin a tag other than `latest`, or a digest.
pub fn check_image(image: &str) -> Result<(), String> {
    if image.is_empty() {
        return Err("must not be empty".into());
    }
    if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{image:?} contains whitespace"));
    }
    if let Some((_, digest)) = image.split_once('@') {
        let ok = digest
            .strip_prefix("sha256:")
            .is_some_and(|h| h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()));
        return if ok {
            Ok(())
        } else {
            Err(format!("{image:?} has a malformed digest (expected @sha256:<64 hex>)"))
        };
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.rsplit_once(':') {
        None => Err(format!(
            "{image:?} has no tag: pin a version (an untagged image means latest)"
        )),
        Some((repo, tag)) => {
            if repo.is_empty() {
                return Err(format!("{image:?} has no repository name"));
            }
            if tag == "latest" {
                return Err(format!("{image:?} uses the tag latest: pin a version"));
            }
            let valid = !tag.is_empty()
                && tag.len() <= 128
                && !tag.starts_with(['.', '-'])
                && tag
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
            if valid {
                Ok(())
            } else {
                Err(format!("{image:?} has an invalid tag {tag:?}"))
            }
        }
    }
}

/// Image tag (or short digest) shown as VERSION in `mcp ps`.
pub fn image_version(image: &str) -> String {
    if let Some((_, digest)) = image.split_once('@') {
        return digest.trim_start_matches("sha256:").chars().take(12).collect();
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    last.rsplit_once(':').map(|(_, t)| t.to_string()).unwrap_or_default()
}

const VOLUME_OPTIONS: &[&str] = &[
    "ro", "rw", "z", "Z", "U", "O", "copy", "nocopy", "noexec", "exec", "nosuid", "suid", "nodev", "dev", "rbind",
    "bind", "private", "rprivate", "shared", "rshared", "slave", "rslave",
];

/// `source:target[:options]`, both absolute.
pub fn check_volume(vol: &str) -> Result<(), String> {
    let parts: Vec<&str> = vol.split(':').collect();
    if parts.len() < 2 || parts.len() > 3 {
        return Err(format!("{vol:?} is not source:target[:options]"));
    }
    let (src, dst) = (parts[0], parts[1]);
    if !src.starts_with('/') {
        return Err(format!("source {src:?} must be an absolute path"));
    }
    if src.split('/').any(|s| s == "..") {
        return Err(format!("source {src:?} must not contain .."));
    }
    if !dst.starts_with('/') {
        return Err(format!("target {dst:?} must be an absolute path"));
    }
    if let Some(opts) = parts.get(2) {
        for o in opts.split(',') {
            if !VOLUME_OPTIONS.contains(&o) {
                return Err(format!("unknown volume option {o:?}"));
            }
        }
    }
    Ok(())
}

fn check_env(e: &str) -> Result<&str, String> {
    let Some((key, _)) = e.split_once('=') else {
        return Err(format!("{e:?} is not KEY=VALUE"));
    };
    let mut chars = key.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!("{key:?} is not a valid variable name"));
    }
    Ok(key)
}

fn check_network(net: &str) -> Result<(), String> {
    let mut chars = net.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && net.len() <= 63;
    if ok {
        Ok(())
    } else {
        Err(format!("{net:?} is not a valid network name"))
    }
}

fn check_restart(policy: &str) -> Result<(), String> {
    match policy {
        "no" | "always" | "unless-stopped" | "on-failure" => Ok(()),
        p if p.strip_prefix("on-failure:").is_some_and(|n| n.parse::<u32>().is_ok()) => Ok(()),
        p => Err(format!(
            "unknown restart policy {p:?}: expected no, always, on-failure[:N] or unless-stopped"
        )),
    }
}

/// Parses a memory size such as `512M`, `2G`, `1Gi`, `1048576` into bytes.
pub fn parse_memory(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size such as 512M or 2G"))?;
    let mult: u64 = match unit.to_ascii_lowercase().trim_end_matches('b').trim_end_matches('i') {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return Err(format!("{s:?} has an unknown unit: use K, M, G or T")),
    };
    let bytes = (n * mult as f64) as u64;
    if bytes < 6 << 20 {
        return Err(format!("{s:?} is below the 6M podman accepts"));
    }
    Ok(bytes)
}

/// A DNS name: labels of `[a-z0-9-]`, 1..=63 each, 253 in all.
pub fn check_hostname(h: &str) -> Result<(), String> {
    if h.is_empty() {
        return Err("must not be empty".into());
    }
    if h.len() > 253 {
        return Err(format!("{h:?} is longer than 253 characters"));
    }
    if !h.contains('.') {
        return Err(format!("{h:?} is not a fully qualified name"));
    }
    for label in h.trim_end_matches('.').split('.') {
        if label.is_empty() {
            return Err(format!("{h:?} has an empty label"));
        }
        if label.len() > 63 {
            return Err(format!("{h:?} has a label longer than 63 characters"));
        }
        if let Some(bad) = label
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return Err(format!(
                "{h:?} has {bad:?}: a hostname is lower-case a-z, 0-9, - and dots"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("{h:?} has a label starting or ending with -"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
