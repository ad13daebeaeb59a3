//! Identities (SPEC §6) and the authorization table.
//!
//! An identity travels in the certificate as a SAN URI (`mcp://human/kyle`,
//! `mcp://master`, `mcp://agent/rift`); its common name is `human-kyle`,
//! `mcp-master` or `agent-rift`. Authorization is one pure function over one
//! table, so every RPC's policy can be read (and tested) in one place.

use std::fmt;

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// An operator using the CLI.
    Human(String),
    /// The fleet master.
    Master,
    /// The agent of the named node.
    Agent(String),
}

/// Role part of an identity, as used in the authorization table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Human,
    Master,
    Agent,
}

impl Identity {
    /// SAN URI carried in certificates.
    pub fn uri(&self) -> String {
        match self {
            Identity::Human(n) => format!("mcp://human/{n}"),
            Identity::Master => "mcp://master".to_string(),
            Identity::Agent(n) => format!("mcp://agent/{n}"),
        }
    }

    /// Parses a SAN URI; `None` if it is not an mcp identity.
    pub fn from_uri(uri: &str) -> Option<Identity> {
        let rest = uri.strip_prefix("mcp://")?;
        let valid = |n: &str| crate::service::check_name(n).is_ok();
        match rest.split_once('/') {
            None if rest == "master" => Some(Identity::Master),
            Some(("human", n)) if valid(n) => Some(Identity::Human(n.to_string())),
            Some(("agent", n)) if valid(n) => Some(Identity::Agent(n.to_string())),
            _ => None,
        }
    }

    /// Parses `human/kyle`, `master` or `agent/rift` (command-line spelling).
    pub fn from_spec(spec: &str) -> Option<Identity> {
        Identity::from_uri(&format!("mcp://{spec}"))
    }

    /// Certificate common name: `human-kyle`, `mcp-master`, `agent-rift`.
    pub fn common_name(&self) -> String {
        match self {
            Identity::Human(n) => format!("human-{n}"),
            Identity::Master => "mcp-master".to_string(),
            Identity::Agent(n) => format!("agent-{n}"),
        }
    }

    /// Role of this identity.
    pub fn role(&self) -> Role {
        match self {
            Identity::Human(_) => Role::Human,
            Identity::Master => Role::Master,
            Identity::Agent(_) => Role::Agent,
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.common_name())
    }
}

/// Outcome of an authorization decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Maps to `Unauthenticated`: no (valid) credentials.
    Unauthenticated(String),
    /// Maps to `PermissionDenied`, with the reason.
    Deny(String),
}

/// Who may call an RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Any of these roles.
    Roles(&'static [Role]),
    /// An agent, about its own node only: the node named in the `mcp-node`
    /// request metadata must be the caller's (`agent-<node>`).
    AgentSelf,
    /// No caller identity needed: the request carries its own credential
    /// (a one-time join token), checked by the handler.
    Token,
}

/// Request metadata key naming the node an agent acts for.
pub const NODE_METADATA: &str = "mcp-node";

/// The authorization table (SPEC §6): gRPC path prefix → policy. The first
/// matching prefix wins, so specific methods precede their service.
pub const TABLE: &[(&str, Policy)] = &[
    // master → agent: service data for snapshots and migration (and
    // operators in --direct mode)
    (
        "/mcp.v1.McpAgentService/ExportServiceData",
        Policy::Roles(&[Role::Master, Role::Human]),
    ),
    (
        "/mcp.v1.McpAgentService/ImportServiceData",
        Policy::Roles(&[Role::Master, Role::Human]),
    ),
    // master → agent (and operators in --direct mode)
    ("/mcp.v1.McpAgentService/", Policy::Roles(&[Role::Master, Role::Human])),
    // CLI → master: snapshots and migration
    (
        "/mcp.v1.McpMasterService/CreateSnapshot",
        Policy::Roles(&[Role::Human, Role::Master]),
    ),
    (
        "/mcp.v1.McpMasterService/ListSnapshots",
        Policy::Roles(&[Role::Human, Role::Master]),
    ),
    (
        "/mcp.v1.McpMasterService/RestoreSnapshot",
        Policy::Roles(&[Role::Human, Role::Master]),
    ),
    (
        "/mcp.v1.McpMasterService/MigrateService",
        Policy::Roles(&[Role::Human, Role::Master]),
    ),
    // CLI → master
    ("/mcp.v1.McpMasterService/", Policy::Roles(&[Role::Human, Role::Master])),
    // agent → master
    ("/mcp.v1.McpRegistrationService/Join", Policy::Token),
    ("/mcp.v1.McpRegistrationService/", Policy::AgentSelf),
];

/// The policy of the gRPC method at `path`, if it is an mcp RPC.
pub fn policy(path: &str) -> Option<Policy> {
    TABLE
        .iter()
        .find(|(prefix, _)| path.starts_with(prefix))
        .map(|(_, p)| *p)
}

/// Decides whether `who` (None: no credentials) may call the gRPC method at
/// `path` (`/package.Service/Method`); `claimed_node` is the `mcp-node`
/// metadata. Unknown paths are denied.
pub fn authorize(path: &str, who: Option<&Identity>, claimed_node: Option<&str>) -> Decision {
    let Some(policy) = policy(path) else {
        return Decision::Deny(format!("{path} is not an mcp RPC"));
    };
    if policy == Policy::Token {
        return Decision::Allow;
    }
    let Some(who) = who else {
        return Decision::Unauthenticated("a client certificate or token carrying an mcp identity is required".into());
    };
    match policy {
        Policy::Roles(roles) if roles.contains(&who.role()) => Decision::Allow,
        Policy::Roles(_) => Decision::Deny(format!("{who} may not call {path}")),
        Policy::AgentSelf => match (who, claimed_node) {
            (Identity::Agent(n), Some(c)) if n == c => Decision::Allow,
            (Identity::Agent(n), Some(c)) => Decision::Deny(format!("agent-{n} may not act for node {c}")),
            (Identity::Agent(_), None) => Decision::Deny(format!("{path} needs the {NODE_METADATA} metadata")),
            _ => Decision::Deny(format!("only agents may call {path}, not {who}")),
        },
        Policy::Token => Decision::Allow,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_round_trip() {
        for id in [
            Identity::Human("kyle".into()),
            Identity::Master,
            Identity::Agent("rift".into()),
        ] {
            assert_eq!(Identity::from_uri(&id.uri()), Some(id.clone()));
        }
        for bad in [
            "mcp://agent/",
            "mcp://agent/Rift",
            "mcp://root/x",
            "https://master",
            "mcp://master/x",
        ] {
            assert_eq!(Identity::from_uri(bad), None, "{bad}");
        }
        assert_eq!(Identity::from_spec("human/kyle"), Some(Identity::Human("kyle".into())));
        assert_eq!(Identity::Agent("rift".into()).common_name(), "agent-rift");
    }

    /// One row per (path, caller, claimed node) → expected decision kind.
    #[test]
    fn table() {
        let human = Identity::Human("kyle".into());
        let a = Identity::Agent("a".into());
        let m = Identity::Master;
        let cases: &[(&str, Option<&Identity>, Option<&str>, &str)] = &[
            ("/mcp.v1.McpAgentService/Deploy", Some(&human), None, "allow"),
            ("/mcp.v1.McpAgentService/Deploy", Some(&m), None, "allow"),
            ("/mcp.v1.McpAgentService/Deploy", Some(&a), None, "deny"),
            ("/mcp.v1.McpAgentService/Deploy", None, None, "unauthenticated"),
            ("/mcp.v1.McpMasterService/Deploy", Some(&human), None, "allow"),
            ("/mcp.v1.McpMasterService/Deploy", Some(&m), None, "allow"),
            ("/mcp.v1.McpMasterService/AddNode", Some(&a), Some("a"), "deny"),
            ("/mcp.v1.McpRegistrationService/Register", Some(&a), Some("a"), "allow"),
            ("/mcp.v1.McpRegistrationService/Register", Some(&a), Some("b"), "deny"),
            ("/mcp.v1.McpRegistrationService/Heartbeat", Some(&a), None, "deny"),
            (
                "/mcp.v1.McpRegistrationService/Heartbeat",
                Some(&human),
                Some("a"),
                "deny",
            ),
            (
                "/mcp.v1.McpRegistrationService/IssueCertificate",
                Some(&m),
                None,
                "deny",
            ),
            (
                "/mcp.v1.McpRegistrationService/Register",
                None,
                Some("a"),
                "unauthenticated",
            ),
            ("/mcp.v1.McpRegistrationService/Join", None, None, "allow"),
            ("/other.Service/X", Some(&m), None, "deny"),
            ("/mcp.v1.McpAgentService/ExportServiceData", Some(&m), None, "allow"),
            ("/mcp.v1.McpAgentService/ImportServiceData", Some(&human), None, "allow"),
            ("/mcp.v1.McpAgentService/ImportServiceData", Some(&a), Some("a"), "deny"),
            ("/mcp.v1.McpMasterService/MigrateService", Some(&human), None, "allow"),
            ("/mcp.v1.McpMasterService/CreateSnapshot", Some(&a), Some("a"), "deny"),
            (
                "/mcp.v1.McpMasterService/RestoreSnapshot",
                None,
                None,
                "unauthenticated",
            ),
        ];
        for (path, who, node, want) in cases {
            let got = match authorize(path, *who, *node) {
                Decision::Allow => "allow",
                Decision::Deny(_) => "deny",
                Decision::Unauthenticated(_) => "unauthenticated",
            };
            assert_eq!(got, *want, "{path} {who:?} {node:?}");
        }
    }
}
