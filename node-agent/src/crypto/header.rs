//! The 16-byte data packet header (design.md "Data packet").

/// Header length; the header is also the AEAD's associated data.
pub const LEN: usize = 16;
/// AES-GCM tag length.
pub const TAG_LEN: usize = 16;
/// First byte of every data packet.
pub const TYPE_DATA: u8 = 0x01;

/// The receiver's session index, if `datagram` is long enough to be a data packet.
///
/// Unauthenticated: only use it to find the session whose key then authenticates the packet.
pub fn peek_rx_index(datagram: &[u8]) -> Option<u32> {
    if datagram.len() < LEN + TAG_LEN || datagram[0] != TYPE_DATA {
        return None;
    }
    let bytes: [u8; 4] = datagram[4..8].try_into().ok()?;
    Some(u32::from_be_bytes(bytes))
}

/// The unauthenticated counter of a data packet (see [`peek_rx_index`]).
pub fn peek_counter(datagram: &[u8]) -> Option<u64> {
    if datagram.len() < LEN + TAG_LEN || datagram[0] != TYPE_DATA {
        return None;
    }
    let bytes: [u8; 8] = datagram[8..16].try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

/// Writes a data header for `rx_index` and `counter` into `out`.
pub(crate) fn write(out: &mut [u8; LEN], rx_index: u32, counter: u64) {
    out[0] = TYPE_DATA;
    out[1..4].fill(0);
    out[4..8].copy_from_slice(&rx_index.to_be_bytes());
    out[8..16].copy_from_slice(&counter.to_be_bytes());
}
