//! Reading `lifeboat.yaml`: YAML → typed [`Plan`], with every problem located.
//!
//! The YAML is parsed once into a JSON value plus a source map (field path → line/column of its
//! key and value). Each section entry (one service, one job, …) is then deserialized on its own,
//! so one bad entry does not hide the errors in the next: `plan check` reports them all, each
//! with file, line, column, field path and what was expected. Semantic checks
//! ([`crate::validate`]) return field paths, which the same source map turns into positions.

use std::collections::HashMap;
use std::fmt;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};
use yaml_rust2::Yaml;

use crate::plan::Plan;

/// One problem in a plan, located.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// Dotted field path, e.g. `backups.nightly.retention`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() {
            "(top level)"
        } else {
            &self.path
        };
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file, self.line, self.column, path, self.message
        )
    }
}

/// Positions of keys and values by field path (1-based line and column).
#[derive(Default, Debug, Clone)]
pub struct SourceMap {
    keys: HashMap<String, (usize, usize)>,
    values: HashMap<String, (usize, usize)>,
}

impl SourceMap {
    /// Where `path` is: its value, else its key, else the nearest parent's.
    pub fn locate(&self, path: &str) -> (usize, usize) {
        let mut p = path.to_string();
        loop {
            if let Some(pos) = self.values.get(&p).or_else(|| self.keys.get(&p)) {
                return *pos;
            }
            match parent(&p) {
                Some(up) => p = up,
                None => return (1, 1),
            }
        }
    }
    /// Where the key of `path` is written (for "unknown field"), else [`Self::locate`].
    pub fn locate_key(&self, path: &str) -> (usize, usize) {
        self.keys
            .get(path)
            .copied()
            .unwrap_or_else(|| self.locate(path))
    }
}

fn parent(path: &str) -> Option<String> {
    if path.is_empty() {
        return None;
    }
    if path.ends_with(']') {
        if let Some(i) = path.rfind('[') {
            return Some(path[..i].to_string());
        }
    }
    Some(
        path.rfind('.')
            .map(|i| path[..i].to_string())
            .unwrap_or_default(),
    )
}

pub fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

enum Frame {
    Map {
        obj: Map<String, Value>,
        path: String,
        key: Option<String>,
        anchor: usize,
    },
    Seq {
        arr: Vec<Value>,
        path: String,
        anchor: usize,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    root: Option<Value>,
    anchors: HashMap<usize, Value>,
    map: SourceMap,
    errors: Vec<(String, (usize, usize), String)>,
    /// Values built so far, aliases counted at their expanded size: bounded so an alias bomb
    /// ("billion laughs") is an error, not an exhausted memory.
    nodes: usize,
    /// Expanded size of each anchored value.
    anchor_nodes: HashMap<usize, usize>,
    /// Set when the document exceeds a bound: the rest is not read.
    aborted: bool,
}

/// Deepest nesting of mappings and sequences a plan may use (plans need about 8).
pub const MAX_DEPTH: usize = 64;
/// Most values a plan may hold once its aliases are expanded.
pub const MAX_NODES: usize = 100_000;

/// Tags a plan may use: YAML's core types, which only confirm what the value already is.
const CORE_TAGS: &[&str] = &["str", "int", "float", "bool", "null", "map", "seq"];

fn pos(m: &Marker) -> (usize, usize) {
    (m.line(), m.col() + 1)
}

impl Builder {
    /// The path a new value takes, or None when the value is a mapping key.
    fn next_path(&mut self) -> Option<String> {
        match self.stack.last() {
            None => Some(String::new()),
            Some(Frame::Map { key: None, .. }) => None,
            Some(Frame::Map {
                key: Some(k), path, ..
            }) => Some(child(path, k)),
            Some(Frame::Seq { arr, path, .. }) => Some(format!("{path}[{}]", arr.len())),
        }
    }

    fn push_value(&mut self, v: Value) {
        match self.stack.last_mut() {
            None => self.root = Some(v),
            Some(Frame::Map { obj, key, .. }) => {
                if let Some(k) = key.take() {
                    obj.insert(k, v);
                }
            }
            Some(Frame::Seq { arr, .. }) => arr.push(v),
        }
    }

    fn value(&mut self, v: Value, anchor: usize, mark: &Marker, size: usize) {
        if !self.count(size, mark) {
            return;
        }
        if let Some(path) = self.next_path() {
            // An explicit empty value (`~`, `null` or nothing after the colon) below the top
            // level would silently mean "not set": a retention rule dropped, the default
            // repository used. Say so instead; top-level sections may be empty.
            if v.is_null() && path.contains(['.', '[']) {
                self.errors.push((
                    path.clone(),
                    pos(mark),
                    "has no value (`~`, `null` or nothing): write a value, or remove the line to use the default".into(),
                ));
            }
            self.map.values.insert(path, pos(mark));
        }
        if anchor > 0 {
            self.anchors.insert(anchor, v.clone());
            self.anchor_nodes.insert(anchor, size);
        }
        self.push_value(v);
    }

    /// Count `size` more values; false (and the document abandoned) past [`MAX_NODES`].
    fn count(&mut self, size: usize, mark: &Marker) -> bool {
        self.nodes = self.nodes.saturating_add(size);
        if self.nodes > MAX_NODES {
            self.abort(
                mark,
                format!(
                    "the plan expands to more than {MAX_NODES} values (aliases are counted at their expanded size): is an alias repeated many times?"
                ),
            );
            return false;
        }
        true
    }

    fn abort(&mut self, mark: &Marker, message: String) {
        self.errors.push((String::new(), pos(mark), message));
        self.aborted = true;
    }

    /// A tag other than YAML's core types is an error: `!!binary` or a local `!tag` would
    /// otherwise be read as a plain string and silently mean something else.
    fn check_tag(&mut self, tag: Option<&yaml_rust2::parser::Tag>, mark: &Marker) {
        if let Some(t) = tag {
            if !CORE_TAGS.contains(&t.suffix.as_str()) || !t.handle.starts_with("tag:yaml.org") {
                let shown = if t.handle.starts_with("tag:yaml.org") {
                    format!("!!{}", t.suffix)
                } else {
                    format!("{}{}", t.handle, t.suffix)
                };
                let path = self.next_path().unwrap_or_default();
                self.errors.push((
                    path,
                    pos(mark),
                    format!(
                        "the YAML tag `{shown}` is not supported in a plan: write the value itself"
                    ),
                ));
            }
        }
    }
}

/// Number of values in `v`, itself included.
fn size_of(v: &Value) -> usize {
    // Iterative: a deep value must not overflow the stack here either.
    let mut n = 0usize;
    let mut todo = vec![v];
    while let Some(v) = todo.pop() {
        n += 1;
        match v {
            Value::Array(a) => todo.extend(a.iter()),
            Value::Object(o) => todo.extend(o.values()),
            _ => {}
        }
    }
    n
}

fn scalar(s: String, style: TScalarStyle, tag: Option<&yaml_rust2::parser::Tag>) -> Value {
    let forced_str = tag.is_some_and(|t| t.suffix == "str");
    if style != TScalarStyle::Plain || forced_str {
        return Value::String(s);
    }
    match Yaml::from_str(&s) {
        Yaml::Integer(i) => Value::from(i),
        Yaml::Real(r) => r
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .unwrap_or(Value::String(s)),
        Yaml::Boolean(b) => Value::Bool(b),
        Yaml::Null => Value::Null,
        _ => Value::String(s),
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.aborted {
            return;
        }
        match ev {
            Event::Scalar(s, style, anchor, tag) => {
                if let Some(Frame::Map {
                    key: key @ None,
                    path,
                    obj,
                    ..
                }) = self.stack.last_mut()
                {
                    let p = child(path, &s);
                    if obj.contains_key(&s) {
                        self.errors
                            .push((p.clone(), pos(&mark), format!("duplicate key `{s}`")));
                    }
                    self.map.keys.insert(p, pos(&mark));
                    *key = Some(s);
                    return;
                }
                self.check_tag(tag.as_ref(), &mark);
                let v = scalar(s, style, tag.as_ref());
                self.value(v, anchor, &mark, 1);
            }
            Event::Alias(id) => {
                let size = self.anchor_nodes.get(&id).copied().unwrap_or(1);
                if self.nodes.saturating_add(size) > MAX_NODES {
                    self.count(size, &mark);
                    return;
                }
                let v = self.anchors.get(&id).cloned().unwrap_or(Value::Null);
                if let Some(Frame::Map { key: None, .. }) = self.stack.last() {
                    self.errors.push((
                        String::new(),
                        pos(&mark),
                        "an alias cannot be a mapping key".into(),
                    ));
                    return;
                }
                self.value(v, 0, &mark, size);
            }
            Event::MappingStart(anchor, ref tag) | Event::SequenceStart(anchor, ref tag) => {
                if self.stack.len() >= MAX_DEPTH {
                    self.abort(
                        &mark,
                        format!("nested more than {MAX_DEPTH} levels deep: a plan needs far fewer"),
                    );
                    return;
                }
                self.check_tag(tag.as_ref(), &mark);
                let path = match self.next_path() {
                    Some(p) => p,
                    None => {
                        self.errors.push((
                            String::new(),
                            pos(&mark),
                            "complex mapping keys are not supported: use a plain string key".into(),
                        ));
                        // Give the key a placeholder so parsing can go on.
                        if let Some(Frame::Map { key, .. }) = self.stack.last_mut() {
                            *key = Some("?".into());
                        }
                        "?".into()
                    }
                };
                self.map.values.insert(path.clone(), pos(&mark));
                let frame = if matches!(ev, Event::MappingStart(..)) {
                    Frame::Map {
                        obj: Map::new(),
                        path,
                        key: None,
                        anchor,
                    }
                } else {
                    Frame::Seq {
                        arr: Vec::new(),
                        path,
                        anchor,
                    }
                };
                self.stack.push(frame);
            }
            Event::MappingEnd | Event::SequenceEnd => {
                let (v, anchor) = match self.stack.pop() {
                    Some(Frame::Map { obj, anchor, .. }) => (Value::Object(obj), anchor),
                    Some(Frame::Seq { arr, anchor, .. }) => (Value::Array(arr), anchor),
                    None => return,
                };
                if anchor > 0 {
                    self.anchor_nodes.insert(anchor, size_of(&v));
                    self.anchors.insert(anchor, v.clone());
                }
                if !self.count(1, &mark) {
                    return;
                }
                self.push_value(v);
            }
            _ => {}
        }
    }
}

/// A plan's bytes as text, or the position of the first byte that is not UTF-8.
pub fn plan_text<'a>(bytes: &'a [u8], file: &str) -> Result<&'a str, Vec<Diagnostic>> {
    std::str::from_utf8(bytes).map_err(|e| {
        let good = &bytes[..e.valid_up_to()];
        let line = good.iter().filter(|&&b| b == b'\n').count() + 1;
        let line_start = good.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        // Characters, not bytes, before the bad byte on its line (the prefix is valid UTF-8).
        let column = std::str::from_utf8(&good[line_start..])
            .map(|s| s.chars().count())
            .unwrap_or(0)
            + 1;
        vec![Diagnostic {
            file: file.into(),
            line,
            column,
            path: String::new(),
            message: format!(
                "byte 0x{:02x} is not UTF-8: a plan is UTF-8 text (was the file saved in another encoding?)",
                bytes[e.valid_up_to()]
            ),
        }]
    })
}

/// Parse YAML text into a JSON value and its source map.
///
/// The parser is driven one event at a time (yaml-rust2's own `load` recurses once per
/// nesting level, so a deeply nested document overflowed the stack); nesting and the size
/// after alias expansion are bounded, and the first document is the plan.
pub fn parse_yaml(src: &str, file: &str) -> Result<(Value, SourceMap), Vec<Diagnostic>> {
    let mut b = Builder::default();
    let mut parser = Parser::new_from_str(src);
    let mut documents = 0;
    loop {
        let (ev, mark) = match parser.next_token() {
            Ok(x) => x,
            Err(e) => {
                let m = e.marker();
                let message = if e.info().contains("recursion limit") {
                    format!("nested more than {MAX_DEPTH} levels deep: a plan needs far fewer")
                } else {
                    format!("malformed YAML: {}", e.info())
                };
                return Err(vec![Diagnostic {
                    file: file.into(),
                    line: m.line(),
                    column: m.col() + 1,
                    path: String::new(),
                    message,
                }]);
            }
        };
        match ev {
            Event::StreamEnd => break,
            Event::DocumentStart => {
                documents += 1;
                if documents > 1 {
                    b.errors.push((
                        String::new(),
                        pos(&mark),
                        "a second YAML document (`---`): a plan is one document".into(),
                    ));
                    break;
                }
            }
            Event::StreamStart | Event::DocumentEnd | Event::Nothing => {}
            ev => b.on_event(ev, mark),
        }
        if b.aborted {
            break;
        }
    }
    if !b.errors.is_empty() {
        return Err(b
            .errors
            .into_iter()
            .map(|(path, (line, column), message)| Diagnostic {
                file: file.into(),
                line,
                column,
                path,
                message,
            })
            .collect());
    }
    Ok((b.root.unwrap_or(Value::Null), b.map))
}

/// Collects diagnostics while the plan is put together.
pub struct Checker<'a> {
    pub file: &'a str,
    pub map: &'a SourceMap,
    pub diags: Vec<Diagnostic>,
}

impl Checker<'_> {
    pub fn at(&mut self, path: &str, message: impl Into<String>) {
        let (line, column) = self.map.locate(path);
        self.push(path, line, column, message.into());
    }
    pub fn at_key(&mut self, path: &str, message: impl Into<String>) {
        let (line, column) = self.map.locate_key(path);
        self.push(path, line, column, message.into());
    }
    fn push(&mut self, path: &str, line: usize, column: usize, message: String) {
        self.diags.push(Diagnostic {
            file: self.file.into(),
            line,
            column,
            path: path.into(),
            message,
        });
    }

    /// Deserialize `v` (found at `path`) as `T`, recording a located error on failure.
    pub fn de<T: DeserializeOwned>(&mut self, v: &Value, path: &str) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(v.clone()) {
            Ok(t) => Some(t),
            Err(e) => {
                let inner = e.path().to_string();
                let at = if inner == "." || inner.is_empty() {
                    path.to_string()
                } else if inner.starts_with('[') {
                    format!("{path}{inner}")
                } else {
                    child(path, &inner)
                };
                let msg = e.into_inner().to_string();
                if let Some(field) = msg
                    .strip_prefix("unknown field `")
                    .and_then(|r| r.split('`').next())
                {
                    // serde reports the parent; point at the offending key itself.
                    let key_path = child(&at, field);
                    let key_path = if self.map.keys.contains_key(&key_path) {
                        key_path
                    } else {
                        // Internally tagged enums lose the inner path: search below `path`.
                        self.find_key_below(path, field).unwrap_or(key_path)
                    };
                    self.at_key(&key_path, msg);
                } else if msg.starts_with("unknown variant") || msg.contains("field `kind`") {
                    let kind = child(&at, "kind");
                    if self.map.keys.contains_key(&kind) {
                        self.at(&kind, msg);
                    } else {
                        self.at(&at, msg);
                    }
                } else {
                    self.at(&at, msg);
                }
                None
            }
        }
    }

    fn find_key_below(&self, path: &str, field: &str) -> Option<String> {
        let prefix = if path.is_empty() {
            String::new()
        } else {
            format!("{path}.")
        };
        let suffix = format!(".{field}");
        let mut hits: Vec<&String> = self
            .map
            .keys
            .keys()
            .filter(|k| k.starts_with(&prefix) && (k.ends_with(&suffix) || k.as_str() == field))
            .collect();
        hits.sort();
        hits.first().map(|s| s.to_string())
    }
}

const TOP_LEVEL: &[&str] = &[
    "name",
    "state_dir",
    "tiers",
    "sites",
    "services",
    "repositories",
    "backups",
    "notifications",
    "escalation",
    "runbooks",
    "drills",
    "schedules",
    "scheduler",
    "metrics",
    "api",
    "coordinator",
];

/// Parse and validate a plan. On failure, every problem found, in file order.
pub fn parse_plan(src: &str, file: &str) -> Result<Plan, Vec<Diagnostic>> {
    let (root, map) = parse_yaml(src, file)?;
    let mut c = Checker {
        file,
        map: &map,
        diags: Vec::new(),
    };
    let mut plan = Plan::default();
    let Value::Object(top) = root else {
        c.at(
            "",
            "expected a mapping with `name`, `tiers`, `services`, … at the top level",
        );
        return Err(c.diags);
    };
    for (key, v) in &top {
        match key.as_str() {
            "name" => plan.name = c.de(v, key).unwrap_or_default(),
            "state_dir" => plan.state_dir = c.de(v, key),
            "sites" => plan.sites = c.de(v, key).unwrap_or_default(),
            "tiers" => plan.tiers = section(&mut c, v, key),
            "services" => plan.services = section(&mut c, v, key),
            "repositories" => plan.repositories = section(&mut c, v, key),
            "backups" => plan.backups = section(&mut c, v, key),
            "runbooks" => plan.runbooks = section(&mut c, v, key),
            "drills" => plan.drills = section(&mut c, v, key),
            "schedules" => plan.schedules = section(&mut c, v, key),
            "scheduler" => plan.scheduler = c.de(v, key),
            "metrics" => plan.metrics = c.de(v, key),
            "api" => plan.api = c.de(v, key),
            "coordinator" => plan.coordinator = c.de(v, key),
            "escalation" => plan.escalation = c.de(v, key),
            "notifications" => match v {
                Value::Array(items) => {
                    plan.notifications = items
                        .iter()
                        .enumerate()
                        .filter_map(|(i, it)| c.de(it, &format!("notifications[{i}]")))
                        .collect()
                }
                Value::Null => {}
                _ => c.at(key, "expected a list of notification targets"),
            },
            other => c.at_key(
                other,
                format!(
                    "unknown field `{other}`, expected one of {}",
                    TOP_LEVEL
                        .iter()
                        .map(|f| format!("`{f}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
        }
    }
    if !top.contains_key("name") {
        c.at(
            "",
            "missing field `name`: every plan has a name (e.g. `name: shop`)",
        );
    }
    // References are checked against every name the file declares, even entries that failed
    // to parse, so one typo does not cascade into "undeclared" errors elsewhere.
    let declared = crate::validate::Declared::from_names(|section| {
        top.get(section)
            .and_then(Value::as_object)
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    });
    for (path, message) in crate::validate::validate(&plan, &declared) {
        c.at(&path, message);
    }
    if c.diags.is_empty() {
        Ok(plan)
    } else {
        let mut d = c.diags;
        d.sort_by_key(|d| (d.line, d.column));
        d.dedup();
        Err(d)
    }
}

fn section<T: DeserializeOwned>(
    c: &mut Checker<'_>,
    v: &Value,
    key: &str,
) -> std::collections::BTreeMap<String, T> {
    let mut out = std::collections::BTreeMap::new();
    match v {
        Value::Object(entries) => {
            for (name, entry) in entries {
                if let Some(t) = c.de(entry, &child(key, name)) {
                    out.insert(name.clone(), t);
                }
            }
        }
        Value::Null => {}
        _ => c.at(key, format!("expected a mapping of names to {key} entries")),
    }
    out
}
