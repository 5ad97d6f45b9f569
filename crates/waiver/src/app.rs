//! The data directory: where the database, the governance rules and the baseline live.
//!
//! ```text
//! DATA_DIR/waiver.db      SQLite: the event log and its projections
//! DATA_DIR/rules.toml     governance rules (defaults apply when absent)
//! DATA_DIR/baseline/      the Cedar baseline (policies with @id, schema, entities)
//! ```

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use waiver_core::{Actor, Principal, Role, Rules};
use waiver_engine::Baseline;
use waiver_service::Service;
use waiver_store_postgres::PostgresStore;
use waiver_store_sqlite::SqliteStore;

use crate::{cli::Cli, clock::SystemClock, commands::CliError};

pub const DATABASE_FILE: &str = "waiver.db";
pub const RULES_FILE: &str = "rules.toml";

/// An opened data directory.
pub struct App {
    pub service: Service,
    pub store: Arc<dyn waiver_store::Store>,
    pub data_dir: PathBuf,
    /// The baseline in force in the log (`None` if it holds none and the data dir has none).
    pub baseline: Option<Arc<waiver_engine::Baseline>>,
}

/// Reads the governance rules of a data dir, or the defaults if it has none.
pub fn load_rules(data_dir: &Path) -> Result<Rules, CliError> {
    let path = data_dir.join(RULES_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => Rules::from_toml(&text).map_err(|e| CliError::Usage(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Rules::default()),
        Err(e) => Err(CliError::Failure(anyhow::anyhow!("cannot read {}: {e}", path.display()))),
    }
}

/// Opens the store named by `--database-url`, or the data dir's SQLite file. Only `init`
/// and `demo` create a store; other commands refuse an empty data dir rather than quietly
/// starting a new register in the wrong place.
pub async fn open(cli: &Cli, create: bool) -> Result<App, CliError> {
    let data_dir = cli.data_dir.clone();
    let store: Arc<dyn waiver_store::Store> = match cli.database_url.as_deref() {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            Arc::new(PostgresStore::connect(url).await.map_err(|e| match e {
                waiver_store::StoreError::Unavailable(why) => {
                    CliError::Usage(format!("cannot reach the database at --database-url: {why}"))
                }
                other => other.into(),
            })?)
        }
        Some(url) if url.starts_with("sqlite:") => Arc::new(SqliteStore::open_url(url).await?),
        Some(url) => {
            return Err(CliError::Usage(format!(
                "`{url}` is not a database URL: use `sqlite://PATH` or `postgres://…`"
            )));
        }
        None => {
            let path = data_dir.join(DATABASE_FILE);
            if !path.exists() {
                if !create {
                    return Err(CliError::Usage(format!(
                        "{} holds no waiver data; run `waiver init` (or `waiver demo`) first, or pass --data-dir",
                        data_dir.display()
                    )));
                }
                create_private_dir(&data_dir)
                    .map_err(|e| CliError::Failure(anyhow::anyhow!("cannot create {}: {e}", data_dir.display())))?;
            }
            Arc::new(SqliteStore::open(&path).await?)
        }
    };
    let mut service = Service::new(store.clone(), Rules::default(), Arc::new(SystemClock));
    // A store made before records were sealed gets its rows sealed once, as found.
    service.seal_legacy_records().await?;
    let baseline = adopt_artifacts(&service, &data_dir).await?;
    if let Some(baseline) = &baseline {
        service = service.with_baseline(Ok(baseline.clone()));
    }
    Ok(App { service, store, data_dir, baseline })
}

/// Baseline and rules come from the log, the same on every node. A store that holds none yet
/// (just made by `init`, or made by an earlier version that kept them in files) takes the
/// data dir's `baseline/` and `rules.toml` once, recorded as `baseline.set` and `rules.set`
/// by the system; after that the files are not read (`baseline set`, `rules set` change
/// what is in force). Puts the rules in force on `service`; returns the baseline.
pub async fn adopt_artifacts(service: &Service, data_dir: &Path) -> Result<Option<Arc<Baseline>>, CliError> {
    // The people directory, once, from who the log already names (a store from before it).
    service.seed_people().await?;
    match service.stored_rules().await? {
        Some((_, rules)) => service.set_rules(rules),
        None => {
            let path = data_dir.join(RULES_FILE);
            if path.exists() {
                let rules = load_rules(data_dir)?;
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| CliError::Failure(anyhow::anyhow!("cannot read {}: {e}", path.display())))?;
                service.import_artifact("rules", text, "the data dir's rules.toml").await?;
                service.set_rules(rules);
            }
        }
    }
    match service.stored_baseline().await? {
        Some((_, baseline)) => Ok(Some(Arc::new(baseline))),
        None => {
            let dir = crate::serve::baseline_dir(data_dir);
            if !dir.exists() {
                return Ok(None);
            }
            let baseline = crate::serve::load_baseline_dir(&dir)?;
            let body = waiver_service::baseline_artifact(&baseline);
            service.import_artifact("baseline", body, "the data dir's baseline/").await?;
            Ok(Some(Arc::new(baseline)))
        }
    }
}

/// The local operator: whoever can write the data dir could edit the database directly, so
/// local mode grants the human roles; separation of duties still holds (`--as` names who
/// acts, and the requester still cannot approve).
pub fn local_actor(cli: &Cli) -> Result<Actor, CliError> {
    let name = cli
        .as_name
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .or_else(|| std::env::var("USERNAME").ok())
        .unwrap_or_else(|| "operator".to_owned());
    let principal = Principal::parse("--as", &name).map_err(|e| CliError::Usage(e.to_string()))?;
    Ok(Actor::new(principal, &[Role::Requester, Role::Approver, Role::Responder, Role::Admin]))
}

/// Creates `dir` (and its parents) readable by this user only: it holds the register, the
/// break-glass spool and, for the demo, tokens.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Writes `text` to `path`, readable by this user only (tokens, secrets).
pub fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    // An existing file keeps its mode on open: make sure.
    #[cfg(unix)]
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    file.write_all(text.as_bytes())
}
