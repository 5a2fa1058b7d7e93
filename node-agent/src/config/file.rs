//! The YAML file, and merging the flags over it.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, de};

use super::{Args, ConfigError};

/// A config file is a few hundred bytes; anything near this is a wrong path (e.g. /dev/zero).
const MAX_FILE: u64 = 1 << 20;

/// Values as written: scalars stay strings so that validation can name the field and value.
#[derive(Deserialize, Default, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct FileConfig {
    pub network: Option<String>,
    pub secret_file: Option<PathBuf>,
    pub name: Option<String>,
    #[serde(default, deserialize_with = "one_or_many")]
    pub addresses: Vec<String>,
    #[serde(default, deserialize_with = "one_or_many")]
    pub rolodex: Vec<String>,
    pub tun_name: Option<String>,
    pub mtu: Option<String>,
    pub listen_port: Option<String>,
    pub keepalive: Option<String>,
    pub heartbeat: Option<String>,
    pub punch_ttl: Option<String>,
    pub metrics_listen: Option<String>,
    pub log_format: Option<String>,
    pub busy_poll: Option<String>,
    pub kube: Option<bool>,
    pub mesh_network: Option<String>,
    pub node_name: Option<String>,
    pub namespace: Option<String>,
    pub status_interval: Option<String>,
}

/// Reads and parses the file. A relative `secret-file` is taken relative to the file's
/// directory, so a config and its secret can be mounted together anywhere.
pub(super) fn load(path: &Path) -> Result<FileConfig, ConfigError> {
    let read_err = |reason: String| ConfigError::ReadFile { path: path.to_owned(), reason };
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_FILE + 1).read_to_string(&mut text))
        .map_err(|e| read_err(e.to_string()))?;
    if text.len() as u64 > MAX_FILE {
        return Err(read_err("larger than 1 MiB".into()));
    }
    let mut cfg = parse(&text).map_err(|reason| ConfigError::ParseFile { path: path.to_owned(), reason })?;
    if let (Some(secret), Some(dir)) = (&cfg.secret_file, path.parent())
        && secret.is_relative()
    {
        cfg.secret_file = Some(dir.join(secret));
    }
    Ok(cfg)
}

/// Parses YAML text; the error is one line ending in "at line L, column C".
pub(super) fn parse(text: &str) -> Result<FileConfig, String> {
    let mut opts = serde_saphyr::Options::default();
    opts.with_snippet = false; // the snippet spans several lines
    serde_saphyr::from_str_with_options(text, opts).map_err(|e| one_line(&e.to_string()))
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl FileConfig {
    /// Flags override file values; a list given by flags replaces the file's list.
    pub(super) fn merge(self, a: Args) -> FileConfig {
        fn list(flag: Vec<String>, file: Vec<String>) -> Vec<String> {
            if flag.is_empty() { file } else { flag }
        }
        FileConfig {
            network: a.network.or(self.network),
            secret_file: a.secret_file.or(self.secret_file),
            name: a.name.or(self.name),
            addresses: list(a.addresses, self.addresses),
            rolodex: list(a.rolodex, self.rolodex),
            tun_name: a.tun_name.or(self.tun_name),
            mtu: a.mtu.or(self.mtu),
            listen_port: a.listen_port.or(self.listen_port),
            keepalive: a.keepalive.or(self.keepalive),
            heartbeat: a.heartbeat.or(self.heartbeat),
            punch_ttl: a.punch_ttl.or(self.punch_ttl),
            metrics_listen: a.metrics_listen.or(self.metrics_listen),
            log_format: a.log_format.or(self.log_format),
            busy_poll: a.busy_poll.or(self.busy_poll),
            kube: if a.kube.kube { Some(true) } else { self.kube },
            mesh_network: a.kube.mesh_network.or(self.mesh_network),
            node_name: a.kube.node_name.or(self.node_name),
            namespace: a.kube.namespace.or(self.namespace),
            status_interval: a.kube.status_interval.or(self.status_interval),
        }
    }
}

/// Accepts `key: value` as well as `key: [a, b]` for list fields.
fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct V;
    impl<'de> de::Visitor<'de> for V {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string or a list of strings")
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
            Ok(vec![s.to_owned()])
        }
        fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
            Ok(vec![n.to_string()])
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut v = Vec::new();
            while let Some(s) = seq.next_element::<String>()? {
                v.push(s);
            }
            Ok(v)
        }
    }
    d.deserialize_any(V)
}
