//! Automatic persisted queries: Apollo's `persistedQuery` request extension, as Apollo Client's stock link sends it.
//!
//! The client first sends only the SHA-256 of its document (`extensions.persistedQuery.sha256Hash`). A document
//! this server has seen is run; an unknown one is answered `PERSISTED_QUERY_NOT_FOUND` (message
//! `PersistedQueryNotFound`, what the link looks for), and the client sends the document with its hash, which is
//! checked and kept. Each server keeps its own documents (at most [`MAX_DOCUMENTS`], forgotten all at once when
//! full): a client sent to another server sends the document once more.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextPrepareRequest};
use async_graphql::{Request, ServerError, ServerResult, Value};
use sha2::{Digest, Sha256};

use crate::error::code;

/// The most documents a server keeps.
pub const MAX_DOCUMENTS: usize = 4096;

/// The extension, with the documents it keeps (shared by its clones: the schema's and GET's).
#[derive(Clone, Default)]
pub struct PersistedQueries(Arc<Documents>);

impl PersistedQueries {
    /// The request with the document its hash names, when it uses the extension (see the module documentation).
    /// GET resolves the document before deciding whether the operation may run over GET.
    pub fn resolve(&self, req: Request) -> ServerResult<Request> {
        self.0.resolve(req)
    }

    /// Whether a request names its document by hash (and may come without one).
    pub fn names_hash(req: &Request) -> bool {
        req.extensions.contains_key("persistedQuery")
    }
}

#[derive(Default)]
struct Documents(Mutex<HashMap<String, String>>);

impl ExtensionFactory for PersistedQueries {
    fn create(&self) -> Arc<dyn Extension> {
        self.0.clone()
    }
}

fn refused(message: &str, code: &str) -> ServerError {
    let mut e = ServerError::new(message, None);
    e.extensions.get_or_insert_with(Default::default).set("code", code);
    e
}

/// The hash a request names, if it uses the extension.
fn named_hash(req: &Request) -> Result<Option<String>, ServerError> {
    let Some(ext) = req.extensions.get("persistedQuery") else { return Ok(None) };
    let bad =
        || refused("`extensions.persistedQuery` must be { version: 1, sha256Hash: \"<hex>\" }", code::BAD_REQUEST);
    let Value::Object(ext) = ext else { return Err(bad()) };
    match (ext.get("version"), ext.get("sha256Hash")) {
        (Some(Value::Number(v)), Some(Value::String(hash))) if v.as_u64() == Some(1) && hash.len() == 64 => {
            Ok(Some(hash.to_ascii_lowercase()))
        }
        _ => Err(bad()),
    }
}

impl Documents {
    fn resolve(&self, mut req: Request) -> ServerResult<Request> {
        let Some(hash) = named_hash(&req)? else { return Ok(req) };
        let mut kept = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if req.query.trim().is_empty() {
            let document =
                kept.get(&hash).ok_or_else(|| refused("PersistedQueryNotFound", "PERSISTED_QUERY_NOT_FOUND"))?;
            req.query = document.clone();
            return Ok(req);
        }
        let actual = format!("{:x}", Sha256::digest(req.query.as_bytes()));
        if actual != hash {
            return Err(refused(
                &format!("provided sha does not match query: the document's SHA-256 is {actual}"),
                code::BAD_REQUEST,
            ));
        }
        if kept.len() >= MAX_DOCUMENTS {
            kept.clear();
        }
        kept.insert(hash, req.query.clone());
        Ok(req)
    }
}

#[async_trait::async_trait]
impl Extension for Documents {
    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        let request = self.resolve(request)?;
        next.run(ctx, request).await
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn request(query: &str, hash: &str) -> Request {
        let mut req = Request::new(query);
        req.extensions = serde_json::from_value(json!({ "persistedQuery": { "version": 1, "sha256Hash": hash } }))
            .expect("extensions");
        req
    }

    fn code_of(e: &ServerError) -> String {
        e.extensions.as_ref().and_then(|x| x.get("code")).map(|c| c.to_string()).unwrap_or_default()
    }

    #[test]
    fn a_hash_is_run_once_its_document_was_sent_with_it() {
        let docs = Documents::default();
        let query = "{ __typename }";
        let hash = format!("{:x}", Sha256::digest(query.as_bytes()));
        let unknown = docs.resolve(request("", &hash)).expect_err("not seen yet");
        assert_eq!(
            (unknown.message.as_str(), code_of(&unknown).as_str()),
            ("PersistedQueryNotFound", "\"PERSISTED_QUERY_NOT_FOUND\"")
        );
        assert_eq!(docs.resolve(request(query, &hash)).expect("kept").query, query);
        assert_eq!(docs.resolve(request("", &hash)).expect("found").query, query);
        // A document that is not what its hash says is refused and not kept.
        let other = "{ me { role } }";
        let wrong = docs.resolve(request(other, &hash.replace('a', "b"))).expect_err("mismatch");
        assert_eq!(code_of(&wrong), "\"BAD_REQUEST\"");
        assert!(docs.resolve(request("", &hash.replace('a', "b"))).is_err());
        // A request without the extension is left alone; a malformed extension is refused.
        assert_eq!(docs.resolve(Request::new(other)).expect("plain").query, other);
        assert!(docs.resolve(request("", "abc")).is_err());
    }
}
