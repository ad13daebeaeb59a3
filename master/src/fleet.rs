//! The master's operations: registration and heartbeats, placement and
//! deploy coordination, fan-out, sync, health probes and reconciliation.
//! Plain async functions over [`Master`]; the gRPC edge only converts.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::config::MasterConfig;
use futures::future::join_all;
use mcp_infra::pki::Ca;
use mcp_infra::tls;
use mcp_model::identity::Identity;
use mcp_model::join::JoinToken;
use mcp_model::placement::{self, NodeRole, NodeView};
use mcp_model::service::{self, ServiceDef};
use mcp_model::sync::{self as syncplan, SyncAction};
use mcp_proto::{self as proto, mcp_agent_service_client::McpAgentServiceClient};
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::db::{FleetDb, FleetDbError, NodeRow, PlacementRow, now};

mod snapshots;

type AgentClient = McpAgentServiceClient<Channel>;

/// Why a master operation failed; mapped to a status in one place.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Precondition(String),
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Denied(String),
    #[error("{0}")]
    Exhausted(String),
    /// An agent answered with an error; passed through with its details.
    #[error("node {node}: {}", status.message())]
    Agent { node: String, status: Status },
    #[error("node {node} is unreachable: {reason}")]
    Unreachable { node: String, reason: String },
    #[error(transparent)]
    Db(#[from] FleetDbError),
    #[error("{0}")]
    Internal(String),
}

impl From<FleetError> for Status {
    fn from(e: FleetError) -> Status {
        let msg = e.to_string();
        match e {
            FleetError::Invalid(_) => Status::invalid_argument(msg),
            FleetError::NotFound(_) => Status::not_found(msg),
            FleetError::Precondition(_) => Status::failed_precondition(msg),
            FleetError::Busy(_) => Status::aborted(msg),
            FleetError::Unauthenticated(_) => Status::unauthenticated(msg),
            FleetError::Denied(_) => Status::permission_denied(msg),
            FleetError::Exhausted(_) => Status::resource_exhausted(msg),
            FleetError::Agent { status, .. } => {
                Status::with_details(status.code(), msg, status.details().to_vec().into())
            }
            FleetError::Unreachable { .. } => Status::unavailable(msg),
            FleetError::Db(_) | FleetError::Internal(_) => Status::internal(msg),
        }
    }
}

type Result<T> = std::result::Result<T, FleetError>;

fn step_failed(step: &str, started: Instant, error: String) -> proto::StepResult {
    proto::StepResult {
        step: step.into(),
        success: false,
        error,
        duration_ms: started.elapsed().as_millis() as u64,
        ..Default::default()
    }
}

/// Master state shared by all requests and background loops.
pub struct Master {
    pub cfg: MasterConfig,
    pub db: FleetDb,
    ca: Ca,
    /// Nodes, authoritative in memory; written back by [`Master::flush`].
    nodes: RwLock<BTreeMap<String, NodeRow>>,
    dirty: Mutex<HashSet<String>>,
    clients: tokio::sync::Mutex<HashMap<String, (String, AgentClient)>>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// (node, rpc) → last accepted call, for rate limits.
    calls: Mutex<HashMap<(String, &'static str), Instant>>,
    /// Services agents run that the master did not place there.
    orphans: Mutex<Vec<String>>,
    /// The internal zone's records, served by the DNS server.
    pub records: Arc<crate::dns::Records>,
    zone: String,
    dns_ttl: u32,
}

impl Master {
    /// Loads nodes from the database.
    pub fn new(cfg: MasterConfig, db: FleetDb, ca: Ca) -> Result<Master> {
        let nodes = db.nodes()?.into_iter().map(|n| (n.name.clone(), n)).collect();
        let records = Arc::new(crate::dns::Records::new());
        let mut by_name: BTreeMap<String, Vec<std::net::Ipv4Addr>> = BTreeMap::new();
        for r in db.dns_records()? {
            if let Ok(ip) = r.value.parse() {
                by_name.entry(r.name).or_default().push(ip);
            }
        }
        records
            .replace_all(by_name)
            .map_err(|e| FleetError::Internal(e.to_string()))?;
        let zone = cfg.dns.zone.clone();
        let dns_ttl = cfg.dns.ttl;
        Ok(Master {
            records,
            zone,
            dns_ttl,
            cfg,
            db,
            ca,
            nodes: RwLock::new(nodes),
            dirty: Default::default(),
            clients: Default::default(),
            locks: Default::default(),
            calls: Default::default(),
            orphans: Default::default(),
        })
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn read_nodes(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, NodeRow>> {
        self.nodes.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_nodes(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, NodeRow>> {
        self.nodes.write().unwrap_or_else(|p| p.into_inner())
    }

    fn mark_dirty(&self, node: &str) {
        self.dirty
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node.to_string());
    }

    /// Writes changed nodes to the database (heartbeats are batched here).
    pub fn flush(&self) -> Result<()> {
        let names: Vec<String> = std::mem::take(&mut *self.dirty.lock().unwrap_or_else(|p| p.into_inner()))
            .into_iter()
            .collect();
        if names.is_empty() {
            return Ok(());
        }
        let rows: Vec<NodeRow> = {
            let nodes = self.read_nodes();
            names.iter().filter_map(|n| nodes.get(n).cloned()).collect()
        };
        self.db.save_nodes(&rows)?;
        Ok(())
    }

    /// A snapshot of every node.
    pub fn nodes(&self) -> Vec<NodeRow> {
        self.read_nodes().values().cloned().collect()
    }

    async fn lock(&self, service: &str) -> Result<tokio::sync::OwnedMutexGuard<()>> {
        let m = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(service.to_string()).or_default().clone()
        };
        match tokio::time::timeout(Self::secs(self.cfg.timeouts.deploy), m.lock_owned()).await {
            Ok(g) => Ok(g),
            Err(_) => Err(FleetError::Busy(format!(
                "another operation on service {service} is still running; try again when it has finished"
            ))),
        }
    }

    /// Enforces "at most one `rpc` per `min` seconds per node".
    fn rate_limit(&self, node: &str, rpc: &'static str, min: u64) -> Result<()> {
        if min == 0 {
            return Ok(());
        }
        let mut calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let key = (node.to_string(), rpc);
        if let Some(last) = calls.get(&key)
            && now.duration_since(*last) < Self::secs(min)
        {
            let wait = Self::secs(min) - now.duration_since(*last);
            return Err(FleetError::Exhausted(format!(
                "{rpc} of node {node} is limited to once per {min} s; retry in {} s",
                wait.as_secs() + 1
            )));
        }
        calls.insert(key, now);
        Ok(())
    }

    // ---------------------------------------------------------------- trust

    /// Issues a one-time join token for `node`.
    pub fn add_node(&self, node: &str, ttl: u64) -> Result<(JoinToken, i64)> {
        service::check_name(node).map_err(|r| FleetError::Invalid(format!("node name {node:?}: {r}")))?;
        self.check_admission(node, true)?;
        let fp = mcp_infra::pki::fingerprint(self.ca.cert_pem())
            .ok_or_else(|| FleetError::Internal("the CA certificate cannot be read".into()))?;
        let secret = mcp_infra::random::random_bytes::<32>().map_err(|e| FleetError::Internal(e.to_string()))?;
        let token = JoinToken::new(node, secret, &fp);
        let ttl = if ttl == 0 {
            self.cfg.registration.join_token_ttl
        } else {
            ttl
        };
        let expires = now() + ttl as i64;
        self.db.add_join_token(&token.secret_hash(), node, expires)?;
        tracing::info!(%node, expires, "join token issued");
        Ok((token, expires))
    }

    /// Allowlist and `max_nodes` checks for a node that joins or registers.
    fn check_admission(&self, node: &str, new_ok: bool) -> Result<()> {
        let reg = &self.cfg.registration;
        if !reg.allowlist.is_empty() && !reg.allowlist.iter().any(|a| a == node) {
            return Err(FleetError::Denied(format!(
                "node {node} is not in registration.allowlist"
            )));
        }
        let known = self.read_nodes().contains_key(node);
        if !known && new_ok && reg.max_nodes > 0 && self.read_nodes().len() as u32 >= reg.max_nodes {
            return Err(FleetError::Exhausted(format!(
                "the fleet already has registration.max_nodes = {} nodes",
                reg.max_nodes
            )));
        }
        Ok(())
    }

    /// Exchanges a join token and CSR for an agent certificate.
    pub fn join(&self, name: &str, token: &str, csr_pem: &str) -> Result<(String, String)> {
        let parsed = JoinToken::parse(token).map_err(FleetError::Unauthenticated)?;
        if parsed.node != name {
            return Err(FleetError::Denied(format!(
                "join token is for node {:?}, not {name:?}",
                parsed.node
            )));
        }
        self.check_admission(name, true)?;
        let hash = parsed.secret_hash();
        match self.db.use_join_token(&hash, name)? {
            Ok(()) => {}
            Err(e @ crate::db::TokenError::WrongNode { .. }) => return Err(FleetError::Denied(e.to_string())),
            Err(e) => return Err(FleetError::Unauthenticated(e.to_string())),
        }
        match self.ca.sign_csr(
            csr_pem,
            &Identity::Agent(name.to_string()),
            self.cfg.registration.cert_days,
        ) {
            Ok(chain) => {
                tracing::info!(node = %name, "node joined");
                Ok((chain, self.ca.cert_pem().to_string()))
            }
            Err(e) => {
                self.db.release_join_token(&hash)?;
                Err(FleetError::Invalid(format!("certificate signing request: {e}")))
            }
        }
    }

    /// Renews the master's own certificate when a third of its lifetime is
    /// left, and swaps it into the listener. Returns whether it renewed.
    pub fn renew_own_certificate(&self, store: &tls::CertStore) -> Result<bool> {
        let files = &self.cfg.tls;
        let pem = std::fs::read_to_string(&files.cert)
            .map_err(|e| FleetError::Internal(format!("{}: {e}", files.cert.display())))?;
        let (left, total) = mcp_infra::pki::lifetime(&pem)
            .ok_or_else(|| FleetError::Internal(format!("cannot read {}", files.cert.display())))?;
        if left > total / 3 {
            return Ok(false);
        }
        let (dns_names, ips) = mcp_infra::pki::sans(&pem);
        let issued = self
            .ca
            .issue(&mcp_infra::pki::LeafRequest {
                identity: Some(Identity::Master),
                dns_names,
                ips,
                days: 365,
            })
            .map_err(|e| FleetError::Internal(e.to_string()))?;
        issued
            .write(&files.cert, &files.key)
            .map_err(|e| FleetError::Internal(e.to_string()))?;
        store.reload().map_err(|e| FleetError::Internal(e.to_string()))?;
        tracing::info!("master certificate renewed");
        Ok(true)
    }

    /// Renews the caller's own certificate: only for a node the fleet
    /// knows and still admits (allowlist), so a removed node cannot renew.
    pub fn issue_certificate(&self, node: &str, csr_pem: &str) -> Result<String> {
        if !self.read_nodes().contains_key(node) {
            return Err(FleetError::Precondition(format!(
                "node {node} is not registered; it cannot renew its certificate"
            )));
        }
        self.check_admission(node, false)?;
        self.ca
            .sign_csr(
                csr_pem,
                &Identity::Agent(node.to_string()),
                self.cfg.registration.cert_days,
            )
            .map_err(|e| FleetError::Invalid(format!("certificate signing request: {e}")))
    }

    /// Records a node's registration.
    pub fn register(&self, node: &str, req: &proto::RegisterRequest) -> Result<u32> {
        // An empty name means the caller's own node.
        if !req.name.is_empty() && req.name != node {
            return Err(FleetError::Denied(format!(
                "agent-{node} may not register node {:?}",
                req.name
            )));
        }
        let role = NodeRole::parse(&req.role)
            .ok_or_else(|| FleetError::Invalid(format!("unknown role {:?}: worker, edge or master", req.role)))?;
        if req.address.is_empty() || !req.address.contains(':') {
            return Err(FleetError::Invalid(format!(
                "address {:?} is not host:port",
                req.address
            )));
        }
        self.check_admission(node, true)?;
        self.rate_limit(node, "Register", self.cfg.registration.register_interval)?;
        let t = now();
        {
            let mut nodes = self.write_nodes();
            let prev = nodes.get(node).cloned();
            if prev.as_ref().is_some_and(|p| !p.healthy) {
                tracing::info!(%node, "node healthy again (registered)");
            }
            let row = NodeRow {
                name: node.to_string(),
                role: role.as_str().to_string(),
                address: req.address.clone(),
                arch: req.arch.clone(),
                version: req.version.clone(),
                healthy: true,
                status_reason: String::new(),
                registered_at: t,
                last_seen: t,
                cpus: req.cpus,
                memory_total: req.memory_total_bytes,
                ..prev.unwrap_or(NodeRow {
                    name: String::new(),
                    role: String::new(),
                    address: String::new(),
                    arch: String::new(),
                    version: String::new(),
                    healthy: true,
                    status_reason: String::new(),
                    registered_at: t,
                    last_seen: t,
                    cpus: 0,
                    cpu_load: 0.0,
                    memory_total: 0,
                    memory_available: 0,
                    disk_total: 0,
                    disk_available: 0,
                    containers: 0,
                })
            };
            nodes.insert(node.to_string(), row);
        }
        self.mark_dirty(node);
        self.flush()?;
        tracing::info!(%node, role = role.as_str(), address = %req.address, version = %req.version, "node registered");
        Ok(self.cfg.heartbeat.interval as u32)
    }

    /// Records a heartbeat; a heartbeat heals an unhealthy node.
    pub fn heartbeat(&self, node: &str, hb: &proto::HeartbeatRequest) -> Result<()> {
        if hb.name != node {
            return Err(FleetError::Denied(format!(
                "agent-{node} may not heartbeat for {:?}",
                hb.name
            )));
        }
        self.rate_limit(node, "Heartbeat", self.cfg.registration.heartbeat_min_interval)?;
        let healed = {
            let mut nodes = self.write_nodes();
            let Some(n) = nodes.get_mut(node) else {
                return Err(FleetError::NotFound(format!(
                    "node {node} is not registered: register first"
                )));
            };
            let healed = !n.healthy;
            n.healthy = true;
            n.status_reason.clear();
            n.last_seen = now();
            n.cpu_load = hb.cpu_load;
            n.memory_total = hb.memory_total_bytes;
            n.memory_available = hb.memory_available_bytes;
            n.disk_total = hb.disk_total_bytes;
            n.disk_available = hb.disk_available_bytes;
            n.containers = hb.containers;
            if hb.cpus > 0 {
                n.cpus = hb.cpus;
            }
            healed
        };
        self.mark_dirty(node);
        if healed {
            tracing::info!(%node, "node healthy again (heartbeat)");
            self.flush()?;
        }
        Ok(())
    }

    // --------------------------------------------------------------- agents

    async fn agent(&self, node: &str) -> Result<AgentClient> {
        let address = {
            let nodes = self.read_nodes();
            let n = nodes
                .get(node)
                .ok_or_else(|| FleetError::NotFound(format!("unknown node {node:?}")))?;
            n.address.clone()
        };
        if let Some((addr, c)) = self.clients.lock().await.get(node)
            && *addr == address
        {
            return Ok(c.clone());
        }
        // Dial without holding the cache lock: a fan-out dials its nodes in
        // parallel, and a frozen node cannot hold up the others. Two calls
        // racing for the same node may both dial; the last one is cached.
        let config = tls::client_config(&self.cfg.tls, Some(Identity::Agent(node.to_string())))
            .map_err(|e| FleetError::Internal(e.to_string()))?;
        let timeouts = tls::Timeouts {
            connect: Self::secs(self.cfg.timeouts.health_check),
            request: None,
        };
        let (channel, _) = tls::connect(std::slice::from_ref(&address), config, timeouts)
            .await
            .map_err(|e| FleetError::Unreachable {
                node: node.to_string(),
                reason: e.to_string(),
            })?;
        let client = McpAgentServiceClient::new(channel);
        self.clients
            .lock()
            .await
            .insert(node.to_string(), (address, client.clone()));
        Ok(client)
    }

    async fn forget_client(&self, node: &str) {
        self.clients.lock().await.remove(node);
    }

    /// Runs one agent call with a deadline; transport failures drop the
    /// cached connection so the next call redials.
    async fn call<T, F, Fut>(&self, node: &str, timeout: u64, f: F) -> Result<T>
    where
        F: Fn(AgentClient) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<tonic::Response<T>, Status>>,
    {
        let cached = self.clients.lock().await.contains_key(node);
        let client = self.agent(node).await?;
        let mut result = tokio::time::timeout(Self::secs(timeout), f(client)).await;
        // A cached connection to an agent that restarted fails once with
        // Unavailable before anything reached the agent: dial again and
        // retry once (agent operations converge, so a retry is safe).
        if cached && matches!(&result, Ok(Err(s)) if s.code() == Code::Unavailable) {
            self.forget_client(node).await;
            let client = self.agent(node).await?;
            result = tokio::time::timeout(Self::secs(timeout), f(client)).await;
        }
        self.settle(node, result, || format!("no answer within {timeout} s"))
            .await
    }

    /// The result of a timed call to an agent: its answer, or the error,
    /// dropping the cached connection when it is likely broken.
    pub(crate) async fn settle<T>(
        &self,
        node: &str,
        result: std::result::Result<std::result::Result<tonic::Response<T>, Status>, tokio::time::error::Elapsed>,
        timed_out: impl FnOnce() -> String,
    ) -> Result<T> {
        match result {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(status)) => {
                if matches!(status.code(), Code::Unavailable | Code::Unknown) {
                    self.forget_client(node).await;
                }
                Err(FleetError::Agent {
                    node: node.to_string(),
                    status,
                })
            }
            Err(_) => {
                self.forget_client(node).await;
                Err(FleetError::Unreachable {
                    node: node.to_string(),
                    reason: timed_out(),
                })
            }
        }
    }

    // ------------------------------------------------------------ placement

    /// Placement inputs: every node with the resources already committed
    /// to services placed on it (other than `except`).
    fn views(&self, except: &str) -> Result<Vec<NodeView>> {
        let mut committed: HashMap<String, (u64, f64)> = HashMap::new();
        for p in self.db.placements()? {
            if p.service != except {
                let (m, c) = placement::demand(&p.def);
                let e = committed.entry(p.node).or_default();
                e.0 += m;
                e.1 += c;
            }
        }
        Ok(self
            .read_nodes()
            .values()
            .map(|n| {
                let (m, c) = committed.get(&n.name).copied().unwrap_or_default();
                NodeView {
                    name: n.name.clone(),
                    role: NodeRole::parse(&n.role).unwrap_or(NodeRole::Worker),
                    healthy: n.healthy,
                    containers: n.containers,
                    cpus: n.cpus,
                    memory_available: n.memory_available,
                    committed_memory: m,
                    committed_cpus: c,
                }
            })
            .collect())
    }

    /// Deploys a service: validate, lock, place, forward, record.
    pub async fn deploy(
        &self,
        def: ServiceDef,
        component: String,
        request_id: String,
    ) -> Result<proto::FleetOperationResponse> {
        let result = self.deploy_placed(def, component, request_id).await;
        crate::metrics::deploy_finished(&result);
        result
    }

    async fn deploy_placed(
        &self,
        def: ServiceDef,
        component: String,
        request_id: String,
    ) -> Result<proto::FleetOperationResponse> {
        service::check("deploy request", &def).map_err(|e| FleetError::Invalid(e.to_string()))?;
        if !component.is_empty() && def.component(&component).is_none() {
            return Err(FleetError::Invalid(format!(
                "service {} has no component {component:?}",
                def.name
            )));
        }
        let _guard = self.lock(&def.name).await?;
        let current = self.db.placement(&def.name)?;
        let views = self.views(&def.name)?;
        let placed = placement::place(
            &def,
            &views,
            Some(&self.cfg.master.node),
            current.as_ref().map(|c| c.node.as_str()),
        )
        .map_err(|e| match e {
            // Naming a node that does not exist is bad input; the rest is
            // the fleet's state.
            placement::PlacementError::UnknownNode { .. } => FleetError::Invalid(e.to_string()),
            _ => FleetError::Precondition(e.to_string()),
        })?;
        if let Some(c) = &current
            && c.node != placed.node
        {
            return Err(FleetError::Precondition(format!(
                "service {} runs on {}; placing it on {} would move it: use `mcp migrate {} --to {}`",
                def.name, c.node, placed.node, def.name, placed.node
            )));
        }
        let node = placed.node.clone();
        self.db.save_placement(&PlacementRow {
            service: def.name.clone(),
            node: node.clone(),
            def: def.clone(),
            state: "deploying".into(),
            detail: format!("deploy {request_id} in progress"),
            request_id: request_id.clone(),
            updated_at: 0,
        })?;
        tracing::info!(service = %def.name, %node, reason = %placed.reason, %request_id, "deploying");
        let req = proto::DeployRequest {
            service: Some(proto::ServiceSpec::from(&def)),
            component,
            request_id: request_id.clone(),
        };
        let result = self
            .call(&node, self.cfg.timeouts.deploy, |mut c| {
                let req = req.clone();
                async move {
                    let mut r = tonic::Request::new(req);
                    r.set_timeout(Self::secs(self.cfg.timeouts.deploy));
                    c.deploy(r).await
                }
            })
            .await;
        match result {
            Ok(mut resp) => {
                self.db
                    .set_placement_state(&def.name, "deployed", &format!("deployed by {request_id}"))?;
                // Public routes: the edge side, after the worker side is up.
                if let Some(step) = self.sync_edge(&def, &node).await {
                    if !step.success {
                        let detail = format!("edge route failed: {}", step.error);
                        self.db.set_placement_state(&def.name, "deployed", &detail)?;
                    }
                    resp.steps.push(step);
                }
                if current.is_none() {
                    // Until the next heartbeat, count the new containers so
                    // placements in quick succession spread out.
                    if let Some(n) = self.write_nodes().get_mut(&node) {
                        n.containers += def.components.len() as u32;
                    }
                }
                Ok(proto::FleetOperationResponse {
                    node,
                    result: Some(resp),
                    placement: placed.reason,
                })
            }
            Err(e) => {
                let definite = matches!(
                    &e,
                    FleetError::Agent { status, .. } if matches!(
                        status.code(),
                        Code::InvalidArgument | Code::FailedPrecondition | Code::ResourceExhausted | Code::NotFound
                    )
                );
                if definite {
                    // The agent refused or rolled back: what ran before runs still.
                    match &current {
                        Some(old) => {
                            let mut old = old.clone();
                            old.detail = format!("last deploy {request_id} failed: {e}");
                            self.db.save_placement(&old)?;
                        }
                        None => self.db.delete_placement(&def.name)?,
                    }
                } else {
                    self.db.set_placement_state(
                        &def.name,
                        "unknown",
                        &format!("outcome of deploy {request_id} unknown ({e}); re-run the deploy"),
                    )?;
                }
                Err(e)
            }
        }
    }

    fn placement_of(&self, service: &str) -> Result<PlacementRow> {
        self.db
            .placement(service)?
            .ok_or_else(|| FleetError::NotFound(format!("service {service} is not deployed")))
    }

    /// Stop, start or restart a placed service.
    pub async fn operate(&self, op: &'static str, req: proto::ServiceRequest) -> Result<proto::FleetOperationResponse> {
        let _guard = self.lock(&req.name).await?;
        let p = self.placement_of(&req.name)?;
        let name = req.name.clone();
        let resp = self
            .call(&p.node, self.cfg.timeouts.deploy, |mut c| {
                let req = req.clone();
                async move {
                    match op {
                        "stop" => c.stop_service(req).await,
                        "start" => c.start_service(req).await,
                        _ => c.restart_service(req).await,
                    }
                }
            })
            .await?;
        let state = if op == "stop" { "stopped" } else { "deployed" };
        self.db.set_placement_state(&name, state, &format!("{op} ok"))?;
        Ok(proto::FleetOperationResponse {
            node: p.node,
            result: Some(resp),
            placement: String::new(),
        })
    }

    /// `mcp agent recover`: every container of the node (or of every node
    /// when `node` is empty) back from its registry, nodes in parallel. A
    /// node that cannot be reached is reported, not fatal.
    pub async fn recover(&self, node: &str) -> Result<Vec<proto::NodeRecovery>> {
        let names: Vec<String> = if node.is_empty() {
            self.nodes().into_iter().map(|n| n.name).collect()
        } else {
            if !self.nodes().iter().any(|n| n.name == node) {
                return Err(FleetError::NotFound(format!(
                    "unknown node {node:?}; see mcp node list"
                )));
            }
            vec![node.to_string()]
        };
        let timeout = self.cfg.timeouts.deploy.max(600);
        let calls = names.iter().map(|n| async move {
            let r = self
                .call(n, timeout, |mut c| async move {
                    c.recover(proto::RecoverRequest::default()).await
                })
                .await;
            match r {
                Ok(result) => proto::NodeRecovery {
                    node: n.clone(),
                    error: String::new(),
                    result: Some(result),
                },
                Err(e) => proto::NodeRecovery {
                    node: n.clone(),
                    error: e.to_string(),
                    result: None,
                },
            }
        });
        Ok(futures::future::join_all(calls).await)
    }

    /// `mcp render`: the `podman run` commands of a placed service, from
    /// its node's registry.
    pub async fn render(&self, name: &str) -> Result<proto::RenderResponse> {
        let p = self.placement_of(name)?;
        let req = proto::ServiceRequest {
            name: name.to_string(),
            ..Default::default()
        };
        self.call(&p.node, self.cfg.timeouts.health_check.max(10), |mut c| {
            let req = req.clone();
            async move { c.render_service(req).await }
        })
        .await
    }

    /// Undeploys a placed service and forgets the placement.
    pub async fn undeploy(&self, req: proto::ServiceRequest) -> Result<proto::FleetOperationResponse> {
        let _guard = self.lock(&req.name).await?;
        let p = self.placement_of(&req.name)?;
        let name = req.name.clone();
        let result = self
            .call(&p.node, self.cfg.timeouts.undeploy, |mut c| {
                let req = req.clone();
                async move { c.undeploy_service(req).await }
            })
            .await;
        let resp = match result {
            Ok(r) => r,
            // The node no longer has it: the placement was stale.
            Err(FleetError::Agent { status, .. }) if status.code() == Code::NotFound => proto::OperationResponse {
                changed: false,
                warnings: vec![format!("node {} did not have service {name}", p.node)],
                ..Default::default()
            },
            Err(e) => return Err(e),
        };
        self.db.delete_placement(&name)?;
        // The worker side is gone: now the edge, then any record left over.
        let mut resp = resp;
        resp.warnings.extend(self.remove_edges_of(&name).await);
        let record = format!("{name}.{}", self.zone);
        if self.db.remove_dns_records(&record)? > 0 {
            self.records.remove(&record);
        }
        Ok(proto::FleetOperationResponse {
            node: p.node,
            result: Some(resp),
            placement: String::new(),
        })
    }

    /// The container output stream of a placed service, from its node.
    pub async fn logs(&self, req: proto::LogsRequest) -> Result<tonic::Streaming<proto::LogChunk>> {
        let p = self.placement_of(&req.service)?;
        let mut client = self.agent(&p.node).await?;
        client
            .logs(req)
            .await
            .map(|r| r.into_inner())
            .map_err(|status| FleetError::Agent {
                node: p.node.clone(),
                status,
            })
    }

    /// Status of a placed service from its node.
    pub async fn status(&self, name: &str) -> Result<proto::FleetServiceStatus> {
        let p = self.placement_of(name)?;
        let req = proto::ServiceRequest {
            name: name.to_string(),
            ..Default::default()
        };
        match self
            .call(&p.node, self.cfg.timeouts.health_check, |mut c| {
                let req = req.clone();
                async move { c.get_service_status(req).await }
            })
            .await
        {
            Ok(status) => Ok(proto::FleetServiceStatus {
                node: p.node,
                status: Some(status),
            }),
            Err(e) => Err(match e {
                FleetError::Unreachable { node, reason } => FleetError::Unreachable {
                    node,
                    reason: format!("{reason}; the master records {name} as {} ({})", p.state, p.detail),
                },
                other => other,
            }),
        }
    }

    /// ListServices of every worker node (edge nodes run no services), in
    /// parallel: (node, answer).
    async fn list_workers(&self) -> Vec<(String, Result<proto::ListServicesResponse>)> {
        let nodes: Vec<String> = self
            .read_nodes()
            .values()
            .filter(|n| n.role != "edge")
            .map(|n| n.name.clone())
            .collect();
        let timeout = self.cfg.timeouts.health_check;
        let calls = nodes.iter().map(|n| async move {
            let r = self
                .call(n, timeout, |mut c| async move {
                    c.list_services(proto::ListServicesRequest {}).await
                })
                .await;
            (n.clone(), r)
        });
        join_all(calls).await
    }

    /// Every node's services, in parallel; unreachable nodes are reported.
    pub async fn list(&self) -> Result<proto::FleetServices> {
        let results = self.list_workers().await;
        let placements = self.db.placements()?;
        let mut missing = Vec::new();
        let mut out = Vec::new();
        for (node, r) in results {
            match r {
                Ok(list) => {
                    for p in placements.iter().filter(|p| p.node == node) {
                        if !list.services.iter().any(|s| s.name == p.service) {
                            missing.push(format!("{} (on {node}: {})", p.service, p.state));
                        }
                    }
                    out.push(proto::NodeServices {
                        node,
                        error: String::new(),
                        services: list.services,
                    });
                }
                Err(e) => out.push(proto::NodeServices {
                    node,
                    error: e.to_string(),
                    services: vec![],
                }),
            }
        }
        Ok(proto::FleetServices {
            nodes: out,
            missing,
            orphans: self.orphans(),
        })
    }

    /// Plans (and unless `dry_run`, applies) making the fleet match `specs`.
    pub async fn sync(
        &self,
        specs: &[proto::ServiceSpec],
        dry_run: bool,
        request_id: &str,
    ) -> Result<Vec<proto::SyncAction>> {
        let mut defs = Vec::new();
        let mut problems = Vec::new();
        let mut names = HashSet::new();
        for s in specs {
            let def = ServiceDef::from(s);
            if let Err(e) = service::check(&format!("service {}", def.name), &def) {
                problems.push(e.to_string());
            }
            if !names.insert(def.name.clone()) {
                problems.push(format!("service {} is given twice", def.name));
            }
            defs.push(def);
        }
        if !problems.is_empty() {
            return Err(FleetError::Invalid(problems.join("\n")));
        }
        let placements = self.db.placements()?;
        let deployed: BTreeMap<String, ServiceDef> =
            placements.iter().map(|p| (p.service.clone(), p.def.clone())).collect();
        let plan = syncplan::plan(&defs, &deployed);
        let mut out = Vec::new();
        for action in plan {
            let node = placements
                .iter()
                .find(|p| p.service == action.service())
                .map(|p| p.node.clone())
                .unwrap_or_default();
            let changed = match &action {
                SyncAction::Redeploy { changed, .. } => changed.clone(),
                _ => vec![],
            };
            let mut row = proto::SyncAction {
                service: action.service().to_string(),
                action: action.kind().to_string(),
                node,
                changed,
                success: true,
                error: String::new(),
            };
            if !dry_run {
                let result = match &action {
                    SyncAction::Deploy { service } | SyncAction::Redeploy { service, .. } => {
                        let def = defs
                            .iter()
                            .find(|d| &d.name == service)
                            .cloned()
                            .expect("planned from defs");
                        self.deploy(def, String::new(), format!("{request_id}/{service}"))
                            .await
                            .map(|r| r.node)
                    }
                    SyncAction::Undeploy { service } => self
                        .undeploy(proto::ServiceRequest {
                            name: service.clone(),
                            request_id: format!("{request_id}/{service}"),
                            ..Default::default()
                        })
                        .await
                        .map(|r| r.node),
                    SyncAction::Unchanged { .. } => Ok(row.node.clone()),
                };
                match result {
                    Ok(node) => row.node = node,
                    Err(e) => {
                        row.success = false;
                        row.error = e.to_string();
                    }
                }
            }
            out.push(row);
        }
        Ok(out)
    }

    // ------------------------------------------------------ networking

    /// Internal zone of the fleet.
    pub fn zone(&self) -> &str {
        &self.zone
    }

    /// Names a service may carry on certificates the fleet CA issues to
    /// `node`: its internal name and route hostnames when it is placed on
    /// that node; public hostnames that node serves as an edge.
    fn allowed_hostnames(&self, node: &str, service: &str) -> Result<Vec<String>> {
        let mut allowed = Vec::new();
        let placement = self.db.placement(service)?;
        // A service nobody placed (deployed with --direct): only its
        // internal name, the route hostnames are unknown to the master.
        if placement.is_none() {
            allowed.push(format!("{service}.{}", self.zone));
        }
        if let Some(p) = placement
            && p.node == node
        {
            allowed.push(format!("{service}.{}", self.zone));
            for c in &p.def.components {
                for r in &c.routes {
                    if let Some(h) = &r.hostname {
                        allowed.push(h.clone());
                    }
                }
            }
        }
        for e in self.db.edge_routes()? {
            if e.edge_node == node && e.service == service {
                allowed.push(e.hostname);
            }
        }
        Ok(allowed)
    }

    /// Signs a service certificate for `node` after checking every name.
    pub fn issue_service_certificate(&self, node: &str, req: &proto::IssueServiceCertificateRequest) -> Result<String> {
        // An empty name means the caller's own node.
        if !req.name.is_empty() && req.name != node {
            return Err(FleetError::Denied(format!(
                "agent-{node} may not ask for node {:?}",
                req.name
            )));
        }
        if req.hostnames.is_empty() {
            return Err(FleetError::Invalid("a certificate needs at least one hostname".into()));
        }
        let allowed = self.allowed_hostnames(node, &req.service)?;
        for h in &req.hostnames {
            service::check_hostname(h).map_err(|r| FleetError::Invalid(format!("hostname {h:?}: {r}")))?;
            if !allowed.contains(h) {
                return Err(FleetError::Denied(format!(
                    "{h} is not a name of service {} on node {node}",
                    req.service
                )));
            }
        }
        let chain = self
            .ca
            .sign_service_csr(&req.csr_pem, &req.hostnames, self.cfg.registration.cert_days)
            .map_err(|e| FleetError::Invalid(format!("certificate signing request: {e}")))?;
        tracing::info!(%node, service = %req.service, hostnames = ?req.hostnames, "service certificate issued");
        Ok(chain)
    }

    /// The host part of a node's registered address, if it is IPv4.
    fn node_ipv4(&self, node: &str) -> Option<std::net::Ipv4Addr> {
        let nodes = self.read_nodes();
        let addr = &nodes.get(node)?.address;
        addr.rsplit_once(':').and_then(|(h, _)| h.parse().ok())
    }

    /// Publishes `<service>.<zone>` → the node's address.
    pub fn register_dns(&self, node: &str, req: &proto::DnsRecordRequest) -> Result<()> {
        // An empty name means the caller's own node.
        if !req.name.is_empty() && req.name != node {
            return Err(FleetError::Denied(format!(
                "agent-{node} may not act for node {:?}",
                req.name
            )));
        }
        let expected = format!("{}.{}", req.service, self.zone);
        if req.hostname != expected {
            return Err(FleetError::Invalid(format!(
                "record {:?}: expected {expected}",
                req.hostname
            )));
        }
        // The service must be placed on the caller's node, or placed
        // nowhere (deployed with --direct, e.g. while the master was down)
        // and its name not held by another node.
        match self.db.placement(&req.service)? {
            Some(p) if p.node != node => {
                return Err(FleetError::Denied(format!(
                    "service {} is placed on node {}, not {node}",
                    req.service, p.node
                )));
            }
            Some(_) => {}
            None => {
                if let Some(other) = self
                    .db
                    .dns_records()?
                    .into_iter()
                    .find(|r| r.name == expected && r.node != node)
                {
                    return Err(FleetError::Denied(format!("{expected} belongs to node {}", other.node)));
                }
            }
        }
        let addr: std::net::Ipv4Addr = req
            .address
            .parse()
            .map_err(|_| FleetError::Invalid(format!("address {:?} is not IPv4", req.address)))?;
        if let Some(own) = self.node_ipv4(node)
            && own != addr
        {
            return Err(FleetError::Denied(format!(
                "{addr} is not node {node}'s address ({own})"
            )));
        }
        self.db
            .set_dns_record(&expected, &addr.to_string(), self.dns_ttl, node, &req.service)?;
        self.records
            .set(&expected, vec![addr])
            .map_err(|e| FleetError::Invalid(e.to_string()))?;
        tracing::info!(%node, name = %expected, %addr, "dns record set");
        Ok(())
    }

    /// Withdraws `<service>.<zone>` (only the node that holds it may).
    pub fn remove_dns(&self, node: &str, req: &proto::DnsRecordRequest) -> Result<()> {
        // An empty name means the caller's own node.
        if !req.name.is_empty() && req.name != node {
            return Err(FleetError::Denied(format!(
                "agent-{node} may not act for node {:?}",
                req.name
            )));
        }
        let name = format!("{}.{}", req.service, self.zone);
        let rows = self.db.dns_records()?;
        if let Some(other) = rows.iter().find(|r| r.name == name && r.node != node) {
            return Err(FleetError::Denied(format!("{name} belongs to node {}", other.node)));
        }
        self.db.remove_dns_records(&name)?;
        self.records.remove(&name);
        tracing::info!(%node, %name, "dns record removed");
        Ok(())
    }

    /// The zone's records.
    pub fn dns_records(&self) -> Result<Vec<proto::DnsRecord>> {
        Ok(self
            .db
            .dns_records()?
            .into_iter()
            .map(|r| proto::DnsRecord {
                name: r.name,
                r#type: r.kind,
                value: r.value,
                ttl: r.ttl,
                node: r.node,
                service: r.service,
            })
            .collect())
    }

    /// Proxy routes of every node, in parallel.
    pub async fn routes(&self) -> Result<proto::FleetRoutes> {
        let nodes: Vec<String> = self.read_nodes().keys().cloned().collect();
        let timeout = self.cfg.timeouts.health_check;
        let calls = nodes.iter().map(|n| async move {
            let r = self
                .call(n, timeout, |mut c| async move {
                    c.list_proxy_routes(proto::ListProxyRoutesRequest {}).await
                })
                .await;
            (n.clone(), r)
        });
        let mut out = Vec::new();
        for (node, r) in join_all(calls).await {
            out.push(match r {
                Ok(l) => proto::NodeRoutes {
                    node,
                    error: String::new(),
                    routes: l.routes,
                },
                Err(e) => proto::NodeRoutes {
                    node,
                    error: e.to_string(),
                    routes: vec![],
                },
            });
        }
        Ok(proto::FleetRoutes { nodes: out })
    }

    /// Public routes with what their edge reports now.
    pub async fn edge_routes(&self) -> Result<Vec<proto::EdgeRouteInfo>> {
        let rows = self.db.edge_routes()?;
        let edges: HashSet<String> = rows.iter().map(|r| r.edge_node.clone()).collect();
        let timeout = self.cfg.timeouts.health_check;
        let calls = edges.iter().map(|n| async move {
            let r = self
                .call(n, timeout, |mut c| async move {
                    c.list_proxy_routes(proto::ListProxyRoutesRequest {}).await
                })
                .await;
            (n.clone(), r)
        });
        let served: HashMap<String, std::result::Result<proto::ListProxyRoutesResponse, FleetError>> =
            join_all(calls).await.into_iter().collect();
        Ok(rows
            .into_iter()
            .map(|r| {
                let state = match served.get(&r.edge_node) {
                    Some(Ok(l)) if l.routes.iter().any(|x| x.hostname == r.hostname) => "ok",
                    Some(Ok(_)) => "missing",
                    _ => "unreachable",
                };
                proto::EdgeRouteInfo {
                    hostname: r.hostname,
                    service: r.service,
                    edge_node: r.edge_node,
                    backend_hostname: r.backend_hostname,
                    backend_port: r.backend_port.into(),
                    cert_serial: r.cert_serial,
                    cert_expires_at: r.cert_expires_at,
                    state: state.to_string(),
                }
            })
            .collect())
    }

    /// After a deploy on `node`: every public route of `def` gets an edge
    /// route on a healthy edge node; edge routes of hostnames no longer
    /// public are removed. Returns the step result, if there was anything
    /// to do.
    pub async fn sync_edge(&self, def: &ServiceDef, node: &str) -> Option<proto::StepResult> {
        let started = Instant::now();
        let public: Vec<(String, u16)> = def
            .components
            .iter()
            .flat_map(|c| &c.routes)
            .filter(|r| r.public)
            .filter_map(|r| r.hostname.clone().map(|h| (h, r.port as u16)))
            .collect();
        let existing: Vec<crate::db::EdgeRow> = match self.db.edge_routes() {
            Ok(rows) => rows.into_iter().filter(|e| e.service == def.name).collect(),
            Err(e) => return Some(step_failed("edge", started, e.to_string())),
        };
        if public.is_empty() && existing.is_empty() {
            return None;
        }
        let mut done = Vec::new();
        let mut problems = Vec::new();
        for stale in existing
            .iter()
            .filter(|e| !public.iter().any(|(h, _)| h == &e.hostname))
        {
            match self.remove_edge(stale).await {
                Ok(()) => done.push(format!("removed {}", stale.hostname)),
                Err(e) => problems.push(format!("{}: {e}", stale.hostname)),
            }
        }
        for (hostname, port) in &public {
            match self.setup_edge(def, node, hostname, *port).await {
                Ok(edge) => done.push(format!("{hostname} on {edge}")),
                Err(e) => problems.push(format!("{hostname}: {e}")),
            }
        }
        Some(if problems.is_empty() {
            proto::StepResult {
                step: "edge".into(),
                success: true,
                detail: done.join(", "),
                duration_ms: started.elapsed().as_millis() as u64,
                ..Default::default()
            }
        } else {
            step_failed("edge", started, problems.join("; "))
        })
    }

    /// Asks an edge node to serve `hostname` for `def`, backed by the
    /// worker `node`'s proxy listener for the route port.
    async fn setup_edge(&self, def: &ServiceDef, node: &str, hostname: &str, port: u16) -> Result<String> {
        let edge = self
            .read_nodes()
            .values()
            .find(|n| n.role == "edge" && n.healthy)
            .map(|n| n.name.clone())
            .ok_or_else(|| FleetError::Precondition("no healthy edge node".into()))?;
        let backend_hostname = format!("{}.{}", def.name, self.zone);
        // Where the worker's proxy listens for this route port.
        let routes = self
            .call(node, self.cfg.timeouts.edge_route, |mut c| async move {
                c.list_proxy_routes(proto::ListProxyRoutesRequest {}).await
            })
            .await?;
        let listener = routes
            .routes
            .iter()
            .find(|r| r.service == def.name && r.listener_port == u32::from(port) && !r.listener.is_empty())
            .map(|r| r.listener.clone())
            .ok_or_else(|| {
                FleetError::Precondition(format!(
                    "node {node} serves no proxy listener for port {port} of {}",
                    def.name
                ))
            })?;
        let backend_address = match listener.rsplit_once(':') {
            Some((host, p)) if host == "0.0.0.0" || host == "[::]" => {
                let ip = self
                    .node_ipv4(node)
                    .map(|i| i.to_string())
                    .unwrap_or_else(|| "127.0.0.1".into());
                format!("{ip}:{p}")
            }
            _ => listener,
        };
        let req = proto::SetupEdgeRouteRequest {
            hostname: hostname.to_string(),
            backend_hostname: backend_hostname.clone(),
            backend_port: port.into(),
            backend_tls: true,
            service: def.name.clone(),
            port: port.into(),
            backend_address,
        };
        // The edge asks the CA for the public name: record the route first.
        let mut row = crate::db::EdgeRow {
            hostname: hostname.to_string(),
            service: def.name.clone(),
            edge_node: edge.clone(),
            backend_hostname,
            backend_port: port,
            cert_serial: String::new(),
            cert_expires_at: 0,
        };
        self.db.save_edge_route(&row)?;
        match self
            .call(&edge, self.cfg.timeouts.edge_route, |mut c| {
                let req = req.clone();
                async move { c.setup_edge_route(req).await }
            })
            .await
        {
            Ok(resp) => {
                row.cert_serial = resp.cert_serial;
                row.cert_expires_at = resp.cert_expires_at;
                self.db.save_edge_route(&row)?;
                tracing::info!(%hostname, %edge, service = %def.name, "edge route set up");
                Ok(edge)
            }
            Err(e) => {
                self.db.delete_edge_route(hostname)?;
                Err(e)
            }
        }
    }

    /// Removes an edge route from its edge and from the database.
    async fn remove_edge(&self, e: &crate::db::EdgeRow) -> Result<()> {
        let req = proto::RemoveEdgeRouteRequest {
            hostname: e.hostname.clone(),
            port: e.backend_port.into(),
        };
        self.call(&e.edge_node, self.cfg.timeouts.edge_route, |mut c| {
            let req = req.clone();
            async move { c.remove_edge_route(req).await }
        })
        .await?;
        self.db.delete_edge_route(&e.hostname)?;
        Ok(())
    }

    /// Removes every edge route of `service` (after its worker side is gone).
    pub async fn remove_edges_of(&self, service: &str) -> Vec<String> {
        let mut problems = Vec::new();
        for e in self
            .db
            .edge_routes()
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e.service == service)
        {
            if let Err(err) = self.remove_edge(&e).await {
                problems.push(format!("edge route {} on {}: {err}", e.hostname, e.edge_node));
            }
        }
        problems
    }

    /// Orphans found by the last reconciliation.
    pub fn orphans(&self) -> Vec<String> {
        self.orphans.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    // --------------------------------------------------- health & reconcile

    /// Probes nodes silent for longer than `heartbeat.silent_after`; a failed
    /// probe marks the node unhealthy (excluded from placement).
    pub async fn check_health(&self) {
        let silent_since = now() - self.cfg.heartbeat.silent_after as i64;
        let silent: Vec<String> = self
            .read_nodes()
            .values()
            .filter(|n| n.healthy && n.last_seen < silent_since)
            .map(|n| n.name.clone())
            .collect();
        // Nothing changed: heartbeats are left to the batched writer. A
        // flush here would run SQLite (and a WAL checkpoint's fsync) on an
        // async worker and stall the requests queued behind it.
        if silent.is_empty() {
            return;
        }
        let timeout = self.cfg.timeouts.health_check;
        let probes = silent.iter().map(|n| async move {
            let r = self
                .call(n, timeout, |mut c| async move {
                    c.live_check(proto::LiveCheckRequest {}).await
                })
                .await;
            (n.clone(), r)
        });
        for (node, r) in join_all(probes).await {
            let reason = match r {
                Ok(_) => format!(
                    "no heartbeat for {} s (but answers probes)",
                    now() - self.last_seen(&node)
                ),
                Err(e) => format!(
                    "no heartbeat for {} s and health check failed: {e}",
                    now() - self.last_seen(&node)
                ),
            };
            let probe_failed = reason.contains("health check failed");
            if let Some(n) = self.write_nodes().get_mut(&node) {
                if probe_failed {
                    n.healthy = false;
                }
                n.status_reason = reason.clone();
            }
            if probe_failed {
                tracing::warn!(%node, %reason, "node unhealthy");
            }
            self.mark_dirty(&node);
        }
        if let Err(e) = self.flush() {
            tracing::error!(error = %e, "cannot write node states");
        }
    }

    fn last_seen(&self, node: &str) -> i64 {
        self.read_nodes().get(node).map(|n| n.last_seen).unwrap_or(0)
    }

    /// On start: ask every node what it runs, settle placements left in
    /// flight, report stale placements and orphans. Changes only the
    /// master's own records (agents are not touched).
    pub async fn reconcile(&self) -> Result<Vec<String>> {
        let mut report = Vec::new();
        let mut answered: HashMap<String, Vec<proto::ServiceInfo>> = HashMap::new();
        for (node, r) in self.list_workers().await {
            match r {
                Ok(list) => {
                    answered.insert(node, list.services);
                }
                Err(e) => {
                    if let Some(n) = self.write_nodes().get_mut(&node) {
                        n.healthy = false;
                        n.status_reason = format!("unreachable when the master started: {e}");
                    }
                    self.mark_dirty(&node);
                    report.push(format!("node {node} unreachable: {e}"));
                }
            }
        }
        self.flush()?;
        let placements = self.db.placements()?;
        for p in &placements {
            let Some(services) = answered.get(&p.node) else {
                continue;
            };
            match services.iter().find(|s| s.name == p.service) {
                Some(info) => {
                    if p.state == "deploying" || p.state == "unknown" {
                        let want: BTreeMap<&str, &str> = p
                            .def
                            .components
                            .iter()
                            .map(|c| (c.name.as_str(), c.image.as_str()))
                            .collect();
                        let have: BTreeMap<&str, &str> = info
                            .components
                            .iter()
                            .map(|c| (c.name.as_str(), c.image.as_str()))
                            .collect();
                        if want == have {
                            self.db
                                .set_placement_state(&p.service, "deployed", "confirmed by reconciliation")?;
                            report.push(format!(
                                "{}: deploy {} completed on {}",
                                p.service, p.request_id, p.node
                            ));
                        } else {
                            let detail = format!(
                                "deploy {} did not complete: {} runs {:?}, the definition wants {:?}; re-run the deploy",
                                p.request_id, p.node, have, want
                            );
                            self.db.set_placement_state(&p.service, "failed", &detail)?;
                            report.push(format!("{}: {detail}", p.service));
                        }
                    }
                }
                None => {
                    if p.state == "deploying" {
                        self.db.delete_placement(&p.service)?;
                        report.push(format!(
                            "{}: deploy {} never reached {}; placement dropped",
                            p.service, p.request_id, p.node
                        ));
                    } else {
                        let detail = format!("{} does not run it (was {}); re-deploy it", p.node, p.state);
                        self.db.set_placement_state(&p.service, "unknown", &detail)?;
                        report.push(format!("{}: stale placement: {detail}", p.service));
                    }
                }
            }
        }
        let mut orphans = Vec::new();
        for (node, services) in &answered {
            for s in services {
                let placed_here = placements.iter().any(|p| p.service == s.name && &p.node == node);
                if !placed_here {
                    orphans.push(format!("{node}/{}", s.name));
                }
            }
        }
        orphans.sort();
        for o in &orphans {
            report.push(format!("orphan: {o} runs but the master did not place it there"));
        }
        *self.orphans.lock().unwrap_or_else(|p| p.into_inner()) = orphans;
        for line in &report {
            tracing::warn!("reconcile: {line}");
        }
        Ok(report)
    }
}
