//! Command-line flags. `sync` mirrors rsync, `cp` mirrors scp; every flag has
//! a doc string that becomes `--help`.

use clap::{ArgAction, Args, Parser, Subcommand};
use std::ffi::OsString;

#[derive(Parser, Debug)]
#[command(
    name = "ferry",
    version,
    about = "Moves AI data between Linux servers: scp and rsync habits, content-defined delta, every file checked end to end"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// S3 endpoint for s3:// addresses (e.g. http://minio:9000), above
    /// AWS_ENDPOINT_URL and the profile's endpoint_url
    #[arg(long, global = true, value_name = "URL")]
    pub s3_endpoint: Option<String>,
    /// Checksum header sent with each S3 upload request, checked by the
    /// server: sha256 (default), crc64nvme, or none (for servers that
    /// reject the header; each part's ETag is then always checked against
    /// the MD5 of what was sent)
    #[arg(long, global = true, value_name = "ALGO",
          value_parser = ["sha256", "crc64nvme", "none"])]
    pub s3_checksum: Option<String>,
}

// (parsed once per run: the size of the largest variant costs nothing)
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Copy files like scp: `ferry cp -r ./ckpt user@gpu2:/data/ckpt`
    #[command(override_usage = "ferry cp [OPTIONS] SRC... DEST")]
    Cp(CpArgs),
    /// Synchronise trees like rsync: `ferry sync -avz --delete ./data/ gpu2:/data/`
    // -i is rsync's --itemize-changes here: the daemon identity is --identity
    #[command(disable_help_flag = true, mut_arg("identity", |a| a.short(None)))]
    #[command(override_usage = "ferry sync [OPTIONS] SRC... DEST")]
    Sync(SyncArgs),
    /// Send one tree to many daemons at once through a verified pipelined chain:
    /// `ferry fanout -a ./ckpt/ gpu1::ckpt/ gpu2::ckpt/ gpu3::ckpt/`
    Fanout(super::fanout::FanoutArgs),
    /// Run the daemon (TLS, key authentication, modules), or with --stdio serve
    /// one transfer on stdin/stdout (what ferry runs on the remote over ssh)
    Serve(ServeArgs),
    /// Create an ed25519 identity (OpenSSH format) in ferry's config directory
    Keygen(KeygenArgs),
    /// Manage the daemon's authorized_keys: add, list, remove
    #[command(subcommand)]
    Trust(TrustCommand),
    /// Install my ferry key on a remote daemon host over ssh (like ssh-copy-id)
    CopyId(CopyIdArgs),
    /// List a daemon's modules (`host::`) or the entries at a module path,
    /// the objects under an S3 prefix (`s3://bucket/prefix/`), or the entries
    /// at a path over ssh (`host:path`) or here
    Ls(LsArgs),
    /// S3 housekeeping: `ferry s3 cleanup s3://bucket/prefix`
    #[command(subcommand)]
    S3(S3Command),
    /// Build a sample dataset, sync it through `ferry serve --stdio`, change 1%, re-sync
    Demo(DemoArgs),
    /// An interactive session on [user@]host[:dir] or a daemon's host::module, like
    /// sftp (ls cd lcd pwd lpwd get put reget reput mkdir rm rmdir rename chmod df
    /// progress help); -b runs a batch
    Shell(ShellArgs),
    /// Find out why a host does not connect: DNS, route, TCP, TLS, keys, ssh, clock
    Doctor(DoctorArgs),
    /// Manage the HTTP API's keys (on the daemon's host): create, list, revoke
    #[command(subcommand, name = "api-key")]
    ApiKey(super::jobs::ApiKeyCommand),
    /// Submit, list, show, cancel, resume and watch jobs through a daemon's HTTP API
    #[command(subcommand)]
    Job(super::jobs::JobCommand),
    /// Print a one-time login link for the daemon's dashboard (on its host)
    DashboardLink(super::jobs::DashboardLinkArgs),
}

#[derive(Args, Debug, Default)]
pub struct SyncArgs {
    /// Archive mode: -rlptgoD (owner and group only when run as root)
    #[arg(short = 'a', long)]
    pub archive: bool,
    /// Recurse into directories
    #[arg(short = 'r', long)]
    pub recursive: bool,
    /// Copy symlinks as symlinks, exactly as they are (absolute or pointing out
    /// of the tree too); the receiver never follows a link when it writes
    #[arg(short = 'l', long)]
    pub links: bool,
    /// Skip symlinks that are absolute or climb out of the transfer with ..
    #[arg(long = "safe-links", conflicts_with = "munge_links")]
    pub safe_links: bool,
    /// Make each symlink with /rsyncd-munged/ in front of its target, so that
    /// nothing on the receiving host can follow it
    #[arg(long = "munge-links")]
    pub munge_links: bool,
    /// Follow symlinks in the source: send what they point to
    #[arg(short = 'L', long = "copy-links")]
    pub copy_links: bool,
    /// Follow only symlinks that point outside the transfer; keep the others
    #[arg(long = "copy-unsafe-links")]
    pub copy_unsafe_links: bool,
    /// Follow symlinks to directories: send them as directories
    #[arg(short = 'k', long = "copy-dirlinks")]
    pub copy_dirlinks: bool,
    /// Treat a symlink to a directory at the destination as that directory
    /// (rsync -K): write into where it points instead of replacing it. Only
    /// for destinations whose links you trust; a daemon refuses it
    #[arg(short = 'K', long = "keep-dirlinks")]
    pub keep_dirlinks: bool,
    /// Preserve permissions
    #[arg(short = 'p', long)]
    pub perms: bool,
    /// Preserve modification times
    #[arg(short = 't', long)]
    pub times: bool,
    /// Preserve owner (root only)
    #[arg(short = 'o', long)]
    pub owner: bool,
    /// Preserve group
    #[arg(short = 'g', long)]
    pub group: bool,
    /// Accepted for rsync compatibility: devices and special files are skipped with a notice
    #[arg(short = 'D')]
    pub devices: bool,
    /// Preserve hard links
    #[arg(short = 'H', long = "hard-links")]
    pub hard_links: bool,
    /// Sparse files: send only a file's data and each hole as its length (into S3,
    /// over SFTP and in a delta re-sync, zeros), and leave holes and runs of zeros as holes
    #[arg(short = 'S', long)]
    pub sparse: bool,
    /// List changed files (-vv for more)
    #[arg(short = 'v', long, action = ArgAction::Count)]
    pub verbose: u8,
    /// Print only errors
    #[arg(short = 'q', long, conflicts_with = "verbose")]
    pub quiet: bool,
    /// A line per changed entry in rsync's format, `>f.st...... name`: what
    /// changed (+ new, c link target, s size, t time, p perms, o owner, g
    /// group; *deleting). On sync, -i is this, as in rsync: the daemon
    /// identity is --identity (cp keeps scp's -i)
    #[arg(short = 'i', long = "itemize-changes")]
    pub itemize_changes: bool,
    /// A line per transferred entry in FORMAT, rsync's escapes: %n name, %i
    /// itemized changes, %l length, %b bytes on the wire, %f file name, %M
    /// mtime, %t time now (UTC), %o operation (send, recv, del.), %L link
    /// target, %p pid, %% a %; %'l groups digits (50,000). A deletion is
    /// "deleting NAME" unless FORMAT has %i or %o
    #[arg(long = "out-format", value_name = "FORMAT")]
    pub out_format: Option<String>,
    /// Append what changed to FILE (made 0600), as rsync lays it out: the
    /// time (UTC), [pid], then the itemized line; the totals at the end
    #[arg(long = "log-file", value_name = "FILE")]
    pub log_file: Option<std::path::PathBuf>,
    /// rsync's --info: progress2 (one line of whole-transfer progress),
    /// stats2 (--stats and rsync's extra lines); comma-separated
    #[arg(long, value_name = "FLAGS", value_delimiter = ',',
          value_parser = ["progress2", "stats2", "progress1", "stats1", "progress0", "stats0"])]
    pub info: Vec<String>,
    /// Skip files that are newer on the receiver
    #[arg(short = 'u', long)]
    pub update: bool,
    /// Compress file data (zstd, skipped for data that does not compress; each
    /// block continues the zstd stream of the one before)
    #[arg(short = 'z', long)]
    pub compress: bool,
    /// zstd level for -z, 1-19 (default 1); as in rsync, setting it implies -z
    #[arg(long = "compress-level", value_name = "N",
          value_parser = clap::value_parser!(u8).range(1..=19))]
    pub compress_level: Option<u8>,
    /// Human-readable numbers
    #[arg(short = 'h', long = "human-readable")]
    pub human: bool,
    /// Show what would change, change nothing
    #[arg(short = 'n', long = "dry-run")]
    pub dry_run: bool,
    /// Compare files by BLAKE3 checksum, not size and mtime
    #[arg(short = 'c', long)]
    pub checksum: bool,
    /// Delete files in the destination that are not in the source
    #[arg(long)]
    pub delete: bool,
    /// With --delete (implied): also delete destination files the filters exclude
    #[arg(long = "delete-excluded")]
    pub delete_excluded: bool,
    /// Delete at most N files or directories (the rest are reported, exit code 23)
    #[arg(long = "max-delete", value_name = "N")]
    pub max_delete: Option<u64>,
    /// Delete before any file is sent (implies --delete): frees room first
    #[arg(long = "delete-before", conflicts_with_all = ["delete_during", "delete_after", "delete_delay"])]
    pub delete_before: bool,
    /// Delete directory by directory before its files are sent (implies
    /// --delete; rsync's default, ferry deletes once the list is complete)
    #[arg(long = "delete-during", alias = "del", conflicts_with_all = ["delete_after", "delete_delay"])]
    pub delete_during: bool,
    /// Delete after every file is in place (implies --delete; ferry's default:
    /// a transfer that fails deletes nothing)
    #[arg(long = "delete-after", conflicts_with = "delete_delay")]
    pub delete_after: bool,
    /// Find what to delete during the transfer, delete it at the end (implies
    /// --delete; in ferry the same as --delete-after)
    #[arg(long = "delete-delay")]
    pub delete_delay: bool,
    /// For a file missing at the destination: hard-link it to DIR's copy when
    /// that is unchanged, else rebuild from it (checkpoint snapshots); DIR is
    /// relative to the destination (repeatable, up to 20)
    #[arg(long = "link-dest", value_name = "DIR", conflicts_with_all = ["copy_dest", "compare_dest"])]
    pub link_dest: Vec<std::path::PathBuf>,
    /// Like --link-dest, but copy DIR's unchanged file locally instead of linking it
    #[arg(
        long = "copy-dest",
        value_name = "DIR",
        conflicts_with = "compare_dest"
    )]
    pub copy_dest: Vec<std::path::PathBuf>,
    /// Like --link-dest, but leave a file unchanged in DIR out of the destination
    #[arg(long = "compare-dest", value_name = "DIR")]
    pub compare_dest: Vec<std::path::PathBuf>,
    /// Remove each source file (not directories) once its copy at the
    /// destination is verified and durable; one that changed or was
    /// replaced meanwhile is kept (exit 23)
    #[arg(long = "remove-source-files")]
    pub remove_source_files: bool,
    /// Write each changed file over itself instead of beside it and renamed:
    /// gives up atomic publish (readers see it change, a failure leaves it
    /// half-written and reported) and delta (files come whole); still verified
    #[arg(long, conflicts_with = "backup")]
    pub inplace: bool,
    /// Switch the destination directory whole: the new tree is built beside
    /// it (hidden, .DEST.ferry-atomic; unchanged files are hard links to the
    /// old tree's, not copies), then swapped in with one
    /// renameat2(RENAME_EXCHANGE), so readers see the whole old tree or the
    /// whole new one. The old tree is removed, or kept with --backup-dir.
    /// Files the source lacks stay unless --delete, as in any sync. A DEST
    /// that is a symlink to a directory (current -> releases/7) is flipped
    /// instead: the new tree is built beside its target (.DEST.ferry-N) and
    /// a new link renamed over DEST, on any filesystem
    #[arg(long, conflicts_with = "inplace")]
    pub atomic: bool,
    /// With --atomic: move the replaced tree to DIR (relative to the
    /// destination, e.g. ../ckpt.prev; must not exist yet, same filesystem)
    #[arg(long = "backup-dir", value_name = "DIR", requires = "atomic")]
    pub backup_dir: Option<std::path::PathBuf>,
    /// Give every entry this owner and group, USER:GROUP (names or numbers,
    /// looked up on the receiving host; :GROUP or USER alone too); as in
    /// rsync it needs -o/-g (in -a) and a receiver running as root
    #[arg(long, value_name = "USER:GROUP")]
    pub chown: Option<String>,
    /// Skip files whose size matches, whatever their mtime
    #[arg(long = "size-only")]
    pub size_only: bool,
    /// Send every file, even those whose size and mtime match
    #[arg(short = 'I', long = "ignore-times")]
    pub ignore_times: bool,
    /// Leave files that already exist at the destination alone
    #[arg(long = "ignore-existing")]
    pub ignore_existing: bool,
    /// Make nothing new at the destination: only update what exists
    #[arg(long = "existing")]
    pub existing: bool,
    /// Do not transfer files larger than SIZE (suffixes K, M, G: 1024-based; KB, MB, GB: 1000-based)
    #[arg(long = "max-size", value_name = "SIZE", value_parser = parse_size)]
    pub max_size: Option<u64>,
    /// Do not transfer files smaller than SIZE
    #[arg(long = "min-size", value_name = "SIZE", value_parser = parse_size)]
    pub min_size: Option<u64>,
    /// No delta: send each changed file whole
    #[arg(short = 'W', long = "whole-file")]
    pub whole_file: bool,
    /// Do not cross filesystem boundaries in the source (mount points are sent
    /// as empty directories)
    #[arg(short = 'x', long = "one-file-system")]
    pub one_file_system: bool,
    /// Make the destination's missing parent directories
    #[arg(long)]
    pub mkpath: bool,
    /// Transfer directories without recursing (rsync -d): a source `dir/`
    /// sends its files and its subdirectories, empty; --files-from implies it
    #[arg(short = 'd', long)]
    pub dirs: bool,
    /// The daemon's port for host::module addresses that name none (default 7420)
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    /// Name each source by its path (from after a /./ in it, else without its
    /// leading /), making the directories above it at the destination
    #[arg(short = 'R', long)]
    pub relative: bool,
    /// Send the paths listed in FILE (one a line, relative to the one source
    /// directory; - for stdin); implies -R and -d, and -a does not imply -r
    #[arg(long = "files-from", value_name = "FILE")]
    pub files_from: Option<std::path::PathBuf>,
    /// Change permissions as they arrive, like chmod(1): 644, D2775, Fgo-w, u+rwx,Da+X (repeatable)
    #[arg(long, value_name = "RULES")]
    pub chmod: Vec<String>,
    /// Read exclude patterns from FILE, one a line ('#' and ';' lines are comments; - for stdin)
    #[arg(long = "exclude-from", value_name = "FILE")]
    pub exclude_from: Vec<std::path::PathBuf>,
    /// Read include patterns from FILE
    #[arg(long = "include-from", value_name = "FILE")]
    pub include_from: Vec<std::path::PathBuf>,
    /// An rsync filter rule, in order with --include/--exclude: '+ PATTERN',
    /// '- PATTERN', 'merge FILE' (or '. FILE': the rules in FILE, one a line),
    /// 'dir-merge NAME' (or ': NAME': the rules in the file NAME of each
    /// directory sent, for what is below it, read by the sender)
    #[arg(short = 'f', long, value_name = "RULE", allow_hyphen_values = true)]
    pub filter: Vec<String>,
    /// rsync's -F: 'dir-merge /.rsync-filter' (each directory's .rsync-filter
    /// file holds rules for it); -FF also leaves the .rsync-filter files out
    #[arg(short = 'F', action = clap::ArgAction::Count)]
    pub filter_files: u8,
    /// Exclude files matching PATTERN (rsync glob rules; repeatable)
    #[arg(long, value_name = "PATTERN")]
    pub exclude: Vec<String>,
    /// Do not exclude files matching PATTERN (first matching rule wins)
    #[arg(long, value_name = "PATTERN")]
    pub include: Vec<String>,
    /// Keep replaced or deleted files with a suffix
    #[arg(short = 'b', long)]
    pub backup: bool,
    /// Backup suffix (default ~)
    #[arg(long, value_name = "SUFFIX")]
    pub suffix: Option<String>,
    /// Keep partial files of interrupted transfers to resume from (the default)
    #[arg(long, overrides_with = "no_partial")]
    pub partial: bool,
    /// Do not keep partial files
    #[arg(long = "no-partial")]
    pub no_partial: bool,
    /// Show progress per file and overall
    #[arg(long)]
    pub progress: bool,
    /// Same as --partial --progress
    #[arg(short = 'P')]
    pub partial_progress: bool,
    /// Print transfer statistics at the end
    #[arg(long)]
    pub stats: bool,
    /// One JSON object per line on stdout (files, errors, summary); see the README
    #[arg(long)]
    pub json: bool,
    /// Limit bandwidth, in KiB/s (suffixes K, M, G allowed: 10M); one total
    /// for all streams, local copies too
    #[arg(long, value_name = "RATE")]
    pub bwlimit: Option<String>,
    /// fsync each file before it is renamed into place (default: one sync at the end)
    #[arg(long)]
    pub fsync: bool,
    /// The remote shell command, e.g. -e "ssh -p 2222 -i ~/.ssh/id_ed25519"
    #[arg(short = 'e', long = "rsh", value_name = "COMMAND")]
    pub rsh: Option<String>,
    /// The ferry program on the remote (default: ferry on its PATH)
    #[arg(long = "remote-ferry", value_name = "PATH")]
    pub remote_ferry: Option<String>,
    /// How to talk to an ssh remote: ferry's protocol (delta, resume), SFTP
    /// (any OpenSSH server, no delta), or auto: ferry, and SFTP where the
    /// remote cannot run it (no ferry there, an sftp-only account)
    #[arg(long, value_enum, value_name = "HOW", default_value_t)]
    pub transport: crate::transport::child::Transport,
    /// Over SFTP: how files are checked beyond ssh's MAC. auto: uploads are
    /// hashed on the remote (the cheapest of b3sum, xxh128sum, openssl dgst
    /// -sha256, sha256sum and shasum -a 256 it has) before they are
    /// renamed into place, where the account may run commands; reread: every
    /// file is read again over SFTP and its BLAKE3 compared (twice the traffic)
    #[arg(long, value_enum, value_name = "HOW", default_value_t)]
    pub verify: crate::transport::child::VerifyMode,
    /// Connections to the remote, TLS to a daemon or ssh (files of 16 MiB and
    /// more are split across them; default: one per core to a daemon, one per
    /// two cores over ssh, at most 4). Over SFTP: N `ssh … -s sftp`
    /// connections, files spread over them, a large file split across them
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..=16))]
    pub streams: Option<u8>,
    #[command(flatten)]
    pub daemon: DaemonFlags,
    /// Print help
    #[arg(long, action = ArgAction::Help)]
    pub help: Option<bool>,
    /// A source (flags may come before, between or after the paths)
    #[arg(value_name = "SRC")]
    pub first: OsString,
    /// More sources, then the destination
    #[arg(required = true, value_name = "DEST")]
    pub paths: Vec<OsString>,
}

#[derive(Args, Debug, Default)]
pub struct CpArgs {
    /// Copy directories recursively
    #[arg(short = 'r')]
    pub recursive: bool,
    /// Preserve modification times and modes
    #[arg(short = 'p')]
    pub preserve: bool,
    /// Port to connect to on the remote host
    #[arg(short = 'P', value_name = "PORT")]
    pub port: Option<u16>,
    /// Quiet: no progress
    #[arg(short = 'q')]
    pub quiet: bool,
    /// Ask ssh to compress the connection
    #[arg(short = 'C')]
    pub ssh_compress: bool,
    /// Limit bandwidth, in Kbit/s
    #[arg(short = 'l', value_name = "LIMIT")]
    pub limit: Option<u64>,
    /// Identity (private key) file, for ssh and for daemons
    #[arg(short = 'i', value_name = "FILE")]
    pub identity: Option<String>,
    /// known_hosts file for daemon keys
    #[arg(long = "known-hosts", value_name = "FILE")]
    pub known_hosts: Option<std::path::PathBuf>,
    /// Unknown daemon keys: strict, accept-new, ask
    #[arg(long = "host-key-check", value_name = "MODE")]
    pub host_key_check: Option<String>,
    /// ferry's config directory
    #[arg(long = "config-dir", value_name = "DIR")]
    pub config_dir: Option<std::path::PathBuf>,
    /// Option passed to ssh as -o (repeatable)
    #[arg(short = 'o', value_name = "OPTION")]
    pub ssh_option: Vec<String>,
    /// ssh configuration file
    #[arg(short = 'F', value_name = "FILE")]
    pub ssh_config: Option<String>,
    /// Verbose, as in scp: the ssh command line (and ssh's own -v), the
    /// daemon connection's steps, as debug1: lines on stderr
    #[arg(short = 'v')]
    pub verbose: bool,
    /// Remote to remote: copy through this host (default: directly from the
    /// first host to the second where it can reach it with the same ssh
    /// command and runs ferry, else through this host). Through this host
    /// the copy streams: no local disk, memory bounded, delta and checks as
    /// in a direct copy
    #[arg(short = '3')]
    pub through_local: bool,
    /// Reach the remote through these jump hosts ([user@]host[:port], comma
    /// separated), passed to ssh as ProxyJump
    #[arg(short = 'J', value_name = "DESTINATION")]
    pub jump: Option<String>,
    /// A line per changed entry in rsync's format (`>f+++++++++ name`); long
    /// form only: -i is the identity file, as in scp
    #[arg(long = "itemize-changes")]
    pub itemize_changes: bool,
    /// One JSON object per line on stdout (files, errors, summary); see the README
    #[arg(long)]
    pub json: bool,
    /// Switch the destination directory whole (as sync --atomic): built
    /// beside it, swapped in with one rename, readers never see a mix; a
    /// destination that is a symlink to a directory is flipped to the new tree
    #[arg(long)]
    pub atomic: bool,
    /// The remote shell command (instead of ssh)
    #[arg(short = 'e', long = "rsh", value_name = "COMMAND")]
    pub rsh: Option<String>,
    /// The ferry program on the remote (default: ferry on its PATH)
    #[arg(long = "remote-ferry", value_name = "PATH")]
    pub remote_ferry: Option<String>,
    /// How to talk to an ssh remote: ferry's protocol (delta, resume), SFTP
    /// (any OpenSSH server, no delta), or auto: ferry, and SFTP where the
    /// remote cannot run it (no ferry there, an sftp-only account)
    #[arg(long, value_enum, value_name = "HOW", default_value_t)]
    pub transport: crate::transport::child::Transport,
    /// Over SFTP: how files are checked beyond ssh's MAC. auto: uploads are
    /// hashed on the remote (the cheapest of b3sum, xxh128sum, openssl dgst
    /// -sha256, sha256sum and shasum -a 256 it has) before they are
    /// renamed into place, where the account may run commands; reread: every
    /// file is read again over SFTP and its BLAKE3 compared (twice the traffic)
    #[arg(long, value_enum, value_name = "HOW", default_value_t)]
    pub verify: crate::transport::child::VerifyMode,
    /// Connections to the remote, TLS to a daemon or ssh (files of 16 MiB and
    /// more are split across them; default: one per core to a daemon, one per
    /// two cores over ssh, at most 4). Over SFTP: N `ssh … -s sftp`
    /// connections, files spread over them, a large file split across them
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..=16))]
    pub streams: Option<u8>,
    /// The daemon's port for host::module addresses that name none (default
    /// 7420; -P is ssh's port)
    #[arg(long = "port", value_name = "PORT")]
    pub daemon_port: Option<u16>,
    #[command(flatten)]
    pub retry: RetryFlags,
    #[command(flatten)]
    pub ip: IpFlags,
    /// A source (flags may come before, between or after the paths)
    #[arg(value_name = "SRC")]
    pub first: OsString,
    /// More sources, then the destination
    #[arg(required = true, value_name = "DEST")]
    pub paths: Vec<OsString>,
}

/// How to reach and trust a ferry daemon (`host::module/path`, `ferry://`).
#[derive(Args, Debug, Default, Clone)]
pub struct DaemonFlags {
    /// Identity (ed25519 private key) for daemons; default: ferry's, else ~/.ssh/id_ed25519
    #[arg(short = 'i', long = "identity", value_name = "FILE")]
    pub identity: Option<std::path::PathBuf>,
    /// known_hosts file for daemon keys (default: in the config directory)
    #[arg(long = "known-hosts", value_name = "FILE")]
    pub known_hosts: Option<std::path::PathBuf>,
    /// Unknown daemon keys: strict (refuse), accept-new (record), ask (default on a terminal)
    #[arg(long = "host-key-check", value_name = "MODE")]
    pub host_key_check: Option<String>,
    /// ferry's config directory (default: $FERRY_CONFIG_DIR or ~/.config/ferry)
    #[arg(long = "config-dir", value_name = "DIR")]
    pub config_dir: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub retry: RetryFlags,
    #[command(flatten)]
    pub ip: IpFlags,
}

/// How long to wait for a daemon and how often to retry one (`sync`, `cp`,
/// `ls`, `fanout`).
#[derive(Args, Debug, Default, Clone, Copy)]
pub struct RetryFlags {
    /// Give up on a daemon that sends nothing for SECONDS (connecting, the
    /// handshake, or any wait during the transfer; default: 30 s to connect, no
    /// limit after), and stop retrying a broken connection SECONDS after it
    /// first broke (default: 60 s)
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u64>,
    /// Retry a daemon transfer whose connection broke at most N times
    /// (default: 10; 0: never). A name that does not exist, a first
    /// connection refused, a key refused are never retried
    #[arg(long, value_name = "N")]
    pub retries: Option<u32>,
}

/// `-4` and `-6`: the address family, to a daemon and over ssh.
#[derive(Args, Debug, Default, Clone, Copy)]
pub struct IpFlags {
    /// Connect over IPv4 only (to a daemon; over ssh it is passed on as -o AddressFamily=inet)
    #[arg(short = '4', conflicts_with = "ipv6")]
    pub ipv4: bool,
    /// Connect over IPv6 only
    #[arg(short = '6')]
    pub ipv6: bool,
}

impl IpFlags {
    /// 4, 6, or None for either.
    pub fn version(self) -> Option<u8> {
        match (self.ipv4, self.ipv6) {
            (true, _) => Some(4),
            (_, true) => Some(6),
            _ => None,
        }
    }

    /// The same choice as ssh's `-o AddressFamily=…`.
    pub fn ssh_options(self) -> Vec<String> {
        match self.version() {
            Some(4) => vec!["AddressFamily=inet".into()],
            Some(6) => vec!["AddressFamily=inet6".into()],
            _ => Vec::new(),
        }
    }
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Speak the protocol on stdin/stdout (how ssh runs ferry on the remote)
    #[arg(long)]
    pub stdio: bool,
    /// Daemon configuration file (TOML)
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// Address to listen on (repeatable; default 0.0.0.0:7420). 0.0.0.0 accepts
    /// connections on every IPv4 interface, [::] on every IPv6 one, 127.0.0.1 only
    /// from this machine
    #[arg(long, value_name = "ADDR")]
    pub listen: Vec<String>,
    /// A module: NAME=PATH, or NAME=PATH:ro for read-only (repeatable)
    #[arg(long, value_name = "NAME=PATH[:ro]")]
    pub module: Vec<String>,
    /// authorized_keys file (default: in the config directory)
    #[arg(long = "authorized-keys", value_name = "FILE")]
    pub authorized_keys: Option<std::path::PathBuf>,
    /// The daemon's key (default: id_ed25519 in the config directory, made if missing)
    #[arg(long, value_name = "FILE")]
    pub identity: Option<std::path::PathBuf>,
    /// Authenticated sessions served at once (default 64, or max_connections in
    /// the config file); a client over it is told the daemon is busy and retries
    #[arg(long = "max-connections", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Connections still authenticating; when full, the oldest is dropped
    /// (default 256, or max_startups in the config file)
    #[arg(long = "max-startups", value_name = "N")]
    pub max_startups: Option<usize>,
    /// Seconds a client has to finish authenticating (default 10, or
    /// preauth_timeout_secs in the config file)
    #[arg(long = "preauth-timeout", value_name = "SECS")]
    pub preauth_timeout: Option<u64>,
    /// ferry's config directory
    #[arg(long = "config-dir", value_name = "DIR")]
    pub config_dir: Option<std::path::PathBuf>,
    /// Also serve the HTTP API (jobs, events, /metrics, the dashboard) on ADDR,
    /// e.g. 127.0.0.1:7421: plain HTTP on loopback, beyond it only with
    /// --api-tls or --api-cert. Its state lives in the config directory's state/
    #[arg(long, value_name = "ADDR")]
    pub api: Option<String>,
    /// API requests allowed per key (or per address without a valid key),
    /// e.g. 60/min, 10/s (default 600/min)
    #[arg(long = "api-rate", value_name = "N/PERIOD")]
    pub api_rate: Option<String>,
    /// Serve the API over TLS with a certificate made from the daemon's key
    /// (its pin is printed for curl --pinnedpubkey); needed beyond loopback
    #[arg(long = "api-tls")]
    pub api_tls: bool,
    /// Serve the API over TLS with this certificate chain (PEM); the pin of
    /// its key is printed too (for ferry job --api-pin, curl --pinnedpubkey)
    #[arg(long = "api-cert", value_name = "FILE", requires = "api_key_file")]
    pub api_cert: Option<std::path::PathBuf>,
    /// The private key (PEM) for --api-cert
    #[arg(long = "api-key-file", value_name = "FILE", requires = "api_cert")]
    pub api_key_file: Option<std::path::PathBuf>,
    /// The daemon's log format: text (colour only on a terminal) or json
    #[arg(long = "log-format", value_name = "FORMAT", default_value = "text",
          value_parser = ["text", "json"])]
    pub log_format: String,
}

#[derive(Args, Debug)]
pub struct KeygenArgs {
    /// Where to write the key (and FILE.pub); default: id_ed25519 in the config directory
    #[arg(short = 'f', value_name = "FILE")]
    pub file: Option<std::path::PathBuf>,
    /// Comment stored with the key
    #[arg(short = 'C', value_name = "COMMENT")]
    pub comment: Option<String>,
    /// ferry's config directory
    #[arg(long = "config-dir", value_name = "DIR")]
    pub config_dir: Option<std::path::PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct TrustFile {
    /// The authorized_keys file (default: the daemon's, in the config directory)
    #[arg(long = "authorized-keys", value_name = "FILE")]
    pub authorized_keys: Option<std::path::PathBuf>,
    /// ferry's config directory
    #[arg(long = "config-dir", value_name = "DIR")]
    pub config_dir: Option<std::path::PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum TrustCommand {
    /// Authorize a client key: a .pub file, a key line, or - for standard input
    Add {
        /// The public key
        key: String,
        /// authorized_keys options, e.g. 'from="10.0.0.0/8",restrict,modules="data"'
        #[arg(long, value_name = "OPTIONS")]
        options: Option<String>,
        #[command(flatten)]
        file: TrustFile,
    },
    /// List authorized keys with their fingerprints and options
    List {
        #[command(flatten)]
        file: TrustFile,
    },
    /// Remove the key with this fingerprint (SHA256:...)
    Remove {
        /// The key's fingerprint, SHA256:..., as `trust list` shows it
        fingerprint: String,
        #[command(flatten)]
        file: TrustFile,
    },
}

#[derive(Args, Debug)]
pub struct CopyIdArgs {
    /// The remote host, [user@]host
    pub target: String,
    /// The remote shell command (default ssh)
    #[arg(short = 'e', long = "rsh", value_name = "COMMAND")]
    pub rsh: Option<String>,
    /// The ferry program on the remote
    #[arg(long = "remote-ferry", value_name = "PATH")]
    pub remote_ferry: Option<String>,
    /// The public key to install (default: my ferry identity's .pub)
    #[arg(short = 'i', value_name = "FILE")]
    pub identity: Option<std::path::PathBuf>,
    /// ferry's config directory
    #[arg(long = "config-dir", value_name = "DIR")]
    pub config_dir: Option<std::path::PathBuf>,
}

/// `ferry s3 …`
#[derive(Subcommand, Debug)]
pub enum S3Command {
    /// Abort the multipart uploads this host left unfinished under
    /// s3://bucket/prefix (those in its journal, ~/.cache/ferry/s3-uploads),
    /// freeing the parts the server holds, and remove the temporary objects
    /// of server-side compositions a killed run left there. Do not run it
    /// while an upload there is still going.
    Cleanup {
        /// s3://bucket or s3://bucket/prefix
        target: OsString,
    },
}

#[derive(Args, Debug)]
pub struct LsArgs {
    /// host:: (modules), host::module/path, ferry://host[:port]/module/path,
    /// s3://bucket/prefix, [user@]host:path (over ssh) or a local path
    pub target: OsString,
    /// One JSON object per line on stdout (entries or modules); see the README
    #[arg(long)]
    pub json: bool,
    /// For [user@]host:path: the remote shell command (default: ssh)
    #[arg(short = 'e', long = "rsh", value_name = "COMMAND")]
    pub rsh: Option<String>,
    /// For [user@]host:path: ferry's path on the remote (default: ferry)
    #[arg(long = "remote-ferry", value_name = "PATH")]
    pub remote_ferry: Option<String>,
    /// The daemon's port for host:: addresses that name none (default 7420)
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    /// For [user@]host:path: ferry's protocol, SFTP, or auto (ferry, and
    /// SFTP where the remote cannot run it), as for cp and sync
    #[arg(long, value_enum, value_name = "HOW", default_value_t)]
    pub transport: crate::transport::child::Transport,
    #[command(flatten)]
    pub daemon: DaemonFlags,
}

/// `ferry doctor`: every check has a bounded timeout (the run ends within
/// about 20 s); exit 0 when nothing failed (warnings allowed), 1 otherwise.
#[derive(Args, Debug)]
#[command(
    after_help = "Targets: gpu2 or gpu2::module or ferry://gpu2[:port]/... (the daemon, port 7420 by default), gpu2:PORT (the daemon on PORT), user@gpu2 or gpu2:path (the ssh path).\n\
For a daemon, the doctor also logs in over ssh (if it can, without prompting) to see what listens on the port on the host and to read its clock."
)]
pub struct DoctorArgs {
    /// The host to examine: gpu2, gpu2::module, gpu2:7420, user@gpu2, ferry://gpu2:7420/m
    pub target: String,
    /// Print one JSON object (target, addresses, checks with id, status, class, ms, summary, evidence, fix)
    #[arg(long)]
    pub json: bool,
    /// The ssh command for the ssh checks and the server-side view (default: ssh)
    #[arg(short = 'e', long = "rsh", value_name = "COMMAND")]
    pub rsh: Option<String>,
    /// ferry's path on the remote, for the ssh path (default: ferry)
    #[arg(long = "remote-ferry", value_name = "PATH")]
    pub remote_ferry: Option<String>,
    /// For ssh targets: the daemon port whose listeners to report (default 7420)
    #[arg(long = "daemon-port", value_name = "PORT")]
    pub daemon_port: Option<u16>,
    /// Also measure throughput over ssh, one stream and four, each way, with the round trip (about 10 s more)
    #[arg(long)]
    pub speed: bool,
    /// Identity (ed25519 private key) to present to a daemon; default: ferry's, else ~/.ssh/id_ed25519
    #[arg(short = 'i', long = "identity", value_name = "FILE")]
    pub identity: Option<std::path::PathBuf>,
    /// known_hosts file to check the daemon's key against (read, never written: the doctor records no key)
    #[arg(long = "known-hosts", value_name = "FILE")]
    pub known_hosts: Option<std::path::PathBuf>,
    /// ferry's config directory (default: $FERRY_CONFIG_DIR or ~/.config/ferry)
    #[arg(long = "config-dir", value_name = "DIR")]
    pub config_dir: Option<std::path::PathBuf>,
}

#[derive(Args, Debug)]
pub struct ShellArgs {
    /// Run the commands in FILE (`-` for stdin) as sftp -b does: stop at the
    /// first failure (exit 1) unless the line starts with `-`; each line is
    /// echoed as written (`ferry> LINE`) unless it starts with `@`
    #[arg(short = 'b', value_name = "FILE")]
    pub batch: Option<std::path::PathBuf>,
    /// The remote shell command (instead of ssh)
    #[arg(short = 'e', long = "rsh", value_name = "COMMAND")]
    pub rsh: Option<String>,
    /// ssh port
    #[arg(short = 'P', value_name = "PORT")]
    pub port: Option<u16>,
    /// Identity file: ssh's, or ferry's ed25519 key for a daemon
    #[arg(short = 'i', value_name = "FILE")]
    pub identity: Option<String>,
    /// Option passed to ssh as -o (repeatable)
    #[arg(short = 'o', value_name = "OPTION")]
    pub ssh_option: Vec<String>,
    /// ssh configuration file
    #[arg(short = 'F', value_name = "FILE")]
    pub ssh_config: Option<String>,
    /// How get and put talk to the remote (see `ferry cp --help`)
    #[arg(long, value_enum, value_name = "HOW", default_value_t)]
    pub transport: crate::transport::child::Transport,
    /// How get and put check files over SFTP (see `ferry cp --help`)
    #[arg(long, value_enum, value_name = "HOW", default_value_t)]
    pub verify: crate::transport::child::VerifyMode,
    /// known_hosts file for daemon keys (host::module; default: in the config directory)
    #[arg(long = "known-hosts", value_name = "FILE")]
    pub known_hosts: Option<std::path::PathBuf>,
    /// Unknown daemon keys: strict (refuse), accept-new (record), ask (default on a terminal)
    #[arg(long = "host-key-check", value_name = "MODE")]
    pub host_key_check: Option<String>,
    /// ferry's config directory, for daemon keys (default: $FERRY_CONFIG_DIR or ~/.config/ferry)
    #[arg(long = "config-dir", value_name = "DIR")]
    pub config_dir: Option<std::path::PathBuf>,
    /// Give up on a daemon that sends nothing for SECONDS
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u64>,
    /// The daemon's port for host::module addresses that name none (default
    /// 7420; -P is ssh's port)
    #[arg(long = "port", value_name = "PORT")]
    pub daemon_port: Option<u16>,
    /// Reach the remote through these jump hosts ([user@]host[:port], comma
    /// separated), passed to ssh as ProxyJump
    #[arg(short = 'J', value_name = "DESTINATION")]
    pub jump: Option<String>,
    /// The ferry program on the remote (default: ferry on its PATH)
    #[arg(long = "remote-ferry", value_name = "PATH")]
    pub remote_ferry: Option<String>,
    #[command(flatten)]
    pub ip: IpFlags,
    /// [user@]host[:directory] over ssh, or host::module[/dir] or
    /// ferry://host[:port]/module[/dir] on a ferry daemon
    pub host: String,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Where to build the demo (default: a new temporary directory, removed after)
    #[arg(long, value_name = "DIR")]
    pub dir: Option<std::path::PathBuf>,
}

/// Parses a size like rsync's `--max-size`: `500`, `1.5K`, `10M`, `1G`
/// (1024-based; `KB`, `MB`, `GB` are 1000-based; a trailing `B` or `iB` is
/// allowed).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let upper = t.to_ascii_uppercase();
    let (digits, mult): (&str, f64) = {
        let units: [(&str, f64); 13] = [
            ("KIB", 1024.0),
            ("MIB", 1048576.0),
            ("GIB", 1073741824.0),
            ("TIB", 1099511627776.0),
            ("KB", 1e3),
            ("MB", 1e6),
            ("GB", 1e9),
            ("TB", 1e12),
            ("K", 1024.0),
            ("M", 1048576.0),
            ("G", 1073741824.0),
            ("T", 1099511627776.0),
            ("B", 1.0),
        ];
        units
            .iter()
            .find(|(u, _)| upper.ends_with(u))
            .map(|(u, m)| (&t[..t.len() - u.len()], *m))
            .unwrap_or((t, 1.0))
    };
    let v: f64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 500, 10M, 1.5G)"))?;
    if !(v >= 0.0 && v.is_finite()) {
        return Err(format!("{s:?} is not a size"));
    }
    Ok((v * mult) as u64)
}

/// Parses a rate like `500`, `10M`, `1G` (KiB/s units without a suffix) into
/// bytes per second.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 1u64 << 10),
        Some((i, 'm' | 'M')) => (&s[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&s[..i], 1 << 30),
        _ => (s, 1 << 10),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("--bwlimit: {s:?} is not a rate (e.g. 500, 10M)"))?;
    if !(v >= 0.0 && v.is_finite()) {
        return Err(format!("--bwlimit: {s:?} is not a rate"));
    }
    Ok((v * mult as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sync(args: &[&str]) -> SyncArgs {
        let mut v = vec!["ferry", "sync"];
        v.extend_from_slice(args);
        match Cli::try_parse_from(v).unwrap().command {
            Command::Sync(s) => s,
            _ => unreachable!(),
        }
    }

    #[test]
    fn rsync_bundles_parse() {
        let s = sync(&["-avzh", "--delete", "--progress", "a/", "b/"]);
        assert!(s.archive && s.compress && s.human && s.delete && s.progress);
        assert_eq!(s.verbose, 1);
        let s = sync(&["-an", "-e", "ssh -p 2222", "a", "h:b"]);
        assert!(s.dry_run);
        assert_eq!(s.rsh.as_deref(), Some("ssh -p 2222"));
    }

    #[test]
    fn scp_flags_parse() {
        let c = match Cli::try_parse_from([
            "ferry", "cp", "-rpq", "-P", "2222", "-l", "800", "a", "h:b",
        ])
        .unwrap()
        .command
        {
            Command::Cp(c) => c,
            _ => unreachable!(),
        };
        assert!(c.recursive && c.preserve && c.quiet);
        assert_eq!(c.port, Some(2222));
        assert_eq!(c.limit, Some(800));
    }

    #[test]
    fn verify_parses_and_defaults_to_auto() {
        use crate::transport::child::VerifyMode;
        assert_eq!(sync(&["a", "h:b"]).verify, VerifyMode::Auto);
        assert_eq!(
            sync(&["--verify", "reread", "a", "h:b"]).verify,
            VerifyMode::Reread
        );
        assert!(Cli::try_parse_from(["ferry", "sync", "--verify", "maybe", "a", "h:b"]).is_err());
    }

    #[test]
    fn bad_flags_are_errors() {
        assert!(Cli::try_parse_from(["ferry", "sync", "--frobnicate", "a", "b"]).is_err());
        assert!(Cli::try_parse_from(["ferry", "sync", "-q", "-v", "a", "b"]).is_err());
        assert!(Cli::try_parse_from(["ferry", "sync", "onlyone"]).is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("500").unwrap(), 500);
        assert_eq!(parse_size("2K").unwrap(), 2048);
        assert_eq!(parse_size("1.5k").unwrap(), 1536);
        assert_eq!(parse_size("10MB").unwrap(), 10_000_000);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("3b").unwrap(), 3);
        assert!(parse_size("big").is_err());
        assert!(parse_size("-1K").is_err());
        let s = sync(&["-aWxI", "--max-size=1M", "--min-size", "10", "a/", "b/"]);
        assert!(s.whole_file && s.one_file_system && s.ignore_times);
        assert_eq!((s.max_size, s.min_size), (Some(1 << 20), Some(10)));
    }

    #[test]
    fn output_flags_parse() {
        let s = sync(&[
            "-ai",
            "--out-format=%n %l",
            "--log-file",
            "/tmp/l",
            "--info=progress2,stats2",
            "--identity",
            "k",
            "a/",
            "b/",
        ]);
        assert!(s.itemize_changes && s.archive);
        assert_eq!(s.out_format.as_deref(), Some("%n %l"));
        assert_eq!(s.info, ["progress2", "stats2"]);
        assert_eq!(
            s.daemon.identity.as_deref(),
            Some(std::path::Path::new("k"))
        );
        assert!(Cli::try_parse_from(["ferry", "sync", "--info=frobs", "a", "b"]).is_err());
        let c = match Cli::try_parse_from([
            "ferry",
            "cp",
            "-3",
            "-J",
            "jump",
            "-i",
            "key",
            "--itemize-changes",
            "h1:a",
            "h2:b",
        ])
        .unwrap()
        .command
        {
            Command::Cp(c) => c,
            _ => unreachable!(),
        };
        assert!(c.through_local && c.itemize_changes);
        assert_eq!(c.jump.as_deref(), Some("jump"));
        assert_eq!(c.identity.as_deref(), Some("key"));
    }

    #[test]
    fn atomic_and_backup_dir_parse() {
        let s = sync(&["-a", "--atomic", "--backup-dir", "../prev", "a/", "h:b/"]);
        assert!(s.atomic);
        assert_eq!(
            s.backup_dir.as_deref(),
            Some(std::path::Path::new("../prev"))
        );
        assert!(Cli::try_parse_from(["ferry", "sync", "--atomic", "--inplace", "a", "b"]).is_err());
        assert!(Cli::try_parse_from(["ferry", "sync", "--backup-dir", "x", "a", "b"]).is_err());
        let c = Cli::try_parse_from(["ferry", "cp", "-r", "--atomic", "a", "h:b"]).unwrap();
        assert!(matches!(c.command, Command::Cp(c) if c.atomic));
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("100").unwrap(), 100 << 10);
        assert_eq!(parse_rate("10M").unwrap(), 10 << 20);
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("-1").is_err());
    }
}
