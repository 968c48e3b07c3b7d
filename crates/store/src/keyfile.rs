//! Repository key files with restic's own scrypt parameters.
//!
//! A key file holds the repository's master key encrypted under a key derived from the
//! password with scrypt. rustic_core writes its key files with scrypt's "recommended"
//! parameters (N = 2^17, r = 8: 128 MiB of memory for every command that opens the
//! repository, more than the rest of a backup needs); restic's `init` writes N = 2^15, r = 8,
//! p = 5 (32 MiB, about the same CPU time). A repository Lifeboat creates gets a key file with
//! restic's parameters; both tools open either.

use rustic_core::repofile::KeyFile;

use crate::error::{Error, Kind, Result};
use crate::lock::RepoKey;
use crate::objects::ObjectStore;

/// restic's scrypt parameters: log2(N), r, p.
pub const RESTIC_PARAMS: (u8, u32, u32) = (15, 8, 5);

/// The 64-byte key scrypt derives from the password with these parameters.
fn derive(password: &str, salt: &[u8], log_n: u8, r: u32, p: u32) -> Result<RepoKey> {
    let params = scrypt::Params::new(log_n, r, p, 64)
        .map_err(|e| Error::new(Kind::Key, format!("scrypt parameters: {e}")))?;
    let mut out = [0u8; 64];
    scrypt::scrypt(password.as_bytes(), salt, &params, &mut out)
        .map_err(|e| Error::new(Kind::Key, format!("scrypt: {e}")))?;
    Ok(RepoKey::from_bytes(out))
}

/// Rewrite every key file of the repository whose scrypt parameters are not restic's, for the
/// same password and master key: a new file (new salt, restic's parameters) is stored before
/// the old one is removed, so the repository always has a key that opens it.
pub fn use_restic_params(objects: &dyn ObjectStore, password: &str) -> Result<usize> {
    let (log_n, r, p) = RESTIC_PARAMS;
    let mut rewritten = 0;
    for name in objects.list("keys")? {
        let path = format!("keys/{name}");
        let Some(raw) = objects.get(&path)? else {
            continue;
        };
        let kf: KeyFile = serde_json::from_slice(&raw)
            .map_err(|e| Error::new(Kind::Backend, format!("key file {name}: {e}")))?;
        if kf.n == 1 << log_n && kf.r == r && kf.p == p {
            continue;
        }
        if !kf.n.is_power_of_two() {
            return Err(Error::new(
                Kind::Backend,
                format!("key file {name}: N is not a power of two"),
            ));
        }
        let old = derive(password, &kf.salt, kf.n.trailing_zeros() as u8, kf.r, kf.p)?;
        let master = old.decrypt(&kf.data).ok_or_else(|| {
            Error::new(
                Kind::Key,
                format!("key file {name} does not open with this key"),
            )
        })?;
        let mut salt = vec![0u8; 64];
        getrandom::fill(&mut salt)
            .map_err(|e| Error::new(Kind::Internal, format!("randomness: {e}")))?;
        let new = derive(password, &salt, log_n, r, p)?;
        let data = new.encrypt(&master);
        let file = KeyFile {
            n: 1 << log_n,
            r,
            p,
            salt,
            data,
            ..kf
        };
        let json = serde_json::to_vec(&file)
            .map_err(|e| Error::new(Kind::Internal, format!("key file: {e}")))?;
        let id = hex::encode(crate::backup::pack::sha256(&json));
        objects.put(&format!("keys/{id}"), &json)?;
        objects.delete(&path)?;
        rewritten += 1;
    }
    Ok(rewritten)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_rewritten_opens_with_the_same_password_to_the_same_master_key() {
        let dir = tempfile::tempdir().expect("tmp");
        let objects = crate::objects::LocalObjects::new(dir.path());
        // A key file as rustic_core writes it, with cheap parameters for the test.
        let master = br#"{"mac":{"k":"AAAAAAAAAAAAAAAAAAAAAA==","r":"AAAAAAAAAAAAAAAAAAAAAA=="},"encrypt":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}"#.to_vec();
        let salt = vec![7u8; 64];
        let k = derive("pw", &salt, 10, 8, 1).expect("derive");
        let old = KeyFile {
            hostname: Some("h".into()),
            username: None,
            created: None,
            kdf: "scrypt".into(),
            n: 1 << 10,
            r: 8,
            p: 1,
            data: k.encrypt(&master),
            salt,
        };
        objects
            .put("keys/old", &serde_json::to_vec(&old).expect("json"))
            .expect("put");
        assert_eq!(use_restic_params(&objects, "pw").expect("rewrite"), 1);
        let names = objects.list("keys").expect("list");
        assert_eq!(names.len(), 1);
        assert_ne!(names[0], "old");
        let raw = objects
            .get(&format!("keys/{}", names[0]))
            .expect("get")
            .expect("there");
        let kf: KeyFile = serde_json::from_slice(&raw).expect("json");
        assert_eq!((kf.n, kf.r, kf.p), (1 << 15, 8, 5));
        assert_eq!(kf.hostname.as_deref(), Some("h"));
        // rustic_core derives and decrypts it to the same master key.
        let key = kf.kdf_key(&"pw").expect("kdf");
        kf.key_from_data(&key).expect("rustic_core opens it");
        assert_eq!(
            derive("pw", &kf.salt, 15, 8, 5)
                .expect("derive")
                .decrypt(&kf.data),
            Some(master)
        );
        // Already restic's: nothing to do.
        assert_eq!(use_restic_params(&objects, "pw").expect("again"), 0);
    }
}
