//! The command line: parses flags into a [`Plan`], runs it with a printer
//! attached, and turns the outcome into an exit code. No transfer logic here.

pub mod args;
mod demo;
mod doctor;
mod fanout;
mod itemize;
mod jobs;
mod json;
mod keys;
mod long_listing;
mod mistakes;
pub mod output;
mod prompt;
mod s3;
mod shell;
mod signals;
mod stdout;

use crate::error::TransferError;
use crate::location::Location;
use crate::proto::Options;
use crate::session::Cancel;
use crate::transfer::{self, Plan};
use crate::transport::child::SshOptions;
use crate::transport::daemon::DaemonOptions;
use args::{Cli, Command, CpArgs, SyncArgs};
use clap::{CommandFactory, FromArgMatches};
use output::Printer;
use std::ffi::OsString;

/// Exit codes (documented in the README).
pub mod exit {
    pub const OK: i32 = 0;
    pub const USAGE: i32 = 1;
    pub const PARTIAL: i32 = 23;
    /// `ferry fanout`: some hosts missed the job (named on stderr).
    pub const FANOUT_PARTIAL: i32 = 24;
}

/// Runs the program with these arguments; returns the exit code.
pub fn main(argv: Vec<OsString>) -> i32 {
    let matches = match Cli::command().try_get_matches_from(&argv) {
        Ok(m) => m,
        Err(e) => {
            let code = if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
            let _ = e.print();
            return code;
        }
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return exit::USAGE;
        }
    };
    if let Some(url) = &cli.s3_endpoint {
        crate::store::s3::config::set_endpoint(url);
    }
    if let Some(algo) = &cli.s3_checksum {
        crate::store::s3::config::set_checksum(algo);
    }
    // --json: an error that ends the run is a JSON line on stdout too
    let json = match &cli.command {
        Command::Sync(a) => a.json,
        Command::Cp(a) => a.json,
        Command::Ls(a) => a.json,
        Command::Fanout(a) => a.json,
        _ => false,
    };
    let result = match cli.command {
        Command::Sync(a) => {
            let sub = matches.subcommand_matches("sync").expect("sync was parsed");
            mistakes::sync_key_after_itemize(&argv)
                .and_then(|()| filter_rules(sub))
                .and_then(|(filters, dir_merges)| sync(a, filters, dir_merges))
        }
        Command::Cp(a) => cp(a),
        Command::Fanout(a) => fanout::run(a),
        Command::Serve(a) => serve(a),
        Command::Demo(a) => demo::run(a),
        Command::Keygen(a) => keys::keygen(a),
        Command::Trust(t) => keys::trust(t),
        Command::CopyId(a) => keys::copy_id(a),
        Command::Ls(a) => keys::ls(a),
        Command::Shell(a) => shell::run(a),
        Command::Doctor(a) => doctor::run(a),
        Command::S3(c) => s3::run(c),
        Command::ApiKey(c) => jobs::api_key(c),
        Command::Job(c) => jobs::job(c),
        Command::DashboardLink(a) => jobs::dashboard_link(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            if json {
                json::fatal(&e);
            }
            eprintln!("ferry: {e}");
            e.exit_code()
        }
    }
}

/// `--include` and `--exclude` in the order they were given (first match wins).
fn ordered_filters(m: &clap::ArgMatches) -> Vec<(bool, Vec<u8>)> {
    let mut rules: Vec<(usize, bool, Vec<u8>)> = Vec::new();
    for (id, include) in [("include", true), ("exclude", false)] {
        if let (Some(vals), Some(idx)) = (m.get_many::<String>(id), m.indices_of(id)) {
            for (v, i) in vals.zip(idx) {
                rules.push((i, include, v.as_bytes().to_vec()));
            }
        }
    }
    rules.sort_by_key(|r| r.0);
    rules.into_iter().map(|(_, i, p)| (i, p)).collect()
}

/// All filter rules in the order they were given: `--include`/`--exclude`
/// and the lines of each `--include-from`/`--exclude-from` file where that flag
/// stands (blank lines and lines starting with `#` or `;` are skipped, as in
/// rsync; `-` reads standard input).
/// `dir-merge` rules come back apart, each with the number of rules before it.
type DirMerges = Vec<(u32, Vec<u8>)>;
/// Include/exclude rules in order: (include?, pattern).
type Rules = Vec<(bool, Vec<u8>)>;

fn filter_rules(m: &clap::ArgMatches) -> Result<(Rules, DirMerges), TransferError> {
    // (where, order within, include? (None: dir-merge), pattern or file name)
    let mut rules: Vec<(usize, usize, Option<bool>, Vec<u8>)> = ordered_filters(m)
        .into_iter()
        .zip(
            ["include", "exclude"]
                .iter()
                .flat_map(|id| m.indices_of(id).into_iter().flatten())
                .collect::<std::collections::BTreeSet<_>>(),
        )
        .map(|((inc, p), i)| (i, 0, Some(inc), p))
        .collect();
    // -F: rsync's shorthand for "dir-merge /.rsync-filter"; -FF also
    // excludes the .rsync-filter files themselves
    // (a count has a default of 0, and so an index, when -F is not given)
    let n = m.get_count("filter_files");
    if let Some(i) = m
        .indices_of("filter_files")
        .and_then(|mut i| i.next())
        .filter(|_| n > 0)
    {
        rules.push((i, 0, None, b"/.rsync-filter".to_vec()));
        if n > 1 {
            rules.push((i, 1, Some(false), b".rsync-filter".to_vec()));
        }
    }
    for (id, include) in [("include_from", true), ("exclude_from", false)] {
        let (Some(files), Some(idx)) = (m.get_many::<std::path::PathBuf>(id), m.indices_of(id))
        else {
            continue;
        };
        for (file, i) in files.zip(idx) {
            let text = if file.as_os_str() == "-" {
                let mut v = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut v)
                    .map_err(|e| TransferError::local(String::from("standard input"), &e))?;
                v
            } else {
                std::fs::read(file).map_err(|e| {
                    TransferError::Usage(format!(
                        "--{}: cannot read {}: {}",
                        id.replace('_', "-"),
                        file.display(),
                        crate::error::io_text(&e)
                    ))
                })?
            };
            let lines = text
                .split(|&b| b == b'\n')
                .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
                .filter(|l| !l.is_empty() && !l.starts_with(b"#") && !l.starts_with(b";"));
            for (j, line) in lines.enumerate() {
                rules.push((i, j, Some(include), line.to_vec()));
            }
        }
    }
    if let (Some(vals), Some(idx)) = (m.get_many::<String>("filter"), m.indices_of("filter")) {
        for (v, i) in vals.zip(idx) {
            let mut expanded = Vec::new();
            expand_filter(v.as_bytes(), 0, &mut expanded)?;
            for (j, (inc, p)) in expanded.into_iter().enumerate() {
                rules.push((i, j, inc, p));
            }
        }
    }
    rules.sort_by_key(|r| (r.0, r.1));
    let (mut plain, mut dir_merges) = (Vec::new(), Vec::new());
    for (_, _, inc, p) in rules {
        match inc {
            Some(inc) => plain.push((inc, p)),
            None => dir_merges.push((plain.len() as u32, p)),
        }
    }
    Ok((plain, dir_merges))
}

/// One `--filter` rule as include/exclude rules: a merge file's lines
/// (blank and comment lines skipped), merged files within it too, at most a
/// few levels deep.
fn expand_filter(
    rule: &[u8],
    depth: usize,
    out: &mut Vec<(Option<bool>, Vec<u8>)>,
) -> Result<(), TransferError> {
    use crate::filter::FilterRule;
    use std::os::unix::ffi::OsStringExt;
    match FilterRule::parse(rule).map_err(|e| TransferError::Usage(e.to_string()))? {
        FilterRule::Include(p) => out.push((Some(true), p)),
        FilterRule::Exclude(p) => out.push((Some(false), p)),
        FilterRule::DirMerge(name) => out.push((None, name)),
        FilterRule::Merge(file) => {
            if depth >= 8 {
                return Err(TransferError::Usage(
                    "--filter: merge files nested more than 8 deep".into(),
                ));
            }
            let path = std::path::PathBuf::from(std::ffi::OsString::from_vec(file));
            let text = std::fs::read(&path).map_err(|e| {
                TransferError::Usage(format!(
                    "--filter merge: cannot read {}: {}",
                    path.display(),
                    crate::error::io_text(&e)
                ))
            })?;
            for line in text
                .split(|&b| b == b'\n')
                .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
                .filter(|l| !l.is_empty() && !l.starts_with(b"#") && !l.starts_with(b";"))
            {
                expand_filter(line, depth + 1, out)?;
            }
        }
    }
    Ok(())
}

/// `--files-from`: each path listed in `list`, below the one source directory
/// (`dir/./path`, so that `-R` names it from there).
fn files_from(
    list: &std::path::Path,
    sources: &[Location],
) -> Result<Vec<Location>, TransferError> {
    let [base] = sources else {
        return Err(TransferError::Usage(
            "--files-from takes one source directory (the paths in the list are below it)".into(),
        ));
    };
    let text = if list.as_os_str() == "-" {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut v)
            .map_err(|e| TransferError::local(String::from("standard input"), &e))?;
        v
    } else {
        std::fs::read(list).map_err(|e| {
            TransferError::Usage(format!(
                "--files-from: cannot read {}: {}",
                list.display(),
                crate::error::io_text(&e)
            ))
        })?
    };
    let below = |dir: &[u8], line: &[u8]| {
        let mut p = dir.strip_suffix(b"/").unwrap_or(dir).to_vec();
        p.extend_from_slice(b"/./");
        p.extend_from_slice(line.trim_ascii_start().strip_prefix(b"/").unwrap_or(line));
        p
    };
    let mut out = Vec::new();
    for line in text.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        out.push(match base {
            Location::Local(dir) => Location::Local(below(dir, line)),
            Location::Ssh { user, host, path } => Location::Ssh {
                user: user.clone(),
                host: host.clone(),
                path: below(path, line),
            },
            _ => {
                return Err(TransferError::Usage(
                    "--files-from reads from a local or ssh source".into(),
                ))
            }
        });
    }
    if out.is_empty() {
        return Err(TransferError::Usage(format!(
            "--files-from: {} lists no path",
            list.display()
        )));
    }
    Ok(out)
}

/// The sources and the destination: `first` and `rest` are every path given
/// (clap takes them in two arguments so that flags may come between them).
fn locations(
    first: &OsString,
    rest: &[OsString],
) -> Result<(Vec<Location>, Location), TransferError> {
    let parse = |p: &OsString| match Location::parse(p) {
        Err(e) => Err(TransferError::Usage(e.to_string())),
        // `host::` or `ferry://host/` alone: a copy needs a module
        Ok(Location::Daemon { host, port, path }) if path.iter().all(|&b| b == b'/') => {
            let host = if host.contains(':') {
                format!("[{host}]")
            } else {
                host
            };
            let list = match port {
                Some(port) => format!("ferry://{host}:{port}/"),
                None => format!("{host}::"),
            };
            Err(TransferError::Usage(format!(
                "{}: name a module (ferry ls {list} lists them)",
                p.to_string_lossy()
            )))
        }
        Ok(l) => Ok(l),
    };
    let (dest, sources) = rest.split_last().expect("clap requires two paths");
    Ok((
        std::iter::once(first)
            .chain(sources)
            .map(parse)
            .collect::<Result<_, _>>()?,
        parse(dest)?,
    ))
}

/// Whether one of `--delete-before/-during/-after/-delay` was given (each
/// implies `--delete`, as in rsync).
fn dest_side_deletes(a: &SyncArgs) -> bool {
    a.delete_before || a.delete_during || a.delete_after || a.delete_delay
}

/// rsync's destination-side flags as the request carries them.
fn dest_side(a: &SyncArgs) -> Result<crate::proto::DestSide, TransferError> {
    use crate::proto::{BasisKind, DeleteTiming, MAX_BASIS_DIRS, MAX_PATH};
    use std::os::unix::ffi::OsStrExt;
    let (kind, dirs) = if !a.copy_dest.is_empty() {
        (BasisKind::Copy, &a.copy_dest)
    } else if !a.compare_dest.is_empty() {
        (BasisKind::Compare, &a.compare_dest)
    } else {
        (BasisKind::Link, &a.link_dest)
    };
    if dirs.len() > MAX_BASIS_DIRS {
        return Err(TransferError::Usage(format!(
            "{}: at most {MAX_BASIS_DIRS} directories",
            kind.flag()
        )));
    }
    let mut basis_dirs = Vec::new();
    for d in dirs {
        let b = d.as_os_str().as_bytes();
        if b.is_empty() || b.len() > MAX_PATH || b.contains(&0) {
            return Err(TransferError::Usage(format!(
                "{}: {:?} is not a directory name",
                kind.flag(),
                d
            )));
        }
        basis_dirs.push(b.to_vec());
    }
    Ok(crate::proto::DestSide {
        basis_dirs,
        basis_kind: kind,
        remove_source_files: a.remove_source_files,
        inplace: a.inplace,
        chown: a.chown.as_ref().map(|c| c.as_bytes().to_vec()),
        atomic: a.atomic,
        backup_dir: match &a.backup_dir {
            Some(d) if d.as_os_str().is_empty() || d.as_os_str().as_bytes().contains(&0) => {
                return Err(TransferError::Usage(format!(
                    "--backup-dir: {d:?} is not a directory name"
                )))
            }
            Some(d) => Some(d.as_os_str().as_bytes().to_vec()),
            None => None,
        },
        delete_timing: if a.delete_before {
            DeleteTiming::Before
        } else if a.delete_during {
            DeleteTiming::During
        } else if a.delete_delay {
            DeleteTiming::Delay
        } else {
            DeleteTiming::After
        },
    })
}

fn sync(
    a: SyncArgs,
    filters: Vec<(bool, Vec<u8>)>,
    dir_merges: DirMerges,
) -> Result<i32, TransferError> {
    let root = rustix::process::geteuid().is_root();
    // as in rsync, --files-from turns off the -r that -a brings (not an explicit -r)
    let recursive = a.recursive || (a.archive && a.files_from.is_none());
    let delete = a.delete || a.delete_excluded || dest_side_deletes(&a);
    if delete && !recursive {
        return Err(TransferError::Usage(
            "--delete does not work without -r (or -a)".into(),
        ));
    }
    let progress = a.progress || a.partial_progress;
    let options = Options {
        recursive,
        links: a.links || a.archive,
        follow_links: a.copy_links,
        perms: a.perms || a.archive,
        times: a.times || a.archive,
        owner: a.owner || (a.archive && root),
        group: a.group || (a.archive && root),
        delete,
        checksum: a.checksum,
        update: a.update,
        dry_run: a.dry_run,
        hard_links: a.hard_links,
        link_marks: a.hard_links,
        zstd_stream: a.compress || a.compress_level.is_some(),
        sparse_holes: a.sparse,
        sparse: a.sparse,
        compress: a.compress || a.compress_level.is_some(),
        compress_level: a.compress_level.unwrap_or(0),
        fsync: a.fsync,
        partial: !a.no_partial || a.partial_progress,
        cp_mode: false,
        dirs: a.dirs || a.files_from.is_some(),
        file_events: a.verbose > 0
            || progress
            || a.dry_run
            || a.json
            || a.itemize_changes
            || a.out_format.is_some()
            || a.log_file.is_some()
            || a.info.iter().any(|i| i == "stats2" || i == "progress2"),
        streams: 0, // below, once the locations are known
        backup_suffix: a
            .backup
            .then(|| a.suffix.clone().unwrap_or_else(|| "~".into()).into_bytes()),
        filters,
        bwlimit: match &a.bwlimit {
            Some(r) => args::parse_rate(r).map_err(TransferError::Usage)?,
            None => 0,
        },
        symlinks: if a.munge_links {
            crate::proto::LinkPolicy::Munge
        } else if a.safe_links {
            crate::proto::LinkPolicy::Safe
        } else {
            crate::proto::LinkPolicy::Verbatim
        },
        copy_unsafe_links: a.copy_unsafe_links,
        copy_dirlinks: a.copy_dirlinks,
        keep_dirlinks: a.keep_dirlinks,
        dir_merges,
        size_only: a.size_only,
        ignore_times: a.ignore_times,
        ignore_existing: a.ignore_existing,
        existing: a.existing,
        whole_file: a.whole_file,
        delete_excluded: a.delete_excluded,
        one_file_system: a.one_file_system,
        max_size: a.max_size,
        min_size: a.min_size,
        max_delete: a.max_delete,
        relative: a.relative || a.files_from.is_some(),
        mkpath: a.mkpath,
        itemize: a.itemize_changes
            || a.out_format.is_some()
            || a.log_file.is_some()
            || a.json
            || a.verbose > 0 // (so -v lists a deleted directory's entries, as rsync)
            || a.info.iter().any(|i| i == "stats2"),
        chmod: match a.chmod.is_empty() {
            true => None,
            false => {
                crate::chmod::Chmod::parse(&a.chmod)
                    .map_err(|e| TransferError::Usage(e.to_string()))?;
                Some(a.chmod.join(",").into_bytes())
            }
        },
        dest_side: dest_side(&a)?,
    };
    crate::filter::Filters::with_dir_merges(&options.filters, &options.dir_merges)
        .map_err(|e| TransferError::Usage(e.to_string()))?;
    let (sources, dest) = locations(&a.first, &a.paths)?;
    let sources = match &a.files_from {
        Some(list) => files_from(list, &sources)?,
        None => sources,
    };
    let (sources, dest) = with_daemon_port(sources, dest, a.port);
    let options = Options {
        streams: a
            .streams
            .unwrap_or_else(|| default_streams(&sources, &dest)),
        ..options
    };
    let plan = Plan {
        confine: Default::default(),
        sources,
        dest,
        options,
        ssh: SshOptions {
            rsh: a.rsh,
            remote_ferry: a.remote_ferry,
            transport: a.transport,
            verify: a.verify,
            ssh_options: a.daemon.ip.ssh_options(),
            ..Default::default()
        },
        daemon: daemon_options(&a.daemon)?,
    };
    if a.json {
        return run_json(&plan, &json::JsonPrinter::new(progress, a.dry_run), false);
    }
    let mut printer = Printer::new(a.verbose, a.quiet, progress, a.human, a.dry_run);
    printer.progress2 = a.info.iter().any(|i| i == "progress2");
    printer.stats2 = a.info.iter().any(|i| i == "stats2");
    printer.pull = !plan.sources.iter().any(|s| matches!(s, Location::Local(_)));
    printer.dest_shown = match &plan.dest {
        Location::Local(p) | Location::Ssh { path: p, .. } => {
            let p = p.strip_suffix(b"/").unwrap_or(p);
            Some(crate::fs::names::escape(p).to_string())
        }
        // a daemon's, as its module sees it (after the module's name)
        Location::Daemon { path, .. } => {
            let p = path.strip_suffix(b"/").unwrap_or(path);
            let inside = p.iter().position(|&b| b == b'/').map(|i| &p[i + 1..]);
            inside
                .filter(|p| !p.is_empty())
                .map(|p| crate::fs::names::escape(p).to_string())
        }
        _ => None,
    };
    if let Some(lines) = item_lines(
        &plan,
        a.itemize_changes,
        a.out_format.as_deref(),
        a.log_file.as_deref(),
    )? {
        printer = printer.with_lines(lines);
    }
    run_plan(&plan, &printer, a.stats)
}

fn cp(a: CpArgs) -> Result<i32, TransferError> {
    // like scp: progress per file when stdout is a terminal
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let progress = tty && !a.quiet && !a.json;
    // -v as in scp: how the remote is reached, on stderr; nothing more on stdout
    if a.verbose {
        crate::transport::child::set_debug(|line| eprintln!("debug1: {line}"));
    }
    let options = Options {
        file_events: progress || a.json || a.itemize_changes,
        itemize: a.itemize_changes || a.json,
        recursive: a.recursive,
        follow_links: true,
        perms: a.preserve,
        times: a.preserve,
        partial: true,
        cp_mode: true,
        dest_side: crate::proto::DestSide {
            atomic: a.atomic,
            ..Default::default()
        },
        streams: 0, // below, once the locations are known
        bwlimit: a.limit.map(|kbit| kbit * 1000 / 8).unwrap_or(0),
        ..Default::default()
    };
    let (sources, dest) = locations(&a.first, &a.paths)?;
    if !a.recursive {
        refuse_local_dirs(&sources)?;
    }
    let (sources, dest) = with_daemon_port(sources, dest, a.daemon_port);
    let options = Options {
        streams: a
            .streams
            .unwrap_or_else(|| default_streams(&sources, &dest)),
        ..options
    };
    let plan = Plan {
        confine: Default::default(),
        sources,
        dest,
        options,
        daemon: daemon_options(&args::DaemonFlags {
            identity: a.identity.clone().map(Into::into),
            known_hosts: a.known_hosts.clone(),
            host_key_check: a.host_key_check.clone(),
            config_dir: a.config_dir.clone(),
            retry: a.retry,
            ip: a.ip,
        })?,
        ssh: SshOptions {
            rsh: a.rsh,
            port: a.port,
            identity: a.identity,
            ssh_options: [
                a.ssh_option,
                a.jump
                    .map(|j| format!("ProxyJump={j}"))
                    .into_iter()
                    .collect(),
                a.ip.ssh_options(),
            ]
            .concat(),
            config: a.ssh_config,
            compress: a.ssh_compress,
            remote_ferry: a.remote_ferry,
            extra: false,
            transport: a.transport,
            verify: a.verify,
            through_local: a.through_local,
        },
    };
    if a.json {
        return run_json(&plan, &json::JsonPrinter::new(false, false), true);
    }
    let mut printer = Printer::new(0, a.quiet, progress, false, false);
    if let Some(lines) = item_lines(&plan, a.itemize_changes, None, None)? {
        printer = printer.with_lines(lines);
    }
    let dirs = DirRefusals::default();
    let cancel = Cancel::default();
    let watch = signals::watch(&cancel, false);
    let outcome = transfer::run(
        &plan,
        &|e| {
            dirs.see(&e);
            printer.event(e)
        },
        &cancel,
    );
    // the transfer is over: from here a signal acts as default
    drop(watch);
    let outcome = signals::outcome(&cancel, outcome)?;
    printer.finish(&outcome, false);
    let code = dirs.exit_code(outcome.summary.errors, true);
    if code == exit::PARTIAL {
        eprintln!(
            "ferry: {} error(s): some files were not transferred (exit {})",
            outcome.summary.errors,
            exit::PARTIAL
        );
    }
    Ok(code)
}

/// scp exits 1 for a directory without -r. A remote one is found by the
/// side that lists it, so `cp` counts those errors and, when they are the
/// run's only errors, exits 1 rather than 23 ("partial") — in text and in
/// `--json` alike, so a script reads the code a person does.
#[derive(Default)]
struct DirRefusals(std::sync::atomic::AtomicU64);

impl DirRefusals {
    fn see(&self, e: &crate::proto::Event) {
        if e.kind == crate::proto::EventKind::Error
            && e.text.ends_with(b": not a regular file (use -r)")
        {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The exit code for a run that ended with `errors`; `cp` says whether
    /// the directory rule applies (`sync` keeps rsync's notice and exit 0).
    fn exit_code(&self, errors: u64, cp: bool) -> i32 {
        match errors {
            0 => exit::OK,
            n if cp && n == self.0.load(std::sync::atomic::Ordering::Relaxed) => exit::USAGE,
            _ => exit::PARTIAL,
        }
    }
}

/// `cp` without `-r`: a local source that is a directory ends the command
/// before anything is copied, with exit 1, as scp says "ckpt: not a regular
/// file" and exits 1 (rsync, and so `sync`, skips it with a notice and exits
/// 0). A remote directory is reported by the side that lists it (exit 1
/// too, when it is the run's only error).
fn refuse_local_dirs(sources: &[Location]) -> Result<(), TransferError> {
    use std::os::unix::ffi::OsStrExt;
    for s in sources {
        if let Location::Local(p) = s {
            if std::path::Path::new(std::ffi::OsStr::from_bytes(p)).is_dir() {
                return Err(TransferError::Usage(format!(
                    "skipping directory {}: not a regular file (cp copies a directory with -r)",
                    crate::fs::names::escape(p)
                )));
            }
        }
    }
    Ok(())
}

/// rsync's per-entry lines for `-i`, `--out-format` and `--log-file`, if any
/// is asked for: `<` in the code when the destination is remote, as rsync
/// shows a push.
fn item_lines(
    plan: &Plan,
    itemize: bool,
    out_format: Option<&str>,
    log_file: Option<&std::path::Path>,
) -> Result<Option<output::Lines>, TransferError> {
    let side = line_side(plan);
    let stdout = match (out_format, itemize) {
        (Some(f), _) => Some(itemize::OutFormat::parse(f).map_err(TransferError::Usage)?),
        (None, true) => Some(itemize::OutFormat::itemize()),
        (None, false) => None,
    }
    .map(|f| f.on(side.clone()));
    let log = match log_file {
        Some(p) => Some((
            itemize::LogFile::open(p).map_err(TransferError::Usage)?,
            itemize::OutFormat::itemize().on(side),
        )),
        None => None,
    };
    if stdout.is_none() && log.is_none() {
        return Ok(None);
    }
    let remote = matches!(plan.dest, Location::Ssh { .. } | Location::Daemon { .. });
    Ok(Some(output::Lines {
        direction: itemize::Direction {
            arrow: if remote { '<' } else { '>' },
            times: plan.options.times,
        },
        stdout,
        log,
    }))
}

/// Which side of the transfer rsync's client would be (`%o`, `%f`): the
/// receiver in a pull, the sender in a push, with the one local source's
/// directory that names are relative to (`src` for `src/`, `.` for `src`;
/// none with several sources or `-R`). A local copy keeps ferry's own
/// `recv` and destination names (README, differences from rsync).
fn line_side(plan: &Plan) -> itemize::Side {
    if matches!(plan.dest, Location::Local(_))
        && plan.sources.iter().all(|s| matches!(s, Location::Local(_)))
    {
        return itemize::Side::ByArrow;
    }
    let relative = plan.options.relative;
    let local: Vec<&[u8]> = plan
        .sources
        .iter()
        .filter_map(|s| match s {
            Location::Local(p) => Some(p.as_slice()),
            _ => None,
        })
        .collect();
    if local.is_empty() {
        return itemize::Side::Receiver;
    }
    let root = match (local.as_slice(), relative) {
        ([p], false) => Some(match p.strip_suffix(b"/") {
            Some(dir) => dir.to_vec(),
            None => match p.iter().rposition(|&b| b == b'/') {
                Some(i) => p[..i].to_vec(),
                None => Vec::new(),
            },
        }),
        _ => None,
    };
    itemize::Side::Sender { root }
}

/// Streams when `--streams` is not given: to a daemon one per core, over ssh
/// one per two cores (each ssh stream brings an `ssh` and an `sshd` process
/// doing its cipher), at most 4 either way.
fn default_streams(sources: &[Location], dest: &Location) -> u8 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let ssh = sources
        .iter()
        .chain([dest])
        .any(|l| matches!(l, Location::Ssh { .. }));
    let per_stream = if ssh { 2 } else { 1 };
    (cores / per_stream).clamp(1, 4) as u8
}

/// Daemon-client flags, checked.
/// `--port`: the daemon's port, for daemon addresses that name none.
fn with_daemon_port(
    sources: Vec<Location>,
    dest: Location,
    port: Option<u16>,
) -> (Vec<Location>, Location) {
    let with_port = |l: Location| match l {
        Location::Daemon {
            host,
            port: None,
            path,
        } if port.is_some() => Location::Daemon { host, port, path },
        other => other,
    };
    (
        sources.into_iter().map(with_port).collect(),
        with_port(dest),
    )
}

pub(crate) fn daemon_options(f: &args::DaemonFlags) -> Result<DaemonOptions, TransferError> {
    Ok(DaemonOptions {
        identity: f.identity.clone(),
        known_hosts: f.known_hosts.clone(),
        host_key: prompt::host_key_policy(
            f.host_key_check
                .as_deref()
                .map(str::parse)
                .transpose()
                .map_err(|e: crate::trust::known_hosts::UnknownHostKeyCheck| {
                    TransferError::Usage(e.to_string())
                })?,
        ),
        config_dir: f.config_dir.clone(),
        timeout: f
            .retry
            .timeout
            .filter(|&t| t > 0)
            .map(std::time::Duration::from_secs),
        retries: f.retry.retries,
        ip_version: f.ip.version(),
    })
}

fn run_plan(plan: &Plan, printer: &Printer, stats: bool) -> Result<i32, TransferError> {
    let cancel = Cancel::default();
    let watch = signals::watch(&cancel, false);
    let outcome = transfer::run(plan, &|e| printer.event(e), &cancel);
    // the transfer is over: from here a signal acts as default
    drop(watch);
    let outcome = signals::outcome(&cancel, outcome)?;
    printer.finish(&outcome, stats);
    if outcome.summary.errors > 0 {
        eprintln!(
            "ferry: {} error(s): some files were not transferred (exit {})",
            outcome.summary.errors,
            exit::PARTIAL
        );
        return Ok(exit::PARTIAL);
    }
    Ok(exit::OK)
}

/// [`run_plan`] with `--json`: every event and the summary as JSON lines.
fn run_json(plan: &Plan, printer: &json::JsonPrinter, cp: bool) -> Result<i32, TransferError> {
    let cancel = Cancel::default();
    let watch = signals::watch(&cancel, true);
    let dirs = DirRefusals::default();
    let outcome = transfer::run(
        plan,
        &|e| {
            dirs.see(&e);
            printer.event(e)
        },
        &cancel,
    );
    // the transfer is over: from here a signal acts as default
    drop(watch);
    let outcome = signals::outcome(&cancel, outcome)?;
    let code = dirs.exit_code(outcome.summary.errors, cp);
    printer.finish(&outcome, code);
    if code == exit::PARTIAL {
        eprintln!(
            "ferry: {} error(s): some files were not transferred (exit {code})",
            outcome.summary.errors
        );
    }
    Ok(code)
}

fn serve(a: args::ServeArgs) -> Result<i32, TransferError> {
    if a.stdio {
        // not yet speaking: an error is one line on stderr (ssh forwards it)
        let stream = crate::server::stdio::open()?;
        return match crate::server::stdio::serve(stream) {
            Ok(_) => Ok(exit::OK),
            // this end's own file or request error (sent to the client as
            // its fatal error, which the client prints), the client's own
            // ("transfer cancelled"), or the client hanging up: the client
            // has said it (or is gone), and ssh would show it a second time
            Err(
                e @ (TransferError::Remote(_)
                | TransferError::Connection(_)
                | TransferError::Local { .. }
                | TransferError::Usage(_)),
            ) => Ok(e.exit_code()),
            Err(e) => Err(e),
        };
    }
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let log = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if a.log_format == "json" {
        log.json().try_init()
    } else {
        log.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init()
    };
    let dir = crate::trust::config_dir(a.config_dir.as_deref());
    let overrides = crate::server::config::Overrides {
        config: a.config,
        listen: a.listen,
        identity: a.identity,
        authorized_keys: a.authorized_keys,
        modules: a.module,
        max_connections: a.max_connections,
        max_startups: a.max_startups,
        preauth_timeout_secs: a.preauth_timeout,
    };
    // every refusal here exits 1 as it always has, the unreadable file too
    let config = crate::server::config::DaemonConfig::build(&overrides, &dir)
        .map_err(|e| TransferError::Usage(e.to_string()))?;
    // before any thread (the API's included) makes a malloc arena
    crate::server::memory::cap_arenas();
    crate::server::daemon::raise_open_files();
    // an address in use fails here, before a key is made or a warning logged
    let listeners = crate::server::daemon::bind(&config)?;
    let api_tls = match (&a.api_cert, &a.api_key_file) {
        (Some(cert), Some(key)) => Some(crate::api::tls::TlsSource::Files {
            cert: cert.clone(),
            key: key.clone(),
        }),
        _ if a.api_tls => Some(crate::api::tls::TlsSource::DaemonKey(
            config.identity.clone(),
        )),
        _ => None,
    };
    let api_rate = match &a.api_rate {
        Some(r) => r.parse().map_err(TransferError::Usage)?,
        None => Default::default(),
    };
    // the API's address too (exit 11 when in use, as the daemon's)
    let api_bound = match &a.api {
        Some(listen) => Some(
            crate::api::bind(listen, api_tls.is_some()).map_err(|e| match e {
                crate::api::BindError::Usage(e) => TransferError::Usage(e.to_string()),
                crate::api::BindError::Io(listen, text) => TransferError::Local {
                    path: format!("--api {listen}"),
                    text,
                },
            })?,
        ),
        None => None,
    };
    let api = match api_bound {
        Some(bound) => {
            // the API's certificate may be made from the daemon's key: make it now
            crate::server::daemon::fingerprint(&config)
                .map_err(|e| TransferError::Usage(e.to_string()))?;
            let cfg = crate::api::ApiConfig {
                state_dir: crate::api::state_dir(&dir),
                identity: config.identity.clone(),
                config_dir: dir.clone(),
                modules: config.modules.clone(),
                rate: api_rate,
                tls: api_tls,
            };
            Some(crate::api::start(cfg, bound).map_err(|e| TransferError::Usage(e.to_string()))?)
        }
        None => None,
    };
    let shutdown = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, shutdown.clone())
            .map_err(|e| TransferError::local("signal handler", &e))?;
    }
    crate::server::daemon::run(config, listeners, shutdown, &|addrs| {
        // one line on stdout, for scripts and tests: where to connect
        for a in addrs {
            println!("listening on {a}");
        }
        if let Some(a) = &api {
            let scheme = if a.tls { "https" } else { "http" };
            println!("api listening on {scheme}://{}", a.addr);
            if let Some(pin) = &a.pin {
                println!("api certificate pin {pin}");
            }
        }
    })?;
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_order_is_kept() {
        let m = Cli::command()
            .try_get_matches_from([
                "ferry",
                "sync",
                "--include",
                "keep.tmp",
                "--exclude",
                "*.tmp",
                "--include",
                "x",
                "a",
                "b",
            ])
            .unwrap();
        let sub = m.subcommand_matches("sync").unwrap();
        assert_eq!(
            ordered_filters(sub),
            vec![
                (true, b"keep.tmp".to_vec()),
                (false, b"*.tmp".to_vec()),
                (true, b"x".to_vec())
            ]
        );
    }
}
