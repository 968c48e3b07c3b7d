//! `lifeboat api token NAME [--role ROLE]`: a new API token and the plan lines that let it in
//! (its hash only: the plan holds no secret). `lifeboat api openapi`: the API's OpenAPI 3.1
//! document.

#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Make a token: prints it once (keep it in a secret store) and the `api.tokens` entry
    /// with its SHA-256 for the plan.
    Token {
        /// The token's name: the actor in the evidence log for what it does.
        name: String,
        /// `viewer` reads; `operator` also runs jobs, pauses schedules, fails over and
        /// switches over; `admin` may also override a failover's safety checks.
        #[arg(long, default_value = "viewer")]
        role: String,
    },
    /// Print the API's OpenAPI 3.1 document.
    Openapi,
}

pub fn run_cmd(cli: &crate::Cli, c: &Cmd) -> anyhow::Result<i32> {
    match c {
        Cmd::Token { name, role } => {
            if !lifeboat_core::plan::API_ROLES.contains(&role.as_str()) {
                anyhow::bail!(lifeboat_core::Error::new(
                    lifeboat_core::Kind::Input,
                    format!("unknown role `{role}`: one of viewer, operator, admin"),
                ));
            }
            let token = lifeboat_server::api::auth::generate();
            let hash = hex::encode(lifeboat_server::api::auth::hash(&token));
            if cli.json {
                crate::output::json(
                    &serde_json::json!({"name": name, "role": role, "token": token, "sha256": hash}),
                );
            } else {
                println!("token (shown once; give it to its holder through a secret store):\n  {token}\n");
                println!("plan entry, under `api: tokens:`:\n  - name: {name}\n    role: {role}\n    sha256: {hash}");
            }
            Ok(0)
        }
        Cmd::Openapi => {
            println!(
                "{}",
                serde_json::to_string_pretty(&lifeboat_server::api::document())?
            );
            Ok(0)
        }
    }
}
