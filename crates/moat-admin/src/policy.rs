//! Who may hold which privilege on what: the access policy the manifest implies. Provisioning
//! makes the database match it; the audit reports every privilege outside it.

use std::collections::{BTreeMap, BTreeSet};

use moat_core::manifest::{Manifest, Module};
use moat_core::names::CONTRACTS_SCHEMA;

use crate::internal;
use crate::plan::InstalledContract;

/// Privileges per grantee.
pub type Wanted = BTreeMap<String, BTreeSet<&'static str>>;

/// SELECT, INSERT, UPDATE, DELETE.
pub const SIUD: [&str; 4] = ["SELECT", "INSERT", "UPDATE", "DELETE"];

/// The policy of one manifest (and the views its installed contracts created).
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    manifest: &'a Manifest,
    installed: &'a BTreeMap<String, InstalledContract>,
    frozen: Option<&'a BTreeSet<String>>,
}

impl<'a> Policy<'a> {
    /// The policy of `manifest`; `installed` maps contracts to the views they created.
    pub fn new(manifest: &'a Manifest, installed: &'a BTreeMap<String, InstalledContract>) -> Self {
        Self { manifest, installed, frozen: None }
    }

    /// The same policy while a move (`moat extract`) has stopped the writes of the modules in
    /// `frozen` here: their runtime role and the relay do not use their schema, and provisioning
    /// must not give that back before the move ends.
    pub fn with_frozen(mut self, frozen: &'a BTreeSet<String>) -> Self {
        self.frozen = Some(frozen);
        self
    }

    /// The database: CONNECT for every login role moat creates, nothing for anyone else.
    pub fn database(&self) -> Wanted {
        crate::plan::wanted_roles(self.manifest)
            .into_iter()
            .filter(|r| r.login)
            .map(|r| (r.name, BTreeSet::from(["CONNECT"])))
            .collect()
    }

    /// A module schema or the contracts schema: its owner role and who may use it. Module schemas
    /// are owned by moat's own role (so that no module role can drop or replace moat's tables in
    /// them); the module's owner creates its objects there with USAGE and CREATE.
    pub fn schema(&self, schema: &str) -> Option<(String, Wanted)> {
        let roles = self.manifest.roles();
        if let Some(module) = self.manifest.module_by_schema(schema) {
            let mut wanted = Wanted::new();
            wanted.insert(roles.module_owner(&module.name), BTreeSet::from(["USAGE", "CREATE"]));
            let frozen = self.frozen.is_some_and(|f| f.contains(module.name.as_str()));
            if !frozen {
                wanted.insert(roles.module_runtime(&module.name), BTreeSet::from(["USAGE"]));
            }
            // The migrator reads and writes the history as itself (it inherits nothing).
            wanted.insert(roles.module_migrator(&module.name), BTreeSet::from(["USAGE"]));
            for contract in &self.manifest.contracts {
                if contract.reads.iter().any(|r| r.schema == module.schema) {
                    wanted.insert(roles.contract_owner(&contract.name), BTreeSet::from(["USAGE"]));
                }
            }
            if self.manifest.is_depended_on(&module.name) && !frozen {
                wanted.insert(roles.relay(), BTreeSet::from(["USAGE"]));
            }
            return Some((roles.moat_owner(), wanted));
        }
        if schema == CONTRACTS_SCHEMA && !self.manifest.contracts.is_empty() {
            let mut wanted = Wanted::new();
            for contract in &self.manifest.contracts {
                wanted.insert(roles.contract_owner(&contract.name), BTreeSet::from(["USAGE", "CREATE"]));
                for reader in &contract.readers {
                    wanted.insert(roles.consumer(reader), BTreeSet::from(["USAGE"]));
                }
            }
            return Some((roles.contracts_owner(), wanted));
        }
        None
    }

    /// A relation in a managed schema: its owner role and who may do what with it. moat's own
    /// tables belong to `<project>_moat`, a contract's views to that contract's owner.
    pub fn relation(&self, schema: &str, name: &str, kind: &str) -> Option<(String, Wanted)> {
        let roles = self.manifest.roles();
        if let Some(module) = self.manifest.module_by_schema(schema) {
            let owner =
                if internal::owned_by_moat(name) { roles.moat_owner() } else { roles.module_owner(&module.name) };
            return Some((owner, self.module_relation(module, name, kind)));
        }
        if schema == CONTRACTS_SCHEMA && !self.manifest.contracts.is_empty() {
            if name == internal::CONTRACTS_LEDGER {
                return Some((roles.moat_owner(), Wanted::new()));
            }
            let mut wanted = Wanted::new();
            let mut owner = roles.contracts_owner();
            for contract in &self.manifest.contracts {
                let installed = self.installed.get(contract.name.as_str());
                if installed.is_some_and(|i| i.views.iter().any(|v| v == name)) {
                    owner = roles.contract_owner(&contract.name);
                    for reader in &contract.readers {
                        wanted.entry(roles.consumer(reader)).or_default().insert("SELECT");
                    }
                }
            }
            return Some((owner, wanted));
        }
        None
    }

    fn module_relation(&self, module: &Module, relation: &str, kind: &str) -> Wanted {
        let roles = self.manifest.roles();
        let runtime = roles.module_runtime(&module.name);
        let relay = roles.relay();
        let mut wanted = Wanted::new();
        match (relation, kind) {
            (internal::MIGRATIONS, _) => {
                wanted.insert(roles.module_migrator(&module.name), BTreeSet::from(["SELECT", "INSERT", "UPDATE"]));
            }
            (internal::OUTBOX, _) => {
                // The runtime role's INSERT is column-level (`column_privileges`), never on the table.
                wanted.insert(relay, BTreeSet::from(["SELECT"]));
            }
            (name, _) if internal::is_outbox_partition(name) => {
                wanted.insert(relay, BTreeSet::from(["SELECT", "TRUNCATE"]));
            }
            // The move journal is the admin's alone.
            (internal::MOVE, _) => {}
            (internal::OUTBOX_PROGRESS, _) => {
                wanted.insert(relay, BTreeSet::from(["SELECT", "INSERT", "UPDATE"]));
            }
            (_, "S") => {
                wanted.insert(runtime, BTreeSet::from(["USAGE"]));
            }
            (_, "m") => {
                wanted.insert(runtime, BTreeSet::from(["SELECT"]));
            }
            _ => {
                wanted.insert(runtime, BTreeSet::from(SIUD));
            }
        }
        for contract in &self.manifest.contracts {
            if contract.reads.iter().any(|r| r.schema == module.schema && r.relation.as_str() == relation) {
                wanted.entry(roles.contract_owner(&contract.name)).or_default().insert("SELECT");
            }
        }
        wanted
    }

    /// Column-level privileges on a relation in a managed schema: `(grantee, privilege,
    /// columns)`. The runtime role of a publishing module may INSERT into its outbox only the
    /// columns publishing writes; `id`, `tx`, `slot` and `published_at` are set by the database.
    pub fn column_privileges(
        &self,
        schema: &str,
        relation: &str,
    ) -> Vec<(String, &'static str, &'static [&'static str])> {
        match self.manifest.module_by_schema(schema) {
            Some(module) if relation == internal::OUTBOX => vec![(
                self.manifest.roles().module_runtime(&module.name),
                "INSERT",
                &internal::OUTBOX_PUBLISH_COLUMNS[..],
            )],
            _ => Vec::new(),
        }
    }

    /// A routine `name` in a managed schema, now owned by `owner`: its owner role and who may
    /// execute it. The outbox's cluster function belongs to moat (the runtime role executes it
    /// when publishing): in a publisher's schema, and wherever moat already owns it (a module
    /// that stopped publishing keeps its outbox and the function its default calls, and moat
    /// never hands that function to the module's owner).
    pub fn function(&self, schema: &str, name: &str, owner: &str) -> Option<(String, Wanted)> {
        let roles = self.manifest.roles();
        if let Some(module) = self.manifest.module_by_schema(schema) {
            let mut wanted = Wanted::new();
            wanted.insert(roles.module_runtime(&module.name), BTreeSet::from(["EXECUTE"]));
            let moat = roles.moat_owner();
            let owner = if name == internal::CLUSTER_FUNCTION
                && (self.manifest.is_depended_on(&module.name) || owner == moat)
            {
                moat
            } else {
                roles.module_owner(&module.name)
            };
            return Some((owner, wanted));
        }
        if schema == CONTRACTS_SCHEMA && !self.manifest.contracts.is_empty() {
            return Some((roles.contracts_owner(), Wanted::new()));
        }
        None
    }

    /// Default privileges of a module's owner in its schema: `(objtype, keyword, wanted)` for
    /// tables, sequences and functions.
    pub fn module_defaults(&self, module: &Module) -> [(&'static str, &'static str, Wanted); 3] {
        let runtime = self.manifest.roles().module_runtime(&module.name);
        let one = |privileges: &[&'static str]| -> Wanted {
            BTreeMap::from([(runtime.clone(), privileges.iter().copied().collect())])
        };
        [("r", "TABLES", one(&SIUD)), ("S", "SEQUENCES", one(&["USAGE"])), ("f", "FUNCTIONS", one(&["EXECUTE"]))]
    }
}
