//! Input checks; every error names the field at fault.

use mesh_contracts::notification::v1::Channel;

use crate::error::NotificationError;

type Result<T> = std::result::Result<T, NotificationError>;

/// A webhook URL: `https://host[:port][/path]`, or `http://` as well when `allow_http`
/// (`MESH_NOTIFICATION_WEBHOOK_ALLOW_HTTP`, local development only).
pub fn webhook_url(value: &str, allow_http: bool) -> std::result::Result<String, String> {
    let uri: http::Uri = value.parse().map_err(|e| format!("not a URL: {e}"))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("https"), Some(h)) if !h.is_empty() => Ok(value.to_string()),
        (Some("http"), Some(h)) if !h.is_empty() && allow_http => Ok(value.to_string()),
        (Some("http"), _) => Err("plain http is refused (bodies and signatures would cross the network in clear); use https, or set MESH_NOTIFICATION_WEBHOOK_ALLOW_HTTP=true for local development".into()),
        _ => Err("expected https://host[:port][/path]".into()),
    }
}

/// An id: 1..=128 characters of `A-Z a-z 0-9 - _ . : @`.
pub fn id(field: &str, value: &str) -> Result<String> {
    if value.is_empty() {
        return Err(NotificationError::invalid(field, "required"));
    }
    if value.len() > 128
        || !value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@'))
    {
        return Err(NotificationError::invalid(
            field,
            "at most 128 letters, digits and - _ . : @",
        ));
    }
    Ok(value.to_string())
}

/// An event type such as `order.confirmed`.
pub fn event_type(field: &str, value: &str) -> Result<String> {
    let ok = value.len() <= 100
        && value
            .split_once('.')
            .is_some_and(|(a, b)| !a.is_empty() && !b.is_empty())
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_'));
    if value.is_empty() {
        Err(NotificationError::invalid(field, "required"))
    } else if !ok {
        Err(NotificationError::invalid(
            field,
            "an event type such as order.confirmed (lower case, <domain>.<verb>)",
        ))
    } else {
        Ok(value.to_string())
    }
}

/// A channel that is set and known.
pub fn channel(field: &str, value: i32) -> Result<Channel> {
    match Channel::try_from(value) {
        Ok(Channel::Unspecified) => Err(NotificationError::invalid(field, "required")),
        Ok(c) => Ok(c),
        Err(_) => Err(NotificationError::invalid(
            field,
            format!("unknown channel {value}; one of CHANNEL_LOG, CHANNEL_WEBHOOK, CHANNEL_EMAIL"),
        )),
    }
}

/// Text of at most `max` characters; `required` refuses empty (or blank) text.
pub fn text(field: &str, value: &str, max: usize, required: bool) -> Result<String> {
    if required && value.trim().is_empty() {
        return Err(NotificationError::invalid(field, "required"));
    }
    if value.chars().count() > max {
        return Err(NotificationError::invalid(
            field,
            format!("at most {max} characters"),
        ));
    }
    Ok(value.to_string())
}

/// An email address (a light check: one `@`, something on both sides, no spaces).
pub fn email(field: &str, value: &str) -> Result<String> {
    let ok = value.len() <= 254
        && !value.contains(char::is_whitespace)
        && value
            .split_once('@')
            .is_some_and(|(a, b)| !a.is_empty() && b.contains('.') && !b.contains('@'));
    if ok {
        Ok(value.to_string())
    } else {
        Err(NotificationError::invalid(field, "not an email address"))
    }
}

/// The stored name of a channel.
pub fn channel_name(c: Channel) -> &'static str {
    match c {
        Channel::Log => "LOG",
        Channel::Webhook => "WEBHOOK",
        Channel::Email => "EMAIL",
        Channel::Unspecified => "UNSPECIFIED",
    }
}

/// The channel stored as `name`.
pub fn channel_of(name: &str) -> Channel {
    match name {
        "LOG" => Channel::Log,
        "WEBHOOK" => Channel::Webhook,
        "EMAIL" => Channel::Email,
        _ => Channel::Unspecified,
    }
}
