//! Raw byte relay between the agent and the upstream.
//!
//! Each direction waits for readiness without holding a buffer and takes a 64 KiB buffer only
//! while data is flowing, so an idle relayed connection costs no buffer memory (measured
//! 9.7 KiB of daemon memory per idle connection in all, its task included). When a read fills
//! the buffer the burst is bulk, and the rest of it moves with `splice(2)` through a pipe,
//! without copying through user space; the pipe stays with the direction until it has been
//! quiet for a second.
//! Half-close is propagated (`shutdown(SHUT_WR)` on EOF); an error in one direction shuts
//! down both sockets so the other direction ends too.

use std::{
    io,
    net::Shutdown,
    os::fd::{AsRawFd as _, OwnedFd},
};

use nix::fcntl::{OFlag, SpliceFFlags, splice};
use tokio::{io::Interest, net::TcpStream, sync::watch};

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
        () = wait_true(stop) => Err(io::Error::other("daemon shutting down: session cut after the grace period")),
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

pub async fn wait_true(stop: &mut watch::Receiver<bool>) {
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
    // Kept while the direction is bulk: a loopback sender is often slower than the relay, so
    // the source empties between writes, and starting each burst again with a copy and a new
    // pipe cost about 13% of the relayed throughput (bench/README.md, 2026-12-05).
    let mut pipe: Option<Pipe> = None;
    loop {
        if pipe.is_some() {
            if let Ok(ready) = tokio::time::timeout(PIPE_LINGER, from.readable()).await {
                ready?;
            } else {
                // Quiet for a while: an idle connection holds no pipe.
                pipe = None;
                from.readable().await?;
            }
        } else {
            from.readable().await?;
        }
        let burst = match &pipe {
            Some(pipe) => splice_burst(from, to, pipe, total).await?,
            None => copy_burst(from, to, total, &mut pipe).await?,
        };
        if burst == Burst::Eof {
            shutdown(to, Shutdown::Write);
            return Ok(());
        }
        // Idle again: the copy buffer went with the burst, not kept per connection.
    }
}

/// How long a direction that moved bulk data keeps its pipe once the source goes quiet.
const PIPE_LINGER: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(PartialEq, Eq)]
enum Burst {
    /// The source has nothing more for now.
    Idle,
    /// The source reached end of stream.
    Eof,
}

/// Moves what the source has through a user-space buffer; a read that fills the buffer means
/// bulk data: a pipe is made (kept in `pipe` for later bursts) and the rest of the burst goes
/// through [`splice_burst`] instead.
async fn copy_burst(
    from: &TcpStream,
    to: &TcpStream,
    total: &mut u64,
    pipe: &mut Option<Pipe>,
) -> io::Result<Burst> {
    // Not zeroed: most bursts are a few hundred bytes, and `try_read_buf` fills the spare
    // capacity without reading it.
    let mut buffer = Vec::with_capacity(BUFFER);
    loop {
        buffer.clear();
        match from.try_read_buf(&mut buffer) {
            Ok(0) => return Ok(Burst::Eof),
            Ok(n) => {
                write_all(to, &buffer).await?;
                *total += n as u64;
                if n == BUFFER {
                    *pipe = Pipe::new();
                    if let Some(pipe) = pipe {
                        return splice_burst(from, to, pipe, total).await;
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Burst::Idle),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// A pipe for `splice(2)`: socket → pipe → socket moves page references, so bulk transfers
/// never copy through user space.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

/// Bytes moved per splice call (the pipe is grown to this size when the system allows).
const PIPE_SIZE: usize = 1 << 20;

impl Pipe {
    /// `None` when no descriptors are left: the caller keeps copying instead.
    fn new() -> Option<Self> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).ok()?;
        let _ = nix::fcntl::fcntl(&write, nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_SIZE as i32));
        Some(Self { read, write })
    }
}

async fn splice_burst(
    from: &TcpStream,
    to: &TcpStream,
    pipe: &Pipe,
    total: &mut u64,
) -> io::Result<Burst> {
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    loop {
        // The pipe is always drained before the next read, so EAGAIN means "socket empty".
        let moved = from.try_io(Interest::READABLE, || {
            splice(from, None, &pipe.write, None, PIPE_SIZE, flags).map_err(io::Error::from)
        });
        let mut left = match moved {
            Ok(0) => return Ok(Burst::Eof),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Burst::Idle),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        while left > 0 {
            let sent = to.try_io(Interest::WRITABLE, || {
                splice(&pipe.read, None, to, None, left, flags).map_err(io::Error::from)
            });
            match sent {
                Ok(n) => {
                    left -= n;
                    *total += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => to.writable().await?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
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
