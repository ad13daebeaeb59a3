//! The agent's link to the master: join (token + CSR → certificate),
//! registration with backoff, heartbeats, and certificate renewal.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::config::AgentConfig;
use mcp_infra::tls::{self, CertStore};
use mcp_model::identity::{Identity, NODE_METADATA};
use mcp_model::join::JoinToken;
use mcp_proto::{self as proto, mcp_registration_service_client::McpRegistrationServiceClient};
use tonic::transport::Channel;

use crate::handle::Agent;

type Client = McpRegistrationServiceClient<Channel>;

/// Result of a successful join.
pub struct Joined {
    pub key_pem: String,
    pub chain_pem: String,
    pub ca_pem: String,
}

/// Joins the fleet: the key is made here and never sent; the master is
/// verified against the CA fingerprint carried by the token.
pub async fn join(master: &str, token: &JoinToken, dns: Vec<String>, ips: Vec<IpAddr>) -> anyhow::Result<Joined> {
    let node = Identity::Agent(token.node.clone());
    let req = mcp_infra::pki::make_csr(&node, &dns, &ips)?;
    let config = tls::pinned_client_config(&token.ca_fingerprint, Identity::Master)?;
    let timeouts = tls::Timeouts {
        connect: Duration::from_secs(10),
        request: Some(Duration::from_secs(30)),
    };
    let (channel, _) = tls::connect(&[master.to_string()], config, timeouts).await?;
    let resp = McpRegistrationServiceClient::new(channel)
        .join(proto::JoinRequest {
            name: token.node.clone(),
            token: token.to_string(),
            csr_pem: req.csr_pem,
        })
        .await
        .map_err(|s| anyhow::anyhow!("master refused the join: {} ({:?})", s.message(), s.code()))?
        .into_inner();
    Ok(Joined {
        key_pem: req.key_pem,
        chain_pem: resp.cert_chain_pem,
        ca_pem: resp.ca_pem,
    })
}

/// Adds the `mcp-node` metadata every registration RPC needs.
fn request<T>(node: &str, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Ok(v) = node.parse() {
        r.metadata_mut().insert(NODE_METADATA, v);
    }
    r
}

/// Backoff with jitter: 1 s doubling to a 60 s cap, ±20 %.
pub fn backoff(attempt: u32) -> Duration {
    let base = (1u64 << attempt.min(6)).min(60) as f64;
    let r = mcp_infra::random::random_bytes::<2>()
        .map(u16::from_le_bytes)
        .unwrap_or(0) as f64
        / 65535.0;
    Duration::from_secs_f64(base * (0.8 + 0.4 * r))
}

/// Keeps the node registered and heartbeating until `stop` flips.
pub async fn run(agent: Arc<Agent>, store: Arc<CertStore>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let Some(master) = agent.cfg.master.clone() else { return };
    let node = agent.name().to_string();
    let mut attempt = 0u32;
    loop {
        let session = session(&agent, &store, &master.address, &node);
        tokio::select! {
            (reason, registered) = session => {
                // A session that got registered was a success: start the
                // backoff over instead of waiting the cap after every blip.
                if registered {
                    attempt = 0;
                }
                let wait = backoff(attempt);
                attempt = attempt.saturating_add(1);
                tracing::warn!(%reason, retry_in = ?wait, "master link down");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => return,
                }
            }
            _ = stop.changed() => return,
        }
        if attempt > 0 && attempt % 10 == 0 {
            tracing::warn!(attempts = attempt, master = %master.address, "still cannot reach the master");
        }
    }
}

async fn connect(cfg: &AgentConfig, address: &str) -> Result<Client, String> {
    let config = tls::client_config(&cfg.tls, Some(Identity::Master)).map_err(|e| e.to_string())?;
    let timeouts = tls::Timeouts {
        connect: Duration::from_secs(5),
        request: Some(Duration::from_secs(15)),
    };
    let (channel, _) = tls::connect(&[address.to_string()], config, timeouts)
        .await
        .map_err(|e| e.to_string())?;
    Ok(McpRegistrationServiceClient::new(channel))
}

/// One connection's worth of work: register, then heartbeat until
/// something fails; returns why, and whether it got registered.
async fn session(agent: &Agent, store: &CertStore, address: &str, node: &str) -> (String, bool) {
    let cfg = &agent.cfg;
    let mut client = match connect(cfg, address).await {
        Ok(c) => c,
        Err(e) => return (e, false),
    };
    let role = cfg.master.as_ref().map(|m| m.role.clone()).unwrap_or_default();
    let (mem_total, _) = crate::node::memory();
    let reg = proto::RegisterRequest {
        name: node.to_string(),
        role,
        address: cfg.advertised(),
        arch: crate::node::arch().to_string(),
        version: mcp_infra::VERSION.to_string(),
        cpus: std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1),
        memory_total_bytes: mem_total,
    };
    let interval = match client.register(request(node, reg)).await {
        Ok(r) => r.into_inner().heartbeat_seconds.max(1),
        Err(s) => return (format!("register: {} ({:?})", s.message(), s.code()), false),
    };
    tracing::info!(master = %address, heartbeat_seconds = interval, "registered with the master");
    let mut tick = tokio::time::interval(Duration::from_secs(interval as u64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let hb = heartbeat(agent, node).await;
        match client.heartbeat(request(node, hb)).await {
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                tracing::debug!(reason = %s.message(), "heartbeat rate-limited");
            }
            Err(s) => return (format!("heartbeat: {} ({:?})", s.message(), s.code()), true),
        }
        match renew_if_due(agent, store, &mut client, node).await {
            // The connection keeps the old (still valid) certificate; the
            // next connection presents the new one. Reconnecting now would
            // re-register and could hit the Register rate limit.
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "certificate renewal failed; will retry"),
        }
    }
}

async fn heartbeat(agent: &Agent, node: &str) -> proto::HeartbeatRequest {
    let (mem_total, mem_avail) = crate::node::memory();
    let (disk_total, disk_avail) = crate::node::disk(&agent.cfg.agent.data_dir);
    // The containers this agent runs (what placement balances), not others
    // the user may run by hand.
    let (containers, _) = agent.runtime.count_node(node).await.unwrap_or((0, 0));
    proto::HeartbeatRequest {
        name: node.to_string(),
        cpu_load: crate::node::load1(),
        memory_total_bytes: mem_total,
        memory_available_bytes: mem_avail,
        disk_total_bytes: disk_total,
        disk_available_bytes: disk_avail,
        containers,
        cpus: std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1),
    }
}

/// Renews the agent certificate when less than a third of its lifetime is
/// left: new key and CSR, signed by the master, written, and swapped into
/// the running listener. Returns whether it renewed.
async fn renew_if_due(agent: &Agent, store: &CertStore, client: &mut Client, node: &str) -> anyhow::Result<bool> {
    let files = &agent.cfg.tls;
    let pem = std::fs::read_to_string(&files.cert)?;
    let (left, total) =
        mcp_infra::pki::lifetime(&pem).ok_or_else(|| anyhow::anyhow!("cannot read {}", files.cert.display()))?;
    if left > total / 3 {
        return Ok(false);
    }
    let (dns, ips) = mcp_infra::pki::sans(&pem);
    let req = mcp_infra::pki::make_csr(&Identity::Agent(node.to_string()), &dns, &ips)?;
    let resp = client
        .issue_certificate(request(
            node,
            proto::IssueCertificateRequest {
                name: node.to_string(),
                csr_pem: req.csr_pem,
            },
        ))
        .await
        .map_err(|s| anyhow::anyhow!("{} ({:?})", s.message(), s.code()))?
        .into_inner();
    mcp_infra::pki::Issued {
        chain_pem: resp.cert_chain_pem,
        key_pem: req.key_pem,
    }
    .write(&files.cert, &files.key)?;
    store.reload()?;
    tracing::info!(seconds_left_before = left, "agent certificate renewed");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_a_jittered_cap() {
        for (attempt, base) in [(0u32, 1.0), (1, 2.0), (3, 8.0), (6, 60.0), (20, 60.0)] {
            let d = backoff(attempt).as_secs_f64();
            assert!(
                d >= base * 0.8 - 1e-9 && d <= base * 1.2 + 1e-9,
                "attempt {attempt}: {d}"
            );
        }
    }
}
