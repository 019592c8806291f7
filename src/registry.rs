//! `devcycle schemas apply`: registers each topic's value schema under `<topic>-value` through
//! the registry's Confluent-compatible REST API, after a BACKWARD compatibility check.
//!
//! Invariants: an incompatible schema is refused before anything is registered, with the
//! registry's reasons; registering an identical schema again is a no-op (same id).

use crate::catalog::Catalog;
use crate::settings::Settings;
use serde_json::{json, Value};
use std::time::Duration;

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("schema registry unreachable at {url}: {source}")]
    Unreachable { url: String, source: reqwest::Error },
    #[error("subject {subject}: schema {schema} is not BACKWARD compatible with the registered version: {reasons}")]
    Incompatible { subject: String, schema: String, reasons: String },
    #[error("subject {subject}: registry answered {status}: {body}")]
    Refused { subject: String, status: u16, body: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    pub subject: String,
    pub id: i64,
    /// False when the identical schema was already the registered one.
    pub new_version: bool,
}

pub struct RegistryClient {
    http: reqwest::Client,
    base: String,
}

impl RegistryClient {
    pub fn new(settings: &Settings) -> RegistryClient {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.schema_registry.timeout_ms))
            .build()
            .expect("http client");
        RegistryClient { http, base: settings.schema_registry.url.trim_end_matches('/').to_string() }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), RegistryError> {
        let url = format!("{}{}", self.base, path);
        let mut req = self.http.request(method, &url).header("Accept", CONTENT_TYPE);
        if let Some(b) = body {
            req = req.header("Content-Type", CONTENT_TYPE).body(b.to_string());
        }
        let resp = req.send().await.map_err(|source| RegistryError::Unreachable { url: url.clone(), source })?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|source| RegistryError::Unreachable { url, source })?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
    }

    /// Whether the registry answers.
    pub async fn reachable(&self) -> bool {
        matches!(self.call(reqwest::Method::GET, "/subjects", None).await, Ok((200, _)))
    }

    /// The registered id of this exact schema under `subject`, if any.
    pub async fn lookup(&self, subject: &str, schema: &str) -> Result<Option<i64>, RegistryError> {
        let (status, body) =
            self.call(reqwest::Method::POST, &format!("/subjects/{subject}"), Some(json!({"schema": schema}))).await?;
        Ok(if status == 200 { body["id"].as_i64() } else { None })
    }

    /// Checks `schema` against the latest version of `subject` (BACKWARD); Ok when the subject
    /// is new.
    pub async fn check_compatible(&self, subject: &str, schema: &str, name: &str) -> Result<(), RegistryError> {
        let path = format!("/compatibility/subjects/{subject}/versions/latest?verbose=true");
        let (status, body) = self.call(reqwest::Method::POST, &path, Some(json!({"schema": schema}))).await?;
        match status {
            200 if body["is_compatible"].as_bool() == Some(true) => Ok(()),
            200 => Err(RegistryError::Incompatible {
                subject: subject.into(),
                schema: name.into(),
                reasons: reasons(&body),
            }),
            404 => Ok(()),
            409 | 422 => Err(RegistryError::Incompatible {
                subject: subject.into(),
                schema: name.into(),
                reasons: reasons(&body),
            }),
            _ => Err(RegistryError::Refused { subject: subject.into(), status, body: body.to_string() }),
        }
    }

    /// Registers `schema` under `subject` after the compatibility check, with BACKWARD
    /// compatibility enforced by the registry from then on.
    pub async fn apply(&self, subject: &str, schema: &str, name: &str) -> Result<Registered, RegistryError> {
        if let Some(id) = self.lookup(subject, schema).await? {
            return Ok(Registered { subject: subject.into(), id, new_version: false });
        }
        let precheck = self.check_compatible(subject, schema, name).await;
        if precheck.is_err() {
            // Some registries (Apicurio) give no reasons on the check; with BACKWARD enforced
            // on the subject, a registration attempt is refused with them.
            self.set_backward(subject).await?;
        }
        let (status, body) = self
            .call(reqwest::Method::POST, &format!("/subjects/{subject}/versions"), Some(json!({"schema": schema})))
            .await?;
        let id = match (status, body["id"].as_i64()) {
            (200, Some(id)) => id,
            (409 | 422, _) => {
                return Err(RegistryError::Incompatible {
                    subject: subject.into(),
                    schema: name.into(),
                    reasons: reasons(&body),
                })
            }
            _ => return Err(RegistryError::Refused { subject: subject.into(), status, body: body.to_string() }),
        };
        // The registry accepted what the check refused: report the check's verdict.
        precheck?;
        self.set_backward(subject).await?;
        Ok(Registered { subject: subject.into(), id, new_version: true })
    }

    async fn set_backward(&self, subject: &str) -> Result<(), RegistryError> {
        let (status, body) = self
            .call(reqwest::Method::PUT, &format!("/config/{subject}"), Some(json!({"compatibility": "BACKWARD"})))
            .await?;
        if status != 200 {
            return Err(RegistryError::Refused { subject: subject.into(), status, body: body.to_string() });
        }
        Ok(())
    }
}

fn reasons(body: &Value) -> String {
    if let Some(m) = body["messages"].as_array().filter(|m| !m.is_empty()) {
        return m.iter().map(|v| v.as_str().map(String::from).unwrap_or(v.to_string())).collect::<Vec<_>>().join("; ");
    }
    body["message"].as_str().map(String::from).unwrap_or_else(|| body.to_string())
}

/// Registers the value schema of every declared topic that has one.
pub async fn apply_all(settings: &Settings, catalog: &Catalog) -> Result<Vec<Registered>, RegistryError> {
    apply_all_with(settings, catalog, &mut crate::progress::Progress::hidden()).await
}

/// [`apply_all`], counting subjects on `progress`.
pub async fn apply_all_with(
    settings: &Settings,
    catalog: &Catalog,
    progress: &mut crate::progress::Progress,
) -> Result<Vec<Registered>, RegistryError> {
    let client = RegistryClient::new(settings);
    let mut out = Vec::new();
    let with_schema: Vec<_> = catalog.topics.values().filter(|d| d.value_schema.is_some()).collect();
    progress.start(Some(with_schema.len() as u64));
    for decl in with_schema {
        let Some(name) = &decl.value_schema else { continue };
        let schema = &catalog.schemas[name];
        out.push(client.apply(&catalog.value_subject(&decl.name), schema, name).await?);
        progress.inc(1);
    }
    progress.finish();
    Ok(out)
}
