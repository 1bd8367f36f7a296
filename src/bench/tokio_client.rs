//! The measuring client of `msgr bench --api tokio` (and `both`): the round trips of the
//! callback client ([`cli::ping`](crate::cli::ping)), driven through the async API
//! ([`msgr::tokio::AsyncMessenger`]) from a tokio runtime, so the two APIs are measured
//! in the same run against the same server.
//!
//! Per job, as for the callback client: one messenger, `--conns-per-job` connections,
//! `depth` MPings in flight on each, the same requests (`cli`'s `PingShape`: fixed
//! payloads, numbered and checksummed with `--verify`, a reply size asked for with
//! `--reply-size`),
//! the same stop rule (no new ping after the deadline or once `count` are sent; those
//! in flight are waited for) and the same [`PingReport`], so both kinds of round go
//! through the same aggregation and the same row code. The differences are the API's
//! own:
//!
//! - *In flight*: `depth` tasks per job ("lanes"), each looping request → await →
//!   record. A lane sends its next ping from a tokio worker once its reply has woken it,
//!   where the callback client sends it from the messenger's worker inside fast
//!   dispatch; the hand-over to the task and the send from another thread are what the
//!   async API costs, and what its rows show.
//! - *Matching replies*: [`AsyncMessenger::request`] gives each ping a fresh `tid` and
//!   resolves with the reply carrying it on the same connection. The bench server's
//!   echo (`cli`'s `EchoDispatcher`) keeps every field of the request but `seq` and
//!   `src`, so the `tid` comes back with the payload. The callback client matches by
//!   order instead (its replies come back in order on one connection); each reply is
//!   still checked against what was sent, as the callback client checks it.
//! - *Round-trip time*: from just before `request` to the moment the awaiting lane runs
//!   again, so it includes the task's wake-up; the callback client stops its clock on
//!   the worker that read the reply. Either is the latency its API's user sees.
//!
//! The runtime is created once per `msgr bench` run ([`TokioClient::new`]) with one
//! worker thread per job, and drives every tokio round of the run, warm-ups included.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use msgr::config::Config;
use msgr::message::Message;
use msgr::messenger::{ConnEvent, ConnectionRef, Policy};
use msgr::proto::{EntityAddr, EntityAddrVec, EntityName, EntityType};
use msgr::tokio::{AsyncMessenger, EventStream, RequestError};

use crate::cli::{CliError, CommonArgs, PingOptions, PingReport, PingShape};

/// How long a lane waits before dialling again after its session was lost, so a
/// restarting server is not hammered (the callback client waits as long).
const REDIAL_PAUSE: Duration = Duration::from_millis(50);

/// The tokio runtime the tokio rounds of one `msgr bench` run share.
pub struct TokioClient {
    rt: ::tokio::runtime::Runtime,
}

impl TokioClient {
    /// A multi-thread runtime with `workers` worker threads (at least one) and the time
    /// driver that request deadlines need.
    pub fn new(workers: usize) -> Result<TokioClient, CliError> {
        let rt = ::tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers.max(1))
            .thread_name("bench-tokio")
            .enable_time()
            .build()
            .map_err(|e| CliError::io("cannot start the tokio runtime", e))?;
        Ok(TokioClient { rt })
    }

    /// Runs `jobs` jobs at once, each as [`cli::ping_conns`](crate::cli::ping_conns) with `targets` and `opts`
    /// would but through [`AsyncMessenger`], and returns their reports; blocks until all
    /// have ended.
    pub fn ping_jobs(
        &self,
        common: &CommonArgs,
        targets: &[EntityAddr],
        peer_type: EntityType,
        opts: &PingOptions,
        jobs: usize,
    ) -> Vec<Result<PingReport, String>> {
        let spec = match Spec::new(common, targets, peer_type, opts) {
            Ok(s) => Arc::new(s),
            Err(e) => return vec![Err(e.to_string())],
        };
        self.rt.block_on(async {
            let handles: Vec<_> = (0..jobs).map(|_| ::tokio::spawn(job(Arc::clone(&spec)))).collect();
            let mut out = Vec::with_capacity(handles.len());
            for h in handles {
                out.push(h.await.unwrap_or_else(|e| Err(format!("job task failed: {e}"))));
            }
            out
        })
    }
}

/// What every job of a round does, shared by its jobs and their lanes.
struct Spec {
    cfg: Config,
    name: EntityName,
    peer_type: EntityType,
    /// One connection of each job to each.
    addrs: Vec<EntityAddrVec>,
    opts: PingOptions,
    /// What is sent and what must come back.
    shape: PingShape,
}

impl Spec {
    fn new(
        common: &CommonArgs,
        targets: &[EntityAddr],
        peer_type: EntityType,
        opts: &PingOptions,
    ) -> Result<Spec, CliError> {
        Ok(Spec {
            cfg: common.config("client.admin")?,
            name: common.entity("client.admin")?,
            peer_type,
            addrs: targets.iter().map(|t| EntityAddrVec(vec![t.clone()])).collect(),
            opts: opts.clone(),
            shape: PingShape::new(opts)?,
        })
    }
}

/// What the lanes of one job share.
struct JobState {
    /// Pings still to send (`u64::MAX` when the round runs for a time).
    remaining: AtomicU64,
    /// Sequence number of the last ping sent.
    last_seq: AtomicU64,
    /// A reply has come back: a refusal is then a restarting server, not nobody there.
    ever_replied: AtomicBool,
}

impl JobState {
    /// Takes one ping to send; false once `count` are sent.
    fn take(&self) -> bool {
        self.remaining.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok()
    }
}

/// One job: its own messenger, a connection to each of the spec's addresses, `window`
/// lanes on each.
async fn job(spec: Arc<Spec>) -> Result<PingReport, String> {
    let o = &spec.opts;
    let m = msgr::new_messenger(&spec.cfg, spec.name).map_err(|e| e.to_string())?;
    m.set_default_policy(if o.lossless { Policy::lossless_client(0) } else { Policy::lossy_client(0) });
    let am = Arc::new(AsyncMessenger::new(m));
    // A reply whose request gave up would otherwise queue up unread: drop such strays.
    drop(am.incoming());
    let resets = am.events().map(|ev| ::tokio::spawn(count_resets(ev)));
    let st = Arc::new(JobState {
        remaining: AtomicU64::new(o.count),
        last_seq: AtomicU64::new(0),
        ever_replied: AtomicBool::new(false),
    });
    let mut report = PingReport::default();
    let dialled: Result<Vec<ConnectionRef>, _> = spec.addrs.iter().map(|a| am.connect_to(spec.peer_type, a)).collect();
    if let Ok(cons) = &dialled {
        let lanes: Vec<_> = cons
            .iter()
            .enumerate()
            .flat_map(|(k, con)| (0..o.window.max(1)).map(move |_| (k, con)))
            .map(|(k, con)| {
                ::tokio::spawn(lane(Arc::clone(&am), Arc::clone(&spec), Arc::clone(&st), Arc::clone(con), k))
            })
            .collect();
        for l in lanes {
            match l.await {
                Ok(r) => merge(&mut report, r),
                Err(e) => fail(&mut report, format!("lane task failed: {e}")),
            }
        }
    }
    report.counters = am.messenger().perf_dump();
    let down = am.shutdown().await;
    // The event stream ends with the shutdown, and so does its counter.
    if let Some(h) = resets {
        if let Ok((resets, remote)) = h.await {
            report.resets = resets;
            report.remote_resets = remote;
        }
    }
    if let Err(e) = down {
        fail(&mut report, format!("shutdown: {e}"));
    }
    dialled.map_err(|e| e.to_string())?;
    Ok(report)
}

/// Resets (lossy: the lanes dial again) and remote resets (lossless: the server
/// restarted) until the messenger shuts down: the callback client's reconnect count.
async fn count_resets(mut events: EventStream) -> (u64, u64) {
    let (mut resets, mut remote) = (0, 0);
    while let Some(e) = events.next_event().await {
        match e.kind {
            ConnEvent::Reset => resets += 1,
            ConnEvent::RemoteReset => remote += 1,
            _ => {}
        }
    }
    (resets, remote)
}

/// Counts a failure and keeps the first one's text.
fn fail(r: &mut PingReport, what: String) {
    r.errors += 1;
    r.first_error.get_or_insert(what);
}

/// Adds a lane's figures to its job's.
fn merge(into: &mut PingReport, lane: PingReport) {
    into.count += lane.count;
    into.received_bytes += lane.received_bytes;
    into.errors += lane.errors;
    into.rtt.merge(&lane.rtt);
    into.lost_to_reset += lane.lost_to_reset;
    into.verify.checked += lane.verify.checked;
    into.verify.corrupted += lane.verify.corrupted;
    if into.first_error.is_none() {
        into.first_error = lane.first_error;
    }
    if lane.last_reset.is_some() {
        into.last_reset = lane.last_reset;
    }
}

/// Whether `reply` answers ping `seq`: the payload sent (or the reply asked for), and
/// with `verify` the number of `seq`.
fn check_reply(spec: &Spec, reply: &Message, seq: u64) -> Result<(), String> {
    match spec.shape.check(reply)? {
        Some(n) if n != seq => Err(format!("reply {n} answered request {seq}")),
        _ => Ok(()),
    }
}

/// One of the `depth` in-flight pings on a job's connection `k`, sent again and again:
/// request, await the reply, check and record it, until the job's pings or time are
/// used up. A ping whose session was lost is sent again on a new connection to the
/// same address (counted in `lost_to_reset`, not as an error), as the callback client
/// does.
async fn lane(
    am: Arc<AsyncMessenger>,
    spec: Arc<Spec>,
    st: Arc<JobState>,
    mut con: ConnectionRef,
    k: usize,
) -> PingReport {
    let o = &spec.opts;
    let mut r = PingReport::default();
    let mut last_reply = Instant::now();
    'pings: loop {
        if o.until.is_some_and(|t| Instant::now() >= t) || !st.take() {
            break;
        }
        let seq = st.last_seq.fetch_add(1, Ordering::Relaxed) + 1;
        let ping = spec.shape.request(seq);
        loop {
            let t0 = Instant::now();
            let res = am.request(&con, ping.clone(), o.timeout).await;
            let now = Instant::now();
            let e = match res {
                Ok(reply) => {
                    st.ever_replied.store(true, Ordering::Relaxed);
                    last_reply = now;
                    match check_reply(&spec, &reply, seq) {
                        Ok(()) => {
                            r.count += 1;
                            r.received_bytes += reply.data.len() as u64;
                            r.rtt.record(now.duration_since(t0));
                            if o.verify {
                                r.verify.checked += 1;
                            }
                            if let Some(p) = &o.progress {
                                p.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(e) => {
                            r.verify.corrupted += 1;
                            fail(&mut r, e);
                        }
                    }
                    continue 'pings;
                }
                Err(e) => e,
            };
            let why = con.last_error().map_or_else(|| e.to_string(), |c| c.to_string());
            let lost = matches!(e, RequestError::ConnectionReset | RequestError::Refused | RequestError::Send(_));
            if !lost {
                // A timeout (a lost message), or the messenger going away: this lane is done.
                let what = match e {
                    RequestError::Timeout => format!("no reply within {:?}", o.timeout),
                    _ => why,
                };
                fail(&mut r, what);
                break 'pings;
            }
            if !st.ever_replied.load(Ordering::Relaxed) && !matches!(e, RequestError::ConnectionReset) {
                // Nobody has ever answered there: report it rather than retry blindly.
                fail(&mut r, why);
                break 'pings;
            }
            if last_reply.elapsed() >= o.timeout {
                fail(&mut r, format!("no reply within {:?} (last reset: {why})", o.timeout));
                break 'pings;
            }
            r.lost_to_reset += 1;
            r.last_reset = Some(why);
            ::tokio::time::sleep(REDIAL_PAUSE).await;
            // Every lane of the job asks: the first dials, the others get its connection.
            match am.connect_to(spec.peer_type, &spec.addrs[k]) {
                Ok(c) => con = c,
                Err(e) => {
                    fail(&mut r, e.to_string());
                    break 'pings;
                }
            }
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counted_round_hands_out_exactly_count_pings() {
        let st = JobState { remaining: AtomicU64::new(3), last_seq: AtomicU64::new(0), ever_replied: false.into() };
        assert_eq!((0..5).filter(|_| st.take()).count(), 3);
        assert!(!st.take(), "stays used up");
    }

    #[test]
    fn lanes_add_up_into_their_job() {
        let mut job = PingReport::default();
        let mut a = PingReport { count: 2, ..PingReport::default() };
        a.rtt.record(Duration::from_micros(10));
        a.rtt.record(Duration::from_micros(20));
        let b = PingReport {
            count: 1,
            errors: 1,
            first_error: Some("reply 7 answered request 8".into()),
            ..PingReport::default()
        };
        merge(&mut job, a);
        merge(&mut job, b);
        assert_eq!((job.count, job.errors, job.rtt.count()), (3, 1, 2));
        assert_eq!(job.first_error.as_deref(), Some("reply 7 answered request 8"));
    }
}
