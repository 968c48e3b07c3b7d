//! Repository locations: a local path or `s3://BUCKET[/PREFIX][?endpoint=URL&region=R]`.

use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RepoUrl {
    Local(String),
    S3 {
        bucket: String,
        prefix: String,
        /// Query options (`endpoint`, `region`, …), passed to the S3 client.
        options: BTreeMap<String, String>,
    },
}

const S3_OPTIONS: &[&str] = &[
    "endpoint",
    "region",
    "allow_anonymous",
    "enable_virtual_host_style",
    // Lifeboat's own: the deadline of one S3 call, of one body read or write without
    // progress, and how often a failed call is tried again.
    "timeout",
    "io_timeout",
    "retries",
];

impl RepoUrl {
    pub fn parse(url: &str) -> Result<Self, String> {
        let url = url.trim();
        if let Some(rest) = url.strip_prefix("s3://") {
            let (loc, query) = rest.split_once('?').unwrap_or((rest, ""));
            let (bucket, prefix) = loc.split_once('/').unwrap_or((loc, ""));
            if bucket.len() < 3 {
                return Err(format!(
                    "`{url}`: S3 bucket name `{bucket}` is too short (3 to 63 characters)"
                ));
            }
            let mut options = BTreeMap::new();
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap_or((pair, "true"));
                if !S3_OPTIONS.contains(&k) {
                    return Err(format!(
                        "`{url}`: unknown S3 option `{k}` (known: {})",
                        S3_OPTIONS.join(", ")
                    ));
                }
                let v = percent_decode(v);
                match k {
                    "timeout" | "io_timeout" => match v.parse::<crate::units::Duration>() {
                        Ok(d) if !d.std().is_zero() => {}
                        Ok(_) => return Err(format!("`{url}`: `{k}` must be more than 0")),
                        Err(e) => return Err(format!("`{url}`: `{k}`: {e}")),
                    },
                    "retries" if v.parse::<u32>().is_err() => {
                        return Err(format!("`{url}`: `retries` must be a whole number"))
                    }
                    _ => {}
                }
                options.insert(k.to_string(), v);
            }
            return Ok(RepoUrl::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.trim_matches('/').to_string(),
                options,
            });
        }
        if let Some((scheme, _)) = url.split_once("://") {
            return Err(format!(
                "`{url}`: unsupported scheme `{scheme}://` (use a local path or s3://)"
            ));
        }
        Ok(RepoUrl::Local(url.to_string()))
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            RepoUrl::parse("/var/b").unwrap(),
            RepoUrl::Local("/var/b".into())
        );
        let u = RepoUrl::parse(
            "s3://backups-dr/life/boat?endpoint=http%3A//127.0.0.1:9000&region=us-west-2",
        )
        .unwrap();
        let RepoUrl::S3 {
            bucket,
            prefix,
            options,
        } = u
        else {
            panic!()
        };
        assert_eq!(bucket, "backups-dr");
        assert_eq!(prefix, "life/boat");
        assert_eq!(options["endpoint"], "http://127.0.0.1:9000");
        assert!(RepoUrl::parse("s3://ab").is_err());
        assert!(RepoUrl::parse("s3://abc?bogus=1").is_err());
        assert!(RepoUrl::parse("ftp://x/y").is_err());
    }
}
