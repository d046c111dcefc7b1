//! Preflight: everything that would keep the module from moving whole, found before anything
//! changes, each with the objects named. Catalog reads only, on both sides.

use std::collections::BTreeSet;

use sqlx::PgConnection;

use super::{Ctx, objects};
use crate::error::{AdminError, db};
use crate::internal::ADDED_COLUMNS;

/// One reason the module cannot move.
struct Problem {
    message: String,
    help: String,
}

/// Runs every check; `resuming`: a move of ours is under way (its journal row exists), so the
/// target may hold the schema it created.
pub async fn check(
    ctx: &Ctx<'_>,
    src: &mut PgConnection,
    dst: &mut PgConnection,
    resuming: bool,
) -> Result<(), AdminError> {
    let schema = ctx.schema();
    let module = &ctx.module.name;
    let mut problems: Vec<Problem> = Vec::new();
    if !ctx.module.claims.is_empty() {
        problems.push(Problem {
            message: format!(
                "module `{module}` claims objects outside its schema ({}), which would stay behind",
                ctx.module.claims.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ")
            ),
            help: format!(
                "finish the split first: move the claimed objects into schema `{schema}` with a migration and remove `claims` from `[modules.{module}]`"
            ),
        });
    }
    if !objects::schema_exists(src, schema).await? {
        return Err(AdminError::Refused {
            message: format!(
                "schema `{schema}` of module `{module}` does not exist in database `{}`, where its data should be",
                ctx.source_url.database()
            ),
            help: "run `moat up` to create it, or check that the manifest's `database` of the module is what you meant"
                .into(),
        });
    }
    let roles = ctx.manifest.roles();
    let migrator = roles.module_migrator(module);
    let has_migrator: bool = sqlx::query_scalar(
        "SELECT pg_catalog.count(*) > 0 FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) $1",
    )
    .bind(&migrator)
    .fetch_one(&mut *src)
    .await
    .map_err(db("looking for the module's migrator"))?;
    if !has_migrator {
        problems.push(Problem {
            message: format!("role `{migrator}` does not exist: moat reads and writes the module's data only as its owner, through it"),
            help: "run `moat up` (or `moat provision`) first".into(),
        });
    }
    let module_roles = [roles.module_owner(module), roles.module_runtime(module), roles.module_migrator(module)];
    let large_objects: i64 = sqlx::query_scalar(
        "SELECT pg_catalog.count(*) FROM pg_catalog.pg_largeobject_metadata \
         WHERE pg_catalog.pg_get_userbyid(lomowner) OPERATOR(pg_catalog.=) ANY ($1)",
    )
    .bind(&module_roles)
    .fetch_one(&mut *src)
    .await
    .map_err(db("counting the module's large objects"))?;
    if large_objects > 0 {
        problems.push(Problem {
            message: format!(
                "the module's roles own {large_objects} large object(s) in database `{}`: large objects belong to no schema and would stay behind",
                ctx.source_url.database()
            ),
            help: "store their contents in a `bytea` column of a module table (then `lo_unlink` them), then run `moat extract` again".into(),
        });
    }
    dependents(src, ctx, &mut problems).await?;
    let extensions = outward(src, ctx, &mut problems).await?;
    missing_extensions(dst, &extensions, ctx, &mut problems).await?;
    tables(src, ctx, &mut problems).await?;
    objects::check_moat_tables(src, schema, &roles.moat_owner(), "source").await?;
    old_layout(src, ctx, &mut problems).await?;
    if !resuming && objects::schema_exists(dst, schema).await? {
        problems.push(Problem {
            message: format!(
                "the target database `{}` already holds a schema `{schema}`",
                ctx.target_url.database()
            ),
            help: format!(
                "moat moves a module only into a database without its schema; inspect `{schema}` in `{}` and drop it if it is a leftover",
                ctx.target_url.database()
            ),
        });
    }
    if problems.is_empty() {
        return Ok(());
    }
    let mut helps: Vec<String> = Vec::new();
    for p in &problems {
        if !helps.contains(&p.help) {
            helps.push(p.help.clone());
        }
    }
    Err(AdminError::Refused {
        message: format!(
            "module `{module}` cannot move to database `{}`; nothing was changed:\n{}",
            ctx.target_url.database(),
            problems.iter().map(|p| format!("  - {}", p.message)).collect::<Vec<_>>().join("\n")
        ),
        help: helps.join("\n  help: "),
    })
}

/// The objects of the module's schema and their parts (defaults, constraints, triggers, rules,
/// policies) as `(classid, objid)`, for `pg_depend`. `$1` is the schema.
const INSIDE: &str = "inside(classid, objid) AS (
  SELECT 'pg_catalog.pg_class'::pg_catalog.regclass, c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace WHERE n.nspname OPERATOR(pg_catalog.=) $1
  UNION ALL SELECT 'pg_catalog.pg_proc'::pg_catalog.regclass, p.oid FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) p.pronamespace WHERE n.nspname OPERATOR(pg_catalog.=) $1
  UNION ALL SELECT 'pg_catalog.pg_type'::pg_catalog.regclass, t.oid FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) t.typnamespace WHERE n.nspname OPERATOR(pg_catalog.=) $1
  UNION ALL SELECT 'pg_catalog.pg_constraint'::pg_catalog.regclass, o.oid FROM pg_catalog.pg_constraint o JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) o.connamespace WHERE n.nspname OPERATOR(pg_catalog.=) $1
  UNION ALL SELECT 'pg_catalog.pg_attrdef'::pg_catalog.regclass, a.oid FROM pg_catalog.pg_attrdef a JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) a.adrelid JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace WHERE n.nspname OPERATOR(pg_catalog.=) $1
  UNION ALL SELECT 'pg_catalog.pg_trigger'::pg_catalog.regclass, g.oid FROM pg_catalog.pg_trigger g JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) g.tgrelid JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace WHERE n.nspname OPERATOR(pg_catalog.=) $1
  UNION ALL SELECT 'pg_catalog.pg_rewrite'::pg_catalog.regclass, r.oid FROM pg_catalog.pg_rewrite r JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) r.ev_class JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace WHERE n.nspname OPERATOR(pg_catalog.=) $1
  UNION ALL SELECT 'pg_catalog.pg_policy'::pg_catalog.regclass, p.oid FROM pg_catalog.pg_policy p JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) p.polrelid JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace WHERE n.nspname OPERATOR(pg_catalog.=) $1
  UNION ALL SELECT 'pg_catalog.pg_namespace'::pg_catalog.regclass, n.oid FROM pg_catalog.pg_namespace n WHERE n.nspname OPERATOR(pg_catalog.=) $1
)";

/// Objects outside the module's schema that depend on objects in it: another module's view or
/// foreign key, a contract's view, a publication. They would break, or block the final drop.
/// (Default privileges in the schema are provisioning's, made again in the target.)
async fn dependents(src: &mut PgConnection, ctx: &Ctx<'_>, problems: &mut Vec<Problem>) -> Result<(), AdminError> {
    let sql = format!(
        "WITH {INSIDE}, deps AS (
           -- A view's dependencies are its rewrite rule's: name the view.
           SELECT CASE WHEN d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_rewrite'::pg_catalog.regclass
                       THEN 'pg_catalog.pg_class'::pg_catalog.regclass ELSE d.classid END AS classid,
                  CASE WHEN d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_rewrite'::pg_catalog.regclass
                       THEN (SELECT w.ev_class FROM pg_catalog.pg_rewrite w WHERE w.oid OPERATOR(pg_catalog.=) d.objid) ELSE d.objid END AS objid,
                  CASE WHEN d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_rewrite'::pg_catalog.regclass THEN 0 ELSE d.objsubid END AS objsubid,
                  pg_catalog.pg_describe_object(d.refclassid, d.refobjid, d.refobjsubid) AS referenced
           FROM pg_catalog.pg_depend d
           JOIN inside r ON r.classid OPERATOR(pg_catalog.=) d.refclassid AND r.objid OPERATOR(pg_catalog.=) d.refobjid
           WHERE d.deptype OPERATOR(pg_catalog.=) ANY ('{{n,a,P,S}}')
             AND NOT EXISTS (SELECT FROM inside i WHERE i.classid OPERATOR(pg_catalog.=) d.classid AND i.objid OPERATOR(pg_catalog.=) d.objid)
             AND d.classid OPERATOR(pg_catalog.<>) 'pg_catalog.pg_default_acl'::pg_catalog.regclass)
         SELECT pg_catalog.pg_describe_object(classid, objid, objsubid),
                pg_catalog.string_agg(DISTINCT referenced, ', '),
                (pg_catalog.pg_identify_object(classid, objid, objsubid)).schema::text
         FROM deps GROUP BY classid, objid, objsubid ORDER BY 1"
    );
    let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(ctx.schema())
        .fetch_all(&mut *src)
        .await
        .map_err(db("reading what depends on the module's objects"))?;
    for (dependent, referenced, schema) in rows {
        let whose = match schema.as_deref() {
            Some(s) if s == moat_core::names::CONTRACTS_SCHEMA => " (a contract's)".to_owned(),
            Some(s) => match ctx.manifest.module_by_schema(s) {
                Some(m) => format!(" (module `{}`'s)", m.name),
                None => format!(" (in schema `{s}`)"),
            },
            None => String::new(),
        };
        problems.push(Problem {
            message: format!("{dependent}{whose} depends on {referenced}"),
            help: format!(
                "nothing outside module `{}` may depend on its objects once it lives in its own database: replace the contract view or \
                 the other module's reference with API composition or an event-fed read model, drop it, then run `moat extract` again",
                ctx.module.name
            ),
        });
    }
    Ok(())
}

/// Objects outside the schema that the module's objects depend on: extension members are
/// returned as `(extension, schema)` (the target needs them); anything else is a problem.
async fn outward(
    src: &mut PgConnection,
    ctx: &Ctx<'_>,
    problems: &mut Vec<Problem>,
) -> Result<BTreeSet<(String, String)>, AdminError> {
    let sql = format!(
        "WITH {INSIDE}, refs AS (
           SELECT d.classid, d.objid, d.objsubid, d.refclassid, d.refobjid, d.refobjsubid,
                  CASE WHEN d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_namespace'::pg_catalog.regclass
                       THEN (SELECT n.nspname::text FROM pg_catalog.pg_namespace n WHERE n.oid OPERATOR(pg_catalog.=) d.refobjid)
                       ELSE (pg_catalog.pg_identify_object(d.refclassid, d.refobjid, 0)).schema::text END AS refschema
           FROM pg_catalog.pg_depend d
           JOIN inside i ON i.classid OPERATOR(pg_catalog.=) d.classid AND i.objid OPERATOR(pg_catalog.=) d.objid
           WHERE d.deptype OPERATOR(pg_catalog.=) ANY ('{{n,a}}')
             AND NOT EXISTS (SELECT FROM inside r WHERE r.classid OPERATOR(pg_catalog.=) d.refclassid AND r.objid OPERATOR(pg_catalog.=) d.refobjid))
         SELECT DISTINCT pg_catalog.pg_describe_object(f.classid, f.objid, f.objsubid),
                pg_catalog.pg_describe_object(f.refclassid, f.refobjid, f.refobjsubid), f.refschema,
                (SELECT e.extname::text FROM pg_catalog.pg_depend x JOIN pg_catalog.pg_extension e ON e.oid OPERATOR(pg_catalog.=) x.refobjid
                 WHERE x.classid OPERATOR(pg_catalog.=) f.refclassid AND x.objid OPERATOR(pg_catalog.=) f.refobjid
                   AND x.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_extension'::pg_catalog.regclass AND x.deptype OPERATOR(pg_catalog.=) 'e' LIMIT 1)
         FROM refs f
         WHERE f.refschema IS NOT NULL AND f.refschema OPERATOR(pg_catalog.<>) ALL ('{{pg_catalog,information_schema,pg_toast}}')
         ORDER BY 1, 2"
    );
    let rows: Vec<(String, String, String, Option<String>)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(ctx.schema())
        .fetch_all(&mut *src)
        .await
        .map_err(db("reading what the module's objects depend on"))?;
    let mut extensions = BTreeSet::new();
    for (dependent, referenced, schema, extension) in rows {
        match extension {
            Some(extension) => {
                extensions.insert((extension, schema));
            }
            None => problems.push(Problem {
                message: format!("{dependent} depends on {referenced}, in schema `{schema}`, which does not move with the module"),
                help: format!(
                    "a module's objects may use only its own schema, pg_catalog and extensions; move `{schema}`'s object into the module with a migration, or drop the reference"
                ),
            }),
        }
    }
    Ok(extensions)
}

async fn missing_extensions(
    dst: &mut PgConnection,
    needed: &BTreeSet<(String, String)>,
    ctx: &Ctx<'_>,
    problems: &mut Vec<Problem>,
) -> Result<(), AdminError> {
    let present: Vec<(String, String)> = sqlx::query_as(
        "SELECT e.extname::text, n.nspname::text FROM pg_catalog.pg_extension e \
         JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) e.extnamespace",
    )
    .fetch_all(&mut *dst)
    .await
    .map_err(db("listing the target's extensions"))?;
    for (extension, schema) in needed {
        if !present.iter().any(|(e, s)| e == extension && s == schema) {
            problems.push(Problem {
                message: format!(
                    "the module uses extension `{extension}` (in schema `{schema}`), which database `{}` does not have",
                    ctx.target_url.database()
                ),
                help: format!(
                    "create it in the target as the admin: `CREATE EXTENSION {extension} SCHEMA {schema}` in database `{}`{}",
                    ctx.target_url.database(),
                    if schema == "public" || schema == "pg_catalog" {
                        String::new()
                    } else {
                        format!(", and `GRANT USAGE ON SCHEMA {schema} TO {}` as in the source", ctx.manifest.roles().module_owner(&ctx.module.name))
                    }
                ),
            });
        }
    }
    Ok(())
}

/// Tables that cannot be compared or copied: without a primary key or replica identity, with
/// forced row level security (the owner's own policies would hide rows from the copy), foreign.
async fn tables(src: &mut PgConnection, ctx: &Ctx<'_>, problems: &mut Vec<Problem>) -> Result<(), AdminError> {
    let schema = ctx.schema();
    let without_key: Vec<String> = objects::tables(src, schema)
        .await?
        .into_iter()
        .filter(|(t, has_key)| !has_key && !t.moat)
        .map(|(t, _)| format!("`{schema}.{}`", t.name))
        .collect();
    if !without_key.is_empty() {
        problems.push(Problem {
            message: format!("tables without a primary key or replica identity: {}", without_key.join(", ")),
            help: "moat compares both copies row by row in key order: add a primary key (or `REPLICA IDENTITY USING INDEX` on a unique index, or `REPLICA IDENTITY FULL`) in a migration".into(),
        });
    }
    let odd: Vec<(String, String, bool)> = sqlx::query_as(
        "SELECT c.relname::text, c.relkind::text, c.relforcerowsecurity FROM pg_catalog.pg_class c \
         JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
         WHERE n.nspname OPERATOR(pg_catalog.=) $1 AND (c.relkind OPERATOR(pg_catalog.=) 'f' OR c.relforcerowsecurity) ORDER BY 1",
    )
    .bind(schema)
    .fetch_all(&mut *src)
    .await
    .map_err(db("reading the module's tables"))?;
    for (name, kind, forced) in odd {
        if kind == "f" {
            problems.push(Problem {
                message: format!("`{schema}.{name}` is a foreign table: its rows live on another server"),
                help:
                    "drop the foreign table (or move it out of the module) in a migration; recreate it after the move"
                        .into(),
            });
        } else if forced {
            problems.push(Problem {
                message: format!("`{schema}.{name}` has FORCE ROW LEVEL SECURITY: the owner's copy would see only the rows its policies let through"),
                help: format!("`ALTER TABLE {schema}.{name} NO FORCE ROW LEVEL SECURITY` in a migration before the move, and force it again afterwards"),
            });
        }
    }
    Ok(())
}

/// moat's tables in the source must have today's columns, as the target's will.
async fn old_layout(src: &mut PgConnection, ctx: &Ctx<'_>, problems: &mut Vec<Problem>) -> Result<(), AdminError> {
    let schema = ctx.schema();
    let columns: Vec<(String, String)> = sqlx::query_as(
        "SELECT c.relname::text, a.attname::text FROM pg_catalog.pg_attribute a \
         JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) a.attrelid \
         JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
         WHERE n.nspname OPERATOR(pg_catalog.=) $1 AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped",
    )
    .bind(schema)
    .fetch_all(&mut *src)
    .await
    .map_err(db("reading the columns of moat's tables"))?;
    let tables: BTreeSet<&str> = columns.iter().map(|(t, _)| t.as_str()).collect();
    for added in ADDED_COLUMNS.iter().filter(|c| tables.contains(c.table)) {
        if !columns.iter().any(|(t, c)| t == added.table && c == added.name) {
            problems.push(Problem {
                message: format!(
                    "moat's table `{schema}.{}` lacks column `{}` (an older moat created it)",
                    added.table, added.name
                ),
                help: "run `moat up` (or `moat provision`) with this moat first: it adds the column".into(),
            });
        }
    }
    Ok(())
}
