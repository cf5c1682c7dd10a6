//! Services on one machine: pods' IPs and Services' cluster IPs are loopback addresses (all of
//! 127.0.0.0/8 is loopback on Linux), each from a /16 of its own; the kubelet leases pod IPs, the
//! API assigns cluster IPs, the [`endpoints`] controller lists each Service's pods, and the
//! [`proxy`] forwards a cluster IP's ports to the ready ones.
//!
//! Several devclusters can run on one machine (tests run them in parallel): each [`claim`]s a
//! pair of ranges no other one holds, 127.1/16 and 127.2/16 for the first, 127.3/16 and 127.4/16
//! for the next, and so on.

pub mod endpoints;
pub mod proxy;

use std::net::Ipv4Addr;

use anyhow::Context;

/// 127.N.0.0/16.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range(pub u8);

impl Range {
    /// The addresses handed out: 127.N.0.1 to 127.N.255.253 (127.N.255.254 marks the claim).
    pub fn addresses(self) -> impl Iterator<Item = Ipv4Addr> {
        let (first, last) = (self.at(0, 1), self.at(255, 253));
        (u32::from(first)..=u32::from(last)).map(Ipv4Addr::from)
    }

    pub fn contains(self, ip: Ipv4Addr) -> bool {
        self.addresses().next().is_some_and(|first| first <= ip) && ip <= self.at(255, 253)
    }

    fn at(self, third: u8, fourth: u8) -> Ipv4Addr {
        Ipv4Addr::new(127, self.0, third, fourth)
    }
}

impl std::fmt::Display for Range {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "127.{}.0.0/16", self.0)
    }
}

/// The port bound on 127.N.255.254 while a devcluster holds 127.N/16.
const CLAIM_PORT: u16 = 6441;

/// A devcluster's pod and service ranges, held until dropped.
pub struct Networks {
    pub pods: Range,
    pub services: Range,
    _claim: std::net::TcpListener,
}

/// Claims the first pair of ranges no other devcluster on this machine holds.
pub fn claim() -> anyhow::Result<Networks> {
    let mut last_error = None;
    for octet in (1..=253u8).step_by(2) {
        match std::net::TcpListener::bind((Ipv4Addr::new(127, octet, 255, 254), CLAIM_PORT)) {
            Ok(claim) => return Ok(Networks { pods: Range(octet), services: Range(octet + 1), _claim: claim }),
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.expect("at least one range was tried")).context("every loopback range for pods is taken")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_claim_gets_ranges_of_its_own() {
        let first = claim().unwrap();
        let second = claim().unwrap();
        assert_ne!(first.pods, second.pods);
        assert_eq!(second.services.0, second.pods.0 + 1);
        let range = Range(7);
        assert_eq!(range.addresses().next(), Some(Ipv4Addr::new(127, 7, 0, 1)));
        assert!(range.contains(Ipv4Addr::new(127, 7, 3, 4)) && !range.contains(Ipv4Addr::new(127, 8, 0, 1)));
        assert!(!range.contains(Ipv4Addr::new(127, 7, 255, 254)));
        assert_eq!(range.to_string(), "127.7.0.0/16");
    }
}
