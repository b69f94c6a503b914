//! The PROXY protocol (v1 text and v2 binary, as HAProxy specifies it), so
//! that behind nginx (`proxy_protocol on`) a node knows each client's real
//! address for per-address limits and logs.
//!
//! A header is accepted only from configured trusted addresses (the load
//! balancers), and from them it is required: anyone else could claim any
//! address. The header is peeked first and then consumed exactly, so not one
//! byte of the client's first frame is lost.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Why a proxied connection was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Not a PROXY header, or a malformed one.
    #[error("invalid PROXY protocol header")]
    Invalid,
    /// The header did not arrive in time.
    #[error("no PROXY protocol header in time")]
    Timeout,
    /// The socket failed.
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
}

const V2_SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 header, CRLF included.
const V1_MAX: usize = 107;
/// Room for any v2 header we accept (TCP over IPv6 plus some TLVs).
const PEEK: usize = 536;

/// What a complete header says: its length and the client's address
/// (`None` for LOCAL / UNKNOWN: the proxy's own connection, such as a
/// health check).
#[derive(Debug, PartialEq, Eq)]
pub struct Header {
    /// Bytes the header takes.
    pub len: usize,
    /// The client's address.
    pub source: Option<SocketAddr>,
}

/// Parses a header at the start of `buf`: `Ok(None)` if more bytes are
/// needed.
pub fn parse(buf: &[u8]) -> Result<Option<Header>, ProxyError> {
    if buf.is_empty() {
        return Ok(None);
    }
    if buf[0] == b'\r' {
        return parse_v2(buf);
    }
    if buf[0] == b'P' {
        return parse_v1(buf);
    }
    Err(ProxyError::Invalid)
}

fn parse_v1(buf: &[u8]) -> Result<Option<Header>, ProxyError> {
    let prefix = b"PROXY ";
    let n = buf.len().min(prefix.len());
    if buf[..n] != prefix[..n] {
        return Err(ProxyError::Invalid);
    }
    let Some(end) = buf.iter().take(V1_MAX).position(|&b| b == b'\n') else {
        return if buf.len() >= V1_MAX {
            Err(ProxyError::Invalid)
        } else {
            Ok(None)
        };
    };
    if end == 0 || buf[end - 1] != b'\r' {
        return Err(ProxyError::Invalid);
    }
    let line = std::str::from_utf8(&buf[..end - 1]).map_err(|_| ProxyError::Invalid)?;
    let parts: Vec<&str> = line.split(' ').collect();
    let source = match parts.as_slice() {
        ["PROXY", "UNKNOWN", ..] => None,
        ["PROXY", fam @ ("TCP4" | "TCP6"), src, _dst, sport, _dport] => {
            let ip: IpAddr = src.parse().map_err(|_| ProxyError::Invalid)?;
            if (*fam == "TCP4") != ip.is_ipv4() {
                return Err(ProxyError::Invalid);
            }
            let port: u16 = sport.parse().map_err(|_| ProxyError::Invalid)?;
            Some(SocketAddr::new(ip, port))
        }
        _ => return Err(ProxyError::Invalid),
    };
    Ok(Some(Header {
        len: end + 1,
        source,
    }))
}

fn parse_v2(buf: &[u8]) -> Result<Option<Header>, ProxyError> {
    let n = buf.len().min(V2_SIG.len());
    if buf[..n] != V2_SIG[..n] {
        return Err(ProxyError::Invalid);
    }
    if buf.len() < 16 {
        return Ok(None);
    }
    let (ver_cmd, fam) = (buf[12], buf[13]);
    let len = 16 + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if ver_cmd >> 4 != 2 || len > PEEK {
        return Err(ProxyError::Invalid);
    }
    if buf.len() < len {
        return Ok(None);
    }
    let a = &buf[16..len];
    let source = match (ver_cmd & 0x0f, fam) {
        (0, _) => None, // LOCAL
        (1, 0x11) if a.len() >= 12 => {
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            Some(SocketAddr::new(ip.into(), u16::from_be_bytes([a[8], a[9]])))
        }
        (1, 0x21) if a.len() >= 36 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(&a[..16]);
            let port = u16::from_be_bytes([a[32], a[33]]);
            Some(SocketAddr::new(Ipv6Addr::from(o).into(), port))
        }
        (1, _) => None, // UNSPEC or a family without an IP address
        _ => return Err(ProxyError::Invalid),
    };
    Ok(Some(Header { len, source }))
}

/// Reads the PROXY header off `sock` (leaving the rest unread) and returns
/// the client's address, or `peer` itself for a LOCAL header.
pub async fn accept(
    sock: &mut TcpStream,
    peer: SocketAddr,
    within: Duration,
) -> Result<SocketAddr, ProxyError> {
    let read = async {
        let mut buf = vec![0u8; PEEK];
        loop {
            let n = sock.peek(&mut buf).await?;
            if n == 0 {
                return Err(ProxyError::Invalid);
            }
            if let Some(h) = parse(&buf[..n])? {
                let mut skip = vec![0u8; h.len];
                sock.read_exact(&mut skip).await?;
                return Ok(h.source.unwrap_or(peer));
            }
            // Part of the header: wait a moment for the rest.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(within, read)
        .await
        .map_err(|_| ProxyError::Timeout)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1() {
        let h = b"PROXY TCP4 192.0.2.7 127.0.0.1 51234 6000\r\n{\"msgid\":18}\n";
        let got = parse(h).unwrap().unwrap();
        assert_eq!(got.len, 43);
        assert_eq!(got.source, Some("192.0.2.7:51234".parse().unwrap()));
        let h6 = b"PROXY TCP6 2001:db8::1 ::1 40000 6000\r\n";
        assert_eq!(
            parse(h6).unwrap().unwrap().source,
            Some("[2001:db8::1]:40000".parse().unwrap())
        );
        assert_eq!(parse(b"PROXY UNKNOWN\r\n").unwrap().unwrap().source, None);
        assert!(parse(b"PROXY TCP4 192.0.2.7 127.0.0.1 5")
            .unwrap()
            .is_none());
        assert!(parse(b"PRO").unwrap().is_none());
        for bad in [
            &b"{\"msgid\":1}\n"[..],
            b"PROXY TCP4 nonsense 127.0.0.1 1 2\r\n",
            b"PROXY TCP4 ::1 ::1 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 99999 2\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2\n",
            &[b'P'; 200][..],
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn v2() {
        let mut h = V2_SIG.to_vec();
        h.extend([
            0x21, 0x11, 0, 12, 192, 0, 2, 9, 127, 0, 0, 1, 0x1f, 0x90, 0x17, 0x70,
        ]);
        h.extend(b"rest");
        let got = parse(&h).unwrap().unwrap();
        assert_eq!(got.len, 28);
        assert_eq!(got.source, Some("192.0.2.9:8080".parse().unwrap()));
        assert!(parse(&h[..20]).unwrap().is_none());
        let mut local = V2_SIG.to_vec();
        local.extend([0x20, 0x00, 0, 0]);
        assert_eq!(parse(&local).unwrap().unwrap().source, None);
        let mut bad = V2_SIG.to_vec();
        bad.extend([0x11, 0x11, 0, 0]);
        assert!(parse(&bad).is_err());
    }
}
