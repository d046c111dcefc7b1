//! Reading the current state, planning, and running the plan in one transaction.

use std::collections::{BTreeMap, BTreeSet};

use moat_core::manifest::Manifest;
use moat_core::names::CONTRACTS_SCHEMA;
use moat_core::quote::{ident, qualified};
use moat_core::text::{LineIndex, char_position_to_byte};
use sqlx::{Connection, PgConnection, Row};

use crate::catalog::Snapshot;
use crate::error::{AdminError, db};
use crate::internal::CONTRACTS_LEDGER;
use crate::plan::{
    ContractInstall, InstalledContract, Plan, PlanInputs, Step, plan, schemas_of_interest, wanted_roles,
};
use crate::target::{DatabaseUrl, password_from_env};

/// Reads the snapshot and the other inputs of planning.
pub async fn read_state(conn: &mut PgConnection, manifest: &Manifest) -> Result<(Snapshot, PlanInputs), AdminError> {
    let snapshot = Snapshot::read(conn, &manifest.roles().prefix(), &schemas_of_interest(manifest)).await?;
    let mut inputs = PlanInputs::default();
    for contract in &manifest.contracts {
        let text = std::fs::read_to_string(&contract.sql).map_err(|source| AdminError::Io {
            action: "read",
            path: contract.sql.clone(),
            source,
        })?;
        inputs.contract_texts.insert(contract.name.to_string(), text);
    }
    if let Some(ledger) = snapshot.relation(CONTRACTS_SCHEMA, CONTRACTS_LEDGER) {
        // The ledger is read as the admin: only when it is a plain table that no contract owner
        // (nor any other role of a module) owns, so that reading it cannot run anyone's code.
        let roles = manifest.roles();
        if ledger.kind != "r" || (ledger.owner != roles.moat_owner() && ledger.owner != roles.contracts_owner()) {
            return Err(AdminError::Refused {
                message: format!(
                    "`{CONTRACTS_SCHEMA}.{CONTRACTS_LEDGER}` is not moat's ledger (kind `{}`, owned by `{}`)",
                    ledger.kind, ledger.owner
                ),
                help: format!(
                    "drop it as the admin (`DROP {} {CONTRACTS_SCHEMA}.{CONTRACTS_LEDGER}`); `moat up` recreates the ledger and reinstalls every contract",
                    if ledger.kind == "v" { "VIEW" } else { "TABLE" }
                ),
            });
        }
        let sql = format!("SELECT contract, checksum, views FROM {}", qualified(CONTRACTS_SCHEMA, CONTRACTS_LEDGER));
        for row in sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&mut *conn)
            .await
            .map_err(db("reading the contracts ledger"))?
        {
            inputs.installed_contracts.insert(
                row.get("contract"),
                InstalledContract { checksum: row.get("checksum"), views: row.get("views") },
            );
        }
    }
    for module in &manifest.modules {
        let schema = module.schema.as_str();
        // Only a plain table: a view or anything else in its place is never read (the audit
        // reports it), so no code a module owner wrote runs here.
        if snapshot.relation(schema, crate::internal::OUTBOX_PROGRESS).is_some_and(|r| r.kind == "r") {
            let subscribers: Vec<String> =
                sqlx::query_scalar(sqlx::AssertSqlSafe(crate::internal::progress_subscribers_sql(schema)))
                    .fetch_all(&mut *conn)
                    .await
                    .map_err(db("reading outbox progress"))?;
            inputs.progress.insert(schema.to_owned(), subscribers.into_iter().collect());
        }
    }
    let moat_owner = manifest.roles().moat_owner();
    for module in &manifest.modules {
        let schema = module.schema.as_str();
        // The move journal is read only when it is moat's plain table (see `placement`).
        let journal = snapshot.relation(schema, crate::internal::MOVE);
        if journal.is_some_and(|r| r.kind == "r" && r.owner == moat_owner) {
            let frozen = crate::placement::read_journal(conn, schema)
                .await?
                .is_some_and(|j| j.frozen && j.step != crate::internal::MOVE_SWITCHED);
            if frozen {
                inputs.frozen.insert(module.name.to_string());
            }
        }
    }
    for role in wanted_roles(manifest).into_iter().filter(|r| r.login) {
        if let Some(password) = password_from_env(&role.name) {
            inputs.passwords.insert(role.name, password);
        }
    }
    Ok((snapshot, inputs))
}

/// `moat plan`: the plan, without changing anything.
pub async fn compute_plan(conn: &mut PgConnection, manifest: &Manifest) -> Result<Plan, AdminError> {
    let (snapshot, inputs) = read_state(conn, manifest).await?;
    Ok(plan(manifest, &snapshot, &inputs))
}

/// What provisioning did.
#[derive(Debug, Clone)]
pub struct ProvisionOutcome {
    /// The plan that ran (empty when the database was in sync).
    pub plan: Plan,
    /// Views created per installed contract.
    pub contract_views: BTreeMap<String, Vec<String>>,
    /// Statements sent to the server.
    pub statements: usize,
}

/// The name of a project's provisioning lock (an advisory lock, see [`crate::locks`]).
pub fn provision_lock(manifest: &Manifest) -> String {
    format!("moat:provision:{}", manifest.project)
}

/// `moat provision`: plans under the project's provisioning lock (waiting for it at most
/// [`crate::locks::LOCK_TIMEOUT`], then failing with the role that holds it) and runs the plan's
/// statements in one transaction, so that they apply whole or not at all. Contracts are installed
/// afterwards, one by one, each in a session that logs in as the contract's own owner (`url` says
/// where to connect): the roles and grants they need must be committed before that session can
/// see them.
pub async fn provision(
    conn: &mut PgConnection,
    url: &DatabaseUrl,
    manifest: &Manifest,
) -> Result<ProvisionOutcome, AdminError> {
    let key = provision_lock(manifest);
    crate::locks::advisory_lock(conn, &key, "waiting for the provisioning lock").await?;
    let result = provision_locked(conn, url, manifest).await;
    crate::locks::advisory_unlock(conn, &key).await;
    result
}

async fn provision_locked(
    conn: &mut PgConnection,
    url: &DatabaseUrl,
    manifest: &Manifest,
) -> Result<ProvisionOutcome, AdminError> {
    let mut tx = conn.begin().await.map_err(db("starting the provisioning transaction"))?;
    let timeout = format!("{}ms", crate::locks::LOCK_TIMEOUT.as_millis());
    sqlx::query("SELECT pg_catalog.set_config('lock_timeout', $1, true)")
        .bind(&timeout)
        .execute(&mut *tx)
        .await
        .map_err(db("setting the provisioning lock timeout"))?;
    let (snapshot, inputs) = read_state(&mut tx, manifest).await?;
    refuse_tampered_moat_tables(&mut tx, manifest).await?;
    let plan = plan(manifest, &snapshot, &inputs);
    let mut statements = 4 + usize::from(!inputs.installed_contracts.is_empty());
    let mut failed = None;
    for step in &plan.steps {
        if let Step::Sql { sql, display, .. } = step {
            statements += 1;
            if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone())).execute(&mut *tx).await {
                failed = Some((display.as_deref().unwrap_or(sql).to_owned(), e));
                break;
            }
        }
    }
    if let Some((statement, e)) = failed {
        let _ = tx.rollback().await;
        if crate::locks::is_lock_timeout(&e) {
            return Err(AdminError::LockTimeout {
                doing: format!("provisioning (`{statement}`)"),
                holders: schema_lock_holders(conn, manifest).await,
            });
        }
        return Err(db(format!("provisioning failed at `{statement}`"))(e));
    }
    tx.commit().await.map_err(db("committing the provisioning transaction"))?;
    // A contract that fails does not keep the others from installing; the first error is returned.
    let mut contract_views = BTreeMap::new();
    let mut first_error = None;
    for step in &plan.steps {
        if let Step::InstallContract(install) = step {
            match install_contract(conn, url, install, &mut statements).await {
                Ok(views) => {
                    contract_views.insert(install.contract.clone(), views);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(ProvisionOutcome { plan, contract_views, statements }),
    }
}

/// Refuses to provision when one of moat's tables in a module schema is not the plain table moat
/// created (a view, say) or carries triggers, rules, policies or row level security: code a
/// module owner planted there (before this layout made moat the owner, or by creating the table
/// before moat did) would run as whoever touches the table next. Read from the catalog only.
async fn refuse_tampered_moat_tables(conn: &mut PgConnection, manifest: &Manifest) -> Result<(), AdminError> {
    let schemas: Vec<String> = manifest.modules.iter().map(|m| m.schema.to_string()).collect();
    let rows: Vec<(String, String, String, i64, i64, i64, bool)> = sqlx::query_as(
        "SELECT n.nspname::text, c.relname::text, c.relkind::text,            (SELECT pg_catalog.count(*) FROM pg_catalog.pg_trigger t WHERE t.tgrelid OPERATOR(pg_catalog.=) c.oid AND NOT t.tgisinternal),            (SELECT pg_catalog.count(*) FROM pg_catalog.pg_rewrite r WHERE r.ev_class OPERATOR(pg_catalog.=) c.oid               AND r.rulename OPERATOR(pg_catalog.<>) '_RETURN'),            (SELECT pg_catalog.count(*) FROM pg_catalog.pg_policy p WHERE p.polrelid OPERATOR(pg_catalog.=) c.oid),            c.relrowsecurity          FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace          WHERE n.nspname OPERATOR(pg_catalog.=) ANY($1) AND pg_catalog.starts_with(c.relname::text, 'moat_')",
    )
    .bind(&schemas)
    .fetch_all(&mut *conn)
    .await
    .map_err(db("checking moat's tables"))?;
    // The function a publisher's outbox `cluster` defaults to is moat's; one a module role
    // created under its name would be adopted (and run by every publish) if moat took it over.
    let moat_owner = manifest.roles().moat_owner();
    let publishers: Vec<String> =
        manifest.modules.iter().filter(|m| manifest.is_depended_on(&m.name)).map(|m| m.schema.to_string()).collect();
    let foreign: Vec<(String, String)> = sqlx::query_as(
        "SELECT pg_catalog.format('%I.%I', n.nspname, p.proname), pg_catalog.pg_get_userbyid(p.proowner)::text \
         FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) p.pronamespace \
         WHERE n.nspname OPERATOR(pg_catalog.=) ANY($1) AND p.proname OPERATOR(pg_catalog.=) $2 \
         AND pg_catalog.pg_get_userbyid(p.proowner) OPERATOR(pg_catalog.<>) $3",
    )
    .bind(&publishers)
    .bind(crate::internal::CLUSTER_FUNCTION)
    .bind(&moat_owner)
    .fetch_all(&mut *conn)
    .await
    .map_err(db("checking moat's functions"))?;
    if let Some((function, owner)) = foreign.first() {
        return Err(AdminError::Refused {
            message: format!("`{function}` is owned by `{owner}`, not by `{moat_owner}`: moat's name, another role's function"),
            help: "moat creates this function beside a publishing module's outbox; a module role created one under its name. \
                   Inspect and drop it as the admin (`DROP FUNCTION ...`), then run moat again"
                .into(),
        });
    }
    for (schema, name, kind, triggers, rules, policies, rls) in rows {
        if !crate::internal::owned_by_moat(&name) {
            continue;
        }
        let expected = match name.as_str() {
            crate::internal::OUTBOX => "p",
            crate::internal::OUTBOX_SEQUENCE | crate::internal::INBOX_SEQUENCE => "S",
            _ => "r",
        };
        let mut problems = Vec::new();
        if kind != expected {
            problems.push(format!("is of kind `{kind}`, not `{expected}`"));
        }
        for (count, what) in [(triggers, "triggers"), (rules, "rules"), (policies, "policies")] {
            if count > 0 {
                problems.push(format!("has {count} {what}"));
            }
        }
        if rls {
            problems.push("has row level security enabled".to_owned());
        }
        if !problems.is_empty() {
            return Err(AdminError::Refused {
                message: format!("moat's table `{schema}.{name}` {}", problems.join(", ")),
                help: "moat's own tables are plain tables that only moat changes; a module role put this there. \
                       Inspect and remove it as the admin (`DROP TRIGGER`, `DROP RULE`, `DROP POLICY`, \
                       `ALTER TABLE ... DISABLE ROW LEVEL SECURITY`, or drop a view that took the table's name), then run moat again"
                    .into(),
            });
        }
    }
    Ok(())
}

/// The sessions (other than this one) holding locks on relations in the project's schemas.
async fn schema_lock_holders(conn: &mut PgConnection, manifest: &Manifest) -> Vec<crate::locks::LockHolder> {
    sqlx::query_as::<_, (String, i32)>(
        "SELECT DISTINCT pg_catalog.coalesce(a.usename::text, '?'), l.pid FROM pg_catalog.pg_locks l \
         JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) l.relation \
         JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
         LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid OPERATOR(pg_catalog.=) l.pid \
         WHERE l.granted AND n.nspname OPERATOR(pg_catalog.=) ANY($1) \
         AND l.pid OPERATOR(pg_catalog.<>) pg_catalog.pg_backend_pid()",
    )
    .bind(schemas_of_interest(manifest))
    .fetch_all(&mut *conn)
    .await
    .unwrap_or_default()
    .into_iter()
    .map(|(role, pid)| crate::locks::LockHolder { role, pid })
    .collect()
}

/// What a contract owner owns in this database, as `(description, view name)`; the view name is
/// set for views in schema `contracts`. Read from `pg_shdepend`, so that nothing the contract's
/// SQL created (a function, a table anywhere, a large object, a type) goes unseen.
const OWNED_SQL: &str = "SELECT pg_catalog.pg_describe_object(d.classid, d.objid, d.objsubid) AS what, \
     CASE WHEN c.relkind OPERATOR(pg_catalog.=) 'v' AND n.nspname OPERATOR(pg_catalog.=) $2 THEN c.relname::text END AS view \
     FROM pg_catalog.pg_shdepend d \
     LEFT JOIN pg_catalog.pg_class c ON d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass \
          AND c.oid OPERATOR(pg_catalog.=) d.objid \
     LEFT JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
     WHERE d.deptype OPERATOR(pg_catalog.=) 'o' \
       AND d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_authid'::pg_catalog.regclass \
       AND d.refobjid OPERATOR(pg_catalog.=) (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) $1) \
       AND d.dbid OPERATOR(pg_catalog.=) ANY (ARRAY[0::pg_catalog.oid, (SELECT b.oid FROM pg_catalog.pg_database b \
            WHERE b.datname OPERATOR(pg_catalog.=) pg_catalog.current_database())]) \
     ORDER BY 1";

/// What the views a role owns use, from their rewrite rules (`pg_rewrite` and `pg_depend`):
/// `(view, kind, schema, name, relkind)` with kind `relation` or `function`.
const USES_SQL: &str = "SELECT DISTINCT v.relname::text AS view, 'relation' AS kind, rn.nspname::text AS schema, \
       r.relname::text AS name, r.relowner OPERATOR(pg_catalog.=) v.relowner AS own \
     FROM pg_catalog.pg_class v \
     JOIN pg_catalog.pg_rewrite w ON w.ev_class OPERATOR(pg_catalog.=) v.oid \
     JOIN pg_catalog.pg_depend d ON d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_rewrite'::pg_catalog.regclass \
          AND d.objid OPERATOR(pg_catalog.=) w.oid AND d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass \
     JOIN pg_catalog.pg_class r ON r.oid OPERATOR(pg_catalog.=) d.refobjid \
     JOIN pg_catalog.pg_namespace rn ON rn.oid OPERATOR(pg_catalog.=) r.relnamespace \
     WHERE v.relkind OPERATOR(pg_catalog.=) 'v' AND r.oid OPERATOR(pg_catalog.<>) v.oid \
       AND v.relowner OPERATOR(pg_catalog.=) (SELECT o.oid FROM pg_catalog.pg_roles o WHERE o.rolname OPERATOR(pg_catalog.=) $1) \
     UNION \
     SELECT DISTINCT v.relname::text, 'function', pn.nspname::text, p.oid::pg_catalog.regprocedure::text, false \
     FROM pg_catalog.pg_class v \
     JOIN pg_catalog.pg_rewrite w ON w.ev_class OPERATOR(pg_catalog.=) v.oid \
     JOIN pg_catalog.pg_depend d ON d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_rewrite'::pg_catalog.regclass \
          AND d.objid OPERATOR(pg_catalog.=) w.oid AND d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass \
     JOIN pg_catalog.pg_proc p ON p.oid OPERATOR(pg_catalog.=) d.refobjid \
     JOIN pg_catalog.pg_namespace pn ON pn.oid OPERATOR(pg_catalog.=) p.pronamespace \
     WHERE v.relkind OPERATOR(pg_catalog.=) 'v' AND pn.nspname OPERATOR(pg_catalog.<>) 'pg_catalog' \
       AND v.relowner OPERATOR(pg_catalog.=) (SELECT o.oid FROM pg_catalog.pg_roles o WHERE o.rolname OPERATOR(pg_catalog.=) $1) \
     ORDER BY 1, 2, 3, 4";

/// Checks what the contract owner owns and what its views use: `Ok(views)` when it owns views
/// in schema `contracts` only and they use nothing but the contract's `reads` (and each other),
/// otherwise the first problem.
async fn check_contract(conn: &mut PgConnection, install: &ContractInstall) -> Result<Vec<String>, String> {
    let owned: Vec<(String, Option<String>)> = sqlx::query_as(OWNED_SQL)
        .bind(&install.owner)
        .bind(CONTRACTS_SCHEMA)
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| format!("cannot list what it created: {}", crate::error::describe_sqlx(&e)))?;
    if let Some((what, _)) = owned.iter().find(|(_, view)| view.is_none()) {
        return Err(format!("it created {what}, which is not a view in schema `{CONTRACTS_SCHEMA}`"));
    }
    let views: Vec<String> = owned.into_iter().filter_map(|(_, view)| view).collect();
    let uses: Vec<(String, String, String, String, bool)> = sqlx::query_as(USES_SQL)
        .bind(&install.owner)
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| format!("cannot list what its views read: {}", crate::error::describe_sqlx(&e)))?;
    for (view, kind, schema, name, own) in uses {
        if kind == "function" {
            return Err(format!("view `{view}` calls function `{name}`, which is not PostgreSQL's own"));
        }
        let qualified_name = format!("{schema}.{name}");
        let own_view = own && schema == CONTRACTS_SCHEMA;
        if !own_view && !install.reads.contains(&qualified_name) {
            return Err(format!(
                "view `{view}` reads `{qualified_name}`, which the contract does not list in `reads` ({})",
                install.reads.join(", ")
            ));
        }
    }
    Ok(views)
}

/// Runs a contract's SQL in a session that logs in as the contract's own owner (never in the
/// admin's session), checks as the admin (in the catalog) that it created views only and that
/// they read nothing outside the contract's `reads`, records it, and grants SELECT to its
/// readers. When the check fails, nothing the SQL created remains.
async fn install_contract(
    conn: &mut PgConnection,
    url: &DatabaseUrl,
    install: &ContractInstall,
    statements: &mut usize,
) -> Result<Vec<String>, AdminError> {
    let fail = |message: String, help: &str| AdminError::Contract {
        contract: install.contract.clone(),
        file: install.file.clone(),
        message,
        help: help.to_owned(),
    };
    let mut session = crate::login::login_as(conn, url, &install.owner).await?;
    let ran = run_contract_sql(&mut session, install).await;
    close(session).await;
    *statements += 8 + install.previous_views.len();
    // Whatever the SQL did to its own role is undone: a password it set, settings it added.
    let role = ident(&install.owner);
    let database: String = sqlx::query_scalar("SELECT pg_catalog.current_database()::text")
        .fetch_one(&mut *conn)
        .await
        .map_err(db("reading the database name"))?;
    let undo = format!(
        "ALTER ROLE {role} PASSWORD NULL VALID UNTIL 'infinity'; ALTER ROLE {role} RESET ALL; \
         ALTER ROLE {role} IN DATABASE {} RESET ALL",
        ident(&database)
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(undo))
        .execute(&mut *conn)
        .await
        .map_err(db(format!("resetting `{}` after its contract ran", install.owner)))?;
    let checked = check_contract(conn, install).await;
    let help_scope = "a contract's SQL runs as its own owner, which may only create views in schema `contracts` that read the relations in its `reads`";
    let views = match (ran, checked) {
        (Ok(()), Ok(views)) if !views.is_empty() => views,
        (Ok(()), Ok(_)) => {
            return Err(fail("created no view".into(), "a contract file creates its views with CREATE VIEW"));
        }
        (ran, checked) => {
            // The session rolled back; anything the SQL still owns beyond the views installed
            // before was committed behind moat's back (COMMIT inside the file): drop it all.
            let escaped = match &checked {
                Ok(views) => ran.is_ok() || views.iter().any(|v| !install.previous_views.contains(v)),
                Err(_) => true,
            };
            if escaped {
                remove_contract(conn, install).await?;
            }
            let message = match (ran, checked) {
                (Err(message), _) | (Ok(()), Err(message)) => message,
                (Ok(()), Ok(_)) => "its SQL did not complete".to_owned(),
            };
            let message = if escaped { format!("{message}; everything it created was dropped") } else { message };
            return Err(fail(message, help_scope));
        }
    };
    let mut tx = conn.begin().await.map_err(db("starting the contract transaction"))?;
    let record = format!(
        "INSERT INTO {} (contract, checksum, views) VALUES ($1, $2, $3) \
         ON CONFLICT (contract) DO UPDATE SET checksum = excluded.checksum, views = excluded.views, \
         installed_at = pg_catalog.now()",
        qualified(CONTRACTS_SCHEMA, CONTRACTS_LEDGER)
    );
    sqlx::query(sqlx::AssertSqlSafe(record))
        .bind(&install.contract)
        .bind(&install.checksum)
        .bind(&views)
        .execute(&mut *tx)
        .await
        .map_err(db("recording the contract"))?;
    let readers: BTreeSet<&String> = install.readers.iter().collect();
    for view in &views {
        for reader in &readers {
            let grant = format!("GRANT SELECT ON TABLE {} TO {}", qualified(CONTRACTS_SCHEMA, view), ident(reader));
            sqlx::raw_sql(sqlx::AssertSqlSafe(grant))
                .execute(&mut *tx)
                .await
                .map_err(db("granting a contract view"))?;
            *statements += 1;
        }
    }
    tx.commit().await.map_err(db("committing the contract"))?;
    *statements += 3;
    Ok(views)
}

/// In the contract owner's session: one transaction that drops the previous views, runs the
/// file, checks the result in the catalog and commits only when the check passes. `Err` holds
/// the message (the transaction was rolled back).
async fn run_contract_sql(session: &mut PgConnection, install: &ContractInstall) -> Result<(), String> {
    let mut begin = format!("BEGIN; SET LOCAL search_path = {};", ident(CONTRACTS_SCHEMA));
    for view in &install.previous_views {
        begin.push_str(&format!(" DROP VIEW IF EXISTS {};", qualified(CONTRACTS_SCHEMA, view)));
    }
    if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(begin)).execute(&mut *session).await {
        let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *session).await;
        return Err(format!("cannot replace its previous views: {}", crate::error::describe_sqlx(&e)));
    }
    if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(install.text.clone())).execute(&mut *session).await {
        let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *session).await;
        let mut location = String::new();
        if let sqlx::Error::Database(dbe) = &e
            && let Some(pg) = dbe.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
            && let Some(sqlx::postgres::PgErrorPosition::Original(p)) = pg.position()
        {
            let byte = char_position_to_byte(&install.text, p);
            let at = LineIndex::new(&install.text).line_col(byte);
            location = format!(" at {}:{}:{}", install.file, at.line, at.column);
            // Denied at a name the contract does not declare: name the relation it reached for.
            let name = name_at(&install.text, byte);
            if pg.code() == "42501" && name.contains('.') && !install.reads.contains(&name) {
                return Err(format!(
                    "it reads `{name}`{location}, which the contract does not list in `reads` ({}): {}",
                    install.reads.join(", "),
                    crate::error::describe_sqlx(&e)
                ));
            }
        }
        return Err(format!("failed{location}: {}", crate::error::describe_sqlx(&e)));
    }
    // The file has run; from here on nothing of it executes. Pin the path for the check.
    let _ = sqlx::raw_sql("SET search_path = pg_catalog").execute(&mut *session).await;
    match check_contract(session, install).await {
        // Nothing the file did to its own role (a password to log in with later, a setting)
        // is committed with the views.
        Ok(_) => {
            match sqlx::raw_sql("ALTER ROLE CURRENT_USER PASSWORD NULL; ALTER ROLE CURRENT_USER RESET ALL; COMMIT")
                .execute(&mut *session)
                .await
            {
                Ok(_) => Ok(()),
                Err(e) => Err(format!("cannot commit: {}", crate::error::describe_sqlx(&e))),
            }
        }
        Err(message) => {
            let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *session).await;
            Err(message)
        }
    }
}

/// The (possibly qualified, possibly quoted) name that starts at byte `at` of `text`, unquoted.
fn name_at(text: &str, at: usize) -> String {
    let rest = text.get(at..).unwrap_or_default();
    let end =
        rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '"')).unwrap_or(rest.len());
    rest[..end].replace('"', "")
}

/// Drops everything a contract's owner owns and forgets the contract, when its SQL committed
/// something moat did not check. The next `moat provision` grants its reads again and installs
/// the contract anew.
async fn remove_contract(conn: &mut PgConnection, install: &ContractInstall) -> Result<(), AdminError> {
    let mut tx = conn.begin().await.map_err(db("starting to remove a contract"))?;
    let drop = format!("DROP OWNED BY {}", ident(&install.owner));
    sqlx::raw_sql(sqlx::AssertSqlSafe(drop))
        .execute(&mut *tx)
        .await
        .map_err(db(format!("dropping what `{}` created", install.owner)))?;
    let forget = format!(
        "DELETE FROM {} WHERE contract OPERATOR(pg_catalog.=) $1",
        qualified(CONTRACTS_SCHEMA, CONTRACTS_LEDGER)
    );
    sqlx::query(sqlx::AssertSqlSafe(forget))
        .bind(&install.contract)
        .execute(&mut *tx)
        .await
        .map_err(db("forgetting a contract"))?;
    tx.commit().await.map_err(db("removing a contract"))
}

/// Connects as the admin and checks that the server can run moat (PostgreSQL 13 or later).
pub async fn check_server(conn: &mut PgConnection) -> Result<(), AdminError> {
    let version: i32 = sqlx::query_scalar("SELECT pg_catalog.current_setting('server_version_num')::pg_catalog.int4")
        .fetch_one(&mut *conn)
        .await
        .map_err(db("reading the server version"))?;
    if version < 130000 {
        return Err(AdminError::Refused {
            message: format!("PostgreSQL {} is too old for moat", version / 10000),
            help: "moat needs PostgreSQL 13 or later (xid8 and pg_snapshot)".into(),
        });
    }
    Ok(())
}

/// Closes a connection, ignoring errors (the server may already have gone).
pub async fn close(conn: PgConnection) {
    let _ = conn.close().await;
}
