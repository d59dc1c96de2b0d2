//! Id rules: UUIDs (normalised to lower-case hyphenated form) and the formats of other ids
//! (keys, references, slugs) as one [`IdFormat`] value per kind, each check returning an
//! `INVALID_ARGUMENT` that names the field.

use super::ServiceError;

/// A required UUID in `field`, trimmed and normalised (`550e8400-e29b-41d4-a716-446655440000`).
pub fn uuid(field: &str, value: &str) -> Result<String, ServiceError> {
    let v = value.trim();
    if v.is_empty() {
        return Err(ServiceError::invalid(field, "required"));
    }
    uuid::Uuid::parse_str(v)
        .map(|u| u.to_string())
        .map_err(|_| ServiceError::invalid(field, "not a valid id (UUID)"))
}

/// An optional UUID in `field`: `None` when empty (or blank), else as [`uuid`].
pub fn optional_uuid(field: &str, value: &str) -> Result<Option<String>, ServiceError> {
    if value.trim().is_empty() {
        Ok(None)
    } else {
        uuid(field, value).map(Some)
    }
}

/// Which characters an id may hold, besides ASCII digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charset {
    /// ASCII letters (either case), digits and the given punctuation.
    Ascii(&'static str),
    /// Lower-case ASCII letters, digits and the given punctuation (slugs such as store ids).
    LowerAscii(&'static str),
    /// Any printable character except whitespace (references chosen by callers).
    NoSpaces,
}

/// The format of one kind of id: its length bound and characters. Values are compared as
/// given (no trimming), except that [`IdFormat::trim`] formats trim surrounding blanks first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdFormat {
    /// Most characters.
    pub max: usize,
    /// Allowed characters.
    pub charset: Charset,
    /// Whether surrounding whitespace is trimmed before checking.
    pub trim: bool,
}

/// Keys and ids chosen by callers or peers: 1..=128 of `A-Z a-z 0-9 - _ . : /`.
pub const KEY: IdFormat = IdFormat {
    max: 128,
    charset: Charset::Ascii("-_.:/"),
    trim: false,
};

/// References (order ids, customer ids, idempotency keys): 1..=128 characters, no spaces,
/// surrounding blanks trimmed.
pub const REFERENCE: IdFormat = IdFormat {
    max: 128,
    charset: Charset::NoSpaces,
    trim: true,
};

/// Vending machine (device) ids, shared by shop, vm and the gateway: 1..=64 of
/// `A-Z a-z 0-9 - _ .`.
pub const MACHINE_ID: IdFormat = IdFormat {
    max: 64,
    charset: Charset::Ascii("-_."),
    trim: false,
};

impl IdFormat {
    /// A format of `max` characters of `charset`, not trimmed.
    pub const fn new(max: usize, charset: Charset) -> Self {
        Self {
            max,
            charset,
            trim: false,
        }
    }

    /// The same format, trimming surrounding whitespace first.
    pub const fn trimmed(self) -> Self {
        Self { trim: true, ..self }
    }

    /// What the format accepts, as said in an error.
    pub fn describe(&self) -> String {
        let punctuation = |p: &str| {
            p.chars()
                .map(|c| format!("'{c}'"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self.charset {
            Charset::Ascii("") => format!("1 to {} letters and digits", self.max),
            Charset::Ascii(p) => {
                format!("1 to {} letters, digits and {}", self.max, punctuation(p))
            }
            Charset::LowerAscii("") => {
                format!("1 to {} lower case letters and digits", self.max)
            }
            Charset::LowerAscii(p) => format!(
                "1 to {} lower case letters, digits and {}",
                self.max,
                punctuation(p)
            ),
            Charset::NoSpaces => format!("at most {} characters, no spaces", self.max),
        }
    }

    fn allows(&self, c: char) -> bool {
        match self.charset {
            Charset::Ascii(p) => c.is_ascii_alphanumeric() || p.contains(c),
            Charset::LowerAscii(p) => c.is_ascii_lowercase() || c.is_ascii_digit() || p.contains(c),
            Charset::NoSpaces => !c.is_whitespace() && !c.is_control(),
        }
    }

    /// Whether `value` (trimmed when the format trims) is a valid, non-empty id.
    pub fn is_valid(&self, value: &str) -> bool {
        let v = if self.trim { value.trim() } else { value };
        !v.is_empty() && v.chars().count() <= self.max && v.chars().all(|c| self.allows(c))
    }

    /// A required id in `field` (trimmed when the format trims).
    pub fn check(&self, field: &str, value: &str) -> Result<String, ServiceError> {
        let v = if self.trim { value.trim() } else { value };
        if v.is_empty() {
            return Err(ServiceError::invalid(field, "required"));
        }
        if !self.is_valid(v) {
            return Err(ServiceError::invalid(field, self.describe()));
        }
        Ok(v.to_string())
    }

    /// An optional id in `field`: `None` when empty, else as [`IdFormat::check`].
    pub fn optional(&self, field: &str, value: &str) -> Result<Option<String>, ServiceError> {
        let v = if self.trim { value.trim() } else { value };
        if v.is_empty() {
            Ok(None)
        } else {
            self.check(field, v).map(Some)
        }
    }
}

/// Free text in `field` of at most `max` characters (counted as characters, not bytes);
/// required (non-blank) when `required`. Returned as given.
pub fn text(field: &str, value: &str, max: usize, required: bool) -> Result<String, ServiceError> {
    if required && value.trim().is_empty() {
        return Err(ServiceError::invalid(field, "required"));
    }
    if value.chars().count() > max {
        return Err(ServiceError::invalid(
            field,
            format!("at most {max} characters"),
        ));
    }
    Ok(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_normalised_and_errors_name_the_field() {
        assert_eq!(
            uuid("id", " 550E8400-E29B-41D4-A716-446655440000 ").unwrap(),
            "550e8400-e29b-41d4-a716-446655440000"
        );
        assert_eq!(uuid("id", " ").unwrap_err().to_string(), "id: required");
        let e = uuid("lines[0].product_id", "nope").unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert_eq!(e.to_string(), "lines[0].product_id: not a valid id (UUID)");
        assert_eq!(optional_uuid("id", "").unwrap(), None);
    }

    #[test]
    fn formats_bound_length_and_characters() {
        assert_eq!(
            KEY.check("k", "order:1/a_b.c-d").unwrap(),
            "order:1/a_b.c-d"
        );
        assert!(KEY.check("k", "a b").is_err());
        assert!(KEY.check("k", &"a".repeat(129)).is_err());
        assert!(KEY.check("k", &"a".repeat(128)).is_ok());
        assert_eq!(KEY.check("k", "").unwrap_err().to_string(), "k: required");

        assert_eq!(REFERENCE.check("r", "  ünïcode-ok ").unwrap(), "ünïcode-ok");
        assert_eq!(
            REFERENCE.check("r", "two words").unwrap_err().to_string(),
            "r: at most 128 characters, no spaces"
        );

        let slug = IdFormat::new(63, Charset::LowerAscii("-"));
        assert!(slug.check("store_id", "berlin-hbf").is_ok());
        assert_eq!(
            slug.check("store_id", "Berlin").unwrap_err().to_string(),
            "store_id: 1 to 63 lower case letters, digits and '-'"
        );
        assert_eq!(slug.optional("s", "").unwrap(), None);
        let loc = IdFormat::new(64, Charset::Ascii("-_.:")).trimmed();
        assert_eq!(loc.check("l", " a:b ").unwrap(), "a:b");
        assert_eq!(
            loc.describe(),
            "1 to 64 letters, digits and '-', '_', '.', ':'"
        );
    }

    #[test]
    fn text_counts_characters() {
        assert!(text("t", &"é".repeat(10), 10, true).is_ok());
        assert_eq!(
            text("t", &"é".repeat(11), 10, false)
                .unwrap_err()
                .to_string(),
            "t: at most 10 characters"
        );
        assert_eq!(
            text("t", "  ", 10, true).unwrap_err().to_string(),
            "t: required"
        );
        assert_eq!(text("t", "", 10, false).unwrap(), "");
    }
}
