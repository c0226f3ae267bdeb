//! The rest of a large `/v1/query` result, sent as it arrives (chunked transfer encoding).
//!
//! The stream owns the server connection and the row stream. hyper polls it only when the
//! client's socket can take more, and tokio-postgres stops reading from the server while a row
//! waits to be taken, so a slow client slows the server down instead of filling memory: what is
//! held per request is one chunk of JSON ([`CHUNK`]) plus the socket buffers.
//!
//! The status line and headers were sent before the first chunk, so a failure after it (a
//! statement error, a limit, the server going down) ends the JSON object with an `error` member
//! (see `encode`). If the client goes away, or a limit ends the stream, the statement is
//! cancelled and the connection closed rather than pooled (see `execute`).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use deadpool_postgres::Object;
use futures_util::{Stream, StreamExt};
use hyper::body::Frame;
use tokio_postgres::RowStream;

use super::encode::ResultJson;
use super::execute::{Exec, Stop};
use super::problem::Problem;
use crate::db::DbError;
use crate::topology::Topology;

/// A chunk is sent once this many bytes of JSON are ready.
pub const CHUNK: usize = 32 << 10;

type Frames = Pin<Box<dyn Stream<Item = Result<Frame<Bytes>, Infallible>> + Send>>;

/// Watches the endpoint a stream reads from: when the probes find it down, the stream ends
/// instead of waiting for rows that will not come (what `App::while_up` does for the rest).
pub struct Down {
    topology: Arc<Topology>,
    index: usize,
    poll: Duration,
}

impl Down {
    pub fn new(app: &crate::app::App, index: usize) -> Down {
        Down {
            topology: app.topology.clone(),
            index,
            poll: app.config.probe.interval.min(Duration::from_millis(250)),
        }
    }
}

/// The body of a streamed result.
pub struct ResultStream {
    frames: Frames,
}

impl ResultStream {
    pub fn new(
        client: Object,
        rows: Pin<Box<RowStream>>,
        json: ResultJson,
        exec: Exec,
        command: &str,
        down: Down,
    ) -> ResultStream {
        let state = State {
            client: Some(client),
            rows,
            json,
            exec,
            command: command.to_string(),
            down: Box::pin(async move { down.topology.down(down.index, down.poll).await }),
            done: false,
        };
        ResultStream {
            frames: futures_util::stream::unfold(state, State::next_chunk).boxed(),
        }
    }
}

impl Stream for ResultStream {
    type Item = Result<Frame<Bytes>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.frames.as_mut().poll_next(cx)
    }
}

struct State {
    /// The connection the rows come from; `None` once it was closed.
    client: Option<Object>,
    rows: Pin<Box<RowStream>>,
    json: ResultJson,
    exec: Exec,
    command: String,
    down: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// The JSON object is closed: nothing more comes from the server.
    done: bool,
}

impl State {
    async fn next_chunk(mut self) -> Option<(Result<Frame<Bytes>, Infallible>, State)> {
        loop {
            if self.json.held() >= CHUNK || (self.done && self.json.held() > 0) {
                let chunk = self.json.take();
                return Some((Ok(Frame::data(chunk)), self));
            }
            if self.done {
                return None;
            }
            let next = tokio::select! {
                biased;
                row = self.rows.next() => row,
                () = &mut self.down => {
                    let lost = DbError::Lost {
                        endpoint: self.exec.endpoint.clone(),
                        reason: "the probes found the server unreachable while rows were streaming".into(),
                    };
                    self.abandon().await;
                    self.fail(lost);
                    continue;
                }
            };
            match next {
                Some(Ok(row)) => match self.exec.admit(&mut self.json, &row) {
                    Ok(None) => {}
                    Ok(Some(Stop::Page)) => {
                        self.abandon().await;
                        let rows = self.json.rows();
                        self.json.end(&self.command, rows, true);
                        self.done = true;
                    }
                    Ok(Some(stop)) => {
                        self.abandon().await;
                        let e = self.exec.stop_error(stop, None);
                        self.fail(e);
                    }
                    Err(e) => {
                        self.abandon().await;
                        self.fail(e);
                    }
                },
                // The server ended the statement with an error; the connection is fine.
                Some(Err(e)) => {
                    let e = DbError::from_pg(&self.exec.endpoint, e);
                    self.fail(e);
                }
                None => {
                    let rows = self.json.rows();
                    let row_count = self.rows.rows_affected().unwrap_or(rows);
                    self.json.end(&self.command, row_count, false);
                    self.done = true;
                }
            }
        }
    }

    /// Ends the JSON object with `e` as its `error` member.
    fn fail(&mut self, e: DbError) {
        self.json.end_with_error(&Problem::from(e).body());
        self.done = true;
    }

    /// Cancels the statement and closes its connection.
    async fn abandon(&mut self) {
        self.exec.cancel().await;
        if let Some(client) = self.client.take() {
            self.exec.release(client);
        }
    }
}

impl Drop for State {
    /// The client went away before the end: cancel the statement, close the connection.
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let canceller = self.exec.canceller();
            runtime.spawn(async move { canceller.cancel().await });
        }
        if let Some(client) = self.client.take() {
            drop(Object::take(client));
        }
    }
}
