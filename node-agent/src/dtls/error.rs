//! Why a handshake failed, with the crate's error as the source.

use std::error::Error as StdError;

use super::{HANDSHAKE_TIMEOUT, Role, SUITE};

pub(super) type BoxError = Box<dyn StdError + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum DtlsError {
    #[error("DTLS crypto provider unavailable")]
    Provider(#[source] BoxError),
    #[error("building DTLS {role:?} configuration")]
    Config {
        role: Role,
        #[source]
        source: BoxError,
    },
    #[error("starting DTLS client handshake")]
    Start(#[source] BoxError),
    #[error("ignored malformed DTLS datagram of {len} bytes")]
    Malformed { len: usize },
    #[error("DTLS {role:?} handshake failed")]
    Handshake {
        role: Role,
        #[source]
        source: BoxError,
    },
    #[error("DTLS {role:?} handshake gave up retransmitting a flight")]
    GaveUp {
        role: Role,
        #[source]
        source: BoxError,
    },
    #[error("DTLS {role:?} handshake not established within {HANDSHAKE_TIMEOUT:?}")]
    Timeout { role: Role },
    #[error("peer closed the DTLS {role:?} handshake")]
    PeerClosed { role: Role },
    #[error("peer PSK identity {identity:?} refused")]
    Refused { identity: String },
    #[error("negotiated cipher suite {suite} is not {SUITE:?}")]
    Suite { suite: String },
    #[error("exporting data keys")]
    Export(#[source] BoxError),
    #[error("DTLS {role:?} handshake already failed: {reason}")]
    Failed { role: Role, reason: String },
    /// Not fatal: the session stays established.
    #[error("processing DTLS record after the handshake")]
    AfterCompletion(#[source] BoxError),
}
