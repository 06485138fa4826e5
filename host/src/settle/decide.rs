//! The settling rule, pure: from one outcome and what is known of its delivery and its call, to
//! what happens next. No I/O, no clock, no randomness: the caller passes the time and the
//! backoff's wait, so every branch is a unit test.

use std::time::Duration;

use super::ReasonClass;
use crate::contract::Outcome;

/// What settling one outcome comes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The vendor took it: final.
    Delivered,
    /// The recipient is invalid: final. Re-sent on the channel's fallback first when
    /// `fall_back`.
    InvalidRecipient { fall_back: bool },
    /// The vendor refused it: re-sent on the channel's fallback when `fall_back`, else to the
    /// DLQ (and to the DLQ too when the fallback cannot be sent).
    Rejected { fall_back: bool },
    /// Another try: to the retry topic, due at `due_at_ms`, as try number `attempt`.
    Retry { due_at_ms: u64, attempt: u32 },
    /// No more tries: to the DLQ, with this reason class.
    GiveUp { class: ReasonClass },
}

/// What is known of the delivery and of the call its outcome came from.
#[derive(Debug, Clone, Copy)]
pub struct Facts {
    /// The try this outcome answers (1 on the first).
    pub attempt: u32,
    /// When the request was first seen, in ms since the epoch.
    pub first_seen_ms: u64,
    /// Now, in ms since the epoch.
    pub now_ms: u64,
    /// The backoff's wait before another try (already floored by the vendor's Retry-After).
    pub wait: Duration,
    /// The call failed as a whole (trap, timeout, failed init), not the vendor's answer.
    pub plugin_fault: bool,
    /// The host had no instance slot for the call: the plugin never ran, so the try takes no
    /// attempt (only `give_up_after` bounds such retries).
    pub host_busy: bool,
    /// The channel has a fallback for this outcome, and the delivery did not come through one.
    pub fallback: bool,
}

/// The limits of retrying, from `[dispatch]`.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub give_up_after: Duration,
}

/// What happens to a delivery whose try came to `outcome`.
pub fn decide(outcome: &Outcome, facts: &Facts, policy: &RetryPolicy) -> Decision {
    match outcome {
        Outcome::Delivered(_) => Decision::Delivered,
        Outcome::InvalidRecipient(_) => Decision::InvalidRecipient {
            fall_back: facts.fallback,
        },
        Outcome::Rejected(_) => Decision::Rejected {
            fall_back: facts.fallback,
        },
        Outcome::Retry(_) => {
            let due_at_ms = facts.now_ms + facts.wait.as_millis() as u64;
            let give_up_at = facts.first_seen_ms + policy.give_up_after.as_millis() as u64;
            if due_at_ms > give_up_at {
                return Decision::GiveUp {
                    class: ReasonClass::Expired,
                };
            }
            if facts.host_busy {
                // A call the host had no slot for was no try of the delivery.
                return Decision::Retry {
                    due_at_ms,
                    attempt: facts.attempt,
                };
            }
            if facts.attempt >= policy.max_attempts {
                return Decision::GiveUp {
                    class: if facts.plugin_fault {
                        ReasonClass::PluginFault
                    } else {
                        ReasonClass::AttemptsExhausted
                    },
                };
            }
            Decision::Retry {
                due_at_ms,
                attempt: facts.attempt + 1,
            }
        }
    }
}

/// How long the vendor asked everyone to wait: a `retry` with a Retry-After from the vendor
/// holds every delivery to it, not just this one. A plugin fault's retry is the host's, not the
/// vendor's word.
pub fn vendor_hold(outcome: &Outcome, plugin_fault: bool) -> Option<Duration> {
    match outcome {
        Outcome::Retry(info) if !plugin_fault => info.after_ms.map(Duration::from_millis),
        _ => None,
    }
}

/// The class a retry the retry topic refused for good is dead-lettered with.
pub fn refused_retry_class(plugin_fault: bool) -> ReasonClass {
    if plugin_fault {
        ReasonClass::PluginFault
    } else {
        ReasonClass::AttemptsExhausted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::{Rejection, RetryInfo};

    const POLICY: RetryPolicy = RetryPolicy {
        max_attempts: 3,
        give_up_after: Duration::from_secs(60),
    };

    fn facts(attempt: u32) -> Facts {
        Facts {
            attempt,
            first_seen_ms: 1_000_000,
            now_ms: 1_000_500,
            wait: Duration::from_millis(200),
            plugin_fault: false,
            host_busy: false,
            fallback: false,
        }
    }

    fn retry(after_ms: Option<u64>) -> Outcome {
        Outcome::Retry(RetryInfo {
            reason: "503".into(),
            after_ms,
        })
    }

    #[test]
    fn answers_are_final_and_fall_back_only_where_a_fallback_applies() {
        assert_eq!(
            decide(&Outcome::Delivered("id".into()), &facts(1), &POLICY),
            Decision::Delivered
        );
        let rejected = Outcome::Rejected(Rejection {
            code: "400".into(),
            reason: "bad".into(),
        });
        assert_eq!(
            decide(&rejected, &facts(1), &POLICY),
            Decision::Rejected { fall_back: false }
        );
        let with_fallback = Facts {
            fallback: true,
            ..facts(1)
        };
        assert_eq!(
            decide(&rejected, &with_fallback, &POLICY),
            Decision::Rejected { fall_back: true }
        );
        assert_eq!(
            decide(
                &Outcome::InvalidRecipient("gone".into()),
                &with_fallback,
                &POLICY
            ),
            Decision::InvalidRecipient { fall_back: true }
        );
    }

    #[test]
    fn a_retry_is_due_after_its_wait_as_the_next_attempt() {
        assert_eq!(
            decide(&retry(None), &facts(1), &POLICY),
            Decision::Retry {
                due_at_ms: 1_000_700,
                attempt: 2
            }
        );
    }

    #[test]
    fn the_last_attempt_gives_up_by_whose_fault_it_was() {
        assert_eq!(
            decide(&retry(None), &facts(3), &POLICY),
            Decision::GiveUp {
                class: ReasonClass::AttemptsExhausted
            }
        );
        let fault = Facts {
            plugin_fault: true,
            ..facts(3)
        };
        assert_eq!(
            decide(&retry(None), &fault, &POLICY),
            Decision::GiveUp {
                class: ReasonClass::PluginFault
            }
        );
    }

    #[test]
    fn a_retry_due_past_give_up_after_expires_whatever_its_attempt() {
        let late = Facts {
            wait: Duration::from_secs(60),
            ..facts(1)
        };
        assert_eq!(
            decide(&retry(None), &late, &POLICY),
            Decision::GiveUp {
                class: ReasonClass::Expired
            }
        );
    }

    #[test]
    fn a_call_the_host_had_no_slot_for_takes_no_attempt() {
        let busy = Facts {
            host_busy: true,
            plugin_fault: true,
            ..facts(3)
        };
        assert_eq!(
            decide(&retry(None), &busy, &POLICY),
            Decision::Retry {
                due_at_ms: 1_000_700,
                attempt: 3
            }
        );
        let busy_and_late = Facts {
            wait: Duration::from_secs(61),
            ..busy
        };
        assert_eq!(
            decide(&retry(None), &busy_and_late, &POLICY),
            Decision::GiveUp {
                class: ReasonClass::Expired
            },
            "give_up_after still bounds it"
        );
    }

    #[test]
    fn only_the_vendors_retry_after_holds_the_vendor() {
        assert_eq!(
            vendor_hold(&retry(Some(1500)), false),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(vendor_hold(&retry(Some(1500)), true), None);
        assert_eq!(vendor_hold(&retry(None), false), None);
        assert_eq!(vendor_hold(&Outcome::Delivered(String::new()), false), None);
    }
}
