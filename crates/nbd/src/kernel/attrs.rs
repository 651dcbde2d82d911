//! The `nbd` generic netlink family's messages (`include/uapi/linux/nbd-netlink.h`), as
//! netlink-packet-generic payloads: attributes out, and the replies the kernel sends back.

use netlink_packet_core::{
    emit_u32, emit_u64, parse_u32, parse_u8, DecodeError, DefaultNla, Emitable, Nla, NlaBuffer,
    NlasIterator, Parseable, ParseableParametrized, NLA_F_NESTED,
};
use netlink_packet_generic::{GenlFamily, GenlHeader};

/// Family name and version the kernel registers.
pub const FAMILY: &str = "nbd";
const VERSION: u8 = 1;

/// Commands (`NBD_CMD_*` of the netlink family, not the wire protocol's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NbdCmd {
    /// Create or reuse a device with the given sockets.
    Connect = 1,
    /// Send DISC on every socket and shut the device down.
    Disconnect = 2,
    /// Change timeouts/flags and replace dead sockets.
    Reconfigure = 3,
    /// Multicast: a socket died unexpectedly.
    LinkDead = 4,
    /// List devices and whether they are connected.
    Status = 5,
}

impl NbdCmd {
    fn from_u8(cmd: u8) -> Result<Self, DecodeError> {
        Ok(match cmd {
            1 => NbdCmd::Connect,
            2 => NbdCmd::Disconnect,
            3 => NbdCmd::Reconfigure,
            4 => NbdCmd::LinkDead,
            5 => NbdCmd::Status,
            other => {
                return Err(DecodeError::from(format!(
                    "unknown nbd netlink command {other}"
                )))
            }
        })
    }
}

// NBD_ATTR_*.
const ATTR_INDEX: u16 = 1;
const ATTR_SIZE_BYTES: u16 = 2;
const ATTR_BLOCK_SIZE_BYTES: u16 = 3;
const ATTR_TIMEOUT: u16 = 4;
const ATTR_SERVER_FLAGS: u16 = 5;
const ATTR_CLIENT_FLAGS: u16 = 6;
const ATTR_SOCKETS: u16 = 7;
const ATTR_DEAD_CONN_TIMEOUT: u16 = 8;
const ATTR_DEVICE_LIST: u16 = 9;
const ATTR_BACKEND_IDENTIFIER: u16 = 10;
// NBD_SOCK_ITEM / NBD_SOCK_FD, NBD_DEVICE_ITEM / NBD_DEVICE_INDEX / NBD_DEVICE_CONNECTED.
const SOCK_ITEM: u16 = 1;
const SOCK_FD: u16 = 1;
const DEVICE_ITEM: u16 = 1;
const DEVICE_INDEX: u16 = 1;
const DEVICE_CONNECTED: u16 = 2;

/// One device of a STATUS reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceStatus {
    /// N of `/dev/nbdN`.
    pub index: u32,
    /// Whether it has live connections.
    pub connected: bool,
}

/// An `NBD_ATTR_*` attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NbdAttr {
    /// Device index (u32).
    Index(u32),
    /// Size in bytes.
    SizeBytes(u64),
    /// Logical block size in bytes.
    BlockSizeBytes(u64),
    /// Per-request timeout in seconds (0: none).
    Timeout(u64),
    /// Transmission flags from the handshake.
    ServerFlags(u64),
    /// `NBD_CFLAG_*`.
    ClientFlags(u64),
    /// Connected socket descriptors, in this process.
    Sockets(Vec<u32>),
    /// Seconds new I/O waits for a RECONFIGURE once every socket is dead.
    DeadConnTimeout(u64),
    /// STATUS reply: the devices.
    DeviceList(Vec<DeviceStatus>),
    /// Free text shown in `/sys/block/nbdN/backend`; RECONFIGURE must repeat it.
    BackendIdentifier(String),
    /// Anything this code does not know, kept as is.
    Other(DefaultNla),
}

/// A u32 attribute inside a nested list.
struct U32Nla(u16, u32);

impl Nla for U32Nla {
    fn value_len(&self) -> usize {
        4
    }
    fn kind(&self) -> u16 {
        self.0
    }
    fn emit_value(&self, buffer: &mut [u8]) {
        emit_u32(buffer, self.1).unwrap_or_default();
    }
}

/// A nested attribute holding one U32Nla (a socket item).
struct SockItem(u32);

impl Nla for SockItem {
    fn value_len(&self) -> usize {
        U32Nla(SOCK_FD, self.0).buffer_len()
    }
    fn kind(&self) -> u16 {
        SOCK_ITEM | NLA_F_NESTED
    }
    fn emit_value(&self, buffer: &mut [u8]) {
        U32Nla(SOCK_FD, self.0).emit(buffer);
    }
}

impl Nla for NbdAttr {
    fn value_len(&self) -> usize {
        match self {
            NbdAttr::Index(_) => 4,
            NbdAttr::SizeBytes(_)
            | NbdAttr::BlockSizeBytes(_)
            | NbdAttr::Timeout(_)
            | NbdAttr::ServerFlags(_)
            | NbdAttr::ClientFlags(_)
            | NbdAttr::DeadConnTimeout(_) => 8,
            NbdAttr::Sockets(fds) => fds.iter().map(|&fd| SockItem(fd).buffer_len()).sum(),
            // Never sent by userspace; emitted as an empty list.
            NbdAttr::DeviceList(_) => 0,
            NbdAttr::BackendIdentifier(s) => s.len() + 1,
            NbdAttr::Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            NbdAttr::Index(_) => ATTR_INDEX,
            NbdAttr::SizeBytes(_) => ATTR_SIZE_BYTES,
            NbdAttr::BlockSizeBytes(_) => ATTR_BLOCK_SIZE_BYTES,
            NbdAttr::Timeout(_) => ATTR_TIMEOUT,
            NbdAttr::ServerFlags(_) => ATTR_SERVER_FLAGS,
            NbdAttr::ClientFlags(_) => ATTR_CLIENT_FLAGS,
            NbdAttr::Sockets(_) => ATTR_SOCKETS | NLA_F_NESTED,
            NbdAttr::DeadConnTimeout(_) => ATTR_DEAD_CONN_TIMEOUT,
            NbdAttr::DeviceList(_) => ATTR_DEVICE_LIST | NLA_F_NESTED,
            NbdAttr::BackendIdentifier(_) => ATTR_BACKEND_IDENTIFIER,
            NbdAttr::Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            NbdAttr::Index(v) => emit_u32(buffer, *v).unwrap_or_default(),
            NbdAttr::SizeBytes(v)
            | NbdAttr::BlockSizeBytes(v)
            | NbdAttr::Timeout(v)
            | NbdAttr::ServerFlags(v)
            | NbdAttr::ClientFlags(v)
            | NbdAttr::DeadConnTimeout(v) => emit_u64(buffer, *v).unwrap_or_default(),
            NbdAttr::Sockets(fds) => {
                let items: Vec<SockItem> = fds.iter().map(|&fd| SockItem(fd)).collect();
                items.as_slice().emit(buffer);
            }
            NbdAttr::DeviceList(_) => {}
            NbdAttr::BackendIdentifier(s) => {
                buffer[..s.len()].copy_from_slice(s.as_bytes());
                buffer[s.len()] = 0;
            }
            NbdAttr::Other(nla) => nla.emit_value(buffer),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for NbdAttr {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        let value = buf.value();
        Ok(match buf.kind() {
            ATTR_INDEX => NbdAttr::Index(parse_u32(value)?),
            ATTR_DEVICE_LIST => NbdAttr::DeviceList(parse_device_list(value)?),
            _ => NbdAttr::Other(DefaultNla::parse(buf)?),
        })
    }
}

fn parse_device_list(value: &[u8]) -> Result<Vec<DeviceStatus>, DecodeError> {
    let mut devices = Vec::new();
    for item in NlasIterator::new(value) {
        let item = item?;
        if item.kind() != DEVICE_ITEM {
            continue;
        }
        let mut status = DeviceStatus {
            index: u32::MAX,
            connected: false,
        };
        for field in NlasIterator::new(item.value()) {
            let field = field?;
            match field.kind() {
                DEVICE_INDEX => status.index = parse_u32(field.value())?,
                DEVICE_CONNECTED => status.connected = parse_u8(field.value())? != 0,
                _ => {}
            }
        }
        if status.index == u32::MAX {
            return Err(DecodeError::from("device list item without an index"));
        }
        devices.push(status);
    }
    Ok(devices)
}

/// A message of the `nbd` family: a command and its attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdMessage {
    /// The command.
    pub cmd: NbdCmd,
    /// Its attributes.
    pub attrs: Vec<NbdAttr>,
}

impl GenlFamily for NbdMessage {
    fn family_name() -> &'static str {
        FAMILY
    }
    fn command(&self) -> u8 {
        self.cmd as u8
    }
    fn version(&self) -> u8 {
        VERSION
    }
}

impl Emitable for NbdMessage {
    fn buffer_len(&self) -> usize {
        self.attrs.as_slice().buffer_len()
    }
    fn emit(&self, buffer: &mut [u8]) {
        self.attrs.as_slice().emit(buffer);
    }
}

impl ParseableParametrized<[u8], GenlHeader> for NbdMessage {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        let attrs = NlasIterator::new(buf)
            .map(|nla| nla.and_then(|nla| NbdAttr::parse(&nla)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(NbdMessage {
            cmd: NbdCmd::from_u8(header.cmd)?,
            attrs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emit(attrs: Vec<NbdAttr>) -> Vec<u8> {
        let msg = NbdMessage {
            cmd: NbdCmd::Connect,
            attrs,
        };
        let mut buf = vec![0u8; msg.buffer_len()];
        msg.emit(&mut buf);
        buf
    }

    #[test]
    fn sockets_nest_two_levels_like_the_kernel_expects() {
        // NBD_ATTR_SOCKETS{ NBD_SOCK_ITEM{ NBD_SOCK_FD=5 }, NBD_SOCK_ITEM{ NBD_SOCK_FD=6 } }
        let bytes = emit(vec![NbdAttr::Sockets(vec![5, 6])]);
        #[rustfmt::skip]
        let expected = [
            28, 0, 7, 0x80,            // len 4+2*12, SOCKETS | NESTED
            12, 0, 1, 0x80,            // len 4+8, SOCK_ITEM | NESTED
            8, 0, 1, 0, 5, 0, 0, 0,    // SOCK_FD = 5
            12, 0, 1, 0x80,
            8, 0, 1, 0, 6, 0, 0, 0,
        ];
        assert_eq!(bytes, expected);
    }

    #[test]
    fn scalars_are_native_endian_u32_and_u64() {
        let bytes = emit(vec![
            NbdAttr::Index(3),
            NbdAttr::SizeBytes(1 << 30),
            NbdAttr::BackendIdentifier("ox".into()),
        ]);
        #[rustfmt::skip]
        let expected = [
            8, 0, 1, 0, 3, 0, 0, 0,
            12, 0, 2, 0, 0, 0, 0, 0x40, 0, 0, 0, 0,
            7, 0, 10, 0, b'o', b'x', 0, 0,  // "ox\0" padded to 4
        ];
        assert_eq!(bytes, expected);
    }

    #[test]
    fn parses_a_status_reply() {
        // DEVICE_LIST{ ITEM{INDEX=0}, ITEM{INDEX=2, CONNECTED=1} }
        #[rustfmt::skip]
        let reply = [
            36, 0, 9, 0x80,
            12, 0, 1, 0x80, 8, 0, 1, 0, 0, 0, 0, 0,
            20, 0, 1, 0x80, 8, 0, 1, 0, 2, 0, 0, 0, 5, 0, 2, 0, 1, 0, 0, 0,
        ];
        let header = GenlHeader {
            cmd: NbdCmd::Status as u8,
            version: 1,
        };
        let msg = NbdMessage::parse_with_param(&reply, header).unwrap();
        assert_eq!(
            msg.attrs,
            vec![NbdAttr::DeviceList(vec![
                DeviceStatus {
                    index: 0,
                    connected: false
                },
                DeviceStatus {
                    index: 2,
                    connected: true
                },
            ])]
        );
    }

    #[test]
    fn garbage_replies_are_errors_not_panics() {
        let header = GenlHeader {
            cmd: NbdCmd::Connect as u8,
            version: 1,
        };
        for junk in [&[1u8, 0, 1][..], &[200, 0, 1, 0, 1, 2], &[8, 0, 1, 0, 1]] {
            assert!(NbdMessage::parse_with_param(junk, header).is_err());
        }
        let bad_cmd = GenlHeader {
            cmd: 99,
            version: 1,
        };
        assert!(NbdMessage::parse_with_param(&[], bad_cmd).is_err());
    }
}
