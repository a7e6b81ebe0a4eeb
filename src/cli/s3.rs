//! `ferry s3 …`: housekeeping for `s3://` stores (today `cleanup`, which
//! aborts the multipart uploads this host left unfinished and removes the
//! temporary objects of compositions a killed run left). Not for moving
//! files: `cp` and `sync` take `s3://` addresses like any other.

use super::args::S3Command;
use super::exit;
use super::stdout::outln;
use crate::error::TransferError;
use crate::location::Location;

pub fn run(c: S3Command) -> Result<i32, TransferError> {
    match c {
        S3Command::Cleanup { target } => {
            let loc = Location::parse(&target).map_err(|e| TransferError::Usage(e.to_string()))?;
            let Location::S3 { bucket, prefix } = loc else {
                return Err(TransferError::Usage(
                    "ferry s3 cleanup takes s3://bucket or s3://bucket/prefix".into(),
                ));
            };
            let done = crate::store::s3::cleanup(&bucket, &prefix)?;
            for key in &done.aborted {
                outln!("aborted the unfinished upload of s3://{bucket}/{key}");
            }
            for key in &done.removed {
                outln!("removed the temporary object s3://{bucket}/{key}");
            }
            outln!("{} unfinished upload(s) aborted", done.aborted.len());
            if !done.removed.is_empty() {
                outln!("{} temporary object(s) removed", done.removed.len());
            }
            Ok(exit::OK)
        }
    }
}
