//! Test cards of the simulated processor and card brands. The simulated processor picks a
//! charge's outcome by the card number, like a payment sandbox (see `docs/saga.md`).

/// How the simulated processor treats a card.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CardClass {
    /// Charges succeed (4242 4242 4242 4242, and any other valid number).
    Succeed,
    /// Charges are declined (4000 0000 0000 0002).
    Decline,
    /// Charges fail for insufficient funds (4000 0000 0000 9995).
    InsufficientFunds,
    /// The processor errors on every attempt (4000 0000 0000 0119): retryable, so payment
    /// retries and then gives up with `DECLINE_REASON_PROVIDER_ERROR`.
    ProcessorError,
    /// Charges succeed after a delay (4000 0000 0000 0259).
    Slow,
}

/// The test cards, by number.
pub const TEST_CARDS: &[(&str, CardClass)] = &[
    ("4242424242424242", CardClass::Succeed),
    ("4000000000000002", CardClass::Decline),
    ("4000000000009995", CardClass::InsufficientFunds),
    ("4000000000000119", CardClass::ProcessorError),
    ("4000000000000259", CardClass::Slow),
];

impl CardClass {
    /// The class of a (valid, digits only) card number.
    pub fn of(number: &str) -> CardClass {
        TEST_CARDS
            .iter()
            .find(|(n, _)| *n == number)
            .map_or(CardClass::Succeed, |(_, c)| *c)
    }

    /// Its stored name (the simulated processor's card reference is `sim:<name>`).
    pub fn name(self) -> &'static str {
        match self {
            CardClass::Succeed => "succeed",
            CardClass::Decline => "decline",
            CardClass::InsufficientFunds => "insufficient_funds",
            CardClass::ProcessorError => "processor_error",
            CardClass::Slow => "slow",
        }
    }

    /// The class stored under `name`.
    pub fn parse(name: &str) -> Option<CardClass> {
        [
            CardClass::Succeed,
            CardClass::Decline,
            CardClass::InsufficientFunds,
            CardClass::ProcessorError,
            CardClass::Slow,
        ]
        .into_iter()
        .find(|c| c.name() == name)
    }
}

/// The brand of a card number by its prefix (`unknown` if none matches).
pub fn brand(number: &str) -> &'static str {
    let prefix = |n: usize| number.get(..n).and_then(|p| p.parse::<u32>().ok());
    match (prefix(1), prefix(2), prefix(4)) {
        (Some(4), _, _) => "visa",
        (_, Some(34 | 37), _) => "amex",
        (_, Some(51..=55), _) | (_, _, Some(2221..=2720)) => "mastercard",
        (_, Some(65), _) | (_, _, Some(6011)) => "discover",
        _ => "unknown",
    }
}

/// Whether `digits` passes the Luhn check.
pub fn luhn(digits: &str) -> bool {
    let mut sum = 0;
    for (i, c) in digits.chars().rev().enumerate() {
        let Some(mut d) = c.to_digit(10) else {
            return false;
        };
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    sum % 10 == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_cards_are_valid_visa_numbers_with_their_classes() {
        for (number, class) in TEST_CARDS {
            assert!(luhn(number), "{number}");
            assert_eq!(brand(number), "visa");
            assert_eq!(CardClass::of(number), *class);
            assert_eq!(CardClass::parse(class.name()), Some(*class));
        }
        assert!(!luhn("4242424242424241"));
        assert_eq!(brand("5555555555554444"), "mastercard");
        assert_eq!(brand("378282246310005"), "amex");
        assert_eq!(CardClass::of("5555555555554444"), CardClass::Succeed);
    }
}
