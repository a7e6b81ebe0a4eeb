//! The remote end of an ssh transfer: `ferry serve --stdio` speaks the protocol
//! on its stdin and stdout. Extra streams are further `ferry serve --stdio`
//! processes that hand their channel to this one
//! ([`crate::transport::rendezvous`]).
//!
//! Not for the daemon ([`super::daemon`]): here the paths are the user's own,
//! as with rsync over ssh, and ssh has already authenticated the user.

use crate::error::TransferError;
use crate::proto::Summary;
use crate::session::{self, Deliver, Streams};
use crate::transport::{rendezvous, widen_pipe, Stream};

/// This process's stdin and stdout as the session's stream. Its error is
/// not told to the client (nothing is spoken yet): the caller prints it on
/// stderr, which ssh shows the client's user.
pub fn open() -> Result<Stream, TransferError> {
    // the raw descriptors: stdout's line buffering would split frames at every
    // newline byte; nothing else may write to stdout while serving
    let dup = |fd| {
        rustix::io::dup(fd).map(std::fs::File::from).map_err(|e| {
            TransferError::local(
                "stdio",
                &std::io::Error::from_raw_os_error(e.raw_os_error()),
            )
        })
    };
    // sshd hands us pipes
    widen_pipe(rustix::stdio::stdin());
    widen_pipe(rustix::stdio::stdout());
    Ok(Stream {
        reader: Box::new(dup(rustix::stdio::stdin())?),
        writer: Box::new(dup(rustix::stdio::stdout())?),
        in_process: false,
    })
}

/// Serves one session on `stream` (from [`open`]). An error this end had
/// (its files, a request it refuses) was sent to the client as the fatal
/// error the client prints.
pub fn serve(stream: Stream) -> Result<Summary, TransferError> {
    let join = |token: &[u8; 16]| -> Option<Deliver<'_>> {
        let joining = rendezvous::find(token)?;
        Some(Box::new(move |stream: Stream| {
            // the transfer holds copies of the channel from here on
            let _ = joining.hand_over(rustix::stdio::stdin(), rustix::stdio::stdout());
            drop(stream);
        }))
    };
    let streams = Streams {
        register: &rendezvous::offer,
        join: &join,
    };
    session::serve_with(stream, &session::stdio_policy, Some(&streams))
}
