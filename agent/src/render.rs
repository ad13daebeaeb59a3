//! `mcp render`: the exact `podman run` commands that reproduce a service
//! from the registry — the manual fallback when nothing else works. Pure:
//! specs in, shell text out.

use crate::handle::Agent;
use crate::outcome::OpError;
use crate::runtime::spec::{ContainerSpec, LABEL_HASH};

/// Quotes `s` for a POSIX shell (single quotes; bare when safe).
pub fn quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | ':' | '=' | ',' | '@' | '+'));
    if safe {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The commands for one container: its network (if any) and `podman run`.
pub fn podman_run(spec: &ContainerSpec) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(net) = &spec.network
        && net != "host"
        && net != "none"
    {
        out.push(format!(
            "podman network exists {n} || podman network create {n}",
            n = quote(net)
        ));
    }
    let mut args: Vec<String> = vec![
        "podman".into(),
        "run".into(),
        "-d".into(),
        "--name".into(),
        quote(&spec.name),
    ];
    let mut labels: Vec<(&String, &String)> = spec.labels.iter().collect();
    labels.sort();
    for (k, v) in labels {
        args.push("--label".into());
        args.push(quote(&format!("{k}={v}")));
    }
    // The hash label marks the container as created from this exact spec,
    // so the agent takes it as its own afterwards.
    args.push("--label".into());
    args.push(quote(&format!("{LABEL_HASH}={}", spec.hash())));
    args.push("--restart".into());
    args.push(quote(&spec.restart));
    for p in &spec.ports {
        args.push("-p".into());
        args.push(format!("0.0.0.0:{p}:{p}"));
    }
    for e in &spec.env {
        args.push("-e".into());
        args.push(quote(e));
    }
    for v in &spec.volumes {
        args.push("-v".into());
        args.push(quote(v));
    }
    if let Some(net) = &spec.network {
        args.push("--network".into());
        args.push(quote(net));
    }
    if let Some(user) = &spec.user {
        args.push("--user".into());
        args.push(quote(user));
    }
    if let Some(m) = spec.memory {
        args.push("--memory".into());
        args.push(m.to_string());
    }
    if let Some(c) = spec.nano_cpus {
        args.push("--cpus".into());
        args.push(format!("{}", c as f64 / 1e9));
    }
    args.push(quote(&spec.image));
    args.extend(spec.cmd.iter().map(|c| quote(c)));
    out.push(args.join(" "));
    out
}

impl Agent {
    /// The commands that reproduce `service` from the registry, in start
    /// order; components recorded as stopped are created stopped.
    pub fn render(&self, service: &str) -> Result<Vec<String>, OpError> {
        let rec = self.recorded(service)?;
        let mut out = vec![format!(
            "# {service} on {}: recorded {} component(s); run as the podman user (e.g. mcp)",
            self.name(),
            rec.components.len()
        )];
        for c in &rec.components {
            let mut cmds = podman_run(&c.spec);
            if (c.desired != crate::registry::Desired::Running || !rec.def.active)
                && let Some(last) = cmds.last_mut()
            {
                *last = last.replacen("podman run -d ", "podman create ", 1);
            }
            out.extend(cmds);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn quoting() {
        for (input, want) in [
            ("plain", "plain"),
            ("A=1", "A=1"),
            ("hello world", "'hello world'"),
            ("it's", r"'it'\''s'"),
            ("$HOME", "'$HOME'"),
            ("", "''"),
            ("a;b", "'a;b'"),
        ] {
            assert_eq!(quote(input), want, "{input}");
        }
    }

    #[test]
    fn run_command() {
        let spec = ContainerSpec {
            name: "web-api".into(),
            image: "r/web:v1".into(),
            cmd: vec!["sh".into(), "-c".into(), "echo hi; exec x".into()],
            env: vec!["GREETING=hello world".into(), "PORT=10001".into()],
            ports: vec![10001],
            volumes: vec!["/srv/web:/data:ro".into()],
            network: Some("mcpnet".into()),
            user: Some("1000:1000".into()),
            restart: "unless-stopped".into(),
            memory: Some(64 << 20),
            nano_cpus: Some(1_500_000_000),
            labels: BTreeMap::from([("mcp.service".to_string(), "web".to_string())]),
        };
        let cmds = podman_run(&spec);
        assert_eq!(cmds[0], "podman network exists mcpnet || podman network create mcpnet");
        let want = format!(
            "podman run -d --name web-api --label mcp.service=web --label mcp.spec-hash={} --restart unless-stopped \
             -p 0.0.0.0:10001:10001 -e 'GREETING=hello world' -e PORT=10001 -v /srv/web:/data:ro --network mcpnet \
             --user 1000:1000 --memory 67108864 --cpus 1.5 r/web:v1 sh -c 'echo hi; exec x'",
            spec.hash()
        );
        assert_eq!(cmds[1], want);
    }
}
