//! Page sizes of list RPCs: every service's `page_size` field means the same thing (0 for the
//! service's default, refused when negative or over its maximum), so one function decides it
//! and each service turns the refusal into its own `INVALID_ARGUMENT` naming `page_size`.

/// The page size of a request: `default` for 0; a negative size or one over `max` is refused
/// with the reason (`must not be negative`, `at most <max>`).
pub fn page_size(requested: i32, default: i64, max: i64) -> Result<i64, String> {
    match i64::from(requested) {
        0 => Ok(default),
        n if n < 0 => Err("must not be negative".into()),
        n if n > max => Err(format!("at most {max}")),
        n => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_is_the_default_and_bounds_are_refused_with_reasons() {
        assert_eq!(page_size(0, 50, 500), Ok(50));
        assert_eq!(page_size(7, 50, 500), Ok(7));
        assert_eq!(page_size(500, 50, 500), Ok(500));
        assert_eq!(page_size(501, 50, 500), Err("at most 500".into()));
        assert_eq!(page_size(-1, 50, 500), Err("must not be negative".into()));
    }
}
