//! Replicate mode: the module's tables follow through logical replication while the application
//! keeps writing ([`crate::replication`]), and its writes stop only for the cutover: the freeze,
//! the last transactions arriving, moat's tables and the triggers, the sequences.
//!
//! The target gets the module's objects without triggers before the subscription starts (its
//! apply worker, a superuser in PostgreSQL 15, must run none of the module's code: the preflight
//! refused defaults, constraints, indexes and domains that call the module's functions), and the
//! triggers after the subscription is gone.

use std::time::{Duration, Instant};

use sqlx::PgConnection;

use super::{Ctx, ExtractEvent, TableReport, copy, dump, freeze};
use crate::error::AdminError;
use crate::replication::{self, Names};

/// How long the final catch-up may take before the cutover gives up and the module writes again.
const CUTOVER_WAIT: Duration = Duration::from_secs(60);

/// How long the initial copy and catch-up may take without any progress.
const STALL: Duration = Duration::from_secs(300);

/// Lag (bytes of WAL) at which the cutover starts.
const CUTOVER_LAG: i64 = 1 << 20;

/// The replication objects of this move.
pub fn names(ctx: &Ctx<'_>) -> Names {
    replication::names(ctx.manifest.project.as_str(), ctx.module.name.as_str())
}

/// What only replicate mode needs: `wal_level`, free slots and senders, no module function that
/// the apply worker would run. Changes nothing.
pub async fn preflight(ctx: &Ctx<'_>, src: &mut PgConnection) -> Result<(), AdminError> {
    let capacity = replication::capacity(src).await?;
    replication::check_capacity(&capacity)?;
    let traps = replication::superuser_traps(src, ctx.schema(), &ctx.manifest.roles().moat_owner()).await?;
    if !traps.is_empty() {
        return Err(AdminError::Refused {
            message: format!(
                "module `{}` cannot move by logical replication: its tables run functions of their own while rows are \
                 written, which replication would run as a superuser:\n{}",
                ctx.module.name,
                traps
                    .iter()
                    .map(|t| format!("  - `{}.{}`: {} calls `{}`", ctx.schema(), t.table, t.what, t.function))
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
            help: format!(
                "run `moat extract {} --mode copy`: every row is then written in a session of the module's owner",
                ctx.module.name
            ),
        });
    }
    Ok(())
}

/// Prepare for replication: the module's roles, schema and objects in the target with its keys
/// but without its indexes, foreign keys and triggers. Returns the SQL of the parts that come
/// later: what is built after the initial copy, and the triggers.
pub async fn prepare(
    ctx: &Ctx<'_>,
    src: &mut PgConnection,
    dst: &mut PgConnection,
) -> Result<(String, String), AdminError> {
    let sections = dump::prepare(ctx, src, dst).await?;
    dump::run_module_sql(ctx, dst, ctx.target_url, &sections.keys, "post-data (keys)").await?;
    Ok((sections.after_copy, sections.triggers))
}

/// The SQL of what is built after the initial copy and of the triggers (for a run resumed after
/// the prepare step).
pub async fn later_parts(ctx: &Ctx<'_>, src: &mut PgConnection) -> Result<(String, String), AdminError> {
    let sections = dump::sections(ctx, src).await?;
    Ok((sections.after_copy, sections.triggers))
}

/// Whether the target already has the indexes and foreign keys built after the initial copy
/// (a resumed run must not build them twice): it has them when it has as many indexes and
/// foreign keys as the source.
async fn built_after_copy(ctx: &Ctx<'_>, src: &mut PgConnection, dst: &mut PgConnection) -> Result<bool, AdminError> {
    const COUNT: &str = "SELECT (SELECT count(*) FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid \
                           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1) \
                        + (SELECT count(*) FROM pg_catalog.pg_constraint k JOIN pg_catalog.pg_namespace n ON n.oid = k.connamespace \
                           WHERE n.nspname = $1 AND k.contype = 'f')";
    let mut counts = Vec::new();
    for conn in [src, dst] {
        let n: i64 = sqlx::query_scalar(COUNT)
            .bind(ctx.schema())
            .fetch_one(&mut *conn)
            .await
            .map_err(crate::error::db("counting indexes and foreign keys"))?;
        counts.push(n);
    }
    Ok(counts[0] == counts[1])
}

/// Starts replication (if not yet), waits until every table is copied, builds the indexes and
/// foreign keys (`after_copy`, as the owner), and waits until the target is less than
/// [`CUTOVER_LAG`] behind.
pub async fn catch_up(
    ctx: &Ctx<'_>,
    src: &mut PgConnection,
    dst: &mut PgConnection,
    after_copy: &str,
) -> Result<(), AdminError> {
    let names = names(ctx);
    let tables: Vec<String> = copy::module_tables(src, ctx.schema()).await?.into_iter().map(|t| t.name).collect();
    if tables.is_empty() {
        return Ok(());
    }
    replication::publish(src, &names, ctx.schema(), &tables).await?;
    replication::subscribe(dst, &names, ctx.source_url).await?;
    let mut progress = Instant::now();
    let mut last: Option<(usize, i64)> = None;
    let mut built = false;
    loop {
        let waiting = replication::tables_not_ready(dst, &names).await?;
        if waiting.is_empty() && !built {
            if !built_after_copy(ctx, src, dst).await? {
                dump::run_module_sql(ctx, dst, ctx.target_url, after_copy, "post-data (indexes)").await?;
            }
            built = true;
            progress = Instant::now();
        }
        let lag = replication::lag_bytes(src, &names).await?.unwrap_or(0).max(0);
        (ctx.observe)(ExtractEvent::Lag { bytes: u64::try_from(lag).unwrap_or(0) });
        if waiting.is_empty() && built && lag < CUTOVER_LAG {
            return Ok(());
        }
        let now = (waiting.len(), lag);
        if last.is_none_or(|l| now.0 < l.0 || now.1 < l.1) {
            progress = Instant::now();
        }
        last = Some(now);
        if progress.elapsed() > STALL {
            return Err(AdminError::Refused {
                message: format!(
                    "replication of module `{}` made no progress for {} s ({} table(s) still copying: {}; {lag} bytes behind)",
                    ctx.module.name,
                    STALL.as_secs(),
                    waiting.len(),
                    waiting.join(", ")
                ),
                help: format!(
                    "look at the target server's log for the subscription `{}`; `moat extract {}` resumes, `--abort` rolls back",
                    names.subscription, ctx.module.name
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The cutover: stops the module's writes on the source, waits until the target applied every
/// transaction before the stop, ends replication, copies moat's tables, creates the triggers,
/// moves the sequences. On a timeout the module writes on the source again.
pub async fn cutover(
    ctx: &Ctx<'_>,
    src: &mut PgConnection,
    dst: &mut PgConnection,
    triggers: &str,
) -> Result<Vec<TableReport>, AdminError> {
    let names = names(ctx);
    freeze::freeze(ctx, src).await?;
    let lsn = replication::current_lsn(src).await?;
    let started = Instant::now();
    loop {
        let confirmed: Option<bool> = sqlx::query_scalar(
            "SELECT confirmed_flush_lsn >= $2::pg_lsn FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
        )
        .bind(&names.slot)
        .bind(&lsn)
        .fetch_optional(&mut *src)
        .await
        .map_err(crate::error::db("reading how far the target confirmed"))?
        .flatten();
        match confirmed {
            Some(true) => break,
            // No slot: an earlier run of the cutover ended replication after the catch-up.
            None => break,
            Some(false) if started.elapsed() < CUTOVER_WAIT => {
                let lag = replication::lag_bytes(src, &names).await?.unwrap_or(0).max(0);
                (ctx.observe)(ExtractEvent::Lag { bytes: u64::try_from(lag).unwrap_or(0) });
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Some(false) => {
                freeze::unfreeze(ctx, src).await?;
                return Err(AdminError::Refused {
                    message: format!(
                        "the target did not catch up with module `{}` within {} s of the freeze; the module writes on the source again",
                        ctx.module.name,
                        CUTOVER_WAIT.as_secs()
                    ),
                    help: format!("run `moat extract {}` again when the target keeps up", ctx.module.name),
                });
            }
        }
    }
    replication::drop_all(src, dst, &names).await?;
    let moat_tables = copy::moat_tables(src, ctx.schema()).await?;
    let moat_tables: Vec<&super::objects::Table> = moat_tables.iter().collect();
    let reports = copy::copy_moat_tables(ctx, src, dst, &moat_tables).await?;
    copy::finish(ctx, src, dst, triggers).await?;
    Ok(reports)
}

/// Ends replication of this move on both sides, whatever state it is in (for `--abort` and for
/// a run that starts the move over).
pub async fn stop(ctx: &Ctx<'_>, src: &mut PgConnection, dst: &mut PgConnection) -> Result<(), AdminError> {
    replication::drop_all(src, dst, &names(ctx)).await
}

/// Whether this move's subscription exists in the target.
pub async fn subscribed(ctx: &Ctx<'_>, dst: &mut PgConnection) -> Result<bool, AdminError> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_subscription WHERE subname = $1)")
        .bind(&names(ctx).subscription)
        .fetch_one(&mut *dst)
        .await
        .map_err(crate::error::db("looking up the subscription"))
}
