//! DTLS 1.2 PSK handshake that produces the data-plane keys (design.md "PSK identity", "Data
//! packet"). Sans-IO over `rtc-dtls`: no sockets, no clock; the caller passes `now` in.
//!
//! Only TLS_PSK_WITH_AES_128_GCM_SHA256 with the extended master secret is accepted. Each side
//! sends its PSK identity string: the client as its PSK identity (ClientKeyExchange), the server
//! as its PSK identity hint (ServerKeyExchange). Both ends see the other's in
//! [`Established::peer_identity`] and can veto it through `accept_identity`.
//!
//! # Driving a [`Handshake`]
//! * Feed every DTLS datagram from the peer ([`is_dtls`]) to [`Handshake::handle_datagram`],
//!   send whatever [`Handshake::poll_transmit`] yields (also after errors: it may be an alert),
//!   and call [`Handshake::handle_timeout`] once [`Handshake::poll_timeout`] is reached.
//! * [`Handshake::established`] then gives the keys for [`crate::crypto::Session`].
//! * Keep the server's `Handshake` after completion and keep feeding it DTLS datagrams: if our
//!   last flight was lost, the client repeats its own and this answers it. The server can see
//!   data packets before the client has finished; the client drops them until it completes.
//! * A failed handshake stays failed ([`Handshake::failed`]); start a new one to retry.
//!
//! # Peer restarts
//! A restarted peer is a new client, so a ClientHello ([`is_client_hello`]) arrives for a peer
//! whose server `Handshake` is established. An established `Handshake` ignores ClientHellos, so
//! the caller creates a new server `Handshake` for it and routes that peer's DTLS datagrams to
//! the new one, while keeping the old session's keys for data until the new handshake
//! establishes (then switch: a new incarnation in the identity means drop the old session) or
//! fails (then drop it and keep the old session). A stale duplicate ClientHello produces a
//! handshake that never progresses and fails at [`HANDSHAKE_TIMEOUT`], which is harmless.
//! Better still, compare the ClientHello's client random with the one that started the current
//! server `Handshake`: it is the same across the cookie exchange and retransmissions and fresh
//! for every new handshake, so it also catches a restart in the middle of a handshake.

mod config;
mod error;
mod record;
mod stall;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rtc_dtls::cipher_suite::CipherSuiteId;
use rtc_dtls::endpoint::{Endpoint, EndpointEvent};

use crate::crypto::{EXPORT_LEN, SessionKeys};
pub use error::DtlsError;
pub use record::{is_client_hello, is_dtls};
use stall::StallGuard;

/// RFC 5705 label for the data-plane keys.
pub const EXPORTER_LABEL: &str = "EXPORTER-rolomesh-data-v1";
/// A handshake not established by then fails. Also bounds a server, which the crate lets wait
/// for the client forever.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);
/// Flight retransmission interval. The crate uses a fixed interval (no backoff) and gives up
/// after 7 retransmissions of one flight.
pub const FLIGHT_INTERVAL: Duration = Duration::from_secs(1);
const SUITE: CipherSuiteId = CipherSuiteId::Tls_Psk_With_Aes_128_Gcm_Sha256;
/// The crate keys its per-peer state by address and keeps the handshake driver of `DTLSConn`
/// private, so each `Handshake` owns a one-peer `Endpoint` under this placeholder address
/// (TEST-NET-1). Real addresses are the caller's business.
const PEER: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 1));
const LOCAL: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 2), 1));

/// Decides whether a peer's PSK identity may complete the handshake.
pub type AcceptIdentity = Arc<dyn Fn(&[u8]) -> bool + Send + Sync>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

/// A completed handshake.
#[derive(Clone, Debug)]
pub struct Established {
    /// What the peer sent: the client's PSK identity as seen by the server, the server's PSK
    /// identity hint as seen by the client.
    pub peer_identity: Vec<u8>,
    pub keys: SessionKeys,
    pub role: Role,
}

/// One DTLS handshake with one peer.
pub struct Handshake {
    role: Role,
    endpoint: Endpoint,
    accept_identity: AcceptIdentity,
    deadline: Instant,
    outbox: VecDeque<BytesMut>,
    stall: StallGuard,
    established: Option<Established>,
    failure: Option<String>,
}

impl Handshake {
    /// `identity`: our PSK identity (design.md). `psk`: the DTLS PSK. `accept_identity` is asked
    /// about the peer's identity; false fails the handshake. A client queues its ClientHello.
    pub fn new(
        role: Role,
        now: Instant,
        identity: Vec<u8>,
        psk: [u8; 32],
        accept_identity: AcceptIdentity,
    ) -> Result<Self, DtlsError> {
        let config = config::build(role, identity, psk, accept_identity.clone())?;
        let mut endpoint = match role {
            Role::Client => Endpoint::new(LOCAL, Default::default(), None),
            Role::Server => Endpoint::new(LOCAL, Default::default(), Some(config.clone())),
        };
        if role == Role::Client {
            endpoint.connect(now, PEER, config, None).map_err(|e| DtlsError::Start(Box::new(e)))?;
        }
        let mut handshake = Self {
            role,
            endpoint,
            accept_identity,
            deadline: now + HANDSHAKE_TIMEOUT,
            outbox: VecDeque::new(),
            stall: StallGuard::default(),
            established: None,
            failure: None,
        };
        handshake.collect();
        Ok(handshake)
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// Processes one DTLS datagram from the peer. A [`DtlsError::Malformed`] or
    /// [`DtlsError::AfterCompletion`] error leaves the handshake usable; others mean it failed.
    pub fn handle_datagram(&mut self, now: Instant, datagram: &[u8]) -> Result<(), DtlsError> {
        self.check_failed()?;
        if !record::well_framed(datagram) {
            return Err(DtlsError::Malformed { len: datagram.len() });
        }
        if self.established.is_some() {
            // All that is left is the server answering a repeated final client flight, which
            // starts with an epoch-0 handshake record. The rest (ClientHellos included, see the
            // module docs) is dropped rather than given a chance to make us send alerts.
            let repeat = self.role == Role::Server
                && record::first(datagram).is_some_and(|r| r.is_plain_handshake())
                && !is_client_hello(datagram);
            if !repeat {
                return Ok(());
            }
            let result = self.endpoint.read(now, PEER, None, BytesMut::from(datagram));
            self.collect();
            return result.map(drop).map_err(|e| DtlsError::AfterCompletion(Box::new(e)));
        }
        if self.stall.is_stale(self.role, datagram) {
            return Ok(());
        }
        let armed_before = self.endpoint.poll_timeout(&PEER).is_some();
        let result = self.endpoint.read(now, PEER, None, BytesMut::from(datagram));
        let sent = self.collect();
        let events =
            result.map_err(|e| self.fail(DtlsError::Handshake { role: self.role, source: Box::new(e) }))?;
        for event in events {
            match event {
                EndpointEvent::HandshakeComplete => match self.export() {
                    Ok(established) => self.established = Some(established),
                    Err(e) => return Err(self.fail(e)),
                },
                EndpointEvent::PeerClosed => {
                    return Err(self.fail(DtlsError::PeerClosed { role: self.role }));
                }
                // Nothing rides inside DTLS: data has its own packet type.
                _ => {}
            }
        }
        if self.established.is_some() {
            self.stall.clear();
        } else {
            let armed_after = self.endpoint.poll_timeout(&PEER).is_some();
            self.stall.after_read(now, armed_before, armed_after, sent, &mut self.outbox);
        }
        Ok(())
    }

    /// The next datagram to send to the peer.
    pub fn poll_transmit(&mut self) -> Option<BytesMut> {
        self.outbox.pop_front()
    }

    /// When [`Self::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.failure.is_some() {
            return None;
        }
        let retransmit = self.endpoint.poll_timeout(&PEER);
        if self.established.is_some() {
            return retransmit;
        }
        [retransmit, self.stall.timeout(), Some(self.deadline)].into_iter().flatten().min()
    }

    /// Retransmits the current flight if due; fails the handshake past its deadline or when the
    /// crate gives up retransmitting.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), DtlsError> {
        if self.failure.is_some() {
            return Ok(());
        }
        if self.established.is_none() && now >= self.deadline {
            return Err(self.fail(DtlsError::Timeout { role: self.role }));
        }
        self.stall.poll(now, &mut self.outbox);
        if self.endpoint.poll_timeout(&PEER).is_none_or(|t| now < t) {
            return Ok(());
        }
        let result = self.endpoint.handle_timeout(PEER, now);
        self.collect();
        match result {
            Ok(()) => Ok(()),
            Err(e) if self.established.is_some() => Err(DtlsError::AfterCompletion(Box::new(e))),
            Err(e) => Err(self.fail(DtlsError::GaveUp { role: self.role, source: Box::new(e) })),
        }
    }

    /// The peer's identity and the data keys, once the handshake completed.
    pub fn established(&self) -> Option<Established> {
        self.established.clone()
    }

    pub fn is_established(&self) -> bool {
        self.established.is_some()
    }

    pub fn failed(&self) -> bool {
        self.failure.is_some()
    }

    /// Why the handshake failed, with its causes.
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    /// Moves what the crate queued into our outbox; true if there was anything.
    fn collect(&mut self) -> bool {
        let mut fresh = Vec::new();
        while let Some(transmit) = self.endpoint.poll_transmit() {
            fresh.push(transmit.message);
        }
        if fresh.is_empty() {
            return false;
        }
        if self.established.is_none() {
            self.stall.sent(&fresh);
        }
        self.outbox.extend(fresh);
        true
    }

    fn check_failed(&self) -> Result<(), DtlsError> {
        match &self.failure {
            Some(reason) => Err(DtlsError::Failed { role: self.role, reason: reason.clone() }),
            None => Ok(()),
        }
    }

    /// Records `err` as the reason this handshake failed and hands it back.
    fn fail(&mut self, err: DtlsError) -> DtlsError {
        let mut reason = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(cause) = source {
            reason.push_str(": ");
            reason.push_str(&cause.to_string());
            source = cause.source();
        }
        self.failure = Some(reason);
        err
    }

    fn export(&self) -> Result<Established, DtlsError> {
        let state = self
            .endpoint
            .get_connection_state(PEER)
            .ok_or_else(|| DtlsError::Export("connection state missing".into()))?;
        let suite = state.cipher_suite().map(|s| s.id());
        if suite != Some(SUITE) {
            return Err(DtlsError::Suite { suite: format!("{suite:?}") });
        }
        // The crate stores the identity it received in `identity_hint` in both roles.
        let peer_identity = state.identity_hint.clone();
        // Already checked in the PSK callback; checked again in case a path skipped it.
        if !(self.accept_identity)(&peer_identity) {
            return Err(DtlsError::Refused {
                identity: String::from_utf8_lossy(&peer_identity).into_owned(),
            });
        }
        let material = state
            .export_keying_material(EXPORTER_LABEL, &[], EXPORT_LEN)
            .map_err(|e| DtlsError::Export(Box::new(e)))?;
        let material: &[u8; EXPORT_LEN] = material
            .as_ref()
            .try_into()
            .map_err(|_| DtlsError::Export("exporter returned the wrong length".into()))?;
        Ok(Established {
            peer_identity,
            keys: SessionKeys::from_exported(material, self.role),
            role: self.role,
        })
    }
}
