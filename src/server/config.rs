//! The daemon's configuration: a TOML file, and flags that can say everything
//! the file says (flags win).
//!
//! ```toml
//! listen = ["0.0.0.0:7420"]            # who may connect: see the README's note
//! identity = "/etc/ferry/id_ed25519"   # the daemon's key (made on first start)
//! authorized_keys = "/etc/ferry/authorized_keys"
//! max_connections = 64                # authenticated sessions at once
//! max_startups = 256                  # connections still authenticating
//! preauth_timeout_secs = 10
//!
//! [[module]]
//! name = "checkpoints"
//! path = "/srv/ckpt"
//! read_only = false
//! comment = "training checkpoints"
//! symlinks = "safe"                   # verbatim | safe (the default) | munge
//! ```

use crate::error::PathError;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Module {
    pub name: String,
    pub path: PathBuf,
    #[serde(default)]
    pub read_only: bool,
    #[serde(default)]
    pub comment: String,
    /// What the module does with the symlinks clients push into it.
    #[serde(default)]
    pub symlinks: ModuleSymlinks,
}

/// A module's `symlinks` setting: what a client pushing into it may make.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModuleSymlinks {
    /// Every link as the client sent it (its `--safe-links`/`--munge-links` apply).
    Verbatim,
    /// Links that are absolute or climb out of the transfer are skipped (a
    /// client's `--munge-links` is still honoured: a munged link leads nowhere).
    #[default]
    Safe,
    /// Every link is munged (`/rsyncd-munged/` in front of its target).
    Munge,
}

impl ModuleSymlinks {
    /// The policy the receiver applies when a client asked for `asked`.
    pub fn allow(self, asked: crate::proto::LinkPolicy) -> crate::proto::LinkPolicy {
        use crate::proto::LinkPolicy;
        match (self, asked) {
            (ModuleSymlinks::Verbatim, a) => a,
            (ModuleSymlinks::Safe, LinkPolicy::Munge) => LinkPolicy::Munge,
            (ModuleSymlinks::Safe, _) => LinkPolicy::Safe,
            (ModuleSymlinks::Munge, _) => LinkPolicy::Munge,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    listen: Option<Vec<String>>,
    identity: Option<PathBuf>,
    authorized_keys: Option<PathBuf>,
    max_connections: Option<usize>,
    max_startups: Option<usize>,
    preauth_timeout_secs: Option<u64>,
    #[serde(default, rename = "module")]
    modules: Vec<Module>,
}

#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub listen: Vec<String>,
    pub identity: PathBuf,
    pub authorized_keys: PathBuf,
    pub modules: Vec<Module>,
    /// Authenticated sessions served at once; more are refused with a message.
    pub max_connections: usize,
    /// Connections still authenticating; when full, the oldest is dropped so
    /// that a flood of idle connections cannot lock real clients out.
    pub max_startups: usize,
    /// A client must finish the TLS handshake within this.
    pub preauth_timeout: Duration,
}

/// What `ferry serve` flags say (each overrides the file).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub listen: Vec<String>,
    pub identity: Option<PathBuf>,
    pub authorized_keys: Option<PathBuf>,
    /// `name=path` or `name=path:ro`.
    pub modules: Vec<String>,
    pub max_connections: Option<usize>,
    pub max_startups: Option<usize>,
    pub preauth_timeout_secs: Option<u64>,
}

/// Why the daemon's configuration (its file, its flags) cannot be served. The
/// file that cannot be read is a local fault; everything else is the
/// configuration's own (a usage error).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file cannot be read.
    #[error(transparent)]
    Read(#[from] PathError),
    /// The config file is not valid TOML, or has an unknown key.
    #[error("{}:{text}", .path.display())]
    Syntax { path: PathBuf, text: String },
    #[error("--module {0:?}: expected NAME=PATH[:ro]")]
    ModuleFlag(String),
    #[error("--module {0:?}: empty path")]
    EmptyPath(String),
    #[error("module name {0:?}: use letters, digits, '-', '_' and '.'")]
    ModuleName(String),
    #[error("module {name}: path {} must be absolute", .path.display())]
    NotAbsolute { name: String, path: PathBuf },
    #[error("module {name}: {} is not a directory", .path.display())]
    NotADirectory { name: String, path: PathBuf },
    #[error("module {name}: {} does not exist", .path.display())]
    Missing { name: String, path: PathBuf },
    #[error("module {0} is defined twice")]
    Duplicate(String),
}

impl ConfigError {
    /// Whether the error's text contains `s` (what the text-matching callers
    /// and tests ask).
    pub fn contains(&self, s: &str) -> bool {
        self.to_string().contains(s)
    }
}

/// A TOML error as one line, as compilers write it: `LINE:COLUMN: message`
/// (the file name goes before it), without the parser's source excerpt.
fn syntax_text(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().trim_end_matches('.');
    let Some(span) = e.span() else {
        return format!(" {message}");
    };
    let before = &text.as_bytes()[..span.start.min(text.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let column = String::from_utf8_lossy(&before[start..]).chars().count() + 1;
    format!("{line}:{column}: {message}")
}

/// Parses `name=path[:ro|:rw]`.
pub fn parse_module_flag(s: &str) -> Result<Module, ConfigError> {
    let (name, rest) = s
        .split_once('=')
        .ok_or_else(|| ConfigError::ModuleFlag(s.to_string()))?;
    let (path, read_only) = if let Some(p) = rest.strip_suffix(":ro") {
        (p, true)
    } else {
        (rest.strip_suffix(":rw").unwrap_or(rest), false)
    };
    if path.is_empty() {
        return Err(ConfigError::EmptyPath(s.to_string()));
    }
    Ok(Module {
        name: name.to_string(),
        path: PathBuf::from(path),
        read_only,
        comment: String::new(),
        symlinks: ModuleSymlinks::default(),
    })
}

fn check_module(m: &Module) -> Result<(), ConfigError> {
    let ok_name = !m.name.is_empty()
        && m.name.len() <= 64
        && m.name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && m.name != "."
        && m.name != "..";
    if !ok_name {
        return Err(ConfigError::ModuleName(m.name.clone()));
    }
    if !m.path.is_absolute() {
        return Err(ConfigError::NotAbsolute {
            name: m.name.clone(),
            path: m.path.clone(),
        });
    }
    if !m.path.exists() {
        return Err(ConfigError::Missing {
            name: m.name.clone(),
            path: m.path.clone(),
        });
    }
    if !m.path.is_dir() {
        return Err(ConfigError::NotADirectory {
            name: m.name.clone(),
            path: m.path.clone(),
        });
    }
    Ok(())
}

impl DaemonConfig {
    pub fn build(o: &Overrides, config_dir: &Path) -> Result<DaemonConfig, ConfigError> {
        let file: File = match &o.config {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| PathError::new(p, e))?;
                toml::from_str(&text).map_err(|e| ConfigError::Syntax {
                    path: p.clone(),
                    text: syntax_text(&text, &e),
                })?
            }
            None => File::default(),
        };
        let mut modules = file.modules;
        for flag in &o.modules {
            let m = parse_module_flag(flag)?;
            modules.retain(|x| x.name != m.name);
            modules.push(m);
        }
        for m in &modules {
            check_module(m)?;
        }
        let mut names: Vec<&str> = modules.iter().map(|m| m.name.as_str()).collect();
        names.sort();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(ConfigError::Duplicate(w[0].to_string()));
        }
        let listen = if !o.listen.is_empty() {
            o.listen.clone()
        } else {
            file.listen
                .unwrap_or_else(|| vec![format!("0.0.0.0:{}", crate::proto::DEFAULT_PORT)])
        };
        Ok(DaemonConfig {
            listen,
            identity: o
                .identity
                .clone()
                .or(file.identity)
                .unwrap_or_else(|| config_dir.join("id_ed25519")),
            authorized_keys: o
                .authorized_keys
                .clone()
                .or(file.authorized_keys)
                .unwrap_or_else(|| config_dir.join("authorized_keys")),
            modules,
            max_startups: o.max_startups.or(file.max_startups).unwrap_or(256).max(1),
            max_connections: o
                .max_connections
                .or(file.max_connections)
                .unwrap_or(64)
                .max(1),
            preauth_timeout: Duration::from_secs(
                o.preauth_timeout_secs
                    .or(file.preauth_timeout_secs)
                    .unwrap_or(10)
                    .max(1),
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_file() {
        let d = tempfile::tempdir().unwrap();
        let data = d.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let cfg = d.path().join("ferryd.toml");
        std::fs::write(
            &cfg,
            format!(
                "listen = [\"127.0.0.1:9000\"]\nmax_connections = 5\n[[module]]\nname = \"data\"\npath = \"{}\"\ncomment = \"sets\"\n",
                data.display()
            ),
        )
        .unwrap();
        let o = Overrides {
            config: Some(cfg.clone()),
            modules: vec![format!("ckpt={}:ro", data.display())],
            ..Default::default()
        };
        let c = DaemonConfig::build(&o, d.path()).unwrap();
        assert_eq!(c.listen, ["127.0.0.1:9000"]);
        assert_eq!(c.max_connections, 5);
        assert_eq!(c.modules.len(), 2);
        assert!(c.modules.iter().any(|m| m.name == "ckpt" && m.read_only));
        std::fs::write(&cfg, "lissten = 1\n").unwrap();
        let e = DaemonConfig::build(&o, d.path()).unwrap_err();
        assert!(e.contains("lissten"), "{e}");
        let bad = Overrides {
            modules: vec!["x=relative".into()],
            ..Default::default()
        };
        assert!(DaemonConfig::build(&bad, d.path())
            .unwrap_err()
            .contains("absolute"));
    }

    #[test]
    fn the_max_connections_flag_wins_over_the_file() {
        let d = tempfile::tempdir().unwrap();
        let cfg = d.path().join("ferryd.toml");
        std::fs::write(
            &cfg,
            format!(
                "max_connections = 5\n[[module]]\nname = \"data\"\npath = \"{}\"\n",
                d.path().display()
            ),
        )
        .unwrap();
        let with = |flag: Option<usize>, file: bool| {
            let o = Overrides {
                config: file.then(|| cfg.clone()),
                modules: vec![format!("m={}", d.path().display())],
                max_connections: flag,
                ..Default::default()
            };
            DaemonConfig::build(&o, d.path()).unwrap().max_connections
        };
        assert_eq!(with(Some(2), true), 2);
        assert_eq!(with(None, true), 5);
        assert_eq!(with(None, false), 64);
    }
}
