//! The one HTTP client of the suites, for the health and metrics endpoints they probe (the proxy's, the
//! example service's): a single request on a fresh connection, read until the server closes it.

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpStream, ToSocketAddrs};

/// `GET path` at `address`: the status code (0 when the answer is not HTTP) and the body.
pub async fn get(address: impl ToSocketAddrs, path: &str) -> std::io::Result<(u16, String)> {
    request(address, "GET", path).await
}

/// `METHOD path` at `address` without a body: the status code (0 when the answer is not HTTP) and the body.
pub async fn request(
    address: impl ToSocketAddrs,
    method: &str,
    path: &str,
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(address).await?;
    let length = if method == "GET" {
        ""
    } else {
        "Content-Length: 0\r\n"
    };
    stream
        .write_all(
            format!(
                "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{length}Connection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map_or_else(String::new, |(_, body)| body.to_owned());
    Ok((status, body))
}
