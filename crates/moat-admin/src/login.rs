//! Logging in as a project role for admin work that runs module SQL (migrations, contract SQL).
//!
//! Module SQL never runs in a session whose session user is a superuser: moat opens a separate
//! connection that logs in as a role with exactly the module's rights (a module's migrator, a
//! contract's owner). On `trust` authentication it simply logs in. On password authentication
//! (SCRAM or md5) it first gives the role a **one-time password**: a random secret that lives
//! only in this process's memory; the server gets its SCRAM-SHA-256 verifier (computed here, so
//! the plain password never reaches the server, its logs or `pg_stat_activity`), valid for a few
//! minutes, and the password is removed again once the session is open. Logins of one role are
//! serialized by an advisory lock so that two moat processes never overwrite each other's
//! password between setting it and logging in. `peer` authentication cannot work for these roles
//! (no operating-system user matches them): the README says what `pg_hba.conf` needs.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use moat_core::quote::{ident, literal};
use rand::Rng as _;
use sha2::{Digest, Sha256};
use sqlx::PgConnection;

use crate::error::{AdminError, db};
use crate::target::DatabaseUrl;

/// How long a one-time password stays valid if moat is killed before it removes it.
pub const ONE_TIME_VALIDITY: Duration = Duration::from_secs(300);

/// SCRAM iteration count for one-time verifiers (PostgreSQL's default).
const SCRAM_ITERATIONS: u32 = 4096;

/// Opens a session that logs in as `role` (which must have LOGIN), giving it a one-time password
/// first. `admin` is the admin's own connection (it runs the `ALTER ROLE`s, never module SQL);
/// `admin_url` says where to connect. The returned connection is the caller's to close and is
/// never used for admin work.
pub async fn login_as(
    admin: &mut PgConnection,
    admin_url: &DatabaseUrl,
    role: &str,
) -> Result<PgConnection, AdminError> {
    let key = format!("moat:login:{role}");
    crate::locks::advisory_lock(admin, &key, &format!("logging in as `{role}`")).await?;
    let result = async {
        let password = one_time_password();
        let verifier = scram_verifier(&password, &random_salt(), SCRAM_ITERATIONS);
        let until = chrono::Utc::now() + chrono::Duration::from_std(ONE_TIME_VALIDITY).unwrap_or_default();
        let set = format!(
            "ALTER ROLE {} PASSWORD {} VALID UNTIL {}",
            ident(role),
            literal(&verifier),
            literal(&until.format("%Y-%m-%d %H:%M:%S+00").to_string())
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(set))
            .execute(&mut *admin)
            .await
            .map_err(db(format!("giving `{role}` a one-time password")))?;
        let session = crate::connect_as(&admin_url.with_login(role, Some(&password))).await;
        let clear = format!("ALTER ROLE {} PASSWORD NULL VALID UNTIL 'infinity'", ident(role));
        let cleared = sqlx::raw_sql(sqlx::AssertSqlSafe(clear))
            .execute(&mut *admin)
            .await
            .map_err(db(format!("removing the one-time password of `{role}`")));
        let session = session.map_err(|e| match e {
            AdminError::Connect { target, source, .. } => AdminError::Connect {
                target,
                help: format!(
                    "moat runs module SQL in a session that logs in as `{role}`; allow it in pg_hba.conf with \
                     `trust` or `scram-sha-256` (not `peer`) for the host moat connects to"
                ),
                source,
            },
            other => other,
        })?;
        cleared?;
        Ok(session)
    }
    .await;
    crate::locks::advisory_unlock(admin, &key).await;
    result
}

/// A random password of 32 letters and digits (no SASLprep surprises).
fn one_time_password() -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..32).map(|_| CHARS[rng.random_range(0..CHARS.len())] as char).collect()
}

fn random_salt() -> [u8; 16] {
    rand::rng().random()
}

/// The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (RFC 5802, RFC 7677):
/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
pub fn scram_verifier(password: &str, salt: &[u8], iterations: u32) -> String {
    let mut salted = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, iterations, &mut salted);
    let hmac = |key: &[u8], data: &[u8]| -> Vec<u8> {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(data);
        mac.finalize().into_bytes().to_vec()
    };
    let client_key = hmac(&salted, b"Client Key");
    let stored_key = Sha256::digest(&client_key);
    let server_key = hmac(&salted, b"Server Key");
    format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        BASE64.encode(salt),
        BASE64.encode(stored_key),
        BASE64.encode(server_key)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifier_has_postgres_shape() {
        // The server accepting it for a login is tested against a SCRAM-only cluster.
        let v = scram_verifier("moat", &[0u8; 16], 4096);
        assert!(v.starts_with("SCRAM-SHA-256$4096:AAAAAAAAAAAAAAAAAAAAAA==$"), "{v}");
        let keys = v.rsplit('$').next().unwrap();
        let (stored, server) = keys.split_once(':').unwrap();
        assert_eq!(BASE64.decode(stored).unwrap().len(), 32);
        assert_eq!(BASE64.decode(server).unwrap().len(), 32);
    }

    #[test]
    fn one_time_passwords_differ() {
        assert_ne!(one_time_password(), one_time_password());
        assert_eq!(one_time_password().len(), 32);
    }
}
