//! API key rows kept under a shared key generation (the production stack's Redis, faked here): kept while the
//! generation is unchanged, read again when a revocation replaces it, and refused by the revoking process at once
//! even when the generation cannot be replaced.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use taskorch_domain::{Role, TenantId, UserId, WorkflowId};

use super::*;
use crate::cache::ReadCache;
use crate::db::{Database, PoolOptions};
use crate::model::WorkflowRecord;

/// A shared cache holding only the key generation; `writable` false makes replacing it fail.
struct FakeShared {
    generation: Mutex<u32>,
    writable: AtomicBool,
}

#[async_trait]
impl ReadCache for FakeShared {
    async fn get(&self, _id: WorkflowId) -> Option<WorkflowRecord> {
        None
    }
    async fn put(&self, _record: &WorkflowRecord) {}
    async fn invalidate(&self, _newest: &[(WorkflowId, i64)]) {}
    fn is_shared(&self) -> bool {
        true
    }
    async fn key_generation(&self) -> Option<String> {
        self.generation.lock().ok().map(|g| g.to_string())
    }
    async fn bump_key_generation(&self) -> bool {
        let ok = self.writable.load(Ordering::SeqCst);
        if ok && let Ok(mut g) = self.generation.lock() {
            *g += 1;
        }
        ok
    }
}

async fn auth_with(shared: Arc<FakeShared>) -> (Auth, Store, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("taskorch-auth-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let url = format!("sqlite://{}?mode=rwc", dir.join("t.db").display());
    let db = Database::connect(&url, PoolOptions::default()).await.expect("connect");
    db.migrate().await.expect("migrate");
    let store = Store::new(db);
    let opts = AuthOptions {
        jwt_secret: Some(vec![7; 32]),
        access_ttl: None,
        refresh_ttl: None,
        hash_params: password::HashParams { memory_kib: 256, iterations: 1, parallelism: 1 },
        admin_email: None,
        admin_password: Some("an-admin-password".to_owned()),
    };
    let (auth, _) = Auth::init(store.clone(), None, Some(shared), opts).await.expect("auth");
    (auth, store, dir)
}

fn admin() -> Principal {
    Principal { tenant: TenantId::SYSTEM, role: Role::Admin, subject: Subject::User(UserId(uuid::Uuid::new_v4())) }
}

/// Statements run on the pool the key rows are read from (SQLite: the read pool).
fn key_reads(store: &Store) -> u64 {
    store.database().statements_executed().1
}

#[tokio::test]
async fn a_kept_key_row_is_read_again_once_a_revocation_replaces_the_generation() {
    let shared = Arc::new(FakeShared { generation: Mutex::new(1), writable: AtomicBool::new(true) });
    let (auth, store, dir) = auth_with(shared.clone()).await;
    let created = auth.create_api_key(&admin(), "svc", Role::Viewer, None, None).await.expect("key");
    auth.authenticate(&created.token).await.expect("valid");
    let before = key_reads(&store);
    auth.authenticate(&created.token).await.expect("valid");
    assert_eq!(key_reads(&store), before, "the second use reads no key row: it is kept under the generation");

    auth.revoke_api_key(&admin(), created.key.id).await.expect("revoked");
    assert_eq!(*shared.generation.lock().unwrap(), 2, "the revocation replaced the generation");
    let refused = auth.authenticate(&created.token).await;
    assert!(matches!(refused, Err(Error::Unauthenticated(_))), "{refused:?}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_revocation_that_cannot_replace_the_generation_says_so_and_holds_here_at_once() {
    let shared = Arc::new(FakeShared { generation: Mutex::new(1), writable: AtomicBool::new(false) });
    let (auth, _store, dir) = auth_with(shared.clone()).await;
    let created = auth.create_api_key(&admin(), "svc", Role::Viewer, None, None).await.expect("key");
    auth.authenticate(&created.token).await.expect("valid, and now kept");

    let answer = auth.revoke_api_key(&admin(), created.key.id).await;
    let Err(Error::Unavailable(message)) = answer else { panic!("expected Unavailable, got {answer:?}") };
    assert!(message.contains("revoked") && message.contains("Redis"), "{message}");
    assert_eq!(*shared.generation.lock().unwrap(), 1, "the generation is unchanged");
    let refused = auth.authenticate(&created.token).await;
    assert!(matches!(refused, Err(Error::Unauthenticated(_))), "the revoking process refuses it at once: {refused:?}");
    let _ = std::fs::remove_dir_all(dir);
}
