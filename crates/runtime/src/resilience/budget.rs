//! The retry budget: a token bucket shared by every call to one upstream.
//!
//! Each request deposits `ratio` of a token (0.1 by default: retries may add at most 10% to the
//! load), and the bucket also fills at `min_per_sec` tokens per second, so a quiet client can
//! still retry a few calls; each retry withdraws one whole token. The bucket holds at most
//! `max_tokens`, so credit saved while healthy cannot become a retry storm later. Over any
//! interval, retries <= tokens at its start + `ratio` x requests + `min_per_sec` x seconds.

use std::sync::Mutex;

use tokio::time::Instant;

/// Settings of a [`RetryBudget`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetOptions {
    /// Tokens deposited per request (a retry costs one token).
    pub ratio: f64,
    /// Tokens added per second whatever the traffic (the floor).
    pub min_per_sec: f64,
    /// The most tokens the bucket holds (and what it starts with).
    pub max_tokens: f64,
}

impl Default for BudgetOptions {
    fn default() -> Self {
        Self {
            ratio: 0.1,
            min_per_sec: 5.0,
            max_tokens: 10.0,
        }
    }
}

/// A retry budget (see the module docs).
#[derive(Debug)]
pub struct RetryBudget {
    options: BudgetOptions,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    tokens: f64,
    last: Instant,
}

impl RetryBudget {
    /// A full bucket.
    pub fn new(options: BudgetOptions) -> Self {
        Self {
            options,
            state: Mutex::new(State {
                tokens: options.max_tokens,
                last: Instant::now(),
            }),
        }
    }

    fn with_state<T>(&self, f: impl FnOnce(&mut State, &BudgetOptions) -> T) -> T {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(state.last).as_secs_f64();
        state.last = now;
        state.tokens =
            (state.tokens + elapsed * self.options.min_per_sec).min(self.options.max_tokens);
        f(&mut state, &self.options)
    }

    /// Records a request (a first attempt).
    pub fn deposit(&self) {
        self.with_state(|s, o| s.tokens = (s.tokens + o.ratio).min(o.max_tokens));
    }

    /// Takes one token for a retry; `false` when the budget is spent.
    pub fn withdraw(&self) -> bool {
        self.with_state(|s, _| {
            if s.tokens >= 1.0 {
                s.tokens -= 1.0;
                true
            } else {
                false
            }
        })
    }

    /// Tokens available now.
    pub fn tokens(&self) -> f64 {
        self.with_state(|s, _| s.tokens)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn resilience_budget_allows_ten_percent_plus_the_floor() {
        let options = BudgetOptions {
            ratio: 0.1,
            min_per_sec: 2.0,
            max_tokens: 10.0,
        };
        let budget = RetryBudget::new(options);
        let mut retries = 0u32;
        let requests = 10_000u32;
        // 10 s of traffic at 1,000 requests/s where every request wants a retry.
        for _ in 0..requests {
            budget.deposit();
            if budget.withdraw() {
                retries += 1;
            }
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        let bound = options.max_tokens + 0.1 * f64::from(requests) + 2.0 * 10.0;
        assert!(f64::from(retries) <= bound, "{retries} retries > {bound}");
        assert!(f64::from(retries) >= 0.1 * f64::from(requests), "{retries}");
    }

    #[tokio::test(start_paused = true)]
    async fn resilience_budget_is_spent_and_refills_with_the_floor() {
        let budget = RetryBudget::new(BudgetOptions {
            ratio: 0.0,
            min_per_sec: 1.0,
            max_tokens: 3.0,
        });
        assert!(budget.withdraw() && budget.withdraw() && budget.withdraw());
        assert!(!budget.withdraw());
        tokio::time::advance(Duration::from_millis(1_000)).await;
        assert!(budget.withdraw());
        assert!(!budget.withdraw());
        // Saved credit is capped.
        tokio::time::advance(Duration::from_secs(100)).await;
        assert!((budget.tokens() - 3.0).abs() < 1e-9);
    }
}
