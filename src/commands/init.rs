//! `lifeboat init`: write the commented starter plan and, if missing, a random key file.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

use anyhow::{bail, Context as _};

#[derive(clap::Args)]
pub struct Args {
    /// Overwrite an existing plan file.
    #[arg(long)]
    force: bool,
}

pub fn run(cli: &crate::Cli, a: &Args) -> anyhow::Result<i32> {
    let path = &cli.plan;
    if path.exists() && !a.force {
        bail!(
            "{} already exists; `lifeboat plan check` validates it (use --force to overwrite)",
            path.display()
        );
    }
    std::fs::write(path, lifeboat_core::STARTER_PLAN)
        .with_context(|| format!("writing {}", path.display()))?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let key = dir.join("lifeboat.key");
    let mut made_key = false;
    if !key.exists() {
        let mut bytes = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
            .context("reading /dev/urandom")?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key)
            .with_context(|| format!("creating {}", key.display()))?;
        writeln!(f, "{}", hex(&bytes))?;
        made_key = true;
    }
    if cli.json {
        crate::output::json(&serde_json::json!({"plan": path, "key_file_created": made_key}));
    } else {
        println!("wrote {}", path.display());
        if made_key {
            println!("wrote {} (mode 600): keep a copy somewhere safe — without it the backups cannot be read", key.display());
        }
        println!("next: edit the plan, then `lifeboat plan check`, `lifeboat repo init`, `lifeboat backup`");
    }
    Ok(0)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
