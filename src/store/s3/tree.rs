//! Every object under a prefix, recursively, in S3's byte order of keys,
//! read as a depth-first walk of delimited listings (one "directory", as
//! `/` divides keys, at a time): what [`super::bucket::Bucket::list_stream`]
//! gives its callers, the source's recursive walk and the destination's
//! record of what is there.
//!
//! Why not one recursive listing (no delimiter), which is fewer requests on
//! AWS S3: a server that keeps objects as files pays for a page of it with
//! a walk of everything under the prefix. s3s-fs, the test server, walks
//! the whole bucket and stats every object under the prefix for *every*
//! page, then cuts one page out; a delimited page costs it a walk of the
//! prefix's own subtree and a stat of the objects directly under it. rclone
//! lists this way too (its default; `--fast-list` is the recursive way).
//! The cost on S3 is a request per directory: the first pages of the next
//! few directories are asked for while the walk is still elsewhere, so a
//! tree of many small directories is not one round trip after another.
//!
//! The order is the recursive listing's: a delimited page lists objects and
//! common prefixes (`d/`) in byte order, and every key under `d/` sorts
//! after `d/` and before the page's next entry, so expanding each prefix
//! where the page lists it yields the keys in the same order.
//!
//! Memory: one page per open level (the directories from the prefix down
//! to the key being read: at most 512, an S3 key being at most 1,024
//! bytes), at most [`AHEAD`] first pages (of a quarter page each) of
//! directories not yet opened, and the next page of the level being read
//! once the rest of its page holds no directory. Never a whole directory's listing: a flat prefix of a million
//! objects streams a page at a time, as before.
//!
//! Not for what the keys mean (manifests and chunk maps are left out by
//! [`super::listing`]) nor for turning errors into messages
//! ([`super::bucket`]).

use object_store::aws::AmazonS3;
use object_store::list::{PaginatedListOptions, PaginatedListStore};
use object_store::path::Path;
use object_store::ObjectMeta;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

/// First pages of directories asked for ahead of the walk: the requests
/// overlap instead of waiting in turn (bench/NOTES.md §51).
pub const AHEAD: usize = 8;

/// A first page asked for ahead is this part of a page (500 keys of
/// 2,000): the [`AHEAD`] of them hold at most two pages' keys together,
/// however large the directories, and a directory of up to 500 objects is
/// still one request. At 8 whole pages ahead, the flat-memory test's
/// 20,000-object re-sync (10 directories of 2,000) peaked 5.3–5.8 MiB above
/// its 5,000-object one, where the margin is 5.8 (the XML of 8 pages in
/// flight and their parse).
const AHEAD_PART: usize = 4;

/// The longest key S3 allows (bytes): a prefix longer than that can only
/// come from a server that misbehaves, and would deepen the walk forever.
const KEY_MAX: usize = 1024;

/// One entry of a delimited page, in the page's order.
enum Entry {
    Object(ObjectMeta),
    /// A common prefix: the next of its level's `dirs`.
    Dir,
}

/// One delimited page, merged into key order, and the next page's token.
struct Page {
    entries: VecDeque<Entry>,
    dirs: VecDeque<String>,
    token: Option<String>,
}

type Fetch = JoinHandle<object_store::Result<Page>>;

/// What comes after a level's page.
enum Next {
    Done,
    Token(String),
    Fetching(Fetch),
}

/// One directory being read: its prefix (with its slash; empty for the
/// bucket's root), what is left of its page, and its next page.
struct Level {
    prefix: String,
    entries: VecDeque<Entry>,
    /// The common prefixes among `entries`, in order (with their slash).
    dirs: VecDeque<String>,
    next: Next,
}

impl Level {
    fn new(prefix: String, page: Page) -> Level {
        Level {
            prefix,
            entries: page.entries,
            dirs: page.dirs,
            next: page.token.map_or(Next::Done, Next::Token),
        }
    }
}

/// The walk: the open levels, innermost last, and the first pages asked
/// for ahead of it.
pub struct Tree {
    store: Arc<AmazonS3>,
    rt: Handle,
    /// Keys asked for in one page.
    page: usize,
    /// Where the walk starts, until its first page is asked for.
    root: Option<String>,
    stack: Vec<Level>,
    /// First pages of directories the walk has not opened yet, by prefix.
    ahead: HashMap<String, Fetch>,
}

impl Tree {
    /// The walk of everything under `prefix` (ending in a slash; empty for
    /// the whole bucket), `page` keys a request. Nothing is asked for yet.
    pub fn new(store: Arc<AmazonS3>, rt: Handle, prefix: String, page: usize) -> Tree {
        Tree {
            store,
            rt,
            page,
            root: Some(prefix),
            stack: Vec::new(),
            ahead: HashMap::new(),
        }
    }

    fn spawn(&self, prefix: String, token: Option<String>) -> Fetch {
        let (store, page) = (self.store.clone(), self.page);
        self.rt.spawn(list_page(store, prefix, token, page))
    }

    /// The next object in key order, or `None` at the end.
    pub async fn next(&mut self) -> object_store::Result<Option<ObjectMeta>> {
        if let Some(root) = self.root.take() {
            let page = list_page(self.store.clone(), root.clone(), None, self.page).await?;
            self.stack.push(Level::new(root, page));
            self.ask_ahead();
        }
        loop {
            let Some(top) = self.stack.last_mut() else {
                return Ok(None);
            };
            // the rest of this page opens no directory: its next page is
            // asked for while the rest is read
            if top.dirs.is_empty() {
                if let Next::Token(_) = &top.next {
                    let Next::Token(token) = std::mem::replace(&mut top.next, Next::Done) else {
                        unreachable!()
                    };
                    let prefix = top.prefix.clone();
                    let fetch = self.spawn(prefix, Some(token));
                    if let Some(top) = self.stack.last_mut() {
                        top.next = Next::Fetching(fetch);
                    }
                    continue;
                }
            }
            match top.entries.pop_front() {
                Some(Entry::Object(m)) => return Ok(Some(m)),
                Some(Entry::Dir) => {
                    let Some(prefix) = top.dirs.pop_front() else {
                        unreachable!("a page's directories are its Dir entries")
                    };
                    let page = match self.ahead.remove(&prefix) {
                        Some(fetch) => joined(fetch.await)?,
                        None => {
                            list_page(self.store.clone(), prefix.clone(), None, self.page).await?
                        }
                    };
                    self.stack.push(Level::new(prefix, page));
                    self.ask_ahead();
                }
                None => {
                    let page = match std::mem::replace(&mut top.next, Next::Done) {
                        Next::Done => {
                            self.stack.pop();
                            continue;
                        }
                        Next::Token(token) => {
                            let prefix = top.prefix.clone();
                            list_page(self.store.clone(), prefix, Some(token), self.page).await?
                        }
                        Next::Fetching(fetch) => joined(fetch.await)?,
                    };
                    let top = self.stack.last_mut().expect("the level being read");
                    top.entries = page.entries;
                    top.dirs = page.dirs;
                    top.next = page.token.map_or(Next::Done, Next::Token);
                    self.ask_ahead();
                }
            }
        }
    }

    /// Asks for the first pages of the next directories the walk will
    /// open (the innermost level's first, then the levels above), up to
    /// [`AHEAD`] at once.
    fn ask_ahead(&mut self) {
        let mut want = AHEAD.saturating_sub(self.ahead.len());
        let mut asked = Vec::new();
        'levels: for level in self.stack.iter().rev() {
            for d in &level.dirs {
                if want == 0 {
                    break 'levels;
                }
                if !self.ahead.contains_key(d) {
                    asked.push(d.clone());
                    want -= 1;
                }
            }
        }
        let page = (self.page / AHEAD_PART).max(1);
        for d in asked {
            let fetch = self
                .rt
                .spawn(list_page(self.store.clone(), d.clone(), None, page));
            self.ahead.insert(d, fetch);
        }
    }
}

impl Drop for Tree {
    /// A walk left before its end (an error, a run cut short) stops what it
    /// asked for ahead.
    fn drop(&mut self) {
        for (_, fetch) in self.ahead.drain() {
            fetch.abort();
        }
        for level in &self.stack {
            if let Next::Fetching(fetch) = &level.next {
                fetch.abort();
            }
        }
    }
}

fn joined(
    got: Result<object_store::Result<Page>, tokio::task::JoinError>,
) -> object_store::Result<Page> {
    got.map_err(|e| object_store::Error::Generic {
        store: "S3",
        source: Box::new(e),
    })?
}

/// One delimited page of `prefix` (with its slash; empty: the bucket's
/// root), its objects and common prefixes merged into key order.
async fn list_page(
    store: Arc<AmazonS3>,
    prefix: String,
    token: Option<String>,
    page: usize,
) -> object_store::Result<Page> {
    let opts = PaginatedListOptions {
        delimiter: Some("/".into()),
        max_keys: Some(page),
        page_token: token,
        ..Default::default()
    };
    let got = store
        .list_paginated((!prefix.is_empty()).then_some(prefix.as_str()), opts)
        .await?;
    let mut objects = got.result.objects;
    // S3 lists in key order; object_store does not promise to keep it
    objects.sort_by(|a, b| a.location.as_ref().cmp(b.location.as_ref()));
    let mut dirs = got
        .result
        .common_prefixes
        .iter()
        .map(|d| child(&prefix, d))
        .collect::<object_store::Result<Vec<_>>>()?;
    dirs.sort();
    Ok(Page {
        entries: merge(&prefix, objects, &dirs),
        dirs: dirs.into(),
        token: got.page_token,
    })
}

/// A page's objects (sorted) and prefixes (sorted, with their slashes) in
/// key order. A prefix goes before an object exactly when it sorts before
/// its key: every key under the prefix sorts after it, and a key outside it
/// compares with all of them as with the prefix. Under `/` (keys that begin
/// with a slash) object_store names each object without that slash, so the
/// comparison leaves it off the prefix too.
fn merge(prefix: &str, objects: Vec<ObjectMeta>, dirs: &[String]) -> VecDeque<Entry> {
    let lead = usize::from(prefix.starts_with('/'));
    let mut entries = VecDeque::with_capacity(objects.len() + dirs.len());
    let mut at = dirs.iter().peekable();
    for m in objects {
        while at
            .next_if(|d| d.get(lead..).unwrap_or_default() < m.location.as_ref())
            .is_some()
        {
            entries.push_back(Entry::Dir);
        }
        entries.push_back(Entry::Object(m));
    }
    entries.extend(at.map(|_| Entry::Dir));
    entries
}

/// The prefix (with its slash) of a common prefix the server listed under
/// `parent`: the parent and the listed name's last segment. (object_store
/// names a prefix without its slashes: `/` at the bucket's root, the prefix
/// of keys that begin with a slash, has no segment at all.)
fn child(parent: &str, listed: &Path) -> object_store::Result<String> {
    let bad = || object_store::Error::Generic {
        store: "S3",
        source: format!("the server listed a prefix no S3 key can have under {parent:?}").into(),
    };
    let name = match listed.filename() {
        Some(name) => name,
        None if parent.is_empty() => "",
        None => return Err(bad()),
    };
    let d = format!("{parent}{name}/");
    if d.len() > KEY_MAX {
        return Err(bad());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The page's entries as `name` (an object) or `name/` (a prefix).
    fn merged(prefix: &str, keys: &[&str], dirs: &[&str]) -> Vec<String> {
        let objects = keys
            .iter()
            .map(|k| ObjectMeta {
                location: Path::parse(k).unwrap(),
                last_modified: chrono::DateTime::UNIX_EPOCH,
                size: 0,
                e_tag: None,
                version: None,
            })
            .collect();
        let dirs: Vec<String> = dirs.iter().map(|d| d.to_string()).collect();
        let mut d = dirs.iter();
        merge(prefix, objects, &dirs)
            .into_iter()
            .map(|e| match e {
                Entry::Object(m) => m.location.to_string(),
                Entry::Dir => d.next().unwrap().clone(),
            })
            .collect()
    }

    #[test]
    fn a_page_is_merged_into_key_order_under_the_root_a_prefix_and_a_leading_slash() {
        // `a.txt` and `a!` sort before `a/`, `a0` after it
        assert_eq!(
            merged("", &["a!", "a.txt", "a0", "b"], &["a/", "c/"]),
            ["a!", "a.txt", "a/", "a0", "b", "c/"]
        );
        assert_eq!(
            merged("p/", &["p/a-b", "p/z"], &["p/a/", "p/b/"]),
            ["p/a-b", "p/a/", "p/b/", "p/z"]
        );
        // keys `/a` and `/c` (named `a`, `c` by object_store) around `/b/`
        assert_eq!(merged("/", &["/a", "/c"], &["/b/"]), ["a", "/b/", "c"]);
    }

    #[test]
    fn a_listed_prefix_is_its_parent_and_its_last_segment() {
        let p = |s: &str| Path::parse(s).unwrap();
        assert_eq!(child("", &p("a/")).unwrap(), "a/");
        assert_eq!(child("a/", &p("a/b/")).unwrap(), "a/b/");
        // keys that begin with a slash: `/` at the root, then under it
        assert_eq!(child("", &p("/")).unwrap(), "/");
        assert_eq!(child("/", &p("/x/")).unwrap(), "/x/");
        assert!(child("a/", &p("/")).is_err());
        assert!(child("a/", &p("")).is_err());
        assert!(child(&"a/".repeat(600), &p("b/")).is_err());
    }
}
