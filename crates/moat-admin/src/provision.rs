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
use crate::target::password_from_env;

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
    if snapshot.relation(CONTRACTS_SCHEMA, CONTRACTS_LEDGER).is_some() {
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

/// `moat provision`: plans under the project's provisioning lock and runs the plan in one
/// transaction, so that it applies whole or not at all.
pub async fn provision(conn: &mut PgConnection, manifest: &Manifest) -> Result<ProvisionOutcome, AdminError> {
    let mut tx = conn.begin().await.map_err(db("starting the provisioning transaction"))?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("moat:provision:{}", manifest.project))
        .execute(&mut *tx)
        .await
        .map_err(db("taking the provisioning lock"))?;
    let (snapshot, inputs) = read_state(&mut tx, manifest).await?;
    let plan = plan(manifest, &snapshot, &inputs);
    let mut statements = 4 + usize::from(!inputs.installed_contracts.is_empty());
    let mut contract_views = BTreeMap::new();
    for step in &plan.steps {
        match step {
            Step::Sql { sql, display, .. } => {
                statements += 1;
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone()))
                    .execute(&mut *tx)
                    .await
                    .map_err(db(format!("provisioning failed at `{}`", display.as_deref().unwrap_or(sql))))?;
            }
            Step::InstallContract(install) => {
                let views = install_contract(&mut tx, install, &mut statements).await?;
                contract_views.insert(install.contract.clone(), views);
            }
        }
    }
    tx.commit().await.map_err(db("committing the provisioning transaction"))?;
    Ok(ProvisionOutcome { plan, contract_views, statements })
}

async fn relations_in_contracts_schema(conn: &mut PgConnection) -> Result<BTreeMap<String, String>, AdminError> {
    let rows = sqlx::query(
        "SELECT c.relname::text AS name, c.relkind::text AS kind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')",
    )
    .bind(CONTRACTS_SCHEMA)
    .fetch_all(&mut *conn)
    .await
    .map_err(db("listing the contracts schema"))?;
    Ok(rows.into_iter().map(|r| (r.get("name"), r.get("kind"))).collect())
}

/// Runs a contract's SQL as the contracts owner, checks that it created views only and that they
/// read nothing outside the contract's `reads`, records it, and grants SELECT to its readers.
async fn install_contract(
    conn: &mut PgConnection,
    install: &ContractInstall,
    statements: &mut usize,
) -> Result<Vec<String>, AdminError> {
    let fail = |message: String, help: &str| AdminError::Contract {
        contract: install.contract.clone(),
        file: install.file.clone(),
        message,
        help: help.to_owned(),
    };
    for view in &install.previous_views {
        let sql = format!("DROP VIEW IF EXISTS {}", qualified(CONTRACTS_SCHEMA, view));
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut *conn)
            .await
            .map_err(db(format!("replacing contract `{}`", install.contract)))?;
        *statements += 1;
    }
    let before = relations_in_contracts_schema(conn).await?;
    let enter =
        format!("SET LOCAL ROLE {}; SET LOCAL search_path = {}", ident(&install.owner), ident(CONTRACTS_SCHEMA));
    sqlx::raw_sql(sqlx::AssertSqlSafe(enter)).execute(&mut *conn).await.map_err(db("becoming the contracts owner"))?;
    if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(install.text.clone())).execute(&mut *conn).await {
        let mut location = String::new();
        if let sqlx::Error::Database(dbe) = &e
            && let Some(pg) = dbe.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
            && let Some(sqlx::postgres::PgErrorPosition::Original(p)) = pg.position()
        {
            let at = LineIndex::new(&install.text).line_col(char_position_to_byte(&install.text, p));
            location = format!(" at {}:{}:{}", install.file, at.line, at.column);
        }
        return Err(fail(
            format!("failed{location}: {}", crate::error::describe_sqlx(&e)),
            "a contract runs as the contracts owner, which may only create views in schema `contracts` and read the relations in its `reads`",
        ));
    }
    let after = relations_in_contracts_schema(conn).await?;
    let created: Vec<(String, String)> = after.into_iter().filter(|(name, _)| !before.contains_key(name)).collect();
    if let Some((name, _)) = created.iter().find(|(_, kind)| kind != "v") {
        return Err(fail(
            format!("created `{name}`, which is not a view"),
            "a contract file may only create views and comment on them",
        ));
    }
    let views: Vec<String> = created.into_iter().map(|(name, _)| name).collect();
    if views.is_empty() {
        return Err(fail("created no view".into(), "a contract file creates its views with CREATE VIEW"));
    }
    for view in &views {
        // Views read with their owner's rights: reading nothing proves the contract owner may
        // read every relation the view uses, which are exactly the declared `reads`.
        let probe = format!("SELECT * FROM {} LIMIT 0", qualified(CONTRACTS_SCHEMA, view));
        if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(probe)).execute(&mut *conn).await {
            return Err(fail(
                format!("view `{view}` cannot be read: {}", crate::error::describe_sqlx(&e)),
                "the view reads a relation that is not in the contract's `reads`; declare it in moat.toml or change the view",
            ));
        }
    }
    let record = format!(
        "INSERT INTO {} (contract, checksum, views) VALUES ($1, $2, $3) \
         ON CONFLICT (contract) DO UPDATE SET checksum = excluded.checksum, views = excluded.views, installed_at = now()",
        qualified(CONTRACTS_SCHEMA, CONTRACTS_LEDGER)
    );
    sqlx::query(sqlx::AssertSqlSafe(record))
        .bind(&install.contract)
        .bind(&install.checksum)
        .bind(&views)
        .execute(&mut *conn)
        .await
        .map_err(db("recording the contract"))?;
    sqlx::raw_sql("RESET ROLE; SET LOCAL search_path TO DEFAULT")
        .execute(&mut *conn)
        .await
        .map_err(db("leaving the contracts owner"))?;
    let readers: BTreeSet<&String> = install.readers.iter().collect();
    for view in &views {
        for reader in &readers {
            let grant = format!("GRANT SELECT ON TABLE {} TO {}", qualified(CONTRACTS_SCHEMA, view), ident(reader));
            sqlx::raw_sql(sqlx::AssertSqlSafe(grant))
                .execute(&mut *conn)
                .await
                .map_err(db("granting a contract view"))?;
            *statements += 1;
        }
    }
    *statements += 6 + views.len();
    Ok(views)
}

/// Connects as the admin and checks that the server can run moat (PostgreSQL 13 or later).
pub async fn check_server(conn: &mut PgConnection) -> Result<(), AdminError> {
    let version: i32 = sqlx::query_scalar("SELECT current_setting('server_version_num')::int")
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
