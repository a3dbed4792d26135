//! The checks that tie the authentication keys together, made once the whole file is read: `auth_type = hba` needs
//! an `auth_hba_file` (read here, so a bad file fails the load with its own file and line, and a reload that cannot
//! read it keeps the running configuration); `auth_type = any` needs every database, `*` included, to log in as a
//! fixed `user=` (PgBouncer's rule: the client's user name is ignored, so something else must name the server
//! login); an `auth_dbname` that names no database is worth a warning. The console's `SET auth_type` goes through the same
//! rules ([`check_set`]).

use crate::databases::Database;
use crate::error::{ConfigError, Warning};
use crate::hba::Hba;
use crate::pooler::{AuthType, Config, Pooler, WILDCARD};
use crate::walk::Section;

/// Validates the authentication keys of a freshly parsed file and reads its auth_hba_file when `auth_type = hba`.
pub(crate) fn check(
    s: &Section<'_>,
    pooler: &Pooler,
    databases: &[Database],
    warnings: &mut Vec<Warning>,
) -> Result<Option<Hba>, ConfigError> {
    if let Some(names) = any_without_forced_user(pooler.auth_type, databases) {
        return Err(s.err("auth_type", any_message(&names)));
    }
    // PgBouncer finds out at the first lookup; a warning now saves that surprise without refusing its files.
    let mut missing: Vec<&str> = databases
        .iter()
        .filter_map(|db| db.auth_dbname.as_deref())
        .chain(pooler.auth_dbname.as_deref())
        .filter(|name| !databases.is_empty() && !knows_database(databases, name))
        .collect();
    missing.sort_unstable();
    missing.dedup();
    for name in missing {
        warnings.push(s.warning(
            "auth_dbname",
            format!("{name:?} names no database: lookups that need it will fail (add it to the databases)"),
        ));
    }
    match (pooler.auth_type, &pooler.auth_hba_file) {
        (AuthType::Hba, None) => {
            Err(s.err("auth_type", "auth_type = hba needs auth_hba_file (the pg_hba.conf-style rules to apply)"))
        }
        (AuthType::Hba, Some(path)) => Hba::load(path).map(Some),
        (_, Some(_)) => {
            warnings.push(s.warning("auth_hba_file", "has no effect unless auth_type = hba"));
            Ok(None)
        }
        (_, None) => Ok(None),
    }
}

/// The rules for the console's `SET auth_type = ...` on a running configuration (`next` is the configuration with
/// the new value): the auth_hba_file is read with the configuration file, so switching to hba needs rules loaded
/// already; `any` needs forced users as at load time.
pub(crate) fn check_set(next: &Config) -> Result<(), String> {
    if next.pooler.auth_type == AuthType::Hba && next.hba.is_none() {
        return Err("auth_type = hba: set it (and auth_hba_file) in the configuration file and reload, so the \
                    rules are read with it"
            .into());
    }
    if let Some(names) = any_without_forced_user(next.pooler.auth_type, &next.databases) {
        return Err(any_message(&names));
    }
    Ok(())
}

/// Under `auth_type = any`, the databases that lack a forced `user=` (None when the rule holds or does not apply).
fn any_without_forced_user(auth_type: AuthType, databases: &[Database]) -> Option<Vec<String>> {
    if auth_type != AuthType::Any {
        return None;
    }
    let names: Vec<String> = databases.iter().filter(|d| d.user.is_none()).map(|d| d.name.clone()).collect();
    (!names.is_empty()).then_some(names)
}

fn any_message(names: &[String]) -> String {
    format!(
        "auth_type = any ignores the client's user name, so every database must log in as a fixed user; add user=... \
         to: {}",
        names.join(", ")
    )
}

fn knows_database(databases: &[Database], name: &str) -> bool {
    databases.iter().any(|d| d.name == name || d.name == WILDCARD)
}
