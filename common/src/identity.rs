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

    /// Extracts the identity from a DER certificate's SAN URIs.
    pub fn from_cert_der(der: &[u8]) -> Option<Identity> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let san = cert.subject_alternative_name().ok()??;
        san.value.general_names.iter().find_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Identity::from_uri(u),
            _ => None,
        })
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
    /// Maps to `PermissionDenied`, with the reason.
    Deny(String),
}

/// Callers allowed on every RPC of the agent service: the master, and
/// operators in `--direct` mode (SPEC §6).
const AGENT_SERVICE: (&str, &[Role]) = ("/mcp.v1.McpAgentService/", &[Role::Master, Role::Human]);

/// The authorization table: gRPC path prefix → roles allowed.
const TABLE: &[(&str, &[Role])] = &[AGENT_SERVICE];

/// Decides whether `who` may call the gRPC method at `path`
/// (`/package.Service/Method`). Unknown paths are denied.
pub fn authorize(path: &str, who: &Identity) -> Decision {
    match TABLE.iter().find(|(prefix, _)| path.starts_with(prefix)) {
        Some((_, roles)) if roles.contains(&who.role()) => Decision::Allow,
        Some(_) => Decision::Deny(format!("{who} may not call {path}")),
        None => Decision::Deny(format!("{path} is not an mcp RPC")),
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

    #[test]
    fn agent_rpcs() {
        let path = "/mcp.v1.McpAgentService/Deploy";
        let cases = [
            (Identity::Human("kyle".into()), true),
            (Identity::Master, true),
            (Identity::Agent("rift".into()), false),
        ];
        for (who, allowed) in cases {
            assert_eq!(authorize(path, &who) == Decision::Allow, allowed, "{who}");
        }
        assert!(matches!(
            authorize("/other.Service/X", &Identity::Master),
            Decision::Deny(_)
        ));
    }
}
