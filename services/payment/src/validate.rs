//! Input checks; every error names the field at fault.

use mesh_contracts::common::v1::{Money, PaymentCard};

use mesh_runtime::domain::ids;
use mesh_runtime::domain::money::{self, Amount};

use crate::cards;
use crate::error::{CommonErrors, PaymentError};
use crate::provider::CardData;

type Result<T> = std::result::Result<T, PaymentError>;

/// An id or key: 1..=128 characters of `A-Z a-z 0-9 - _ . : /` (the kit's key format).
pub fn id(field: &str, value: &str) -> Result<String> {
    Ok(ids::KEY.check(field, value)?)
}

/// An optional id (empty allowed).
pub fn optional_id(field: &str, value: &str) -> Result<String> {
    if value.is_empty() {
        Ok(String::new())
    } else {
        id(field, value)
    }
}

/// Free text of at most `max` characters.
pub fn text(field: &str, value: &str, max: usize) -> Result<String> {
    Ok(ids::text(field, value, max, false)?)
}

/// An ISO 4217 code the kit knows (upper case).
pub fn currency(field: &str, value: &str) -> Result<String> {
    Ok(money::currency(field, value)?)
}

/// A positive amount: `(currency, amount_minor)`.
pub fn positive_money(field: &str, value: Option<&Money>) -> Result<(String, i64)> {
    Ok(money::money(field, value, Amount::Positive)?)
}

/// Raw card data: Luhn-valid number of 12..=19 digits (spaces and dashes tolerated), expiry
/// `MM/YY` not in the past (as of `today` = (year, month)), CVC of 3 or 4 digits.
pub fn card(field: &str, card: &PaymentCard, today: (u32, u32)) -> Result<CardData> {
    let number: String = card
        .number
        .chars()
        .filter(|c| !matches!(c, ' ' | '-'))
        .collect();
    let number_field = format!("{field}.number");
    if number.is_empty() {
        return Err(PaymentError::invalid(number_field, "required"));
    }
    if !number.chars().all(|c| c.is_ascii_digit()) || !(12..=19).contains(&number.len()) {
        return Err(PaymentError::invalid(number_field, "12 to 19 digits"));
    }
    if !cards::luhn(&number) {
        return Err(PaymentError::invalid(
            number_field,
            "not a valid card number (Luhn check failed)",
        ));
    }
    let expiry_field = format!("{field}.expiry");
    let (month, year) = card
        .expiry
        .split_once('/')
        .and_then(|(m, y)| {
            let ok = m.len() == 2 && y.len() == 2;
            Some((m.parse::<u32>().ok()?, y.parse::<u32>().ok()?)).filter(|_| ok)
        })
        .filter(|(m, _)| (1..=12).contains(m))
        .ok_or_else(|| {
            PaymentError::invalid(&expiry_field, "required, as MM/YY with MM from 01 to 12")
        })?;
    let year = 2000 + year;
    if (year, month) < today {
        return Err(PaymentError::invalid(expiry_field, "the card has expired"));
    }
    let cvc_field = format!("{field}.cvc");
    if !(3..=4).contains(&card.cvc.len()) || !card.cvc.chars().all(|c| c.is_ascii_digit()) {
        return Err(PaymentError::invalid(cvc_field, "3 or 4 digits"));
    }
    text(&format!("{field}.holder_name"), &card.holder_name, 200)?;
    Ok(CardData {
        number,
        exp_month: month,
        exp_year: year,
    })
}

/// The (year, month) of a Unix time, UTC.
pub fn year_month(unix_seconds: i64) -> (u32, u32) {
    // Days to civil date (Howard Hinnant's algorithm).
    let z = unix_seconds.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        u32::try_from(year).unwrap_or(0),
        u32::try_from(month).unwrap_or(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(number: &str, expiry: &str, cvc: &str) -> PaymentCard {
        PaymentCard {
            number: number.into(),
            expiry: expiry.into(),
            cvc: cvc.into(),
            holder_name: String::new(),
        }
    }

    fn field_of(r: Result<CardData>) -> String {
        match r {
            Err(PaymentError::Common(mesh_runtime::domain::ServiceError::InvalidArgument {
                field,
                ..
            })) => field,
            other => panic!("expected invalid argument, got {other:?}"),
        }
    }

    #[test]
    fn cards_are_checked_field_by_field() {
        let today = (2026, 5);
        let ok = card("card", &c("4242 4242 4242 4242", "05/26", "123"), today).unwrap();
        assert_eq!(ok.number, "4242424242424242");
        assert_eq!((ok.exp_month, ok.exp_year), (5, 2026));
        assert_eq!(
            field_of(card("card", &c("", "05/26", "123"), today)),
            "card.number"
        );
        assert_eq!(
            field_of(card("card", &c("4242424242424241", "05/26", "123"), today)),
            "card.number"
        );
        assert_eq!(
            field_of(card("card", &c("4242424242424242", "04/26", "123"), today)),
            "card.expiry"
        );
        assert_eq!(
            field_of(card("card", &c("4242424242424242", "13/30", "123"), today)),
            "card.expiry"
        );
        assert_eq!(
            field_of(card("card", &c("4242424242424242", "05/30", "12"), today)),
            "card.cvc"
        );
    }

    #[test]
    fn civil_dates() {
        assert_eq!(year_month(0), (1970, 1));
        assert_eq!(year_month(951_782_400), (2000, 2)); // 2000-02-29
        assert_eq!(year_month(1_767_225_600), (2026, 1)); // 2026-01-01
    }
}
