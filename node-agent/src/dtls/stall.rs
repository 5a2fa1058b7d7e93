//! Works around a retransmission bug in `rtc-dtls` 0.21: the crate disarms its retransmit timer
//! on any handshake record, even one that does not complete the peer's next flight (typically
//! the peer repeating its previous flight because ours was lost). It then never retransmits
//! again, and both sides can wait until they time out.
//!
//! Two defences: drop repeats of peer flights we have already moved past, so the crate never
//! sees them ([`StallGuard::is_stale`]); and when the timer was disarmed anyway, resend our last
//! flight verbatim (RFC 6347 4.2.4) every [`FLIGHT_INTERVAL`] until the crate re-arms it.
//! Verbatim is fine: a peer that had received that flight would not be repeating its own.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::BytesMut;

use super::{FLIGHT_INTERVAL, Role, is_client_hello, record};

/// Verbatim resends per handshake; the handshake deadline bounds them too.
const MAX_RESENDS: u32 = 10;

#[derive(Default)]
pub(super) struct StallGuard {
    last_flight: Vec<BytesMut>,
    resend_at: Option<Instant>,
    resends: u32,
    sent_server_hello: bool,
    sent_epoch1: bool,
}

impl StallGuard {
    /// Notes a flight the crate sent before completion.
    pub(super) fn sent(&mut self, flight: &[BytesMut]) {
        for datagram in flight {
            record::walk(datagram, |r| {
                self.sent_server_hello |= r.is_server_hello();
                self.sent_epoch1 |= r.epoch() > 0;
            });
        }
        self.last_flight = flight.to_vec();
    }

    /// Whether `datagram` only repeats a peer flight we have already answered; our own
    /// retransmit timer (left armed by dropping it) is what the peer needs.
    pub(super) fn is_stale(&self, role: Role, datagram: &[u8]) -> bool {
        match role {
            // A ClientHello after our ServerHello: the client lost our flight 4.
            Role::Server => self.sent_server_hello && is_client_hello(datagram),
            // Plaintext handshake only (HelloVerifyRequest, flight 4) after our Finished.
            Role::Client => {
                let mut only_plain = true;
                record::walk(datagram, |r| only_plain &= r.is_plain_handshake());
                self.sent_epoch1 && only_plain
            }
        }
    }

    /// After the crate read a datagram: `armed_before`/`armed_after` say whether its retransmit
    /// timer was set, `sent` whether it answered.
    pub(super) fn after_read(
        &mut self,
        now: Instant,
        armed_before: bool,
        armed_after: bool,
        sent: bool,
        outbox: &mut VecDeque<BytesMut>,
    ) {
        if armed_after {
            self.resend_at = None;
        } else if armed_before && !sent {
            self.resend_at = Some(now);
            self.poll(now, outbox);
        }
    }

    /// Stops resending, e.g. once the handshake completed.
    pub(super) fn clear(&mut self) {
        self.resend_at = None;
    }

    pub(super) fn timeout(&self) -> Option<Instant> {
        self.resend_at
    }

    /// Queues a verbatim resend if one is due.
    pub(super) fn poll(&mut self, now: Instant, outbox: &mut VecDeque<BytesMut>) {
        let Some(at) = self.resend_at else { return };
        if now < at {
            return;
        }
        if self.resends >= MAX_RESENDS {
            self.resend_at = None;
            return;
        }
        self.resends += 1;
        outbox.extend(self.last_flight.iter().cloned());
        self.resend_at = Some(now + FLIGHT_INTERVAL);
    }
}
