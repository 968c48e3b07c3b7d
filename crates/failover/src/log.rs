//! The daemon's log: one JSON object per line on stderr, with the time, the event and the
//! service.

pub fn log(event: &str, service: &str, fields: serde_json::Value) {
    let mut v = serde_json::json!({
        "time": jiff::Timestamp::now().to_string(),
        "event": event,
        "service": service,
    });
    if let (Some(o), Some(f)) = (v.as_object_mut(), fields.as_object()) {
        o.extend(f.clone());
    }
    eprintln!("{v}");
}
