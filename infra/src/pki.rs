//! The built-in certificate authority (rcgen): a self-signed ECDSA P-256 CA
//! that issues leaf certificates carrying an mcp identity.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::fsutil::{self, FileError};
use mcp_model::identity::Identity;

/// Why a CA operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("no CA in {0}: create one first (mcp-agent init)")]
    Missing(String),
}

/// A certificate authority loaded from `<dir>/ca.pem` and `<dir>/ca.key`.
pub struct Ca {
    cert_pem: String,
    key: KeyPair,
}

/// What a leaf certificate should say.
#[derive(Debug, Clone, Default)]
pub struct LeafRequest {
    pub identity: Option<Identity>,
    pub dns_names: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub days: i64,
}

/// A freshly issued certificate: chain (leaf then CA) and private key, PEM.
pub struct Issued {
    pub chain_pem: String,
    pub key_pem: String,
}

impl Ca {
    /// Path of the CA certificate in `dir`.
    pub fn cert_path(dir: &Path) -> PathBuf {
        dir.join("ca.pem")
    }

    /// Path of the CA key in `dir`.
    pub fn key_path(dir: &Path) -> PathBuf {
        dir.join("ca.key")
    }

    /// Creates a new CA in `dir` (ca.pem 0644, ca.key 0600), valid ten years.
    pub fn create(dir: &Path, name: &str) -> Result<Ca, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("{name} CA"));
        dn.push(DnType::OrganizationName, "mcp");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(3650);
        let cert = params.self_signed(&key)?;
        fsutil::write_private(&Ca::key_path(dir), key.serialize_pem().as_bytes())?;
        fsutil::write_atomic(&Ca::cert_path(dir), cert.pem().as_bytes(), 0o644)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            key,
        })
    }

    /// Loads the CA in `dir`; its key must be private (0600).
    pub fn load(dir: &Path) -> Result<Ca, PkiError> {
        let cert_path = Ca::cert_path(dir);
        if !cert_path.exists() {
            return Err(PkiError::Missing(dir.display().to_string()));
        }
        let key_path = Ca::key_path(dir);
        let key_pem = String::from_utf8(fsutil::read_private(&key_path)?).map_err(|_| PkiError::Invalid {
            path: key_path.display().to_string(),
            reason: "not UTF-8 PEM".into(),
        })?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| PkiError::Invalid {
            path: key_path.display().to_string(),
            reason: e.to_string(),
        })?;
        let cert_pem = std::fs::read_to_string(&cert_path).map_err(|source| FileError::Io {
            path: cert_path.display().to_string(),
            source,
        })?;
        Ok(Ca { cert_pem, key })
    }

    /// Loads the CA in `dir`, creating it first if there is none.
    pub fn load_or_create(dir: &Path, name: &str) -> Result<Ca, PkiError> {
        if Ca::cert_path(dir).exists() {
            Ca::load(dir)
        } else {
            Ca::create(dir, name)
        }
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a leaf certificate with a new key, usable for both server and
    /// client authentication (agents are both).
    pub fn issue(&self, req: &LeafRequest) -> Result<Issued, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        let cn = match &req.identity {
            Some(id) => id.common_name(),
            None => req.dns_names.first().cloned().unwrap_or_else(|| "mcp".into()),
        };
        dn.push(DnType::CommonName, cn);
        dn.push(DnType::OrganizationName, "mcp");
        params.distinguished_name = dn;
        let mut sans = Vec::new();
        if let Some(id) = &req.identity {
            sans.push(SanType::URI(id.uri().try_into()?));
        }
        for d in &req.dns_names {
            sans.push(SanType::DnsName(d.clone().try_into()?));
        }
        for ip in &req.ips {
            sans.push(SanType::IpAddress(*ip));
        }
        params.subject_alt_names = sans;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::minutes(5);
        params.not_after = now + Duration::days(req.days.max(1));
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)?;
        let cert = params.signed_by(&key, &issuer)?;
        Ok(Issued {
            chain_pem: format!("{}{}", cert.pem(), self.cert_pem),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A key made locally and a CSR for it: the key never leaves the node.
pub struct Request {
    pub key_pem: String,
    pub csr_pem: String,
}

/// Makes a new key and a CSR asking for `identity` (if any) with these SANs.
pub fn make_csr(identity: &Identity, dns_names: &[String], ips: &[IpAddr]) -> Result<Request, PkiError> {
    make_request(Some(identity), dns_names, ips)
}

/// Makes a new key and a CSR for a service's DNS names.
pub fn make_service_csr(dns_names: &[String]) -> Result<Request, PkiError> {
    make_request(None, dns_names, &[])
}

fn make_request(identity: Option<&Identity>, dns_names: &[String], ips: &[IpAddr]) -> Result<Request, PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    let cn = identity
        .map(Identity::common_name)
        .unwrap_or_else(|| dns_names.first().cloned().unwrap_or_else(|| "service".into()));
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    let mut sans = Vec::new();
    if let Some(identity) = identity {
        sans.push(SanType::URI(identity.uri().try_into()?));
    }
    for d in dns_names {
        sans.push(SanType::DnsName(d.clone().try_into()?));
    }
    sans.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    params.subject_alt_names = sans;
    let csr = params.serialize_request(&key)?;
    Ok(Request {
        key_pem: key.serialize_pem(),
        csr_pem: csr.pem()?,
    })
}

/// SHA-256 of the first certificate in `pem` (hex): pins a CA out of band.
pub fn fingerprint(pem: &str) -> Option<String> {
    use sha2::{Digest, Sha256};
    let der = crate::tls::parse_certs(pem.as_bytes()).ok()?.into_iter().next()?;
    Some(hex::encode(Sha256::digest(der.as_ref())))
}

impl Ca {
    /// Signs a CSR as `identity`. The subject and URI SAN come from the
    /// identity the caller proved, never from the CSR; the DNS and IP SANs
    /// the CSR asks for are kept. Returns the chain (leaf, CA), PEM.
    pub fn sign_csr(&self, csr_pem: &str, identity: &Identity, days: i64) -> Result<String, PkiError> {
        self.sign(csr_pem, Some(identity), None, days)
    }

    /// Signs a CSR for a service: a server certificate whose DNS SANs are
    /// exactly `hostnames` (what the CSR asks for is ignored), no identity.
    pub fn sign_service_csr(&self, csr_pem: &str, hostnames: &[String], days: i64) -> Result<String, PkiError> {
        self.sign(csr_pem, None, Some(hostnames), days)
    }

    fn sign(
        &self,
        csr_pem: &str,
        identity: Option<&Identity>,
        hostnames: Option<&[String]>,
        days: i64,
    ) -> Result<String, PkiError> {
        let invalid = |reason: String| PkiError::Invalid {
            path: "certificate signing request".into(),
            reason,
        };
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| invalid(e.to_string()))?;
        let mut dn = DistinguishedName::new();
        let cn = match (identity, hostnames) {
            (Some(id), _) => id.common_name(),
            (None, Some(h)) => h.first().cloned().unwrap_or_else(|| "service".into()),
            (None, None) => "mcp".into(),
        };
        dn.push(DnType::CommonName, cn);
        dn.push(DnType::OrganizationName, "mcp");
        let mut sans = Vec::new();
        if let Some(id) = identity {
            sans.push(SanType::URI(id.uri().try_into()?));
        }
        match hostnames {
            Some(h) => {
                for name in h {
                    sans.push(SanType::DnsName(name.clone().try_into()?));
                }
            }
            None => {
                for san in &csr.params.subject_alt_names {
                    if let SanType::DnsName(_) | SanType::IpAddress(_) = san {
                        sans.push(san.clone());
                    }
                }
            }
        }
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.distinguished_name = dn;
        params.subject_alt_names = sans;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = if identity.is_some() {
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth]
        } else {
            vec![ExtendedKeyUsagePurpose::ServerAuth]
        };
        params.use_authority_key_identifier_extension = true;
        params.not_before = now - Duration::minutes(5);
        params.not_after = now + Duration::days(days.max(1));
        csr.params = params;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)?;
        let cert = csr.signed_by(&issuer)?;
        Ok(format!("{}{}", cert.pem(), self.cert_pem))
    }
}

impl Ca {
    /// Issues a client certificate for `identity` valid `days` into `out`:
    /// `cert.pem`, `key.pem` (0600) and the CA as `ca.pem`: what the CLI's
    /// `[auth]` section points at.
    pub fn write_client(&self, identity: &Identity, out: &Path, days: i64) -> Result<(), PkiError> {
        let issued = self.issue(&LeafRequest {
            identity: Some(identity.clone()),
            days,
            ..Default::default()
        })?;
        issued.write(&out.join("cert.pem"), &out.join("key.pem"))?;
        fsutil::write_atomic(&out.join("ca.pem"), self.cert_pem.as_bytes(), 0o644)?;
        Ok(())
    }
}

impl Issued {
    /// Writes the chain (0644) and key (0600).
    pub fn write(&self, cert: &Path, key: &Path) -> Result<(), FileError> {
        fsutil::write_private(key, self.key_pem.as_bytes())?;
        fsutil::write_atomic(cert, self.chain_pem.as_bytes(), 0o644)
    }
}

/// Seconds until the first certificate in `pem` expires (negative if past).
pub fn seconds_until_expiry(pem: &str) -> Option<i64> {
    let der = crate::tls::parse_certs(pem.as_bytes()).ok()?.into_iter().next()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    let not_after = cert.validity().not_after.timestamp();
    Some(not_after - OffsetDateTime::now_utc().unix_timestamp())
}

/// (serial in hex, expiry in Unix seconds) of the first certificate.
pub fn serial_and_expiry(pem: &str) -> Option<(String, i64)> {
    let der = crate::tls::parse_certs(pem.as_bytes()).ok()?.into_iter().next()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    Some((hex::encode(cert.raw_serial()), cert.validity().not_after.timestamp()))
}

/// (seconds left, total lifetime in seconds) of the first certificate.
pub fn lifetime(pem: &str) -> Option<(i64, i64)> {
    let der = crate::tls::parse_certs(pem.as_bytes()).ok()?.into_iter().next()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    let (from, to) = (
        cert.validity().not_before.timestamp(),
        cert.validity().not_after.timestamp(),
    );
    Some((to - OffsetDateTime::now_utc().unix_timestamp(), to - from))
}

/// DNS and IP SANs of the first certificate (to ask for them again).
pub fn sans(pem: &str) -> (Vec<String>, Vec<IpAddr>) {
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    let Some(der) = crate::tls::parse_certs(pem.as_bytes())
        .ok()
        .and_then(|c| c.into_iter().next())
    else {
        return (dns, ips);
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(&der) else {
        return (dns, ips);
    };
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => dns.push(d.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(b) => match b.len() {
                    4 => ips.push(IpAddr::from(<[u8; 4]>::try_from(*b).expect("length checked"))),
                    16 => ips.push(IpAddr::from(<[u8; 16]>::try_from(*b).expect("length checked"))),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    (dns, ips)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_cert_carries_identity_and_chain() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::create(dir.path(), "test").unwrap();
        let issued = ca
            .issue(&LeafRequest {
                identity: Some(Identity::Agent("rift".into())),
                dns_names: vec!["rift".into()],
                ips: vec!["127.0.0.1".parse().unwrap()],
                days: 30,
            })
            .unwrap();
        let certs = crate::tls::parse_certs(issued.chain_pem.as_bytes()).unwrap();
        assert_eq!(certs.len(), 2);
        assert_eq!(crate::tls::identity_of(&certs[0]), Some(Identity::Agent("rift".into())));
        let left = seconds_until_expiry(&issued.chain_pem).unwrap();
        let (l, total) = lifetime(&issued.chain_pem).unwrap();
        assert!((l - left).abs() < 5 && total > 30 * 86400, "{l} {total}");
        assert_eq!(
            sans(&issued.chain_pem),
            (vec!["rift".to_string()], vec!["127.0.0.1".parse().unwrap()])
        );
        assert!((29 * 86400..=30 * 86400).contains(&left), "{left}");
        // A CSR asking for another identity gets the one the CA decides.
        let req = make_csr(&Identity::Agent("evil".into()), &["rift.lan".into()], &[]).unwrap();
        let chain = ca.sign_csr(&req.csr_pem, &Identity::Agent("rift".into()), 90).unwrap();
        let certs = crate::tls::parse_certs(chain.as_bytes()).unwrap();
        assert_eq!(crate::tls::identity_of(&certs[0]), Some(Identity::Agent("rift".into())));
        assert!(ca.sign_csr("garbage", &Identity::Master, 1).is_err());
        assert_eq!(fingerprint(ca.cert_pem()).unwrap().len(), 64);
        // Service certificates carry exactly the hostnames the CA decides.
        let req = make_service_csr(&["evil.example.net".into()]).unwrap();
        let chain = ca.sign_service_csr(&req.csr_pem, &["web.svc.zone".into()], 90).unwrap();
        assert_eq!(sans(&chain).0, ["web.svc.zone"]);
        let certs = crate::tls::parse_certs(chain.as_bytes()).unwrap();
        assert_eq!(crate::tls::identity_of(&certs[0]), None);
        // Reloading keeps the same CA.
        let again = Ca::load(dir.path()).unwrap();
        assert_eq!(again.cert_pem(), ca.cert_pem());
    }
}
