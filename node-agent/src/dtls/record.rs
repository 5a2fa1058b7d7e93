//! Just enough DTLS record parsing to route and filter datagrams around the handshake code.

/// DTLS record header: type 1, version 2, epoch 2, sequence 6, length 2.
pub const RECORD_HEADER_LEN: usize = 13;
const CONTENT_HANDSHAKE: u8 = 22;
const CLIENT_HELLO: u8 = 1;
const SERVER_HELLO: u8 = 2;

/// Whether a datagram's first byte marks it as DTLS (design.md: 20..=25).
pub fn is_dtls(datagram: &[u8]) -> bool {
    matches!(datagram.first(), Some(20..=25))
}

/// Whether the datagram starts with a ClientHello: a peer (re)starting a handshake.
///
/// Unauthenticated. The caller uses it to decide whether a new server [`super::Handshake`]
/// is needed (see the module docs on peer restarts).
pub fn is_client_hello(datagram: &[u8]) -> bool {
    first(datagram).is_some_and(|r| r.handshake_type() == Some(CLIENT_HELLO))
}

/// One record's header fields, plus the handshake type when it is readable (epoch 0).
#[derive(Clone, Copy)]
pub(crate) struct Record {
    content: u8,
    epoch: u16,
    first_body_byte: Option<u8>,
}

impl Record {
    pub(crate) fn epoch(self) -> u16 {
        self.epoch
    }

    /// Handshake message type of a plaintext handshake record.
    pub(crate) fn handshake_type(self) -> Option<u8> {
        (self.content == CONTENT_HANDSHAKE && self.epoch == 0).then_some(self.first_body_byte).flatten()
    }

    pub(crate) fn is_server_hello(self) -> bool {
        self.handshake_type() == Some(SERVER_HELLO)
    }

    pub(crate) fn is_plain_handshake(self) -> bool {
        self.handshake_type().is_some()
    }
}

/// Calls `each` for every record; false if the datagram is not exactly a sequence of records
/// (the crate's rule: more than a bare header must remain where a record starts).
pub(crate) fn walk(datagram: &[u8], mut each: impl FnMut(Record)) -> bool {
    let mut rest = datagram;
    while !rest.is_empty() {
        if rest.len() <= RECORD_HEADER_LEN {
            return false;
        }
        let body = usize::from(u16::from_be_bytes([rest[11], rest[12]]));
        let Some(next) = rest.get(RECORD_HEADER_LEN + body..) else {
            return false;
        };
        each(Record {
            content: rest[0],
            epoch: u16::from_be_bytes([rest[3], rest[4]]),
            first_body_byte: rest.get(RECORD_HEADER_LEN).copied().filter(|_| body > 0),
        });
        rest = next;
    }
    true
}

pub(crate) fn first(datagram: &[u8]) -> Option<Record> {
    let mut first = None;
    walk(datagram, |r| {
        first.get_or_insert(r);
    });
    first
}

/// Whether the datagram is nothing but well-framed DTLS records, so the handshake code never
/// fails on framing (an unauthenticated error that could otherwise end a handshake).
pub(crate) fn well_framed(datagram: &[u8]) -> bool {
    let mut dtls = true;
    let framed = walk(datagram, |r| dtls &= (20..=25).contains(&r.content));
    framed && dtls && !datagram.is_empty()
}
