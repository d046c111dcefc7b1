//! The access probe: acting as every runtime role, consumer, the relay, every module owner and
//! every contract owner, really attempt each privilege on every relation of every other module
//! and on every contract view, in a transaction that is rolled back.
//!
//! A role is only ever probed in a session that logged in as it (runtime roles, consumers and
//! the relay with their password from `MOAT_PASSWORD_<ROLE>` or on trust; contract owners with a
//! one-time password) or as its migrator followed by `SET ROLE` (module owners). When that login
//! fails, the role is not probed and the audit says why: the probe never runs on the admin's
//! session. Each session pins its own `search_path`, `statement_timeout` and `lock_timeout`
//! (role settings cannot make it hang or fail), and nothing it runs touches a row or fires a
//! trigger (see `probe.sql`). A lock it waited for in vain is reported with the session holding it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::StreamExt;
use futures::lock::Mutex;
use moat_core::findings::{Finding, Severity};
use moat_core::manifest::Manifest;
use moat_core::names::CONTRACTS_SCHEMA;
use moat_core::quote::{ident, literal, qualified};
use moat_core::rules::RuleId;
use serde::{Deserialize, Serialize};
use sqlx::{ConnectOptions, Connection, PgConnection};

use crate::catalog::{RelKind, Snapshot};
use crate::error::{AdminError, db};
use crate::locks::{LockHolder, describe_holders};
use crate::plan::InstalledContract;
use crate::policy::Policy;
use crate::target::{DatabaseUrl, password_from_env, password_variable};

/// How long one attempt waits for a lock on the relation it tries before giving up.
pub const PROBE_LOCK_TIMEOUT: Duration = Duration::from_secs(2);

/// How long the probe of one role may take, whatever the role's own `statement_timeout` says.
pub const PROBE_STATEMENT_TIMEOUT: Duration = Duration::from_secs(600);

/// How the probe acted as a role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeMethod {
    /// It logged in as the role.
    Login,
    /// It logged in as the role's migrator (`via`) and `SET ROLE` to it (module owners).
    LoginThenSetRole,
    /// It could not log in (see `login_error`); the role was not probed.
    NotProbed,
}

/// One probed role.
#[derive(Debug, Clone, Serialize)]
pub struct ProbedRole {
    /// Role name.
    pub role: String,
    /// What the role is (`module:patients`, `owner:patients`, `contract:census`,
    /// `consumer:reporting`, `relay`).
    pub kind: String,
    /// How the probe acted as it.
    pub method: ProbeMethod,
    /// Why logging in (or probing) failed, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub login_error: Option<String>,
    /// The role the probe logged in as, when it is not `role` itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
}

impl ProbedRole {
    /// The matrix column that is this role's own (`patients`, `contract census`).
    pub fn own_column(&self) -> Option<String> {
        if let Some(module) = self.kind.strip_prefix("module:").or_else(|| self.kind.strip_prefix("owner:")) {
            return Some(module.to_owned());
        }
        self.kind.strip_prefix("contract:").map(|c| format!("contract {c}"))
    }
}

/// What a role may do with a relation, and what it could do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Nothing allowed, nothing possible.
    Denied,
    /// Allowed by the manifest (a contract view, the relay's outbox) and possible.
    Allowed,
    /// Possible but not allowed.
    Leak,
    /// Allowed but not possible.
    Broken,
}

/// One row of the access array: a role and a relation of another module or a contract view
/// (a sequence appears only when the role could use it). `select`, `insert`, `update`,
/// `delete` say whether the attempt succeeded (on the relation or on at least one column).
#[derive(Debug, Clone, Serialize)]
pub struct AccessRow {
    /// The manifest's `[databases]` key of the database probed, when it is not the main one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub database: Option<String>,
    /// Role.
    pub role: String,
    /// `schema.relation`.
    pub relation: String,
    /// SELECT succeeded.
    pub select: bool,
    /// INSERT succeeded.
    pub insert: bool,
    /// UPDATE succeeded (on a sequence: `setval`).
    pub update: bool,
    /// DELETE succeeded.
    pub delete: bool,
    /// Judged against the manifest.
    pub verdict: Verdict,
    /// The catalog's answer (`has_schema_privilege` USAGE and `has_table_privilege`), for
    /// comparison with the attempts.
    pub privileges: Privileges,
    /// What the role could do that the manifest does not allow, privilege by privilege, with
    /// the columns when it held the privilege on some columns only (`INSERT (last_name)`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub leaks: Vec<String>,
}

/// Privilege functions' answers for one role and relation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Privileges {
    /// USAGE on the schema.
    pub usage: bool,
    /// SELECT on the relation.
    pub select: bool,
    /// INSERT.
    pub insert: bool,
    /// UPDATE.
    pub update: bool,
    /// DELETE.
    pub delete: bool,
}

/// A privilege the probe tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Privilege {
    /// SELECT (a relation, a column, a sequence).
    Select,
    /// INSERT.
    Insert,
    /// UPDATE (on a sequence: `setval`).
    Update,
    /// DELETE.
    Delete,
    /// TRUNCATE.
    Truncate,
    /// REFERENCES.
    References,
    /// TRIGGER.
    Trigger,
    /// USAGE on a sequence (`nextval`).
    Usage,
}

impl Privilege {
    /// Its SQL name.
    pub fn sql(self) -> &'static str {
        match self {
            Privilege::Select => "SELECT",
            Privilege::Insert => "INSERT",
            Privilege::Update => "UPDATE",
            Privilege::Delete => "DELETE",
            Privilege::Truncate => "TRUNCATE",
            Privilege::References => "REFERENCES",
            Privilege::Trigger => "TRIGGER",
            Privilege::Usage => "USAGE",
        }
    }

    fn of_catalog(self, catalog: &Privileges) -> bool {
        catalog.usage
            && match self {
                Privilege::Select => catalog.select,
                Privilege::Insert => catalog.insert,
                Privilege::Update => catalog.update,
                Privilege::Delete => catalog.delete,
                _ => false,
            }
    }
}

/// What the probe found, for the audit.
#[derive(Debug, Default)]
pub(super) struct ProbeOutput {
    pub access: Vec<AccessRow>,
    pub probed: Vec<ProbedRole>,
    pub attempts: usize,
    pub findings: Vec<Finding>,
    /// `schema.relation` of each probed relation a module claims in a shared schema (a
    /// sequence by its table's claim), and the claimant module.
    pub claimants: BTreeMap<String, String>,
}

/// A relation the probe attempts, from `targets.sql`.
#[derive(Debug, Clone, sqlx::FromRow)]
struct Target {
    schema: String,
    name: String,
    oid: i64,
    kind: String,
    columns: Vec<String>,
    /// For a sequence that belongs to a table, the table's name.
    table_name: Option<String>,
    /// The module that claims it, for a relation in a shared schema (`claims`).
    #[sqlx(skip)]
    claimant: Option<String>,
}

impl Target {
    fn relkind(&self) -> RelKind {
        RelKind::from_code(&self.kind)
    }

    fn relation(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    /// The attempts for this relation, in order (`needs` refers to an earlier index).
    fn attempts(&self) -> Vec<Attempt> {
        let rel = qualified(&self.schema, &self.name);
        let oid = self.oid;
        let mut list = Vec::new();
        let kind = self.relkind();
        if kind == RelKind::Sequence {
            let name = literal(&rel);
            list.push(Attempt::run(Privilege::Select, None, format!("EXPLAIN SELECT 1 FROM {rel}")));
            list.push(Attempt::guarded(
                Privilege::Usage,
                format!("SELECT pg_catalog.nextval({name})"),
                format!(
                    "SELECT pg_catalog.has_sequence_privilege({oid}::pg_catalog.oid, 'USAGE') \
                     OR pg_catalog.has_sequence_privilege({oid}::pg_catalog.oid, 'UPDATE')"
                ),
            ));
            list.push(Attempt::guarded(
                Privilege::Update,
                format!("SELECT pg_catalog.setval({name}, 1)"),
                format!("SELECT pg_catalog.has_sequence_privilege({oid}::pg_catalog.oid, 'UPDATE')"),
            ));
            return list;
        }
        // SELECT of no column needs SELECT on the table or on any of its columns; then each column.
        list.push(Attempt::run(Privilege::Select, None, format!("EXPLAIN SELECT 1 FROM {rel}")));
        for column in &self.columns {
            list.push(
                Attempt::run(Privilege::Select, Some(column), format!("EXPLAIN SELECT {} FROM {rel}", ident(column)))
                    .needs(0),
            );
        }
        let writable = kind != RelKind::MaterializedView;
        if writable {
            // INSERT naming no column needs INSERT on the table or on any column; then each column.
            let any_insert = list.len();
            list.push(Attempt::run(Privilege::Insert, None, format!("EXPLAIN INSERT INTO {rel} DEFAULT VALUES")));
            for column in &self.columns {
                list.push(
                    Attempt::run(
                        Privilege::Insert,
                        Some(column),
                        format!("EXPLAIN INSERT INTO {rel} ({}) VALUES (DEFAULT)", ident(column)),
                    )
                    .needs(any_insert),
                );
            }
            for column in &self.columns {
                list.push(Attempt::run(
                    Privilege::Update,
                    Some(column),
                    format!("EXPLAIN UPDATE {rel} SET {} = DEFAULT WHERE false", ident(column)),
                ));
            }
            list.push(Attempt::run(Privilege::Delete, None, format!("EXPLAIN DELETE FROM {rel} WHERE false")));
        }
        if matches!(kind, RelKind::Table | RelKind::PartitionedTable) {
            list.push(Attempt::guarded(
                Privilege::Truncate,
                format!("TRUNCATE {rel}"),
                format!("SELECT pg_catalog.has_table_privilege({oid}::pg_catalog.oid, 'TRUNCATE')"),
            ));
            list.push(Attempt::ask(
                Privilege::References,
                format!("SELECT pg_catalog.has_any_column_privilege({oid}::pg_catalog.oid, 'REFERENCES')"),
            ));
        }
        if kind != RelKind::MaterializedView {
            list.push(Attempt::ask(
                Privilege::Trigger,
                format!("SELECT pg_catalog.has_table_privilege({oid}::pg_catalog.oid, 'TRIGGER')"),
            ));
        }
        list
    }
}

/// One attempt, as `probe.sql` takes it.
#[derive(Debug, Clone, Serialize)]
struct Attempt {
    #[serde(skip)]
    privilege: Privilege,
    #[serde(skip)]
    column: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sql: Option<String>,
    /// Run first; when it returns true the role holds the privilege and `sql` is not run.
    #[serde(skip_serializing_if = "Option::is_none")]
    guard: Option<String>,
    /// The privilege function that answers instead of an attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    ask: Option<String>,
    /// Run only if attempt `needs` of the same target succeeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    needs: Option<usize>,
}

impl Attempt {
    fn run(privilege: Privilege, column: Option<&String>, sql: String) -> Self {
        Self { privilege, column: column.cloned(), sql: Some(sql), guard: None, ask: None, needs: None }
    }

    fn guarded(privilege: Privilege, sql: String, guard: String) -> Self {
        Self { privilege, column: None, sql: Some(sql), guard: Some(guard), ask: None, needs: None }
    }

    fn ask(privilege: Privilege, ask: String) -> Self {
        Self { privilege, column: None, sql: None, guard: None, ask: Some(ask), needs: None }
    }

    fn needs(mut self, index: usize) -> Self {
        self.needs = Some(index);
        self
    }
}

/// What one attempt came to (one character of `probe.sql`'s output).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// It succeeded, or the role's own check said it holds the privilege.
    Done,
    /// Refused (by the privilege check, at the schema, or implied by an earlier refusal).
    Refused,
    /// It gave up waiting for a lock.
    LockTimeout,
    /// It failed before its privilege check (a view that takes no INSERT): the catalog answers.
    Failed,
}

impl Outcome {
    fn of(code: char) -> (Self, bool) {
        // The second value: whether it was a real attempt (counted).
        match code {
            'Y' | 'H' => (Outcome::Done, true),
            'N' | 'S' => (Outcome::Refused, true),
            'L' => (Outcome::LockTimeout, true),
            '?' => (Outcome::Failed, true),
            _ => (Outcome::Refused, false),
        }
    }
}

/// Who is probed and how the probe logs in.
#[derive(Debug, Clone)]
struct Subject {
    role: String,
    kind: String,
    session: Session,
    /// Targets that are the role's own (its module's schema, its contract's views).
    own_schema: Option<String>,
    own_relations: BTreeSet<String>,
}

impl Subject {
    /// The module whose runtime or owner role this is.
    fn module(&self) -> Option<&str> {
        self.kind.strip_prefix("module:").or_else(|| self.kind.strip_prefix("owner:"))
    }
}

#[derive(Debug, Clone)]
enum Session {
    /// Log in as the role (password from the environment, or trust).
    Direct,
    /// Log in as this role with a one-time password (`login::login_as`), then `SET ROLE`.
    Via(String),
    /// Log in as the role itself with a one-time password.
    OneTime,
}

/// The result of probing one role.
struct RoleResult {
    subject: Subject,
    targets: Vec<(Target, Vec<Attempt>)>,
    outcome: Result<Vec<Option<String>>, String>,
}

const PROBE_DO: &str = include_str!("probe.sql");
const TARGETS_SQL: &str = include_str!("targets.sql");
const PRIVILEGES_SQL: &str = include_str!("privileges.sql");
const LOCK_HOLDERS_SQL: &str = include_str!("lock_holders.sql");

/// One row of `privileges.sql`.
#[derive(sqlx::FromRow)]
struct PrivilegeRow {
    role: String,
    schema: String,
    name: String,
    #[sqlx(flatten)]
    privileges: Privileges,
}

fn subjects(manifest: &Manifest, snapshot: &Snapshot, installed: &BTreeMap<String, InstalledContract>) -> Vec<Subject> {
    let roles = manifest.roles();
    let subject = |role: String, kind: String, session: Session, own_schema: Option<String>| Subject {
        role,
        kind,
        session,
        own_schema,
        own_relations: BTreeSet::new(),
    };
    let mut who = Vec::new();
    for module in &manifest.modules {
        who.push(subject(
            roles.module_runtime(&module.name),
            format!("module:{}", module.name),
            Session::Direct,
            Some(module.schema.to_string()),
        ));
    }
    for consumer in &manifest.consumers {
        who.push(subject(roles.consumer(consumer), format!("consumer:{consumer}"), Session::Direct, None));
    }
    if manifest.uses_events() {
        who.push(subject(roles.relay(), "relay".to_owned(), Session::Direct, None));
    }
    who.retain(|s| snapshot.roles.contains_key(&s.role));
    // Owners, through their migrators (`LOGIN NOINHERIT` members of the owner), where they exist.
    for module in &manifest.modules {
        let migrator = roles.module_migrator(&module.name);
        let owner = roles.module_owner(&module.name);
        if snapshot.roles.get(&migrator).is_some_and(|r| r.login) && snapshot.roles.contains_key(&owner) {
            who.push(subject(
                owner,
                format!("owner:{}", module.name),
                Session::Via(migrator),
                Some(module.schema.to_string()),
            ));
        }
    }
    // Contract owners, where each contract has its own LOGIN owner.
    for contract in &manifest.contracts {
        let owner = roles.contract_owner(&contract.name);
        if snapshot.roles.get(&owner).is_some_and(|r| r.login) {
            let mut s = subject(owner, format!("contract:{}", contract.name), Session::OneTime, None);
            if let Some(views) = installed.get(contract.name.as_str()) {
                s.own_relations = views.views.iter().map(|v| format!("{CONTRACTS_SCHEMA}.{v}")).collect();
            }
            who.push(s);
        }
    }
    who
}

/// Probes every role; see the module documentation.
#[allow(clippy::too_many_lines)]
pub(super) async fn probe(
    conn: &mut PgConnection,
    url: &DatabaseUrl,
    manifest: &Manifest,
    snapshot: &Snapshot,
    policy: &Policy<'_>,
    installed: &BTreeMap<String, InstalledContract>,
    concurrency: usize,
) -> Result<ProbeOutput, AdminError> {
    let mut schemas: Vec<String> = manifest.modules.iter().map(|m| m.schema.to_string()).collect();
    if !manifest.contracts.is_empty() {
        schemas.push(CONTRACTS_SCHEMA.to_owned());
    }
    // Claimed relations are their claimant's: every other module's roles are tried on them.
    let claimed_schemas = manifest.claimed_schemas();
    schemas.extend(claimed_schemas.iter().cloned());
    let rows: Vec<Target> = sqlx::query_as(TARGETS_SQL)
        .bind(&schemas)
        .fetch_all(&mut *conn)
        .await
        .map_err(db("listing relations to probe"))?;
    let contract_views: BTreeSet<&str> = installed.values().flat_map(|c| c.views.iter().map(String::as_str)).collect();
    let all: Vec<(Target, Vec<Attempt>)> = rows
        .into_iter()
        .filter(|t| t.schema != CONTRACTS_SCHEMA || contract_views.contains(t.name.as_str()))
        .filter_map(|mut t| {
            if manifest.module_by_schema(&t.schema).is_some() || t.schema == CONTRACTS_SCHEMA {
                return Some(t);
            }
            // In a shared schema, only what a module claims (a sequence follows its table).
            let name = t.table_name.as_deref().unwrap_or(&t.name);
            t.claimant = Some(manifest.claimant(&t.schema, name)?.name.to_string());
            Some(t)
        })
        .map(|t| {
            let attempts = t.attempts();
            (t, attempts)
        })
        .collect();

    let claimants: BTreeMap<String, String> =
        all.iter().filter_map(|(t, _)| Some((t.relation(), t.claimant.clone()?))).collect();
    let who = subjects(manifest, snapshot, installed);
    // Logins with a one-time password run their `ALTER ROLE`s on an admin session of their own.
    let login_admin = if who.iter().any(|s| !matches!(s.session, Session::Direct)) {
        Some(Mutex::new(crate::connect(url).await?))
    } else {
        None
    };
    let names: Vec<String> = who.iter().map(|s| s.role.clone()).collect();
    // The privilege matrix (catalog) and the attempts (one session per role) run side by side.
    let privileges_query =
        sqlx::query_as::<_, PrivilegeRow>(PRIVILEGES_SQL).bind(&names).bind(&schemas).fetch_all(&mut *conn);
    let jobs = who.iter().map(|subject| {
        let targets: Vec<(Target, Vec<Attempt>)> = all
            .iter()
            .filter(|(t, _)| {
                Some(&t.schema) != subject.own_schema.as_ref()
                    && !subject.own_relations.contains(&t.relation())
                    && (t.claimant.is_none() || t.claimant.as_deref() != subject.module())
            })
            .cloned()
            .collect();
        let login_admin = login_admin.as_ref();
        async move {
            let outcome = probe_role(url, login_admin, subject, &targets).await;
            RoleResult { subject: subject.clone(), targets, outcome }
        }
    });
    let attempts_stream = futures::stream::iter(jobs).buffer_unordered(concurrency.max(1)).collect::<Vec<_>>();
    let (privilege_rows, results) = tokio::join!(privileges_query, attempts_stream);
    if let Some(admin) = login_admin {
        crate::provision::close(admin.into_inner()).await;
    }
    let privileges: BTreeMap<(String, String, String), Privileges> = privilege_rows
        .map_err(db("reading the privilege matrix"))?
        .into_iter()
        .map(|row| ((row.role, row.schema, row.name), row.privileges))
        .collect();

    let mut out = ProbeOutput { claimants, ..ProbeOutput::default() };
    let mut lock_waits: Vec<(String, Target)> = Vec::new();
    for RoleResult { subject, targets, outcome } in results {
        let via = match &subject.session {
            Session::Via(login) => Some(login.clone()),
            _ => None,
        };
        let codes = match outcome {
            Ok(codes) => codes,
            Err(reason) => {
                out.findings.push(not_probed(&subject, &reason));
                out.probed.push(ProbedRole {
                    role: subject.role.clone(),
                    kind: subject.kind.clone(),
                    method: ProbeMethod::NotProbed,
                    login_error: Some(reason),
                    via,
                });
                continue;
            }
        };
        let method = if via.is_some() { ProbeMethod::LoginThenSetRole } else { ProbeMethod::Login };
        out.probed.push(ProbedRole {
            role: subject.role.clone(),
            kind: subject.kind.clone(),
            method,
            login_error: None,
            via,
        });
        for ((target, attempts), codes) in targets.iter().zip(codes.iter().chain(std::iter::repeat(&None))) {
            let catalog = privileges
                .get(&(subject.role.clone(), target.schema.clone(), target.name.clone()))
                .copied()
                .unwrap_or_default();
            let observed = Observed::of(attempts, codes.as_deref(), &catalog);
            out.attempts += observed.attempts;
            if observed.lock_timeout {
                lock_waits.push((subject.role.clone(), target.clone()));
            }
            let wanted =
                policy.relation(&target.schema, &target.name, &target.kind).map(|(_, w)| w).unwrap_or_default();
            let expected: BTreeSet<&str> = wanted.get(&subject.role).cloned().unwrap_or_default();
            let verdict = observed.verdict(&expected);
            if target.relkind() == RelKind::Sequence && verdict == Verdict::Denied {
                continue;
            }
            let leaks = observed
                .done
                .iter()
                .filter(|p| !expected.contains(p.sql()))
                .map(|p| match observed.partial.get(p) {
                    Some(columns) => format!("{} ({})", p.sql(), columns.join(", ")),
                    None => p.sql().to_owned(),
                })
                .collect();
            let has = |p: Privilege| observed.done.contains(&p);
            out.access.push(AccessRow {
                database: None,
                role: subject.role.clone(),
                relation: target.relation(),
                select: has(Privilege::Select),
                insert: has(Privilege::Insert),
                update: has(Privilege::Update),
                delete: has(Privilege::Delete),
                verdict,
                privileges: catalog,
                leaks,
            });
        }
    }
    for (role, target) in lock_waits {
        let holders: Vec<LockHolder> = sqlx::query_as::<_, (String, i32)>(LOCK_HOLDERS_SQL)
            .bind(target.oid)
            .fetch_all(&mut *conn)
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|(role, pid)| LockHolder { role, pid })
            .collect();
        out.findings.push(
            Finding::new(
                RuleId::ProbeIncomplete,
                Severity::Error,
                format!(
                    "the probe as `{role}` gave up waiting for a lock on `{}` after {} ms: it is held by {}",
                    target.relation(),
                    PROBE_LOCK_TIMEOUT.as_millis(),
                    describe_holders(&holders)
                ),
            )
            .object(format!("{role} -> {}", target.relation()))
            .help("a module's role holding a lock on its tables can hide them from the probe; end that session (`SELECT pg_terminate_backend(<pid>)`) and audit again"),
        );
    }
    out.access.sort_by(|a, b| (&a.role, &a.relation).cmp(&(&b.role, &b.relation)));
    out.probed.sort_by(|a, b| a.role.cmp(&b.role));
    Ok(out)
}

fn not_probed(subject: &Subject, reason: &str) -> Finding {
    let help = match &subject.session {
        Session::Direct => format!(
            "set `{}` to the role's password (or allow it in pg_hba.conf); the audit never probes a role from the admin's session",
            password_variable(&subject.role)
        ),
        Session::Via(login) => format!(
            "moat logs in as `{login}` with a one-time password and `SET ROLE`s to `{}`; allow `{login}` in pg_hba.conf (`trust` or `scram-sha-256`), and `moat provision` restores its membership",
            subject.role
        ),
        Session::OneTime => format!(
            "moat logs in as `{}` with a one-time password; allow it in pg_hba.conf (`trust` or `scram-sha-256`)",
            subject.role
        ),
    };
    Finding::new(
        RuleId::ProbeIncomplete,
        Severity::Error,
        format!("the probe could not act as `{}`, so its access was not tried: {reason}", subject.role),
    )
    .object(subject.role.clone())
    .help(help)
}

/// What the attempts on one target showed.
struct Observed {
    done: BTreeSet<Privilege>,
    /// Privileges held on some columns only: those columns.
    partial: BTreeMap<Privilege, Vec<String>>,
    lock_timeout: bool,
    attempts: usize,
}

impl Observed {
    fn of(attempts: &[Attempt], codes: Option<&str>, catalog: &Privileges) -> Self {
        let mut observed =
            Observed { done: BTreeSet::new(), partial: BTreeMap::new(), lock_timeout: false, attempts: 0 };
        let Some(codes) = codes else { return observed };
        let outcomes: Vec<Outcome> = codes
            .chars()
            .map(|c| {
                let (outcome, counted) = Outcome::of(c);
                observed.attempts += usize::from(counted);
                outcome
            })
            .collect();
        let privileges: BTreeSet<Privilege> = attempts.iter().map(|a| a.privilege).collect();
        for privilege in privileges {
            let mine: Vec<(&Attempt, Outcome)> = attempts
                .iter()
                .zip(outcomes.iter().copied().chain(std::iter::repeat(Outcome::Refused)))
                .filter(|(a, _)| a.privilege == privilege)
                .collect();
            if mine.iter().any(|(_, o)| *o == Outcome::LockTimeout) {
                observed.lock_timeout = true;
            }
            let done = mine.iter().any(|(_, o)| *o == Outcome::Done);
            let failed = !done && mine.iter().any(|(_, o)| *o == Outcome::Failed);
            if done || (failed && privilege.of_catalog(catalog)) {
                observed.done.insert(privilege);
            }
            let columns: Vec<(&String, Outcome)> =
                mine.iter().filter_map(|(a, o)| a.column.as_ref().map(|c| (c, *o))).collect();
            let done_columns: Vec<String> =
                columns.iter().filter(|(_, o)| *o == Outcome::Done).map(|(c, _)| (*c).clone()).collect();
            if !done_columns.is_empty() && done_columns.len() < columns.len() {
                observed.partial.insert(privilege, done_columns);
            }
        }
        observed
    }

    fn verdict(&self, expected: &BTreeSet<&str>) -> Verdict {
        const PROBED: [Privilege; 4] = [Privilege::Select, Privilege::Insert, Privilege::Update, Privilege::Delete];
        let probed_ops: Vec<Privilege> = PROBED.into_iter().filter(|p| expected.contains(p.sql())).collect();
        if self.done.iter().any(|p| !expected.contains(p.sql())) {
            Verdict::Leak
        } else if !probed_ops.is_empty() && probed_ops.iter().all(|p| self.done.contains(p)) {
            Verdict::Allowed
        } else if !probed_ops.is_empty() {
            Verdict::Broken
        } else {
            Verdict::Denied
        }
    }
}

/// Options that pin the probe session's own settings, whatever the role's settings say.
fn session_settings() -> [(&'static str, String); 5] {
    [
        ("search_path", "pg_catalog".to_owned()),
        ("statement_timeout", format!("{}ms", PROBE_STATEMENT_TIMEOUT.as_millis())),
        ("lock_timeout", format!("{}ms", PROBE_LOCK_TIMEOUT.as_millis())),
        ("idle_in_transaction_session_timeout", "0".to_owned()),
        ("default_transaction_read_only", "off".to_owned()),
    ]
}

/// Opens the probe's session for `subject`, or says why it cannot.
async fn open_session(
    url: &DatabaseUrl,
    login_admin: Option<&Mutex<PgConnection>>,
    subject: &Subject,
) -> Result<PgConnection, String> {
    let describe = |e: AdminError| match &e {
        AdminError::Connect { source, .. } => crate::error::describe_sqlx(source),
        other => other.to_string(),
    };
    match &subject.session {
        Session::Direct => {
            // Startup options outrank the role's own settings (`ALTER ROLE ... SET`).
            let login = url.with_login(&subject.role, password_from_env(&subject.role).as_deref());
            let settings = session_settings();
            let options = login
                .connect_options()
                .map_err(describe)?
                .options(settings.iter().map(|(k, v)| (*k, v.as_str())))
                .log_statements(tracing::log::LevelFilter::Trace);
            options.connect().await.map_err(|e| crate::error::describe_sqlx(&e))
        }
        Session::Via(_) | Session::OneTime => {
            let login = match &subject.session {
                Session::Via(login) => login.as_str(),
                _ => subject.role.as_str(),
            };
            let Some(admin) = login_admin else { return Err("no admin session to log in from".to_owned()) };
            let mut conn = {
                let mut admin = admin.lock().await;
                crate::login::login_as(&mut admin, url, login).await.map_err(describe)?
            };
            // A one-time login keeps the role's settings: override them first thing.
            let mut set: String =
                session_settings().iter().map(|(k, v)| format!("SET {k} = {}; ", literal(v))).collect();
            if matches!(subject.session, Session::Via(_)) {
                set.push_str(&format!("SET ROLE {}", ident(&subject.role)));
            }
            sqlx::raw_sql(sqlx::AssertSqlSafe(set))
                .execute(&mut conn)
                .await
                .map_err(|e| format!("setting up the session as `{login}`: {}", crate::error::describe_sqlx(&e)))?;
            Ok(conn)
        }
    }
}

/// Attempts everything on `targets` as the subject; the codes per target, or why it could not.
async fn probe_role(
    url: &DatabaseUrl,
    login_admin: Option<&Mutex<PgConnection>>,
    subject: &Subject,
    targets: &[(Target, Vec<Attempt>)],
) -> Result<Vec<Option<String>>, String> {
    #[derive(Serialize)]
    struct Input<'a> {
        schema: &'a str,
        attempts: &'a [Attempt],
    }
    let mut conn = open_session(url, login_admin, subject).await?;
    // First the first relation of each schema: a refusal at the schema stands for the rest of
    // it, which is sent only for the schemas the role could enter.
    let mut firsts: Vec<usize> = Vec::new();
    for (i, (target, _)) in targets.iter().enumerate() {
        if firsts.last().is_none_or(|&f| targets[f].0.schema != target.schema) {
            firsts.push(i);
        }
    }
    let input = |indexes: &[usize]| -> Result<String, String> {
        let input: Vec<Input<'_>> =
            indexes.iter().map(|&i| Input { schema: &targets[i].0.schema, attempts: &targets[i].1 }).collect();
        serde_json::to_string(&input).map_err(|e| e.to_string())
    };
    let first_input = input(&firsts)?;
    let result = async {
        let mut tx = conn.begin().await.map_err(|e| e.to_string())?;
        let first = run_probe(&mut tx, &first_input).await?;
        let mut codes: Vec<Option<String>> = vec![None; targets.len()];
        let mut entered: BTreeSet<&str> = BTreeSet::new();
        for (&i, code) in firsts.iter().zip(first) {
            if !code.as_deref().unwrap_or("S").starts_with('S') {
                entered.insert(targets[i].0.schema.as_str());
            }
            codes[i] = code;
        }
        let rest: Vec<usize> = (0..targets.len())
            .filter(|i| !firsts.contains(i) && entered.contains(targets[*i].0.schema.as_str()))
            .collect();
        if !rest.is_empty() {
            let second = run_probe(&mut tx, &input(&rest)?).await?;
            for (&i, code) in rest.iter().zip(second) {
                codes[i] = code;
            }
        }
        tx.rollback().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(codes)
    }
    .await;
    let _ = conn.close().await;
    result
}

/// One run of `probe.sql` on `input`: the codes per target.
async fn run_probe(tx: &mut PgConnection, input: &str) -> Result<Vec<Option<String>>, String> {
    let failed = |e: sqlx::Error| format!("probing failed: {}", crate::error::describe_sqlx(&e));
    sqlx::query("SELECT pg_catalog.set_config('moat.probe_input', $1, true)")
        .bind(input)
        .execute(&mut *tx)
        .await
        .map_err(failed)?;
    sqlx::raw_sql(PROBE_DO).execute(&mut *tx).await.map_err(failed)?;
    let output: String = sqlx::query_scalar("SELECT pg_catalog.current_setting('moat.probe_output')")
        .fetch_one(&mut *tx)
        .await
        .map_err(failed)?;
    serde_json::from_str(&output).map_err(|e| format!("reading the probe's result: {e}"))
}

/// Findings of the access rows: leaks and broken access.
pub(super) fn access_findings(
    manifest: &Manifest,
    claimants: &BTreeMap<String, String>,
    access: &[AccessRow],
    probed: &[ProbedRole],
    findings: &mut Vec<Finding>,
) {
    for row in access {
        let how = match probed.iter().find(|p| p.role == row.role) {
            Some(ProbedRole { via: Some(via), .. }) => format!("logged in as `{via}`, then SET ROLE"),
            _ => "logged in as the role".to_owned(),
        };
        let schema = row.relation.split('.').next().unwrap_or_default();
        let module = manifest
            .module_by_schema(schema)
            .map(|m| m.name.to_string())
            .or_else(|| claimants.get(&row.relation).cloned());
        match row.verdict {
            Verdict::Leak => {
                let mut done: Vec<String> =
                    [("SELECT", row.select), ("INSERT", row.insert), ("UPDATE", row.update), ("DELETE", row.delete)]
                        .into_iter()
                        .filter(|(p, ok)| *ok && !row.leaks.iter().any(|l| l.split(' ').next() == Some(p)))
                        .map(|(p, _)| p.to_owned())
                        .collect();
                done.extend(row.leaks.iter().cloned());
                let mut finding = Finding::new(
                    RuleId::AccessLeak,
                    Severity::Error,
                    format!("`{}` could {} `{}` ({how}), which the manifest does not allow", row.role, done.join(", "), row.relation),
                )
                .object(format!("{} -> {}", row.role, row.relation))
                .help("find the grant, membership or attribute that allows it (see the other findings) and revoke it; `moat provision` restores moat's own grants");
                if let Some(module) = module {
                    finding = finding.module(module);
                }
                findings.push(finding);
            }
            Verdict::Broken => findings.push(
                Finding::new(
                    RuleId::AccessBroken,
                    Severity::Error,
                    format!("`{}` cannot read `{}` ({how}), which the manifest allows", row.role, row.relation),
                )
                .object(format!("{} -> {}", row.role, row.relation))
                .help("run `moat provision` to restore the grant"),
            ),
            Verdict::Denied | Verdict::Allowed => {}
        }
    }
}
