//! The connected master: each call takes plain arguments and answers in
//! view types; its errors say "master".

use std::time::Duration;

use mcp_model::identity::Identity;
use mcp_model::service::ServiceDef;
use mcp_proto::{self as proto, mcp_master_service_client::McpMasterServiceClient};

use super::conn::{Channel, Connector};
use super::convert;
use super::error::ConnectError;
use crate::view::{
    DnsZone, EdgeRoute, FleetNode, JoinToken, Listing, Migration, MoveRequest, NodeRecovery, NodeRoutes, Placed,
    Restored, ServiceStatus, Snapshot, SnapshotTaken, SyncReport,
};

/// Client of the master.
pub struct MasterClient {
    inner: McpMasterServiceClient<Channel>,
    who: String,
}

impl MasterClient {
    /// Connects to the configured `[master]`; every call may take up to `timeout`.
    pub async fn connect(conn: &Connector<'_>, timeout: Duration) -> Result<MasterClient, ConnectError> {
        let Some(master) = &conn.cfg.master else {
            return Err(ConnectError::NoMaster {
                config: conn.path.to_path_buf(),
            });
        };
        let who = "master".to_string();
        let channel = conn
            .channel(std::slice::from_ref(&master.address), Identity::Master, timeout, &who)
            .await?;
        Ok(MasterClient {
            inner: McpMasterServiceClient::new(channel),
            who,
        })
    }

    service_calls!(Placed);

    rpcs! {
        /// One service with its recent events, and the node it is placed on.
        pub fn status(name: &str) -> (String, Option<ServiceStatus>) =
            get_service_status(convert::service_request(name, None, "")),
            |r| (r.node, r.status.map(ServiceStatus::from));

        /// Every node's services, with what is missing or orphaned.
        pub fn services() -> Listing = list_services(proto::ListServicesRequest {}), Listing::from;

        /// Makes the fleet match `defs` (only plans with `dry_run`).
        pub fn sync(defs: &[ServiceDef], dry_run: bool, request_id: &str) -> SyncReport =
            sync(convert::sync_request(defs, dry_run, request_id)), SyncReport::from;

        /// The nodes of the fleet.
        pub fn nodes() -> Vec<FleetNode> = list_nodes(proto::ListNodesRequest {}), |r| convert::all(r.nodes);

        /// A one-time join token for node `name`, valid `ttl_seconds` (0: the
        /// master's default).
        pub fn add_node(name: &str, ttl_seconds: u64) -> JoinToken =
            add_node(proto::AddNodeRequest { name: name.to_string(), ttl_seconds }), JoinToken::from;

        /// Recovers `node` (empty: every node).
        pub fn recover(node: &str, request_id: &str) -> Vec<NodeRecovery> =
            recover_node(proto::RecoverNodeRequest { node: node.to_string(), request_id: request_id.to_string() }),
            |r| convert::all(r.nodes);

        /// The internal zone.
        pub fn dns() -> DnsZone = list_dns_records(proto::ListDnsRecordsRequest {}), DnsZone::from;

        /// Every node's proxy routes.
        pub fn routes() -> Vec<NodeRoutes> = list_routes(proto::ListProxyRoutesRequest {}), |r| convert::all(r.nodes);

        /// Public routes on edge nodes.
        pub fn edge_routes() -> Vec<EdgeRoute> =
            list_edge_routes(proto::ListEdgeRoutesRequest {}), |r| convert::all(r.routes);

        /// Archives `service`'s data to the master now.
        pub fn create_snapshot(service: &str, request_id: &str) -> SnapshotTaken =
            create_snapshot(convert::snapshot_request(service, request_id)), SnapshotTaken::from;

        /// Stored snapshots of `service` (empty: every service), oldest first.
        pub fn snapshots(service: &str) -> Vec<Snapshot> =
            list_snapshots(proto::ListSnapshotsRequest { service: service.to_string() }),
            |r| convert::all(r.snapshots);

        /// Restores `service` from the snapshot `at` names (empty: the latest).
        pub fn restore_snapshot(service: &str, at: &str, request_id: &str) -> Restored =
            restore_snapshot(convert::restore_request(service, at, request_id)), Restored::from;

        /// Moves services, with their data, to another node.
        pub fn migrate(m: &MoveRequest, request_id: &str) -> Vec<Migration> =
            migrate_service(convert::migrate_request(m, request_id)), |r| convert::all(r.results);
    }
}
