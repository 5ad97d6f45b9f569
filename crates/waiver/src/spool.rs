//! The break-glass spool: every use a break-glass grants is durable on this node's disk
//! before the decision answers, then moved into the audit log.
//!
//! A decision that grants through a break-glass hands the use to this task and waits for
//! its acknowledgement. The task appends every waiting use to `break-glass.spool` (JSON
//! lines, mode 0600) and fsyncs once for the group (group commit), then acknowledges them
//! all. Every second it records what the file holds as `break_glass.used` events (identical
//! uses in the same second become one event with a `count`) and empties the file. At start
//! it records whatever a previous process left; at shutdown it takes what is queued, makes
//! it durable and records it. When the spool cannot be written the uses are refused, and
//! the decisions deny: emergency access without a trail is not granted.

use std::{
    io::{BufRead, Write},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use waiver_http::SpoolItem;
use waiver_service::{BreakGlassUse, Service};

/// The spool file in the data dir.
pub const SPOOL_FILE: &str = "break-glass.spool";

/// Most uses written and fsynced together.
const MAX_GROUP: usize = 4_096;

/// One line of the spool.
#[derive(Debug, Serialize, Deserialize)]
struct Line {
    exception: String,
    at: jiff::Timestamp,
    subject: String,
    action: String,
    resource: String,
}

impl Line {
    fn of(used: &BreakGlassUse) -> Self {
        Self {
            exception: used.exception.to_string(),
            at: used.at,
            subject: used.subject.clone(),
            action: used.action.clone(),
            resource: used.resource.clone(),
        }
    }

    fn into_use(self) -> Option<BreakGlassUse> {
        Some(BreakGlassUse {
            exception: self.exception.parse().ok()?,
            at: self.at,
            subject: self.subject,
            action: self.action,
            resource: self.resource,
            request_id: None,
        })
    }
}

/// The spool file, open for appending.
struct File {
    path: PathBuf,
    file: std::fs::File,
}

impl File {
    fn open(path: &Path) -> std::io::Result<Self> {
        let mut options = std::fs::OpenOptions::new();
        options.create(true).append(true).read(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        Ok(Self { path: path.to_owned(), file: options.open(path)? })
    }

    /// What a previous process left (a torn last line, never acknowledged, is skipped).
    fn read(&self) -> std::io::Result<Vec<BreakGlassUse>> {
        let reader = std::io::BufReader::new(std::fs::File::open(&self.path)?);
        let mut uses = Vec::new();
        for line in reader.lines() {
            if let Some(used) = serde_json::from_str::<Line>(&line?).ok().and_then(Line::into_use) {
                uses.push(used);
            }
        }
        Ok(uses)
    }

    fn append(&mut self, uses: &[BreakGlassUse]) -> std::io::Result<()> {
        let mut text = Vec::with_capacity(uses.len() * 160);
        for used in uses {
            serde_json::to_writer(&mut text, &Line::of(used))?;
            text.push(b'\n');
        }
        self.file.write_all(&text)?;
        self.file.sync_data()
    }

    fn clear(&mut self) -> std::io::Result<()> {
        self.file.set_len(0)?;
        self.file.sync_data()
    }
}

/// Runs the spool until `stop` turns true, then drains it. Returns once every use it
/// acknowledged is in the audit log or, if the store is unreachable, still in the file.
pub async fn run(
    path: PathBuf,
    service: Service,
    mut items: mpsc::Receiver<SpoolItem>,
    mut stop: watch::Receiver<bool>,
) {
    let mut file = match tokio::task::block_in_place(|| File::open(&path)) {
        Ok(file) => Some(file),
        Err(e) => {
            // Every break-glass use will be refused: say so loudly, once.
            tracing::error!(
                "cannot open the break-glass spool {}: {e}; break-glass grants are refused",
                path.display()
            );
            None
        }
    };
    // What a previous process made durable but did not record.
    let mut pending: Vec<BreakGlassUse> = match &file {
        Some(f) => tokio::task::block_in_place(|| f.read()).unwrap_or_default(),
        None => Vec::new(),
    };
    if !pending.is_empty() {
        tracing::info!("recording {} break-glass uses left in the spool", pending.len());
    }
    flush(&service, &mut file, &mut pending).await;

    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            item = items.recv() => {
                let Some(first) = item else { break };
                let mut group = vec![first];
                while group.len() < MAX_GROUP {
                    match items.try_recv() {
                        Ok(item) => group.push(item),
                        Err(_) => break,
                    }
                }
                spool(&mut file, &mut pending, group);
            }
            _ = tick.tick() => flush(&service, &mut file, &mut pending).await,
            _ = stop.changed() => break,
        }
    }
    // Shutdown: nothing new is accepted; what is queued is made durable and recorded.
    items.close();
    let mut rest = Vec::new();
    while let Ok(item) = items.try_recv() {
        rest.push(item);
    }
    if !rest.is_empty() {
        spool(&mut file, &mut pending, rest);
    }
    flush(&service, &mut file, &mut pending).await;
    if pending.is_empty() {
        tracing::info!("break-glass spool drained");
    } else {
        tracing::warn!("{} break-glass uses stay in the spool until the next start", pending.len());
    }
}

/// Appends a group, fsyncs once, and acknowledges each use: durable, or refused.
fn spool(file: &mut Option<File>, pending: &mut Vec<BreakGlassUse>, group: Vec<SpoolItem>) {
    let uses: Vec<BreakGlassUse> = group.iter().map(|item| item.used.clone()).collect();
    let written = match file {
        Some(f) => tokio::task::block_in_place(|| f.append(&uses)),
        None => Err(std::io::Error::other("the spool is not open")),
    };
    let durable = match &written {
        Ok(()) => true,
        Err(e) => {
            // Each refused grant is counted where it is denied (the decision handler).
            tracing::error!("cannot make {} break-glass uses durable: {e}; they are refused", uses.len());
            false
        }
    };
    for item in group {
        // A caller that timed out has already denied; nothing more to do for it.
        let _ = item.durable.send(durable);
    }
    if durable {
        pending.extend(uses);
    }
}

/// Records what the spool holds in the audit log, then empties the file.
async fn flush(service: &Service, file: &mut Option<File>, pending: &mut Vec<BreakGlassUse>) {
    if pending.is_empty() {
        return;
    }
    match service.record_break_glass_uses(pending.clone()).await {
        Ok(()) => {
            pending.clear();
            if let Some(f) = file
                && let Err(e) = tokio::task::block_in_place(|| f.clear())
            {
                // The uses are recorded; a spool not emptied only repeats them at next start.
                tracing::error!("cannot empty the break-glass spool: {e}");
            }
        }
        Err(e) => tracing::error!("cannot record {} break-glass uses yet (kept in the spool): {e}", pending.len()),
    }
}
