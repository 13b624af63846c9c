//! Slots for inbound connections that have not finished their handshake. A stranger can open
//! TCP connections and never complete Noise; each lingers until the handshake times out. If
//! such connections shared one pool with the members', a stranger could keep it full and lock
//! the members out. So the consortium's own addresses (the IPs in its members' and the
//! coordinator's multiaddresses) get a pool of their own, and every other address at most
//! [`PER_UNKNOWN_IP`] slots at once and [`UNKNOWN_TOTAL`] in all. A member reaching us from an
//! address the consortium file does not list shares the second pool with strangers.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::IpAddr;
use std::task::{Context, Poll};

use libp2p::PeerId;
use libp2p::core::transport::PortUse;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm, dummy,
};

/// Half-open inbound connections from one address the consortium does not list.
pub const PER_UNKNOWN_IP: usize = 2;
/// Half-open inbound connections from all unlisted addresses together.
pub const UNKNOWN_TOTAL: usize = 8;

/// Why a pending inbound connection was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PendingDenied {
    #[error("{0} already has {PER_UNKNOWN_IP} unfinished handshakes")]
    PerAddress(IpAddr),
    #[error("{UNKNOWN_TOTAL} unfinished handshakes from unlisted addresses already")]
    Unknown,
    #[error("{0} unfinished handshakes from the consortium's addresses already")]
    Known(usize),
}

/// The first IP address in a multiaddress.
pub fn ip_of(address: &Multiaddr) -> Option<IpAddr> {
    address.iter().find_map(|p| match p {
        libp2p::multiaddr::Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        libp2p::multiaddr::Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

/// The bookkeeping, without libp2p: admit a pending connection or refuse it, release it when
/// its handshake ends either way.
#[derive(Debug, Clone)]
pub struct PendingSlots {
    known: HashSet<IpAddr>,
    known_limit: usize,
    known_used: usize,
    unknown: HashMap<IpAddr, usize>,
    unknown_used: usize,
    /// Each admitted connection: `None` for a listed address, else its unlisted IP.
    admitted: HashMap<ConnectionId, Option<IpAddr>>,
}

impl PendingSlots {
    pub fn new(known: impl IntoIterator<Item = IpAddr>, known_limit: usize) -> Self {
        Self {
            known: known.into_iter().collect(),
            known_limit,
            known_used: 0,
            unknown: HashMap::new(),
            unknown_used: 0,
            admitted: HashMap::new(),
        }
    }

    pub fn admit(&mut self, id: ConnectionId, ip: Option<IpAddr>) -> Result<(), PendingDenied> {
        match ip {
            Some(ip) if self.known.contains(&ip) => {
                if self.known_used >= self.known_limit {
                    return Err(PendingDenied::Known(self.known_used));
                }
                self.known_used += 1;
                self.admitted.insert(id, None);
            }
            other => {
                // An address without an IP (not expected over TCP) counts as one unlisted
                // address of its own.
                let key = other.unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
                let used = self.unknown.get(&key).copied().unwrap_or(0);
                if used >= PER_UNKNOWN_IP {
                    return Err(PendingDenied::PerAddress(key));
                }
                if self.unknown_used >= UNKNOWN_TOTAL {
                    return Err(PendingDenied::Unknown);
                }
                *self.unknown.entry(key).or_default() += 1;
                self.unknown_used += 1;
                self.admitted.insert(id, Some(key));
            }
        }
        Ok(())
    }

    pub fn release(&mut self, id: ConnectionId) {
        match self.admitted.remove(&id) {
            None => {}
            Some(None) => self.known_used -= 1,
            Some(Some(ip)) => {
                self.unknown_used -= 1;
                if let Some(used) = self.unknown.get_mut(&ip) {
                    *used -= 1;
                    if *used == 0 {
                        self.unknown.remove(&ip);
                    }
                }
            }
        }
    }
}

/// [`PendingSlots`] as a libp2p behaviour.
#[allow(missing_debug_implementations)]
pub struct Behaviour {
    slots: PendingSlots,
}

impl Behaviour {
    pub fn new(slots: PendingSlots) -> Self {
        Self { slots }
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        _: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.slots
            .admit(connection_id, ip_of(remote))
            .map_err(ConnectionDenied::new)
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.slots.release(connection_id);
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ListenFailure(failure) => self.slots.release(failure.connection_id),
            FromSwarm::ConnectionEstablished(established) => {
                self.slots.release(established.connection_id)
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn half_open_handshakes_from_strangers_never_take_the_members_slots() {
        let member = ip("192.0.2.10");
        let mut slots = PendingSlots::new([member, ip("192.0.2.11")], 3);
        let mut next = 0;
        let mut id = || {
            next += 1;
            ConnectionId::new_unchecked(next)
        };
        // One stranger gets two slots, then is refused by address.
        let stranger = ip("203.0.113.5");
        let first = id();
        slots.admit(first, Some(stranger)).unwrap();
        slots.admit(id(), Some(stranger)).unwrap();
        assert_eq!(
            slots.admit(id(), Some(stranger)),
            Err(PendingDenied::PerAddress(stranger))
        );
        // Many strangers fill the unlisted pool and no more.
        for i in 0..(UNKNOWN_TOTAL - 2) {
            slots
                .admit(id(), Some(ip(&format!("198.51.100.{i}"))))
                .unwrap();
        }
        assert_eq!(
            slots.admit(id(), Some(ip("198.51.100.200"))),
            Err(PendingDenied::Unknown)
        );
        // The members' addresses still get their own slots, up to their limit.
        for _ in 0..3 {
            slots.admit(id(), Some(member)).unwrap();
        }
        assert_eq!(
            slots.admit(id(), Some(member)),
            Err(PendingDenied::Known(3))
        );
        // A handshake that ends frees its slot.
        slots.release(first);
        slots.admit(id(), Some(ip("198.51.100.201"))).unwrap();
        slots.release(ConnectionId::new_unchecked(9999));
    }

    #[test]
    fn the_ip_of_a_multiaddress_is_found() {
        let v4: Multiaddr = "/ip4/127.0.0.1/tcp/7400".parse().unwrap();
        let v6: Multiaddr = "/ip6/::1/tcp/7400".parse().unwrap();
        let dns: Multiaddr = "/dns4/example.org/tcp/7400".parse().unwrap();
        assert_eq!(ip_of(&v4), Some(ip("127.0.0.1")));
        assert_eq!(ip_of(&v6), Some(ip("::1")));
        assert_eq!(ip_of(&dns), None);
    }
}
