//! What the registry records after a deploy: the definition, every
//! component's spec and desired state, the routes with their host ports.

use std::collections::HashMap;

use mcp_model::service::ServiceDef;

use super::ports::Ports;
use crate::handle::Agent;
use crate::registry::{ComponentRecord, Desired, RouteRecord, ServiceRecord};
use crate::runtime::Observed;
use crate::runtime::spec::ContainerSpec;

impl Agent {
    /// The registry record after a successful deploy.
    pub(super) async fn record_for(
        &self,
        def: &ServiceDef,
        old: Option<&ServiceRecord>,
        wanted: &[(String, ContainerSpec)],
        ports: &Ports<'_>,
        only: Option<&str>,
        observed: &mut HashMap<String, Observed>,
    ) -> ServiceRecord {
        let desired = if def.active { Desired::Running } else { Desired::Stopped };
        let mut components = Vec::new();
        let mut routes = Vec::new();
        for c in &def.components {
            let spec = match wanted.iter().find(|(n, _)| n == &c.name) {
                Some((_, s)) => s.clone(),
                None => match old.and_then(|o| o.component(&c.name)) {
                    // Out of scope of a single-component deploy: keep as recorded.
                    Some(rec) => {
                        components.push(rec.clone());
                        routes.extend(
                            old.into_iter()
                                .flat_map(|o| o.routes.iter())
                                .filter(|r| r.component == c.name)
                                .cloned(),
                        );
                        continue;
                    }
                    None => self.container_spec(def, c, &ports.of(&c.name)),
                },
            };
            if !observed.contains_key(&spec.name)
                && let Ok(Some(o)) = self.runtime.inspect(&spec.name).await
            {
                observed.insert(spec.name.clone(), o);
            }
            let seen = observed.get(&spec.name);
            let in_scope = only.is_none_or(|o| o == c.name);
            components.push(ComponentRecord {
                name: c.name.clone(),
                desired: if in_scope { desired } else { Desired::Stopped },
                observed: seen.map(|o| o.state.clone()).unwrap_or_else(|| "missing".into()),
                container_id: seen.map(|o| o.id.clone()).unwrap_or_default(),
                spec,
            });
            for r in &c.routes {
                if let Some(p) = ports.all.get(&c.name).and_then(|m| m.get(r.key())) {
                    routes.push(RouteRecord {
                        component: c.name.clone(),
                        name: r.key().to_string(),
                        port: r.port as u16,
                        mode: r.mode().as_str().to_string(),
                        hostname: r.hostname_or_default(&def.name, &self.cfg.network.zone),
                        public: r.public,
                        host_port: *p,
                    });
                }
            }
        }
        ServiceRecord {
            def: def.clone(),
            components,
            routes,
            updated_at: 0,
        }
    }
}
