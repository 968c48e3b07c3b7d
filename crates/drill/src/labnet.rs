//! A lab's network as root: one network namespace per site, the sites joined by a veth pair,
//! and each joined to this machine (where the daemon and the operator run) by one more.
//!
//! Every link is point to point (`10.213.N.1` here, `.2` east, `.3` west, each address with its
//! peer), so the kernel keeps and restores the routes when a link goes down and up — a
//! partition is a link set down — and there is no bridge for the host's firewall to filter.
//! The namespaces get no default route: no lab traffic can leave the machine. A WAN delay is
//! `tc netem` on each site's links, where the kernel has it.

use std::process::Command;

use lifeboat_core::{Error, Kind};

/// What the lab's network is made of, kept in `lab.json` so `lab down` removes it.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct LabNet {
    /// `10.213.N`: the lab's addresses.
    pub prefix: String,
    /// Site → its namespace.
    pub netns: Vec<(String, String)>,
    /// This machine's ends of the links to the sites.
    pub host_links: Vec<String>,
}

impl LabNet {
    pub fn host_addr(&self) -> String {
        format!("{}.1", self.prefix)
    }

    pub fn site_addr(&self, site: &str) -> String {
        let i = self.netns.iter().position(|(s, _)| s == site).unwrap_or(0);
        format!("{}.{}", self.prefix, i + 2)
    }

    pub fn netns_of(&self, site: &str) -> Option<&str> {
        self.netns
            .iter()
            .find(|(s, _)| s == site)
            .map(|(_, n)| n.as_str())
    }
}

/// A site's end of its link to this machine, inside its namespace.
pub const HOST_LINK: &str = "host0";

fn ip(args: &[&str]) -> Result<(), Error> {
    run("ip", args)
}

/// Run a program as root (taking root back from the saved id), its failure an error naming
/// the command and what it printed. Shared with the drills' partitions.
pub fn run(program: &str, args: &[&str]) -> Result<(), Error> {
    let mut c = Command::new(program);
    c.args(args).env("LC_ALL", "C");
    crate::privileged(&mut c);
    let out = c.output().map_err(|e| {
        Error::new(Kind::Input, format!("{program}: {e}"))
            .hint("a lab with a network namespace per site needs iproute2 (Debian: iproute2); `lab up --loopback` runs without")
    })?;
    if !out.status.success() {
        return Err(Error::new(
            Kind::Source,
            format!(
                "{program} {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(())
}

/// Addresses this machine already uses (`ip -o addr`), to keep the lab's prefix clear of them.
fn addresses_in_use() -> String {
    Command::new("ip")
        .args(["-o", "addr"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Pick a free prefix and reserve it: creating the first namespace is the reservation (two
/// labs made at once cannot both create it). `save` is called with what exists so far before
/// each step, so a failure halfway leaves nothing `lab down` would not find.
pub fn create(
    sites: &[&str],
    wan_delay: Option<&str>,
    save: &dyn Fn(&LabNet) -> Result<(), Error>,
) -> Result<LabNet, Error> {
    let used = addresses_in_use();
    let mut seed = [0u8; 1];
    let _ = getrandom::fill(&mut seed);
    let mut net = None;
    for k in 0..=255u16 {
        let n = (u16::from(seed[0]) + k) % 256;
        let prefix = format!("10.213.{n}");
        if used.contains(&format!("{prefix}.")) {
            continue;
        }
        let first = format!("lifeboat-lab{n}-{}", sites[0]);
        if ip(&["netns", "add", &first]).is_ok() {
            net = Some((n, prefix, first));
            break;
        }
    }
    let Some((n, prefix, first)) = net else {
        return Err(Error::new(
            Kind::Source,
            "no free 10.213.N.0/24 for the lab's network (256 labs, or addresses in use)",
        )
        .hint("`lifeboat lab down` the labs you do not need, or run `lab up --loopback`"));
    };
    let mut net = LabNet {
        prefix: prefix.clone(),
        netns: vec![(sites[0].to_string(), first)],
        host_links: Vec::new(),
    };
    save(&net)?;
    for site in &sites[1..] {
        let ns = format!("lifeboat-lab{n}-{site}");
        ip(&["netns", "add", &ns])?;
        net.netns.push((site.to_string(), ns));
        save(&net)?;
    }
    let host = net.host_addr();
    for (site, ns) in net.netns.clone() {
        // This machine's end is named after the site; the site's end is `host0`.
        let link = format!("lblab{n}-{}", &site[..site.len().min(5)]);
        ip(&[
            "link", "add", &link, "type", "veth", "peer", "name", "host0", "netns", &ns,
        ])?;
        net.host_links.push(link.clone());
        save(&net)?;
        let me = net.site_addr(&site);
        ip(&[
            "addr",
            "add",
            &format!("{host}/32"),
            "peer",
            &format!("{me}/32"),
            "dev",
            &link,
        ])?;
        ip(&["link", "set", &link, "up"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{me}/32"),
            "peer",
            &format!("{host}/32"),
            "dev",
            "host0",
        ])?;
        for dev in ["lo", "host0"] {
            ip(&["-n", &ns, "link", "set", dev, "up"])?;
        }
    }
    // The sites' own link (a pair between the first two; a third site would get its own).
    for (i, (a, ans)) in net.netns.clone().iter().enumerate() {
        for (b, bns) in net.netns.clone().iter().skip(i + 1) {
            let (ad, bd) = (format!("to-{b}"), format!("to-{a}"));
            ip(&[
                "-n", ans, "link", "add", &ad, "type", "veth", "peer", "name", &bd, "netns", bns,
            ])?;
            let (aa, ba) = (net.site_addr(a), net.site_addr(b));
            for (ns, dev, me, peer) in [(ans, &ad, &aa, &ba), (bns, &bd, &ba, &aa)] {
                ip(&[
                    "-n",
                    ns,
                    "addr",
                    "add",
                    &format!("{me}/32"),
                    "peer",
                    &format!("{peer}/32"),
                    "dev",
                    dev,
                ])?;
                ip(&["-n", ns, "link", "set", dev, "up"])?;
            }
        }
    }
    if let Some(d) = wan_delay {
        for (_, ns) in &net.netns {
            for dev in links_of(ns) {
                run(
                    "tc",
                    &[
                        "-n", ns, "qdisc", "add", "dev", &dev, "root", "netem", "delay", d,
                    ],
                )
                .map_err(|e| {
                    Error::new(
                        Kind::Input,
                        format!("a WAN delay needs tc netem, which this kernel refused: {e}"),
                    )
                    .hint(
                        "build the lab without --wan-delay (the kernel needs the sch_netem module)",
                    )
                })?;
            }
        }
    }
    Ok(net)
}

/// The links of a namespace other than loopback.
pub fn links_of(ns: &str) -> Vec<String> {
    let mut c = Command::new("ip");
    c.args(["-n", ns, "-o", "link", "show"]);
    crate::privileged(&mut c);
    let out = c
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    out.lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| n != "lo")
        .collect()
}

/// Remove the namespaces (their links go with them) and what is left of this machine's ends.
/// What was removed, in words; run twice, the second finds nothing.
pub fn remove(net: &LabNet) -> Vec<String> {
    let mut done = Vec::new();
    for (site, ns) in &net.netns {
        if std::path::Path::new("/run/netns").join(ns).exists() && ip(&["netns", "del", ns]).is_ok()
        {
            done.push(format!("network namespace {ns} ({site}) removed"));
        }
    }
    for link in &net.host_links {
        if std::path::Path::new("/sys/class/net").join(link).exists() {
            let _ = ip(&["link", "del", link]);
        }
    }
    done
}

/// Whether this process may build namespaces (root, or root kept as the saved id).
pub fn available() -> bool {
    crate::can_be_root()
        && Command::new("ip")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success())
}
