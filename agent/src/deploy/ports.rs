//! The ports step: a host port for every route, kept from the registry or
//! newly chosen free both in the registry, among in-flight deploys and on
//! the host. The new ones stay reserved until the deploy ends.

use std::collections::BTreeMap;

use mcp_model::service::ServiceDef;

use crate::handle::Agent;
use crate::outcome::OpError;
use crate::registry::ServiceRecord;

/// Host ports of a deploy: component → route key → port. Dropping it
/// releases the reservation of the fresh ones (the registry holds them
/// from then on, or they were never used).
#[derive(Debug)]
pub struct Ports<'a> {
    pub all: BTreeMap<String, BTreeMap<String, u16>>,
    /// Ports this deploy picked (not in the registry yet).
    pub fresh: Vec<u16>,
    agent: &'a Agent,
}

impl Ports<'_> {
    /// How many host ports the service holds.
    pub fn total(&self) -> usize {
        self.all.values().map(BTreeMap::len).sum()
    }

    /// The ports of one component (route key → host port).
    pub fn of(&self, component: &str) -> BTreeMap<String, u16> {
        self.all.get(component).cloned().unwrap_or_default()
    }
}

impl Drop for Ports<'_> {
    fn drop(&mut self) {
        let mut r = self.agent.reserved.lock().unwrap_or_else(|p| p.into_inner());
        for p in &self.fresh {
            r.remove(p);
        }
    }
}

impl Agent {
    /// Host ports per component and route: kept from the registry, new
    /// ones picked free both in the registry and on the host.
    pub(crate) fn assign_ports(&self, def: &ServiceDef, old: Option<&ServiceRecord>) -> Result<Ports<'_>, OpError> {
        let mut used = self.registry.used_ports()?;
        let mut reserved = self.reserved.lock().unwrap_or_else(|p| p.into_inner());
        used.extend(reserved.iter().copied());
        let mut all: BTreeMap<String, BTreeMap<String, u16>> = BTreeMap::new();
        let mut fresh = Vec::new();
        for c in &def.components {
            for r in &c.routes {
                let kept = old.and_then(|o| {
                    o.routes
                        .iter()
                        .find(|x| x.component == c.name && x.name == r.key())
                        .map(|x| x.host_port)
                });
                let port = match kept {
                    Some(p) => p,
                    None => {
                        let (min, max) = (self.cfg.ports.min, self.cfg.ports.max);
                        let p = crate::ports::choose(min, max, &used, crate::ports::free_on_host).ok_or(
                            OpError::PortsExhausted {
                                min,
                                max,
                                outcome: Box::default(),
                            },
                        )?;
                        used.insert(p);
                        fresh.push(p);
                        p
                    }
                };
                all.entry(c.name.clone()).or_default().insert(r.key().to_string(), port);
            }
        }
        reserved.extend(fresh.iter().copied());
        Ok(Ports {
            all,
            fresh,
            agent: self,
        })
    }
}
