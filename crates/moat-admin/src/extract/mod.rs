//! `moat extract MODULE`: moving a module's schema, data, history and events from the database
//! where its data is (the source) into the database the manifest names for it (the target).
//!
//! The move is a sequence of steps recorded in a journal, `<schema>.moat_move` in the source
//! (see [`crate::internal::move_ddl`]); each step is idempotent, so a run killed at any point is
//! resumed by the next run, or rolled back by `--abort`:
//!
//! 1. **preflight** ([`preflight`]) changes nothing and refuses, with the objects named, what
//!    cannot move: objects of other modules or contracts that depend on the module, tables
//!    without a primary key or replica identity, claims, extensions the target lacks, a target
//!    that already holds the schema. Then the journal row is written.
//! 2. **prepare** ([`dump`]): the target gets the module's roles, schema, grants and moat tables
//!    (provisioning a manifest reduced to the module), then the module's objects from
//!    `pg_dump --schema-only` of the source, without constraints, indexes and triggers yet (the
//!    pre-data section), run as the module's owner in a session logged in as its migrator.
//! 3. **copy** ([`freeze`], [`copy`]): the module's writes stop on the source (its runtime role
//!    and the relay lose `USAGE` on the schema, their sessions there are ended), every table is
//!    streamed with `COPY` in owner sessions on both sides (moat's own tables by the admin), the
//!    post-data section follows (so the module's triggers never fire on copied rows), then the
//!    sequences.
//! 4. **verify** ([`verify`]): row counts and hashes per chunk of rows in key order, sequences,
//!    migration history and outbox, compared between both sides; a mismatch gives the module
//!    back to the source and stops.
//! 5. **switched**: the journal says the module lives in the target; `NOTIFY moat_move` in the
//!    source tells running applications. The source copy stays, unreadable to the module, until
//!    `--finalize` drops it.
//!
//! Module SQL (everything `pg_dump` prints of the module's objects, and whatever their functions
//! do when `COPY`, `CREATE INDEX` or a constraint runs them) runs only in sessions logged in as
//! the module's migrator under `SET ROLE <owner>`; the admin's own sessions read catalogs and
//! moat's tables, which no module role can alter.

mod copy;
mod dump;
mod freeze;
mod journal;
mod objects;
mod preflight;
mod replicate;
mod session;
mod verify;

use std::time::Instant;

use moat_core::manifest::{Manifest, Module};
use moat_core::names::ModuleName;
use serde::Serialize;
use sqlx::PgConnection;

use crate::error::AdminError;
use crate::target::DatabaseUrl;

pub use journal::Journal;
pub use verify::{Mismatch, Verification};

/// How the data moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Logical replication while the application keeps writing, then a short cutover.
    Replicate,
    /// Stop the module's writes, copy, verify, switch.
    Copy,
}

impl Mode {
    /// `replicate` or `copy`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Replicate => "replicate",
            Self::Copy => "copy",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "replicate" => Some(Self::Replicate),
            "copy" => Some(Self::Copy),
            _ => None,
        }
    }
}

/// What `moat extract` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct ExtractOptions {
    /// The mode; `None` picks `replicate` where the source's `wal_level` is `logical`.
    pub mode: Option<Mode>,
    /// Roll back a move that has not switched yet.
    pub abort: bool,
    /// Drop the source copy of a module that switched.
    pub finalize: bool,
}

/// The steps of a move, in order; the journal's `step` is the one under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Step {
    /// Checks that change nothing.
    Preflight,
    /// Roles, schema and objects on the target.
    Prepare,
    /// Freeze, copy, post-data, sequences.
    Copy,
    /// Replicate mode: waiting for the subscription to catch up.
    Catchup,
    /// Replicate mode: freeze and final catch-up.
    Cutover,
    /// Comparison of both sides.
    Verify,
    /// The module lives in the target.
    Switched,
}

impl Step {
    /// Every step, in order.
    pub const ALL: [Self; 7] =
        [Self::Preflight, Self::Prepare, Self::Copy, Self::Catchup, Self::Cutover, Self::Verify, Self::Switched];

    /// The journal's name of the step.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Preflight => "preflight",
            Self::Prepare => "prepare",
            Self::Copy => "copy",
            Self::Catchup => "catchup",
            Self::Cutover => "cutover",
            Self::Verify => "verify",
            Self::Switched => "switched",
        }
    }

    /// The step named `text`.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Progress of a move, for a terminal or a log.
#[derive(Debug, Clone)]
pub enum ExtractEvent<'a> {
    /// A step starts (its journal update is committed).
    Step {
        /// The step.
        step: Step,
    },
    /// A step ended.
    StepDone {
        /// The step.
        step: Step,
        /// How long it took, in milliseconds.
        duration_ms: u64,
    },
    /// A table is being copied (`done: false`) or was copied.
    Table {
        /// `schema.table`.
        table: &'a str,
        /// Rows copied so far.
        rows: u64,
        /// Bytes of `COPY` data so far.
        bytes: u64,
        /// Whether the table is complete.
        done: bool,
    },
    /// Replication lag of the target, in bytes of WAL (replicate mode).
    Lag {
        /// Bytes behind.
        bytes: u64,
    },
    /// The run resumes a move that an earlier run left at `step`.
    Resuming {
        /// The journal's step.
        step: Step,
    },
}

/// One step of the run, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    /// The step.
    pub step: Step,
    /// How long it took in this run, in milliseconds.
    pub duration_ms: u64,
}

/// One copied table.
#[derive(Debug, Clone, Serialize)]
pub struct TableReport {
    /// `schema.table`.
    pub table: String,
    /// Rows copied.
    pub rows: u64,
    /// Bytes of `COPY` text data.
    pub bytes: u64,
    /// Copied by the admin (one of moat's tables) rather than as the module's owner.
    pub moat_table: bool,
}

/// What a run of `moat extract` did.
#[derive(Debug, Clone, Serialize)]
pub struct ExtractReport {
    /// The module.
    pub module: String,
    /// The mode.
    pub mode: Mode,
    /// What this run did: `moved`, `already_switched`, `aborted`, `finalized`, `nothing_to_abort`.
    pub outcome: Outcome,
    /// The steps this run went through.
    pub steps: Vec<StepReport>,
    /// Tables copied in this run.
    pub tables: Vec<TableReport>,
    /// The verification, when it ran.
    pub verification: Option<Verification>,
    /// Milliseconds between stopping the module's writes on the source and the switch (from the
    /// journal, so a move resumed after a crash counts the whole window).
    pub write_unavailable_ms: Option<u64>,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The module switched to the target in this run.
    Moved,
    /// It had switched already; nothing was done.
    AlreadySwitched,
    /// The move was rolled back.
    Aborted,
    /// There was no move to roll back.
    NothingToAbort,
    /// The source copy was dropped.
    Finalized,
}

/// The environment variable of the crash test hook: `MOAT_EXTRACT_KILL_AFTER=<step>` makes the
/// process kill itself with SIGKILL right after the journal update that starts `<step>` is
/// committed (for `switched`: right after the switch). Only tests set it.
pub const KILL_AFTER_VARIABLE: &str = "MOAT_EXTRACT_KILL_AFTER";

/// Test hook: SIGKILLs this process when [`KILL_AFTER_VARIABLE`] names `step`.
fn kill_hook(step: Step) {
    if std::env::var(KILL_AFTER_VARIABLE).is_ok_and(|v| v == step.as_str()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL);
    }
}

/// Everything a step needs.
pub(crate) struct Ctx<'a> {
    pub manifest: &'a Manifest,
    pub module: &'a Module,
    pub source_url: &'a DatabaseUrl,
    pub target_url: &'a DatabaseUrl,
    pub target_key: &'a str,
    pub mode: Mode,
    pub observe: &'a (dyn Fn(ExtractEvent<'_>) + Sync),
}

impl Ctx<'_> {
    fn schema(&self) -> &str {
        self.module.schema.as_str()
    }
}

/// Moves `module` from `source` (where its data is) to `target` (the database the manifest names
/// for it; `target_key` is that database's key in the manifest, `None` for the main one), or,
/// with `options.abort` / `options.finalize`, rolls a move back or drops the source copy.
/// A run resumes a move an earlier run left unfinished (the journal in the source says where).
pub async fn extract(
    manifest: &Manifest,
    module: &ModuleName,
    source: &DatabaseUrl,
    target: &DatabaseUrl,
    target_key: Option<&str>,
    options: &ExtractOptions,
    observe: &(dyn Fn(ExtractEvent<'_>) + Sync),
) -> Result<ExtractReport, AdminError> {
    let module = manifest.module(module.as_str()).ok_or_else(|| AdminError::UnknownModule {
        name: module.to_string(),
        known: manifest.modules.iter().map(|m| format!("`{}`", m.name)).collect::<Vec<_>>().join(", "),
    })?;
    if options.abort && options.finalize {
        return Err(AdminError::Refused {
            message: "`--abort` and `--finalize` exclude each other".into(),
            help:
                "`--abort` rolls back a move that has not switched; `--finalize` drops the source copy after the switch"
                    .into(),
        });
    }
    if source.database() == target.database() && same_server(source, target) {
        return Err(AdminError::Refused {
            message: format!("module `{}` would move from database `{}` into itself", module.name, source.database()),
            help: "the manifest's `database` for the module must name another database than the one holding its data"
                .into(),
        });
    }
    let mut src = crate::connect(source).await?;
    let mut dst = crate::connect(target).await?;
    let result = async {
        let journal = journal::read(&mut src, manifest, module).await?;
        // Rolling back or finalizing needs no mode of its own: the journal's, else any.
        let mode = if options.abort || options.finalize {
            journal.as_ref().and_then(|j| j.mode.as_deref()).and_then(Mode::parse).or(options.mode).unwrap_or(Mode::Copy)
        } else {
            resolve_mode(&mut src, options.mode, journal.as_ref(), module).await?
        };
        let ctx = Ctx {
            manifest,
            module,
            source_url: source,
            target_url: target,
            target_key: target_key.unwrap_or(""),
            mode,
            observe,
        };
        let mut report = ExtractReport {
            module: module.name.to_string(),
            mode,
            outcome: Outcome::Moved,
            steps: Vec::new(),
            tables: Vec::new(),
            verification: None,
            write_unavailable_ms: None,
        };
        if options.abort {
            report.outcome = abort(&ctx, &mut src, &mut dst, journal.as_ref()).await?;
            return Ok(report);
        }
        if options.finalize {
            report.outcome = finalize(&ctx, &mut src, journal.as_ref()).await?;
            report.write_unavailable_ms = journal.as_ref().and_then(Journal::write_unavailable_ms);
            return Ok(report);
        }
        if let Some(j) = &journal
            && j.target != ctx.target_key
        {
            return Err(AdminError::Refused {
                message: format!(
                    "module `{}` is being moved to database {} already (journal `{}.{}`, step `{}`)",
                    module.name,
                    describe_key(&j.target),
                    ctx.schema(),
                    crate::internal::MOVE,
                    j.step
                ),
                help: format!(
                    "finish that move by pointing the manifest back at it, or roll it back with `moat extract {} --abort`",
                    module.name
                ),
            });
        }
        run(&ctx, &mut src, &mut dst, &mut report).await?;
        Ok(report)
    }
    .await;
    crate::provision::close(src).await;
    crate::provision::close(dst).await;
    result
}

/// Whether two URLs name the same server (host and port).
fn same_server(a: &DatabaseUrl, b: &DatabaseUrl) -> bool {
    let host = |u: &DatabaseUrl| {
        url::Url::parse(u.expose()).ok().map(|u| (u.host_str().map(str::to_owned), u.port().unwrap_or(5432)))
    };
    host(a) == host(b)
}

fn describe_key(key: &str) -> String {
    if key.is_empty() { "`main`".to_owned() } else { format!("`{key}`") }
}

/// The mode of this run: the journal's for a move under way, else the one asked for, else
/// `replicate` where the source has `wal_level = logical`.
async fn resolve_mode(
    src: &mut PgConnection,
    asked: Option<Mode>,
    journal: Option<&Journal>,
    module: &Module,
) -> Result<Mode, AdminError> {
    if let Some(j) = journal
        && let Some(mode) = j.mode.as_deref().and_then(Mode::parse)
    {
        if asked.is_some_and(|a| a != mode) && j.step != Step::Switched {
            return Err(AdminError::Refused {
                message: format!(
                    "the move of module `{}` under way uses `--mode {}`, not `--mode {}`",
                    module.name,
                    mode.as_str(),
                    asked.map_or("", Mode::as_str)
                ),
                help: format!(
                    "rerun without `--mode` to resume it, or roll it back with `moat extract {} --abort` first",
                    module.name
                ),
            });
        }
        return Ok(mode);
    }
    let mode = match asked {
        Some(mode) => mode,
        None => {
            let wal_level: String = sqlx::query_scalar("SELECT pg_catalog.current_setting('wal_level')")
                .fetch_one(&mut *src)
                .await
                .map_err(crate::error::db("reading the source's `wal_level`"))?;
            if wal_level != "logical" {
                return Err(AdminError::Refused {
                    message: format!(
                        "the source database has `wal_level = {wal_level}`: `moat extract` moves a module without \
                         stopping its writes only with logical replication"
                    ),
                    help: format!(
                        "run `moat extract {} --mode copy` (the module's writes stop while it is copied), or set \
                         `wal_level = logical` on the source server and restart it (moat's embedded cluster started by an \
                         older moat: `moat dev stop`, then run moat again)",
                        module.name
                    ),
                });
            }
            Mode::Replicate
        }
    };
    Ok(mode)
}

/// Runs (or resumes) the move up to the switch.
async fn run(
    ctx: &Ctx<'_>,
    src: &mut PgConnection,
    dst: &mut PgConnection,
    report: &mut ExtractReport,
) -> Result<(), AdminError> {
    // Serializes moves of the module and keeps its migrations out while it moves.
    let migrate_key = format!("moat:migrate:{}:{}", ctx.manifest.project, ctx.module.name);
    crate::locks::advisory_lock(src, &migrate_key, &format!("moving module `{}`", ctx.module.name)).await?;
    let mut provision_locked = false;
    let result = run_locked(ctx, src, dst, report, &mut provision_locked).await;
    if provision_locked {
        crate::locks::advisory_unlock(src, &crate::provision::provision_lock(ctx.manifest)).await;
    }
    crate::locks::advisory_unlock(src, &migrate_key).await;
    result
}

async fn run_locked(
    ctx: &Ctx<'_>,
    src: &mut PgConnection,
    dst: &mut PgConnection,
    report: &mut ExtractReport,
    provision_locked: &mut bool,
) -> Result<(), AdminError> {
    // Read under the lock: another run may have moved on since the journal was first read.
    let journal = journal::read(src, ctx.manifest, ctx.module).await?;
    let mut resume_prepare = false;
    // The post-data section of this run's dump (the prepare step makes it).
    let mut post_data: Option<String> = None;
    // Replicate mode: the SQL built after the initial copy and the triggers' SQL, created after
    // replication ends.
    let mut later: Option<(String, String)> = None;
    let mut step = match &journal {
        None => {
            let started = Instant::now();
            (ctx.observe)(ExtractEvent::Step { step: Step::Preflight });
            preflight::check(ctx, src, dst, false).await?;
            if ctx.mode == Mode::Replicate {
                replicate::preflight(ctx, src).await?;
            }
            journal::start(src, ctx).await?;
            done(ctx, report, Step::Preflight, started);
            kill_hook(Step::Preflight);
            Step::Prepare
        }
        Some(j) if j.step == Step::Switched => {
            report.outcome = Outcome::AlreadySwitched;
            report.write_unavailable_ms = j.write_unavailable_ms();
            return Ok(());
        }
        Some(j) => {
            (ctx.observe)(ExtractEvent::Resuming { step: j.step });
            // A move resumed at the copy (or at a verification whose failure gave the module
            // back to the source) starts the target over: it may hold part of a copy, or rows
            // the source has changed since.
            match (ctx.mode, j.step) {
                (_, Step::Preflight | Step::Prepare) => Step::Prepare,
                (_, Step::Verify) if j.frozen_at.is_some() => Step::Verify,
                (Mode::Copy, _) => {
                    resume_prepare = true;
                    Step::Copy
                }
                // Replication under way goes on; anything else starts over from the prepare
                // step (which drops what the target holds), with the module writing again.
                (Mode::Replicate, Step::Catchup | Step::Cutover) if replicate::subscribed(ctx, dst).await? => j.step,
                (Mode::Replicate, _) => {
                    if j.frozen_at.is_some() {
                        freeze::unfreeze(ctx, src).await?;
                    }
                    replicate::stop(ctx, src, dst).await?;
                    Step::Prepare
                }
            }
        }
    };
    loop {
        let started = Instant::now();
        match step {
            Step::Prepare => {
                enter(ctx, src, Step::Prepare).await?;
                preflight::check(ctx, src, dst, true).await?;
                if ctx.mode == Mode::Replicate {
                    replicate::stop(ctx, src, dst).await?;
                    later = Some(replicate::prepare(ctx, src, dst).await?);
                    done(ctx, report, step, started);
                    step = Step::Catchup;
                    continue;
                }
                post_data = Some(dump::prepare(ctx, src, dst).await?.post_data);
                done(ctx, report, step, started);
                step = Step::Copy;
            }
            Step::Catchup => {
                enter(ctx, src, Step::Catchup).await?;
                if later.is_none() {
                    later = Some(replicate::later_parts(ctx, src).await?);
                }
                let after_copy = later.as_ref().map(|(a, _)| a.clone()).unwrap_or_default();
                replicate::catch_up(ctx, src, dst, &after_copy).await?;
                done(ctx, report, step, started);
                step = Step::Cutover;
            }
            Step::Cutover => {
                enter(ctx, src, Step::Cutover).await?;
                let sql = match later.take() {
                    Some((_, triggers)) => triggers,
                    None => replicate::later_parts(ctx, src).await?.1,
                };
                hold_provisioning(ctx, src, provision_locked).await?;
                match replicate::cutover(ctx, src, dst, &sql).await {
                    Ok(tables) => report.tables.extend(tables),
                    Err(e) => {
                        freeze::unfreeze(ctx, src).await?;
                        return Err(e);
                    }
                }
                done(ctx, report, step, started);
                step = Step::Verify;
            }
            Step::Copy => {
                enter(ctx, src, Step::Copy).await?;
                if resume_prepare || post_data.is_none() {
                    preflight::check(ctx, src, dst, true).await?;
                    post_data = Some(dump::prepare(ctx, src, dst).await?.post_data);
                    resume_prepare = false;
                }
                // From the freeze to the switch, provisioning of the source (a `moat up` at an
                // application's start) waits: it would give the runtime role its rights back.
                // After a crash the journal says the same to provisioning.
                hold_provisioning(ctx, src, provision_locked).await?;
                freeze::freeze(ctx, src).await?;
                let copied = copy::copy(ctx, src, dst, post_data.as_deref().unwrap_or_default()).await;
                match copied {
                    Ok(tables) => report.tables.extend(tables),
                    Err(e) => {
                        // The module serves from the source again; the next run starts the copy over.
                        freeze::unfreeze(ctx, src).await?;
                        return Err(e);
                    }
                }
                done(ctx, report, step, started);
                step = Step::Verify;
            }
            Step::Verify => {
                hold_provisioning(ctx, src, provision_locked).await?;
                enter(ctx, src, Step::Verify).await?;
                let verification = verify::verify(ctx, src, dst).await?;
                journal::set_report(src, ctx, &verification).await?;
                let ok = verification.mismatches.is_empty();
                report.verification = Some(verification.clone());
                if !ok {
                    freeze::unfreeze(ctx, src).await?;
                    return Err(AdminError::Refused {
                        message: format!(
                            "verification of module `{}` failed, the module was not switched and serves from the source again:\n{}",
                            ctx.module.name,
                            verification.mismatches.iter().map(|m| format!("  - {m}")).collect::<Vec<_>>().join("\n")
                        ),
                        help: format!(
                            "find what changed the target database meanwhile; `moat extract {0}` starts the copy over, \
                             `moat extract {0} --abort` rolls the move back",
                            ctx.module.name
                        ),
                    });
                }
                done(ctx, report, step, started);
                step = Step::Switched;
            }
            Step::Switched => {
                let journal = journal::switch(src, ctx).await?;
                (ctx.observe)(ExtractEvent::Step { step });
                kill_hook(step);
                report.write_unavailable_ms = journal.write_unavailable_ms();
                done(ctx, report, step, started);
                report.outcome = Outcome::Moved;
                return Ok(());
            }
            Step::Preflight => {
                // A run starts with the preflight above, never in this loop.
                return Err(AdminError::Refused {
                    message: format!("the move of module `{}` is at step `{step}`", ctx.module.name),
                    help: format!("roll it back with `moat extract {} --abort`", ctx.module.name),
                });
            }
        }
    }
}

/// Takes the source's provisioning lock for the rest of the run, once.
/// Starts `step`: the journal says it is under way, the observer hears of it, and the test hook
/// may kill the process right there.
async fn enter(ctx: &Ctx<'_>, src: &mut PgConnection, step: Step) -> Result<(), AdminError> {
    journal::set_step(src, ctx, step).await?;
    (ctx.observe)(ExtractEvent::Step { step });
    kill_hook(step);
    Ok(())
}

async fn hold_provisioning(ctx: &Ctx<'_>, src: &mut PgConnection, held: &mut bool) -> Result<(), AdminError> {
    if !*held {
        let key = crate::provision::provision_lock(ctx.manifest);
        crate::locks::advisory_lock(src, &key, "waiting for the provisioning lock before stopping the module's writes")
            .await?;
        *held = true;
    }
    Ok(())
}

fn done(ctx: &Ctx<'_>, report: &mut ExtractReport, step: Step, started: Instant) {
    let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    (ctx.observe)(ExtractEvent::StepDone { step, duration_ms });
    report.steps.push(StepReport { step, duration_ms });
}

/// `--abort`: rolls back a move that has not switched: the target schema this move created is
/// dropped, the source's rights are given back, the journal row is deleted.
async fn abort(
    ctx: &Ctx<'_>,
    src: &mut PgConnection,
    dst: &mut PgConnection,
    journal: Option<&Journal>,
) -> Result<Outcome, AdminError> {
    let Some(j) = journal else { return Ok(Outcome::NothingToAbort) };
    if j.step == Step::Switched {
        return Err(AdminError::Refused {
            message: format!(
                "module `{}` switched to database {} at {}: there is no move to roll back",
                ctx.module.name,
                describe_key(&j.target),
                j.switched_at.map(|t| t.to_rfc3339()).unwrap_or_default()
            ),
            help: format!(
                "`moat extract {} --finalize` drops the copy left in the source; to move the module back, point the manifest at the source database and extract it again",
                ctx.module.name
            ),
        });
    }
    let migrate_key = format!("moat:migrate:{}:{}", ctx.manifest.project, ctx.module.name);
    crate::locks::advisory_lock(src, &migrate_key, &format!("rolling back the move of module `{}`", ctx.module.name))
        .await?;
    let result = async {
        replicate::stop(ctx, src, dst).await?;
        dump::drop_target_schema(ctx, dst).await?;
        dump::forget_target_roles(ctx, dst).await?;
        freeze::unfreeze(ctx, src).await?;
        journal::delete(src, ctx).await
    }
    .await;
    crate::locks::advisory_unlock(src, &migrate_key).await;
    result.map(|()| Outcome::Aborted)
}

/// `--finalize`: drops the source copy of a module that switched (the one place moat drops data).
async fn finalize(ctx: &Ctx<'_>, src: &mut PgConnection, journal: Option<&Journal>) -> Result<Outcome, AdminError> {
    match journal {
        Some(j) if j.step == Step::Switched => {}
        other => {
            return Err(AdminError::Refused {
                message: match other {
                    Some(j) => format!(
                        "the move of module `{}` is at step `{}`: its data still lives in the source",
                        ctx.module.name, j.step
                    ),
                    None => format!(
                        "module `{}` has no finished move in database `{}`: nothing to finalize",
                        ctx.module.name,
                        ctx.source_url.database()
                    ),
                },
                help: format!(
                    "`--finalize` only drops a source copy after the switch; run `moat extract {}` to finish the move first",
                    ctx.module.name
                ),
            });
        }
    }
    freeze::drop_source_schema(ctx, src).await?;
    Ok(Outcome::Finalized)
}
