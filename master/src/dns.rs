//! The master's built-in authoritative DNS server for the internal zone
//! (SPEC §4 step 5, §5 DNS row): the embedded default of the DNS concern.
//!
//! Three layers, from pure to effectful:
//!
//! - [`Records`]: the names the master holds, as an immutable [`RecordSet`]
//!   snapshot swapped atomically on every change; each change bumps the SOA
//!   serial. Readers never wait for a writer's work, only for the swap.
//! - [`answer`]: a pure function from a question, the zone settings and a
//!   snapshot to an [`Answer`]. It holds every rule of the zone: SOA and NS
//!   at the apex, A records below it, NXDOMAIN and NODATA with the SOA in the
//!   authority section, REFUSED outside the zone.
//! - [`serve`]: hickory-server on UDP and TCP for every configured address;
//!   the request handler only checks the message shape and encodes the
//!   answer.
//!
//! Invariants:
//!
//! - Authoritative only: the server never recurses or forwards, and never
//!   sets RA. Names outside the zone are REFUSED. A node must therefore keep
//!   other resolvers for everything else, and fallback resolvers besides this
//!   one (SPEC §14): the built-in DNS is never the only resolver of a host.
//! - Nothing a client sends can stop a listener: undecodable messages get
//!   FORMERR (or nothing, if not even the header can be read), messages of
//!   the wrong shape get FORMERR, NOTIMP or REFUSED, and the listener keeps
//!   serving.
//! - UDP answers fit in 512 bytes, or in the client's EDNS payload size
//!   (capped at [`MAX_UDP_PAYLOAD`]); longer ones are truncated with TC set,
//!   so the client retries over TCP.
//! - Listen addresses are explicit: no default address, no wildcard implied
//!   (a local resolver often holds port 53 on localhost).

mod server;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

// hickory's DNS message types: the DNS wire format, nothing of mcp's gRPC.
use hickory_server::proto as dns_wire;

use dns_wire::rr::rdata::{A, NS, SOA};
use dns_wire::rr::{Name, RData, Record};

pub use dns_wire::op::ResponseCode;
pub use dns_wire::rr::RecordType;
pub use server::{MAX_UDP_PAYLOAD, serve};

/// Default internal zone (SPEC §4 step 5).
pub use mcp_model::service::DEFAULT_ZONE;

/// Longest name in presentation form without the trailing dot (RFC 1035 §2.3.4).
const MAX_NAME_LEN: usize = 253;

/// Longest label (RFC 1035 §2.3.4).
const MAX_LABEL_LEN: usize = 63;

/// Longest TTL accepted: a week; internal names move, and long TTLs would
/// keep resolvers on a stale node after a migration.
const MAX_TTL: u32 = 7 * 24 * 3600;

/// SOA timers (refresh, retry, expire); there are no secondaries, so they
/// only need to be sane.
const SOA_REFRESH: i32 = 3600;
const SOA_RETRY: i32 = 600;
const SOA_EXPIRE: i32 = 14 * 24 * 3600;

/// `[dns]` section of the master configuration (defined with the other
/// configuration in `crate::config`).
pub use crate::config::DnsSection as DnsConfig;

/// What the server needs to know about the zone settings.
pub trait ZoneSettings {
    /// Checks the settings, reporting every problem at once.
    fn check(&self) -> Result<(), DnsError>;
    /// The zone apex: lower case, without the trailing dot.
    fn apex(&self) -> String;
    /// Whether `name` is the apex or lies below it (case-insensitive).
    fn contains(&self, name: &str) -> bool;
    /// The NS names, defaulted.
    fn ns_names(&self) -> Vec<String>;
    /// The SOA RNAME as a name, defaulted.
    fn admin_name(&self) -> String;
}

impl ZoneSettings for DnsConfig {
    fn check(&self) -> Result<(), DnsError> {
        let mut errors = Vec::new();
        if let Err(e) = check_name(&self.zone) {
            errors.push(format!("zone: {e}"));
        }
        if self.ttl == 0 || self.ttl > MAX_TTL {
            errors.push(format!("ttl: {} is not between 1 and {MAX_TTL} seconds", self.ttl));
        }
        for ns in &self.ns {
            if let Err(e) = check_name(ns) {
                errors.push(format!("ns: {e}"));
            }
        }
        if !self.admin.is_empty()
            && let Err(e) = check_name(&self.admin.replacen('@', ".", 1))
        {
            errors.push(format!("admin: {e}"));
        }
        for (i, addr) in self.listen.iter().enumerate() {
            if addr.port() == 0 {
                errors.push(format!("listen: {addr}: port 0 would give UDP and TCP different ports"));
            }
            if self.listen[..i].contains(addr) {
                errors.push(format!("listen: {addr} is listed twice"));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(DnsError::Config(errors.join("; ")))
        }
    }

    /// The zone apex: lower case, without the trailing dot.
    fn apex(&self) -> String {
        normalize(&self.zone)
    }

    /// Whether `name` is the apex or lies below it (case-insensitive).
    fn contains(&self, name: &str) -> bool {
        in_zone(&normalize(name), &self.apex())
    }

    /// The NS names, defaulted.
    fn ns_names(&self) -> Vec<String> {
        if self.ns.is_empty() {
            vec![format!("ns1.{}", self.apex())]
        } else {
            self.ns.iter().map(|n| normalize(n)).collect()
        }
    }

    /// The SOA RNAME as a name, defaulted.
    fn admin_name(&self) -> String {
        if self.admin.is_empty() {
            format!("hostmaster.{}", self.apex())
        } else {
            normalize(&self.admin.replacen('@', ".", 1))
        }
    }
}

/// Why a DNS setting, name or listener was refused.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The `[dns]` settings cannot be used (every problem, joined by `; `).
    #[error("dns configuration: {0}")]
    Config(String),
    /// A record name is not a valid DNS name.
    #[error("dns name {name:?}: {reason}")]
    Name { name: String, reason: String },
    /// A listen address could not be bound.
    #[error("dns listen {proto} {addr}: {source}")]
    Bind {
        proto: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The records held for one name. Only A for now; AAAA and CNAME would be
/// further fields, and [`answer`] would pick them by query type.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameRecords {
    /// IPv4 addresses, sorted and without duplicates.
    pub a: Vec<Ipv4Addr>,
}

impl NameRecords {
    fn is_empty(&self) -> bool {
        self.a.is_empty()
    }
}

/// One immutable version of the zone's records, with its SOA serial.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordSet {
    serial: u32,
    /// Keyed by the name with its labels reversed (`net.example.svc.web`),
    /// so that the names below a node form one contiguous range.
    names: BTreeMap<String, (String, NameRecords)>,
}

impl RecordSet {
    /// The SOA serial of this version.
    pub fn serial(&self) -> u32 {
        self.serial
    }

    /// The records of `name` (case-insensitive, trailing dot optional).
    pub fn get(&self, name: &str) -> Option<&NameRecords> {
        self.names.get(&reversed(&normalize(name))).map(|(_, r)| r)
    }

    /// Every name and its records, in a stable order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &NameRecords)> {
        self.names.values().map(|(n, r)| (n.as_str(), r))
    }

    /// How many names hold records.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether no name holds records.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Whether some name lies strictly below `name` (normalized): then
    /// `name` exists as an empty non-terminal (RFC 8020: not NXDOMAIN).
    fn has_descendants(&self, name: &str) -> bool {
        let prefix = format!("{}.", reversed(name));
        self.names
            .range(prefix.clone()..)
            .next()
            .is_some_and(|(k, _)| k.starts_with(&prefix))
    }
}

/// The records the master serves: a shared snapshot replaced atomically on
/// every change.
#[derive(Debug)]
pub struct Records {
    current: RwLock<Arc<RecordSet>>,
}

impl Default for Records {
    fn default() -> Records {
        Records::new()
    }
}

impl Records {
    /// No records; the serial starts at the current Unix time, so that it
    /// keeps increasing across restarts of the master.
    pub fn new() -> Records {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        Records::with_serial(u32::try_from(now).unwrap_or(1))
    }

    /// No records, starting at `serial`.
    pub fn with_serial(serial: u32) -> Records {
        Records {
            current: RwLock::new(Arc::new(RecordSet {
                serial,
                names: BTreeMap::new(),
            })),
        }
    }

    /// The current version; later changes do not affect it.
    pub fn snapshot(&self) -> Arc<RecordSet> {
        // The lock only guards a pointer swap: a poisoned lock holds a valid set.
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The current SOA serial.
    pub fn serial(&self) -> u32 {
        self.snapshot().serial
    }

    /// Sets the A records of `name` (an empty list removes the name).
    /// Returns whether anything changed; the serial is bumped only then.
    pub fn set(&self, name: &str, addrs: Vec<Ipv4Addr>) -> Result<bool, DnsError> {
        let name = record_name(name)?;
        let records = NameRecords { a: sorted(addrs) };
        Ok(self.update(|set| put(set, name, records)))
    }

    /// Removes every record of `name`; returns whether it had any.
    pub fn remove(&self, name: &str) -> bool {
        let key = reversed(&normalize(name));
        self.update(|set| set.names.remove(&key).is_some())
    }

    /// Replaces every record at once (e.g. when loading them from the
    /// database); names listed twice have their addresses merged. Every
    /// invalid name is reported and nothing changes then.
    pub fn replace_all(&self, entries: impl IntoIterator<Item = (String, Vec<Ipv4Addr>)>) -> Result<bool, DnsError> {
        let mut names: BTreeMap<String, (String, NameRecords)> = BTreeMap::new();
        let mut errors = Vec::new();
        for (name, addrs) in entries {
            match record_name(&name) {
                Ok(name) => {
                    let entry = names
                        .entry(reversed(&name))
                        .or_insert_with(|| (name, NameRecords::default()));
                    entry.1.a.extend(addrs);
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        if !errors.is_empty() {
            return Err(DnsError::Config(errors.join("; ")));
        }
        names.retain(|_, (_, r)| {
            r.a = sorted(std::mem::take(&mut r.a));
            !r.is_empty()
        });
        Ok(self.update(|set| {
            let changed = set.names != names;
            set.names = names;
            changed
        }))
    }

    /// Applies `change` to a copy of the current set and publishes the copy
    /// with the next serial if `change` reports a change.
    fn update(&self, change: impl FnOnce(&mut RecordSet) -> bool) -> bool {
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        let mut next = RecordSet::clone(&current);
        if !change(&mut next) {
            return false;
        }
        // Serial arithmetic (RFC 1982) wraps; 0 is skipped as some tools read it as "unset".
        next.serial = match current.serial.wrapping_add(1) {
            0 => 1,
            s => s,
        };
        *current = Arc::new(next);
        true
    }
}

fn put(set: &mut RecordSet, name: String, records: NameRecords) -> bool {
    let key = reversed(&name);
    if records.is_empty() {
        return set.names.remove(&key).is_some();
    }
    if set.names.get(&key).is_some_and(|(_, r)| *r == records) {
        return false;
    }
    set.names.insert(key, (name, records));
    true
}

fn sorted(mut addrs: Vec<Ipv4Addr>) -> Vec<Ipv4Addr> {
    addrs.sort_unstable();
    addrs.dedup();
    addrs
}

/// Checks a record name and returns it normalized: lower case, no trailing
/// dot. Labels are 1–63 characters of letters, digits, `-` and `_`.
pub fn record_name(name: &str) -> Result<String, DnsError> {
    check_name(name)?;
    Ok(normalize(name))
}

fn check_name(name: &str) -> Result<(), DnsError> {
    let fail = |reason: String| {
        Err(DnsError::Name {
            name: name.to_string(),
            reason,
        })
    };
    let bare = name.strip_suffix('.').unwrap_or(name);
    if bare.is_empty() {
        return fail("empty".into());
    }
    if bare.len() > MAX_NAME_LEN {
        return fail(format!("longer than {MAX_NAME_LEN} characters"));
    }
    for label in bare.split('.') {
        if label.is_empty() {
            return fail("has an empty label".into());
        }
        if label.len() > MAX_LABEL_LEN {
            return fail(format!("label {label:?} is longer than {MAX_LABEL_LEN} characters"));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return fail(format!(
                "label {label:?} has {c:?}; only letters, digits, '-' and '_' are allowed"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return fail(format!("label {label:?} starts or ends with '-'"));
        }
    }
    Ok(())
}

/// Lower case, without one trailing dot; no validation.
fn normalize(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

fn reversed(name: &str) -> String {
    name.rsplit('.').collect::<Vec<_>>().join(".")
}

fn in_zone(name: &str, apex: &str) -> bool {
    name == apex
        || name
            .strip_suffix(apex)
            .is_some_and(|head| head.ends_with('.') && head.len() > 1)
}

/// The answer to one question: what goes in the response besides the
/// question itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// NOERROR (answer or NODATA), NXDOMAIN, or REFUSED outside the zone.
    pub rcode: ResponseCode,
    /// The AA flag: set for every name inside the zone.
    pub authoritative: bool,
    /// Answer section.
    pub answers: Vec<Record>,
    /// Authority section: the SOA for NXDOMAIN and NODATA.
    pub authority: Vec<Record>,
    /// Additional section: glue for the NS names inside the zone.
    pub additional: Vec<Record>,
}

impl Answer {
    fn refused() -> Answer {
        Answer {
            rcode: ResponseCode::Refused,
            authoritative: false,
            answers: Vec::new(),
            authority: Vec::new(),
            additional: Vec::new(),
        }
    }
}

impl fmt::Display for Answer {
    /// One line per record after the status line, in zone-file order.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.rcode {
            ResponseCode::NoError => write!(f, "NOERROR")?,
            ResponseCode::NXDomain => write!(f, "NXDOMAIN")?,
            ResponseCode::Refused => write!(f, "REFUSED")?,
            other => write!(f, "RCODE{}", u16::from(other))?,
        }
        if self.authoritative {
            write!(f, " aa")?;
        }
        for (section, records) in [
            ("answer", &self.answers),
            ("authority", &self.authority),
            ("additional", &self.additional),
        ] {
            for r in records {
                write!(f, "\n{section}: {} {} {} {}", r.name, r.ttl, r.record_type(), r.data)?;
            }
        }
        Ok(())
    }
}

/// Answers one question (`q_name` as the client spelled it) from the zone
/// settings and a snapshot of the records. Pure: no IO, no clock.
pub fn answer(q_name: &str, q_type: RecordType, cfg: &DnsConfig, set: &RecordSet) -> Answer {
    let name = normalize(q_name);
    let apex = cfg.apex();
    if !in_zone(&name, &apex) {
        return Answer::refused();
    }
    let Some(zone) = fqdn(&apex) else {
        // Only reachable with settings that `DnsConfig::check` refuses.
        return Answer::refused();
    };
    // Answers carry the owner name as asked, so 0x20-randomizing resolvers match it.
    let owner = fqdn(q_name).or_else(|| fqdn(&name)).unwrap_or_else(|| zone.clone());
    let ttl = cfg.ttl;
    let is_apex = name == apex;
    let ns_names = cfg.ns_names();

    let mut answers = Vec::new();
    let mut additional = Vec::new();
    let addresses = addresses_of(&name, cfg, &ns_names, set);
    let wants = |t: RecordType| q_type == t || q_type == RecordType::ANY;
    if is_apex && wants(RecordType::SOA) {
        answers.push(soa(cfg, &zone, &owner, set.serial));
    }
    if is_apex && wants(RecordType::NS) {
        for ns in &ns_names {
            if let Some(target) = fqdn(ns) {
                answers.push(Record::from_rdata(owner.clone(), ttl, RData::NS(NS(target.clone()))));
                if in_zone(ns, &apex) {
                    let glue = addresses_of(ns, cfg, &ns_names, set);
                    additional.extend(glue.iter().map(|ip| a_record(&target, ttl, *ip)));
                }
            }
        }
    }
    if wants(RecordType::A) {
        answers.extend(addresses.iter().map(|ip| a_record(&owner, ttl, *ip)));
    }

    if !answers.is_empty() {
        return Answer {
            rcode: ResponseCode::NoError,
            authoritative: true,
            answers,
            authority: Vec::new(),
            additional,
        };
    }
    let exists = is_apex || !addresses.is_empty() || set.has_descendants(&name);
    Answer {
        rcode: if exists {
            ResponseCode::NoError
        } else {
            ResponseCode::NXDomain
        },
        authoritative: true,
        answers,
        authority: vec![soa(cfg, &zone, &zone, set.serial)],
        additional,
    }
}

/// The A addresses of `name`: its records, else the glue if it is an NS name.
fn addresses_of<'a>(name: &str, cfg: &'a DnsConfig, ns_names: &[String], set: &'a RecordSet) -> &'a [Ipv4Addr] {
    match set.get(name) {
        Some(r) if !r.a.is_empty() => &r.a,
        _ if ns_names.iter().any(|n| n == name) => &cfg.ns_addresses,
        _ => &[],
    }
}

fn a_record(owner: &Name, ttl: u32, ip: Ipv4Addr) -> Record {
    Record::from_rdata(owner.clone(), ttl, RData::A(A(ip)))
}

fn soa(cfg: &DnsConfig, zone: &Name, owner: &Name, serial: u32) -> Record {
    let mname = cfg
        .ns_names()
        .first()
        .and_then(|n| fqdn(n))
        .unwrap_or_else(|| zone.clone());
    let rname = fqdn(&cfg.admin_name()).unwrap_or_else(|| zone.clone());
    let data = SOA::new(mname, rname, serial, SOA_REFRESH, SOA_RETRY, SOA_EXPIRE, cfg.ttl);
    Record::from_rdata(owner.clone(), cfg.ttl, RData::SOA(data))
}

/// `name` as an absolute DNS name, if it parses.
fn fqdn(name: &str) -> Option<Name> {
    let mut n = Name::from_ascii(name).ok()?;
    n.set_fqdn(true);
    Some(n)
}

#[cfg(test)]
mod tests;
