//! Bearer tokens with roles. The daemon keeps each token's SHA-256 only: the plan gives either
//! the hash itself or where to read the token (`${VAR}`, `file:PATH`), and a token read is
//! hashed at once. Tokens are long random strings (`lifeboat api token`), so a fast hash is
//! enough: there is nothing to guess from it.

use lifeboat_core::plan::ApiSpec;
use lifeboat_core::{Error, Kind};
use sha2::{Digest, Sha256};

/// What a token may do, weakest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

/// Who is calling: the token's name (the actor in the evidence log) and its role.
#[derive(Clone, Debug)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

struct Known {
    name: String,
    role: Role,
    sha256: [u8; 32],
}

pub struct Tokens {
    known: Vec<Known>,
}

pub fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A new token: 32 random bytes, hex, with a prefix that says what it is (secret scanners
/// and people recognise it).
pub fn generate() -> String {
    let mut b = [0u8; 32];
    let _ = getrandom::fill(&mut b);
    format!("lbt_{}", hex::encode(b))
}

fn equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Tokens {
    /// The plan's tokens, read and hashed. A token that cannot be read stops the daemon at
    /// start, naming the token (never its value).
    pub fn load(spec: &ApiSpec) -> Result<Tokens, Error> {
        let mut known = Vec::new();
        for t in &spec.tokens {
            let role = Role::parse(&t.role).ok_or_else(|| {
                Error::new(
                    Kind::Input,
                    format!("api token {}: unknown role `{}`", t.name, t.role),
                )
            })?;
            let sha256 = match (&t.sha256, &t.token) {
                (Some(h), _) => {
                    let mut out = [0u8; 32];
                    hex::decode_to_slice(h.trim(), &mut out).map_err(|_| {
                        Error::new(
                            Kind::Input,
                            format!("api token {}: `sha256` is not 64 hex characters", t.name),
                        )
                    })?;
                    out
                }
                (None, Some(secret)) => {
                    let v = secret.resolve().map_err(|e| {
                        Error::new(Kind::Input, format!("api token {}: {e}", t.name))
                            .hint("set the variable or create the file before starting the daemon")
                    })?;
                    if v.trim().len() < 16 {
                        return Err(Error::new(
                            Kind::Input,
                            format!("api token {}: shorter than 16 characters", t.name),
                        )
                        .hint("`lifeboat api token NAME` makes a long random one"));
                    }
                    hash(v.trim())
                }
                (None, None) => {
                    return Err(Error::new(
                        Kind::Input,
                        format!("api token {}: neither `sha256` nor `token`", t.name),
                    ))
                }
            };
            known.push(Known {
                name: t.name.clone(),
                role,
                sha256,
            });
        }
        Ok(Tokens { known })
    }

    /// The caller a presented token belongs to. Every known hash is compared, so the time
    /// taken does not say which token was close.
    pub fn check(&self, presented: &str) -> Option<Caller> {
        let h = hash(presented.trim());
        let mut found = None;
        for k in &self.known {
            if equal(&k.sha256, &h) && found.is_none() {
                found = Some(Caller {
                    name: k.name.clone(),
                    role: k.role,
                });
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeboat_core::plan::ApiToken;

    #[test]
    fn a_token_is_known_by_its_hash_alone_and_roles_order() {
        let t = generate();
        assert!(t.starts_with("lbt_") && t.len() == 68);
        let spec = ApiSpec {
            listen: "127.0.0.1:0".into(),
            tokens: vec![ApiToken {
                name: "oncall".into(),
                role: "operator".into(),
                sha256: Some(hex::encode(hash(&t))),
                token: None,
            }],
            ..Default::default()
        };
        let tokens = Tokens::load(&spec).unwrap();
        let c = tokens.check(&t).unwrap();
        assert_eq!((c.name.as_str(), c.role), ("oncall", Role::Operator));
        assert!(tokens.check("lbt_wrong").is_none());
        assert!(tokens.check("").is_none());
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
    }
}
