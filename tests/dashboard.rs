//! The dashboard in a real headless Chromium (through chromedriver, WebDriver) against a
//! daemon watching a real pair: the page signs in with a token, shows the roles, switches over
//! after the typed confirmation, follows the crash of the new primary and the failover back
//! without a reload, and a failover asked for while the primary is healthy shows its refusing
//! pre-checks and cannot be confirmed. Screenshots are kept in `target/dashboard/`.

mod common;
use common::pair::{Pair, Writes};
use common::*;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{ClientBuilder, Locator};

fn shots() -> std::path::PathBuf {
    let d = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/dashboard");
    std::fs::create_dir_all(&d).unwrap();
    d
}

async fn shot(c: &fantoccini::Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    std::fs::write(shots().join(name), png).unwrap();
}

/// Wait until `css` matches an element (the page updates itself every 2 s).
async fn until(
    c: &fantoccini::Client,
    css: &str,
    secs: u64,
    pair: &Pair,
) -> fantoccini::elements::Element {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Ok(e) = c.find(Locator::Css(css)).await {
            return e;
        }
        if Instant::now() > deadline {
            let src = c.source().await.unwrap_or_default();
            panic!(
                "{css} not on the page within {secs} s\n{src}\n{}",
                pair.daemon_log()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn dashboard_in_chromium_switches_over_follows_a_failover_and_asks_before_acting() {
    assert!(
        Command::new("chromedriver")
            .arg("--version")
            .output()
            .is_ok(),
        "chromedriver (Debian chromium-driver) is installed by scripts/install-deps.sh"
    );
    let pair = Pair::new("sync", "", "");
    let pg = &pair.pg;
    let (port, t) = pair.with_api(&[("oncall", "operator")]);
    let token = t[0].clone();
    let _daemon = pair.start("");
    pair.await_api(port);
    // The page and its assets are served with a policy that allows nothing from elsewhere.
    let (code, page) = http(port, "GET", "/", None, None);
    assert_eq!(code, 200);
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "nothing from a CDN"
    );

    let wd = free_port();
    let _driver = Daemon(
        Command::new("chromedriver")
            .arg(format!("--port={wd}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut log = Writes::default();
    pair.write_some(&mut log, 5);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1800"]}),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        let c = loop {
            match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(caps.clone())
                .connect(&format!("http://127.0.0.1:{wd}"))
                .await
            {
                Ok(c) => break c,
                Err(e) => {
                    assert!(Instant::now() < deadline, "chromedriver: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        c.goto(&format!("http://127.0.0.1:{port}/")).await.unwrap();
        // A wrong token is refused.
        let input = until(&c, "#token", 10, &pair).await;
        input.send_keys("lbt_not_a_token").await.unwrap();
        c.find(Locator::Css("#login-form button[type=submit]")).await.unwrap().click().await.unwrap();
        until(&c, "#login-error:not(:empty)", 10, &pair).await;
        let input = c.find(Locator::Css("#token")).await.unwrap();
        input.clear().await.unwrap();
        input.send_keys(&token).await.unwrap();
        c.find(Locator::Css("#login-form button[type=submit]")).await.unwrap().click().await.unwrap();
        let card = "section[data-service=db]";
        until(&c, &format!("{card} tr[data-site=a][data-role=primary]"), 20, &pair).await;
        until(&c, &format!("{card} tr[data-site=b][data-role=standby]"), 20, &pair).await;
        let who = c.find(Locator::Css("#who")).await.unwrap().text().await.unwrap();
        assert_eq!(who, "oncall (operator)");
        shot(&c, "1-roles.png").await;
        // Marks this page: a reload would lose it.
        c.execute("window.__same_page = 42; return 1;", vec![]).await.unwrap();

        // Switch over to b: the typed confirmation, a wrong name first.
        c.find(Locator::XPath("//button[text()='Switch over to b']")).await.unwrap().click().await.unwrap();
        until(&c, "dialog#confirm[open]", 10, &pair).await;
        let cli = c.find(Locator::Css("#confirm-cli")).await.unwrap().text().await.unwrap();
        assert_eq!(cli, "lifeboat switchover db --to b");
        let focused = c.execute("return document.activeElement.id;", vec![]).await.unwrap();
        assert_eq!(focused, "confirm-input", "the typed confirmation has the keyboard");
        let typed = c.find(Locator::Css("#confirm-input")).await.unwrap();
        typed.send_keys("dbx").await.unwrap();
        shot(&c, "2-confirm-switchover.png").await;
        c.find(Locator::Css("#confirm-ok")).await.unwrap().click().await.unwrap();
        let err = until(&c, "#confirm-error:not(:empty)", 10, &pair).await;
        assert!(err.text().await.unwrap().contains("does not name"), "the wrong name is refused");
        assert_eq!(pair.state()["primary"], "a", "nothing was done");
        typed.clear().await.unwrap();
        typed.send_keys("db").await.unwrap();
        c.find(Locator::Css("#confirm-ok")).await.unwrap().click().await.unwrap();
        until(&c, &format!("{card} tr[data-site=b][data-role=primary]"), 60, &pair).await;
        until(&c, &format!("{card} tr[data-site=a][data-role=standby]"), 60, &pair).await;
        until(&c, "#jobs li[data-job] .badge.ok", 30, &pair).await;
        shot(&c, "3-after-switchover.png").await;

        // The new primary crashes: the page follows the failover back to a by itself.
        pair.write_some(&mut log, 5);
        unsafe { libc::kill(pg.postmaster_pid("standby"), libc::SIGKILL) };
        until(&c, &format!("{card} tr[data-site=a][data-role=primary]"), 60, &pair).await;
        until(&c, &format!("{card} tr[data-site=b][data-role=down]"), 60, &pair).await;
        until(&c, &format!("{card} ul.timeline li.ok"), 30, &pair).await;
        let same = c.execute("return window.__same_page || 0;", vec![]).await.unwrap();
        assert_eq!(same, 42, "the page was reloaded");
        let incident = until(&c, "#incidents li[data-incident]", 30, &pair).await;
        let text = incident.text().await.unwrap();
        assert!(text.contains("db: failed over from b to a"), "the open incident names both sites: {text}");
        shot(&c, "4-after-failover.png").await;

        // A failover asked for now (a is healthy): the pre-checks refuse, it cannot be confirmed.
        c.find(Locator::XPath("//button[text()='Fail over']")).await.unwrap().click().await.unwrap();
        until(&c, "dialog#confirm[open] #confirm-checks li", 20, &pair).await;
        let checks = c.find(Locator::Css("#confirm-checks")).await.unwrap().text().await.unwrap();
        assert!(checks.contains("healthy"), "{checks}");
        let disabled = c.find(Locator::Css("#confirm-ok")).await.unwrap().attr("disabled").await.unwrap();
        assert!(disabled.is_some(), "a refused failover cannot be confirmed");
        shot(&c, "5-failover-refused.png").await;
        c.find(Locator::Css("#confirm-cancel")).await.unwrap().click().await.unwrap();
        let open = c.execute("return document.getElementById('confirm').open;", vec![]).await.unwrap();
        assert_eq!(open, false);

        // Readable on a phone.
        c.set_window_size(390, 1600).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let overflow = c
            .execute("return document.documentElement.scrollWidth <= window.innerWidth + 1;", vec![])
            .await
            .unwrap();
        assert_eq!(overflow, true, "the page is wider than a phone");
        shot(&c, "6-phone.png").await;
        c.close().await.unwrap();
    });
    pair.assert_nothing_lost(&log, pg.port);
}
