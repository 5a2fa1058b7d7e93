//! The overlay's TUN device: an L3 interface (no packet-info header) carrying raw IP packets.
//!
//! The device is not persistent, so the kernel deletes the interface when the last descriptor
//! closes: dropping [`Tun`] (and every clone of an `Arc<Tun>`) removes it, even on a crash.

mod mtu;
#[cfg(test)]
mod tests;

use std::ffi::CString;
use std::io;

use tun_rs::{AsyncDevice, DeviceBuilder, ExpandBuffer, GROTable};

use crate::routes::IpNet;

pub use tun_rs::{GROTable as GroTable, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN as VNET_HDR_LEN};

/// Bytes [`Tun::try_recv_batch`] needs for one raw read: a virtio header and a 64 KiB packet.
pub const SCRATCH_LEN: usize = VNET_HDR_LEN + 65535;

pub use mtu::{DATA_OVERHEAD, auto_mtu, default_route_interface, underlay_mtu};

/// Linux IFNAMSIZ minus the terminating NUL.
pub const MAX_NAME_LEN: usize = 15;
/// IPv6 needs links of at least 1280 bytes; the kernel drops IPv6 from smaller interfaces.
pub const IPV6_MIN_MTU: u32 = 1280;
/// The IPv4 minimum reassembly size; anything smaller breaks ordinary hosts.
pub const MIN_MTU: u32 = 576;

/// What to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TunConfig {
    pub name: String,
    /// Our overlay IPv4 address with the overlay prefix length, e.g. `100.64.0.1/10`.
    pub ipv4: Option<IpNet>,
    /// Our overlay IPv6 address with the overlay prefix length, e.g. `fd52::1/64`.
    pub ipv6: Option<IpNet>,
    pub mtu: u32,
    /// Ask for TSO/USO offloads (IFF_VNET_HDR): the kernel hands us 64 KiB TCP segments to split and
    /// accepts coalesced ones. Falls back to plain packets where the kernel refuses.
    pub offload: bool,
}

/// One-line errors. The OS error is part of the message and not also a `source()`, so
/// `{:#}` chains do not print it twice.
#[derive(Debug, thiserror::Error)]
pub enum TunError {
    #[error("invalid TUN device name {name:?}: {reason}")]
    BadName { name: String, reason: &'static str },
    #[error("invalid MTU {mtu} for TUN device {name}: {reason}")]
    BadMtu { name: String, mtu: u32, reason: &'static str },
    #[error("invalid address {addr} for TUN device {name}: wrong address family")]
    WrongFamily { name: String, addr: IpNet },
    #[error("/dev/net/tun not found: load the tun module or mount the device into the container")]
    NoDevice,
    #[error("creating TUN device {name} needs CAP_NET_ADMIN")]
    NoPermission { name: String },
    #[error("cannot create TUN device {name}: an interface with that name already exists")]
    NameInUse { name: String },
    #[error("creating TUN device {name} needs a tokio runtime")]
    NoRuntime { name: String },
    #[error("creating TUN device {name}: {err}")]
    Create { name: String, err: io::Error },
    #[error("configuring TUN device {name}: {what}: {err}")]
    Configure { name: String, what: String, err: io::Error },
}

/// A configured, up TUN device registered with the tokio reactor.
pub struct Tun {
    dev: AsyncDevice,
    name: String,
    mtu: u32,
    offload: bool,
}

impl std::fmt::Debug for Tun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tun").field("name", &self.name).field("mtu", &self.mtu).finish_non_exhaustive()
    }
}

impl Tun {
    /// Creates the interface, assigns the addresses and MTU and brings it up. Must be called
    /// from within a tokio runtime. On any error the half-made interface is removed again.
    pub fn create(cfg: &TunConfig) -> Result<Tun, TunError> {
        let name = cfg.name.clone();
        validate_name(&name)?;
        check_config(cfg)?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(TunError::NoRuntime { name });
        }
        // TUNSETIFF would attach to an existing persistent TUN of that name (which then
        // survives us) or fail with a vague EINVAL for other kinds of interface.
        if interface_exists(&name) {
            return Err(TunError::NameInUse { name });
        }
        let build = |offload: bool| {
            DeviceBuilder::new()
                .name(name.as_str())
                .inherit_enable_state() // we bring it up ourselves, after configuring
                .with(|b| {
                    b.packet_information(false).offload(offload).multi_queue(false);
                })
                .build_sync()
        };
        let (dev, offload) = match build(cfg.offload) {
            Ok(d) => (d, cfg.offload),
            // Old kernels refuse IFF_VNET_HDR or TUNSETOFFLOAD with EINVAL; plain packets still work.
            Err(e) if cfg.offload && e.raw_os_error() == Some(libc::EINVAL) && !interface_exists(&name) => {
                tracing::warn!(error = %e, "TUN offloads unavailable; using one packet per read");
                (build(false).map_err(|e| create_error(&name, e))?, false)
            }
            Err(e) => return Err(create_error(&name, e)),
        };
        // From here on, dropping `dev` deletes the interface again.
        let step = |what: &str, r: io::Result<()>| {
            r.map_err(|err| TunError::Configure { name: name.clone(), what: what.to_owned(), err })
        };
        let mtu = u16::try_from(cfg.mtu).unwrap_or(u16::MAX);
        step(&format!("setting MTU {mtu}"), dev.set_mtu(mtu))?;
        if let Some(v4) = cfg.ipv4 {
            let r = dev.set_network_address(v4.addr(), v4.prefix_len(), None);
            step(&format!("adding address {v4}"), r)?;
        }
        if let Some(v6) = cfg.ipv6 {
            let r = dev.add_address_v6(v6.addr(), v6.prefix_len());
            step(&format!("adding address {v6}"), r)?;
        }
        step("bringing it up", dev.enabled(true))?;
        let dev = AsyncDevice::new(dev).map_err(|e| TunError::Configure {
            name: name.clone(),
            what: "registering with tokio".into(),
            err: e,
        })?;
        Ok(Tun { dev, name, mtu: cfg.mtu, offload })
    }

    /// Waits until a read may succeed (it may still return `WouldBlock`).
    pub async fn readable(&self) -> io::Result<()> {
        self.dev.readable().await
    }

    /// Reads one packet from the kernel without waiting and splits it into `bufs` (a TSO segment becomes
    /// MTU-sized packets with their checksums filled in): packet `i` is `bufs[i][offset..offset + sizes[i]]`.
    /// `scratch` holds the raw read and must fit [`SCRATCH_LEN`]. Returns the number of packets.
    pub fn try_recv_batch<B: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        scratch: &mut [u8],
        bufs: &mut [B],
        sizes: &mut [usize],
        offset: usize,
    ) -> io::Result<usize> {
        self.dev.try_recv_multiple(scratch, bufs, sizes, offset)
    }

    /// Like [`Tun::try_recv_batch`], but asks the kernel even when the reactor saw no readiness (busy polling).
    pub fn poll_recv_batch<B: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        scratch: &mut [u8],
        bufs: &mut [B],
        sizes: &mut [usize],
        offset: usize,
    ) -> io::Result<usize> {
        let dev: &tun_rs::DeviceImpl = &self.dev;
        dev.recv_multiple(scratch, bufs, sizes, offset)
    }

    /// Like [`Tun::try_recv_batch`], waiting for a packet.
    pub async fn recv_batch<B: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        scratch: &mut [u8],
        bufs: &mut [B],
        sizes: &mut [usize],
        offset: usize,
    ) -> io::Result<usize> {
        self.dev.recv_multiple(scratch, bufs, sizes, offset).await
    }

    /// Writes the packets `bufs[i][offset..]` to the kernel, coalescing TCP (and with USO, UDP) flows into
    /// large segments when offloads are on. `offset` leaves room for the virtio header and must be at least
    /// [`VNET_HDR_LEN`]; buffers need spare capacity (up to 64 KiB) for coalescing to happen.
    pub async fn send_batch<B: ExpandBuffer>(
        &self,
        gro: &mut GROTable,
        bufs: &mut [B],
        offset: usize,
    ) -> io::Result<usize> {
        self.dev.send_multiple(gro, bufs, offset).await
    }

    /// Writes one packet gathered from `parts`; with offloads the first part is the virtio header.
    pub async fn send_vectored(&self, parts: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.dev.send_vectored(parts).await
    }

    /// Whether the kernel accepts UDP super-packets (USO, Linux 6.2+).
    pub fn udp_offload(&self) -> bool {
        let dev: &tun_rs::DeviceImpl = &self.dev;
        self.offload && dev.udp_gso()
    }

    /// Whether the device runs with offloads (virtio headers on every read and write).
    pub fn offload(&self) -> bool {
        self.offload
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn mtu(&self) -> u32 {
        self.mtu
    }

    /// The underlying device, for batched or readiness-based I/O.
    pub fn device(&self) -> &AsyncDevice {
        &self.dev
    }
}

/// Checks a Linux interface name: 1..=15 bytes, no '/', ':', '%', whitespace or control chars.
pub fn validate_name(name: &str) -> Result<(), TunError> {
    let bad = |reason| Err(TunError::BadName { name: name.to_owned(), reason });
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("longer than 15 bytes");
    }
    if name == "." || name == ".." {
        return bad("reserved name");
    }
    // '%' would make the kernel pick a number (rm%d), ':' marks IPv4 aliases, '/' breaks sysfs.
    if name.chars().any(|c| matches!(c, '/' | ':' | '%') || c.is_whitespace() || c.is_control()) {
        return bad("contains '/', ':', '%', whitespace or control characters");
    }
    Ok(())
}

fn check_config(cfg: &TunConfig) -> Result<(), TunError> {
    let bad_mtu = |reason| Err(TunError::BadMtu { name: cfg.name.clone(), mtu: cfg.mtu, reason });
    if !(MIN_MTU..=u32::from(u16::MAX)).contains(&cfg.mtu) {
        return bad_mtu("must be 576..=65535");
    }
    if cfg.ipv6.is_some() && cfg.mtu < IPV6_MIN_MTU {
        return bad_mtu("IPv6 needs at least 1280");
    }
    for (net, want_v4) in [(cfg.ipv4, true), (cfg.ipv6, false)] {
        if let Some(net) = net.filter(|n| n.is_ipv4() != want_v4) {
            return Err(TunError::WrongFamily { name: cfg.name.clone(), addr: net });
        }
    }
    Ok(())
}

fn interface_exists(name: &str) -> bool {
    let Ok(c) = CString::new(name) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
}

/// Turns the errno of open(/dev/net/tun) + TUNSETIFF into the one-line errors operators need.
fn create_error(name: &str, e: io::Error) -> TunError {
    let name = name.to_owned();
    match e.raw_os_error() {
        Some(libc::ENOENT | libc::ENODEV | libc::ENXIO) => TunError::NoDevice,
        Some(libc::EPERM | libc::EACCES) => TunError::NoPermission { name },
        Some(libc::EBUSY | libc::EEXIST) => TunError::NameInUse { name },
        // Lost a race with another interface of the same name.
        Some(libc::EINVAL) if interface_exists(&name) => TunError::NameInUse { name },
        _ => TunError::Create { name, err: e },
    }
}
