//! `lifeboat wal push|fetch|verify`: PostgreSQL's archive_command and restore_command, and the
//! archive's recoverable window.
//!
//! ```text
//! archive_command = 'lifeboat --plan /etc/lifeboat/lifeboat.yaml wal push db %p'
//! restore_command = 'lifeboat --plan /etc/lifeboat/lifeboat.yaml wal fetch db %f %p'
//! ```

use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Archive one WAL file (for archive_command): exit 0 only once it is durable.
    Push {
        /// The postgres service the WAL belongs to.
        service: String,
        /// Path of the file (%p).
        path: PathBuf,
    },
    /// Fetch one WAL file (for restore_command): exit 0 when written, 1 when the archive does
    /// not have it, 126 on any other failure (PostgreSQL then stops recovery instead of ending
    /// it early at a wrong point).
    Fetch {
        service: String,
        /// File name (%f).
        name: String,
        /// Where to write it (%p).
        dest: PathBuf,
        /// Segments to fetch ahead in parallel.
        #[arg(long, default_value_t = 8)]
        prefetch: usize,
        /// For a streaming standby's restore_command: report failures (printed) as "not
        /// archived" (exit 1), so the standby falls back to streaming instead of stopping.
        #[arg(long)]
        standby: bool,
        /// The recovery stops at a target (`lifeboat restore --to …` sets this): a damaged
        /// segment is reported (printed) as "not archived" (exit 1). PostgreSQL reads ahead of
        /// the point it replays; a target before the damage is then still reached, and one
        /// that needs the damaged segment fails ("recovery ended before configured recovery
        /// target was reached") instead of the whole restore dying on a segment it never needed.
        #[arg(long)]
        has_target: bool,
        /// Fetch from this repository (a restore from a cross-region copy) instead of the
        /// service's own.
        #[arg(long)]
        repo: Option<String>,
    },
    /// Walk the archive: timelines, gaps, and the recoverable window per base backup.
    Verify {
        /// Only this service (default: every postgres service).
        service: Option<String>,
        /// Read back and authenticate every archived object (slow: downloads the archive);
        /// damaged segments are named and cut the recoverable window.
        #[arg(long)]
        read_data: bool,
    },
}

pub fn run(cli: &crate::Cli, c: &Cmd) -> anyhow::Result<i32> {
    let ctx = super::context(cli)?;
    match c {
        Cmd::Push { service, path } => {
            let r = lifeboat_protect::wal::push(&ctx, service, path)?;
            if cli.json {
                crate::output::json(&r);
            }
            Ok(0)
        }
        Cmd::Fetch {
            service,
            name,
            dest,
            prefetch,
            standby,
            has_target,
            repo,
        } => match repo
            .as_ref()
            .map(|r| lifeboat_protect::wal::using_repository(&ctx, service, r))
            .transpose()
            .and_then(|c| {
                lifeboat_protect::wal::fetch(
                    c.as_ref().unwrap_or(&ctx),
                    service,
                    name,
                    dest,
                    *prefetch,
                )
            }) {
            Ok(true) => Ok(0),
            Ok(false) => Ok(1),
            Err(e) => {
                let damaged_segment = e.kind == lifeboat_core::Kind::Integrity
                    && lifeboat_core::wal::WalFile::parse(name, 16 << 20)
                        .is_some_and(|f| matches!(f, lifeboat_core::wal::WalFile::Segment { .. }));
                if damaged_segment && *has_target {
                    // The marker `lifeboat restore` looks for in the server's log.
                    eprintln!(
                        "lifeboat wal fetch {name}{}{e:#}; reported as not archived, so recovery stops at its target if the target lies before this segment, and fails if it needs it",
                        lifeboat_protect::wal::DAMAGED_MARKER
                    );
                    return Ok(1);
                }
                eprintln!("lifeboat wal fetch {name}: {e:#}");
                if let Some(h) = &e.hint {
                    eprintln!("hint: {h}");
                }
                Ok(if *standby { 1 } else { 126 })
            }
        },
        Cmd::Verify { service, read_data } => {
            let services = ctx.postgres_services(service.as_deref())?;
            let mut ok = true;
            let mut reports = Vec::new();
            for s in services {
                let r = lifeboat_protect::wal::verify(&ctx, &s, *read_data)?;
                ok &= r.ok;
                if !cli.json {
                    print_report(&r);
                }
                reports.push(r);
            }
            if cli.json {
                crate::output::json(&reports);
            }
            Ok(if ok { 0 } else { crate::exit::FAILED })
        }
    }
}

fn print_report(r: &lifeboat_protect::wal::WalReport) {
    use lifeboat_protect::wal::fmt_micros;
    println!(
        "service {} (WAL archive in repository {}, cluster {})",
        r.service,
        r.repository,
        r.system_id.as_deref().unwrap_or("unknown")
    );
    println!(
        "  {} segment(s) on timeline(s) {:?}: {} .. {}",
        r.segments,
        r.timelines,
        r.first_segment.as_deref().unwrap_or("-"),
        r.last_segment.as_deref().unwrap_or("-")
    );
    if let Some(s) = &r.streaming {
        println!("  {s} is being streamed: stored as received so far");
    }
    for b in &r.backups {
        let end = b
            .reach
            .last_xact_time
            .map(fmt_micros)
            .unwrap_or_else(|| "the backup's end (no later transaction archived)".into());
        println!(
            "  base backup {} (start {} on timeline {}): recoverable from {} to {}{}",
            &b.snapshot[..8],
            b.start_lsn,
            b.timeline,
            fmt_micros(b.from),
            end,
            b.reach
                .first_missing
                .as_ref()
                .map(|g| {
                    let damaged = r
                        .damaged
                        .as_ref()
                        .is_some_and(|d| d.iter().any(|d| &d.name == g));
                    format!(
                        " — replay stops at {} segment {g}",
                        if damaged { "damaged" } else { "missing" }
                    )
                })
                .unwrap_or_default()
        );
    }
    match r.window {
        Some((from, to)) => println!(
            "  recoverable window: {} .. {}",
            fmt_micros(from),
            fmt_micros(to)
        ),
        None => println!("  recoverable window: none"),
    }
    if let Some(d) = &r.damaged {
        if d.is_empty() {
            println!("  every archived object read back and authenticated");
        }
    }
    for p in &r.problems {
        println!("  FAIL  {p}");
    }
    if r.ok {
        println!("  ok");
    }
}
