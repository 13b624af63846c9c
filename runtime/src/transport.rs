//! The libp2p transport every long-running role shares: TCP, Noise and Yamux, one
//! request-response protocol of length-framed byte messages with a hard size limit, an
//! allow-list of the consortium's PeerIds, connection limits and a timeout on every request.
//!
//! One event-loop task owns the `Swarm`; the rest of the program holds a [`Handle`] that
//! sends commands over a bounded channel, and reads domain [`Event`]s from a bounded channel.
//! What the bytes mean is the business of the role's own network module.

use std::collections::HashMap;
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::core::{Transport as _, muxing::StreamMuxerBox, upgrade};
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, allow_block_list, connection_limits, noise, yamux,
};
use tokio::sync::{mpsc, oneshot};

/// How long a connection may take to be dialled, secured and multiplexed (libp2p's default).
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Commands and events queued at most this deep; senders wait when it is full.
pub const CHANNEL_DEPTH: usize = 64;

/// Length-framed messages of at most `max` bytes; longer frames are refused before any
/// allocation.
#[derive(Clone, Debug)]
pub struct FramedCodec {
    pub max: usize,
}

async fn read_frame<T: futures::AsyncRead + Unpin + Send>(
    io: &mut T,
    max: usize,
) -> std::io::Result<Vec<u8>> {
    let mut length = [0u8; 4];
    io.read_exact(&mut length).await?;
    let length = u32::from_le_bytes(length) as usize;
    if length > max {
        return Err(std::io::Error::other(format!(
            "a message of {length} bytes exceeds the limit of {max}"
        )));
    }
    let mut bytes = vec![0u8; length];
    io.read_exact(&mut bytes).await?;
    Ok(bytes)
}

async fn write_frame<T: futures::AsyncWrite + Unpin + Send>(
    io: &mut T,
    bytes: &[u8],
    max: usize,
) -> std::io::Result<()> {
    if bytes.len() > max {
        return Err(std::io::Error::other(format!(
            "refusing to send a message of {} bytes (limit {max})",
            bytes.len()
        )));
    }
    io.write_all(&(bytes.len() as u32).to_le_bytes()).await?;
    io.write_all(bytes).await?;
    io.close().await
}

#[async_trait::async_trait]
impl request_response::Codec for FramedCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> std::io::Result<Vec<u8>>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        read_frame(io, self.max).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> std::io::Result<Vec<u8>>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        read_frame(io, self.max).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> std::io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        write_frame(io, &req, self.max).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> std::io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        write_frame(io, &res, self.max).await
    }
}

/// libp2p's behaviours do not implement `Debug`.
#[allow(missing_debug_implementations)]
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    pending: crate::pending::Behaviour,
    allowed: allow_block_list::Behaviour<allow_block_list::AllowedPeers>,
    limits: connection_limits::Behaviour,
    exchange: request_response::Behaviour<FramedCodec>,
}

#[derive(Clone, Debug)]
pub struct TransportConfig {
    pub protocol: &'static str,
    pub max_message: usize,
    pub request_timeout: Duration,
    pub listen: Multiaddr,
    /// The only peers heard, with the addresses to dial them at.
    pub peers: Vec<(PeerId, Multiaddr)>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    #[error("network setup: {0}")]
    Setup(String),
    #[error("request to {peer} failed: {reason}")]
    Request { peer: PeerId, reason: String },
    #[error("the network task has stopped")]
    Stopped,
}

/// What the network reports to the role.
#[derive(Debug)]
pub enum Event {
    /// A request from an allowed peer; answer it with [`Reply::send`].
    Request {
        peer: PeerId,
        bytes: Vec<u8>,
        reply: Reply,
    },
    Connected(PeerId),
    Disconnected(PeerId),
}

/// The way back to the peer that sent a request.
#[derive(Debug)]
pub struct Reply {
    channel: ResponseChannel<Vec<u8>>,
    commands: mpsc::Sender<Command>,
}

impl Reply {
    pub async fn send(self, bytes: Vec<u8>) {
        let _ = self
            .commands
            .send(Command::Respond {
                channel: self.channel,
                bytes,
            })
            .await;
    }
}

type PendingReply = (PeerId, oneshot::Sender<Result<Vec<u8>, TransportError>>);

#[derive(Debug)]
enum Command {
    Request {
        peer: PeerId,
        bytes: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<u8>, TransportError>>,
    },
    Respond {
        channel: ResponseChannel<Vec<u8>>,
        bytes: Vec<u8>,
    },
    Dial(PeerId),
    /// Refuse every connection with `peer` (closing those open) for this long.
    CutOff(PeerId, Duration),
    Allow(PeerId),
}

/// The role's side of the transport; cheap to clone.
#[derive(Clone, Debug)]
pub struct Handle {
    commands: mpsc::Sender<Command>,
}

impl Handle {
    /// Sends a request and waits for the response (or the transport's timeout).
    pub async fn request(&self, peer: PeerId, bytes: Vec<u8>) -> Result<Vec<u8>, TransportError> {
        let (reply, response) = oneshot::channel();
        self.commands
            .send(Command::Request { peer, bytes, reply })
            .await
            .map_err(|_| TransportError::Stopped)?;
        response.await.map_err(|_| TransportError::Stopped)?
    }

    /// Asks the transport to connect to `peer` (a no-op if it already is).
    pub async fn dial(&self, peer: PeerId) {
        let _ = self.commands.send(Command::Dial(peer)).await;
    }

    /// Closes every connection with `peer` and refuses new ones, both ways, for `period`: a
    /// network partition between two members, for the resilience suite.
    pub async fn cut_off(&self, peer: PeerId, period: Duration) {
        let _ = self.commands.send(Command::CutOff(peer, period)).await;
    }
}

/// Starts the transport: listens, dials nobody yet, and runs until the event receiver is
/// dropped.
pub fn spawn(
    keypair: libp2p::identity::Keypair,
    config: TransportConfig,
) -> Result<(Handle, mpsc::Receiver<Event>), TransportError> {
    let setup = |e: &dyn std::fmt::Display| TransportError::Setup(e.to_string());
    let mut allowed = allow_block_list::Behaviour::<allow_block_list::AllowedPeers>::default();
    for (peer, _) in &config.peers {
        allowed.allow_peer(*peer);
    }
    let peers = config.peers.len() as u32;
    // Unfinished handshakes are bounded by address (crate::pending), so that strangers cannot
    // take the slots members connect through; established connections by count.
    let pending = crate::pending::PendingSlots::new(
        config
            .peers
            .iter()
            .filter_map(|(_, address)| crate::pending::ip_of(address)),
        2 * peers as usize + 2,
    );
    let limits = connection_limits::ConnectionLimits::default()
        .with_max_established_per_peer(Some(2))
        .with_max_established(Some(2 * peers + 2));
    let codec = FramedCodec {
        max: config.max_message,
    };
    let protocol = StreamProtocol::new(config.protocol);
    let timeout = config.request_timeout;
    // What libp2p's SwarmBuilder assembles for TCP, Noise and Yamux on tokio, built by hand
    // (see Cargo.toml for why its tokio feature is off).
    let transport = libp2p_tcp::tokio::Transport::new(libp2p_tcp::Config::default().nodelay(true))
        .upgrade(upgrade::Version::V1Lazy)
        .authenticate(noise::Config::new(&keypair).map_err(|e| setup(&e))?)
        .multiplex(yamux::Config::default())
        .timeout(CONNECTION_TIMEOUT)
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
        .boxed();
    let behaviour = Behaviour {
        pending: crate::pending::Behaviour::new(pending),
        allowed,
        limits: connection_limits::Behaviour::new(limits),
        exchange: request_response::Behaviour::with_codec(
            codec,
            [(protocol, ProtocolSupport::Full)],
            request_response::Config::default()
                .with_request_timeout(timeout)
                .with_max_concurrent_streams(64),
        ),
    };
    let executor = |task| {
        tokio::spawn(task);
    };
    let swarm_config = libp2p::swarm::Config::with_executor(executor)
        .with_idle_connection_timeout(Duration::from_secs(3600));
    let mut swarm = libp2p::Swarm::new(
        transport,
        behaviour,
        keypair.public().to_peer_id(),
        swarm_config,
    );
    swarm
        .listen_on(config.listen.clone())
        .map_err(|e| setup(&format!("cannot listen on {}: {e}", config.listen)))?;
    for (peer, address) in &config.peers {
        swarm.add_peer_address(*peer, address.clone());
    }
    let (commands, mut command_rx) = mpsc::channel::<Command>(CHANNEL_DEPTH);
    let (events, event_rx) = mpsc::channel::<Event>(CHANNEL_DEPTH);
    let loopback = commands.clone();
    let handle = Handle { commands };
    tokio::spawn(async move {
        let mut pending: HashMap<OutboundRequestId, PendingReply> = HashMap::new();
        loop {
            tokio::select! {
                command = command_rx.recv() => match command {
                    // Every handle is gone (the loop's own sender lives in replies).
                    None => break,
                    Some(Command::Request { peer, bytes, reply }) => {
                        // Dialled here first, from a fresh port (see `dial`), so that the
                        // request's own dial finds one under way.
                        dial(&mut swarm, peer);
                        let id = swarm.behaviour_mut().exchange.send_request(&peer, bytes);
                        pending.insert(id, (peer, reply));
                    }
                    Some(Command::Respond { channel, bytes }) => {
                        let _ = swarm.behaviour_mut().exchange.send_response(channel, bytes);
                    }
                    Some(Command::Dial(peer)) => dial(&mut swarm, peer),
                    Some(Command::CutOff(peer, period)) => {
                        swarm.behaviour_mut().allowed.disallow_peer(peer);
                        let commands = loopback.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(period).await;
                            let _ = commands.send(Command::Allow(peer)).await;
                        });
                    }
                    Some(Command::Allow(peer)) => {
                        swarm.behaviour_mut().allowed.allow_peer(peer);
                    }
                },
                event = swarm.select_next_some() => {
                    let domain = match event {
                        SwarmEvent::Behaviour(BehaviourEvent::Exchange(event)) => match event {
                            request_response::Event::Message { peer, message, .. } => match message {
                                request_response::Message::Request { request, channel, .. } => {
                                    Some(Event::Request {
                                        peer,
                                        bytes: request,
                                        reply: Reply { channel, commands: loopback.clone() },
                                    })
                                }
                                request_response::Message::Response { request_id, response } => {
                                    if let Some((_, reply)) = pending.remove(&request_id) {
                                        let _ = reply.send(Ok(response));
                                    }
                                    None
                                }
                            },
                            request_response::Event::OutboundFailure { peer, request_id, error, .. } => {
                                if let Some((_, reply)) = pending.remove(&request_id) {
                                    let _ = reply.send(Err(TransportError::Request {
                                        peer,
                                        reason: error.to_string(),
                                    }));
                                }
                                None
                            }
                            request_response::Event::InboundFailure { peer, error, .. } => {
                                tracing::debug!(%peer, %error, "inbound request failed");
                                None
                            }
                            request_response::Event::ResponseSent { .. } => None,
                        },
                        SwarmEvent::ConnectionEstablished { peer_id, num_established, .. }
                            if num_established.get() == 1 => Some(Event::Connected(peer_id)),
                        SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } => {
                            Some(Event::Disconnected(peer_id))
                        }
                        SwarmEvent::IncomingConnectionError { send_back_addr, error, .. } => {
                            tracing::debug!(%send_back_addr, %error, "incoming connection refused");
                            None
                        }
                        _ => None,
                    };
                    if let Some(domain) = domain
                        && events.send(domain).await.is_err()
                    {
                        break;
                    }
                }
            }
        }
    });
    Ok((handle, event_rx))
}

/// Dials `peer` unless connected or already dialling, from a newly allocated local port. libp2p
/// would otherwise dial from the listening port, and two members dialling each other at the
/// same moment (both sending a partial decryption, say) then make one TCP connection by
/// simultaneous open in which both are the dialer: the Noise handshake fails on both sides,
/// and retries in step fail the same way.
fn dial(swarm: &mut libp2p::Swarm<Behaviour>, peer: PeerId) {
    if swarm.is_connected(&peer) {
        return;
    }
    let options = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
        .condition(libp2p::swarm::dial_opts::PeerCondition::DisconnectedAndNotDialing)
        .allocate_new_port()
        .build();
    if let Err(error) = swarm.dial(options) {
        tracing::debug!(%peer, %error, "dial not started");
    }
}

static NEXT_REQUEST_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Handle {
    /// Sends a round-protocol request and checks that the response carries its id.
    pub async fn call(
        &self,
        peer: PeerId,
        request: &protocol::round::message::Request,
    ) -> Result<protocol::round::message::Response, TransportError> {
        let id = NEXT_REQUEST_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let bytes = self.request(peer, request.encode(id)).await?;
        let (answered, response) =
            protocol::round::message::Response::decode(&bytes).map_err(|e| {
                TransportError::Request {
                    peer,
                    reason: format!("malformed response: {e}"),
                }
            })?;
        if answered != id {
            return Err(TransportError::Request {
                peer,
                reason: format!("the response answers request {answered}, not {id}"),
            });
        }
        Ok(response)
    }
}

/// Decodes a round-protocol request and answers it with `respond`'s response, carrying the
/// request's id; a malformed request is refused without reaching the role's logic.
pub async fn answer<F, Fut>(bytes: Vec<u8>, reply: Reply, respond: F)
where
    F: FnOnce(protocol::round::message::Request) -> Fut,
    Fut: Future<Output = protocol::round::message::Response>,
{
    use protocol::round::message::{Request, Response};
    let (id, response) = match Request::decode(&bytes) {
        Ok((id, request)) => (id, respond(request).await),
        Err(e) => (
            0,
            Response::Refused {
                reason: format!("malformed request: {e}"),
            },
        ),
    };
    reply.send(response.encode(id)).await;
}

/// The consortium's peers: the coordinator first, then every member in order.
pub fn consortium_peers(
    consortium: &protocol::consortium::Consortium,
) -> Result<Vec<(PeerId, Multiaddr)>, TransportError> {
    let file = consortium.file();
    let parse = |name: &str, peer: &str, address: &str| {
        let peer: PeerId = peer
            .parse()
            .map_err(|_| TransportError::Setup(format!("{name}: invalid peer_id {peer:?}")))?;
        let address: Multiaddr = address
            .parse()
            .map_err(|_| TransportError::Setup(format!("{name}: invalid address {address:?}")))?;
        Ok((peer, address))
    };
    std::iter::once(parse(
        &file.coordinator.name,
        &file.coordinator.peer_id,
        &file.coordinator.address,
    ))
    .chain(
        file.members
            .iter()
            .map(|m| parse(&m.name, &m.peer_id, &m.address)),
    )
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_over_the_limit_are_refused_before_allocation() {
        futures::executor::block_on(async {
            // A length prefix of 4 GiB - 1 with no body: refused by the length alone.
            let mut huge = futures::io::Cursor::new(u32::MAX.to_le_bytes().to_vec());
            let err = read_frame(&mut huge, 1024).await.unwrap_err();
            assert!(err.to_string().contains("exceeds the limit"), "{err}");
            // A frame at the limit passes; a truncated one is an error, not a panic.
            let mut ok = 1024u32.to_le_bytes().to_vec();
            ok.extend(vec![7u8; 1024]);
            assert_eq!(
                read_frame(&mut futures::io::Cursor::new(ok.clone()), 1024)
                    .await
                    .unwrap()
                    .len(),
                1024
            );
            ok.truncate(500);
            assert!(
                read_frame(&mut futures::io::Cursor::new(ok), 1024)
                    .await
                    .is_err()
            );
            // Nothing over the limit is ever written either.
            let mut sink = futures::io::Cursor::new(Vec::new());
            assert!(write_frame(&mut sink, &[0; 2048], 1024).await.is_err());
            assert!(sink.into_inner().is_empty());
        });
    }
}
