//! The node table: authoritative in memory (heartbeats arrive every few
//! seconds from every node), written back to the fleet database in batches
//! by [`Nodes::flush`].

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::db::{FleetDb, FleetDbError, NodeRow};

/// Every node by name, and which ones changed since the last flush.
#[derive(Debug, Default)]
pub struct Nodes {
    rows: RwLock<BTreeMap<String, NodeRow>>,
    dirty: Mutex<HashSet<String>>,
}

impl Nodes {
    /// The table as loaded from the database.
    pub fn new(rows: Vec<NodeRow>) -> Nodes {
        Nodes {
            rows: RwLock::new(rows.into_iter().map(|n| (n.name.clone(), n)).collect()),
            dirty: Mutex::default(),
        }
    }

    // A poisoned lock still holds whole rows: every writer below changes
    // fields of one row, never leaving the map half-built.
    fn read(&self) -> RwLockReadGuard<'_, BTreeMap<String, NodeRow>> {
        self.rows.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, BTreeMap<String, NodeRow>> {
        self.rows.write().unwrap_or_else(|p| p.into_inner())
    }

    fn mark_dirty(&self, node: &str) {
        self.dirty
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node.to_string());
    }

    /// A copy of every node, by name.
    pub fn all(&self) -> Vec<NodeRow> {
        self.read().values().cloned().collect()
    }

    /// A copy of one node.
    pub fn get(&self, node: &str) -> Option<NodeRow> {
        self.read().get(node).cloned()
    }

    /// Whether the fleet knows `node`.
    pub fn contains(&self, node: &str) -> bool {
        self.read().contains_key(node)
    }

    /// How many nodes the fleet has.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether the fleet has no node.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// Names of the nodes `keep` selects.
    pub fn names(&self, keep: impl Fn(&NodeRow) -> bool) -> Vec<String> {
        self.read()
            .values()
            .filter(|n| keep(n))
            .map(|n| n.name.clone())
            .collect()
    }

    /// The host part of a node's registered address, if it is IPv4.
    pub fn ipv4(&self, node: &str) -> Option<Ipv4Addr> {
        let rows = self.read();
        let addr = &rows.get(node)?.address;
        addr.rsplit_once(':').and_then(|(h, _)| h.parse().ok())
    }

    /// Changes a node in place (marking it for the next flush); `None` when
    /// the node is unknown.
    pub fn update<R>(&self, node: &str, change: impl FnOnce(&mut NodeRow) -> R) -> Option<R> {
        let r = self.write().get_mut(node).map(change);
        if r.is_some() {
            self.mark_dirty(node);
        }
        r
    }

    /// Inserts or replaces a node; `make` gets the previous row, if any.
    pub fn upsert(&self, node: &str, make: impl FnOnce(Option<NodeRow>) -> NodeRow) {
        {
            let mut rows = self.write();
            let row = make(rows.remove(node));
            rows.insert(node.to_string(), row);
        }
        self.mark_dirty(node);
    }

    /// Writes the nodes changed since the last flush, in one transaction.
    pub fn flush(&self, db: &FleetDb) -> Result<(), FleetDbError> {
        let names: Vec<String> = std::mem::take(&mut *self.dirty.lock().unwrap_or_else(|p| p.into_inner()))
            .into_iter()
            .collect();
        if names.is_empty() {
            return Ok(());
        }
        let rows: Vec<NodeRow> = {
            let rows = self.read();
            names.iter().filter_map(|n| rows.get(n).cloned()).collect()
        };
        db.save_nodes(&rows)
    }
}
