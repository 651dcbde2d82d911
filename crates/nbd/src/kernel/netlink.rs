//! Attach by generic netlink (Linux ≥ 4.12), what nbd-client uses by default: one CONNECT
//! with every socket, a dead-connection timeout during which RECONFIGURE can hand over fresh
//! sockets, STATUS, and DISCONNECT. No thread blocks in the kernel, unlike `NBD_DO_IT`.

use std::fmt::Debug;
use std::os::fd::{AsRawFd, OwnedFd};

use netlink_packet_core::{
    Emitable, NetlinkHeader, NetlinkMessage, NetlinkPayload, ParseableParametrized, NLM_F_ACK,
    NLM_F_REQUEST,
};
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::{GenlFamily, GenlHeader, GenlMessage};
use netlink_sys::{protocols::NETLINK_GENERIC, Socket, SocketAddr};

use super::attrs::{DeviceStatus, NbdAttr, NbdCmd, NbdMessage, FAMILY};
use super::{DeviceConfig, KernelError};

/// `NBD_CFLAG_DESTROY_ON_DISCONNECT`: remove the device when it disconnects.
pub const CFLAG_DESTROY_ON_DISCONNECT: u64 = 1 << 0;
/// `NBD_CFLAG_DISCONNECT_ON_CLOSE`: disconnect when the last opener closes the device.
pub const CFLAG_DISCONNECT_ON_CLOSE: u64 = 1 << 1;

/// What a RECONFIGURE changes; `None` fields stay as they are.
#[derive(Debug, Default)]
pub struct Reconfigure {
    /// New per-request timeout in seconds.
    pub timeout: Option<u64>,
    /// New dead-connection timeout in seconds.
    pub dead_conn_timeout: Option<u64>,
    /// New `NBD_CFLAG_*` client flags.
    pub client_flags: Option<u64>,
    /// Must repeat the identifier given at CONNECT, if any.
    pub backend_identifier: Option<String>,
    /// Replacements for dead connections (the kernel ignores them while all are alive).
    pub sockets: Vec<OwnedFd>,
}

/// A generic netlink socket bound to the `nbd` family.
#[derive(Debug)]
pub struct NbdNetlink {
    socket: Socket,
    family_id: u16,
    sequence: u32,
}

impl NbdNetlink {
    /// Opens a socket and resolves the family; fails with [`KernelError::NoDriver`] when the
    /// kernel has no nbd driver loaded.
    pub fn open() -> Result<Self, KernelError> {
        let mut socket = Socket::new(NETLINK_GENERIC).map_err(KernelError::netlink("open"))?;
        socket.bind_auto().map_err(KernelError::netlink("bind"))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(KernelError::netlink("connect"))?;
        let mut this = NbdNetlink {
            socket,
            family_id: 0,
            sequence: 0,
        };
        let query = GenlCtrl {
            cmd: GenlCtrlCmd::GetFamily,
            nlas: vec![GenlCtrlAttrs::FamilyName(FAMILY.to_string())],
        };
        let replies = this.request(query, 0).map_err(|e| match e {
            KernelError::Netlink { source, .. } if source.raw_os_error() == Some(libc::ENOENT) => {
                KernelError::NoDriver
            }
            other => other,
        })?;
        this.family_id = replies
            .iter()
            .flat_map(|reply| reply.nlas.iter())
            .find_map(|nla| match nla {
                GenlCtrlAttrs::FamilyId(id) => Some(*id),
                _ => None,
            })
            .ok_or(KernelError::NoDriver)?;
        Ok(this)
    }

    /// CONNECT: a new device (or `/dev/nbd<index>`) on `sockets`; returns its index.
    pub fn connect(
        &mut self,
        config: &DeviceConfig,
        index: Option<u32>,
        sockets: &[OwnedFd],
    ) -> Result<u32, KernelError> {
        config.validate(sockets.len())?;
        let mut attrs = vec![
            NbdAttr::SizeBytes(config.size),
            NbdAttr::BlockSizeBytes(u64::from(config.block_size)),
            NbdAttr::ServerFlags(u64::from(config.flags)),
            NbdAttr::Timeout(config.timeout.as_secs()),
            NbdAttr::DeadConnTimeout(config.dead_conn_timeout.as_secs()),
            NbdAttr::ClientFlags(config.client_flags),
            NbdAttr::Sockets(fds(sockets)?),
        ];
        if let Some(index) = index {
            attrs.push(NbdAttr::Index(index));
        }
        if let Some(id) = &config.backend_identifier {
            attrs.push(NbdAttr::BackendIdentifier(id.clone()));
        }
        let replies = self.nbd_request(NbdCmd::Connect, attrs)?;
        replies
            .iter()
            .flat_map(|reply| reply.attrs.iter())
            .find_map(|attr| match attr {
                NbdAttr::Index(index) => Some(*index),
                _ => None,
            })
            .or(index)
            .ok_or_else(|| KernelError::Protocol("CONNECT reply carries no device index".into()))
    }

    /// RECONFIGURE device `index`.
    pub fn reconfigure(&mut self, index: u32, change: &Reconfigure) -> Result<(), KernelError> {
        let mut attrs = vec![NbdAttr::Index(index)];
        attrs.extend(change.timeout.map(NbdAttr::Timeout));
        attrs.extend(change.dead_conn_timeout.map(NbdAttr::DeadConnTimeout));
        attrs.extend(change.client_flags.map(NbdAttr::ClientFlags));
        attrs.extend(
            change
                .backend_identifier
                .clone()
                .map(NbdAttr::BackendIdentifier),
        );
        if !change.sockets.is_empty() {
            attrs.push(NbdAttr::Sockets(fds(&change.sockets)?));
        }
        self.nbd_request(NbdCmd::Reconfigure, attrs).map(drop)
    }

    /// DISCONNECT device `index`: the kernel sends DISC on every socket.
    pub fn disconnect(&mut self, index: u32) -> Result<(), KernelError> {
        self.nbd_request(NbdCmd::Disconnect, vec![NbdAttr::Index(index)])
            .map(drop)
    }

    /// STATUS of one device, or of all of them.
    pub fn status(&mut self, index: Option<u32>) -> Result<Vec<DeviceStatus>, KernelError> {
        let attrs = index.map(NbdAttr::Index).into_iter().collect();
        let replies = self.nbd_request(NbdCmd::Status, attrs)?;
        Ok(replies
            .into_iter()
            .flat_map(|reply| reply.attrs)
            .filter_map(|attr| match attr {
                NbdAttr::DeviceList(list) => Some(list),
                _ => None,
            })
            .flatten()
            .collect())
    }

    fn nbd_request(
        &mut self,
        cmd: NbdCmd,
        attrs: Vec<NbdAttr>,
    ) -> Result<Vec<NbdMessage>, KernelError> {
        let family_id = self.family_id;
        self.request(NbdMessage { cmd, attrs }, family_id)
    }

    /// Sends one request with an ACK requested; collects replies until the ACK or an error.
    fn request<F>(&mut self, payload: F, family_id: u16) -> Result<Vec<F>, KernelError>
    where
        F: GenlFamily + Emitable + ParseableParametrized<[u8], GenlHeader> + Debug,
    {
        self.sequence = self.sequence.wrapping_add(1);
        let mut genl = GenlMessage::from_payload(payload);
        if family_id != 0 {
            genl.set_resolved_family_id(family_id);
        }
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK;
        header.sequence_number = self.sequence;
        let mut message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(genl));
        message.finalize();
        let mut buf = vec![0u8; message.buffer_len()];
        message.serialize(&mut buf);
        self.socket
            .send(&buf, 0)
            .map_err(KernelError::netlink("send"))?;

        let mut replies = Vec::new();
        loop {
            let (datagram, _) = self
                .socket
                .recv_from_full()
                .map_err(KernelError::netlink("receive"))?;
            let mut offset = 0;
            while offset < datagram.len() {
                let bytes = &datagram[offset..];
                let reply = NetlinkMessage::<GenlMessage<F>>::deserialize(bytes)
                    .map_err(|e| KernelError::Protocol(format!("bad netlink reply: {e}")))?;
                let len = usize::try_from(reply.header.length).unwrap_or(0);
                if len == 0 {
                    return Err(KernelError::Protocol("netlink reply of length 0".into()));
                }
                offset += (len + 3) & !3;
                if reply.header.sequence_number != self.sequence {
                    continue; // A stale reply to an earlier request.
                }
                match reply.payload {
                    NetlinkPayload::InnerMessage(genl) => replies.push(genl.payload),
                    NetlinkPayload::Error(err) if err.code.is_none() => return Ok(replies),
                    NetlinkPayload::Error(err) => {
                        return Err(KernelError::Netlink {
                            op: "request",
                            source: err.to_io(),
                        })
                    }
                    NetlinkPayload::Done(_) => return Ok(replies),
                    _ => {}
                }
            }
        }
    }
}

fn fds(sockets: &[OwnedFd]) -> Result<Vec<u32>, KernelError> {
    sockets
        .iter()
        .map(|s| {
            u32::try_from(s.as_raw_fd()).map_err(|_| KernelError::Config {
                reason: "negative socket descriptor".into(),
            })
        })
        .collect()
}
