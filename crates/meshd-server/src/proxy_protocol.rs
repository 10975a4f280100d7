//! The PROXY protocol (HAProxy's, versions 1 and 2): a TCP load balancer
//! in front of meshd sends the client's address in a header before the
//! connection's first byte. Parsing is the `ppp` crate's; this module reads
//! just enough of the connection for it and hands on whatever followed the
//! header ([`Replay`]).

use bytes::{Buf, Bytes, BytesMut};
use ppp::{v1, v2, HeaderResult, PartialResult};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The longest header accepted: a v1 header is at most 107 bytes; a v2
/// header carries the addresses and optional TLVs (a few hundred bytes
/// from the load balancers that send them).
const MAX_HEADER: usize = 4096;

/// Reads a PROXY protocol header from the start of `stream`. Returns the
/// client's address it names (`None` for a v1 `UNKNOWN` or a v2 `LOCAL`
/// header, a load balancer's own health check: the peer's address stands)
/// and the bytes read past the header.
pub(crate) async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> io::Result<(Option<SocketAddr>, Bytes)> {
    let mut buf = BytesMut::with_capacity(256);
    loop {
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before a complete PROXY protocol header",
            ));
        }
        let parsed = HeaderResult::parse(&buf);
        if parsed.is_incomplete() {
            if buf.len() >= MAX_HEADER {
                return Err(invalid("PROXY protocol header too long".into()));
            }
            continue;
        }
        let (client, len) = match parsed {
            HeaderResult::V1(Ok(header)) => (v1_source(&header.addresses), header.header.len()),
            HeaderResult::V2(Ok(header)) => (v2_source(&header), header.len()),
            HeaderResult::V1(Err(e)) => {
                return Err(invalid(format!("invalid PROXY protocol header: {e}")))
            }
            HeaderResult::V2(Err(e)) => {
                return Err(invalid(format!("invalid PROXY protocol v2 header: {e}")))
            }
        };
        buf.advance(len);
        return Ok((client, buf.freeze()));
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

fn v1_source(addresses: &v1::Addresses) -> Option<SocketAddr> {
    match addresses {
        v1::Addresses::Tcp4(a) => Some((a.source_address, a.source_port).into()),
        v1::Addresses::Tcp6(a) => Some((a.source_address, a.source_port).into()),
        v1::Addresses::Unknown => None,
    }
}

fn v2_source(header: &v2::Header<'_>) -> Option<SocketAddr> {
    if header.command == v2::Command::Local {
        return None;
    }
    match header.addresses {
        v2::Addresses::IPv4(a) => Some((a.source_address, a.source_port).into()),
        v2::Addresses::IPv6(a) => Some((a.source_address, a.source_port).into()),
        v2::Addresses::Unspecified | v2::Addresses::Unix(_) => None,
    }
}

/// A connection whose first bytes were already read: they are read again
/// first, then the connection itself.
pub(crate) struct Replay<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Replay<S> {
    /// `inner`, with `prefix` read before it.
    pub(crate) fn new(prefix: Bytes, inner: S) -> Self {
        Replay { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Replay<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let chunk = self.prefix.split_to(n);
            buf.put_slice(&chunk);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replay<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(input: &[u8]) -> io::Result<(Option<SocketAddr>, Bytes)> {
        let mut reader = input;
        read_header(&mut reader).await
    }

    #[tokio::test]
    async fn v1_gives_the_source_and_keeps_what_follows() {
        let (client, rest) =
            parse(b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\nGET / HTTP/1.1\r\n")
                .await
                .unwrap();
        assert_eq!(client, Some("203.0.113.7:51000".parse().unwrap()));
        assert_eq!(&rest[..], b"GET / HTTP/1.1\r\n");
        let (client, rest) = parse(b"PROXY UNKNOWN\r\nX").await.unwrap();
        assert_eq!((client, &rest[..]), (None, &b"X"[..]));
    }

    #[tokio::test]
    async fn v2_gives_the_source() {
        let header = v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            (
                "[2001:db8::7]:40000".parse::<SocketAddr>().unwrap(),
                "[2001:db8::1]:443".parse::<SocketAddr>().unwrap(),
            ),
        )
        .build()
        .unwrap();
        let mut input = header.clone();
        input.extend_from_slice(b"rest");
        let (client, rest) = parse(&input).await.unwrap();
        assert_eq!(client, Some("[2001:db8::7]:40000".parse().unwrap()));
        assert_eq!(&rest[..], b"rest");
    }

    #[tokio::test]
    async fn no_header_is_an_error() {
        assert!(parse(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.is_err());
        assert!(parse(b"PROXY TCP4 1.2.3").await.is_err()); // closed early
    }

    #[tokio::test]
    async fn replay_reads_the_prefix_first() {
        let mut replay = Replay::new(Bytes::from_static(b"ab"), &b"cd"[..]);
        let mut all = Vec::new();
        replay.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"abcd");
    }
}
