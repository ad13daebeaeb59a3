//! `AdoptContainers`: take over running containers that follow mcp's
//! naming (`<service>` or `<service>-<component>`) but that the registry
//! does not know — created by hand, by an older tool, or left when the
//! registry was lost — recording their spec as podman reports it. They keep
//! running untouched; the next deploy or repair recreates them with mcp's
//! labels.

use std::collections::BTreeMap;

use mcp_model::service::{self, ComponentDef, ServiceDef};

use crate::handle::Agent;
use crate::outcome::OpError;
use crate::registry::{ComponentRecord, Desired, ServiceRecord};
use crate::runtime::spec::{ContainerSpec, DEFAULT_RESTART, LABEL_COMPONENT, LABEL_NODE, LABEL_SERVICE};

/// The component a container name stands for in `service`, if it follows
/// the naming of SPEC §14. Pure.
pub fn component_of(service: &str, container: &str) -> Option<String> {
    if container == service {
        return Some(service.to_string());
    }
    let rest = container.strip_prefix(service)?.strip_prefix('-')?;
    (!rest.is_empty() && !rest.ends_with("-mcp-prev") && service::check_name(rest).is_ok()).then(|| rest.to_string())
}

/// A container spec from an inspect document. Refuses what mcp cannot
/// reproduce: a host port published to a different container port.
pub fn spec_from_inspect(
    v: &serde_json::Value,
    name: &str,
    labels: BTreeMap<String, String>,
) -> Result<ContainerSpec, String> {
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
            .unwrap_or_default()
    };
    let hc = &v["HostConfig"];
    let mut ports = Vec::new();
    if let Some(m) = hc["PortBindings"].as_object() {
        for (container_port, binds) in m {
            let cport: u16 = container_port
                .split('/')
                .next()
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| format!("unreadable port {container_port}"))?;
            for b in binds.as_array().map(Vec::as_slice).unwrap_or_default() {
                let Some(hp) = b["HostPort"].as_str().and_then(|p| p.parse::<u16>().ok()) else {
                    continue;
                };
                if hp != cport {
                    return Err(format!(
                        "publishes host port {hp} to container port {cport}; mcp publishes host ports to the \
                         same container port — redeploy it with mcp instead"
                    ));
                }
                ports.push(hp);
            }
        }
    }
    ports.sort();
    ports.dedup();
    let network = hc["NetworkMode"]
        .as_str()
        .filter(|n| !n.is_empty() && !matches!(*n, "default" | "bridge" | "slirp4netns" | "private"))
        .map(str::to_string);
    let user = v["Config"]["User"]
        .as_str()
        .filter(|u| !u.is_empty())
        .map(str::to_string);
    let restart = hc["RestartPolicy"]["Name"]
        .as_str()
        .filter(|r| !r.is_empty())
        .unwrap_or(DEFAULT_RESTART)
        .to_string();
    let memory = hc["Memory"].as_u64().filter(|m| *m > 0);
    let nano_cpus = hc["NanoCpus"].as_i64().filter(|c| *c > 0);
    let image = v["Config"]["Image"].as_str().unwrap_or_default().to_string();
    if image.is_empty() {
        return Err("inspect reports no image".into());
    }
    Ok(ContainerSpec {
        name: name.to_string(),
        image,
        cmd: strings(&v["Config"]["Cmd"]),
        env: strings(&v["Config"]["Env"]),
        ports,
        volumes: strings(&hc["Binds"]),
        network,
        user,
        restart,
        memory,
        nano_cpus,
        labels,
    })
}

/// What an adoption did.
#[derive(Debug, Default)]
pub struct Adopted {
    pub adopted: Vec<String>,
    /// Containers that match the naming but could not be adopted, and why.
    pub refused: Vec<String>,
}

impl Agent {
    /// Adopts the unknown containers of `service` (see the module docs).
    pub async fn adopt(&self, name: &str) -> Result<Adopted, OpError> {
        service::check_name(name).map_err(|r| OpError::Invalid(format!("service name {name:?}: {r}")))?;
        let _guard = self.lock(name).await;
        let existing = self.registry.service(name)?;
        let mut rec = existing.clone().unwrap_or_else(|| ServiceRecord {
            def: ServiceDef {
                name: name.to_string(),
                node: Some(self.name().to_string()),
                tier: None,
                active: true,
                path: None,
                build: None,
                snapshot: None,
                components: vec![],
            },
            components: vec![],
            routes: vec![],
            updated_at: 0,
        });
        let mut out = Adopted::default();
        let mut names: Vec<String> = self.runtime.list_all().await?.into_keys().collect();
        names.sort();
        for container in names {
            let Some(component) = component_of(name, &container) else {
                continue;
            };
            if self.registry.container_owner(&container)?.is_some() || rec.component(&component).is_some() {
                continue;
            }
            let Some(v) = self.runtime.inspect_raw(&container).await? else {
                continue;
            };
            let labels = BTreeMap::from([
                (LABEL_SERVICE.to_string(), name.to_string()),
                (LABEL_COMPONENT.to_string(), component.clone()),
                (LABEL_NODE.to_string(), self.name().to_string()),
            ]);
            let spec = match spec_from_inspect(&v, &container, labels) {
                Ok(s) => s,
                Err(e) => {
                    out.refused.push(format!("{container}: {e}"));
                    continue;
                }
            };
            let running = v["State"]["Running"].as_bool().unwrap_or(false);
            rec.def.components.push(ComponentDef {
                name: component.clone(),
                image: spec.image.clone(),
                volumes: spec.volumes.clone(),
                cmd: spec.cmd.clone(),
                env: spec.env.clone(),
                network: spec.network.clone(),
                user: spec.user.clone(),
                restart: Some(spec.restart.clone()),
                ..Default::default()
            });
            rec.components.push(ComponentRecord {
                name: component,
                desired: if running { Desired::Running } else { Desired::Stopped },
                observed: v["State"]["Status"].as_str().unwrap_or("unknown").to_string(),
                container_id: v["Id"].as_str().unwrap_or_default().to_string(),
                spec,
            });
            out.adopted.push(container);
        }
        if out.adopted.is_empty() {
            if out.refused.is_empty() {
                return Err(OpError::NotFound(format!(
                    "no container named {name} or {name}-<component> that the registry does not know"
                )));
            }
            return Err(OpError::Invalid(format!("nothing adopted: {}", out.refused.join("; "))));
        }
        self.registry
            .save(&rec, ("adopted", &format!("adopted {}", out.adopted.join(", "))))?;
        tracing::info!(service = name, adopted = ?out.adopted, "adopted containers");
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn naming() {
        assert_eq!(component_of("web", "web").as_deref(), Some("web"));
        assert_eq!(component_of("web", "web-api").as_deref(), Some("api"));
        assert_eq!(component_of("web", "webapi"), None);
        assert_eq!(component_of("web", "web-"), None);
        assert_eq!(component_of("web", "web-api-mcp-prev"), None);
        assert_eq!(component_of("web", "other-web"), None);
    }

    #[test]
    fn spec_from_podman() {
        let v = serde_json::json!({
            "Config": {"Image": "r/web:v1", "Cmd": ["httpd", "-f"], "Env": ["A=1"], "User": ""},
            "HostConfig": {
                "PortBindings": {"8080/tcp": [{"HostIp": "", "HostPort": "8080"}]},
                "Binds": ["/srv/web:/data"],
                "NetworkMode": "slirp4netns",
                "RestartPolicy": {"Name": "always"},
                "Memory": 0
            }
        });
        let s = spec_from_inspect(&v, "web-api", BTreeMap::new()).unwrap();
        assert_eq!(s.image, "r/web:v1");
        assert_eq!(s.cmd, ["httpd", "-f"]);
        assert_eq!(s.ports, [8080]);
        assert_eq!(s.volumes, ["/srv/web:/data"]);
        assert_eq!(s.network, None);
        assert_eq!(s.user, None);
        assert_eq!(s.restart, "always");
        assert_eq!(s.memory, None);
        let mut other = v.clone();
        other["HostConfig"]["PortBindings"] = serde_json::json!({"80/tcp": [{"HostPort": "8080"}]});
        let e = spec_from_inspect(&other, "web-api", BTreeMap::new()).unwrap_err();
        assert!(e.contains("8080") && e.contains("80"), "{e}");
    }
}
