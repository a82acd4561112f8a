//! Password hashing with argon2id. Verification of an unknown user runs against a dummy hash with the same
//! parameters, so "no such user" and "wrong password" take the same time.

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};

/// argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for HashParams {
    /// OWASP's recommendation for argon2id: 19 MiB, 2 iterations, 1 lane.
    fn default() -> Self {
        Self { memory_kib: 19 * 1024, iterations: 2, parallelism: 1 }
    }
}

#[derive(Clone)]
pub struct PasswordHashing {
    argon: Argon2<'static>,
    dummy: String,
}

impl PasswordHashing {
    pub fn new(params: HashParams) -> Result<Self, String> {
        map_large_allocations();
        let p = Params::new(params.memory_kib, params.iterations, params.parallelism, None)
            .map_err(|e| format!("invalid argon2 parameters: {e}"))?;
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, p);
        let dummy = argon.hash_password(b"taskorch dummy password").map_err(|e| e.to_string())?.to_string();
        Ok(Self { argon, dummy })
    }

    /// The PHC string of a new salted hash (CPU-heavy: call from a blocking thread).
    pub fn hash(&self, password: &str) -> Result<String, String> {
        self.argon.hash_password(password.as_bytes()).map(|h| h.to_string()).map_err(|e| e.to_string())
    }

    /// Whether `password` matches `stored` (or, with no stored hash, runs the same work and says no).
    pub fn verify(&self, password: &str, stored: Option<&str>) -> bool {
        let phc = stored.unwrap_or(&self.dummy);
        let Ok(parsed) = PasswordHash::new(phc) else { return false };
        let ok = self.argon.verify_password(password.as_bytes(), &parsed).is_ok();
        ok && stored.is_some()
    }
}

/// Makes large allocations (a hash's 19 MiB block) always `mmap`ed, so freeing one returns it to the system. By
/// default glibc raises its mmap threshold to the size of the first such block freed; later blocks then come from
/// the arena of whichever blocking thread hashes, and each of those threads keeps its 19 MiB for good.
fn map_large_allocations() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's tuning for later allocations.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> PasswordHashing {
        PasswordHashing::new(HashParams { memory_kib: 256, iterations: 1, parallelism: 1 }).unwrap()
    }

    #[test]
    fn hashes_are_argon2id_salted_and_verify_only_the_right_password() {
        let h = cheap();
        let a = h.hash("correct horse").unwrap();
        let b = h.hash("correct horse").unwrap();
        assert!(a.starts_with("$argon2id$"), "{a}");
        assert!(!a.contains("correct horse"));
        assert_ne!(a, b, "salted");
        assert!(h.verify("correct horse", Some(&a)));
        assert!(!h.verify("wrong horse", Some(&a)));
        assert!(!h.verify("taskorch dummy password", None), "the dummy never logs anyone in");
    }

    #[test]
    fn bad_parameters_are_named() {
        let err = PasswordHashing::new(HashParams { memory_kib: 1, iterations: 0, parallelism: 1 }).err().unwrap();
        assert!(err.contains("argon2"), "{err}");
    }
}
