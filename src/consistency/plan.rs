//! The read plan: which copy a read tries next, whether it must ask that copy first, how long it
//! may wait, and why it left the nearest copy. Both front ends drive it (`http::ryw`,
//! `pgwire::consistency`); it does no I/O and reads no clock, so its decisions are table-tested.
//!
//! A read that carries a token position may run on a copy the probes saw at or past the position
//! at once. A copy on the same history but behind is asked the replay check (`sql.rs`) first,
//! every [`POLL`] until `consistency.max_wait` has passed since the plan started (one budget for
//! the whole read, not per copy), then the next copy; the primary always qualifies unless the
//! token is from another cluster, which is an error. A copy that cannot prove it has the write
//! (another timeline), or that lags by more than the whole wait, is passed over without a
//! connection. A staleness bound keeps only the copies within it (primaries always).
//!
//! A driver loops: `next_attempt()` gives an [`Attempt`]; it takes a connection to the copy, sends the
//! attempt's check if it has a [`Wait`] (pipelined with the read, or before it) and, while the
//! copy says "not yet", asks again after what `Wait::retry` answers; it reports an [`Outcome`]
//! for the attempt. At the end `report()` names what to count.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::ryw::{
    Eligibility, foreign_message, foreign_system, replica_eligibility, worth_waiting,
};
use super::token::Position;
use crate::routing::{Candidate, Target};
use crate::topology::Snapshot;
use crate::types::Lsn;

/// How often a read waiting for a lagging replica asks it again.
pub const POLL: Duration = Duration::from_millis(5);

/// What a read must satisfy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    /// The token's position on the read's shard, if it carries one.
    pub position: Option<Position>,
    /// At most this stale (`Homeport-Max-Staleness-Ms`, `SET homeport.max_staleness`).
    pub max_staleness: Option<Duration>,
    /// `consistency.max_wait`: the longest the read waits, in all, for copies to catch up.
    pub max_wait: Duration,
}

/// The token came from another database cluster: no copy here can be shown to have its write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ForeignToken(String);

/// A copy to ask the replay check before the read, until the read's deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wait {
    lsn: Lsn,
    deadline: Instant,
}

impl Wait {
    /// The check to send (`sql.rs`).
    pub fn check_sql(self) -> String {
        super::sql::replay_check_sql(self.lsn)
    }

    /// The copy said "not yet" at `now`: ask again after this long, or `None` to give up on it
    /// (then report [`Outcome::TimedOut`]).
    pub fn retry(self, now: Instant) -> Option<Duration> {
        (now + POLL <= self.deadline).then_some(POLL)
    }
}

/// The next copy to try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    pub candidate: Candidate,
    /// `None`: the copy is known to qualify, read at once. `Some`: ask it first.
    pub wait: Option<Wait>,
}

/// How an attempt that did not serve the read ended; then call `next_attempt()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// No connection to the copy, or it broke.
    Unavailable,
    /// It had not replayed the position when `Wait::retry` gave up.
    TimedOut,
}

/// Why a read left its nearest copy, as `homeport_ryw_fallbacks_total{reason}` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Another timeline or cluster: the copy cannot prove it has the write.
    History,
    /// Its measured lag is longer than the whole wait.
    Lagging,
    /// It did not replay the position within the wait.
    Timeout,
    /// No connection, or the connection broke.
    Unavailable,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::History => "history",
            Reason::Lagging => "lagging",
            Reason::Timeout => "timeout",
            Reason::Unavailable => "unavailable",
        }
    }
}

/// What to count once the read is over: one fallback per read (the first reason a copy was
/// passed over, and where the read finally ran: `primary`, `replica` or `none`), and the time a
/// served read spent getting there. Only reads that carry a position count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Report {
    pub fallback: Option<(&'static str, &'static str)>,
    pub waited: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Ready,
    Wait,
    Skip(Reason),
}

#[derive(Debug)]
pub struct ReadPlan {
    steps: VecDeque<(Candidate, Step)>,
    position: Option<Position>,
    started: Instant,
    deadline: Instant,
    current: Option<Candidate>,
    first_reason: Option<Reason>,
    ran_on: Option<Target>,
}

impl ReadPlan {
    /// A plan over `candidates` (nearest first) as the probes last saw them in `snapshot`.
    pub fn new(
        snapshot: &Snapshot,
        candidates: &[Candidate],
        need: &Need,
        now: Instant,
    ) -> Result<ReadPlan, ForeignToken> {
        let within;
        let candidates = match need.max_staleness {
            Some(max) => {
                within = super::staleness::within(snapshot, candidates, max, now);
                &within[..]
            }
            None => candidates,
        };
        if let Some(required) = &need.position
            && let Some(here) = foreign_system(snapshot, candidates, required)
        {
            return Err(ForeignToken(foreign_message(required.system_id, here)));
        }
        let steps = candidates
            .iter()
            .map(|c| {
                let status = &snapshot.get(c.index).status;
                let step = match &need.position {
                    None => Step::Ready,
                    // The write committed on the primary, or on its predecessor whose history it
                    // continues; `foreign_system` has ruled out another cluster.
                    Some(_) if c.target == Target::Primary => Step::Ready,
                    Some(required) => match replica_eligibility(status, required) {
                        Eligibility::Now => Step::Ready,
                        Eligibility::NotYet if worth_waiting(status, need.max_wait) => Step::Wait,
                        Eligibility::NotYet => Step::Skip(Reason::Lagging),
                        Eligibility::Never => Step::Skip(Reason::History),
                    },
                };
                (*c, step)
            })
            .collect();
        Ok(ReadPlan {
            steps,
            position: need.position,
            started: now,
            deadline: now + need.max_wait,
            current: None,
            first_reason: None,
            ran_on: None,
        })
    }

    /// The next copy to try, or `None` when none is left.
    pub fn next_attempt(&mut self) -> Option<Attempt> {
        while let Some((candidate, step)) = self.steps.pop_front() {
            let wait = match step {
                Step::Skip(reason) => {
                    self.passed_over(reason);
                    continue;
                }
                Step::Ready => None,
                Step::Wait => self.position.map(|p| Wait {
                    lsn: p.lsn,
                    deadline: self.deadline,
                }),
            };
            self.current = Some(candidate);
            return Some(Attempt { candidate, wait });
        }
        self.current = None;
        None
    }

    /// The current attempt's copy served the read.
    pub fn served(&mut self) {
        self.ran_on = self.current.map(|c| c.target);
    }

    /// The current attempt's copy did not serve it.
    pub fn failed(&mut self, outcome: Outcome) {
        self.passed_over(match outcome {
            Outcome::Unavailable => Reason::Unavailable,
            Outcome::TimedOut => Reason::Timeout,
        });
    }

    /// What to count, at `now`, once the read ran or no copy was left.
    pub fn report(&self, now: Instant) -> Report {
        if self.position.is_none() {
            return Report::default();
        }
        let fallback = self.first_reason.map(|reason| {
            let target = match self.ran_on {
                Some(Target::Primary) => "primary",
                Some(Target::LocalReplica | Target::RemoteReplica) => "replica",
                None => "none",
            };
            (reason.as_str(), target)
        });
        let waited = self
            .ran_on
            .map(|_| now.saturating_duration_since(self.started));
        Report { fallback, waited }
    }

    fn passed_over(&mut self, reason: Reason) {
        self.first_reason.get_or_insert(reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::{EndpointStatus, EndpointView};

    const WAIT: Duration = Duration::from_millis(50);

    fn need(lsn: u64) -> Need {
        Need {
            position: Some(Position {
                system_id: 1,
                timeline: 1,
                lsn: Lsn(lsn),
            }),
            max_staleness: None,
            max_wait: WAIT,
        }
    }

    /// A copy as the probes saw it: its target, timeline, replayed position and lag (ms).
    type Copy = (Target, u32, u64, Option<u64>);

    fn setup(copies: &[Copy], now: Instant) -> (Snapshot, Vec<Candidate>) {
        let endpoints = copies
            .iter()
            .enumerate()
            .map(|(index, (_, timeline, lsn, lag))| {
                EndpointView::for_tests(
                    index,
                    EndpointStatus {
                        system_id: Some(1),
                        timeline: Some(*timeline),
                        wal_lsn: Some(Lsn(*lsn)),
                        lag: lag.map(Duration::from_millis),
                        last_ok: Some(now),
                        ..Default::default()
                    },
                )
            })
            .collect();
        let candidates = copies
            .iter()
            .enumerate()
            .map(|(index, c)| Candidate { index, target: c.0 })
            .collect();
        (Snapshot { endpoints }, candidates)
    }

    const LOCAL: Target = Target::LocalReplica;
    const REMOTE: Target = Target::RemoteReplica;
    const PRIMARY: Target = Target::Primary;

    /// What a scripted copy does at `ms` after the start.
    #[derive(Clone, Copy, PartialEq)]
    enum Does {
        /// Serves the read.
        Ok_,
        /// Says "not yet".
        No,
        /// Cannot be reached.
        Down,
    }
    use Does::{Down, No, Ok_};

    /// Drives a plan as the front ends do, with a script of what the copies do. Returns the
    /// attempts made as (index, asked first) and the report.
    fn drive(copies: &[Copy], need: Need, script: &[(Does, u64)]) -> (Vec<(usize, bool)>, Report) {
        let start = Instant::now();
        let (snapshot, candidates) = setup(copies, start);
        let mut plan = ReadPlan::new(&snapshot, &candidates, &need, start).unwrap();
        let mut script = script.iter();
        let mut tried = Vec::new();
        let mut last = start;
        'copies: while let Some(a) = plan.next_attempt() {
            tried.push((a.candidate.index, a.wait.is_some()));
            for (does, ms) in script.by_ref() {
                last = start + Duration::from_millis(*ms);
                match does {
                    Ok_ => {
                        plan.served();
                        break 'copies;
                    }
                    Down => {
                        plan.failed(Outcome::Unavailable);
                        continue 'copies;
                    }
                    No => match a
                        .wait
                        .expect("only a waited-for copy says not yet")
                        .retry(last)
                    {
                        Some(after) => assert_eq!(after, POLL),
                        None => {
                            plan.failed(Outcome::TimedOut);
                            continue 'copies;
                        }
                    },
                }
            }
            panic!("script ran out at copy {}", a.candidate.index);
        }
        (tried, plan.report(last))
    }

    #[test]
    fn attempts_and_fallbacks_follow_the_table() {
        #[allow(clippy::type_complexity)]
        let cases: &[(
            &str,
            &[Copy],
            &[(Does, u64)],
            &[(usize, bool)],
            Option<(&str, &str)>,
        )] = &[
            (
                "a replica seen at the position serves at once",
                &[(LOCAL, 1, 100, None), (PRIMARY, 1, 500, None)],
                &[(Ok_, 1)],
                &[(0, false)],
                None,
            ),
            (
                "a replica behind is asked, and serves once it has replayed",
                &[(LOCAL, 1, 50, Some(10)), (PRIMARY, 1, 500, None)],
                &[(No, 1), (No, 6), (Ok_, 11)],
                &[(0, true)],
                None,
            ),
            (
                "a replica that never gets there times out; the primary serves",
                &[(LOCAL, 1, 50, Some(10)), (PRIMARY, 1, 500, None)],
                &[(No, 10), (No, 46), (Ok_, 47)],
                &[(0, true), (1, false)],
                Some(("timeout", "primary")),
            ),
            (
                "another timeline is history, a long lag is lagging: neither is tried",
                &[
                    (LOCAL, 2, 900, None),
                    (REMOTE, 1, 50, Some(200)),
                    (PRIMARY, 1, 500, None),
                ],
                &[(Ok_, 0)],
                &[(2, false)],
                Some(("history", "primary")),
            ),
            (
                "an unreachable copy is passed over; the next replica serves",
                &[
                    (LOCAL, 1, 100, None),
                    (REMOTE, 1, 100, None),
                    (PRIMARY, 1, 500, None),
                ],
                &[(Down, 0), (Ok_, 1)],
                &[(0, false), (1, false)],
                Some(("unavailable", "replica")),
            ),
            (
                "the first reason counts, and a read no copy served is counted as none",
                &[(LOCAL, 1, 50, Some(10)), (PRIMARY, 1, 500, None)],
                &[(No, 49), (Down, 50)],
                &[(0, true), (1, false)],
                Some(("timeout", "none")),
            ),
        ];
        for (name, copies, script, tried, fallback) in cases {
            let (got, report) = drive(copies, need(100), script);
            assert_eq!(&got[..], *tried, "{name}");
            assert_eq!(report.fallback, *fallback, "{name}");
            let served = script.last().is_some_and(|(d, _)| *d == Ok_);
            assert_eq!(report.waited.is_some(), served, "{name}");
        }
    }

    #[test]
    fn the_wait_is_one_budget_for_the_whole_read() {
        // Two lagging replicas: the second gets what the first left of max_wait, not a new one.
        let copies = [
            (LOCAL, 1, 50, Some(10)),
            (REMOTE, 1, 50, Some(10)),
            (PRIMARY, 1, 500, None),
        ];
        let script = [(No, 40), (No, 46), (No, 47), (Ok_, 48)];
        let (tried, report) = drive(&copies, need(100), &script);
        assert_eq!(tried, [(0, true), (1, true), (2, false)]);
        assert_eq!(report.fallback, Some(("timeout", "primary")));
        assert_eq!(report.waited, Some(Duration::from_millis(48)));
    }

    #[test]
    fn without_a_position_every_copy_qualifies_and_nothing_is_counted() {
        let copies = [(LOCAL, 2, 0, Some(999)), (PRIMARY, 1, 500, None)];
        let no_token = Need {
            position: None,
            ..need(0)
        };
        let (tried, report) = drive(&copies, no_token, &[(Down, 0), (Ok_, 1)]);
        assert_eq!(tried, [(0, false), (1, false)]);
        assert_eq!(report, Report::default());
    }

    #[test]
    fn a_staleness_bound_keeps_fresh_copies_and_the_primary() {
        let copies = [
            (LOCAL, 1, 100, Some(900)),
            (REMOTE, 1, 100, Some(100)),
            (PRIMARY, 1, 500, None),
        ];
        let bounded = Need {
            max_staleness: Some(Duration::from_millis(500)),
            ..need(100)
        };
        let (tried, _) = drive(&copies, bounded, &[(Down, 0), (Ok_, 1)]);
        assert_eq!(tried, [(1, false), (2, false)]);
    }

    #[test]
    fn a_token_from_another_cluster_is_refused() {
        let now = Instant::now();
        let (mut snapshot, candidates) = setup(&[(PRIMARY, 1, 500, None)], now);
        snapshot.endpoints[0].status.system_id = Some(7);
        let e = ReadPlan::new(&snapshot, &candidates, &need(100), now).unwrap_err();
        assert!(e.to_string().contains("another database cluster"), "{e}");
    }

    #[test]
    fn the_check_asks_for_the_tokens_position() {
        let now = Instant::now();
        let (snapshot, candidates) = setup(&[(LOCAL, 1, 50, None)], now);
        let mut plan = ReadPlan::new(&snapshot, &candidates, &need(0x100), now).unwrap();
        let wait = plan.next_attempt().and_then(|a| a.wait).unwrap();
        assert_eq!(
            wait.check_sql(),
            "SELECT pg_last_wal_replay_lsn() >= '0/100'::pg_lsn"
        );
    }
}
