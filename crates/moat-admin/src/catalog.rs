//! A snapshot of the catalog facts that provisioning and the audit compare with the manifest,
//! read in one round trip as one JSON document.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use sqlx::PgConnection;

use crate::error::{AdminError, db};

/// `PUBLIC` as a grantee.
pub const PUBLIC: &str = "PUBLIC";

/// One ACL entry, as `aclexplode` returns it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
pub struct AclItem {
    /// Role name, or `PUBLIC`.
    pub grantee: String,
    /// `SELECT`, `USAGE`, `CONNECT`, ...
    pub privilege: String,
    /// Held WITH GRANT OPTION.
    pub grantable: bool,
}

/// Role attributes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RoleInfo {
    /// Name.
    pub name: String,
    /// SUPERUSER.
    pub superuser: bool,
    /// INHERIT.
    pub inherit: bool,
    /// CREATEROLE.
    pub createrole: bool,
    /// CREATEDB.
    pub createdb: bool,
    /// LOGIN.
    pub login: bool,
    /// REPLICATION.
    pub replication: bool,
    /// BYPASSRLS.
    pub bypassrls: bool,
    /// CONNECTION LIMIT (-1: none).
    #[serde(default = "no_limit")]
    pub connection_limit: i32,
}

fn no_limit() -> i32 {
    -1
}

/// `member` is a member of `role`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Membership {
    /// The role granted.
    pub role: String,
    /// The role that received it.
    pub member: String,
}

/// A schema.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SchemaInfo {
    /// Name.
    pub name: String,
    /// Owner role.
    pub owner: String,
    /// Exploded ACL (owner's implicit rights included).
    pub acl: Vec<AclItem>,
}

/// A relation (table, partitioned table, view, materialized view, foreign table, sequence).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RelationInfo {
    /// Schema.
    pub schema: String,
    /// Name.
    pub name: String,
    /// `relkind`: r, p, v, m, f or S.
    pub kind: String,
    /// Owner role.
    pub owner: String,
    /// Exploded ACL.
    pub acl: Vec<AclItem>,
    /// A sequence owned by a table column (serial, identity): it follows its table's owner.
    pub owned_by_table: bool,
    /// Whether it belongs to an extension (left alone).
    pub extension: bool,
    /// Whether it is a partition of another table.
    pub partition: bool,
    /// Columns that carry an ACL of their own (`pg_attribute.attacl`), in column order.
    #[serde(default)]
    pub column_acls: Vec<ColumnAcl>,
    /// The names of its columns, for moat's own tables (`moat_*`, plain or partitioned) only:
    /// provisioning adds the columns an older moat did not create.
    #[serde(default)]
    pub columns: Option<Vec<String>>,
}

impl RelationInfo {
    /// The relation's kind.
    pub fn relkind(&self) -> RelKind {
        RelKind::from_code(&self.kind)
    }
}

/// `pg_class.relkind`, for the kinds moat looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RelKind {
    /// `r`: a plain table (or a partition).
    Table,
    /// `p`: a partitioned table.
    PartitionedTable,
    /// `v`.
    View,
    /// `m`.
    MaterializedView,
    /// `f`.
    ForeignTable,
    /// `S`.
    Sequence,
    /// Anything else (index, composite type, TOAST table).
    Other,
}

impl RelKind {
    /// The kind of a `relkind` code.
    pub fn from_code(code: &str) -> Self {
        match code {
            "r" => RelKind::Table,
            "p" => RelKind::PartitionedTable,
            "v" => RelKind::View,
            "m" => RelKind::MaterializedView,
            "f" => RelKind::ForeignTable,
            "S" => RelKind::Sequence,
            _ => RelKind::Other,
        }
    }

    /// The `relkind` code (`r`, `p`, ...), as the policy and the plan take it.
    pub fn code(self) -> &'static str {
        match self {
            RelKind::Table => "r",
            RelKind::PartitionedTable => "p",
            RelKind::View => "v",
            RelKind::MaterializedView => "m",
            RelKind::ForeignTable => "f",
            RelKind::Sequence => "S",
            RelKind::Other => "?",
        }
    }

    /// How messages name it.
    pub fn noun(self) -> &'static str {
        match self {
            RelKind::Table | RelKind::Other => "table",
            RelKind::PartitionedTable => "partitioned table",
            RelKind::View => "view",
            RelKind::MaterializedView => "materialized view",
            RelKind::ForeignTable => "foreign table",
            RelKind::Sequence => "sequence",
        }
    }
}

/// A column's own ACL.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ColumnAcl {
    /// Column name.
    pub column: String,
    /// Exploded `attacl` (column privileges only; the table's ACL is separate).
    pub acl: Vec<AclItem>,
}

/// A large object that a project role owns or that is granted to a project role or PUBLIC.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct LargeObjectInfo {
    /// Its oid.
    pub oid: i64,
    /// Owner role.
    pub owner: String,
    /// Exploded `lomacl` (empty when it has the default ACL: owner only).
    pub acl: Vec<AclItem>,
}

/// A function, procedure or aggregate.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FunctionInfo {
    /// Schema.
    pub schema: String,
    /// Name.
    pub name: String,
    /// `oid::regprocedure` text: the quoted signature PostgreSQL accepts back.
    pub signature: String,
    /// Owner role.
    pub owner: String,
    /// Exploded ACL.
    pub acl: Vec<AclItem>,
    /// Whether it belongs to an extension (left alone).
    pub extension: bool,
    /// SECURITY DEFINER.
    pub security_definer: bool,
    /// `proconfig` (such as `search_path=patients`).
    pub config: Vec<String>,
}

/// A `pg_default_acl` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct DefaultAclInfo {
    /// The role whose future objects it applies to.
    pub role: String,
    /// The schema, or `None` for the role's global defaults.
    pub schema: Option<String>,
    /// `r` tables, `S` sequences, `f` functions, `T` types, `n` schemas.
    pub objtype: String,
    /// Exploded ACL.
    pub acl: Vec<AclItem>,
}

/// The catalog facts of one database that concern one project.
#[derive(Debug, Clone, Deserialize)]
pub struct Snapshot {
    /// The admin role.
    pub user: String,
    /// Whether the admin role is a superuser.
    pub superuser: bool,
    /// Current database.
    pub database: String,
    /// Its owner.
    pub database_owner: String,
    /// `server_version_num`.
    pub server_version_num: i32,
    /// The cluster's system identifier, as text (what `moat_outbox.cluster` records).
    #[serde(default)]
    pub cluster: Option<String>,
    /// Roles whose names start with the project prefix, by name.
    #[serde(deserialize_with = "by_name")]
    pub roles: BTreeMap<String, RoleInfo>,
    /// Memberships where either side is a project role or the admin.
    pub memberships: Vec<Membership>,
    /// `setconfig` of project roles in this database.
    pub role_settings: BTreeMap<String, Vec<String>>,
    /// `setconfig` of project roles in all databases (`ALTER ROLE ... SET` without `IN DATABASE`).
    #[serde(default)]
    pub role_settings_all_databases: BTreeMap<String, Vec<String>>,
    /// Exploded ACL of the database.
    pub database_acl: Vec<AclItem>,
    /// Schemas of interest that exist, plus every schema owned by a project role.
    #[serde(deserialize_with = "schemas_by_name")]
    pub schemas: BTreeMap<String, SchemaInfo>,
    /// Relations in schemas of interest.
    pub relations: Vec<RelationInfo>,
    /// Routines in schemas of interest.
    pub functions: Vec<FunctionInfo>,
    /// Default ACLs of project roles.
    pub default_acls: Vec<DefaultAclInfo>,
    /// Large objects owned by a project role or granted to one (or to PUBLIC).
    #[serde(default)]
    pub large_objects: Vec<LargeObjectInfo>,
}

fn by_name<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, RoleInfo>, D::Error> {
    let roles: Vec<RoleInfo> = Vec::deserialize(d)?;
    Ok(roles.into_iter().map(|r| (r.name.clone(), r)).collect())
}

fn schemas_by_name<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, SchemaInfo>, D::Error> {
    let schemas: Vec<SchemaInfo> = Vec::deserialize(d)?;
    Ok(schemas.into_iter().map(|s| (s.name.clone(), s)).collect())
}

const SNAPSHOT_SQL: &str = r#"
WITH acl AS (SELECT 1)
SELECT json_build_object(
  'user', current_user,
  'superuser', (SELECT rolsuper FROM pg_roles WHERE rolname = current_user),
  'database', current_database(),
  'database_owner', (SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()),
  'server_version_num', current_setting('server_version_num')::int,
  'cluster', ((pg_control_system()).system_identifier)::text,
  'roles', (SELECT coalesce(json_agg(json_build_object(
        'name', rolname, 'superuser', rolsuper, 'inherit', rolinherit, 'createrole', rolcreaterole,
        'createdb', rolcreatedb, 'login', rolcanlogin, 'replication', rolreplication, 'bypassrls', rolbypassrls,
        'connection_limit', rolconnlimit)
        ORDER BY rolname), '[]') FROM pg_roles WHERE starts_with(rolname, $1)),
  'memberships', (SELECT coalesce(json_agg(json_build_object('role', r.rolname, 'member', m.rolname)), '[]')
        FROM pg_auth_members am JOIN pg_roles r ON r.oid = am.roleid JOIN pg_roles m ON m.oid = am.member
        WHERE starts_with(m.rolname, $1) OR starts_with(r.rolname, $1) OR m.rolname = current_user),
  'role_settings', (SELECT coalesce(json_object_agg(r.rolname, s.setconfig), '{}')
        FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole
        WHERE s.setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())
          AND starts_with(r.rolname, $1)),
  'role_settings_all_databases', (SELECT coalesce(json_object_agg(r.rolname, s.setconfig), '{}')
        FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole
        WHERE s.setdatabase = 0 AND starts_with(r.rolname, $1)),
  'database_acl', (SELECT coalesce(json_agg(json_build_object(
        'grantee', CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END,
        'privilege', a.privilege_type, 'grantable', a.is_grantable)), '[]')
        FROM pg_database d, aclexplode(coalesce(d.datacl, acldefault('d'::"char", d.datdba))) a
        WHERE d.datname = current_database()),
  'schemas', (SELECT coalesce(json_agg(json_build_object(
        'name', n.nspname, 'owner', pg_get_userbyid(n.nspowner),
        'acl', (SELECT coalesce(json_agg(json_build_object(
              'grantee', CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END,
              'privilege', a.privilege_type, 'grantable', a.is_grantable)), '[]')
              FROM aclexplode(coalesce(n.nspacl, acldefault('n'::"char", n.nspowner))) a))), '[]')
        FROM pg_namespace n
        WHERE n.nspname = ANY($2) OR starts_with(pg_get_userbyid(n.nspowner), $1)),
  'relations', (SELECT coalesce(json_agg(json_build_object(
        'schema', n.nspname, 'name', c.relname, 'kind', c.relkind::text, 'owner', pg_get_userbyid(c.relowner),
        'acl', (SELECT coalesce(json_agg(json_build_object(
              'grantee', CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END,
              'privilege', a.privilege_type, 'grantable', a.is_grantable)), '[]')
              FROM aclexplode(coalesce(c.relacl, acldefault((CASE WHEN c.relkind = 'S' THEN 's' ELSE 'r' END)::"char", c.relowner))) a),
        'owned_by_table', EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
              AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i') AND c.relkind = 'S'),
        'extension', EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e'),
        'partition', c.relispartition,
        'column_acls', (SELECT coalesce(json_agg(json_build_object('column', at.attname,
              'acl', (SELECT coalesce(json_agg(json_build_object(
                    'grantee', CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END,
                    'privilege', a.privilege_type, 'grantable', a.is_grantable)), '[]')
                    FROM aclexplode(at.attacl) a)) ORDER BY at.attnum), '[]')
              FROM pg_attribute at WHERE at.attrelid = c.oid AND at.attnum > 0 AND NOT at.attisdropped
                AND at.attacl IS NOT NULL),
        'columns', CASE WHEN starts_with(c.relname, 'moat_') AND c.relkind IN ('r', 'p') THEN
              (SELECT coalesce(json_agg(at.attname ORDER BY at.attnum), '[]') FROM pg_attribute at
               WHERE at.attrelid = c.oid AND at.attnum > 0 AND NOT at.attisdropped) END)
        ORDER BY n.nspname, c.relname), '[]')
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE (n.nspname = ANY($2) OR starts_with(pg_get_userbyid(n.nspowner), $1))
          AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')),
  'functions', (SELECT coalesce(json_agg(json_build_object(
        'schema', n.nspname, 'name', p.proname, 'signature', p.oid::regprocedure::text, 'owner', pg_get_userbyid(p.proowner),
        'acl', (SELECT coalesce(json_agg(json_build_object(
              'grantee', CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END,
              'privilege', a.privilege_type, 'grantable', a.is_grantable)), '[]')
              FROM aclexplode(coalesce(p.proacl, acldefault('f'::"char", p.proowner))) a),
        'extension', EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'),
        'security_definer', p.prosecdef,
        'config', coalesce(to_json(p.proconfig), '[]'))
        ORDER BY n.nspname, p.oid::regprocedure::text), '[]')
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = ANY($2) OR starts_with(pg_get_userbyid(n.nspowner), $1)),
  'default_acls', (SELECT coalesce(json_agg(json_build_object(
        'role', pg_get_userbyid(d.defaclrole), 'schema', n.nspname, 'objtype', d.defaclobjtype::text,
        'acl', (SELECT coalesce(json_agg(json_build_object(
              'grantee', CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END,
              'privilege', a.privilege_type, 'grantable', a.is_grantable)), '[]')
              FROM aclexplode(d.defaclacl) a))), '[]')
        FROM pg_default_acl d LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace
        WHERE starts_with(pg_get_userbyid(d.defaclrole), $1) OR n.nspname = ANY($2)),
  'large_objects', (SELECT coalesce(json_agg(json_build_object(
        'oid', lo.oid::bigint, 'owner', pg_get_userbyid(lo.lomowner),
        'acl', (SELECT coalesce(json_agg(json_build_object(
              'grantee', CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END,
              'privilege', a.privilege_type, 'grantable', a.is_grantable)), '[]')
              FROM aclexplode(lo.lomacl) a)) ORDER BY lo.oid), '[]')
        FROM pg_largeobject_metadata lo
        WHERE starts_with(pg_get_userbyid(lo.lomowner), $1)
           OR EXISTS (SELECT 1 FROM aclexplode(lo.lomacl) a
                      WHERE a.grantee = 0 OR starts_with(pg_get_userbyid(a.grantee), $1)))
)::text
"#;

impl Snapshot {
    /// Reads the snapshot for a project (role prefix `<project>_`) and the schemas of interest.
    pub async fn read(conn: &mut PgConnection, role_prefix: &str, schemas: &[String]) -> Result<Self, AdminError> {
        let text: String = sqlx::query_scalar(SNAPSHOT_SQL)
            .bind(role_prefix)
            .bind(schemas)
            .fetch_one(&mut *conn)
            .await
            .map_err(db("reading the catalog"))?;
        serde_json::from_str(&text).map_err(|e| AdminError::Database {
            context: "reading the catalog".into(),
            source: sqlx::Error::Decode(Box::new(e)),
        })
    }

    /// The relation `schema.name`, if it exists.
    pub fn relation(&self, schema: &str, name: &str) -> Option<&RelationInfo> {
        self.relations.iter().find(|r| r.schema == schema && r.name == name)
    }

    /// Whether `member` is a direct member of `role`.
    pub fn is_member(&self, member: &str, role: &str) -> bool {
        self.memberships.iter().any(|m| m.member == member && m.role == role)
    }
}

/// Privileges per grantee, without the owner's implicit rights.
pub type Grants = BTreeMap<String, BTreeSet<(String, bool)>>;

/// Groups an exploded ACL by grantee, leaving out `owner` (whose rights are implicit).
pub fn grants_by_grantee(acl: &[AclItem], owner: Option<&str>) -> Grants {
    let mut grants = Grants::new();
    for item in acl {
        if Some(item.grantee.as_str()) == owner {
            continue;
        }
        grants.entry(item.grantee.clone()).or_default().insert((item.privilege.clone(), item.grantable));
    }
    grants
}
