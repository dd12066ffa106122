//! Raw byte relay between the agent and the upstream.
//!
//! Each direction waits for readiness without holding a buffer and borrows a 64 KiB buffer
//! only while data is flowing, so an idle relayed connection costs no buffer memory (the goal
//! is ≤ 16 KiB per idle connection) while bulk transfers still move large chunks per syscall.
//! Half-close is propagated (`shutdown(SHUT_WR)` on EOF); an error in one direction shuts
//! down both sockets so the other direction ends too.

use std::{io, net::Shutdown, os::fd::AsRawFd as _};

use tokio::{net::TcpStream, sync::watch};

const BUFFER: usize = 64 * 1024;

/// What a relay moved and how it ended.
#[derive(Debug, Default)]
pub struct Transfer {
    pub up: u64,
    pub down: u64,
    pub error: Option<String>,
}

/// Relays until both directions reached EOF, one failed, or `stop` turned true.
pub async fn relay(
    client: &TcpStream,
    upstream: &TcpStream,
    stop: &mut watch::Receiver<bool>,
) -> Transfer {
    let mut up = 0u64;
    let mut down = 0u64;
    let both = async {
        let (a, b) = tokio::join!(
            pump_or_abort(client, upstream, &mut up),
            pump_or_abort(upstream, client, &mut down)
        );
        a.and(b)
    };
    let result = tokio::select! {
        r = both => r,
        _ = wait_true(stop) => Err(io::Error::other("daemon shutting down: session cut after the grace period")),
    };
    // A reset or broken pipe is how many clients end a connection (closing with unread
    // data): the session ended, it did not fail.
    let error = result.err().filter(|e| {
        !matches!(
            e.kind(),
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
        )
    });
    Transfer {
        up,
        down,
        error: error.map(|e| e.to_string()),
    }
}

async fn wait_true(stop: &mut watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

async fn pump_or_abort(from: &TcpStream, to: &TcpStream, total: &mut u64) -> io::Result<()> {
    let result = pump(from, to, total).await;
    if result.is_err() {
        shutdown(from, Shutdown::Both);
        shutdown(to, Shutdown::Both);
    }
    result
}

async fn pump(from: &TcpStream, to: &TcpStream, total: &mut u64) -> io::Result<()> {
    loop {
        from.readable().await?;
        let mut buffer = vec![0u8; BUFFER];
        loop {
            match from.try_read(&mut buffer) {
                Ok(0) => {
                    shutdown(to, Shutdown::Write);
                    return Ok(());
                }
                Ok(n) => {
                    write_all(to, &buffer[..n]).await?;
                    *total += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        // Idle again: the buffer is dropped here, not kept per connection.
    }
}

async fn write_all(to: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        to.writable().await?;
        match to.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn shutdown(stream: &TcpStream, how: Shutdown) {
    let how = match how {
        Shutdown::Read => nix::sys::socket::Shutdown::Read,
        Shutdown::Write => nix::sys::socket::Shutdown::Write,
        Shutdown::Both => nix::sys::socket::Shutdown::Both,
    };
    // ENOTCONN after the peer vanished is expected and harmless.
    let _ = nix::sys::socket::shutdown(stream.as_raw_fd(), how);
}
