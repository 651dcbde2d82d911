//! Fixed-newstyle negotiation: greeting, client flags, then option haggling until `GO`,
//! `EXPORT_NAME` or `ABORT`.
//!
//! Every option except `EXPORT_NAME` gets at least one reply; unknown ones get
//! `ERR_UNSUP` and the stream stays in sync because the option length says how much data to
//! skip. Only a broken magic, an unknown client flag or an unknown `EXPORT_NAME` closes the
//! connection, as the specification requires.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::export::{Export, ExportSet, TransmissionMode};
use super::{Result, ServerError, Shutdown};
use crate::wire::{
    handshake, info, opt, rep, OptionHeader, OptionReply, BASE_ALLOCATION, IHAVEOPT, NBD_MAGIC,
    OPTION_HEADER_LEN,
};

/// How long a client may take to choose an export.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);
/// Option data beyond this is skipped and answered with `ERR_TOO_BIG`.
const MAX_OPTION_DATA: u32 = 64 << 10;
/// Longest string (name, query) the specification allows.
const MAX_STRING: usize = 4096;
/// The context id given to `base:allocation`.
const ALLOCATION_ID: u32 = 1;

/// The outcome of a successful negotiation.
#[derive(Debug, Clone)]
pub struct Negotiated {
    /// The chosen export.
    pub export: Arc<Export>,
    /// Reply format and metadata contexts.
    pub mode: TransmissionMode,
}

#[derive(Default)]
struct State {
    no_zeroes: bool,
    structured: bool,
    extended: bool,
    /// `SET_META_CONTEXT`: the export it named and whether `base:allocation` was selected.
    meta: Option<(String, bool)>,
}

/// Runs negotiation on `stream`. `Ok(None)` means the client ended it with `ABORT` (or the
/// server is shutting down and said so).
pub async fn negotiate<S>(
    stream: &mut S,
    exports: &ExportSet,
    shutdown: &Shutdown,
) -> Result<Option<Negotiated>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut greeting = Vec::with_capacity(18);
    greeting.extend_from_slice(&NBD_MAGIC.to_be_bytes());
    greeting.extend_from_slice(&IHAVEOPT.to_be_bytes());
    greeting.extend_from_slice(&(handshake::FIXED_NEWSTYLE | handshake::NO_ZEROES).to_be_bytes());
    send(stream, &greeting).await?;
    let client = stream
        .read_u32()
        .await
        .map_err(|e| ServerError::Io("reading client flags", e))?;
    let known = handshake::C_FIXED_NEWSTYLE | handshake::C_NO_ZEROES;
    if client & !known != 0 {
        return Err(ServerError::Protocol(format!(
            "unknown client flags {client:#x}"
        )));
    }
    let mut st = State {
        no_zeroes: client & handshake::C_NO_ZEROES != 0,
        ..State::default()
    };
    loop {
        let mut raw = [0u8; OPTION_HEADER_LEN];
        stream
            .read_exact(&mut raw)
            .await
            .map_err(|e| ServerError::Io("reading an option", e))?;
        let hdr = OptionHeader::parse(&raw)?;
        if hdr.length > MAX_OPTION_DATA {
            if hdr.option == opt::EXPORT_NAME {
                return Err(ServerError::Protocol("export name too long".into()));
            }
            skip(stream, u64::from(hdr.length)).await?;
            reply(
                stream,
                hdr.option,
                rep::ERR_TOO_BIG,
                b"option data too large",
            )
            .await?;
            continue;
        }
        let mut data = vec![0u8; usize::try_from(hdr.length).unwrap_or(0)];
        stream
            .read_exact(&mut data)
            .await
            .map_err(|e| ServerError::Io("reading option data", e))?;
        if shutdown.is_fired() && hdr.option != opt::ABORT {
            reply(
                stream,
                hdr.option,
                rep::ERR_SHUTDOWN,
                b"the server is shutting down",
            )
            .await?;
            return Ok(None);
        }
        if let Some(outcome) = option(stream, exports, &mut st, hdr.option, &data).await? {
            return Ok(outcome);
        }
    }
}

/// Handles one option; `Some` ends negotiation.
async fn option<S>(
    stream: &mut S,
    exports: &ExportSet,
    st: &mut State,
    o: u32,
    data: &[u8],
) -> Result<Option<Option<Negotiated>>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match o {
        opt::EXPORT_NAME => export_name(stream, exports, st, data)
            .await
            .map(|n| Some(Some(n))),
        opt::ABORT => {
            // The client may already have closed; a failed ACK changes nothing.
            let _ = reply(stream, o, rep::ACK, &[]).await;
            Ok(Some(None))
        }
        opt::LIST if !data.is_empty() => invalid(stream, o, "LIST takes no data").await,
        opt::LIST => {
            let mut msg = Vec::new();
            for e in exports.iter() {
                let mut d = Vec::new();
                d.extend_from_slice(&u32::try_from(e.name().len()).unwrap_or(0).to_be_bytes());
                d.extend_from_slice(e.name().as_bytes());
                d.extend_from_slice(e.description_text().unwrap_or("").as_bytes());
                OptionReply::emit(&mut msg, o, rep::SERVER, &d);
            }
            OptionReply::emit(&mut msg, o, rep::ACK, &[]);
            send(stream, &msg).await.map(|()| None)
        }
        opt::STARTTLS => reply(
            stream,
            o,
            rep::ERR_UNSUP,
            b"TLS is not supported by this server",
        )
        .await
        .map(|()| None),
        opt::INFO | opt::GO => info_go(stream, exports, st, o, data).await,
        opt::STRUCTURED_REPLY | opt::EXTENDED_HEADERS => {
            if !data.is_empty() {
                return invalid(stream, o, "option takes no data").await;
            }
            let already = if o == opt::EXTENDED_HEADERS {
                st.extended
            } else {
                st.structured || st.extended
            };
            if already {
                return invalid(stream, o, "already negotiated").await;
            }
            st.structured = true;
            st.extended |= o == opt::EXTENDED_HEADERS;
            reply(stream, o, rep::ACK, &[]).await.map(|()| None)
        }
        opt::LIST_META_CONTEXT | opt::SET_META_CONTEXT => {
            meta_context(stream, exports, st, o, data).await
        }
        _ => reply(stream, o, rep::ERR_UNSUP, b"unsupported option")
            .await
            .map(|()| None),
    }
}

async fn invalid<S: AsyncWrite + Unpin>(
    stream: &mut S,
    o: u32,
    msg: &str,
) -> Result<Option<Option<Negotiated>>> {
    reply(stream, o, rep::ERR_INVALID, msg.as_bytes())
        .await
        .map(|()| None)
}

fn mode(st: &State, exports: &ExportSet, export: &Arc<Export>) -> TransmissionMode {
    // Contexts selected for one export do not carry over to another.
    let ctx = match &st.meta {
        Some((name, true)) if exports.find(name).is_some_and(|e| Arc::ptr_eq(e, export)) => {
            Some(ALLOCATION_ID)
        }
        _ => None,
    };
    match (st.extended, st.structured) {
        (true, _) => TransmissionMode::extended(ctx),
        (false, true) => TransmissionMode::structured(ctx),
        (false, false) => TransmissionMode::simple(),
    }
}

async fn export_name<S: AsyncWrite + Unpin>(
    stream: &mut S,
    exports: &ExportSet,
    st: &State,
    data: &[u8],
) -> Result<Negotiated> {
    let name = String::from_utf8_lossy(data);
    let Some(export) = exports.find(&name).cloned() else {
        return Err(ServerError::Protocol(format!(
            "EXPORT_NAME for unknown export {name:?}"
        )));
    };
    let mode = mode(st, exports, &export);
    let mut msg = Vec::with_capacity(134);
    msg.extend_from_slice(&export.capabilities().size.to_be_bytes());
    msg.extend_from_slice(&export.transmission_flags(&mode).to_be_bytes());
    if !st.no_zeroes {
        msg.extend_from_slice(&[0u8; 124]);
    }
    send(stream, &msg).await?;
    Ok(Negotiated { export, mode })
}

/// Splits `u32 len, bytes` off the front of `data`.
fn take_string<'a>(data: &mut &'a [u8]) -> Option<&'a [u8]> {
    let (len, rest) = data.split_first_chunk::<4>()?;
    let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
    if len > MAX_STRING || len > rest.len() {
        return None;
    }
    let (s, rest) = rest.split_at(len);
    *data = rest;
    Some(s)
}

async fn info_go<S: AsyncWrite + Unpin>(
    stream: &mut S,
    exports: &ExportSet,
    st: &mut State,
    o: u32,
    data: &[u8],
) -> Result<Option<Option<Negotiated>>> {
    let mut d = data;
    let Some(name) = take_string(&mut d) else {
        return invalid(stream, o, "malformed export name").await;
    };
    let Some((count, rest)) = d.split_first_chunk::<2>() else {
        return invalid(stream, o, "missing info count").await;
    };
    let count = usize::from(u16::from_be_bytes(*count));
    if rest.len() != count * 2 {
        return invalid(stream, o, "info request list has the wrong length").await;
    }
    let requests: Vec<u16> = rest
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    let name = String::from_utf8_lossy(name).into_owned();
    let Some(export) = exports.find(&name).cloned() else {
        let msg = format!("no export named {name:?}");
        return reply(stream, o, rep::ERR_UNKNOWN, msg.as_bytes())
            .await
            .map(|()| None);
    };
    let mode = mode(st, exports, &export);
    let mut msg = Vec::new();
    let mut item = Vec::with_capacity(16);
    item.extend_from_slice(&info::EXPORT.to_be_bytes());
    item.extend_from_slice(&export.capabilities().size.to_be_bytes());
    item.extend_from_slice(&export.transmission_flags(&mode).to_be_bytes());
    OptionReply::emit(&mut msg, o, rep::INFO, &item);
    // Block sizes are sent even unrequested: clients that ignore them lose nothing, and the
    // specification asks servers with constraints to advertise them.
    let b = export.block_sizes();
    let mut item = info::BLOCK_SIZE.to_be_bytes().to_vec();
    for v in [b.min, b.preferred, b.max] {
        item.extend_from_slice(&v.to_be_bytes());
    }
    OptionReply::emit(&mut msg, o, rep::INFO, &item);
    if requests.contains(&info::NAME) {
        let mut item = info::NAME.to_be_bytes().to_vec();
        item.extend_from_slice(export.name().as_bytes());
        OptionReply::emit(&mut msg, o, rep::INFO, &item);
    }
    if let (true, Some(text)) = (
        requests.contains(&info::DESCRIPTION),
        export.description_text(),
    ) {
        let mut item = info::DESCRIPTION.to_be_bytes().to_vec();
        item.extend_from_slice(text.as_bytes());
        OptionReply::emit(&mut msg, o, rep::INFO, &item);
    }
    OptionReply::emit(&mut msg, o, rep::ACK, &[]);
    send(stream, &msg).await?;
    if o == opt::GO {
        return Ok(Some(Some(Negotiated { export, mode })));
    }
    Ok(None)
}

async fn meta_context<S: AsyncWrite + Unpin>(
    stream: &mut S,
    exports: &ExportSet,
    st: &mut State,
    o: u32,
    data: &[u8],
) -> Result<Option<Option<Negotiated>>> {
    let set = o == opt::SET_META_CONTEXT;
    if set && !st.structured {
        return invalid(stream, o, "structured replies must be negotiated first").await;
    }
    let mut d = data;
    let Some(name) = take_string(&mut d) else {
        return invalid(stream, o, "malformed export name").await;
    };
    let Some((count, rest)) = d.split_first_chunk::<4>() else {
        return invalid(stream, o, "missing query count").await;
    };
    let count = u32::from_be_bytes(*count);
    let mut rest = rest;
    let mut queries = Vec::new();
    for _ in 0..count {
        let Some(q) = take_string(&mut rest) else {
            return invalid(stream, o, "malformed query").await;
        };
        queries.push(q);
    }
    if !rest.is_empty() {
        return invalid(stream, o, "trailing data after the queries").await;
    }
    let name = String::from_utf8_lossy(name).into_owned();
    if exports.find(&name).is_none() {
        let msg = format!("no export named {name:?}");
        return reply(stream, o, rep::ERR_UNKNOWN, msg.as_bytes())
            .await
            .map(|()| None);
    }
    let wanted = queries
        .iter()
        .any(|q| *q == BASE_ALLOCATION.as_bytes() || (!set && *q == b"base:"))
        || (!set && queries.is_empty());
    let mut msg = Vec::new();
    if wanted {
        let id = if set { ALLOCATION_ID } else { 0 };
        let mut item = id.to_be_bytes().to_vec();
        item.extend_from_slice(BASE_ALLOCATION.as_bytes());
        OptionReply::emit(&mut msg, o, rep::META_CONTEXT, &item);
    }
    OptionReply::emit(&mut msg, o, rep::ACK, &[]);
    if set {
        st.meta = Some((name, wanted));
    }
    send(stream, &msg).await.map(|()| None)
}

async fn reply<S: AsyncWrite + Unpin>(
    stream: &mut S,
    o: u32,
    kind: u32,
    data: &[u8],
) -> Result<()> {
    let mut msg = Vec::with_capacity(OptionReply::LEN + data.len());
    OptionReply::emit(&mut msg, o, kind, data);
    send(stream, &msg).await
}

async fn send<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) -> Result<()> {
    stream
        .write_all(bytes)
        .await
        .map_err(|e| ServerError::Io("sending an option reply", e))?;
    stream
        .flush()
        .await
        .map_err(|e| ServerError::Io("sending an option reply", e))
}

async fn skip<S: AsyncRead + Unpin>(stream: &mut S, mut n: u64) -> Result<()> {
    let mut sink = [0u8; 4096];
    while n > 0 {
        let want = usize::try_from(n).unwrap_or(sink.len()).min(sink.len());
        stream
            .read_exact(&mut sink[..want])
            .await
            .map_err(|e| ServerError::Io("skipping option data", e))?;
        n -= want as u64;
    }
    Ok(())
}
