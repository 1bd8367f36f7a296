//! Received bytes handed over by ownership (`handle_owned`), appended by a stack
//! (`read_target` / `commit_read`), and the copy counters.

use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;

use super::*;
use crate::message::CrcMemo;
use crate::proto::frame::{Preamble, EPILOGUE_LEN, MESSAGE_ALIGNS};
use crate::proto::rxpool::RxPool;

/// A READY server (lossy) whose frame limit is `max_frame`, its handshake output and
/// events drained.
fn ready_server(t0: Instant, max_frame: usize, pool: Option<RxPool>) -> Session {
    let mut scfg = cfg(EntityName { ty: EntityType::Osd, num: 0 }, EntityAddrVec(vec![server_addr()]));
    scfg.limits.max_frame = max_frame;
    scfg.rx_pool = pool;
    let policy_for: PolicyFn = Arc::new(|_| lossy());
    let mut s = Session::new_server(scfg, sa(CLIENT_SOCK), policy_for, Box::new(NoneServerAuth::new(4100)), 5, 77, t0);
    let mut c = client(t0);
    pump(&mut c, &mut s, t0);
    assert!(s.is_ready());
    events(&mut s);
    out(&mut s);
    s
}

fn ping(seq: u64, data_len: usize, seed: u8) -> Frame {
    message_frame(&MPing::new(ping_data(data_len, seed)).encode(), seq, 0)
}

fn ping_data(data_len: usize, seed: u8) -> Bytes {
    Bytes::from((0..data_len).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect::<Vec<u8>>())
}

fn stream(frames: &[Frame]) -> Bytes {
    Bytes::from(frames.iter().flat_map(encode_frame_to_vec).collect::<Vec<u8>>())
}

fn messages(s: &mut Session) -> Vec<Message> {
    events(s).into_iter().filter_map(|e| if let SessionEvent::Message(m) = e { Some(m) } else { None }).collect()
}

/// On-wire offset of a MESSAGE frame's data segment when front and middle are empty.
const DATA_AT: usize = 32 + 41 + 4;

/// Pieces of `wire` cut at `cuts` (offsets, ascending).
fn cut(wire: &Bytes, cuts: &[usize]) -> Vec<Bytes> {
    let mut start = 0;
    cuts.iter()
        .copied()
        .chain([wire.len()])
        .map(|end| {
            let p = wire.slice(start..end);
            start = end;
            p
        })
        .collect()
}

/// A received buffer that counts itself live until its last slice is dropped, as a
/// stack's registered chunk goes back to its pool.
struct Chunk {
    data: Vec<u8>,
    live: Arc<AtomicUsize>,
}

impl AsRef<[u8]> for Chunk {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}

fn chunk(data: &[u8], live: &Arc<AtomicUsize>) -> Bytes {
    live.fetch_add(1, Ordering::SeqCst);
    Bytes::from_owner(Chunk { data: data.to_vec(), live: Arc::clone(live) })
}

// ---- zero copy ----

#[test]
fn an_owned_message_inside_one_piece_is_handed_up_without_copying() {
    let t0 = Instant::now();
    let mut s = ready_server(t0, 1 << 20, None);
    let piece = stream(&[ping(1, 10_000, 1)]);
    let before = s.copy_counts();
    s.handle_owned(t0, piece.clone()).unwrap();
    let got = messages(&mut s);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].data.as_ptr(), piece[DATA_AT..].as_ptr(), "a slice of the piece");
    assert_eq!(got[0].data, ping(1, 10_000, 1).segments[3]);
    assert_eq!(s.copy_counts(), before);
    assert!(!s.has_partial_input());
}

#[test]
fn the_rdma_layout_hands_the_data_segment_up_in_place() {
    let t0 = Instant::now();
    let mut s = ready_server(t0, 1 << 20, None);
    let (m1, m2, m3) = (ping(1, 100, 1), ping(2, 65_536, 2), ping(3, 10, 3));
    let wire = stream(&[m1.clone(), m2.clone(), m3]);
    let head2 = m1.wire_len() + DATA_AT;
    // Piece 1 ends with the second frame's small head; its data segment fills piece 2;
    // its epilogue and the next frame arrive in piece 3.
    let pieces = cut(&wire, &[head2, head2 + 65_536]);
    let before = s.copy_counts();
    s.handle_owned(t0, pieces[0].clone()).unwrap();
    assert_eq!(messages(&mut s).len(), 1);
    s.handle_owned(t0, pieces[1].clone()).unwrap();
    assert!(s.has_partial_input());
    assert!(s.rx_large.is_none(), "a frame under the pin bound keeps its pieces");
    s.handle_owned(t0, pieces[2].clone()).unwrap();
    let got = messages(&mut s);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].data.as_ptr(), pieces[1].as_ptr());
    assert_eq!(got[0].data, m2.segments[3]);
    assert_eq!(s.copy_counts(), before, "nothing straddled");

    // The same with the header cut in two: only the 41-byte header is gathered.
    let mut s = ready_server(t0, 1 << 20, None);
    let before = s.copy_counts();
    let pieces = cut(&wire, &[m1.wire_len() + 40, head2, head2 + 65_536]);
    for p in &pieces {
        s.handle_owned(t0, p.clone()).unwrap();
    }
    let got = messages(&mut s);
    assert_eq!(got.len(), 3);
    assert_eq!(got[1].data.as_ptr(), pieces[2].as_ptr());
    assert_eq!(s.copy_counts().rx - before.rx, 41);
}

#[test]
fn a_segment_straddling_pieces_is_gathered_once() {
    let t0 = Instant::now();
    let mut s = ready_server(t0, 1 << 20, None);
    let f = ping(1, 10_000, 9);
    let wire = stream(std::slice::from_ref(&f));
    let before = s.copy_counts();
    for p in cut(&wire, &[DATA_AT + 4_000]) {
        s.handle_owned(t0, p).unwrap();
    }
    let got = messages(&mut s);
    assert_eq!(got[0].data, f.segments[3]);
    assert_eq!(s.copy_counts().rx - before.rx, 10_000);
}

#[test]
fn a_frame_started_by_copy_finishes_by_copy_and_the_next_one_is_zero_copy() {
    let t0 = Instant::now();
    let mut s = ready_server(t0, 1 << 20, None);
    let (m1, m2) = (ping(1, 3_000, 1), ping(2, 3_000, 2));
    let wire = stream(&[m1.clone(), m2.clone()]);
    let before = s.copy_counts();
    s.handle_bytes(t0, &wire[..100]).unwrap();
    let rest = wire.slice(100..);
    s.handle_owned(t0, rest.clone()).unwrap();
    let got = messages(&mut s);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].data, m1.segments[3]);
    assert_eq!(got[1].data.as_ptr(), wire[m1.wire_len() + DATA_AT..].as_ptr());
    assert_eq!(s.copy_counts().rx - before.rx, m1.wire_len() as u64, "the first frame, copied once");
}

#[test]
fn a_handshake_fed_owned_pieces_cut_anywhere_reaches_ready() {
    for piece_len in [1, 7, 100, 4096] {
        let t0 = Instant::now();
        let (mut c, mut s) = (client(t0), server(t0));
        c.send_message(MPing::new(Bytes::from_static(b"owned")).encode());
        loop {
            let a = Bytes::from(out(&mut c));
            let b = Bytes::from(out(&mut s));
            if a.is_empty() && b.is_empty() {
                break;
            }
            for p in a.chunks(piece_len) {
                s.handle_owned(t0, a.slice_ref(p)).unwrap();
            }
            for p in b.chunks(piece_len) {
                c.handle_owned(t0, b.slice_ref(p)).unwrap();
            }
        }
        assert!(c.is_ready() && s.is_ready(), "pieces of {piece_len}");
        assert_eq!(MPing::decode(&messages(&mut s)[0]).unwrap().payload, Bytes::from_static(b"owned"));
        assert!(!s.has_partial_input() && !c.has_partial_input());
    }
}

// ---- equivalence with handle_bytes ----

/// How a test feeds one piece.
#[derive(Clone, Copy, Debug)]
enum Feed {
    /// `handle_owned`.
    Owned,
    /// `handle_bytes`.
    Copied,
    /// `read_target` / `commit_read`, in reads of at most 5000 bytes.
    Appended,
    /// A socket stack: a large frame read straight into its buffer, the rest copied.
    Direct,
    /// A socket stack in a deep pipeline: `read_target_with_room`, reads filling the
    /// room it made (16 KiB).
    Roomy,
}

fn feed(s: &mut Session, now: Instant, piece: &Bytes, how: Feed) -> Result<(), SessionError> {
    let mut rest = &piece[..];
    match how {
        Feed::Owned => return s.handle_owned(now, piece.clone()),
        Feed::Copied => return s.handle_bytes(now, piece),
        Feed::Appended => {
            while !rest.is_empty() {
                let n = match s.read_target() {
                    ReadTarget::Large(buf) => {
                        let n = buf.len().min(rest.len());
                        buf[..n].copy_from_slice(&rest[..n]);
                        n
                    }
                    ReadTarget::Stream(buf) => {
                        let n = rest.len().min(5000);
                        buf.extend_from_slice(&rest[..n]);
                        n
                    }
                };
                rest = &rest[n..];
                s.commit_read(now, n)?;
            }
        }
        Feed::Roomy => {
            const ROOM: usize = 16 * 1024;
            while !rest.is_empty() {
                let n = match s.read_target_with_room(ROOM) {
                    ReadTarget::Large(buf) => {
                        let n = buf.len().min(rest.len());
                        buf[..n].copy_from_slice(&rest[..n]);
                        n
                    }
                    ReadTarget::Stream(buf) => {
                        assert!(buf.capacity() - buf.len() >= ROOM, "the room asked for is there");
                        let n = rest.len().min(ROOM);
                        buf.extend_from_slice(&rest[..n]);
                        n
                    }
                };
                rest = &rest[n..];
                s.commit_read(now, n)?;
            }
        }
        Feed::Direct => {
            while !rest.is_empty() {
                match s.large_read_buf() {
                    Some(buf) => {
                        let n = buf.len().min(rest.len());
                        buf[..n].copy_from_slice(&rest[..n]);
                        s.commit_large_read(n);
                        s.handle_input(now)?;
                        rest = &rest[n..];
                    }
                    None => {
                        let n = rest.len().min(3000);
                        s.handle_bytes(now, &rest[..n])?;
                        rest = &rest[n..];
                    }
                }
            }
        }
    }
    Ok(())
}

/// Events, the reply bytes and the first error of a READY server fed `pieces`.
fn outcome(pieces: &[(Bytes, Feed)]) -> (Vec<SessionEvent>, Vec<u8>, Option<SessionError>) {
    let t0 = Instant::now();
    let mut s = ready_server(t0, 8 << 20, Some(RxPool::new(16 << 20)));
    let mut err = None;
    for (p, how) in pieces {
        if let Err(e) = feed(&mut s, t0, p, *how) {
            err = Some(e);
            break;
        }
    }
    if err.is_none() {
        assert!(!s.has_partial_input(), "every piece taken in");
    }
    (events(&mut s), out(&mut s), err)
}

/// A frame a READY server accepts: a message of `len` data bytes, or a KEEPALIVE2.
fn arb_ready_frame() -> impl Strategy<Value = (bool, usize, u8)> {
    let len = prop_oneof![
        8 => 0usize..2_000,
        3 => 2_000usize..70_000,
        1 => 900_000usize..1_200_000,
        1 => 4_190_000usize..4_200_000,
    ];
    (prop::bool::weighted(0.9), len, any::<u8>())
}

fn ready_frames(spec: &[(bool, usize, u8)]) -> Vec<Frame> {
    let mut seq = 0;
    spec.iter()
        .map(|&(msg, len, seed)| {
            if msg {
                seq += 1;
                ping(seq, len, seed)
            } else {
                Keepalive2 { stamp: UTime { sec: u32::from(seed), nsec: 7 } }.to_frame()
            }
        })
        .collect()
}

/// `wire` cut into pieces of the lengths in `lens` (cycled, with one 64 KiB piece
/// added so a long stream is not cut byte by byte), fed the ways in `hows` (cycled).
fn pieces(wire: &Bytes, lens: &[usize], hows: &[Feed]) -> Vec<(Bytes, Feed)> {
    let mut v = Vec::new();
    let mut at = 0;
    let mut lens = lens.iter().copied().chain([65_536]).cycle();
    let mut hows = hows.iter().copied().cycle();
    while at < wire.len() {
        let end = (at + lens.next().unwrap_or(1)).min(wire.len());
        v.push((wire.slice(at..end), hows.next().unwrap_or(Feed::Owned)));
        at = end;
    }
    v
}

fn arb_feed() -> impl Strategy<Value = Feed> {
    prop_oneof![4 => Just(Feed::Owned), 1 => Just(Feed::Copied), 1 => Just(Feed::Appended), 1 => Just(Feed::Direct), 1 => Just(Feed::Roomy)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn owned_and_mixed_input_yield_what_handle_bytes_yields(
        spec in prop::collection::vec(arb_ready_frame(), 1..8),
        lens in prop::collection::vec(prop_oneof![1usize..40, 40usize..5_000, 5_000usize..300_000], 1..20),
        hows in prop::collection::vec(arb_feed(), 1..8),
        only_owned in any::<bool>(),
        flip in prop::option::of((any::<u64>(), 1u8..=255)),
    ) {
        let mut wire = stream(&ready_frames(&spec)).to_vec();
        if let Some((at, x)) = flip {
            let n = wire.len() as u64;
            wire[(at % n) as usize] ^= x;
        }
        let wire = Bytes::from(wire);
        let want = outcome(&[(wire.clone(), Feed::Copied)]);
        let hows = if only_owned { vec![Feed::Owned] } else { hows };
        let got = outcome(&pieces(&wire, &lens, &hows));
        prop_assert_eq!(&got.2, &want.2);
        prop_assert_eq!(&got.1, &want.1);
        prop_assert!(got.0 == want.0, "events differ");
        if flip.is_none() {
            prop_assert!(want.2.is_none());
            prop_assert_eq!(want.0.len(), spec.iter().filter(|s| s.0).count());
        }
    }

    #[test]
    fn owned_garbage_is_a_typed_error_never_a_panic(
        garbage in prop::collection::vec(any::<u8>(), 0..3000),
        lens in prop::collection::vec(1usize..200, 1..10),
        ready in any::<bool>(),
    ) {
        let t0 = Instant::now();
        let mut s = if ready { ready_server(t0, 1 << 20, None) } else { server(t0) };
        let garbage = Bytes::from(garbage);
        for (p, _) in pieces(&garbage, &lens, &[Feed::Owned]) {
            if s.handle_owned(t0, p).is_err() {
                prop_assert_eq!(s.state(), State::Closed);
                break;
            }
        }
    }
}

// ---- hostile input ----

fn message_preamble(lens: [u32; 4]) -> Bytes {
    let aligns = MESSAGE_ALIGNS;
    Bytes::copy_from_slice(&Preamble { tag: Tag::Message, num_segments: 4, lens, aligns }.encode())
}

#[test]
fn huge_lengths_are_refused_on_the_preamble_before_anything_is_held_for_them() {
    let t0 = Instant::now();
    for (lens, want) in
        [([41, 0, 0, u32::MAX], "segment 3 length"), ([41, 0, 600_000, 600_000], "frame length 1200041")]
    {
        let mut s = ready_server(t0, 1 << 20, None);
        let e = s.handle_owned(t0, message_preamble(lens)).unwrap_err();
        assert!(matches!(e, SessionError::Frame(FrameError::SegmentTooLong { .. } | FrameError::FrameTooLong { .. })));
        assert!(e.to_string().contains(want), "{e}");
        assert!(s.rx_large.is_none() && s.rx.is_empty());
        assert_eq!(s.rope.len(), PREAMBLE_LEN, "the preamble alone");
        assert_eq!(s.state(), State::Closed);
        assert_eq!(s.handle_owned(t0, Bytes::from_static(b"more")), Err(SessionError::Closed));
    }
}

#[test]
fn garbage_and_bad_crcs_are_typed_errors() {
    let t0 = Instant::now();
    let mut s = ready_server(t0, 1 << 20, None);
    let e = s.handle_owned(t0, Bytes::from(vec![0xAB; 64])).unwrap_err();
    assert!(matches!(e, SessionError::Frame(FrameError::BadPreambleCrc { .. })), "{e}");

    let mut s = ready_server(t0, 1 << 20, None);
    let mut wire = stream(&[ping(1, 5_000, 1)]).to_vec();
    wire[DATA_AT + 10] ^= 1;
    let wire = Bytes::from(wire);
    let mut r = Ok(());
    for p in cut(&wire, &[DATA_AT, DATA_AT + 2_000]) {
        r = s.handle_owned(t0, p);
    }
    assert!(matches!(r, Err(SessionError::Frame(FrameError::BadSegmentCrc { index: 3, .. }))), "{r:?}");

    let mut s = server(t0);
    out(&mut s);
    assert!(matches!(s.handle_owned(t0, Bytes::from(vec![b'x'; 40])), Err(SessionError::Banner(_))));
}

#[test]
fn a_frame_above_the_pin_bound_is_gathered_as_it_arrives_and_its_pieces_released() {
    let t0 = Instant::now();
    let pool = RxPool::new(16 << 20);
    for (len, own_buffer) in [(3 << 20, true), (6 << 20, false)] {
        let mut s = ready_server(t0, 8 << 20, Some(pool.clone()));
        let f = ping(1, len, 5);
        let wire = stream(std::slice::from_ref(&f));
        let live = Arc::new(AtomicUsize::new(0));
        let before = s.copy_counts();
        for c in wire.chunks(128 * 1024) {
            s.handle_owned(t0, chunk(c, &live)).unwrap();
            assert_eq!(live.load(Ordering::SeqCst), 0, "no piece kept");
            assert!(s.rope.is_empty());
        }
        let got = messages(&mut s);
        assert_eq!(got[0].data, f.segments[3]);
        // Within the pool's range it had a buffer of its own; beyond, the stream buffer.
        assert_eq!(pool.idle_bytes() == 0, own_buffer);
        assert_eq!(s.copy_counts().rx - before.rx, wire.len() as u64);
        drop(got);
    }
}

#[test]
fn a_frame_dribbled_in_tiny_pieces_pins_a_bounded_number_of_them() {
    let t0 = Instant::now();
    let mut s = ready_server(t0, 1 << 20, None);
    let f = ping(1, 100_000, 6);
    let wire = stream(std::slice::from_ref(&f));
    let live = Arc::new(AtomicUsize::new(0));
    let mut most = 0;
    for c in wire.chunks(100) {
        s.handle_owned(t0, chunk(c, &live)).unwrap();
        most = most.max(live.load(Ordering::SeqCst));
    }
    assert!(most <= ROPE_MAX_PIECES + 1, "{most} pieces pinned");
    assert_eq!(messages(&mut s)[0].data, f.segments[3]);
    assert_eq!(live.load(Ordering::SeqCst), 0);
}

#[test]
fn before_ready_a_frame_longer_than_a_control_frame_pins_nothing() {
    let t0 = Instant::now();
    let mut s = server(t0);
    out(&mut s);
    s.handle_owned(t0, banner_bytes()).unwrap();
    // A MESSAGE frame announcing 512 KiB where only control frames (64 KiB here) may
    // come: it goes to the stream buffer, which grows only with what arrives.
    let f = ping(1, 512 * 1024, 1);
    let wire = stream(&[f]);
    let live = Arc::new(AtomicUsize::new(0));
    s.handle_owned(t0, chunk(&wire[..4096], &live)).unwrap();
    assert_eq!(live.load(Ordering::SeqCst), 0);
    assert!(s.rope.is_empty() && s.rx_large.is_none());
    assert_eq!(s.rx.len(), 4096);
    // The same frame once READY stays in its pieces: it is under the pin bound.
    let mut s = ready_server(t0, 1 << 20, None);
    s.handle_owned(t0, chunk(&wire[..4096], &live)).unwrap();
    assert_eq!(live.load(Ordering::SeqCst), 1);
    assert_eq!(s.rope.len(), 4096);
}

// ---- stream-buffer appends ----

#[test]
fn bytes_appended_to_the_stream_buffer_decode_and_count_as_received() {
    let t0 = Instant::now();
    let mut s = ready_server(t0, 1 << 20, Some(RxPool::new(1 << 20)));
    let (small, large) = (ping(1, 300, 1), ping(2, 100_000, 2));
    let wire = stream(&[small.clone(), large.clone()]);
    let t1 = t0 + Duration::from_secs(30);
    let before = s.copy_counts();
    let mut saw_large = false;
    let mut rest = &wire[..];
    while !rest.is_empty() {
        let n = match s.read_target() {
            ReadTarget::Large(buf) => {
                saw_large = true;
                let n = buf.len().min(rest.len()).min(8192);
                buf[..n].copy_from_slice(&rest[..n]);
                n
            }
            ReadTarget::Stream(buf) => {
                let n = rest.len().min(8192);
                buf.extend_from_slice(&rest[..n]);
                n
            }
        };
        rest = &rest[n..];
        s.commit_read(t1, n).unwrap();
    }
    let got = messages(&mut s);
    assert_eq!((got[0].data.clone(), got[1].data.clone()), (small.segments[3].clone(), large.segments[3].clone()));
    assert!(saw_large, "the rest of the large frame went straight into its own buffer");
    // The stack copied what it appended; the session only moved the large frame's
    // first bytes (what the first read held of it) into its buffer.
    assert_eq!(s.copy_counts().rx - before.rx, (8192 - small.wire_len()) as u64);
    assert_eq!(s.poll_timeout(), Some(t1 + Duration::from_secs(60)), "input at t1 reset the idle clock");
    assert_eq!(s.handle_timeout(t0 + Duration::from_secs(61)), Ok(()));
}

#[test]
fn committing_a_stream_append_through_handle_input_still_counts_as_received() {
    let t0 = Instant::now();
    let mut s = ready_server(t0, 1 << 20, None);
    let t1 = t0 + Duration::from_secs(5);
    if let ReadTarget::Stream(buf) = s.read_target() {
        buf.extend_from_slice(&stream(&[ping(1, 10, 1)]));
    }
    s.handle_input(t1).unwrap();
    assert_eq!(messages(&mut s).len(), 1);
    assert_eq!(s.poll_timeout(), Some(t1 + Duration::from_secs(60)));
}

#[test]
fn owned_pieces_held_before_a_stream_append_come_first() {
    let t0 = Instant::now();
    let mut s = ready_server(t0, 1 << 20, None);
    let (m1, m2) = (ping(1, 500, 1), ping(2, 500, 2));
    let wire = stream(&[m1.clone(), m2.clone()]);
    s.handle_owned(t0, wire.slice(..200)).unwrap();
    let ReadTarget::Stream(buf) = s.read_target() else { panic!("no large frame in progress") };
    buf.extend_from_slice(&wire[200..]);
    s.commit_read(t0, wire.len() - 200).unwrap();
    let got = messages(&mut s);
    assert_eq!((got[0].data.clone(), got[1].data.clone()), (m1.segments[3].clone(), m2.segments[3].clone()));
}

/// Reads with room (a busy kernel socket's) that hold the start of a large frame: one
/// whose rest fits behind it in the stream buffer is read there and split off, nothing
/// copied; one that does not fit gets its own buffer, and only what was read of it so
/// far is copied there. Fed through the scratch path instead, a large frame gets its
/// own buffer however small.
#[test]
fn a_large_frame_read_in_place_stays_where_it_fits() {
    let t0 = Instant::now();
    const ROOM: usize = 256 * 1024;
    const FIRST: usize = 8192;
    for (len, fits) in [(64 * 1024, true), (200 * 1024, true), (1 << 20, false)] {
        let mut s = ready_server(t0, 4 << 20, Some(RxPool::new(4 << 20)));
        let frame = ping(1, len, 7);
        let wire = stream(std::slice::from_ref(&frame));
        let before = s.copy_counts();
        let mut rest = &wire[..];
        let mut own_buffer = false;
        while !rest.is_empty() {
            let n = match s.read_target_with_room(ROOM) {
                ReadTarget::Large(buf) => {
                    own_buffer = true;
                    let n = buf.len().min(rest.len());
                    buf[..n].copy_from_slice(&rest[..n]);
                    n
                }
                ReadTarget::Stream(buf) => {
                    // The first read takes little, as after a large frame.
                    let n = rest.len().min(if rest.len() == wire.len() { FIRST } else { ROOM });
                    buf.extend_from_slice(&rest[..n]);
                    n
                }
            };
            rest = &rest[n..];
            s.commit_read(t0, n).unwrap();
        }
        let got = messages(&mut s);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].data, frame.segments[3], "{len} bytes");
        let copied = s.copy_counts().rx - before.rx;
        if fits {
            assert!(!own_buffer, "{len} bytes: read in place");
            assert_eq!(copied, 0, "{len} bytes");
        } else {
            assert!(own_buffer, "{len} bytes: its own buffer");
            assert_eq!(copied, FIRST as u64, "{len} bytes: its first read moved");
        }
    }
    // Copied in (the scratch path), a 64 KiB frame goes to its own buffer: the rest is
    // then read there instead of copied a second time.
    let mut s = ready_server(t0, 4 << 20, Some(RxPool::new(4 << 20)));
    let wire = stream(&[ping(1, 64 * 1024, 7)]);
    s.handle_bytes(t0, &wire[..FIRST]).unwrap();
    assert!(s.large_read_buf().is_some());
}

// ---- copy counters ----

#[test]
fn copy_counters_in_simple_cases() {
    let t0 = Instant::now();
    let (mut c, mut s) = (client(t0), server(t0));
    pump(&mut c, &mut s, t0);
    let (c0, s0) = (c.copy_counts(), s.copy_counts());
    // handle_bytes copies everything it is given.
    c.send_message(MPing::new(Bytes::from(vec![1u8; 100])).encode());
    let small = out(&mut c);
    s.handle_bytes(t0, &small).unwrap();
    assert_eq!(s.copy_counts().rx - s0.rx, small.len() as u64);
    // The writer copies the 100-byte data segment (the header is encoded where it goes
    // on the wire: not a copy)...
    assert_eq!(c.copy_counts().tx - c0.tx, 100);
    // ...but not a data segment of ZERO_COPY_MIN or more.
    c.send_message(MPing::new(Bytes::from(vec![1u8; 2000])).encode());
    let large = Bytes::from(out(&mut c));
    assert_eq!(c.copy_counts().tx - c0.tx, 100);
    // Owned, in one piece: nothing copied.
    let s1 = s.copy_counts();
    s.handle_owned(t0, large).unwrap();
    assert_eq!(s.copy_counts(), s1);
    assert_eq!(messages(&mut s).len(), 2);
}

#[test]
fn secure_sessions_fed_owned_pieces_copy_them_and_still_deliver() {
    let t0 = Instant::now();
    let mut c = Session::new_client(
        cfg(EntityName { ty: EntityType::Client, num: -1 }, EntityAddrVec::default()),
        EntityAddr::msgr2(sa(SERVER_SOCK), 0),
        EntityType::Osd,
        lossless(),
        Box::new(KeyedTestAuth),
        1,
        5,
        t0,
    );
    let policy_for: PolicyFn = Arc::new(|_| lossless());
    let mut s = Session::new_server(
        cfg(EntityName { ty: EntityType::Osd, num: 0 }, EntityAddrVec(vec![server_addr()])),
        sa(CLIENT_SOCK),
        policy_for,
        Box::new(KeyedTestAuth),
        5,
        77,
        t0,
    );
    for i in 0..3u8 {
        c.send_message(MPing::new(Bytes::from(vec![i; 3000])).encode());
    }
    loop {
        let a = Bytes::from(out(&mut c));
        let b = Bytes::from(out(&mut s));
        if a.is_empty() && b.is_empty() {
            break;
        }
        // Cut where a secure switch can fall inside a piece.
        for p in a.chunks(333) {
            s.handle_owned(t0, a.slice_ref(p)).unwrap();
        }
        if s.state() == State::SessionAcceptingExisting {
            s.answer(Answer::New).unwrap();
        }
        for p in b.chunks(333) {
            c.handle_owned(t0, b.slice_ref(p)).unwrap();
        }
    }
    assert!(c.is_ready() && s.is_ready());
    let got = messages(&mut s);
    assert_eq!(got.len(), 3);
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m.data, Bytes::from(vec![i as u8; 3000]));
    }
    assert!(s.copy_counts().rx > 9000, "sealed frames are copied to be opened");
    assert!(c.copy_counts().tx > 9000, "sealing copies every segment");
}

// ---- deep reads into the stream buffer ----

#[test]
fn reads_with_room_reuse_the_buffers_no_message_holds() {
    let t0 = Instant::now();
    let mut s = ready_server(t0, 1 << 20, None);
    const ROOM: usize = 64 * 1024;
    let wire = stream(&(1..=64u8).map(|i| ping(u64::from(i), 3000, i)).collect::<Vec<_>>());
    let mut bufs = std::collections::BTreeSet::new();
    let mut rest = &wire[..];
    while !rest.is_empty() {
        let ReadTarget::Stream(buf) = s.read_target_with_room(ROOM) else { panic!("small frames only") };
        bufs.insert(buf.as_ptr() as usize & !0xFFF);
        let n = rest.len().min(ROOM);
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        s.commit_read(t0, n).unwrap();
        // Messages are dropped as soon as they are handled, as an echo does.
        assert!(!messages(&mut s).is_empty());
    }
    // 64 x 3 KiB through 64 KiB reads: the stream buffer and its spare take turns.
    assert!(bufs.len() <= 2, "{} distinct buffers for {} bytes", bufs.len(), wire.len());
}

#[test]
fn a_drained_session_keeps_a_small_spare_but_not_a_deep_one() {
    let t0 = Instant::now();
    let mut s = ready_server(t0, 1 << 20, None);
    s.rx_spare = BytesMut::with_capacity(64 * 1024);
    assert!(s.rx_idle().iter().all(Option::is_none));
    assert!(s.rx_spare.capacity() >= 64 * 1024, "a small spare stays for the next read");
    assert!(!s.wants_spare());
    // What a deep pipeline leaves: a 256 KiB read's buffer, which a message held when
    // the next read needed room.
    let ReadTarget::Stream(buf) = s.read_target_with_room(256 * 1024) else { panic!("no large frame") };
    buf.extend_from_slice(&stream(&[ping(1, 100, 1)]));
    let n = buf.len();
    s.commit_read(t0, n).unwrap();
    let held = messages(&mut s);
    s.rx_spare = std::mem::take(&mut s.rx);
    assert!(s.rx_spare.capacity() > 128 * 1024);
    let [given_up, none] = s.rx_idle();
    assert!(none.is_none(), "the stream buffer was empty and small");
    let given_up = given_up.expect("the deep spare is given up");
    assert!(given_up.capacity() > 128 * 1024);
    assert_eq!(s.rx_spare.capacity(), 0, "a deep pipeline's spare is not kept by a quiet connection");
    // Another session (here the same) takes it for its next deep read and, once the
    // message holding it is gone, reads into it without allocating.
    assert!(s.wants_spare());
    let at = given_up.as_ptr() as usize;
    assert!(s.offer_spare(given_up).is_none());
    assert!(s.offer_spare(BytesMut::with_capacity(1)).is_some(), "one spare at a time");
    drop(held);
    s.rx = BytesMut::with_capacity(16);
    let ReadTarget::Stream(buf) = s.read_target_with_room(256 * 1024) else { panic!("no large frame") };
    assert_eq!(buf.as_ptr() as usize, at, "the offered spare was reused");
    // Read empty, that buffer is the stream buffer: given up too, the spare being
    // small. A small stream buffer is dropped.
    let n = buf.len();
    s.commit_read(t0, n).unwrap();
    s.rx_spare = BytesMut::with_capacity(64 * 1024);
    let [none, given_up] = s.rx_idle();
    assert!(none.is_none(), "the spare is small");
    assert_eq!(given_up.map(|b| b.as_ptr() as usize), Some(at), "the empty deep stream buffer is given up");
    assert_eq!(s.rx.capacity(), 0);
    assert!(s.rx_spare.capacity() >= 64 * 1024, "the small spare stays");
    s.rx = BytesMut::with_capacity(4096);
    assert!(s.rx_idle().iter().all(Option::is_none));
    assert_eq!(s.rx.capacity(), 0, "an idle session pins no small buffer either");
}

#[test]
fn a_short_copied_read_gets_a_small_buffer_that_the_next_one_is_read_into() {
    let t0 = Instant::now();
    let mut s = ready_server(t0, 1 << 20, None);
    // One 4 KiB message at a time, as at depth 1: the first is copied into what is
    // left of the handshake's buffer, which fits it; that is let go once drained.
    let one = stream(&[ping(1, 4000, 1)]);
    s.handle_bytes(t0, &one).unwrap();
    assert_eq!(messages(&mut s).len(), 1);
    assert!(s.rx_idle().iter().all(Option::is_none));
    // The next comes through the scratch buffer too and is copied into a buffer of its
    // own, with room beyond it.
    let one = stream(&[ping(2, 4000, 1)]);
    s.handle_bytes(t0, &one).unwrap();
    let first = messages(&mut s);
    assert_eq!(first.len(), 1);
    let at = first[0].data.as_ptr() as usize;
    // Drained: the session keeps that buffer, although a message still holds it.
    assert!(s.rx_idle().iter().all(Option::is_none));
    assert!(s.rx.capacity() >= 64, "the buffer and its slack are kept");
    // While the message holds it, there is no room without allocating: the reader
    // goes through the scratch buffer again.
    assert_eq!(s.stream_room_free(one.len() + 1), 0);
    drop(first);
    // Once it is gone, the whole buffer is the next read's room: more than a message
    // of that size, so a read of one comes back short.
    let room = s.stream_room_free(one.len() + 1);
    assert!(room > one.len() && room <= one.len() + 1024, "{room} bytes of room for a {} byte read", one.len());
    let two = stream(&[ping(3, 4000, 2)]);
    let copied = s.copy_counts().rx;
    let ReadTarget::Stream(buf) = s.read_target_with_room(room) else { panic!("no large frame") };
    buf.extend_from_slice(&two);
    s.commit_read(t0, two.len()).unwrap();
    let second = messages(&mut s);
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].data, ping_data(4000, 2));
    assert_eq!(second[0].data.as_ptr() as usize, at, "read into the first one's buffer, not a new one");
    assert_eq!(s.copy_counts().rx, copied, "the second message was not copied");
}

#[test]
fn an_empty_stream_buffer_smaller_than_a_free_spare_gives_way_to_it() {
    let t0 = Instant::now();
    let mut s = ready_server(t0, 1 << 20, None);
    // A read through the scratch buffer left a stream buffer of that read's size; the
    // worker then offered a deep one. A read into the small one would fill it exactly
    // if the next burst were as large, and could not tell that it drained the socket.
    let burst = 33_680;
    s.rx = BytesMut::with_capacity(burst);
    assert!(s.offer_spare(BytesMut::with_capacity(256 * 1024)).is_none());
    assert!(s.stream_room_free(8 * 1024) >= 256 * 1024, "the read takes the deep spare's room");
    assert!(s.rx.capacity() >= 256 * 1024);
    assert!(s.wants_spare(), "the small buffer was let go, not kept as the spare");
    // A stream buffer holding a frame in progress keeps it: the spare is not taken.
    let wire = stream(&[ping(1, 3000, 1)]);
    s.handle_bytes(t0, &wire[..100]).unwrap();
    let at = s.rx.as_ptr() as usize;
    assert!(s.offer_spare(BytesMut::with_capacity(512 * 1024)).is_none());
    assert!(s.stream_room_free(8 * 1024) > 0);
    assert_eq!(s.rx.as_ptr() as usize, at, "the frame in progress stays where it is");
}

// ---- the received data segment's crc (CrcMemo) ----

/// Each message's remembered data crc, checked against a fresh computation.
fn memos(got: &[Message]) -> Vec<Option<u32>> {
    got.iter()
        .map(|m| {
            let memo = m.data_crc.get(&m.data);
            if let Some(crc) = memo {
                assert_eq!(crc, crate::proto::crc::segment_crc(&m.data), "the crc of the bytes it covers");
            }
            memo
        })
        .collect()
}

#[test]
fn received_data_carries_its_checked_crc_on_every_receive_path() {
    use crate::message::CRC_MEMO_MIN;
    let t0 = Instant::now();
    let frames = [ping(1, 4096, 1), ping(2, CRC_MEMO_MIN - 1, 2), ping(3, 0, 3), ping(4, 70_000, 4)];
    let wire = stream(&frames);
    let expected = [true, false, false, true];
    // Copied into the stream buffer (the large one into a buffer of its own).
    let mut s = ready_server(t0, 1 << 20, Some(RxPool::new(4 << 20)));
    for c in wire.chunks(8192) {
        s.handle_bytes(t0, c).unwrap();
    }
    let got = messages(&mut s);
    assert_eq!(memos(&got).iter().map(Option::is_some).collect::<Vec<_>>(), expected);
    // Owned pieces: a slice of one, gathered across two, and (beyond the pin bound) a
    // buffer of its own.
    let mut s = ready_server(t0, 8 << 20, Some(RxPool::new(16 << 20)));
    let cuts = [DATA_AT + 100, wire.len() - 60_000];
    for p in cut(&wire, &cuts) {
        s.handle_owned(t0, p).unwrap();
    }
    let mut big = ready_server(t0, 8 << 20, Some(RxPool::new(16 << 20)));
    let f = ping(1, 3 << 20, 5);
    for c in stream(std::slice::from_ref(&f)).chunks(128 * 1024) {
        big.handle_owned(t0, Bytes::copy_from_slice(c)).unwrap();
    }
    let mut got = messages(&mut s);
    got.extend(messages(&mut big));
    assert_eq!(memos(&got).iter().map(Option::is_some).collect::<Vec<_>>(), [expected.as_slice(), &[true]].concat());
}

#[test]
fn a_message_sent_on_with_its_data_unchanged_reuses_the_crc_and_only_then() {
    let t0 = Instant::now();
    let mut s = ready_server(t0, 1 << 20, None);
    s.handle_bytes(t0, &stream(&[ping(1, 8192, 1)])).unwrap();
    let m = messages(&mut s).remove(0);
    let right = crate::proto::crc::segment_crc(&m.data);
    // What goes out for a message: its data crc from the epilogue, as the peer decodes it.
    let sent_crc = |s: &mut Session, m: Message| {
        s.send_message(Message { seq: 0, src: None, ..m });
        let wire = out(s);
        let at = wire.len() - EPILOGUE_LEN + 1 + 4 * 2;
        u32::from_le_bytes(wire[at..at + 4].try_into().unwrap())
    };
    // The memo is what is sent: a wrong one (it cannot arise; forged here) goes out as is.
    let forged = Message { data_crc: CrcMemo::new(&m.data, !right), ..m.clone() };
    assert_eq!(sent_crc(&mut s, forged), !right);
    // The same bytes elsewhere: the memo does not apply, the crc is computed.
    let moved = Message { data: Bytes::copy_from_slice(&m.data), data_crc: CrcMemo::new(&m.data, !right), ..m.clone() };
    assert_eq!(sent_crc(&mut s, moved), right);
    // Echoed as received: the crc is right, and a decoder takes the frame.
    s.send_message(Message { seq: 0, src: None, ..m.clone() });
    let wire = out(&mut s);
    let frame = FrameDecoder::new(FrameLimits::default()).decode(&mut BytesMut::from(&wire[..])).unwrap().unwrap();
    assert_eq!(frame.segments[3], m.data);
}

#[test]
fn a_reply_with_new_data_does_not_keep_the_request_s_bytes_alive() {
    let t0 = Instant::now();
    let mut s = ready_server(t0, 1 << 20, None);
    let live = Arc::new(AtomicUsize::new(0));
    s.handle_owned(t0, chunk(&stream(&[ping(1, 8192, 1)]), &live)).unwrap();
    let m = messages(&mut s).remove(0);
    assert!(m.data_crc.get(&m.data).is_some(), "received in place, with its crc");
    assert_eq!(live.load(Ordering::SeqCst), 1);
    // A reply made of the request, its data replaced (the old data is dropped here):
    // the memo came along, and holds the request's bytes.
    let mut reply = m;
    reply.data = Bytes::from(vec![1u8; 2048]);
    assert_eq!(live.load(Ordering::SeqCst), 1, "held by the reply's stale memo");
    s.send_message(reply);
    assert_eq!(live.load(Ordering::SeqCst), 0, "the queued reply holds none of the request");
    assert!(!out(&mut s).is_empty());
}
