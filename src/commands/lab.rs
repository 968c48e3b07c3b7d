//! `lifeboat lab up | status | down`: a two-site environment to drill on.

use std::path::PathBuf;

use lifeboat_drill::lab;

#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Build the lab: a primary and a standby of one PostgreSQL cluster, a repository per
    /// site, a plan with drills, a first base backup, and the daemon.
    Up {
        /// The lab's directory (its plan is DIR/lifeboat.yaml).
        #[arg(long, default_value = "lifeboat-lab")]
        dir: PathBuf,
        /// The standby replicates asynchronously (the default is synchronous: nothing
        /// acknowledged is lost).
        #[arg(long = "async")]
        asynchronous: bool,
        /// Run everything on this machine's loopback, even as root. (As root the lab gives
        /// each site its own network namespace, so a partition is a real one.)
        #[arg(long)]
        loopback: bool,
        /// A WAN delay on each link between the sites and to this machine, e.g. `20ms`
        /// (`tc netem`; namespaces only, where the kernel has netem).
        #[arg(long, value_name = "DELAY")]
        wan_delay: Option<String>,
        /// Three sites (east, west and a witness without a server), each with an etcd member
        /// and a traffic endpoint, and an agent beside each server instead of the daemon.
        /// Needs root (a network namespace per site).
        #[arg(long)]
        agents: bool,
    },
    /// The lab's members and daemon now.
    Status {
        /// The lab's directory (its plan is DIR/lifeboat.yaml).
        #[arg(long, default_value = "lifeboat-lab")]
        dir: PathBuf,
    },
    /// Stop everything the lab runs and remove it (nothing to do the second time).
    Down {
        /// The lab's directory (its plan is DIR/lifeboat.yaml).
        #[arg(long, default_value = "lifeboat-lab")]
        dir: PathBuf,
    },
}

pub fn run_cmd(cli: &crate::Cli, c: &Cmd) -> anyhow::Result<i32> {
    match c {
        Cmd::Up {
            dir,
            asynchronous,
            loopback,
            wan_delay,
            agents,
        } => {
            let say = |s: &str| {
                if !cli.json {
                    println!("  {s}");
                }
            };
            let st = lab::up(
                &lab::LabOpts {
                    dir: dir.clone(),
                    asynchronous: *asynchronous,
                    loopback: *loopback,
                    wan_delay: wan_delay.clone(),
                    agents: *agents,
                },
                &say,
            )?;
            if cli.json {
                crate::output::json(&st);
            } else {
                println!(
                    "lab up in {} ({} replication, {})",
                    st.dir.display(),
                    st.replication,
                    if st.net.is_some() {
                        "a network namespace per site"
                    } else {
                        "on loopback"
                    }
                );
                println!("  plan:     {}", st.plan.display());
                if st.agents {
                    let hosts: Vec<&str> = st
                        .site_endpoints
                        .iter()
                        .map(|(_, a)| a.rsplit_once(':').map_or(a.as_str(), |(h, _)| h))
                        .collect();
                    println!(
                        "  endpoints: postgresql://postgres@{}/postgres?target_session_attrs=read-write (port {})",
                        hosts.join(","),
                        st.endpoint.rsplit_once(':').map_or("", |(_, p)| p)
                    );
                    println!("  etcd:     {}", st.etcd.join(", "));
                    println!("  agents:   east and west (their logs: SITE/agent.log); no daemon");
                    return Ok(0);
                }
                println!("  endpoint: postgresql://postgres@{}/postgres", st.endpoint);
                println!("  DNS:      {} on {}", st.dns_name, st.dns);
                println!("  metrics:  http://{}/metrics", st.metrics);
                if !st.api.is_empty() {
                    println!(
                        "  dashboard: http://{}/ (sign in with the token in {})",
                        st.api,
                        st.dir.join("api.token").display()
                    );
                }
                println!(
                    "  drill it: lifeboat --plan {} drill run kill-primary",
                    st.plan.display()
                );
                for c in st.cannot_run() {
                    println!("  note: {c}");
                }
            }
            Ok(0)
        }
        Cmd::Status { dir } => {
            let s = lab::status(dir)?;
            if cli.json {
                crate::output::json(&s);
            } else {
                if s.state.agents {
                    // No daemon: agents beside the servers, coordinated through etcd.
                    println!(
                        "lab in {} ({}), agents through etcd ({}); endpoints {}",
                        s.state.dir.display(),
                        s.state.replication,
                        s.state.etcd.join(", "),
                        s.state
                            .site_endpoints
                            .iter()
                            .map(|(site, a)| format!("{site} {a}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                } else {
                    println!(
                        "lab in {} ({}), daemon {}",
                        s.state.dir.display(),
                        s.state.replication,
                        if s.daemon_running {
                            "running"
                        } else {
                            "NOT running"
                        }
                    );
                }
                let rows: Vec<Vec<String>> = s
                    .members
                    .iter()
                    .map(|(site, addr, role)| vec![site.clone(), addr.clone(), role.clone()])
                    .collect();
                crate::output::table(&["SITE", "ADDRESS", "ROLE"], &rows);
            }
            Ok(0)
        }
        Cmd::Down { dir } => {
            let done = lab::down(dir)?;
            if cli.json {
                crate::output::json(&done);
            } else if done.is_empty() {
                println!("no lab in {}: nothing to remove", dir.display());
            } else {
                for d in done {
                    println!("  {d}");
                }
            }
            Ok(0)
        }
    }
}
