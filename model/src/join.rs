//! One-time join tokens (`mcp node add`): `mcpjoin1.<node>.<secret>.<ca>`,
//! where `<ca>` is the SHA-256 of the fleet CA certificate, so the joining
//! agent can verify the master before it has the CA. The master stores only
//! the SHA-256 of the secret.

use sha2::{Digest, Sha256};

const PREFIX: &str = "mcpjoin1";

/// A parsed join token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub node: String,
    pub secret: String,
    /// Hex SHA-256 of the CA certificate (DER).
    pub ca_fingerprint: String,
}

impl JoinToken {
    /// A new token whose secret is `secret` (32 bytes from a CSPRNG).
    pub fn new(node: &str, secret: [u8; 32], ca_fingerprint: &str) -> JoinToken {
        JoinToken {
            node: node.to_string(),
            secret: hex::encode(secret),
            ca_fingerprint: ca_fingerprint.to_string(),
        }
    }

    /// Parses the text form, naming what is wrong.
    pub fn parse(text: &str) -> Result<JoinToken, String> {
        let parts: Vec<&str> = text.trim().split('.').collect();
        let [prefix, node, secret, ca] = parts.as_slice() else {
            return Err("a join token has the form mcpjoin1.<node>.<secret>.<ca-sha256>".into());
        };
        if *prefix != PREFIX {
            return Err(format!("unknown join token version {prefix:?}"));
        }
        crate::service::check_name(node).map_err(|r| format!("join token node: {r}"))?;
        let hex64 = |s: &str| s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit());
        if !hex64(secret) || !hex64(ca) {
            return Err("join token is damaged (secret or CA fingerprint is not 64 hex digits)".into());
        }
        Ok(JoinToken {
            node: node.to_string(),
            secret: secret.to_string(),
            ca_fingerprint: ca.to_ascii_lowercase(),
        })
    }

    /// What the master stores: the SHA-256 of the secret.
    pub fn secret_hash(&self) -> String {
        hash_secret(&self.secret)
    }
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{PREFIX}.{}.{}.{}", self.node, self.secret, self.ca_fingerprint)
    }
}

/// Hex SHA-256 of a secret.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let fp = "ab".repeat(32);
        let t = JoinToken::new("rift", [7; 32], &fp);
        let text = t.to_string();
        assert_eq!(JoinToken::parse(&text).unwrap(), t);
        assert_ne!(JoinToken::new("rift", [8; 32], &fp).secret, t.secret);
        assert_eq!(t.secret_hash().len(), 64);
        for bad in [
            "",
            "mcpjoin2.rift.x.y",
            &text.replace("rift", "Rift"),
            &text[..text.len() - 1],
            "a.b.c",
        ] {
            assert!(JoinToken::parse(bad).is_err(), "{bad}");
        }
    }
}
