//! moat's own tables inside module schemas: the migration history and the event tables.
//! Their names start with `moat_`; provisioning creates them, owned by `<project>_moat` (which no
//! module role can become), so that a module owner cannot drop, alter, replace or hang triggers,
//! rules or policies on what the admin, the relay and other modules touch.

use moat_core::quote::{ident, literal, qualified};

/// The migration history table, in every module schema.
pub const MIGRATIONS: &str = "moat_migrations";
/// The outbox (partitioned by time slot), in every module some other module depends on.
pub const OUTBOX: &str = "moat_outbox";
/// The outbox's id sequence.
pub const OUTBOX_SEQUENCE: &str = "moat_outbox_id_seq";
/// The relay's record of what each subscriber consumed, beside the outbox (for retention).
pub const OUTBOX_PROGRESS: &str = "moat_outbox_progress";
/// A subscriber's cursor per publisher, in every module that depends on another.
pub const SUBSCRIPTIONS: &str = "moat_subscriptions";
/// A subscriber's held events (retrying, waiting behind a failed event of the same key, dead).
pub const INBOX: &str = "moat_inbox";
/// The journal of a module's move to another database (`moat extract`), in the module's schema in
/// the database it moves from: one row, whose `step` is `switched` once the module lives at the
/// target.
pub const MOVE: &str = "moat_move";
/// The journal step after which a moved module lives in its target database.
pub const MOVE_SWITCHED: &str = "switched";
/// The ledger of installed contracts, in the contracts schema.
pub const CONTRACTS_LEDGER: &str = "moat_contracts";
/// The `NOTIFY` channel on which `moat extract` announces, in the source database, that a module
/// switched to its new database (payload: the module's name).
pub const MOVE_CHANNEL: &str = "moat_move";

/// The text of [`CLUSTER_ID`], for `concat!`.
macro_rules! cluster_id {
    () => {
        "((pg_control_system()).system_identifier)::text"
    };
}

/// The identity of the cluster a statement runs in (its system identifier, as text). Transaction
/// ids and snapshots (`moat_outbox.tx`, `moat_subscriptions.lo`/`hi`,
/// `moat_outbox_progress.consumed_below`) mean something only in the cluster named beside them
/// (`cluster`): after a dump and restore into another cluster the dispatcher re-bases a cursor
/// whose cluster differs from the current one.
pub const CLUSTER_ID: &str = cluster_id!();

/// The function beside a publishing module's outbox that gives `moat_outbox.cluster` its
/// default: [`CLUSTER_ID`], declared `IMMUTABLE` so that the planner computes it once per
/// statement it plans (a prepared publish: once per connection) instead of reading the control
/// file for every row. The identity cannot change under a plan: a plan lives in one server
/// process, which lives in one cluster; a restored database gets fresh sessions. Owned by
/// `<project>_moat`, so no module role can replace it; the default refers to it by OID.
pub const CLUSTER_FUNCTION: &str = "moat_cluster";

/// `<schema>.moat_cluster()`, the default of the outbox's `cluster`.
pub fn cluster_default(schema: &str) -> String {
    format!("{}()", qualified(schema, CLUSTER_FUNCTION))
}

/// Statements that create [`CLUSTER_FUNCTION`] in `schema`, owned by `owner`, executable by
/// `runtime` (the role that inserts into the outbox) only.
pub fn cluster_function_ddl(schema: &str, owner: &str, runtime: &str) -> Vec<String> {
    let function = cluster_default(schema);
    vec![
        format!(
            "CREATE FUNCTION {function} RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog \
             AS {}",
            literal("SELECT (pg_catalog.pg_control_system()).system_identifier::pg_catalog.text")
        ),
        format!("ALTER FUNCTION {function} OWNER TO {}", ident(owner)),
        format!("REVOKE ALL ON FUNCTION {function} FROM PUBLIC"),
        format!("GRANT EXECUTE ON FUNCTION {function} TO {}", ident(runtime)),
    ]
}

/// The state of an event held in a subscriber's inbox (`moat_inbox.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InboxState {
    /// Waiting behind an earlier held event of its key, or for a process that handles its type.
    Waiting,
    /// Its handler failed; retried with backoff.
    Retry,
    /// Its handler failed `max_attempts` times; only `moat events retry` revives it.
    Dead,
}

impl InboxState {
    /// Every state.
    pub const ALL: [Self; 3] = [Self::Waiting, Self::Retry, Self::Dead];

    /// The value stored in `moat_inbox.state`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::Retry => "retry",
            Self::Dead => "dead",
        }
    }

    /// The state as an SQL literal (`'waiting'`).
    pub fn sql(self) -> String {
        literal(self.as_str())
    }
}

impl std::fmt::Display for InboxState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outbox columns a publishing transaction writes (the runtime role may INSERT only these);
/// `id`, `tx`, `slot` and `published_at` are always set by the database.
pub const OUTBOX_PUBLISH_COLUMNS: [&str; 6] =
    ["event_id", "event_type", "event_key", "payload", "correlation_id", "causation_id"];

/// How many time slots the outbox rotates through; a slot is truncated once every subscriber
/// has consumed it and it is neither the current slot nor the next one.
pub const OUTBOX_SLOTS: u16 = 4;
/// Seconds per outbox slot.
pub const OUTBOX_SLOT_SECONDS: u32 = 60;

/// The name of outbox partition `slot`.
pub fn outbox_partition(slot: u16) -> String {
    format!("{OUTBOX}_{slot}")
}

/// Whether `name` is one of the outbox partitions.
pub fn is_outbox_partition(name: &str) -> bool {
    name.strip_prefix(OUTBOX)
        .and_then(|rest| rest.strip_prefix('_'))
        .and_then(|n| n.parse::<u16>().ok())
        .is_some_and(|n| n < OUTBOX_SLOTS)
}

/// Whether `name` (in a module schema) is one of moat's own relations, owned by `<project>_moat`.
pub fn owned_by_moat(name: &str) -> bool {
    [MIGRATIONS, OUTBOX, OUTBOX_SEQUENCE, OUTBOX_PROGRESS, SUBSCRIPTIONS, INBOX, MOVE].contains(&name)
        || is_outbox_partition(name)
        || name == INBOX_SEQUENCE
}

/// The inbox's identity sequence (it follows the inbox's owner).
pub const INBOX_SEQUENCE: &str = "moat_inbox_id_seq";

/// Statements that create the migration history table of `schema`, owned by `owner`.
pub fn migrations_ddl(schema: &str, owner: &str) -> Vec<String> {
    let table = qualified(schema, MIGRATIONS);
    vec![
        format!(
            "CREATE TABLE {table} (version bigint PRIMARY KEY, name text NOT NULL, checksum text NOT NULL, \
             applied_at timestamptz NOT NULL DEFAULT now(), duration_ms bigint NOT NULL, success boolean NOT NULL)"
        ),
        format!("ALTER TABLE {table} OWNER TO {}", ident(owner)),
    ]
}

/// Statements that create the outbox of a publishing module (and the function its `cluster`
/// defaults to, executable by the module's runtime role `runtime`).
pub fn outbox_ddl(schema: &str, owner: &str, runtime: &str) -> Vec<String> {
    let mut ddl = cluster_function_ddl(schema, owner, runtime);
    let owner = ident(owner);
    let sequence = qualified(schema, OUTBOX_SEQUENCE);
    let table = qualified(schema, OUTBOX);
    ddl.extend([
        format!("CREATE SEQUENCE {sequence} AS bigint"),
        format!(
            "CREATE TABLE {table} (\
             id bigint NOT NULL DEFAULT nextval({}::regclass), \
             tx xid8 NOT NULL DEFAULT pg_current_xact_id(), \
             slot smallint NOT NULL DEFAULT ((floor(extract(epoch FROM now()) / {OUTBOX_SLOT_SECONDS})::bigint % {OUTBOX_SLOTS})::smallint), \
             event_id uuid NOT NULL, event_type text NOT NULL, event_key text NOT NULL, payload jsonb NOT NULL, \
             correlation_id uuid, causation_id uuid, published_at timestamptz NOT NULL DEFAULT clock_timestamp(), \
             {}) PARTITION BY LIST (slot)",
            literal(&sequence),
            added_columns_sql(schema, OUTBOX),
        ),
    ]);
    for slot in 0..OUTBOX_SLOTS {
        ddl.push(format!(
            "CREATE TABLE {} PARTITION OF {table} FOR VALUES IN ({slot})",
            qualified(schema, &outbox_partition(slot))
        ));
    }
    // `tx` bounds the batch of a subscriber that keeps up; `id` orders a backlog.
    ddl.push(format!("CREATE INDEX {} ON {table} (tx)", ident("moat_outbox_tx")));
    ddl.push(format!("CREATE INDEX {} ON {table} (id)", ident("moat_outbox_id")));
    ddl.push(format!(
        "CREATE TABLE {} (subscriber text PRIMARY KEY, consumed_below xid8 NOT NULL, updated_at timestamptz NOT NULL DEFAULT now(), {})",
        qualified(schema, OUTBOX_PROGRESS),
        added_columns_sql(schema, OUTBOX_PROGRESS),
    ));
    ddl.push(format!("ALTER SEQUENCE {sequence} OWNER TO {owner}"));
    ddl.push(format!("ALTER TABLE {table} OWNER TO {owner}"));
    for slot in 0..OUTBOX_SLOTS {
        ddl.push(format!("ALTER TABLE {} OWNER TO {owner}", qualified(schema, &outbox_partition(slot))));
    }
    ddl.push(format!("ALTER TABLE {} OWNER TO {owner}", qualified(schema, OUTBOX_PROGRESS)));
    ddl
}

/// Statements that create the subscription cursor and inbox of a subscribing module.
pub fn inbox_ddl(schema: &str, owner: &str) -> Vec<String> {
    let owner = ident(owner);
    let subscriptions = qualified(schema, SUBSCRIPTIONS);
    let inbox = qualified(schema, INBOX);
    vec![
        format!(
            "CREATE TABLE {subscriptions} (publisher text PRIMARY KEY, lo pg_snapshot NOT NULL, hi pg_snapshot, \
             last_id bigint NOT NULL DEFAULT 0, updated_at timestamptz NOT NULL DEFAULT now(), {})",
            added_columns_sql(schema, SUBSCRIPTIONS),
        ),
        format!(
            "CREATE TABLE {inbox} (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, publisher text NOT NULL, \
             outbox_id bigint NOT NULL, event_id uuid NOT NULL, event_type text NOT NULL, event_key text NOT NULL, \
             payload jsonb NOT NULL, correlation_id uuid, causation_id uuid, published_at timestamptz NOT NULL, \
             state text NOT NULL CHECK (state IN ({states})), attempts integer NOT NULL DEFAULT 0, \
             next_attempt_at timestamptz NOT NULL DEFAULT now(), last_error text, held_at timestamptz NOT NULL DEFAULT now(), \
             UNIQUE (publisher, event_id))",
            states = InboxState::ALL.iter().map(|s| s.sql()).collect::<Vec<_>>().join(", ")
        ),
        format!("CREATE INDEX {} ON {inbox} (publisher, event_key, id)", ident("moat_inbox_key")),
        format!("ALTER TABLE {subscriptions} OWNER TO {owner}"),
        format!("ALTER TABLE {inbox} OWNER TO {owner}"),
    ]
}

/// A column of one of moat's tables that the first layout of that table did not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddedColumn {
    /// The table (in a module schema).
    pub table: &'static str,
    /// The column.
    pub name: &'static str,
    /// Its type, constraints and default, as in `CREATE TABLE` (and `ALTER TABLE ... ADD COLUMN`
    /// unless `cluster_of_existing_rows`).
    pub definition: &'static str,
    /// The column names the cluster (`text NOT NULL`, defaulting to the schema's
    /// [`CLUSTER_FUNCTION`]): rows that exist when it is added were written in the cluster that
    /// adds it, which is given as a constant, so that adding it rewrites nothing (no index of the
    /// table is rebuilt and no expression evaluated for the existing rows).
    pub cluster_of_existing_rows: bool,
}

/// Every column added to moat's tables since their first layout, in the order they were added.
/// The `CREATE TABLE` statements above take these definitions from here, and provisioning adds
/// those that a database provisioned by an older moat lacks ([`add_column_sql`]): moat never
/// drops, renames or changes a column of its own tables, so adding is the whole upgrade.
/// Every other default is a constant, so adding a column never rewrites a table.
pub const ADDED_COLUMNS: [AddedColumn; 13] = [
    added(OUTBOX, "cluster", "text NOT NULL", true),
    added(OUTBOX_PROGRESS, "cluster", "text", false),
    added(SUBSCRIPTIONS, "handled", "text[] NOT NULL DEFAULT '{}'", false),
    added(SUBSCRIPTIONS, "ignored", "text[] NOT NULL DEFAULT '{}'", false),
    added(SUBSCRIPTIONS, "cluster", "text", false),
    added(SUBSCRIPTIONS, "moved_id", "bigint NOT NULL DEFAULT 0", false),
    // The JetStream relay's cursor, in its progress row (`RELAY_PROGRESS`): the same snapshot
    // cursor a subscription keeps.
    added(OUTBOX_PROGRESS, "lo", "pg_snapshot", false),
    added(OUTBOX_PROGRESS, "hi", "pg_snapshot", false),
    added(OUTBOX_PROGRESS, "last_id", "bigint NOT NULL DEFAULT 0", false),
    added(OUTBOX_PROGRESS, "moved_id", "bigint NOT NULL DEFAULT 0", false),
    // A subscription's transport as it last ran, its position in the JetStream stream, and the
    // events it applied beyond its snapshot `lo` (`<tx>/<event id>`), which JetStream may deliver
    // again (see `moat::jetstream`).
    added(SUBSCRIPTIONS, "transport", "text NOT NULL DEFAULT 'direct'", false),
    added(SUBSCRIPTIONS, "stream_seq", "bigint NOT NULL DEFAULT 0", false),
    added(SUBSCRIPTIONS, "applied", "text[] NOT NULL DEFAULT '{}'", false),
];

/// The progress row of the JetStream relay beside each outbox (not a module name: those cannot
/// start with `$`). Retention waits for it as for every subscriber that reads the outbox.
pub const RELAY_PROGRESS: &str = "$relay";

const fn added(
    table: &'static str,
    name: &'static str,
    definition: &'static str,
    cluster_of_existing_rows: bool,
) -> AddedColumn {
    AddedColumn { table, name, definition, cluster_of_existing_rows }
}

/// `name definition, ...` of the added columns of `table` in `schema`, for its `CREATE TABLE`.
fn added_columns_sql(schema: &str, table: &str) -> String {
    ADDED_COLUMNS
        .iter()
        .filter(|c| c.table == table)
        .map(|c| match c.cluster_of_existing_rows {
            true => format!("{} {} DEFAULT {}", c.name, c.definition, cluster_default(schema)),
            false => format!("{} {}", c.name, c.definition),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `ALTER TABLE <schema>.<table> ADD COLUMN <column> <definition>`; a cluster column is added
/// with the constant `cluster` (the identity of the cluster provisioning runs in) for the rows
/// that exist, then given its default.
pub fn add_column_sql(schema: &str, column: &AddedColumn, cluster: &str) -> Vec<String> {
    let add = format!(
        "ALTER TABLE {} ADD COLUMN {} {}",
        qualified(schema, column.table),
        ident(column.name),
        column.definition
    );
    if column.cluster_of_existing_rows {
        vec![format!("{add} DEFAULT {}", literal(cluster)), cluster_set_default_sql(schema, column)]
    } else {
        vec![add]
    }
}

/// `ALTER TABLE ... ALTER COLUMN ... SET DEFAULT <schema>.moat_cluster()` for a cluster column.
pub fn cluster_set_default_sql(schema: &str, column: &AddedColumn) -> String {
    format!(
        "ALTER TABLE {} ALTER COLUMN {} SET DEFAULT {}",
        qualified(schema, column.table),
        ident(column.name),
        cluster_default(schema)
    )
}

/// `GRANT <privilege> (<columns>) ON TABLE <schema>.<relation> TO <grantee>`.
pub fn column_grant_sql(schema: &str, relation: &str, privilege: &str, columns: &[&str], grantee: &str) -> String {
    let columns: Vec<String> = columns.iter().map(|c| ident(c)).collect();
    format!("GRANT {privilege} ({}) ON TABLE {} TO {}", columns.join(", "), qualified(schema, relation), ident(grantee))
}

/// Statements that keep the progress rows of the outbox in `schema` in step with the manifest:
/// a row for each subscriber in `add` (one that has consumed nothing, so retention keeps every
/// event for it from now on, whether or not its dispatcher has started), none for those in
/// `remove` (subscribers that left the manifest, which must not hold retention back).
pub fn progress_rows_sql(schema: &str, add: &[&str], remove: &[&str]) -> Vec<String> {
    let table = qualified(schema, OUTBOX_PROGRESS);
    let mut sql = Vec::new();
    if !add.is_empty() {
        let rows: Vec<String> = add.iter().map(|s| format!("({}, '0')", literal(s))).collect();
        sql.push(format!(
            "INSERT INTO {table} (subscriber, consumed_below) VALUES {} ON CONFLICT (subscriber) DO NOTHING",
            rows.join(", ")
        ));
    }
    if !remove.is_empty() {
        let names: Vec<String> = remove.iter().map(|s| literal(s)).collect();
        sql.push(format!("DELETE FROM {table} WHERE subscriber IN ({})", names.join(", ")));
    }
    sql
}

/// `SELECT subscriber FROM <progress>` of the outbox in `schema` (what provisioning compares
/// with the manifest).
pub fn progress_subscribers_sql(schema: &str) -> String {
    format!("SELECT subscriber FROM {} ORDER BY subscriber", qualified(schema, OUTBOX_PROGRESS))
}

/// Statements that create the move journal of `schema` ([`MOVE`]), owned by `owner`
/// (`<project>_moat`). Its columns are a contract: `target` is the manifest's key of the database
/// the module moves to (`''` for the main one); `step` is the step under way (`preflight`,
/// `prepare`, `copy`, `catchup`, `cutover`, `verify`, `switched`); a row whose step is `switched`
/// means the module lives in the target database, any other step that it lives here. `frozen_at`
/// is set while the module's writes are stopped here, `revoked` lists the roles whose `USAGE` on
/// the schema the move took away (given back by an abort or a failed verification), `report` is
/// the last verification.
pub fn move_ddl(schema: &str, owner: &str) -> Vec<String> {
    let table = qualified(schema, MOVE);
    vec![
        format!(
            "CREATE TABLE {table} (target text NOT NULL, mode text, step text NOT NULL, \
             started_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now(), \
             switched_at timestamptz, frozen_at timestamptz, revoked text[] NOT NULL DEFAULT '{{}}', report jsonb, \
             one boolean NOT NULL DEFAULT true PRIMARY KEY CHECK (one))"
        ),
        format!("ALTER TABLE {table} OWNER TO {}", ident(owner)),
        format!("REVOKE ALL ON TABLE {table} FROM PUBLIC"),
    ]
}

/// Statements that create the contracts ledger, owned by `owner` (`<project>_moat`).
pub fn contracts_ledger_ddl(owner: &str) -> Vec<String> {
    let table = qualified(moat_core::names::CONTRACTS_SCHEMA, CONTRACTS_LEDGER);
    vec![
        format!(
            "CREATE TABLE {table} (contract text PRIMARY KEY, checksum text NOT NULL, views text[] NOT NULL, \
             installed_at timestamptz NOT NULL DEFAULT now())"
        ),
        format!("ALTER TABLE {table} OWNER TO {}", ident(owner)),
    ]
}
