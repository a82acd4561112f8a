//! One way to open Redis clients: with `TCP_NODELAY`, so that a command larger than one TCP segment (a batch of
//! events) is not held back ~40 ms waiting for the server's delayed ACK.

use redis::IntoConnectionInfo;

/// A Redis client for `url` with `TCP_NODELAY` on its connections.
pub(crate) fn client(url: &str) -> redis::RedisResult<redis::Client> {
    let info = url.into_connection_info()?;
    let tcp = info.tcp_settings().clone().set_nodelay(true);
    redis::Client::open(info.set_tcp_settings(tcp))
}
