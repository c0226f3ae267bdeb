//! Health with hysteresis: an endpoint goes down after `fall` consecutive failed probes and comes
//! back after `rise` consecutive good ones, so one slow probe does not flap routing. The first
//! probe result decides the initial state. Pure state machine, unit-tested below.

use std::time::Duration;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Health {
    /// Whether any probe has completed yet.
    pub probed: bool,
    pub up: bool,
    ok_streak: u32,
    fail_streak: u32,
}

impl Health {
    /// The health another sidecar published (`share`): it already applied the hysteresis.
    pub fn published(up: bool) -> Health {
        Health {
            probed: true,
            up,
            ok_streak: 0,
            fail_streak: 0,
        }
    }

    pub fn observe(mut self, ok: bool, rise: u32, fall: u32) -> Health {
        if ok {
            self.ok_streak += 1;
            self.fail_streak = 0;
            if !self.probed || self.ok_streak >= rise {
                self.up = true;
            }
        } else {
            self.fail_streak += 1;
            self.ok_streak = 0;
            if !self.probed || self.fail_streak >= fall {
                self.up = false;
            }
        }
        self.probed = true;
        self
    }
}

/// Exponentially weighted moving average of round-trip times; the first sample sets it.
pub fn smooth_rtt(previous: Option<Duration>, sample: Duration) -> Duration {
    match previous {
        None => sample,
        Some(p) => p.mul_f64(0.7) + sample.mul_f64(0.3),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(results: &[bool], rise: u32, fall: u32) -> Vec<bool> {
        let mut h = Health::default();
        results
            .iter()
            .map(|ok| {
                h = h.observe(*ok, rise, fall);
                h.up
            })
            .collect()
    }

    #[test]
    fn first_probe_decides() {
        assert_eq!(run(&[true], 3, 3), [true]);
        assert_eq!(run(&[false], 3, 3), [false]);
    }

    #[test]
    fn one_failure_does_not_flap() {
        assert_eq!(run(&[true, false, true, false, true], 2, 2), [true; 5]);
    }

    #[test]
    fn goes_down_after_fall_and_up_after_rise() {
        assert_eq!(
            run(&[true, false, false, false, true, true, true], 2, 2),
            [true, true, false, false, false, true, true]
        );
    }

    #[test]
    fn rtt_is_smoothed() {
        let ms = Duration::from_millis;
        assert_eq!(smooth_rtt(None, ms(10)), ms(10));
        let s = smooth_rtt(Some(ms(10)), ms(110));
        assert!(s > ms(35) && s < ms(45), "{s:?}");
    }
}
