//! What the listeners and every connection share: the configuration, the
//! current route snapshot, the certificate cache and the backend client.

use std::sync::{Arc, RwLock};

use crate::ProxyConfig;
use crate::certs::CertCache;
use crate::table::Table;
use crate::upstream::Upstream;

/// State shared by the listeners and every connection.
pub(crate) struct Shared {
    pub(crate) config: ProxyConfig,
    pub(crate) table: RwLock<Arc<Table>>,
    pub(crate) certs: CertCache,
    pub(crate) upstream: Arc<Upstream>,
}

impl Shared {
    /// The current route snapshot.
    pub(crate) fn table(&self) -> Arc<Table> {
        self.table.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
