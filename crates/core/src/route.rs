//! Where an application tier's name points: a pure function of what the checks saw, like
//! [`crate::decide`] for the database. Given each site's health (after thresholds), the
//! database the tier follows (its routed primary's site and what each site's member is), the
//! current answer and the failback policy, [`route`] picks the site the DNS name answers with
//! and says why in a sentence.
//!
//! The rules, in order:
//! 1. A site may take traffic when its app passes its checks and — with `follows` — its
//!    database member is the routed primary or a healthy standby, or it has none. A member
//!    that is down, unknown, or a primary Lifeboat no longer routes to (an old primary, fenced
//!    or about to be) bars its site: its app could write where writes are lost.
//! 2. Preference: with `follows`, the database primary's site first, then `order`; without,
//!    `order`. The first site that may take traffic wins.
//! 3. `failback: manual`: while the current site may take traffic, the answer stays, even when
//!    a preferred site is healthy again, until a person asks (`lifeboat failback`); moving with
//!    the database to its new primary's site is following, not failing back, and is not held.
//! 4. No site may take traffic: fail open (as DNS failover services do) on the current site or
//!    the first preferred one whose database allows it, so the name keeps answering; when the
//!    database bars every site, no answer (SERVFAIL: resolvers retry instead of caching a
//!    wrong one).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::plan::Failback;

/// What the database member at a site is, as the tier's `follows` service sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "state", content = "detail")]
pub enum DbAt {
    /// The member Lifeboat routes writes to.
    RoutedPrimary,
    /// A standby that passes its checks.
    Standby,
    /// A primary that is not the routed one: an old primary (fenced or about to be).
    UnroutedPrimary,
    /// Fails its checks (why).
    Down(String),
    /// Not checked yet.
    Unknown,
}

impl DbAt {
    /// In a few words, for `status`.
    pub fn describe(&self) -> String {
        match self {
            DbAt::RoutedPrimary => "the routed primary".into(),
            DbAt::Standby => "a healthy standby".into(),
            DbAt::UnroutedPrimary => "a primary writes are no longer routed to".into(),
            DbAt::Down(why) => format!("down ({why})"),
            DbAt::Unknown => "not checked yet".into(),
        }
    }

    /// Why the database bars its site, if it does.
    fn bars(&self) -> Option<String> {
        match self {
            DbAt::RoutedPrimary | DbAt::Standby => None,
            _ => Some(format!("its database member is {}", self.describe())),
        }
    }
}

/// One site of the tier.
#[derive(Clone, Debug, Serialize)]
pub struct SiteView {
    /// The app passes its checks (thresholds applied).
    pub healthy: bool,
    /// Why its last check failed.
    pub failure: Option<String>,
    /// With `follows`: the database member at this site (None: the site has none).
    pub db: Option<DbAt>,
}

/// Everything [`route`] decides on.
#[derive(Clone, Debug)]
pub struct Input<'a> {
    /// Sites in the plan's order of preference.
    pub order: &'a [String],
    pub sites: &'a BTreeMap<String, SiteView>,
    /// With `follows`: the followed service's name and its routed primary's site (None while
    /// it has none: a failover under way, or held).
    pub follows: Option<(&'a str, Option<&'a str>)>,
    /// The site answered now, and the database primary's site when it was chosen.
    pub current: Option<&'a str>,
    pub chosen_with_primary: Option<&'a str>,
    pub failback: Failback,
    /// A person asked to go back to the preferred site (`lifeboat failback`).
    pub failback_requested: bool,
}

/// Where the name points, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Route {
    pub site: Option<String>,
    pub reason: String,
    /// `failback: manual`: the preferred site that passes its checks but is not answered
    /// until a person asks.
    pub held: Option<String>,
}

/// Why `site` may not take traffic (None: it may).
fn barred(i: &Input, site: &str) -> Option<String> {
    let Some(v) = i.sites.get(site) else {
        return Some("not checked".into());
    };
    if !v.healthy {
        return Some(format!(
            "the app fails its checks ({})",
            v.failure.as_deref().unwrap_or("not passed yet")
        ));
    }
    db_bars(i, site)
}

fn db_bars(i: &Input, site: &str) -> Option<String> {
    i.follows?;
    i.sites.get(site)?.db.as_ref()?.bars()
}

/// The sites in order of preference.
fn preference<'a>(i: &Input<'a>) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    if let Some((_, Some(p))) = i.follows {
        out.push(p);
    }
    for s in i.order {
        if !out.contains(&s.as_str()) {
            out.push(s);
        }
    }
    out
}

/// The answer for this tick.
pub fn route(i: &Input) -> Route {
    let pref = preference(i);
    let primary = i.follows.and_then(|(_, p)| p);
    let mut skipped: Vec<String> = Vec::new();
    let mut best = None;
    for s in &pref {
        match barred(i, s) {
            None => {
                best = Some(*s);
                break;
            }
            Some(why) => skipped.push(format!("{s}: {why}")),
        }
    }
    let why_here = |site: &str| -> String {
        let mut r = match (i.follows, primary) {
            (Some((db, _)), Some(p)) if p == site => {
                format!("{site}: {db}'s primary is there and the app passes its checks")
            }
            (Some((db, _)), None) => format!(
                "{site}: {db} has no routed primary now; the first site in order that passes its checks"
            ),
            _ if pref.first() == Some(&site) => {
                format!("{site}: first in order and passes its checks")
            }
            _ => format!("{site}: passes its checks"),
        };
        if !skipped.is_empty() {
            r.push_str(&format!(" (skipped {})", skipped.join("; ")));
        }
        r
    };
    let Some(best) = best else {
        // Fail open on a site the database allows, the current one first.
        let open = i
            .current
            .into_iter()
            .chain(pref.iter().copied())
            .find(|s| i.sites.contains_key(*s) && db_bars(i, s).is_none());
        return match open {
            Some(s) => Route {
                site: Some(s.to_string()),
                reason: format!(
                    "no site passes its checks ({}); still answering {s} so the name resolves",
                    skipped.join("; ")
                ),
                held: None,
            },
            None => Route {
                site: None,
                reason: format!("no site may take traffic: {}", skipped.join("; ")),
                held: None,
            },
        };
    };
    if let Some(cur) = i.current.filter(|c| *c != best) {
        let keep = i.failback == Failback::Manual
            && !i.failback_requested
            && barred(i, cur).is_none()
            // Following the database to its new primary's site is not a failback.
            && !(primary == Some(best) && i.chosen_with_primary != primary);
        if keep {
            return Route {
                site: Some(cur.to_string()),
                reason: format!(
                    "staying on {cur}: {best} passes its checks again, failback is manual"
                ),
                held: Some(best.to_string()),
            };
        }
    }
    Route {
        site: Some(best.to_string()),
        reason: why_here(best),
        held: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up() -> SiteView {
        SiteView {
            healthy: true,
            failure: None,
            db: None,
        }
    }
    fn down(why: &str) -> SiteView {
        SiteView {
            healthy: false,
            failure: Some(why.into()),
            db: None,
        }
    }
    fn with(mut v: SiteView, db: DbAt) -> SiteView {
        v.db = Some(db);
        v
    }
    fn order() -> Vec<String> {
        vec!["east".into(), "west".into(), "north".into()]
    }
    fn sites(v: &[(&str, SiteView)]) -> BTreeMap<String, SiteView> {
        v.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }
    fn input<'a>(o: &'a [String], s: &'a BTreeMap<String, SiteView>) -> Input<'a> {
        Input {
            order: o,
            sites: s,
            follows: None,
            current: None,
            chosen_with_primary: None,
            failback: Failback::Auto,
            failback_requested: false,
        }
    }

    #[test]
    fn the_first_healthy_site_in_order_answers_and_the_reason_names_the_skipped() {
        let o = order();
        let s = sites(&[
            ("east", down("status 503")),
            ("west", up()),
            ("north", up()),
        ]);
        let r = route(&input(&o, &s));
        assert_eq!(r.site.as_deref(), Some("west"));
        assert!(
            r.reason
                .contains("east: the app fails its checks (status 503)"),
            "{}",
            r.reason
        );
        let s = sites(&[("east", up()), ("west", up()), ("north", up())]);
        assert_eq!(route(&input(&o, &s)).site.as_deref(), Some("east"));
    }

    #[test]
    fn automatic_failback_returns_manual_holds_until_asked() {
        let o = order();
        let s = sites(&[("east", up()), ("west", up()), ("north", up())]);
        let mut i = input(&o, &s);
        i.current = Some("west");
        assert_eq!(route(&i).site.as_deref(), Some("east"));
        i.failback = Failback::Manual;
        let r = route(&i);
        assert_eq!(r.site.as_deref(), Some("west"));
        assert_eq!(r.held.as_deref(), Some("east"));
        assert!(r.reason.contains("failback is manual"));
        i.failback_requested = true;
        assert_eq!(route(&i).site.as_deref(), Some("east"));
        // A manual failback never keeps a site that fails.
        let s = sites(&[("east", up()), ("west", down("timed out")), ("north", up())]);
        let mut i = input(&o, &s);
        i.failback = Failback::Manual;
        i.current = Some("west");
        assert_eq!(route(&i).site.as_deref(), Some("east"));
    }

    #[test]
    fn following_the_database_moves_with_its_primary_and_never_to_a_barred_site() {
        let o = order();
        let s = sites(&[
            ("east", with(up(), DbAt::Standby)),
            ("west", with(up(), DbAt::RoutedPrimary)),
            ("north", up()),
        ]);
        let mut i = input(&o, &s);
        i.follows = Some(("db", Some("west")));
        i.current = Some("east");
        i.chosen_with_primary = Some("east");
        let r = route(&i);
        assert_eq!(r.site.as_deref(), Some("west"));
        assert!(r.reason.contains("db's primary is there"), "{}", r.reason);
        // Manual failback does not hold following the database.
        i.failback = Failback::Manual;
        assert_eq!(route(&i).site.as_deref(), Some("west"));
        // App unhealthy at the primary's site: the next site whose member is a healthy
        // standby; an old primary's site or a down member's site is never chosen.
        let s = sites(&[
            ("east", with(up(), DbAt::UnroutedPrimary)),
            ("west", with(down("status 500"), DbAt::RoutedPrimary)),
            ("north", with(up(), DbAt::Down("connection refused".into()))),
        ]);
        let mut i = input(&o, &s);
        i.follows = Some(("db", Some("west")));
        // No site may take traffic: fail open on the one the database allows (the
        // primary's), never on the old primary's or the down member's.
        let r = route(&i);
        assert_eq!(r.site.as_deref(), Some("west"), "{}", r.reason);
        assert!(r.reason.contains("no longer routed"), "{}", r.reason);
        let s = sites(&[
            ("east", with(up(), DbAt::UnroutedPrimary)),
            ("north", with(up(), DbAt::Down("connection refused".into()))),
        ]);
        let mut i = input(&o, &s);
        i.follows = Some(("db", None));
        i.current = Some("east");
        let r = route(&i);
        assert_eq!(r.site, None, "{}", r.reason);
        assert!(
            r.reason.starts_with("no site may take traffic"),
            "{}",
            r.reason
        );
        let s = sites(&[
            ("east", with(up(), DbAt::UnroutedPrimary)),
            ("west", with(down("status 500"), DbAt::RoutedPrimary)),
            ("north", with(up(), DbAt::Standby)),
        ]);
        let mut i = input(&o, &s);
        i.follows = Some(("db", Some("west")));
        let r = route(&i);
        assert_eq!(r.site.as_deref(), Some("north"));
        assert!(
            r.reason.contains("west: the app fails its checks"),
            "{}",
            r.reason
        );
        assert!(
            r.reason.contains("east: its database member is a primary"),
            "{}",
            r.reason
        );
    }

    #[test]
    fn no_routed_primary_takes_the_first_allowed_site_and_all_down_fails_open() {
        let o = order();
        let s = sites(&[
            ("east", with(up(), DbAt::Down("connection refused".into()))),
            ("west", with(up(), DbAt::Standby)),
            ("north", up()),
        ]);
        let mut i = input(&o, &s);
        i.follows = Some(("db", None));
        i.current = Some("east");
        let r = route(&i);
        assert_eq!(r.site.as_deref(), Some("west"));
        assert!(r.reason.contains("no routed primary"), "{}", r.reason);
        // Every app fails: keep answering the current site (fail open).
        let s = sites(&[
            ("east", down("timed out")),
            ("west", down("status 503")),
            ("north", down("x")),
        ]);
        let mut i = input(&o, &s);
        i.current = Some("west");
        let r = route(&i);
        assert_eq!(r.site.as_deref(), Some("west"));
        assert!(
            r.reason.starts_with("no site passes its checks"),
            "{}",
            r.reason
        );
        // …but never onto a site the database bars.
        let s = sites(&[
            ("east", with(down("timed out"), DbAt::UnroutedPrimary)),
            ("west", with(down("x"), DbAt::RoutedPrimary)),
        ]);
        let mut i = input(&o, &s);
        i.follows = Some(("db", Some("west")));
        i.current = Some("east");
        assert_eq!(route(&i).site.as_deref(), Some("west"));
    }
}
