//! Currencies and money: ISO 4217 codes (the active codes in circulation; funds, precious
//! metals and testing codes are left out on purpose) and amounts in minor units (cents for EUR,
//! yen for JPY) as `i64`, never floating point. Every check names the field at fault.

use mesh_contracts::common::v1::Money;

use super::ServiceError;

/// The accepted codes, sorted.
pub const CODES: &[&str] = &[
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT",
    "BGN", "BHD", "BIF", "BMD", "BND", "BOB", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD",
    "CDF", "CHF", "CLP", "CNY", "COP", "CRC", "CUP", "CVE", "CZK", "DJF", "DKK", "DOP", "DZD",
    "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP", "GEL", "GHS", "GIP", "GMD", "GNF", "GTQ",
    "GYD", "HKD", "HNL", "HTG", "HUF", "IDR", "ILS", "INR", "IQD", "IRR", "ISK", "JMD", "JOD",
    "JPY", "KES", "KGS", "KHR", "KMF", "KPW", "KRW", "KWD", "KYD", "KZT", "LAK", "LBP", "LKR",
    "LRD", "LSL", "LYD", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT", "MOP", "MRU", "MUR", "MVR",
    "MWK", "MXN", "MYR", "MZN", "NAD", "NGN", "NIO", "NOK", "NPR", "NZD", "OMR", "PAB", "PEN",
    "PGK", "PHP", "PKR", "PLN", "PYG", "QAR", "RON", "RSD", "RUB", "RWF", "SAR", "SBD", "SCR",
    "SDG", "SEK", "SGD", "SHP", "SLE", "SOS", "SRD", "SSP", "STN", "SVC", "SYP", "SZL", "THB",
    "TJS", "TMT", "TND", "TOP", "TRY", "TTD", "TWD", "TZS", "UAH", "UGX", "USD", "UYU", "UZS",
    "VES", "VND", "VUV", "WST", "XAF", "XCD", "XOF", "XPF", "YER", "ZAR", "ZMW", "ZWL",
];

/// Whether `code` is an accepted ISO 4217 code (upper case, as the standard writes it).
pub fn is_currency(code: &str) -> bool {
    CODES.binary_search(&code).is_ok()
}

/// A required currency code in `field`: an accepted ISO 4217 code, upper case.
pub fn currency(field: &str, code: &str) -> Result<String, ServiceError> {
    if code.is_empty() {
        Err(ServiceError::invalid(field, "required"))
    } else if is_currency(code) {
        Ok(code.to_string())
    } else {
        Err(ServiceError::invalid(
            field,
            format!("`{code}` is not an ISO 4217 currency code (upper case, e.g. EUR)"),
        ))
    }
}

/// An optional currency code in `field`: `None` when empty, else as [`currency`].
pub fn optional_currency(field: &str, code: &str) -> Result<Option<String>, ServiceError> {
    if code.is_empty() {
        Ok(None)
    } else {
        currency(field, code).map(Some)
    }
}

/// Which amounts a field accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amount {
    /// Zero or more (prices, balances).
    NonNegative,
    /// More than zero (charges, refunds).
    Positive,
}

/// An amount in minor units in `field`, checked against `rule`.
pub fn amount(field: &str, minor: i64, rule: Amount) -> Result<i64, ServiceError> {
    match rule {
        Amount::NonNegative if minor < 0 => {
            Err(ServiceError::invalid(field, "must not be negative"))
        }
        Amount::Positive if minor <= 0 => {
            Err(ServiceError::invalid(field, "must be greater than zero"))
        }
        _ => Ok(minor),
    }
}

/// A required `Money` in `field`: `(currency, amount_minor)`, the currency checked by
/// [`currency`] (as `field.currency_code`) and the amount by [`amount`] (as
/// `field.amount_minor`).
pub fn money(
    field: &str,
    value: Option<&Money>,
    rule: Amount,
) -> Result<(String, i64), ServiceError> {
    let m = value.ok_or_else(|| ServiceError::invalid(field, "required"))?;
    let code = currency(&format!("{field}.currency_code"), &m.currency_code)?;
    let minor = amount(&format!("{field}.amount_minor"), m.amount_minor, rule)?;
    Ok((code, minor))
}

/// A `Money` message from stored parts.
pub fn to_money(currency: impl Into<String>, amount_minor: i64) -> Money {
    Money {
        currency_code: currency.into(),
        amount_minor,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_sorted_upper_case_three_letters() {
        assert!(CODES.windows(2).all(|w| w[0] < w[1]));
        assert!(
            CODES
                .iter()
                .all(|c| c.len() == 3 && c.chars().all(|ch| ch.is_ascii_uppercase()))
        );
        assert!(is_currency("EUR") && is_currency("JPY"));
        assert!(!is_currency("eur") && !is_currency("XXX") && !is_currency("ABC"));
    }

    #[test]
    fn currency_errors_name_the_field() {
        assert_eq!(currency("c", "EUR").unwrap(), "EUR");
        assert_eq!(currency("c", "").unwrap_err().to_string(), "c: required");
        let e = currency("amount.currency_code", "ABC").unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(
            e.to_string()
                .starts_with("amount.currency_code: `ABC` is not")
        );
        assert_eq!(optional_currency("c", "").unwrap(), None);
        assert!(optional_currency("c", "usd").is_err());
    }

    #[test]
    fn money_checks_each_part() {
        let m = to_money("EUR", 250);
        assert_eq!(
            money("price", Some(&m), Amount::Positive).unwrap(),
            ("EUR".to_string(), 250)
        );
        assert_eq!(
            money("price", None, Amount::NonNegative)
                .unwrap_err()
                .to_string(),
            "price: required"
        );
        let zero = to_money("EUR", 0);
        assert!(money("p", Some(&zero), Amount::NonNegative).is_ok());
        assert_eq!(
            money("p", Some(&zero), Amount::Positive)
                .unwrap_err()
                .to_string(),
            "p.amount_minor: must be greater than zero"
        );
        let negative = to_money("EUR", -1);
        assert_eq!(
            money("p", Some(&negative), Amount::NonNegative)
                .unwrap_err()
                .to_string(),
            "p.amount_minor: must not be negative"
        );
        let bad = to_money("QQQ", 1);
        assert!(
            money("p", Some(&bad), Amount::Positive)
                .unwrap_err()
                .to_string()
                .starts_with("p.currency_code: ")
        );
    }
}
