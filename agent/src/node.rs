//! Facts about this host for NodeStatus: memory, disk, load, cgroups; and
//! what the agent reports of them to the master ([`Registration`], [`Load`]).

use std::path::Path;

/// What the agent tells the master about its node when it registers.
#[derive(Debug, Clone, PartialEq)]
pub struct Registration {
    /// `worker`, `edge` or `master`.
    pub role: String,
    /// host:port of the agent's gRPC listener, as the master should dial it.
    pub address: String,
    /// `amd64` or `arm64` ([`arch`]).
    pub arch: String,
    /// The agent's version.
    pub version: String,
    /// CPUs available to the agent.
    pub cpus: u32,
    /// Memory of the host.
    pub memory_total_bytes: u64,
}

/// What the agent tells the master with every heartbeat.
#[derive(Debug, Clone, PartialEq)]
pub struct Load {
    /// One-minute load average.
    pub cpu_load: f64,
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    /// Of the file system holding the agent's data directory.
    pub disk_total_bytes: u64,
    pub disk_available_bytes: u64,
    /// The containers this agent runs (what placement balances), not others
    /// the user may run by hand.
    pub containers: u32,
    /// CPUs available to the agent.
    pub cpus: u32,
}

/// This host registering as `role`, dialled at `address`.
pub fn registration(role: &str, address: &str) -> Registration {
    Registration {
        role: role.to_string(),
        address: address.to_string(),
        arch: arch().to_string(),
        version: mcp_infra::VERSION.to_string(),
        cpus: cpus(),
        memory_total_bytes: memory().0,
    }
}

/// This host's load now, with `containers` and the disk holding `data_dir`.
pub fn load(data_dir: &Path, containers: u32) -> Load {
    let (memory_total_bytes, memory_available_bytes) = memory();
    let (disk_total_bytes, disk_available_bytes) = disk(data_dir);
    Load {
        cpu_load: load1(),
        memory_total_bytes,
        memory_available_bytes,
        disk_total_bytes,
        disk_available_bytes,
        containers,
        cpus: cpus(),
    }
}

/// CPUs available to this process (1 when unknown).
pub fn cpus() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX))
}

/// cgroup version of the host: 2 on the unified hierarchy, else 1.
pub fn cgroup_version() -> u32 {
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        2
    } else {
        1
    }
}

/// (total, available) memory in bytes from /proc/meminfo.
pub fn memory() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or(0)
    };
    (field("MemTotal:"), field("MemAvailable:"))
}

/// One-minute load average.
pub fn load1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

/// (total, available) bytes of the filesystem holding `path`.
pub fn disk(path: &Path) -> (u64, u64) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return (0, 0);
    };
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid NUL-terminated path and st a properly sized buffer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return (0, 0);
    }
    let frsize = st.f_frsize as u64;
    (st.f_blocks as u64 * frsize, st.f_bavail as u64 * frsize)
}

/// Architecture in fleet terms: amd64 or arm64.
pub fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_host_facts() {
        let (total, avail) = memory();
        assert!(total > 0 && avail <= total);
        let (dt, da) = disk(Path::new("/"));
        assert!(dt > 0 && da <= dt);
        assert!(matches!(cgroup_version(), 1 | 2));
        assert!(!arch().is_empty());
    }

    #[test]
    fn reports_gather_the_facts() {
        let r = registration("edge", "10.0.0.1:9444");
        assert_eq!(
            (r.role.as_str(), r.address.as_str(), r.arch.as_str()),
            ("edge", "10.0.0.1:9444", arch())
        );
        assert_eq!(r.version, mcp_infra::VERSION);
        assert!(r.cpus >= 1 && r.memory_total_bytes > 0);
        let l = load(Path::new("/"), 3);
        assert_eq!((l.containers, l.cpus), (3, cpus()));
        assert!(l.memory_available_bytes <= l.memory_total_bytes);
        assert!(l.disk_total_bytes > 0 && l.disk_available_bytes <= l.disk_total_bytes);
    }
}
