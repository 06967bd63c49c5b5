//! Pod addresses: each pod gets a loopback address of its own, `127.<base>.x.y` upwards (never
//! 127.0.0.1), handed back when the pod's worker ends. Addresses that some socket on this
//! machine already uses (another kubelet, a leftover process) are skipped, and each kubelet
//! starts at a third octet derived from its process id, so the kubelets of test binaries that
//! run at the same time rarely even try the same address.

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    sync::{Arc, Mutex},
};

/// Last octets used per /24: 1 to 254.
const PER_24: u32 = 254;

/// The pool of pod addresses.
pub struct IpPool {
    base: u8,
    next: u32,
    in_use: BTreeSet<Ipv4Addr>,
}

impl IpPool {
    /// Addresses from `127.<base>.<third>.1` upwards (wrapping around to `127.<base>.0.1`).
    pub fn starting_at(base: u8, third: u8) -> Self {
        Self {
            base,
            next: u32::from(third) * PER_24,
            in_use: BTreeSet::new(),
        }
    }

    fn size(&self) -> u32 {
        (256 - u32::from(self.base)) * 256 * PER_24
    }

    fn address(&self, index: u32) -> Ipv4Addr {
        let second = u32::from(self.base) + index / (256 * PER_24);
        let third = (index / PER_24) % 256;
        let fourth = index % PER_24 + 1;
        Ipv4Addr::new(
            127,
            u8::try_from(second).unwrap_or(255),
            u8::try_from(third).unwrap_or(255),
            u8::try_from(fourth).unwrap_or(254),
        )
    }

    fn index(&self, ip: Ipv4Addr) -> Option<u32> {
        let [a, b, c, d] = ip.octets();
        (a == 127 && b >= self.base && (1..=254).contains(&d))
            .then(|| (u32::from(b - self.base) * 256 + u32::from(c)) * PER_24 + u32::from(d) - 1)
    }

    /// Takes `preferred` when it is in range and free, else the next free address after the
    /// last one given (wrapping around). `busy` says whether a socket already uses an address.
    pub fn allocate(
        &mut self,
        preferred: Option<Ipv4Addr>,
        busy: &dyn Fn(Ipv4Addr) -> bool,
    ) -> Option<Ipv4Addr> {
        if let Some(ip) = preferred
            && self.index(ip).is_some()
            && !self.in_use.contains(&ip)
            && !busy(ip)
        {
            self.in_use.insert(ip);
            return Some(ip);
        }
        let size = self.size();
        for step in 0..size {
            let index = (self.next + step) % size;
            let ip = self.address(index);
            if !self.in_use.contains(&ip) && !busy(ip) {
                self.next = (index + 1) % size;
                self.in_use.insert(ip);
                return Some(ip);
            }
        }
        None
    }

    /// Hands an address back.
    pub fn release(&mut self, ip: Ipv4Addr) {
        self.in_use.remove(&ip);
    }
}

/// An address held by one pod; released when dropped.
pub struct IpLease {
    pool: Arc<Mutex<IpPool>>,
    ip: Ipv4Addr,
}

impl IpLease {
    /// Allocates from `pool`, preferring `preferred` (the pod's address from an earlier run).
    pub fn take(pool: &Arc<Mutex<IpPool>>, preferred: Option<Ipv4Addr>) -> Option<Self> {
        let busy = sockets_in_use();
        let ip = pool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .allocate(preferred, &|ip| busy.contains(&ip))?;
        Some(Self {
            pool: pool.clone(),
            ip,
        })
    }

    /// The address.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }
}

impl Drop for IpLease {
    fn drop(&mut self) {
        self.pool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .release(self.ip);
    }
}

/// Local IPv4 addresses of every TCP and UDP socket on this machine (`/proc/net/{tcp,udp}`).
fn sockets_in_use() -> BTreeSet<Ipv4Addr> {
    ["/proc/net/tcp", "/proc/net/udp"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter_map(|line| {
                    let local = line.split_whitespace().nth(1)?;
                    let hex = local.split(':').next()?;
                    // The kernel prints the address as a native-endian u32.
                    let raw = u32::from_str_radix(hex, 16).ok()?;
                    Some(Ipv4Addr::from(raw.to_ne_bytes()))
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_unique_never_the_host_and_reused_after_release() {
        let mut pool = IpPool::starting_at(10, 0);
        let free = |_| false;
        let mut seen = BTreeSet::new();
        for _ in 0..600 {
            let ip = pool.allocate(None, &free).expect("address");
            assert_ne!(ip, Ipv4Addr::LOCALHOST);
            assert_eq!(ip.octets()[1], 10);
            assert!((1..=254).contains(&ip.octets()[3]));
            assert!(seen.insert(ip), "{ip} given twice");
        }
        assert_eq!(seen.first(), Some(&Ipv4Addr::new(127, 10, 0, 1)));
        let first = Ipv4Addr::new(127, 10, 0, 1);
        pool.release(first);
        assert_eq!(pool.allocate(Some(first), &free), Some(first));
        assert_eq!(
            pool.allocate(Some(first), &free),
            Some(Ipv4Addr::new(127, 10, 2, 93))
        );
    }

    #[test]
    fn a_pool_may_start_higher_and_wraps_around() {
        let mut pool = IpPool::starting_at(10, 255);
        let free = |_| false;
        for _ in 0..PER_24 {
            assert_eq!(
                pool.allocate(None, &free).map(|ip| ip.octets()[2]),
                Some(255)
            );
        }
        // 127.11.x.y follows 127.10.255.254.
        assert_eq!(
            pool.allocate(None, &free),
            Some(Ipv4Addr::new(127, 11, 0, 1))
        );
    }

    #[test]
    fn busy_addresses_and_foreign_preferences_are_skipped() {
        let mut pool = IpPool::starting_at(10, 0);
        let busy = |ip: Ipv4Addr| ip == Ipv4Addr::new(127, 10, 0, 1);
        assert_eq!(
            pool.allocate(Some(Ipv4Addr::new(10, 0, 0, 1)), &busy),
            Some(Ipv4Addr::new(127, 10, 0, 2))
        );
    }

    #[test]
    fn the_range_extends_upwards_past_the_first_16() {
        let pool = IpPool::starting_at(254, 0);
        assert_eq!(pool.address(256 * PER_24), Ipv4Addr::new(127, 255, 0, 1));
        assert_eq!(
            pool.index(Ipv4Addr::new(127, 255, 0, 1)),
            Some(256 * PER_24)
        );
    }

    #[test]
    fn this_machine_reports_its_listening_sockets() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        assert!(sockets_in_use().contains(&Ipv4Addr::LOCALHOST));
        drop(listener);
    }
}
