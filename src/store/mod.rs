//! Where files live: the seam between the transfer engine and a storage
//! system. A [`source::Source`] is what a sender reads (list, open, stamp); a
//! [`destination::Destination`] is what a receiver writes (stat, mkdir, basis,
//! temporary, publish, remove, metadata, space, sync), with capability flags
//! saying what the store can do (rebuild a file from its old data, write at
//! offsets, share blocks).
//!
//! The local filesystem ([`crate::fs`]) is the store every transfer uses today;
//! S3 and SFTP plug in here next. They cannot speak ferry's protocol, so both
//! halves of a session run in-process against them. The session is generic
//! over these traits and monomorphic on the data path: no `dyn` per block.

pub mod destination;
pub mod s3;
pub mod source;
