//! The store seam carries a whole transfer: the sender over an in-memory
//! [`Source`], against the real receiver writing to a temporary directory,
//! over in-process pipes. One file goes whole, one is rebuilt from its old
//! version at the destination (spans, recipe, chunks).

use super::*;
use crate::proto::{Entry, Kind, ListStart};
use crate::session::receiver;
use crate::session::wire::Counters;
use crate::store::source::{SourceFile, Stamp};
use std::io;
use std::sync::Arc;

const MTIME: i64 = 1_700_000_000;

/// Files in memory, listed as the contents of one directory.
struct Memory {
    files: Vec<(Vec<u8>, Arc<Vec<u8>>)>,
}

struct MemoryFile {
    data: Arc<Vec<u8>>,
    pos: usize,
}

impl io::Read for MemoryFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let rest = &self.data[self.pos.min(self.data.len())..];
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.pos += n;
        Ok(n)
    }
}

impl SourceFile for MemoryFile {
    fn stamp(&self) -> io::Result<Stamp> {
        Ok(Stamp {
            size: self.data.len() as u64,
            mtime: MTIME,
            mtime_nsec: 0,
        })
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let end = start
            .checked_add(buf.len())
            .filter(|&end| end <= self.data.len())
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(&self.data[start..end]);
        Ok(())
    }

    fn try_clone(&self) -> io::Result<Self> {
        Ok(MemoryFile {
            data: self.data.clone(),
            pos: self.pos,
        })
    }
}

impl Source for Memory {
    type Handle = usize;
    type File = MemoryFile;

    fn list_start(&self, _: &[Vec<u8>], _: &ListOptions) -> ListStart {
        ListStart {
            single_file: false,
            single_dir: false,
        }
    }

    fn list<E>(
        &self,
        _: &[Vec<u8>],
        _: &ListOptions,
        emit: &mut dyn FnMut(Listed<usize>) -> Result<(), E>,
    ) -> Result<bool, E> {
        let entry = |name: &[u8], kind, size| Entry {
            name: name.to_vec(),
            kind,
            mode: 0o644,
            mtime: MTIME,
            mtime_nsec: 0,
            size,
            uid: 0,
            gid: 0,
            target: Vec::new(),
            link_to: None,
            checksum: None,
        };
        emit(Listed::Entry(entry(b".", Kind::Dir, 0), usize::MAX))?;
        for (i, (name, data)) in self.files.iter().enumerate() {
            emit(Listed::Entry(entry(name, Kind::File, data.len() as u64), i))?;
        }
        Ok(false)
    }

    fn open(&self, at: &usize) -> io::Result<MemoryFile> {
        let (_, data) = self.files.get(*at).ok_or(io::ErrorKind::NotFound)?;
        Ok(MemoryFile {
            data: data.clone(),
            pos: 0,
        })
    }

    fn name<'h>(&self, _: &'h usize) -> &'h [u8] {
        b"(in memory)"
    }
}

#[test]
fn an_in_memory_source_sends_one_file_whole_and_one_by_recipe() {
    let dest = tempfile::tempdir().unwrap();
    let big: Vec<u8> = (0..600_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut old = big.clone();
    old[300_000..300_100].fill(0);
    std::fs::write(dest.path().join("big"), &old).unwrap();
    let source = Memory {
        files: vec![
            (b"big".to_vec(), Arc::new(big.clone())),
            (b"small".to_vec(), Arc::new(b"hello".to_vec())),
        ],
    };
    let options = Options {
        recursive: true,
        ..Default::default()
    };
    let (to_receiver, from_sender) = io::pipe().unwrap();
    let (to_sender, from_receiver) = io::pipe().unwrap();
    let receiving = {
        let cfg = receiver::Config {
            dest: dest.path().as_os_str().as_encoded_bytes().to_vec(),
            options: options.clone(),
            events: None,
            requested: None,
            beneath: None,
            joins: None,
        };
        std::thread::spawn(move || {
            receiver::run(
                FrameReader::new(to_receiver, Arc::new(Counters::default())),
                FrameWriter::new(from_receiver, Arc::new(Counters::default())),
                cfg,
                &Cancel::default(),
            )
        })
    };
    let events = |_| {};
    let sent = run_from(
        FrameReader::new(to_sender, Arc::new(Counters::default())),
        FrameWriter::new(from_sender, Arc::new(Counters::default())),
        Config {
            sources: vec![b"memory/".to_vec()],
            options,
            events: Some(&events),
            confine: None,
            joins: None,
        },
        &Cancel::default(),
        || Ok(source),
    );
    let received = receiving.join().unwrap().unwrap();
    let summary = sent.unwrap();
    assert_eq!(std::fs::read(dest.path().join("small")).unwrap(), b"hello");
    assert!(std::fs::read(dest.path().join("big")).unwrap() == big);
    assert_eq!((summary.errors, received.errors), (0, 0));
    assert!(received.reused > 0, "big was rebuilt from its old version");
}

/// Lists `count` files, then waits for `go` before it lists one more: a walk
/// that is slow to go on (a large directory, a busy disk).
struct Stalling {
    count: u32,
    go: std::sync::Mutex<mpsc::Receiver<()>>,
    /// Told when the walk stalls, if set.
    stalled: Option<std::sync::Mutex<mpsc::Sender<()>>>,
}

impl Source for Stalling {
    type Handle = usize;
    type File = MemoryFile;

    fn list_start(&self, _: &[Vec<u8>], _: &ListOptions) -> ListStart {
        ListStart {
            single_file: false,
            single_dir: false,
        }
    }

    fn list<E>(
        &self,
        _: &[Vec<u8>],
        _: &ListOptions,
        emit: &mut dyn FnMut(Listed<usize>) -> Result<(), E>,
    ) -> Result<bool, E> {
        let entry = |name: Vec<u8>, kind| Entry {
            name,
            kind,
            mode: 0o644,
            mtime: MTIME,
            mtime_nsec: 0,
            size: 0,
            uid: 0,
            gid: 0,
            target: Vec::new(),
            link_to: None,
            checksum: None,
        };
        emit(Listed::Entry(entry(b".".to_vec(), Kind::Dir), usize::MAX))?;
        for i in 0..self.count {
            let name = format!("f{i:06}").into_bytes();
            emit(Listed::Entry(entry(name, Kind::File), i as usize))?;
        }
        if let Some(s) = &self.stalled {
            let _ = s.lock().unwrap().send(());
        }
        let _ = self.go.lock().unwrap().recv();
        emit(Listed::Entry(entry(b"last".to_vec(), Kind::File), 0))?;
        Ok(false)
    }

    fn open(&self, _: &usize) -> io::Result<MemoryFile> {
        Err(io::ErrorKind::NotFound.into())
    }

    fn name<'h>(&self, _: &'h usize) -> &'h [u8] {
        b"(stalling)"
    }
}

/// What the walk has found reaches the receiver while the walk goes on, a
/// piece at a time, not only once the writer's buffer fills or the window
/// of unacknowledged entries closes: 1,023 small entries are far from
/// either, and a receiver that waited for them sat idle while the sender
/// scanned (the unchanged re-sync, bench/NOTES.md §48).
#[test]
fn the_list_reaches_the_receiver_while_the_walk_goes_on() {
    let (go, wait) = mpsc::channel();
    let source = Stalling {
        count: LIST_FLUSH - 1,
        go: std::sync::Mutex::new(wait),
        stalled: None,
    };
    let (to_receiver, from_sender) = io::pipe().unwrap();
    let (to_sender, from_receiver) = io::pipe().unwrap();
    // the receiver's end: counts the entries as they arrive
    let (seen, entries) = mpsc::channel();
    let reading = std::thread::spawn(move || {
        let mut r = FrameReader::new(to_receiver, Arc::new(Counters::default()));
        while let Ok(Some(m)) = r.recv() {
            if let Message::Entry(e) = m {
                if seen.send(e.name).is_err() {
                    return;
                }
            }
        }
    });
    let sending = std::thread::spawn(move || {
        let options = Options {
            recursive: true,
            ..Default::default()
        };
        run_from(
            FrameReader::new(to_sender, Arc::new(Counters::default())),
            FrameWriter::new(from_sender, Arc::new(Counters::default())),
            Config {
                sources: vec![b"stalling/".to_vec()],
                options,
                events: None,
                confine: None,
                joins: None,
            },
            &Cancel::default(),
            || Ok(source),
        )
    });
    let wait = std::time::Duration::from_secs(10);
    for i in 0..LIST_FLUSH {
        let name = entries.recv_timeout(wait).unwrap_or_else(|_| {
            panic!("entry {i} of {LIST_FLUSH} did not arrive while the walk was stalled")
        });
        let expected = if i == 0 {
            b".".to_vec()
        } else {
            format!("f{:06}", i - 1).into_bytes()
        };
        assert_eq!(name, expected);
    }
    // the walk goes on to its end; the receiver goes away, and so does the sender
    go.send(()).unwrap();
    assert_eq!(entries.recv_timeout(wait).unwrap(), b"last");
    drop(from_receiver);
    drop(entries);
    let _ = sending.join().unwrap();
    reading.join().unwrap();
}

/// A receiver that fails while the sender walks, and closes its ends, is
/// reported by its own words: the sender looks at what the receiver sent
/// before it flushes the list, and when a write to the receiver fails
/// anyway (the flush every `LIST_FLUSH` entries into the pipe the receiver
/// has closed, before the reader thread got to the receiver's message), it
/// waits for that message rather than report a lost connection.
#[test]
fn a_receiver_that_failed_while_the_list_was_buffered_is_reported_by_its_words() {
    let (go, wait) = mpsc::channel();
    // "." and 2,046 files before the stall: the entry after it is the
    // 2,048th, whose turn it is to flush
    let (stalls, stalled) = mpsc::channel();
    let source = Stalling {
        count: 2 * LIST_FLUSH - 2,
        go: std::sync::Mutex::new(wait),
        stalled: Some(std::sync::Mutex::new(stalls)),
    };
    let (to_receiver, from_sender) = io::pipe().unwrap();
    let (to_sender, from_receiver) = io::pipe().unwrap();
    let (failed, has_failed) = mpsc::channel();
    let receiving = std::thread::spawn(move || {
        let mut r = FrameReader::new(to_receiver, Arc::new(Counters::default()));
        let mut seen = 0;
        while seen < LIST_FLUSH {
            if let Ok(Some(Message::Entry(_))) = r.recv() {
                seen += 1;
            }
        }
        // the next 1,023 entries wait in the sender's buffer
        stalled
            .recv_timeout(std::time::Duration::from_secs(10))
            .unwrap();
        let mut w = FrameWriter::new(from_receiver, Arc::new(Counters::default()));
        w.send(&Message::Fatal(b"disk full on the receiving host".to_vec()))
            .unwrap();
        w.flush().unwrap();
        // both ends closed: the sender's next flush can only fail
        drop(w);
        drop(r);
        failed.send(()).unwrap();
    });
    let sending = std::thread::spawn(move || {
        run_from(
            FrameReader::new(to_sender, Arc::new(Counters::default())),
            FrameWriter::new(from_sender, Arc::new(Counters::default())),
            Config {
                sources: vec![b"stalling/".to_vec()],
                options: Options {
                    recursive: true,
                    ..Default::default()
                },
                events: None,
                confine: None,
                joins: None,
            },
            &Cancel::default(),
            || Ok(source),
        )
    });
    has_failed
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("the list's first 1,024 entries reach the receiver");
    receiving.join().unwrap();
    go.send(()).unwrap();
    match sending.join().unwrap() {
        Err(TransferError::Remote(t)) => assert_eq!(t, "disk full on the receiving host"),
        other => panic!("expected the receiver's own error, got {other:?}"),
    }
}
