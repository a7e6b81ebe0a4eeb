//! How the extra streams of an ssh transfer meet the first one. Each extra
//! stream is its own `ssh host ferry serve --stdio`, so on the remote it starts
//! in a process of its own; that process finds the one running the transfer
//! through an abstract unix socket and hands over its stdin and stdout
//! (`SCM_RIGHTS`). The transfer then reads and writes that ssh channel itself:
//! nothing relays the bytes.
//!
//! # Security
//! - The socket's name is a one-way hash of the join token, so listing sockets
//!   (`/proc/net/unix`) does not reveal the token; a joiner must send all 128
//!   bits of it, and the token travels only inside the first, authenticated ssh
//!   channel.
//! - Both ends check the other's uid (`SO_PEERCRED`): only processes of the
//!   user the ssh sessions run as ever meet.
//! - A joiner that is slow to speak is dropped after [`JOIN_TIMEOUT`].

use super::Stream;
use crate::proto::NO_STREAM_TOKEN;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::sync::mpsc;
use std::time::Duration;

/// How long a joiner may take to say its token and pass its descriptors.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The one byte each side answers with once it is satisfied.
const YES: u8 = 1;

fn address(token: &[u8; 16]) -> io::Result<SocketAddr> {
    let digest = blake3::derive_key("ferry 2026 stream rendezvous name", token);
    let mut name = String::from("ferry-join-");
    for b in &digest[..16] {
        name.push_str(&format!("{b:02x}"));
    }
    SocketAddr::from_abstract_name(name.as_bytes())
}

fn same_user(conn: &UnixStream) -> bool {
    rustix::net::sockopt::socket_peercred(conn)
        .is_ok_and(|peer| peer.uid == rustix::process::geteuid())
}

/// Lets extra streams join this process's transfer: returns the token to give
/// the client and the queue the joined streams arrive on. If the socket cannot
/// be made, the token is [`NO_STREAM_TOKEN`] and the transfer runs on one stream.
pub fn offer() -> ([u8; 16], mpsc::Receiver<Stream>) {
    let (tx, rx) = mpsc::channel();
    let mut token = [0u8; 16];
    if aws_lc_rs::rand::fill(&mut token).is_err() {
        return (NO_STREAM_TOKEN, rx);
    }
    let Ok(listener) = address(&token).and_then(|a| UnixListener::bind_addr(&a)) else {
        return (NO_STREAM_TOKEN, rx);
    };
    let spawned = std::thread::Builder::new()
        .name("ferry-joins".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Some(stream) = conn.ok().and_then(|c| admit(c, &token)) else {
                    continue;
                };
                if tx.send(stream).is_err() {
                    return; // the transfer is over
                }
            }
        });
    match spawned {
        Ok(_) => (token, rx),
        Err(_) => (NO_STREAM_TOKEN, rx),
    }
}

/// Checks one joiner and takes its stdin and stdout as a stream.
fn admit(conn: UnixStream, token: &[u8; 16]) -> Option<Stream> {
    conn.set_read_timeout(Some(JOIN_TIMEOUT)).ok()?;
    conn.set_write_timeout(Some(JOIN_TIMEOUT)).ok()?;
    if !same_user(&conn) {
        return None;
    }
    let mut said = [0u8; 16];
    (&conn).read_exact(&mut said).ok()?;
    // compared without an early exit, like any secret
    if said.iter().zip(token).fold(0, |d, (a, b)| d | (a ^ b)) != 0 {
        return None;
    }
    (&conn).write_all(&[YES]).ok()?;
    let [input, output] = receive_two(&conn)?;
    Some(Stream {
        reader: Box::new(Joined {
            input: File::from(input),
            _joiner: conn,
        }),
        writer: Box::new(File::from(output)),
        in_process: false,
    })
}

fn receive_two(conn: &UnixStream) -> Option<[OwnedFd; 2]> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut byte = [0u8; 1];
    let got = rustix::net::recvmsg(
        conn,
        &mut [IoSliceMut::new(&mut byte)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .ok()?;
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = message {
            fds.extend(rights);
        }
    }
    if got.bytes != 1 || byte[0] != YES {
        return None;
    }
    <[OwnedFd; 2]>::try_from(fds).ok()
}

/// A joined stream's reading half; it holds the joiner's socket, whose closing
/// tells the joining process that the transfer is done with its channel.
struct Joined {
    input: File,
    _joiner: UnixStream,
}

impl Read for Joined {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

/// A transfer found by its token, which has accepted this process as a joiner.
pub struct Joining(UnixStream);

/// Finds the transfer that offered `token` on this host (`None`: no such
/// transfer, or not this user's).
pub fn find(token: &[u8; 16]) -> Option<Joining> {
    if *token == NO_STREAM_TOKEN {
        return None;
    }
    let conn = UnixStream::connect_addr(&address(token).ok()?).ok()?;
    if !same_user(&conn) {
        return None;
    }
    conn.set_read_timeout(Some(JOIN_TIMEOUT)).ok()?;
    conn.set_write_timeout(Some(JOIN_TIMEOUT)).ok()?;
    (&conn).write_all(token).ok()?;
    let mut answer = [0u8; 1];
    (&conn).read_exact(&mut answer).ok()?;
    (answer[0] == YES).then_some(Joining(conn))
}

impl Joining {
    /// Hands `input` and `output` (this process's end of the channel) to the
    /// transfer, then waits until the transfer is done with them.
    pub fn hand_over(self, input: BorrowedFd<'_>, output: BorrowedFd<'_>) -> io::Result<()> {
        let fds = [input, output];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        control.push(SendAncillaryMessage::ScmRights(&fds));
        rustix::net::sendmsg(
            &self.0,
            &[IoSlice::new(&[YES])],
            &mut control,
            SendFlags::empty(),
        )?;
        self.0.set_read_timeout(None)?;
        let mut byte = [0u8; 1];
        loop {
            match (&self.0).read(&mut byte) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipe() -> (File, File) {
        let (r, w) = std::io::pipe().unwrap();
        (File::from(OwnedFd::from(r)), File::from(OwnedFd::from(w)))
    }

    #[test]
    fn a_joiner_hands_over_its_channel() {
        use std::os::fd::AsFd;
        let (token, joined) = offer();
        assert_ne!(token, NO_STREAM_TOKEN);
        // the joiner's "stdin" and "stdout"
        let (in_r, mut in_w) = pipe();
        let (mut out_r, out_w) = pipe();
        let joiner = std::thread::spawn(move || {
            let j = find(&token).expect("the offer is found");
            j.hand_over(in_r.as_fd(), out_w.as_fd()).unwrap();
        });
        let mut stream = joined.recv_timeout(Duration::from_secs(10)).unwrap();
        in_w.write_all(b"to the transfer").unwrap();
        let mut got = [0u8; 15];
        stream.reader.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"to the transfer");
        stream.writer.write_all(b"back").unwrap();
        let mut back = [0u8; 4];
        out_r.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"back");
        drop(stream);
        joiner.join().unwrap(); // the joiner's wait ends with the transfer
    }

    #[test]
    fn another_user_with_the_right_token_is_turned_away() {
        use std::os::unix::process::CommandExt;
        if !rustix::process::geteuid().is_root() {
            return; // needs to run a process as another user
        }
        let (token, joined) = offer();
        let name = address(&token).unwrap();
        let name = name.as_abstract_name().unwrap();
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        // python as `nobody`: connect, say the whole token, print the answer
        let script = format!(
            "import socket\ns = socket.socket(socket.AF_UNIX)\ns.settimeout(10)\n\
             s.connect(b'\\0' + bytes.fromhex('{}'))\ntry:\n\
             \x20   s.sendall(bytes.fromhex('{}'))\n\
             \x20   print(s.recv(1).hex() or 'closed')\n\
             except (ConnectionResetError, BrokenPipeError):\n\
             \x20   print('closed')\n",
            hex(name),
            hex(&token)
        );
        let out = std::process::Command::new("python3")
            .arg("-c")
            .arg(script)
            .uid(65534)
            .gid(65534)
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "closed");
        assert!(joined.try_recv().is_err());
    }

    #[test]
    fn a_wrong_token_finds_nothing() {
        let (token, joined) = offer();
        let mut wrong = token;
        wrong[0] ^= 1;
        assert!(find(&wrong).is_none());
        assert!(find(&NO_STREAM_TOKEN).is_none());
        // a joiner that knows the socket's name but not the token is turned away
        let conn = UnixStream::connect_addr(&address(&token).unwrap()).unwrap();
        (&conn).write_all(&wrong).unwrap();
        let mut answer = [0u8; 1];
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        assert_eq!((&conn).read(&mut answer).unwrap(), 0, "closed, no answer");
        assert!(joined.try_recv().is_err());
    }
}
