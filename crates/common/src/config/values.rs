//! The values settings are made of: [`Secret`], [`ConfigError`] (exit status 2 naming the
//! setting), durations, non-empty strings, librdkafka property lists, loading `.env`.

use std::{fmt, path::Path, process, str::FromStr, time::Duration};

use clap::Parser;

/// Exit status for bad configuration (clap uses the same one for usage errors).
pub const CONFIG_EXIT_CODE: i32 = crate::exit::CONFIG as i32;

/// A bad setting, found after clap parsed the command line.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting {setting}: {reason}")]
pub struct ConfigError {
    /// The environment variable name of the setting.
    pub setting: &'static str,
    pub reason: String,
}

impl ConfigError {
    pub fn new(setting: &'static str, reason: impl Into<String>) -> Self {
        ConfigError {
            setting,
            reason: reason.into(),
        }
    }

    /// Prints the error and exits with [`CONFIG_EXIT_CODE`].
    pub fn exit(&self) -> ! {
        eprintln!("error: {self}");
        process::exit(CONFIG_EXIT_CODE)
    }
}

/// Loads `.env` from the working directory when present, then parses the command line and
/// environment into `T`. Exits with status 2 and a message naming the setting when that fails.
pub fn load<T: Parser>() -> T {
    load_dotenv(Path::new(".env"));
    T::parse()
}

/// Loads a dotenv file if it exists. Variables already set in the environment win.
pub fn load_dotenv(path: &Path) {
    match dotenvy::from_path(path) {
        Ok(()) => {}
        Err(e) if e.not_found() => {}
        Err(e) => ConfigError::new("(.env file)", format!("{}: {e}", path.display())).exit(),
    }
}

/// A string that must never be shown: `Debug` and `Display` print `[redacted]`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The secret value, for the one place that must send it (a connection, an HTTP header).
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "[redacted]"
        })
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

/// Parses durations such as `250ms`, `10s`, `5m`, `1h 30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("{e} (examples: 250ms, 10s, 5m)"))
}

/// Rejects empty and whitespace-only strings.
pub fn non_empty(s: &str) -> Result<String, String> {
    let t = s.trim();
    if t.is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(t.to_owned())
    }
}

/// librdkafka properties given as `key=value,key=value`. `Debug` shows keys only (values may be
/// credentials such as `sasl.password`).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Properties(pub Vec<(String, String)>);

impl Properties {
    pub fn apply(&self, config: &mut rdkafka::ClientConfig) {
        for (k, v) in &self.0 {
            config.set(k, v);
        }
    }
}

impl fmt::Debug for Properties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(k, _)| k))
            .finish()
    }
}

/// Parses `key=value,key=value` (empty: none).
pub fn parse_properties(s: &str) -> Result<Properties, String> {
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        match item.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                out.push((k.trim().to_owned(), v.trim().to_owned()))
            }
            _ => {
                return Err(format!(
                    "expected key=value, got {:?}",
                    item.split('=').next().unwrap_or("")
                ))
            }
        }
    }
    Ok(Properties(out))
}

/// This machine's (or container's) host name; `localhost` when unknown.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
