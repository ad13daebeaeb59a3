//! Host port assignment: the first port of the range held neither in the
//! registry nor by anything listening on the host.

use std::collections::HashSet;

/// Picks a port in `min..=max` not in `used` for which `free` holds.
pub fn choose(min: u16, max: u16, used: &HashSet<u16>, free: impl Fn(u16) -> bool) -> Option<u16> {
    (min..=max).find(|p| !used.contains(p) && free(*p))
}

/// Whether nothing on the host holds `port` (TCP, any address).
pub fn free_on_host(port: u16) -> bool {
    std::net::TcpListener::bind(("0.0.0.0", port)).is_ok() && std::net::TcpListener::bind(("::", port)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_used_and_busy_ports() {
        let used = HashSet::from([10000, 10001]);
        assert_eq!(choose(10000, 10010, &used, |p| p != 10002), Some(10003));
        assert_eq!(choose(10000, 10001, &used, |_| true), None);
        let busy = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let port = busy.local_addr().unwrap().port();
        assert!(!free_on_host(port));
    }
}
