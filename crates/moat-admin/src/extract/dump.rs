//! The prepare step: the module's roles, schema and moat tables on the target (provisioning),
//! then its objects from `pg_dump --schema-only` of the source, split into the pre-data section
//! (types, functions, tables, views: before the copy) and the post-data section (constraints,
//! indexes, triggers, rules, policies: after it, so that nothing of the module fires on copied
//! rows). `pg_dump` and `pg_restore` read catalogs and print text; that text is module SQL and
//! runs only in an owner session ([`super::session`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use moat_core::manifest::Manifest;
use moat_core::quote::{ident, qualified};
use sqlx::{Connection, PgConnection};

use super::Ctx;
use super::session::OwnerSession;
use crate::error::{AdminError, db};
use crate::internal;
use crate::policy::Policy;
use crate::target::DatabaseUrl;

/// The module's objects as SQL, by section.
#[derive(Debug, Clone, Default)]
pub struct Sections {
    /// Types, functions, sequences, tables, views: what the copy needs in place.
    pub pre_data: String,
    /// Constraints, indexes, triggers, rules, policies: after the copy.
    pub post_data: String,
    /// The post-data section's constraints (primary keys, unique and exclusion constraints):
    /// what logical replication needs in the target before it applies rows (the keys it finds
    /// rows by).
    pub keys: String,
    /// The rest of the post-data section but the triggers (indexes, foreign keys, rules,
    /// policies): built once the initial copy is in, faster than row by row.
    pub after_copy: String,
    /// The triggers alone (with their `ENABLE ALWAYS`/`REPLICA` settings, which would make the
    /// replication's apply worker, a superuser, run them): created once replication is gone.
    pub triggers: String,
}

/// Prepares the target: drops what an interrupted earlier attempt of this move left there,
/// provisions the module, restores the pre-data section. Returns the sections for the copy.
pub async fn prepare(ctx: &Ctx<'_>, src: &mut PgConnection, dst: &mut PgConnection) -> Result<Sections, AdminError> {
    drop_target_schema(ctx, dst).await?;
    let reduced = reduced_manifest(ctx.manifest, ctx.module);
    crate::provision::provision(dst, ctx.target_url, &reduced).await?;
    create_moat_tables(ctx, src, dst).await?;
    let sections = sections(ctx, src).await?;
    run_module_sql(ctx, dst, ctx.target_url, &sections.pre_data, "pre-data").await?;
    Ok(sections)
}

/// Takes back what provisioning the reduced manifest gave the module's roles in the target
/// database besides its schema: `CONNECT` and their settings there (and the relay's, unless
/// another module of the manifest lives in that database).
pub async fn forget_target_roles(ctx: &Ctx<'_>, dst: &mut PgConnection) -> Result<(), AdminError> {
    let roles = ctx.manifest.roles();
    let mut forget = vec![roles.module_runtime(&ctx.module.name), roles.module_migrator(&ctx.module.name)];
    let schemas: Vec<String> = sqlx::query_scalar("SELECT nspname::text FROM pg_catalog.pg_namespace")
        .fetch_all(&mut *dst)
        .await
        .map_err(db("listing the target's schemas"))?;
    if !schemas.iter().any(|s| s != ctx.schema() && ctx.manifest.module_by_schema(s).is_some()) {
        forget.push(roles.relay());
    }
    let existing: Vec<String> = sqlx::query_scalar(
        "SELECT rolname::text FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) ANY ($1)",
    )
    .bind(&forget)
    .fetch_all(&mut *dst)
    .await
    .map_err(db("looking up roles"))?;
    let database = ident(&ctx.target_url.database());
    for role in existing {
        for sql in [
            format!("REVOKE CONNECT ON DATABASE {database} FROM {}", ident(&role)),
            format!("ALTER ROLE {} IN DATABASE {database} RESET ALL", ident(&role)),
        ] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone()))
                .execute(&mut *dst)
                .await
                .map_err(db(format!("rolling back the target (`{sql}`)")))?;
        }
    }
    Ok(())
}

/// Drops the module's schema in the target, with everything in it. Only ever called while the
/// journal in the source says a move of ours is under way (preflight refuses a target that held
/// the schema before), so this drops only what the move created.
pub async fn drop_target_schema(ctx: &Ctx<'_>, dst: &mut PgConnection) -> Result<(), AdminError> {
    let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", ident(ctx.schema()));
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut *dst)
        .await
        .map_err(db(format!("dropping schema `{}` in the target database", ctx.schema())))?;
    Ok(())
}

/// The manifest with only `module` (its `depends_on` kept, so that it gets its inbox), no
/// contracts and no consumers (they read contracts, which stay): provisioning it in the target
/// creates the module's roles, schema, grants, default privileges and moat tables there and
/// touches no other module's.
fn reduced_manifest(manifest: &Manifest, module: &moat_core::manifest::Module) -> Manifest {
    // The other modules stay as modules elsewhere: they still count as subscribers (the
    // outbox, its progress rows and the relay's rights) and their roles are left alone.
    let mut reduced = manifest.restricted(|m| m.name == module.name, false);
    reduced.elsewhere_contracts.extend(reduced.contracts.drain(..).map(|c| c.name));
    reduced.elsewhere_consumers.append(&mut reduced.consumers);
    reduced
}

/// A relation created with its kind (`r`, `p`, `S`), for its grants.
type Created = (String, &'static str);

/// The outbox and the inbox where the source has them and provisioning the reduced manifest did
/// not create them (a module others depend on: the reduced manifest has no subscriber; a module
/// that stopped publishing or subscribing keeps its tables), with the grants the whole
/// manifest's policy gives.
async fn create_moat_tables(ctx: &Ctx<'_>, src: &mut PgConnection, dst: &mut PgConnection) -> Result<(), AdminError> {
    let schema = ctx.schema();
    let roles = ctx.manifest.roles();
    let has = |table: &'static str| {
        format!(
            "SELECT pg_catalog.count(*) > 0 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
             WHERE n.nspname OPERATOR(pg_catalog.=) {} AND c.relname OPERATOR(pg_catalog.=) {}",
            moat_core::quote::literal(schema),
            moat_core::quote::literal(table)
        )
    };
    let mut families: Vec<(Vec<String>, Vec<Created>)> = Vec::new();
    for table in [internal::OUTBOX, internal::SUBSCRIPTIONS] {
        let in_source: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(has(table)))
            .fetch_one(&mut *src)
            .await
            .map_err(db("looking for moat's tables in the source"))?;
        let in_target: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(has(table)))
            .fetch_one(&mut *dst)
            .await
            .map_err(db("looking for moat's tables in the target"))?;
        if !in_source || in_target {
            continue;
        }
        if table == internal::OUTBOX {
            let mut relations: Vec<Created> =
                vec![(internal::OUTBOX.to_owned(), "p"), (internal::OUTBOX_SEQUENCE.to_owned(), "S")];
            relations.extend((0..internal::OUTBOX_SLOTS).map(|s| (internal::outbox_partition(s), "r")));
            relations.push((internal::OUTBOX_PROGRESS.to_owned(), "r"));
            families.push((
                internal::outbox_ddl(schema, &roles.moat_owner(), &roles.module_runtime(&ctx.module.name)),
                relations,
            ));
        } else {
            families.push((
                internal::inbox_ddl(schema, &roles.moat_owner()),
                vec![
                    (internal::SUBSCRIPTIONS.to_owned(), "r"),
                    (internal::INBOX.to_owned(), "r"),
                    (internal::INBOX_SEQUENCE.to_owned(), "S"),
                ],
            ));
        }
    }
    if families.is_empty() {
        return Ok(());
    }
    let existing: Vec<String> = sqlx::query_scalar("SELECT rolname::text FROM pg_catalog.pg_roles")
        .fetch_all(&mut *dst)
        .await
        .map_err(db("listing roles"))?;
    let installed = BTreeMap::new();
    let policy = Policy::new(ctx.manifest, &installed);
    let mut sql = Vec::new();
    let mut relations: Vec<Created> = Vec::new();
    for (ddl, family) in families {
        sql.extend(ddl);
        relations.extend(family);
    }
    for (name, kind) in &relations {
        let Some((_, wanted)) = policy.relation(schema, name, kind) else { continue };
        for (grantee, privileges) in wanted.iter().filter(|(g, _)| existing.contains(g)) {
            let keyword = if *kind == "S" { "SEQUENCE" } else { "TABLE" };
            let list: Vec<&str> = privileges.iter().copied().collect();
            sql.push(format!(
                "GRANT {} ON {keyword} {} TO {}",
                list.join(", "),
                qualified(schema, name),
                ident(grantee)
            ));
        }
    }
    let outbox_created = relations.iter().any(|(name, _)| name == internal::OUTBOX);
    for (grantee, privilege, columns) in
        policy.column_privileges(schema, internal::OUTBOX).into_iter().filter(|_| outbox_created)
    {
        sql.push(internal::column_grant_sql(schema, internal::OUTBOX, privilege, columns, &grantee));
    }
    let relay = roles.relay();
    if ctx.manifest.is_depended_on(&ctx.module.name) && existing.contains(&relay) {
        sql.push(format!("GRANT USAGE ON SCHEMA {} TO {}", ident(schema), ident(&relay)));
        sql.push(format!("GRANT CONNECT ON DATABASE {} TO {}", ident(&ctx.target_url.database()), ident(&relay)));
    }
    let mut tx = dst.begin().await.map_err(db("creating moat's tables in the target"))?;
    for statement in sql {
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement.clone()))
            .execute(&mut *tx)
            .await
            .map_err(db(format!("creating moat's tables in the target (`{statement}`)")))?;
    }
    tx.commit().await.map_err(db("committing moat's tables in the target"))
}

/// Dumps the module's schema from the source (catalog reads only) and prints its pre-data and
/// post-data sections without the schema itself and without moat's objects (owned by
/// `<project>_moat`; provisioning makes those).
pub async fn sections(ctx: &Ctx<'_>, src: &mut PgConnection) -> Result<Sections, AdminError> {
    let version: i32 = sqlx::query_scalar("SELECT pg_catalog.current_setting('server_version_num')::int")
        .fetch_one(&mut *src)
        .await
        .map_err(db("reading the source's server version"))?;
    let major = u32::try_from(version / 10_000).unwrap_or(0);
    let pg_dump = crate::embedded::find_client_tool("pg_dump", major)?;
    let pg_restore = crate::embedded::find_client_tool("pg_restore", major)?;
    let schema = ctx.schema().to_owned();
    let moat_owner = ctx.manifest.roles().moat_owner();
    let url = ctx.source_url.clone();
    tokio::task::spawn_blocking(move || dump_sections(&pg_dump, &pg_restore, &url, &schema, &moat_owner))
        .await
        .map_err(|e| AdminError::Refused {
            message: format!("dumping the module's schema stopped: {e}"),
            help: "run `moat extract` again".into(),
        })?
}

fn dump_sections(
    pg_dump: &Path,
    pg_restore: &Path,
    url: &DatabaseUrl,
    schema: &str,
    moat_owner: &str,
) -> Result<Sections, AdminError> {
    let dir = std::env::temp_dir().join(format!("moat-extract-{}", uuid::Uuid::new_v4().simple()));
    let io = |action: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| AdminError::Io { action, path, source }
    };
    std::fs::create_dir(&dir).map_err(io("create", &dir))?;
    let result = (|| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(io("protect", &dir))?;
        let archive = dir.join("schema.dump");
        let (dbname, password) = libpq_target(url);
        let mut dump = Command::new(pg_dump);
        dump.arg("--schema-only")
            .arg("--format=custom")
            .arg(format!("--schema=\"{schema}\""))
            .arg("--lock-wait-timeout=10000")
            .arg("--no-tablespaces")
            .arg(format!("--file={}", archive.display()))
            .arg(format!("--dbname={dbname}"));
        run_tool(dump, password.as_deref(), "pg_dump")?;
        let mut list = Command::new(pg_restore);
        list.arg("--list").arg(&archive);
        let toc = String::from_utf8_lossy(&run_tool(list, None, "pg_restore --list")?).into_owned();
        let kept = filter_toc(&toc, moat_owner);
        let list_path = dir.join("schema.list");
        std::fs::write(&list_path, &kept).map_err(io("write", &list_path))?;
        let write_list = |name: &str, keep: &dyn Fn(Option<&str>) -> bool| -> Result<PathBuf, AdminError> {
            let path = dir.join(name);
            let lines: Vec<&str> = kept.lines().filter(|l| keep(entry_kind(l))).collect();
            std::fs::write(&path, lines.join("\n") + "\n").map_err(io("write", &path))?;
            Ok(path)
        };
        let keys_path = write_list("keys.list", &|k| k == Some("CONSTRAINT"))?;
        let after_path = write_list("after.list", &|k| k != Some("CONSTRAINT") && k != Some("TRIGGER"))?;
        let triggers_path = write_list("triggers.list", &|k| k == Some("TRIGGER"))?;
        let section_of = |name: &str, list: &Path| -> Result<String, AdminError> {
            let mut restore = Command::new(pg_restore);
            restore
                .arg(format!("--section={name}"))
                .arg(format!("--use-list={}", list.display()))
                .arg("--no-owner")
                .arg("--no-privileges")
                .arg("--no-tablespaces")
                .arg("--file=-")
                .arg(&archive);
            Ok(module_script(&String::from_utf8_lossy(&run_tool(restore, None, "pg_restore")?)))
        };
        let section = |name: &str| section_of(name, &list_path);
        Ok(Sections {
            pre_data: section("pre-data")?,
            post_data: section("post-data")?,
            keys: section_of("post-data", &keys_path)?,
            after_copy: section_of("post-data", &after_path)?,
            triggers: section_of("post-data", &triggers_path)?,
        })
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The kind of a line of `pg_restore --list` (`id; catalog oid KIND schema name owner`:
/// `CONSTRAINT`, `FK CONSTRAINT` is `FK`, `INDEX`, `TRIGGER`, ...); `None` for a comment.
fn entry_kind(line: &str) -> Option<&str> {
    if line.trim_start().starts_with(';') {
        return None;
    }
    line.split_whitespace().nth(3)
}

/// The TOC list without the entries owned by moat's role (the schema, moat's tables, their
/// indexes, constraints, defaults and sequences, the cluster function).
fn filter_toc(toc: &str, moat_owner: &str) -> String {
    toc.lines()
        .filter(|line| line.trim_start().starts_with(';') || line.split_whitespace().last() != Some(moat_owner))
        .map(|line| format!("{line}\n"))
        .collect()
}

/// The script as moat runs it in an owner session: without the psql meta-commands `pg_restore`
/// wraps it in (`\restrict KEY` on its first line and `\unrestrict KEY` at its end, which keep
/// psql from running meta-commands smuggled into a dump; moat sends statements to the server,
/// which runs none), and without the header's `set_config('search_path', '', false)`: every name
/// in the script is qualified, and the session keeps the module's schema as its `search_path` so
/// that the module's functions that its indexes and constraints run find its tables. Only those
/// lines go (the meta-commands matched by their random key, the setting only before the first
/// statement that is not a `SET`), so a line of a function body that looks like them stays.
fn module_script(script: &str) -> String {
    const HEADER_SEARCH_PATH: &str = "SELECT pg_catalog.set_config('search_path', '', false);";
    let mut lines: Vec<&str> = script.lines().collect();
    let key = lines
        .iter()
        .position(|l| l.starts_with("\\restrict "))
        .map(|i| (i, lines[i]["\\restrict ".len()..].to_owned()));
    if let Some((first, key)) = key {
        let end = format!("\\unrestrict {key}");
        if let Some(last) = lines.iter().rposition(|l| *l == end) {
            lines.remove(last);
        }
        lines.remove(first);
    }
    let header = lines
        .iter()
        .position(|l| !(l.is_empty() || l.starts_with("--") || l.starts_with("SET ") || *l == HEADER_SEARCH_PATH))
        .unwrap_or(lines.len());
    if let Some(at) = lines[..header].iter().position(|l| *l == HEADER_SEARCH_PATH) {
        lines.remove(at);
    }
    lines.into_iter().map(|line| format!("{line}\n")).collect()
}

/// The URL for a client program without its password, and the password (for `PGPASSWORD`, so
/// that it never shows in the process list).
fn libpq_target(url: &DatabaseUrl) -> (String, Option<String>) {
    match url::Url::parse(url.expose()) {
        Ok(mut parsed) => {
            let password = parsed.password().map(|p| {
                url::form_urlencoded::parse(format!("x={p}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default()
            });
            let _ = parsed.set_password(None);
            (parsed.to_string(), password)
        }
        Err(_) => (url.expose().to_owned(), None),
    }
}

fn run_tool(mut command: Command, password: Option<&str>, what: &str) -> Result<Vec<u8>, AdminError> {
    if let Some(password) = password {
        command.env("PGPASSWORD", password);
    }
    let program: PathBuf = command.get_program().into();
    let output = command.output().map_err(|source| AdminError::Io { action: "run", path: program.clone(), source })?;
    if !output.status.success() {
        return Err(AdminError::Refused {
            message: format!(
                "`{what}` ({}) failed: {}",
                program.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            ),
            help: "check that the admin URL can read the source database's catalog, then run `moat extract` again"
                .into(),
        });
    }
    Ok(output.stdout)
}

/// Runs a section of the module's SQL in the target, in one transaction of an owner session,
/// checked before its commit as a migration is.
pub async fn run_module_sql(
    ctx: &Ctx<'_>,
    admin: &mut PgConnection,
    url: &DatabaseUrl,
    sql: &str,
    section: &str,
) -> Result<(), AdminError> {
    let mut session = OwnerSession::open(admin, url, ctx.manifest, ctx.module).await?;
    let result = async {
        session.begin("READ COMMITTED").await?;
        for span in moat_core::sqltext::split_statements(sql) {
            let statement = &sql[span.start..span.end];
            if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(statement.to_owned())).execute(&mut session.conn).await {
                let first = statement.lines().find(|l| !l.trim().is_empty() && !l.starts_with("--")).unwrap_or("");
                return Err(AdminError::Refused {
                    message: format!(
                        "the module's {section} SQL failed in database `{}` as `{}` at `{}`: {}",
                        url.database(),
                        session.owner(),
                        first.trim(),
                        crate::error::describe_sqlx(&e)
                    ),
                    help: "this SQL is what `pg_dump --schema-only` prints of the module in the source; fix the object in the source with a migration, or roll back with `moat extract --abort`".into(),
                });
            }
        }
        if let Err(what) = session.check(true).await {
            return Err(AdminError::Refused {
                message: format!("the module's {section} SQL in database `{}`: {what}", url.database()),
                help: "a function of the module that its indexes, constraints or defaults run changed roles or ended the transaction; fix it in the source".into(),
            });
        }
        sqlx::raw_sql("COMMIT").execute(&mut session.conn).await.map_err(db(format!("committing the module's {section} SQL")))?;
        Ok(())
    }
    .await;
    session.close().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moat_entries_leave_the_list() {
        let toc = ";\n; Archive created\n;\n5; 2615 16385 SCHEMA - billing t_moat\n\
                   215; 1259 16386 TABLE billing charges t_billing_owner\n\
                   216; 1259 16390 TABLE billing moat_migrations t_moat\n\
                   300; 2606 16400 CONSTRAINT billing moat_migrations moat_migrations_pkey t_moat\n";
        let kept = filter_toc(toc, "t_moat");
        assert!(kept.contains("charges"));
        assert!(!kept.contains("SCHEMA - billing"));
        assert!(!kept.contains("moat_migrations"));
        assert!(kept.starts_with(";\n; Archive"));
    }

    #[test]
    fn only_the_keyed_meta_commands_and_the_header_search_path_leave_the_script() {
        let script = "\\restrict K1\nSET lock_timeout = 0;\nSELECT pg_catalog.set_config('search_path', '', false);\n\
                      CREATE FUNCTION f() RETURNS int AS $$\n\\unrestrict X\nSELECT pg_catalog.set_config('search_path', '', false);\n$$;\n\\unrestrict K1\n";
        assert_eq!(
            module_script(script),
            "SET lock_timeout = 0;\nCREATE FUNCTION f() RETURNS int AS $$\n\\unrestrict X\nSELECT pg_catalog.set_config('search_path', '', false);\n$$;\n"
        );
    }

    #[test]
    fn client_programs_get_no_password_in_arguments() {
        let url = DatabaseUrl::parse("postgres://admin:s3cret@db:5433/clinic").unwrap();
        let (dbname, password) = libpq_target(&url);
        assert_eq!(dbname, "postgres://admin@db:5433/clinic");
        assert_eq!(password.as_deref(), Some("s3cret"));
    }
}
