//! The PROXY protocol (HAProxy, versions 1 and 2): a load balancer tells us
//! the real client address before the SMTP dialogue starts.
//!
//! The header is read exactly — never a byte past it — because an SMTP
//! client says nothing until our greeting: reading ahead would wait for
//! bytes that never come. Version 1 is read a byte at a time up to its CRLF
//! (at most 107 octets); version 2 announces its length.

use std::net::SocketAddr;

use ppp::HeaderResult;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Why a PROXY header was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The connection closed or failed before a whole header arrived.
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes are not a PROXY header.
    #[error("malformed PROXY header: {0}")]
    Malformed(String),
}

/// Longest version 1 header (the spec's bound, CRLF included).
const V1_MAX: usize = 107;
/// The version 2 signature.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// Reads one PROXY header. Returns the client address it carries, or
/// `None` for `LOCAL`/`UNKNOWN` headers (a proxy's own health check: the
/// socket's peer is the client).
pub async fn read_header<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<Option<SocketAddr>, ProxyError> {
    // Six octets are safe to wait for: the shortest header of either
    // version is longer.
    let mut buf = vec![0u8; 6];
    r.read_exact(&mut buf).await?;
    if buf.starts_with(b"PROXY ") {
        while !buf.ends_with(b"\r\n") {
            if buf.len() >= V1_MAX {
                return Err(ProxyError::Malformed(
                    "version 1 header longer than 107 octets".into(),
                ));
            }
            buf.push(r.read_u8().await?);
        }
    } else if V2_SIGNATURE.starts_with(&buf) {
        buf.resize(16, 0);
        r.read_exact(&mut buf[6..]).await?;
        if &buf[..12] != V2_SIGNATURE {
            return Err(ProxyError::Malformed("bad version 2 signature".into()));
        }
        let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
        buf.resize(16 + len, 0);
        r.read_exact(&mut buf[16..]).await?;
    } else {
        return Err(ProxyError::Malformed("no PROXY signature".into()));
    }
    source(&buf)
}

/// The client address in a complete header.
fn source(header: &[u8]) -> Result<Option<SocketAddr>, ProxyError> {
    match HeaderResult::parse(header) {
        HeaderResult::V1(Ok(h)) => Ok(match h.addresses {
            ppp::v1::Addresses::Tcp4(a) => {
                Some(SocketAddr::new(a.source_address.into(), a.source_port))
            }
            ppp::v1::Addresses::Tcp6(a) => {
                Some(SocketAddr::new(a.source_address.into(), a.source_port))
            }
            ppp::v1::Addresses::Unknown => None,
        }),
        HeaderResult::V2(Ok(h)) => Ok(match (h.command, h.addresses) {
            (ppp::v2::Command::Local, _) => None,
            (_, ppp::v2::Addresses::IPv4(a)) => {
                Some(SocketAddr::new(a.source_address.into(), a.source_port))
            }
            (_, ppp::v2::Addresses::IPv6(a)) => {
                Some(SocketAddr::new(a.source_address.into(), a.source_port))
            }
            _ => None,
        }),
        HeaderResult::V1(Err(e)) => Err(ProxyError::Malformed(format!("{e:?}"))),
        HeaderResult::V2(Err(e)) => Err(ProxyError::Malformed(format!("{e:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(bytes: &[u8]) -> (Result<Option<SocketAddr>, ProxyError>, Vec<u8>) {
        let mut r = bytes;
        let result = read_header(&mut r).await;
        (result, r.to_vec())
    }

    fn v2(command: u8, from: SocketAddr, to: SocketAddr) -> Vec<u8> {
        ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two as u8 | command,
            ppp::v2::Protocol::Stream,
            (from, to),
        )
        .build()
        .unwrap()
    }

    #[tokio::test]
    async fn headers_and_what_follows_them() {
        let from: SocketAddr = "203.0.113.7:51000".parse().unwrap();
        let to: SocketAddr = "10.0.0.1:25".parse().unwrap();
        let from6: SocketAddr = "[2001:db8::7]:51000".parse().unwrap();
        let to6: SocketAddr = "[2001:db8::1]:25".parse().unwrap();
        let cases: Vec<(Vec<u8>, Option<SocketAddr>)> = vec![
            (
                b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 25\r\n".to_vec(),
                Some(from),
            ),
            (
                b"PROXY TCP6 2001:db8::7 2001:db8::1 51000 25\r\n".to_vec(),
                Some(from6),
            ),
            (b"PROXY UNKNOWN\r\n".to_vec(), None),
            (v2(ppp::v2::Command::Proxy as u8, from, to), Some(from)),
            (v2(ppp::v2::Command::Proxy as u8, from6, to6), Some(from6)),
            (v2(ppp::v2::Command::Local as u8, from, to), None),
        ];
        for (header, want) in cases {
            let mut input = header.clone();
            input.extend_from_slice(b"EHLO x\r\n");
            let (got, rest) = read(&input).await;
            assert_eq!(got.unwrap(), want, "{header:?}");
            // Not a byte past the header was consumed.
            assert_eq!(rest, b"EHLO x\r\n", "{header:?}");
        }
    }

    #[tokio::test]
    async fn refusals() {
        for bad in [
            &b"EHLO client.example\r\n"[..],
            b"PROXY TCP4 not-an-ip 10.0.0.1 1 2\r\n",
            b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 25 and a very long tail that never ends ........................................................",
            b"\r\n\r\n\0\r\nQUIX\n\x21\x11\x00\x0c",
            b"PROXY TCP4 203.0.113.7",
        ] {
            let (got, _) = read(bad).await;
            assert!(got.is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
