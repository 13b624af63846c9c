//! The ceremony's network module: one libp2p swarm (TCP, Noise, Yamux) with a
//! request-response protocol whose requests are length-limited envelopes (a signed message and
//! the attachment for the receiving member). Only the consortium's members are heard: any
//! other peer is disconnected as soon as it connects, and its requests are dropped.

use std::collections::HashMap;
use std::time::Duration;

use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, Swarm};
use libp2p::{Multiaddr, PeerId, StreamProtocol, noise, tcp, yamux};
use protocol::bytes::{Reader, Writer};

use crate::message::Message;
use crate::transport::FramedCodec;

/// Largest envelope accepted: a message plus the biggest subshare blob (one full polynomial
/// for each subset a member holds, at most 126 at n = 10).
pub const MAX_ENVELOPE: usize = 24 * 1024 * 1024;
pub const PROTOCOL: &str = "/quorate/ceremony/1";

/// libp2p's behaviours do not implement `Debug`.
#[allow(missing_debug_implementations)]
#[derive(NetworkBehaviour)]
pub struct CeremonyBehaviour {
    pub exchange: request_response::Behaviour<FramedCodec>,
}

pub fn build_swarm(
    keypair: libp2p::identity::Keypair,
    request_timeout: Duration,
) -> Result<Swarm<CeremonyBehaviour>, String> {
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| e.to_string())?
        .with_behaviour(|_| CeremonyBehaviour {
            exchange: request_response::Behaviour::with_codec(
                FramedCodec { max: MAX_ENVELOPE },
                [(StreamProtocol::new(PROTOCOL), ProtocolSupport::Full)],
                request_response::Config::default().with_request_timeout(request_timeout),
            ),
        })
        .map_err(|e| e.to_string())?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build();
    Ok(swarm)
}

/// A message and the attachment for its receiver.
pub fn encode_envelope(message: &Message, attachment: Option<&[u8]>) -> Vec<u8> {
    let mut w = Writer::default();
    let bytes = message.encode();
    w.u32(bytes.len() as u32).bytes(&bytes);
    match attachment {
        Some(blob) => w.u8(1).u32(blob.len() as u32).bytes(blob),
        None => w.u8(0),
    };
    w.into_bytes()
}

pub fn decode_envelope(bytes: &[u8]) -> Result<(Message, Option<Vec<u8>>), String> {
    let mut r = Reader::new(bytes);
    let len = r
        .count("message length", 4, MAX_ENVELOPE as u64)
        .map_err(|e| e.to_string())?;
    let message = Message::decode(r.take("message", len).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let attachment = match r.u8("attachment flag").map_err(|e| e.to_string())? {
        0 => None,
        1 => {
            let len = r
                .count("attachment length", 4, MAX_ENVELOPE as u64)
                .map_err(|e| e.to_string())?;
            Some(
                r.take("attachment", len)
                    .map_err(|e| e.to_string())?
                    .to_vec(),
            )
        }
        other => return Err(format!("attachment flag {other}")),
    };
    r.finish("envelope").map_err(|e| e.to_string())?;
    Ok((message, attachment))
}

/// The members' PeerIds and addresses, by member index.
pub fn peers(
    consortium: &protocol::consortium::Consortium,
) -> Result<Vec<(PeerId, Multiaddr)>, String> {
    consortium
        .file()
        .members
        .iter()
        .map(|m| {
            let peer: PeerId = m
                .peer_id
                .parse()
                .map_err(|_| format!("{}: invalid peer_id {:?}", m.name, m.peer_id))?;
            let address: Multiaddr = m
                .address
                .parse()
                .map_err(|_| format!("{}: invalid address {:?}", m.name, m.address))?;
            Ok((peer, address))
        })
        .collect()
}

pub type MemberIndex = HashMap<PeerId, u8>;
