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
//! ```

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

/// Parses `name=path[:ro|:rw]`.
pub fn parse_module_flag(s: &str) -> Result<Module, String> {
    let (name, rest) = s
        .split_once('=')
        .ok_or_else(|| format!("--module {s:?}: expected NAME=PATH[:ro]"))?;
    let (path, read_only) = if let Some(p) = rest.strip_suffix(":ro") {
        (p, true)
    } else {
        (rest.strip_suffix(":rw").unwrap_or(rest), false)
    };
    if path.is_empty() {
        return Err(format!("--module {s:?}: empty path"));
    }
    Ok(Module {
        name: name.to_string(),
        path: PathBuf::from(path),
        read_only,
        comment: String::new(),
    })
}

fn check_module(m: &Module) -> Result<(), String> {
    let ok_name = !m.name.is_empty()
        && m.name.len() <= 64
        && m.name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && m.name != "."
        && m.name != "..";
    if !ok_name {
        return Err(format!(
            "module name {:?}: use letters, digits, '-', '_' and '.'",
            m.name
        ));
    }
    if !m.path.is_absolute() {
        return Err(format!(
            "module {}: path {} must be absolute",
            m.name,
            m.path.display()
        ));
    }
    if !m.path.is_dir() {
        return Err(format!(
            "module {}: {} is not a directory",
            m.name,
            m.path.display()
        ));
    }
    Ok(())
}

impl DaemonConfig {
    pub fn build(o: &Overrides, config_dir: &Path) -> Result<DaemonConfig, String> {
        let file: File = match &o.config {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| format!("{}: {}", p.display(), crate::error::io_text(&e)))?;
                toml::from_str(&text).map_err(|e| {
                    format!(
                        "{}: {}",
                        p.display(),
                        e.to_string().lines().collect::<Vec<_>>().join(" ")
                    )
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
            return Err(format!("module {} is defined twice", w[0]));
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
}
