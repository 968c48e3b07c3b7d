//! Secret references: a secret in the plan is named, never shown.
//!
//! `${VAR}` reads an environment variable, `file:PATH` reads a file (trailing newline trimmed),
//! anything else is an inline value. Display and Debug print the reference (`${SLACK_WEBHOOK}`,
//! `file:/etc/lifeboat/key`) or `***` for inline values, so a secret cannot leak through a log
//! line, an error or a report by accident. Resolving is the caller's explicit act.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    Env(String),
    File(String),
    Inline(String),
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("environment variable `{0}` is not set (the plan refers to it as `${{{0}}}`)")]
    EnvMissing(String),
    #[error("cannot read secret file `{path}`: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
}

impl Secret {
    pub fn parse(s: &str) -> Self {
        let t = s.trim();
        if let Some(name) = t.strip_prefix("${").and_then(|r| r.strip_suffix('}')) {
            Secret::Env(name.to_string())
        } else if let Some(path) = t.strip_prefix("file:") {
            Secret::File(path.to_string())
        } else {
            Secret::Inline(s.to_string())
        }
    }

    /// Read the secret's value. The only way to see it.
    pub fn resolve(&self) -> Result<String, SecretError> {
        match self {
            Secret::Env(name) => {
                std::env::var(name).map_err(|_| SecretError::EnvMissing(name.clone()))
            }
            Secret::File(path) => std::fs::read_to_string(path)
                .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
                .map_err(|source| SecretError::File {
                    path: path.clone(),
                    source,
                }),
            Secret::Inline(v) => Ok(v.clone()),
        }
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Env(n) => write!(f, "${{{n}}}"),
            Secret::File(p) => write!(f, "file:{p}"),
            Secret::Inline(_) => f.write_str("***"),
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({self})")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(Secret::parse(&s))
    }
}

impl JsonSchema for Secret {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Secret".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A secret: `${ENV_VAR}`, `file:/path/to/file`, or an inline value (never printed)"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_display_inline_values() {
        let s = Secret::parse("hunter2");
        assert_eq!(s.to_string(), "***");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert_eq!(s.resolve().unwrap(), "hunter2");
        assert_eq!(Secret::parse("${X_HOOK}").to_string(), "${X_HOOK}");
        assert!(matches!(
            Secret::parse("${LIFEBOAT_SURELY_UNSET_VAR}").resolve(),
            Err(SecretError::EnvMissing(_))
        ));
    }
}
