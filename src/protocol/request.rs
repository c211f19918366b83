//! Every request: its method name, params and result, declared once in the `requests!` table.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::RpcError;
use super::result::{AgentStatus, Rescan, Subscribed};
use crate::codex_state::{AuditReport, RepairReport};
use crate::index::ArchivedFilter;
use crate::query::{CheckResume, ListPage, ProblemsReport, SameAnswer, ThreadRecord};

/// A method: its name on the wire, its params and its result.
pub trait Method {
    const NAME: &'static str;
    type Params: Serialize + DeserializeOwned + JsonSchema + Validate;
    type Result: Serialize + JsonSchema;
}

macro_rules! requests {
    ($( $(#[$doc:meta])* $variant:ident = $name:literal ($params:ty) -> $result:ty; )*) => {
        /// A request, parsed from its method and params.
        #[derive(Debug, Clone)]
        pub enum ClientRequest {
            $( $(#[$doc])* $variant($params), )*
        }

        /// One marker type per method, for typed calls (`Client::request::<methods::X>`).
        pub mod methods {
            use super::*;
            $(
                $(#[$doc])*
                #[derive(Debug, Clone, Copy)]
                pub struct $variant;
                impl Method for $variant {
                    const NAME: &'static str = $name;
                    type Params = $params;
                    type Result = $result;
                }
            )*
        }

        impl ClientRequest {
            /// Parses `params` for `method`: an unknown method is -32601, params that do not
            /// fit -32602 with serde's sentence (it names the field).
            pub fn parse(method: &str, params: Value) -> Result<ClientRequest, RpcError> {
                match method {
                    $( $name => parse_params::<$params>(params)
                        .and_then(|p| p.validate().map(|()| p))
                        .map(ClientRequest::$variant), )*
                    other => Err(RpcError::new(
                        super::error::METHOD_NOT_FOUND,
                        format!("unknown method {other:?}"),
                    )),
                }
            }

            /// [`ClientRequest::parse`] from the params' JSON text, without building a
            /// `Value` first. `None` when the params do not read as the method's type: the
            /// caller then takes the `Value` path, whose error answer is the one the wire
            /// promises (serde's sentences differ between the two readers). When it reads,
            /// the command is the one `parse` gives.
            pub fn parse_text(method: &str, params: &str) -> Option<Result<ClientRequest, RpcError>> {
                match method {
                    $( $name => serde_json::from_str::<$params>(params).ok()
                        .map(|p| p.validate().map(|()| ClientRequest::$variant(p))), )*
                    other => Some(Err(RpcError::new(
                        super::error::METHOD_NOT_FOUND,
                        format!("unknown method {other:?}"),
                    ))),
                }
            }

            pub fn method(&self) -> &'static str {
                match self {
                    $( ClientRequest::$variant(_) => $name, )*
                }
            }
        }

        /// Calls `f` with each method's name and its params and result types, for the
        /// schema and TypeScript generators.
        pub fn for_each_method<V: super::schema::MethodVisitor>(f: &mut V) {
            $( f.visit::<methods::$variant>(); )*
        }
    };
}

requests! {
    /// The record of a thread, by id or unique id prefix.
    ThreadResolve = "thread/resolve" (ThreadResolveParams) -> ThreadRecord;
    /// Whether a path may be used to resume a thread.
    ThreadCheckResume = "thread/checkResume" (ThreadCheckResumeParams) -> CheckResume;
    /// A page of threads, newest first.
    ThreadList = "thread/list" (ThreadListParams) -> ListPage;
    /// The record once the thread's rollout exists.
    ThreadWait = "thread/wait" (ThreadWaitParams) -> ThreadRecord;
    /// The record of the rollout at a path.
    PathResolve = "path/resolve" (PathResolveParams) -> ThreadRecord;
    /// Whether two paths are one rollout file.
    PathSame = "path/same" (PathSameParams) -> SameAnswer;
    /// Start receiving notifications on this connection.
    Subscribe = "subscribe" (SubscribeParams) -> Subscribed;
    /// Stop receiving notifications.
    Unsubscribe = "unsubscribe" (NoParams) -> Subscribed;
    /// The agent's state.
    IndexStatus = "index/status" (NoParams) -> AgentStatus;
    /// A full reconcile now.
    IndexRescan = "index/rescan" (NoParams) -> Rescan;
    /// Bad files and duplicate threads.
    IndexProblems = "index/problems" (NoParams) -> ProblemsReport;
    /// Codex's state DB checked against the files.
    CodexAudit = "codex/audit" (NoParams) -> AuditReport;
    /// What repair would change in Codex's state DB (or changed, with `apply`).
    CodexRepair = "codex/repair" (CodexRepairParams) -> RepairReport;
}

fn parse_params<T: DeserializeOwned>(params: Value) -> Result<T, RpcError> {
    serde_json::from_value(params).map_err(|e| RpcError::invalid_params(format!("bad params: {e}")))
}

/// Checks beyond the params' shape.
pub trait Validate {
    fn validate(&self) -> Result<(), RpcError> {
        Ok(())
    }
}

/// Paths in requests are absolute: the agent never resolves one against its own working
/// directory (the CLI makes them absolute against its own).
fn absolute(field: &str, path: &std::path::Path) -> Result<(), RpcError> {
    if path.is_absolute() {
        return Ok(());
    }
    Err(RpcError::with_reason(
        super::error::INVALID_PARAMS,
        super::ErrorReason::BadPath,
        format!(
            "bad params: {field} must be an absolute path, not {:?}",
            path.display().to_string()
        ),
    ))
}

impl Validate for NoParams {}
impl Validate for ThreadResolveParams {}
impl Validate for ThreadListParams {}
impl Validate for ThreadWaitParams {}
impl Validate for SubscribeParams {}
impl Validate for CodexRepairParams {}

impl Validate for ThreadCheckResumeParams {
    fn validate(&self) -> Result<(), RpcError> {
        absolute("path", &self.path)
    }
}

impl Validate for PathResolveParams {
    fn validate(&self) -> Result<(), RpcError> {
        absolute("path", &self.path)
    }
}

impl Validate for PathSameParams {
    fn validate(&self) -> Result<(), RpcError> {
        absolute("a", &self.a)?;
        absolute("b", &self.b)
    }
}

/// No params (any object is accepted and ignored).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct NoParams {}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ThreadResolveParams {
    /// A full id, or a unique prefix of at least 8 characters.
    pub thread_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ThreadCheckResumeParams {
    pub thread_id: String,
    /// Absolute.
    pub path: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ThreadListParams {
    /// `false` (the default) active only, `true` archived only, `"all"` both.
    #[serde(default)]
    pub archived: Archived,
    /// Only threads started in this directory (exact match).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Case-insensitive, in the title or cwd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<String>,
    /// At most 1000.
    #[serde(default = "default_limit")]
    pub limit: usize,
    /// The `nextCursor` of the previous page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

fn default_limit() -> usize {
    50
}

/// `thread/list`'s `archived`: `false` (active only), `true` (archived only) or `"all"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Archived {
    #[default]
    Active,
    Archived,
    All,
}

impl From<Archived> for ArchivedFilter {
    fn from(a: Archived) -> Self {
        match a {
            Archived::Active => ArchivedFilter::Active,
            Archived::Archived => ArchivedFilter::Archived,
            Archived::All => ArchivedFilter::All,
        }
    }
}

impl From<ArchivedFilter> for Archived {
    fn from(a: ArchivedFilter) -> Self {
        match a {
            ArchivedFilter::Active => Archived::Active,
            ArchivedFilter::Archived => Archived::Archived,
            ArchivedFilter::All => Archived::All,
        }
    }
}

impl Serialize for Archived {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Archived::Active => s.serialize_bool(false),
            Archived::Archived => s.serialize_bool(true),
            Archived::All => s.serialize_str("all"),
        }
    }
}

impl<'de> Deserialize<'de> for Archived {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::Null | Value::Bool(false) => Ok(Archived::Active),
            Value::Bool(true) => Ok(Archived::Archived),
            Value::String(s) if s == "all" => Ok(Archived::All),
            other => Err(serde::de::Error::custom(format!(
                "archived must be true, false or \"all\", not {other}"
            ))),
        }
    }
}

impl JsonSchema for Archived {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Archived".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "false: active only; true: archived only; \"all\": both",
            "anyOf": [{ "type": "boolean" }, { "const": "all" }]
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ThreadWaitParams {
    /// A full id, or a unique prefix.
    pub thread_id: String,
    /// Default 30000, at most one hour.
    #[serde(default = "default_wait_ms")]
    pub timeout_ms: u64,
}

fn default_wait_ms() -> u64 {
    30_000
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PathResolveParams {
    /// Absolute.
    pub path: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PathSameParams {
    /// Absolute.
    pub a: PathBuf,
    /// Absolute.
    pub b: PathBuf,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubscribeParams {
    /// Only these threads (and index-wide notices); absent: every notification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_ids: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CodexRepairParams {
    /// Back the DB up and make the changes; without it, only say what would change.
    #[serde(default)]
    pub apply: bool,
    /// How long to wait for a busy database (default 10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub busy_timeout_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ErrorReason;

    #[test]
    fn relative_and_empty_paths_are_refused_with_a_reason() {
        for path in ["", "sessions/x.jsonl", "./x"] {
            let e = ClientRequest::parse("path/resolve", serde_json::json!({ "path": path }))
                .unwrap_err();
            assert_eq!(e.reason(), Some(ErrorReason::BadPath), "{path:?}");
        }
        let e = ClientRequest::parse("path/same", serde_json::json!({"a": "/x", "b": "y"}))
            .unwrap_err();
        assert_eq!(e.code, crate::protocol::error::INVALID_PARAMS);
        assert!(ClientRequest::parse("path/resolve", serde_json::json!({"path": "/x"})).is_ok());
    }

    #[test]
    fn archived_reads_false_true_and_all() {
        let parse = |v| {
            serde_json::from_value::<ThreadListParams>(serde_json::json!({ "archived": v }))
                .map(|p| p.archived)
        };
        assert_eq!(parse(serde_json::json!(false)).unwrap(), Archived::Active);
        assert_eq!(parse(serde_json::json!(true)).unwrap(), Archived::Archived);
        assert_eq!(parse(serde_json::json!("all")).unwrap(), Archived::All);
        assert!(parse(serde_json::json!("some")).is_err());
    }
}
