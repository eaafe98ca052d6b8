//! Typed configuration shared by every binary: environment variables with
//! flags that override them (clap), validated once at start so a mistake is
//! reported before anything listens or connects.

use std::{fmt, net::SocketAddr, path::PathBuf, time::Duration};

use clap::Args;
use url::Url;

/// Settings every process needs: where data lives and which backends to use.
#[derive(Debug, Clone, Args)]
pub struct CommonConfig {
    /// Directory for the embedded SQLite store and queue.
    #[arg(long, env = "ORCH_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Directory holding model weights.
    #[arg(long, env = "ORCH_MODELS_DIR", default_value = "./models")]
    pub models_dir: PathBuf,

    /// Redis URL (redis://[:password@]host:port[/db]). Set: queues live in Redis and many
    /// processes share them. Unset: embedded SQLite queues.
    #[arg(long, env = "ORCH_REDIS_URL")]
    pub redis_url: Option<String>,

    /// Prefix of every Redis key, so several deployments can share one Redis.
    #[arg(long, env = "ORCH_REDIS_PREFIX", default_value = "orch")]
    pub redis_prefix: String,

    /// Store database: sqlite://... (default: $ORCH_DATA_DIR/orchestrator.db)
    /// or postgres://...
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,

    /// How long a fetched job stays leased to a worker before another worker
    /// may take it over (heartbeats extend it while the job runs).
    #[arg(long, env = "ORCH_LEASE_MS", default_value_t = 30_000)]
    pub lease_ms: u64,

    /// Qdrant URL (gRPC, e.g. http://127.0.0.1:6334). Set: vectors live in
    /// Qdrant; unset: the embedded vector store in the data directory.
    #[arg(long, env = "QDRANT_URL")]
    pub qdrant_url: Option<String>,

    /// Qdrant collection holding the context chunks.
    #[arg(
        long,
        env = "ORCH_QDRANT_COLLECTION",
        default_value = "orchestrator_chunks"
    )]
    pub qdrant_collection: String,

    /// The model registry file. Default: $ORCH_DATA_DIR/models.toml, written
    /// from the shipped config/models.toml on first start.
    #[arg(long, env = "ORCH_MODELS_CONFIG")]
    pub models_config: Option<PathBuf>,

    /// Workflow decomposition patterns (TOML). Default: the shipped
    /// config/workflow_patterns.toml.
    #[arg(long, env = "ORCH_WORKFLOW_PATTERNS")]
    pub workflow_patterns: Option<PathBuf>,

    /// Private hosts, `*.suffix`es and CIDRs campaign fetchers may reach
    /// (comma-separated; empty: none, only public addresses). A campaign's
    /// `config.allow` may narrow this list, never widen it. Cloud metadata
    /// addresses must be named on their own, never through a wide CIDR.
    #[arg(long, env = "ORCH_CAMPAIGN_ALLOW", value_delimiter = ',')]
    pub campaign_allow: Vec<String>,

    /// Key of the HMAC signature on every POST to an HTTP target or
    /// callback URL (`X-Orchestrator-Signature`); receivers verify with it.
    /// Unset: `http` queues and `callback_url`s are refused.
    #[arg(long, env = "ORCH_SIGNING_SECRET", hide_env_values = true)]
    pub signing_secret: Option<String>,

    /// Let `noop` jobs panic, fail on purpose and sleep over a second (fault
    /// tests); off, such payloads are refused at push.
    #[arg(long, env = "ORCH_NOOP_FAULTS")]
    pub noop_faults: bool,

    /// `development` (default), `production` (API keys required even on
    /// loopback, JSON logs, embedded queues refused without
    /// --allow-embedded) or `testing` (a throw-away data directory).
    #[arg(long, env = "ORCH_MODE", default_value = "development", value_parser = Mode::parse)]
    pub mode: Mode,

    /// In production mode, run on embedded SQLite queues anyway (one
    /// machine, no Redis).
    #[arg(long, env = "ORCH_ALLOW_EMBEDDED")]
    pub allow_embedded: bool,
}

/// How strict a process is (`ORCH_MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Today's defaults: loopback without keys is fine, readable logs.
    Development,
    /// Keys required, JSON logs, no embedded queues unless allowed.
    Production,
    /// A throw-away data directory per process, for test suites.
    Testing,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Development => "development",
            Mode::Production => "production",
            Mode::Testing => "testing",
        }
    }

    /// The value of `ORCH_MODE`, named in the error (clap names only the flag).
    pub fn parse(raw: &str) -> Result<Self, String> {
        [Mode::Development, Mode::Production, Mode::Testing]
            .into_iter()
            .find(|mode| mode.as_str() == raw.trim())
            .ok_or_else(|| {
                format!(
                    "ORCH_MODE must be development, production or testing, not {:?}",
                    raw.chars().take(64).collect::<String>()
                )
            })
    }

    /// The mode set in the environment, for choosing the log format before
    /// the command line is parsed (an invalid value is reported by the parse).
    pub fn from_env() -> Self {
        std::env::var("ORCH_MODE")
            .ok()
            .and_then(|raw| Self::parse(&raw).ok())
            .unwrap_or(Mode::Development)
    }
}

/// A configuration value that failed validation, named after its variable.
#[derive(Debug, thiserror::Error)]
#[error("{name}: {message}")]
pub struct ConfigError {
    pub name: &'static str,
    pub message: String,
}

impl ConfigError {
    pub fn new(name: &'static str, message: impl Into<String>) -> Self {
        Self {
            name,
            message: message.into(),
        }
    }
}

/// Where the store lives, once validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseKind {
    Sqlite,
    Postgres,
}

impl CommonConfig {
    /// Checks every value and reports the first problem with the variable's
    /// name, e.g. `ORCH_REDIS_URL: invalid URL "x": relative URL without a base`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.mode == Mode::Production && self.is_embedded() && !self.allow_embedded {
            return Err(ConfigError::new(
                "ORCH_MODE",
                "production refuses embedded SQLite queues (one machine, no failover): set \
                 ORCH_REDIS_URL, or pass --allow-embedded (ORCH_ALLOW_EMBEDDED=true) to run on one machine anyway",
            ));
        }
        if let Some(url) = &self.redis_url {
            validate_redis_url(url)?;
        }
        self.database_kind()?;
        if !valid_prefix(&self.redis_prefix) {
            return Err(ConfigError::new(
                "ORCH_REDIS_PREFIX",
                "use 1 to 64 characters from [A-Za-z0-9_.-]",
            ));
        }
        if let Some(url) = &self.qdrant_url {
            let parsed = Url::parse(url).map_err(|e| {
                ConfigError::new(
                    "QDRANT_URL",
                    format!("invalid URL {:?}: {e}", redact_url(url)),
                )
            })?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(ConfigError::new(
                    "QDRANT_URL",
                    "use http://host:6334 (gRPC)",
                ));
            }
        }
        if !valid_prefix(&self.qdrant_collection) {
            return Err(ConfigError::new(
                "ORCH_QDRANT_COLLECTION",
                "use 1 to 64 characters from [A-Za-z0-9_.-]",
            ));
        }
        if !(1_000..=86_400_000).contains(&self.lease_ms) {
            return Err(ConfigError::new(
                "ORCH_LEASE_MS",
                format!("{} is outside 1000..=86400000", self.lease_ms),
            ));
        }
        Ok(())
    }

    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms)
    }

    /// The store URL, defaulting to a SQLite file in the data directory.
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("orchestrator.db").display()
            ),
        }
    }

    pub fn database_kind(&self) -> Result<DatabaseKind, ConfigError> {
        let url = self.database_url();
        if url.starts_with("sqlite:") {
            Ok(DatabaseKind::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Url::parse(&url)
                .map_err(|e| ConfigError::new("DATABASE_URL", format!("invalid URL: {e}")))?;
            Ok(DatabaseKind::Postgres)
        } else {
            Err(ConfigError::new(
                "DATABASE_URL",
                format!(
                    "unsupported scheme in {:?}: use sqlite://... or postgres://...",
                    redact_url(&url)
                ),
            ))
        }
    }

    /// The embedded queue file, used when no Redis is configured.
    pub fn queue_db_path(&self) -> PathBuf {
        self.data_dir.join("queue.db")
    }

    /// The model registry file: `ORCH_MODELS_CONFIG`, else `models.toml` in
    /// the data directory.
    pub fn models_config_path(&self) -> PathBuf {
        self.models_config
            .clone()
            .unwrap_or_else(|| self.data_dir.join("models.toml"))
    }

    pub fn is_embedded(&self) -> bool {
        self.redis_url.is_none()
    }

    /// In testing mode, moves the data directory to a fresh one under the
    /// system's temporary directory, removed when the returned guard drops
    /// (at exit). Other modes keep theirs.
    pub fn throw_away_data_dir(&mut self) -> std::io::Result<Option<ThrowAwayDir>> {
        if self.mode != Mode::Testing {
            return Ok(None);
        }
        let nonce = uuid::Uuid::now_v7().simple().to_string();
        let dir = std::env::temp_dir().join(format!(
            "orchestrator-testing-{}-{}",
            std::process::id(),
            &nonce[20..]
        ));
        std::fs::create_dir_all(&dir)?;
        self.data_dir = dir.clone();
        Ok(Some(ThrowAwayDir(dir)))
    }
}

impl fmt::Display for CommonConfig {
    /// One line per setting, with passwords removed, for the start-up log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "  data dir:    {}", self.data_dir.display())?;
        writeln!(f, "  models dir:  {}", self.models_dir.display())?;
        match &self.redis_url {
            Some(url) => writeln!(
                f,
                "  queues:      redis {} (prefix {})",
                redact_url(url),
                self.redis_prefix
            )?,
            None => writeln!(
                f,
                "  queues:      embedded sqlite {}",
                self.queue_db_path().display()
            )?,
        }
        writeln!(f, "  store:       {}", redact_url(&self.database_url()))?;
        match &self.qdrant_url {
            Some(url) => writeln!(
                f,
                "  vectors:     qdrant {} (collection {})",
                redact_url(url),
                self.qdrant_collection
            )?,
            None => writeln!(
                f,
                "  vectors:     embedded {}",
                self.data_dir.join("vectors.db").display()
            )?,
        }
        writeln!(f, "  models:      {}", self.models_config_path().display())?;
        if !self.campaign_allow.is_empty() {
            writeln!(
                f,
                "  campaigns may reach: {}",
                self.campaign_allow.join(", ")
            )?;
        }
        if self.signing_secret.as_deref().is_none_or(str::is_empty) {
            writeln!(
                f,
                "  signing:     no ORCH_SIGNING_SECRET (http queues and callbacks refused)"
            )?;
        }
        write!(f, "  lease:       {} ms", self.lease_ms)
    }
}

fn validate_redis_url(raw: &str) -> Result<(), ConfigError> {
    let url = Url::parse(raw).map_err(|e| {
        ConfigError::new(
            "ORCH_REDIS_URL",
            format!("invalid URL {:?}: {e}", redact_url(raw)),
        )
    })?;
    if url.scheme() == "rediss" {
        return Err(ConfigError::new(
            "ORCH_REDIS_URL",
            "rediss:// (TLS) is not supported by this build; use redis:// on a private network or through a TLS tunnel",
        ));
    }
    if url.scheme() != "redis" {
        return Err(ConfigError::new(
            "ORCH_REDIS_URL",
            format!("scheme must be redis://, got {}://", url.scheme()),
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(ConfigError::new("ORCH_REDIS_URL", "URL has no host"));
    }
    Ok(())
}

fn valid_prefix(prefix: &str) -> bool {
    (1..=64).contains(&prefix.len())
        && prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Removes the password from a URL so it can be logged.
pub fn redact_url(raw: &str) -> String {
    match Url::parse(raw) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("***"));
            url.to_string()
        }
        _ => raw.to_string(),
    }
}

/// Parses a listen address flag, with the variable's name in the error.
pub fn parse_socket_addr(name: &'static str, raw: &str) -> Result<SocketAddr, ConfigError> {
    raw.parse()
        .map_err(|e| ConfigError::new(name, format!("invalid address {raw:?}: {e}")))
}

/// A data directory removed when dropped.
#[derive(Debug)]
pub struct ThrowAwayDir(PathBuf);

impl ThrowAwayDir {
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for ThrowAwayDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        common: CommonConfig,
    }

    fn parse(args: &[&str]) -> CommonConfig {
        let mut argv = vec!["test"];
        argv.extend_from_slice(args);
        Cli::parse_from(argv).common
    }

    #[test]
    fn bad_redis_url_names_the_variable() {
        let config = parse(&["--redis-url", "not a url"]);
        let err = config.validate().unwrap_err().to_string();
        assert!(err.starts_with("ORCH_REDIS_URL: invalid URL"), "{err}");
    }

    #[test]
    fn redis_url_needs_redis_scheme() {
        let config = parse(&["--redis-url", "http://localhost:6379"]);
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("scheme must be redis://"), "{err}");
    }

    #[test]
    fn database_url_defaults_to_sqlite_in_data_dir() {
        let config = parse(&["--data-dir", "/tmp/x"]);
        assert_eq!(
            config.database_url(),
            "sqlite:///tmp/x/orchestrator.db?mode=rwc"
        );
        assert_eq!(config.database_kind().unwrap(), DatabaseKind::Sqlite);
    }

    #[test]
    fn unknown_database_scheme_is_refused() {
        let config = parse(&["--database-url", "mysql://root@localhost/x"]);
        let err = config.validate().unwrap_err().to_string();
        assert!(err.starts_with("DATABASE_URL: unsupported scheme"), "{err}");
    }

    #[test]
    fn display_hides_passwords() {
        let config = parse(&[
            "--redis-url",
            "redis://:secret@localhost:6379",
            "--database-url",
            "postgres://u:hunter2@db/x",
        ]);
        let shown = config.to_string();
        assert!(
            !shown.contains("secret") && !shown.contains("hunter2"),
            "{shown}"
        );
    }

    #[test]
    fn lease_out_of_range_is_refused() {
        let config = parse(&["--lease-ms", "5"]);
        assert_eq!(config.validate().unwrap_err().name, "ORCH_LEASE_MS");
    }
}
