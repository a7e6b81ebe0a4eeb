//! The SFTP version 3 wire format (draft-ietf-secsh-filexfer-02, with
//! OpenSSH's extensions): packets built into byte vectors and replies
//! decoded from them, with every length checked against what is left before
//! anything is allocated. Code over bytes only: no I/O, no threads (that is
//! [`super::client`]).

use std::io;

pub const INIT: u8 = 1;
pub const VERSION: u8 = 2;
pub const OPEN: u8 = 3;
pub const CLOSE: u8 = 4;
pub const READ: u8 = 5;
pub const WRITE: u8 = 6;
pub const LSTAT: u8 = 7;
pub const FSTAT: u8 = 8;
pub const SETSTAT: u8 = 9;
pub const FSETSTAT: u8 = 10;
pub const OPENDIR: u8 = 11;
pub const READDIR: u8 = 12;
pub const REMOVE: u8 = 13;
pub const MKDIR: u8 = 14;
pub const RMDIR: u8 = 15;
pub const REALPATH: u8 = 16;
pub const STAT: u8 = 17;
pub const RENAME: u8 = 18;
pub const READLINK: u8 = 19;
pub const SYMLINK: u8 = 20;
pub const STATUS: u8 = 101;
pub const HANDLE: u8 = 102;
pub const DATA: u8 = 103;
pub const NAME: u8 = 104;
pub const ATTRS: u8 = 105;
pub const EXTENDED: u8 = 200;
pub const EXTENDED_REPLY: u8 = 201;

pub const FX_OK: u32 = 0;
pub const FX_EOF: u32 = 1;
pub const FX_NO_SUCH_FILE: u32 = 2;
pub const FX_PERMISSION_DENIED: u32 = 3;
pub const FX_OP_UNSUPPORTED: u32 = 8;

pub const OPEN_READ: u32 = 0x01;
pub const OPEN_WRITE: u32 = 0x02;
pub const OPEN_CREAT: u32 = 0x08;
pub const OPEN_TRUNC: u32 = 0x10;
pub const OPEN_EXCL: u32 = 0x20;

const ATTR_SIZE: u32 = 0x1;
const ATTR_UIDGID: u32 = 0x2;
const ATTR_PERMISSIONS: u32 = 0x4;
const ATTR_ACMODTIME: u32 = 0x8;
const ATTR_EXTENDED: u32 = 0x8000_0000;

/// The largest packet accepted from a server (OpenSSH sends at most 256 KiB
/// plus headers; its own limit is 256 KiB + 1 KiB).
pub const MAX_PACKET: usize = 1 << 20;

/// File attributes; what is absent was not sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Attrs {
    pub size: Option<u64>,
    pub uid_gid: Option<(u32, u32)>,
    /// Type and permission bits (`st_mode`).
    pub perm: Option<u32>,
    /// Access and modification time, seconds.
    pub times: Option<(u32, u32)>,
}

impl Attrs {
    pub fn is_dir(&self) -> bool {
        self.perm.is_some_and(|p| p & 0o170000 == 0o040000)
    }
    pub fn is_file(&self) -> bool {
        self.perm.is_some_and(|p| p & 0o170000 == 0o100000)
    }
    pub fn is_symlink(&self) -> bool {
        self.perm.is_some_and(|p| p & 0o170000 == 0o120000)
    }
    pub fn mtime(&self) -> i64 {
        self.times.map(|t| t.1 as i64).unwrap_or(0)
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut flags = 0;
        if self.size.is_some() {
            flags |= ATTR_SIZE;
        }
        if self.uid_gid.is_some() {
            flags |= ATTR_UIDGID;
        }
        if self.perm.is_some() {
            flags |= ATTR_PERMISSIONS;
        }
        if self.times.is_some() {
            flags |= ATTR_ACMODTIME;
        }
        put_u32(out, flags);
        if let Some(s) = self.size {
            put_u64(out, s);
        }
        if let Some((u, g)) = self.uid_gid {
            put_u32(out, u);
            put_u32(out, g);
        }
        if let Some(p) = self.perm {
            put_u32(out, p);
        }
        if let Some((a, m)) = self.times {
            put_u32(out, a);
            put_u32(out, m);
        }
    }
}

pub fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}
pub fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}
pub fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    put_u32(out, s.len() as u32);
    out.extend_from_slice(s);
}

/// Starts a packet of `kind`: the length is filled in by [`finish`].
pub fn start(kind: u8) -> Vec<u8> {
    let mut p = vec![0, 0, 0, 0, kind];
    p.reserve(64);
    p
}

/// [`start`], in a vector used before (its old bytes are dropped, its
/// allocation kept).
pub fn start_in(mut p: Vec<u8>, kind: u8) -> Vec<u8> {
    p.clear();
    p.extend_from_slice(&[0, 0, 0, 0, kind]);
    p
}

/// Fills in a packet's length.
pub fn finish(mut p: Vec<u8>) -> Vec<u8> {
    let len = (p.len() - 4) as u32;
    p[..4].copy_from_slice(&len.to_be_bytes());
    p
}

fn bad(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("the SFTP server sent a malformed {what}"),
    )
}

/// Reads fields from a packet body, front to back.
pub struct Cursor<'a>(pub &'a [u8]);

impl<'a> Cursor<'a> {
    pub fn u8(&mut self) -> io::Result<u8> {
        let (&b, rest) = self.0.split_first().ok_or_else(|| bad("packet"))?;
        self.0 = rest;
        Ok(b)
    }
    pub fn u32(&mut self) -> io::Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes(b.try_into().expect("4 bytes")))
    }
    pub fn u64(&mut self) -> io::Result<u64> {
        let b = self.take(8)?;
        Ok(u64::from_be_bytes(b.try_into().expect("8 bytes")))
    }
    pub fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(bad("packet"));
        }
        let (a, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(a)
    }
    pub fn str(&mut self) -> io::Result<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    pub fn attrs(&mut self) -> io::Result<Attrs> {
        let flags = self.u32()?;
        let mut a = Attrs::default();
        if flags & ATTR_SIZE != 0 {
            a.size = Some(self.u64()?);
        }
        if flags & ATTR_UIDGID != 0 {
            a.uid_gid = Some((self.u32()?, self.u32()?));
        }
        if flags & ATTR_PERMISSIONS != 0 {
            a.perm = Some(self.u32()?);
        }
        if flags & ATTR_ACMODTIME != 0 {
            a.times = Some((self.u32()?, self.u32()?));
        }
        if flags & ATTR_EXTENDED != 0 {
            let n = self.u32()?;
            for _ in 0..n {
                self.str()?;
                self.str()?;
            }
        }
        Ok(a)
    }
}

/// A server's answer to one request.
#[derive(Debug)]
pub enum Reply {
    Status { code: u32, message: String },
    Handle(Vec<u8>),
    Data(Vec<u8>),
    Name(Vec<(Vec<u8>, Attrs)>),
    Attrs(Attrs),
    Extended(Vec<u8>),
}

/// Decodes a reply packet's body (after its type and id).
pub fn decode_reply(kind: u8, body: &[u8]) -> io::Result<Reply> {
    let mut c = Cursor(body);
    Ok(match kind {
        STATUS => {
            let code = c.u32()?;
            // (an old server may leave the message out)
            let message = c
                .str()
                .map(|m| String::from_utf8_lossy(m).into_owned())
                .unwrap_or_default();
            Reply::Status { code, message }
        }
        HANDLE => Reply::Handle(c.str()?.to_vec()),
        DATA => Reply::Data(c.str()?.to_vec()),
        NAME => {
            let n = c.u32()? as usize;
            // each name takes at least 12 bytes: no allocation beyond that
            if n > body.len() / 12 {
                return Err(bad("name list"));
            }
            let mut names = Vec::with_capacity(n);
            for _ in 0..n {
                let name = c.str()?.to_vec();
                c.str()?; // the long name, ls -l style
                names.push((name, c.attrs()?));
            }
            Reply::Name(names)
        }
        ATTRS => Reply::Attrs(c.attrs()?),
        EXTENDED_REPLY => Reply::Extended(c.0.to_vec()),
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the SFTP server sent an unknown packet type {other}"),
            ))
        }
    })
}

/// A DATA reply's bytes, from its body after the type (id, length, data),
/// moved to the front of the same vector rather than copied out of it.
pub fn data_in_place(mut body: Vec<u8>) -> io::Result<Vec<u8>> {
    let mut c = Cursor(&body);
    c.u32()?;
    let n = c.u32()? as usize;
    if n != c.0.len() {
        return Err(bad("data reply"));
    }
    body.drain(..8);
    Ok(body)
}

/// The server's VERSION: its version and extensions (name, data).
/// Extensions a server names in its VERSION: name and data.
pub type ExtensionList = Vec<(String, Vec<u8>)>;

pub fn decode_version(body: &[u8]) -> io::Result<(u32, ExtensionList)> {
    let mut c = Cursor(body);
    let version = c.u32()?;
    let mut ext = Vec::new();
    while !c.0.is_empty() {
        let name = String::from_utf8_lossy(c.str()?).into_owned();
        let data = c.str()?.to_vec();
        ext.push((name, data));
    }
    Ok((version, ext))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attrs_round_trip() {
        let a = Attrs {
            size: Some(5),
            uid_gid: Some((1, 2)),
            perm: Some(0o100644),
            times: Some((7, 8)),
        };
        let mut b = Vec::new();
        a.encode(&mut b);
        assert_eq!(Cursor(&b).attrs().unwrap(), a);
        assert!(a.is_file() && !a.is_dir());
    }

    #[test]
    fn data_is_taken_in_place_and_checked() {
        let mut b = Vec::new();
        put_u32(&mut b, 7);
        put_str(&mut b, b"bytes");
        assert_eq!(data_in_place(b.clone()).unwrap(), b"bytes");
        b.pop();
        assert!(data_in_place(b).is_err());
        assert!(data_in_place(vec![0, 0, 0, 1, 0, 0]).is_err());
    }

    #[test]
    fn truncated_and_oversized_replies_are_refused() {
        assert!(decode_reply(HANDLE, &[0, 0, 0, 9, 1]).is_err());
        // a name count no body could hold
        assert!(decode_reply(NAME, &[0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(decode_reply(77, &[]).is_err());
        let mut s = Vec::new();
        put_u32(&mut s, FX_EOF);
        assert!(matches!(
            decode_reply(STATUS, &s).unwrap(),
            Reply::Status { code: FX_EOF, .. }
        ));
    }
}
