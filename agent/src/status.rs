//! What runs: every recorded service, or one with its recent events, as
//! the registry records it and the runtime reports it now.

use std::collections::HashMap;

use crate::handle::Agent;
use crate::outcome::{OpError, ServiceView};
use crate::registry::EventRecord;

impl Agent {
    /// Every recorded service with what the runtime reports now.
    pub async fn list(&self) -> Result<Vec<ServiceView>, OpError> {
        let records = self.registry.services()?;
        let listed = self.runtime.list_managed().await?;
        let mut views = Vec::new();
        for record in records {
            let mut observed = HashMap::new();
            for c in &record.components {
                if let Some(o) = listed.get(&c.spec.name) {
                    let full = if o.running() {
                        self.runtime.inspect(&c.spec.name).await?.unwrap_or_else(|| o.clone())
                    } else {
                        o.clone()
                    };
                    observed.insert(c.spec.name.clone(), full);
                }
            }
            views.push(ServiceView { record, observed });
        }
        Ok(views)
    }

    /// One service with what the runtime reports now, and its recent events.
    pub async fn status(&self, name: &str) -> Result<(ServiceView, Vec<EventRecord>), OpError> {
        let record = self.recorded(name)?;
        let mut observed = HashMap::new();
        for c in &record.components {
            if let Some(o) = self.runtime.inspect(&c.spec.name).await? {
                observed.insert(c.spec.name.clone(), o);
            }
        }
        let events = self.registry.events(name, 20)?;
        Ok((ServiceView { record, observed }, events))
    }
}
