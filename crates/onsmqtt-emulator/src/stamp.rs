//! Arrival stamps taken by the kernel. Each connection's socket has `SO_TIMESTAMPNS` on and is
//! read with `recvmsg`, so a request is stamped when the kernel received its bytes, not when an
//! emulator thread got round to it. On a loaded host the emulator's own threads stall; stamped
//! in user space, the requests that waited in the socket meanwhile would all carry the moment
//! the thread woke, and the sliding second would count calls together that the client sent
//! tens of milliseconds apart. A real API's limiter runs on machines of its own.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// The kernel's receive time of the last bytes read from one connection.
#[derive(Clone, Default)]
pub(crate) struct LastReceive(Arc<AtomicU64>);

impl LastReceive {
    /// The receive time of the last read, or `None` if the kernel gave it no stamp (the option
    /// could not be set, or the kernel turns stamping on for the first socket that asks a
    /// moment after it asked). Never later than now.
    pub(crate) fn get(&self) -> Option<Received> {
        let unix_ns = self.0.load(Ordering::Relaxed);
        if unix_ns == 0 {
            return None;
        }
        let (now, wall) = (Instant::now(), SystemTime::now());
        let wall_ns = wall.duration_since(UNIX_EPOCH).ok()?.as_nanos() as u64;
        let unix_ns = unix_ns.min(wall_ns);
        let age = std::time::Duration::from_nanos(wall_ns - unix_ns);
        Some(Received {
            at: now.checked_sub(age).unwrap_or(now),
            unix_us: unix_ns / 1000,
        })
    }
}

/// When a request's bytes reached the kernel, on both clocks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Received {
    pub at: Instant,
    pub unix_us: u64,
}

impl Received {
    /// Now, for a request without a kernel stamp.
    pub(crate) fn now() -> Received {
        let unix_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        Received {
            at: Instant::now(),
            unix_us,
        }
    }
}

/// A TCP stream whose reads record the kernel's receive stamp in a [`LastReceive`].
pub(crate) struct StampedStream {
    inner: TcpStream,
    last: LastReceive,
}

impl StampedStream {
    /// Turns receive stamps on for `inner`. If the socket refuses the option, reads still work
    /// and [`LastReceive::get`] stays `None`.
    pub(crate) fn new(inner: TcpStream) -> (StampedStream, LastReceive) {
        if let Err(error) = receive_stamps_on(inner.as_raw_fd()) {
            tracing::debug!(%error, "emulator: no receive stamps");
        }
        let last = LastReceive::default();
        (
            StampedStream {
                inner,
                last: last.clone(),
            },
            last,
        )
    }
}

/// Asks the kernel for receive stamps on `fd` (`SO_TIMESTAMPNS`).
fn receive_stamps_on(fd: RawFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: a valid open socket and a c_int option value of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Asks for receive stamps on the listening socket as soon as it is bound. The kernel turns
/// stamping on for everyone a moment after the first socket asks, so asking only when the first
/// connection comes in would leave that connection's first requests unstamped.
pub(crate) fn stamp_listener(listener: &tokio::net::TcpListener) {
    if let Err(error) = receive_stamps_on(listener.as_raw_fd()) {
        tracing::debug!(%error, "emulator: no receive stamps on the listener");
    }
}

/// One `recvmsg` into `buf`: the bytes read and the receive stamp (unix ns) if one came.
fn recv_stamped(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, Option<u64>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // Room for one control message holding a timespec, 8-byte aligned.
    let mut control = [0u64; 8];
    // SAFETY: an all-zero msghdr is valid; the pointers set below outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(&control) as _;
    // SAFETY: `msg` points at a live buffer of `buf.len()` bytes and a live control buffer.
    let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut stamp = None;
    // SAFETY: the CMSG_* macros walk the control buffer the kernel filled in, within
    // `msg_controllen`; the timespec is read unaligned from the message's data.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS
            {
                let ts: libc::timespec =
                    std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::timespec>());
                stamp = Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok((n as usize, stamp))
}

impl AsyncRead for StampedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let fd = this.inner.as_raw_fd();
        loop {
            ready!(this.inner.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match this
                .inner
                .try_io(Interest::READABLE, || recv_stamped(fd, unfilled))
            {
                Ok((n, stamp)) => {
                    if n > 0 {
                        // No stamp (0) rather than the previous read's.
                        this.last.0.store(stamp.unwrap_or(0), Ordering::Relaxed);
                    }
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for StampedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn timestamps_on(fd: RawFd) -> bool {
        let mut on: libc::c_int = 0;
        let mut len = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: a valid open socket, a c_int buffer and its size.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_TIMESTAMPNS,
                (&mut on as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        rc == 0 && on != 0
    }

    /// Stamping is asked for when the emulator binds, before any connection comes in, and the
    /// connections it accepts carry the option from the start.
    #[tokio::test]
    async fn the_listener_asks_for_stamps_before_the_first_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        assert!(!timestamps_on(listener.as_raw_fd()));
        stamp_listener(&listener);
        assert!(timestamps_on(listener.as_raw_fd()));
        let _client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        assert!(timestamps_on(server.as_raw_fd()), "inherited on accept");
    }

    /// Bytes that wait in the socket while the reader is busy keep the time they arrived.
    #[tokio::test]
    async fn a_late_read_carries_the_time_the_bytes_arrived() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (mut server, last) = StampedStream::new(server);
        assert!(last.get().is_none(), "no stamp before a read");
        let mut buf = [0u8; 64];
        // The kernel turns stamping on a moment after the first socket asks: the first bytes
        // may come unstamped.
        for _ in 0..50 {
            client.write_all(b"warm-up").await.unwrap();
            let n = server.read(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], b"warm-up");
            if last.get().is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }

        let sent = Instant::now();
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        // The reader is "stalled" for 300 ms before it reads.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let n = server.read(&mut buf).await.unwrap();
        let read_at = Instant::now();
        assert_eq!(&buf[..n], b"GET / HTTP/1.1\r\n\r\n");

        let stamped = last.get().expect("the kernel stamped the bytes").at;
        let after_send = stamped.saturating_duration_since(sent);
        assert!(
            after_send < std::time::Duration::from_millis(150),
            "stamped {after_send:?} after the send, read {:?} after it",
            read_at - sent
        );
        assert!(read_at - stamped >= std::time::Duration::from_millis(150));

        // Writes go through untouched.
        server.write_all(b"pong").await.unwrap();
        let mut reply = [0u8; 4];
        client.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply, b"pong");
    }
}
