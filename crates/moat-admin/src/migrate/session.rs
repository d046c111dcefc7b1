//! The migrator's session: what it may change, and how moat sees that it did not.
//!
//! Every query here runs in a session logged in as the module's migrator, possibly right after
//! module SQL: each function and relation is qualified with `pg_catalog.`, and the only operator
//! (`=` on two `oid`s) has an exact match in `pg_catalog`, which is searched before any schema a
//! migration can put in `search_path`.

use moat_core::manifest::{Manifest, Module};
use sqlx::PgConnection;

use crate::error::{AdminError, db};

/// The roles of one module's migration session.
#[derive(Debug, Clone)]
pub(crate) struct MigratorRoles {
    /// `<project>_<module>_migrator`: the session user.
    pub migrator: String,
    /// `<project>_<module>_owner`: the role migrations run as.
    pub owner: String,
}

impl MigratorRoles {
    /// The migrator and the owner.
    pub fn both(&self) -> [String; 2] {
        [self.migrator.clone(), self.owner.clone()]
    }

    pub fn of(manifest: &Manifest, module: &Module) -> Self {
        let roles = manifest.roles();
        Self { migrator: roles.module_migrator(&module.name), owner: roles.module_owner(&module.name) }
    }
}

/// A digest of everything about the module's migrator and owner that the migration session could
/// change and that outlives the migration: memberships in or of either (a migrator, as session
/// user, may `GRANT` itself to anyone in PostgreSQL 15), their role-level settings (a role may
/// set its own) and their attributes. `$1` is the two role names. Other roles are left out: the
/// session cannot change them, and other moat processes may (logins, provisioning).
const FINGERPRINT_SQL: &str = "SELECT pg_catalog.md5(pg_catalog.concat_ws('|', \
     (SELECT pg_catalog.string_agg(pg_catalog.format('%s>%s:%s', m.roleid, m.member, m.admin_option), ',' ORDER BY m.roleid, m.member) \
        FROM pg_catalog.pg_auth_members m JOIN pg_catalog.pg_roles r ON r.oid = m.roleid JOIN pg_catalog.pg_roles u ON u.oid = m.member \
        WHERE r.rolname::text = ANY($1::text[]) OR u.rolname::text = ANY($1::text[])), \
     (SELECT pg_catalog.string_agg(pg_catalog.format('%s@%s=%s', s.setrole, s.setdatabase, s.setconfig), ',' ORDER BY s.setrole, s.setdatabase) \
        FROM pg_catalog.pg_db_role_setting s JOIN pg_catalog.pg_roles r ON r.oid = s.setrole \
        WHERE r.rolname::text = ANY($1::text[])), \
     (SELECT pg_catalog.string_agg(pg_catalog.format('%s:%s%s%s%s%s%s%s:%s', r.oid, r.rolsuper, r.rolinherit, r.rolcreaterole, \
             r.rolcreatedb, r.rolcanlogin, r.rolreplication, r.rolbypassrls, r.rolconnlimit), ',' ORDER BY r.oid) \
        FROM pg_catalog.pg_roles r WHERE r.rolname::text = ANY($1::text[]))))";

/// What the session looks like at a check: `(transaction id if assigned, current_user,
/// session_user, fingerprint)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SessionState {
    pub xid: Option<String>,
    pub current_user: String,
    pub session_user: String,
    pub fingerprint: String,
}

/// Reads the session's state (one round trip).
pub(crate) async fn state(conn: &mut PgConnection, roles: &MigratorRoles) -> Result<SessionState, AdminError> {
    let sql = format!(
        "SELECT pg_catalog.pg_current_xact_id_if_assigned()::text, current_user::text, session_user::text, ({FINGERPRINT_SQL})"
    );
    let (xid, current_user, session_user, fingerprint): (Option<String>, String, String, Option<String>) =
        sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(roles.both())
            .fetch_one(&mut *conn)
            .await
            .map_err(db("checking the migration's session"))?;
    Ok(SessionState { xid, current_user, session_user, fingerprint: fingerprint.unwrap_or_default() })
}

/// Starts a migration's transaction as the owner in the module's schema, and returns the state
/// the end of the migration is compared with (the transaction id is assigned here).
pub(crate) async fn begin(
    conn: &mut PgConnection,
    roles: &MigratorRoles,
    schema: &str,
) -> Result<SessionState, AdminError> {
    use moat_core::quote::ident;
    let begin = format!("BEGIN; SET LOCAL ROLE {}; SET LOCAL search_path = {}", ident(&roles.owner), ident(schema));
    sqlx::raw_sql(sqlx::AssertSqlSafe(begin)).execute(&mut *conn).await.map_err(db("starting a migration"))?;
    let sql = format!(
        "SELECT pg_catalog.pg_current_xact_id()::text, current_user::text, session_user::text, ({FINGERPRINT_SQL})"
    );
    let (xid, current_user, session_user, fingerprint): (Option<String>, String, String, Option<String>) =
        sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(roles.both())
            .fetch_one(&mut *conn)
            .await
            .map_err(db("starting a migration"))?;
    Ok(SessionState { xid, current_user, session_user, fingerprint: fingerprint.unwrap_or_default() })
}

/// What changed between two states, as a sentence, or `None` when nothing did. `user` is the
/// role the session must be running as at the second state.
pub(crate) fn difference(
    before: &SessionState,
    after: &SessionState,
    user: &str,
    transactional: bool,
) -> Option<String> {
    if transactional && (after.xid.is_none() || after.xid != before.xid) {
        return Some("the migration ended its transaction (COMMIT or ROLLBACK inside a migration)".to_owned());
    }
    if after.session_user != before.session_user {
        return Some(format!(
            "the migration changed its session user from `{}` to `{}`",
            before.session_user, after.session_user
        ));
    }
    if after.current_user != user {
        return Some(format!("the migration changed its role from `{user}` to `{}`", after.current_user));
    }
    if after.fingerprint != before.fingerprint {
        return Some(
            "the migration changed a membership, setting or attribute of the project's roles \
             (such as `GRANT <migrator> TO <role>` or `ALTER ROLE ... SET`)"
                .to_owned(),
        );
    }
    None
}

/// Memberships involving a project role and role-level settings of `roles`, as the admin sees
/// them (a catalog query on the admin's connection; committed state only).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct RoleFacts {
    /// `(role, member)`.
    pub memberships: Vec<(String, String)>,
    /// `(role, database or empty, setconfig)`.
    pub settings: Vec<(String, String, Vec<String>)>,
}

pub(crate) async fn role_facts(admin: &mut PgConnection, roles: &MigratorRoles) -> Result<RoleFacts, AdminError> {
    let memberships: Vec<(String, String)> = sqlx::query_as(
        "SELECT r.rolname::text, u.rolname::text FROM pg_catalog.pg_auth_members m \
         JOIN pg_catalog.pg_roles r ON r.oid = m.roleid JOIN pg_catalog.pg_roles u ON u.oid = m.member \
         WHERE r.rolname::text = ANY($1::text[]) OR u.rolname::text = ANY($1::text[]) ORDER BY 1, 2",
    )
    .bind(roles.both())
    .fetch_all(&mut *admin)
    .await
    .map_err(db("reading the project's role memberships"))?;
    let settings: Vec<(String, String, Vec<String>)> = sqlx::query_as(
        "SELECT r.rolname::text, coalesce(d.datname::text, ''), s.setconfig FROM pg_catalog.pg_db_role_setting s \
         JOIN pg_catalog.pg_roles r ON r.oid = s.setrole LEFT JOIN pg_catalog.pg_database d ON d.oid = s.setdatabase \
         WHERE r.rolname::text = ANY($1::text[]) ORDER BY 1, 2",
    )
    .bind(roles.both())
    .fetch_all(&mut *admin)
    .await
    .map_err(db("reading the migrator's role settings"))?;
    Ok(RoleFacts { memberships, settings })
}

/// Undoes, as the admin, what a no-transaction migration changed about roles: revokes the
/// memberships that were not there `before`, and resets the role-level settings of the migrator
/// and the owner (moat manages none for them). Returns what it undid, for the error.
pub(crate) async fn undo_role_changes(
    admin: &mut PgConnection,
    roles: &MigratorRoles,
    before: &RoleFacts,
) -> Result<Vec<String>, AdminError> {
    use moat_core::quote::ident;
    let now = role_facts(admin, roles).await?;
    let mut undone = Vec::new();
    for (role, member) in now.memberships.iter().filter(|m| !before.memberships.contains(m)) {
        let sql = format!("REVOKE {} FROM {}", ident(role), ident(member));
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone()))
            .execute(&mut *admin)
            .await
            .map_err(db(format!("running `{sql}`")))?;
        undone.push(sql);
    }
    for (role, database, config) in now.settings.iter().filter(|s| !before.settings.contains(s)) {
        let _ = config;
        let sql = if database.is_empty() {
            format!("ALTER ROLE {} RESET ALL", ident(role))
        } else {
            format!("ALTER ROLE {} IN DATABASE {} RESET ALL", ident(role), ident(database))
        };
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone()))
            .execute(&mut *admin)
            .await
            .map_err(db(format!("running `{sql}`")))?;
        undone.push(sql);
    }
    Ok(undone)
}

/// Removes a password the module's SQL gave its migrator (a role may change its own password,
/// which would leave a login the module's team knows). Returns whether there was one.
pub(crate) async fn clear_migrator_password(
    admin: &mut PgConnection,
    roles: &MigratorRoles,
) -> Result<bool, AdminError> {
    // Under the lock `login_as` holds while a one-time password exists, so that another moat
    // process's one-time password is never taken for one the module set.
    let key = format!("moat:login:{}", roles.migrator);
    crate::locks::advisory_lock(admin, &key, &format!("checking the password of `{}`", roles.migrator)).await?;
    let result = clear_password_locked(admin, roles).await;
    crate::locks::advisory_unlock(admin, &key).await;
    result
}

async fn clear_password_locked(admin: &mut PgConnection, roles: &MigratorRoles) -> Result<bool, AdminError> {
    use moat_core::quote::ident;
    let has: Result<bool, sqlx::Error> = sqlx::query_scalar(
        "SELECT pg_catalog.count(*) > 0 FROM pg_catalog.pg_authid WHERE rolname = $1 AND rolpassword IS NOT NULL",
    )
    .bind(&roles.migrator)
    .fetch_one(&mut *admin)
    .await;
    // Only a superuser reads `pg_authid`; another admin removes any password without looking.
    let (has, clear) = match has {
        Ok(has) => (has, has),
        Err(e) if crate::error::sqlstate(&e).as_deref() == Some("42501") => (false, true),
        Err(e) => return Err(db(format!("checking the password of `{}`", roles.migrator))(e)),
    };
    if clear {
        let sql = format!("ALTER ROLE {} PASSWORD NULL VALID UNTIL 'infinity'", ident(&roles.migrator));
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut *admin)
            .await
            .map_err(db(format!("removing the password of `{}`", roles.migrator)))?;
    }
    Ok(has)
}
