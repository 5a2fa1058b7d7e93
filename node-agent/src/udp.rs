//! Batched I/O on the agent's UDP socket.
//!
//! Sending uses UDP GSO: one `sendmsg` with `UDP_SEGMENT` carries up to 64 equal-size datagrams to one
//! destination, and the kernel keeps them as one buffer as far as it can (through veth, bridges and NAT).
//! Receiving uses `recvmmsg` with `UDP_GRO`: one call returns several messages, and each message may hold a
//! run of equal-size datagrams coalesced by the kernel. Both fall back to a datagram per message where the
//! kernel or the egress device lacks support. Nothing here allocates after [`RecvBatch::new`].

#[cfg(test)]
mod tests;

use std::io;
use std::mem;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::ptr;

use socket2::SockAddr;

/// The kernel's `UDP_MAX_SEGMENTS`.
pub const MAX_SEGMENTS: usize = 64;
/// UDP payload one GSO send may carry: an IPv4 packet's 65535 bytes less its IP and UDP headers.
pub const MAX_GSO_BYTES: usize = 65535 - 20 - 8;
/// Bytes per receive slot: a whole GRO train fits.
pub const SLOT_LEN: usize = 65536;
/// Messages per `recvmmsg`.
pub const RECV_SLOTS: usize = 16;

/// Asks the kernel to coalesce received datagrams (Linux 5.0+). Returns whether it agreed.
pub fn enable_gro(fd: RawFd) -> bool {
    setsockopt_int(fd, libc::SOL_UDP, libc::UDP_GRO, 1).is_ok()
}

/// Whether the kernel knows `UDP_SEGMENT` (Linux 4.18+). The egress device may still refuse it, which
/// [`send_segments`] reports as [`SendError::GsoRefused`].
pub fn gso_available(fd: RawFd) -> bool {
    let mut v: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `v` and `len` are valid for writes of the sizes given.
    let r = unsafe {
        libc::getsockopt(fd, libc::SOL_UDP, libc::UDP_SEGMENT, ptr::addr_of_mut!(v).cast(), &mut len)
    };
    r == 0
}

/// Sets SO_SNDBUF/SO_RCVBUF, past `wmem_max`/`rmem_max` when we have CAP_NET_ADMIN (as the agent does).
pub fn set_buffers(fd: RawFd, bytes: usize) {
    let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    for (force, plain) in [(libc::SO_SNDBUFFORCE, libc::SO_SNDBUF), (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF)] {
        if setsockopt_int(fd, libc::SOL_SOCKET, force, v).is_err() {
            let _ = setsockopt_int(fd, libc::SOL_SOCKET, plain, v);
        }
    }
}

fn setsockopt_int(fd: RawFd, level: libc::c_int, name: libc::c_int, v: libc::c_int) -> io::Result<()> {
    // SAFETY: `v` lives across the call and the length matches its type.
    let r = unsafe {
        libc::setsockopt(fd, level, name, ptr::addr_of!(v).cast(), mem::size_of::<libc::c_int>() as _)
    };
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

#[derive(Debug)]
pub enum SendError {
    /// The device or kernel cannot segment: send datagrams one by one from now on.
    GsoRefused,
    Io(io::Error),
}

/// Sends `datagrams` to `dst`. With `gso` and more than one datagram they go out as one GSO send: all but the
/// last must be `seg` bytes long, the last at most `seg`, at most [`MAX_SEGMENTS`] of them and
/// [`MAX_GSO_BYTES`] in total (the caller groups them so). Without `gso` they are sent with one `sendmmsg`.
pub fn send_segments(
    fd: RawFd,
    dst: &SockAddr,
    datagrams: &[&[u8]],
    seg: usize,
    gso: bool,
) -> Result<(), SendError> {
    debug_assert!(datagrams.len() <= MAX_SEGMENTS);
    let n = datagrams.len().min(MAX_SEGMENTS);
    let mut iov = [libc::iovec { iov_base: ptr::null_mut(), iov_len: 0 }; MAX_SEGMENTS];
    for (v, d) in iov.iter_mut().zip(datagrams) {
        *v = libc::iovec { iov_base: d.as_ptr().cast_mut().cast(), iov_len: d.len() };
    }
    if gso && n > 1 {
        return send_gso(fd, dst, &iov[..n], seg);
    }
    // One datagram per message, all in one syscall.
    // SAFETY: an all-zero mmsghdr is valid (null pointers, zero lengths).
    let mut msgs: [libc::mmsghdr; MAX_SEGMENTS] = unsafe { mem::zeroed() };
    for (m, v) in msgs.iter_mut().zip(iov.iter_mut()).take(n) {
        m.msg_hdr.msg_name = dst.as_ptr().cast_mut().cast();
        m.msg_hdr.msg_namelen = dst.len();
        m.msg_hdr.msg_iov = v;
        m.msg_hdr.msg_iovlen = 1;
    }
    let mut sent = 0;
    while sent < n {
        // SAFETY: every header points at `dst` and one iovec, all alive across the call.
        let r = unsafe { libc::sendmmsg(fd, msgs[sent..n].as_mut_ptr(), (n - sent) as libc::c_uint, 0) };
        if r < 0 {
            return Err(SendError::Io(io::Error::last_os_error()));
        }
        sent += r as usize;
    }
    Ok(())
}

fn send_gso(fd: RawFd, dst: &SockAddr, iov: &[libc::iovec], seg: usize) -> Result<(), SendError> {
    let seg = u16::try_from(seg).map_err(|_| SendError::GsoRefused)?;
    // Room for one cmsg carrying a u16, u64-aligned as cmsg headers require.
    let mut ctrl = [0u64; 4];
    // SAFETY: zeroed msghdr is valid; the pointers set below outlive the sendmsg call.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_name = dst.as_ptr().cast_mut().cast();
    msg.msg_namelen = dst.len();
    msg.msg_iov = iov.as_ptr().cast_mut();
    msg.msg_iovlen = iov.len() as _; // c_int on musl, usize on glibc
    msg.msg_control = ctrl.as_mut_ptr().cast();
    // SAFETY: CMSG_* only compute sizes and walk within `ctrl`, which is large enough for one u16 cmsg.
    unsafe {
        msg.msg_controllen = libc::CMSG_SPACE(mem::size_of::<u16>() as u32) as _;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_UDP;
        (*c).cmsg_type = libc::UDP_SEGMENT;
        (*c).cmsg_len = libc::CMSG_LEN(mem::size_of::<u16>() as u32) as _;
        ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), seg);
    }
    // SAFETY: `msg` is fully initialised and points at live buffers.
    let r = unsafe { libc::sendmsg(fd, &msg, 0) };
    if r >= 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        // EIO: the egress device cannot checksum-offload; EINVAL/ENOPROTOOPT: no UDP_SEGMENT at all.
        Some(libc::EIO | libc::EINVAL | libc::ENOPROTOOPT | libc::EOPNOTSUPP) => Err(SendError::GsoRefused),
        _ => Err(SendError::Io(e)),
    }
}

/// One received message: `len` bytes from `src`, made of datagrams of `stride` bytes (the last may be
/// shorter). Without GRO, `stride == len`.
#[derive(Clone, Copy, Debug)]
pub struct RecvMeta {
    slot: usize,
    pub len: usize,
    pub stride: usize,
    pub src: SocketAddr,
}

impl RecvMeta {
    /// Where the message starts in the batch's buffer (see [`RecvBatch::bytes`]).
    pub fn offset(&self) -> usize {
        self.slot * SLOT_LEN
    }
}

/// Reusable `recvmmsg` buffers.
pub struct RecvBatch {
    bufs: Vec<u8>,
    addrs: Vec<libc::sockaddr_storage>,
    ctrl: Vec<[u64; 8]>,
    meta: Vec<RecvMeta>,
    count: usize,
}

impl Default for RecvBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl RecvBatch {
    pub fn new() -> Self {
        // SAFETY: an all-zero sockaddr_storage is a valid (AF_UNSPEC) value.
        let zero_addr: libc::sockaddr_storage = unsafe { mem::zeroed() };
        let unspec = SocketAddr::from(([0, 0, 0, 0], 0));
        Self {
            bufs: vec![0; RECV_SLOTS * SLOT_LEN],
            addrs: vec![zero_addr; RECV_SLOTS],
            ctrl: vec![[0; 8]; RECV_SLOTS],
            meta: vec![RecvMeta { slot: 0, len: 0, stride: 0, src: unspec }; RECV_SLOTS],
            count: 0,
        }
    }

    /// One non-blocking `recvmmsg`: returns how many messages arrived (`WouldBlock` if none).
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        self.count = 0;
        let mut iov = [libc::iovec { iov_base: ptr::null_mut(), iov_len: 0 }; RECV_SLOTS];
        // SAFETY: an all-zero mmsghdr is valid; the pointers set below outlive the call.
        let mut msgs: [libc::mmsghdr; RECV_SLOTS] = unsafe { mem::zeroed() };
        let slots = self.bufs.chunks_exact_mut(SLOT_LEN).zip(self.addrs.iter_mut()).zip(self.ctrl.iter_mut());
        for (((buf, addr), ctrl), (m, v)) in slots.zip(msgs.iter_mut().zip(iov.iter_mut())) {
            *v = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
            m.msg_hdr.msg_name = ptr::from_mut(addr).cast();
            m.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            m.msg_hdr.msg_iov = v;
            m.msg_hdr.msg_iovlen = 1;
            m.msg_hdr.msg_control = ctrl.as_mut_ptr().cast();
            m.msg_hdr.msg_controllen = mem::size_of_val(ctrl) as _;
        }
        // SAFETY: every header points at its own live slot, address and control buffer.
        let r = unsafe {
            libc::recvmmsg(
                fd,
                msgs.as_mut_ptr(),
                RECV_SLOTS as libc::c_uint,
                libc::MSG_DONTWAIT as _,
                ptr::null_mut(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = r as usize;
        for (i, m) in msgs.iter().enumerate().take(n) {
            let len = m.msg_len as usize;
            let stride = gro_size(&m.msg_hdr).filter(|&s| s > 0 && s < len).unwrap_or(len);
            let Some(src) = socket_addr(&self.addrs[i]) else { continue };
            self.meta[self.count] = RecvMeta { slot: i, len, stride, src };
            self.count += 1;
        }
        Ok(self.count)
    }

    /// Appends a message as if received (tests of what consumes batches).
    #[cfg(test)]
    pub fn push(&mut self, src: SocketAddr, stride: usize, bytes: &[u8]) {
        let slot = self.count;
        self.bufs[slot * SLOT_LEN..slot * SLOT_LEN + bytes.len()].copy_from_slice(bytes);
        self.meta[slot] = RecvMeta { slot, len: bytes.len(), stride, src };
        self.count += 1;
    }

    /// Forgets the messages (tests).
    #[cfg(test)]
    pub fn reset(&mut self) {
        self.count = 0;
    }

    /// Messages from the last [`RecvBatch::recv`].
    pub fn count(&self) -> usize {
        self.count
    }

    /// Message `i` of the last [`RecvBatch::recv`]: metadata and its bytes, for in-place processing.
    pub fn message(&mut self, i: usize) -> (RecvMeta, &mut [u8]) {
        let m = self.meta[i];
        let start = m.offset();
        (m, &mut self.bufs[start..start + m.len.min(SLOT_LEN)])
    }

    /// Bytes `range` of the whole receive buffer (ranges come from [`RecvMeta::offset`]).
    pub fn bytes(&self, range: std::ops::Range<usize>) -> &[u8] {
        &self.bufs[range]
    }
}

/// The sender of a received datagram (IPv4 or IPv6; anything else is ignored).
fn socket_addr(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(s.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which it is large enough for.
            let a = unsafe { &*ptr::from_ref(s).cast::<libc::sockaddr_in>() };
            let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::from((ip, u16::from_be(a.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let a = unsafe { &*ptr::from_ref(s).cast::<libc::sockaddr_in6>() };
            let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
            // A dual-stack socket reports IPv4 senders as IPv4-mapped IPv6; the engine speaks plain IPv4.
            if let Some(v4) = ip.to_ipv4_mapped() {
                return Some(SocketAddr::from((v4, u16::from_be(a.sin6_port))));
            }
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                ip,
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// The `UDP_GRO` segment size from a received message's control data, if the kernel coalesced it.
fn gro_size(hdr: &libc::msghdr) -> Option<usize> {
    // SAFETY: walks the control buffer the kernel filled, bounded by msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(hdr);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == libc::UDP_GRO {
                let v = ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                return usize::try_from(v).ok();
            }
            c = libc::CMSG_NXTHDR(hdr, c);
        }
    }
    None
}
