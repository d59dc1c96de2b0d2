//! Input checks of the auth RPCs; each failure names its field.

use crate::error::AuthServiceError;

/// Shortest accepted password.
pub const MIN_PASSWORD: usize = 10;
/// Longest accepted password (Argon2 input stays bounded).
pub const MAX_PASSWORD: usize = 1024;

/// A trimmed, lower-cased email with one `@`, a local part and a dotted domain.
pub fn email(raw: &str) -> Result<String, AuthServiceError> {
    let email = raw.trim().to_lowercase();
    if email.is_empty() {
        return Err(AuthServiceError::invalid("email", "required"));
    }
    let valid = email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        });
    if valid {
        Ok(email)
    } else {
        Err(AuthServiceError::invalid(
            "email",
            "not a valid email address",
        ))
    }
}

/// A password of acceptable length.
pub fn new_password(raw: &str) -> Result<(), AuthServiceError> {
    let chars = raw.chars().count();
    if raw.is_empty() {
        Err(AuthServiceError::invalid("password", "required"))
    } else if chars < MIN_PASSWORD {
        Err(AuthServiceError::invalid(
            "password",
            format!("must be at least {MIN_PASSWORD} characters"),
        ))
    } else if raw.len() > MAX_PASSWORD {
        Err(AuthServiceError::invalid(
            "password",
            format!("must be at most {MAX_PASSWORD} bytes"),
        ))
    } else {
        Ok(())
    }
}

/// A non-empty field.
pub fn required<'a>(field: &'static str, value: &'a str) -> Result<&'a str, AuthServiceError> {
    let v = value.trim();
    if v.is_empty() {
        Err(AuthServiceError::invalid(field, "required"))
    } else {
        Ok(v)
    }
}

/// A UUID-shaped id.
pub fn uuid(field: &'static str, value: &str) -> Result<String, AuthServiceError> {
    let v = required(field, value)?;
    uuid::Uuid::parse_str(v)
        .map(|u| u.to_string())
        .map_err(|_| AuthServiceError::invalid(field, "not a valid UUID"))
}
