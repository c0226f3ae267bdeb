//! What the relay expects back from the server for the messages it sent, and what each server
//! message means against those expectations. Sans I/O: [`Expectations::take`] decides, the loop
//! in `relay.rs` sends, flushes and releases; the scripted exchanges in the tests below are the
//! relay's contract with the server.

use std::collections::VecDeque;

use super::codec;

/// One message sent to the server (or answered by homeport itself) whose response is pending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expect {
    /// The client's Parse of the unnamed statement.
    Parse,
    /// The client's Parse of a named statement, under its server name (in `parsed_now`).
    ParseNamed,
    Bind,
    Describe,
    Execute,
    ClosePortal,
    Sync,
    /// A Parse homeport injected: its ParseComplete is not the client's.
    Swallow,
    /// A Parse the server already has: homeport answers ParseComplete itself.
    SynthParse,
    /// A statement Close: homeport keeps the server's copy and answers CloseComplete itself.
    SynthClose,
    /// homeport's commit-position query behind a write: its answer is homeport's own.
    Position,
    /// A Close of a statement homeport evicted from the server: its CloseComplete is homeport's.
    Evict,
    /// The session's settings ahead of a transaction behind a pooler (`txn_pooler.rs`): every
    /// answer up to its CommandComplete is homeport's.
    Prefix,
}

/// What the relay does with one server message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// To the client.
    Forward,
    /// homeport's own answer: not the client's.
    Drop,
    /// A ParseComplete of a statement homeport named (`parsed_now`'s front is confirmed);
    /// `forward`: the client asked for it.
    Parsed { forward: bool },
    /// A row of homeport's position query: the commit position.
    Position,
    /// The position query is answered: the client's held ReadyForQuery may go.
    PositionDone,
    /// An ErrorResponse that ends the server session (FATAL, PANIC).
    Fatal,
    /// An ErrorResponse: the server skips to the next Sync, and so do the expectations.
    Error,
    /// The client's ReadyForQuery.
    Ready,
    /// CopyInResponse: the client's CopyData goes to the server next.
    CopyIn,
}

/// The responses still owed by the server, in order.
#[derive(Debug)]
pub(super) struct Expectations {
    queue: VecDeque<Expect>,
}

impl From<VecDeque<Expect>> for Expectations {
    fn from(queue: VecDeque<Expect>) -> Self {
        Expectations { queue }
    }
}

impl Expectations {
    pub(super) fn push(&mut self, e: Expect) {
        self.queue.push_back(e);
    }

    pub(super) fn front(&self) -> Option<Expect> {
        self.queue.front().copied()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// After an error the server ignores everything up to the next Sync: so does the relay.
    pub(super) fn skip_to_sync(&mut self) {
        while self.queue.front().is_some_and(|e| *e != Expect::Sync) {
            self.queue.pop_front();
        }
    }

    /// The answer homeport gives itself for the front expectation (ParseComplete of a statement
    /// the server has, CloseComplete of one it keeps), if it is one of those.
    pub(super) fn synthesized(&mut self) -> Option<u8> {
        let tag = match self.queue.front()? {
            Expect::SynthParse => b'1',
            Expect::SynthClose => b'3',
            _ => return None,
        };
        self.queue.pop_front();
        Some(tag)
    }

    /// Takes one server message: what to do with it, with the expectations it meets removed.
    pub(super) fn take(&mut self, tag: u8, body: &[u8]) -> Step {
        let front = self.queue.front().copied();
        match front {
            Some(Expect::Position) => {
                return match tag {
                    b'A' => Step::Forward,
                    b'D' => Step::Position,
                    b'Z' => {
                        self.queue.pop_front();
                        Step::PositionDone
                    }
                    // Row description, command tag, a notice, or an error (failed transaction).
                    _ => Step::Drop,
                };
            }
            Some(Expect::Prefix) if !matches!(tag, b'E' | b'N' | b'S' | b'A' | b'Z') => {
                if tag == b'C' {
                    self.queue.pop_front();
                }
                return Step::Drop;
            }
            _ => {}
        }
        match tag {
            b'N' | b'S' | b'A' => Step::Forward,
            b'E' if is_fatal(body) => Step::Fatal,
            b'E' => {
                self.skip_to_sync();
                Step::Error
            }
            b'Z' => {
                self.queue.pop_front();
                Step::Ready
            }
            b'1' if front == Some(Expect::Swallow) => {
                self.queue.pop_front();
                Step::Parsed { forward: false }
            }
            b'1' if front == Some(Expect::ParseNamed) => {
                self.queue.pop_front();
                Step::Parsed { forward: true }
            }
            b'3' if front == Some(Expect::Evict) => {
                self.queue.pop_front();
                Step::Drop
            }
            b'G' => Step::CopyIn,
            tag => {
                if front.is_some_and(|f| terminal(f, tag)) {
                    self.queue.pop_front();
                }
                Step::Forward
            }
        }
    }
}

/// Whether an ErrorResponse ends the session (severity FATAL or PANIC).
pub(super) fn is_fatal(body: &[u8]) -> bool {
    let severity = codec::field(body, b'V').or_else(|| codec::field(body, b'S'));
    matches!(severity.as_deref(), Some("FATAL" | "PANIC"))
}

/// Whether `tag` is the last response to a message of kind `e`.
fn terminal(e: Expect, tag: u8) -> bool {
    match e {
        Expect::Parse | Expect::ParseNamed | Expect::Swallow => tag == b'1',
        Expect::Bind => tag == b'2',
        Expect::Describe => matches!(tag, b'T' | b'n'),
        Expect::Execute => matches!(tag, b'C' | b'I' | b's'),
        Expect::ClosePortal => tag == b'3',
        Expect::Sync => tag == b'Z',
        Expect::Evict => tag == b'3',
        Expect::Prefix => tag == b'C',
        Expect::SynthParse | Expect::SynthClose | Expect::Position => false,
    }
}

#[cfg(test)]
mod tests {
    use super::Expect::*;
    use super::*;

    fn error(severity: &str) -> Vec<u8> {
        codec::error_response(severity, "XX000", "boom")
            .body
            .to_vec()
    }

    /// Plays a scripted server against `sent`: the step for each message, what the client is
    /// sent (homeport's own answers and forwarded ones, by tag), and what is still expected.
    fn script(sent: &[Expect], server: &[(u8, &[u8])]) -> (Vec<Step>, String, Vec<Expect>) {
        let mut e = Expectations::from(sent.iter().copied().collect::<VecDeque<_>>());
        let (mut steps, mut client) = (Vec::new(), String::new());
        for (tag, body) in server {
            while let Some(t) = e.synthesized() {
                client.push(t as char);
            }
            let step = e.take(*tag, body);
            if matches!(
                step,
                Step::Forward
                    | Step::Parsed { forward: true }
                    | Step::Fatal
                    | Step::Error
                    | Step::Ready
                    | Step::CopyIn
            ) {
                client.push(*tag as char);
            }
            steps.push(step);
        }
        while let Some(t) = e.synthesized() {
            client.push(t as char);
        }
        (steps, client, e.queue.into_iter().collect())
    }

    #[test]
    fn an_injected_parse_is_swallowed_and_the_rest_relayed() {
        let (steps, client, left) = script(
            &[Swallow, Bind, Execute, Sync],
            &[
                (b'1', b""),
                (b'2', b""),
                (b'D', b""),
                (b'C', b""),
                (b'Z', b"I"),
            ],
        );
        assert_eq!(steps[0], Step::Parsed { forward: false });
        assert_eq!(client, "2DCZ");
        assert!(left.is_empty());
    }

    #[test]
    fn statements_the_server_has_are_answered_by_homeport_in_order() {
        let (_, client, left) = script(
            &[SynthParse, Bind, Execute, SynthClose, Sync],
            &[(b'2', b""), (b'C', b""), (b'Z', b"I")],
        );
        assert_eq!(client, "12C3Z");
        assert!(left.is_empty());
    }

    #[test]
    fn an_error_skips_the_rest_of_the_batch_up_to_its_sync() {
        let (steps, client, left) = script(
            &[ParseNamed, Bind, Describe, Execute, Sync],
            &[(b'1', b""), (b'E', &error("ERROR")), (b'Z', b"E")],
        );
        assert_eq!(
            steps,
            [Step::Parsed { forward: true }, Step::Error, Step::Ready]
        );
        assert_eq!(client, "1EZ");
        assert!(left.is_empty());
    }

    #[test]
    fn a_fatal_error_is_told_apart() {
        let (steps, _, _) = script(&[Execute, Sync], &[(b'E', &error("FATAL"))]);
        assert_eq!(steps, [Step::Fatal]);
        let (steps, _, _) = script(&[Execute, Sync], &[(b'E', &error("PANIC"))]);
        assert_eq!(steps, [Step::Fatal]);
    }

    #[test]
    fn the_position_query_behind_a_write_is_homeports_own() {
        // The write's answers, its ReadyForQuery (held by the relay), then the position query's.
        let (steps, client, left) = script(
            &[Execute, Sync, Position],
            &[
                (b'C', b""),
                (b'Z', b"I"),
                (b'T', b""),
                (b'N', b""),
                (b'D', b""),
                (b'C', b""),
                (b'A', b""),
                (b'Z', b"I"),
            ],
        );
        assert_eq!(
            steps,
            [
                Step::Forward,
                Step::Ready,
                Step::Drop,
                Step::Drop,
                Step::Position,
                Step::Drop,
                Step::Forward,
                Step::PositionDone
            ]
        );
        assert_eq!(client, "CZA", "a notification still reaches the client");
        assert!(left.is_empty());
    }

    #[test]
    fn a_settings_prefix_is_hidden_up_to_its_command_tag_but_not_its_errors() {
        let (_, client, left) = script(
            &[Prefix, Bind, Execute, Sync],
            &[
                (b'1', b""),
                (b'2', b""),
                (b'T', b""),
                (b'D', b""),
                (b'C', b""),
                (b'2', b""),
                (b'C', b""),
                (b'Z', b"I"),
            ],
        );
        assert_eq!(client, "2CZ");
        assert!(left.is_empty());
        let (steps, client, _) = script(
            &[Prefix, Bind, Execute, Sync],
            &[(b'E', &error("ERROR")), (b'Z', b"I")],
        );
        assert_eq!(steps, [Step::Error, Step::Ready]);
        assert_eq!(client, "EZ");
    }

    #[test]
    fn an_evicted_statements_close_is_dropped_and_a_portals_relayed() {
        let (_, client, left) = script(
            &[Evict, ClosePortal, Sync],
            &[(b'3', b""), (b'3', b""), (b'Z', b"I")],
        );
        assert_eq!(client, "3Z");
        assert!(left.is_empty());
    }

    #[test]
    fn copy_in_and_partial_results_keep_their_expectations() {
        let (steps, _, left) = script(&[Execute, Sync], &[(b'G', b"")]);
        assert_eq!(steps, [Step::CopyIn]);
        assert_eq!(left, [Execute, Sync], "COPY ends with the Execute's tag");
        // A portal run with a row limit ends with PortalSuspended; notices pass any time.
        let (_, client, left) = script(
            &[Execute, Sync],
            &[(b'D', b""), (b'N', b""), (b's', b""), (b'Z', b"T")],
        );
        assert_eq!(client, "DNsZ");
        assert!(left.is_empty());
    }
}
