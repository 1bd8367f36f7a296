//! Golden tests against real Ceph 16.2 traffic.
//!
//! 1. Both pcapng captures are parsed (SHB/IDB/EPB, Ethernet → IPv4 → TCP), each TCP
//!    direction is reassembled, and every direction that starts with the msgr2 banner is
//!    decoded frame by frame. Every frame must re-encode to exactly the captured bytes, at
//!    the frame level, as a typed control frame, and as a Message for MESSAGE frames.
//! 2. `handshake-crc.txt` (annotated hex dumps) is parsed; every complete FRAME/BANNER
//!    dump must decode and re-encode identically and agree with its annotation.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use bytes::BytesMut;
use msgr_core::message::{MMonGetVersion, MMonGetVersionReply, MPing, Message, TypedMessage};
use msgr_core::message::{MSG_MON_GET_VERSION, MSG_MON_GET_VERSION_REPLY, MSG_PING};
use msgr_core::proto::frames::{ControlFrame, CON_MODE_SECURE};
use msgr_core::proto::{
    encode_frame_to_vec, message_frame, parse_message_frame, Banner, Control, EntityAddr, Frame, FrameDecoder,
    FrameLimits, Tag, BANNER_PREFIX, MSG_FLAG_COMPLETE_NOCRC, PREAMBLE_LEN,
};

const CAPTURES: [&str; 2] = [
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/capture-probe-none-and-cephx.pcapng"),
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/capture-mon-dump-none-and-cephx.pcapng"),
];
const ANNOTATED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/handshake-crc.txt");

// ------------------------------------------------------------------ pcapng + TCP

/// One TCP direction: (src ip, src port, dst ip, dst port).
type FlowKey = (Ipv4Addr, u16, Ipv4Addr, u16);

#[derive(Default)]
struct Direction {
    key: Option<FlowKey>,
    /// Sequence number of the first data byte (ISN + 1), once known.
    base: Option<u32>,
    /// (offset from base, payload) in capture order.
    segments: Vec<(u64, Vec<u8>)>,
    fin: bool,
    rst: bool,
}

struct Stream {
    key: FlowKey,
    data: Vec<u8>,
    /// A hole in the sequence space cut the stream short.
    gap: bool,
    /// FIN or RST seen: the sender closed the stream.
    ended: bool,
}

fn le_or_be_u32(b: &[u8], le: bool) -> Option<u32> {
    let a: [u8; 4] = b.get(..4)?.try_into().ok()?;
    Some(if le { u32::from_le_bytes(a) } else { u32::from_be_bytes(a) })
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Link-layer packets of a pcapng file (Enhanced Packet Blocks on Ethernet interfaces).
fn pcapng_packets(file: &[u8]) -> Vec<Vec<u8>> {
    const SHB: u32 = 0x0A0D_0D0A;
    const IDB: u32 = 1;
    const EPB: u32 = 6;
    let mut le = true;
    let mut link_types = Vec::new();
    let mut out = Vec::new();
    let mut off = 0usize;
    while off + 12 <= file.len() {
        let block = &file[off..];
        if le_or_be_u32(block, true) == Some(SHB) {
            // A new section: its byte-order magic decides the endianness of what follows.
            le = match block.get(8..12) {
                Some([0x4D, 0x3C, 0x2B, 0x1A]) => true,
                Some([0x1A, 0x2B, 0x3C, 0x4D]) => false,
                other => panic!("bad pcapng byte-order magic {other:?}"),
            };
            link_types.clear();
        }
        let ty = le_or_be_u32(block, le).unwrap();
        let total = le_or_be_u32(&block[4..], le).unwrap() as usize;
        assert!(total >= 12 && total % 4 == 0 && total <= block.len(), "bad pcapng block length {total} at {off}");
        let body = &block[8..total - 4];
        match ty {
            IDB => {
                let lt = u16::from_le_bytes([body[0], body[1]]);
                link_types.push(if le { lt } else { lt.swap_bytes() });
            }
            EPB => {
                let iface = le_or_be_u32(body, le).unwrap() as usize;
                let cap = le_or_be_u32(&body[12..], le).unwrap() as usize;
                let data = &body[20..20 + cap];
                assert_eq!(link_types.get(iface), Some(&1), "expected Ethernet link type");
                out.push(data.to_vec());
            }
            _ => {}
        }
        off += total;
    }
    assert_eq!(off, file.len(), "trailing bytes in pcapng");
    out
}

/// Reassembles every TCP direction, ignoring retransmitted / duplicate data.
fn tcp_streams(packets: &[Vec<u8>]) -> Vec<Stream> {
    let mut dirs: Vec<Direction> = Vec::new();
    let mut current: HashMap<FlowKey, usize> = HashMap::new();
    for p in packets {
        let Some(mut ethertype) = be16(p, 12) else { continue };
        let mut l3 = 14;
        while ethertype == 0x8100 {
            ethertype = be16(p, l3 + 2).unwrap();
            l3 += 4;
        }
        if ethertype != 0x0800 {
            continue;
        }
        let ip = &p[l3..];
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        let total = usize::from(be16(ip, 2).unwrap());
        let frag = be16(ip, 6).unwrap();
        assert_eq!(frag & 0x3fff, 0, "IP fragments not expected");
        if ip[9] != 6 {
            continue;
        }
        let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
        let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
        // The IP total length excludes Ethernet padding.
        let tcp = &ip[ihl..total];
        let (sport, dport) = (be16(tcp, 0).unwrap(), be16(tcp, 2).unwrap());
        let seq = be32(tcp, 4).unwrap();
        let doff = usize::from(tcp[12] >> 4) * 4;
        let flags = tcp[13];
        let payload = &tcp[doff..];
        let key = (src, sport, dst, dport);
        let syn = flags & 0x02 != 0;
        let idx = match current.get(&key) {
            // a SYN with a new ISN on a reused 4-tuple starts a new connection
            Some(&i) if !(syn && dirs[i].base.is_some_and(|b| b != seq.wrapping_add(1))) => i,
            _ => {
                dirs.push(Direction { key: Some(key), ..Default::default() });
                current.insert(key, dirs.len() - 1);
                dirs.len() - 1
            }
        };
        let d = &mut dirs[idx];
        if syn {
            d.base = Some(seq.wrapping_add(1));
        }
        if !payload.is_empty() {
            let base = *d.base.get_or_insert(seq);
            d.segments.push((u64::from(seq.wrapping_sub(base)), payload.to_vec()));
        }
        d.fin |= flags & 0x01 != 0;
        d.rst |= flags & 0x04 != 0;
    }
    dirs.into_iter()
        .map(|mut d| {
            d.segments.sort_by_key(|(o, _)| *o);
            let mut data = Vec::new();
            let mut gap = false;
            for (o, seg) in &d.segments {
                let have = data.len() as u64;
                if *o > have {
                    gap = true;
                    break;
                }
                let skip = (have - o) as usize;
                if skip < seg.len() {
                    data.extend_from_slice(&seg[skip..]);
                }
            }
            Stream { key: d.key.unwrap(), data, gap, ended: d.fin || d.rst }
        })
        .collect()
}

// ------------------------------------------------------------------ stream decoding

#[derive(Default)]
struct Stats {
    streams: usize,
    frames: usize,
    bytes: usize,
    by_tag: BTreeMap<&'static str, usize>,
    by_msg_type: BTreeMap<u16, usize>,
    by_num_segments: BTreeMap<u8, usize>,
    typed_messages: usize,
    partial_tails: Vec<String>,
}

/// Re-encodes `m` as the typed message `T` and checks the front is identical.
fn check_typed<T: TypedMessage>(m: &Message) {
    let t = T::decode(m).unwrap_or_else(|e| panic!("typed decode of type {}: {e}", m.msg_type));
    let again = t.encode();
    assert_eq!(again.front, m.front, "typed re-encode of type {}", m.msg_type);
    assert_eq!(again.msg_type, m.msg_type);
    assert_eq!(T::decode(&again).unwrap().encode().front, m.front);
}

/// Decodes one direction of a stream; returns whether it did.
fn decode_stream(name: &str, s: &Stream, stats: &mut Stats) {
    let (banner, used) = Banner::decode(&s.data).unwrap().expect("complete banner");
    assert_eq!(&banner.encode()[..], &s.data[..used], "{name}: banner re-encode");
    assert_eq!(banner, Banner::default(), "{name}: Pacific banner");
    stats.streams += 1;
    stats.bytes += used;

    let body = &s.data[used..];
    let mut buf = BytesMut::from(body);
    let mut dec = FrameDecoder::new(FrameLimits::default());
    let mut frames = Vec::new();
    loop {
        let off = body.len() - buf.len();
        let Some(frame) = dec.decode(&mut buf).unwrap_or_else(|e| panic!("{name}: frame at {off}: {e}")) else {
            break;
        };
        let len = frame.wire_len();
        let captured = &body[off..off + len];
        assert_eq!(encode_frame_to_vec(&frame), captured, "{name}: frame at {off} re-encode");
        check_frame(name, off, &frame, captured, stats);
        stats.frames += 1;
        stats.bytes += len;
        let secure = match Control::from_frame(&frame) {
            Ok(Control::AuthDone(d)) => d.con_mode == CON_MODE_SECURE,
            _ => false,
        };
        frames.push(frame);
        assert!(!secure, "{name}: secure mode not expected in these captures");
    }
    if !buf.is_empty() {
        // Only a frame cut by the end of the capture may remain: the decoder must be waiting
        // for more bytes (no error, checked above) and the stream must have no hole.
        assert!(!s.gap && dec.pending_hint() > 0, "{name}: undecodable tail");
        stats.partial_tails.push(format!(
            "{name}: {} trailing bytes of an incomplete frame ({} more needed; stream {})",
            buf.len(),
            dec.pending_hint(),
            if s.ended { "closed by FIN/RST" } else { "cut by the end of the capture" }
        ));
    }

    // The same bytes fed in irregular small pieces give the same frames.
    let mut dec = FrameDecoder::new(FrameLimits::default());
    let mut buf = BytesMut::new();
    let mut again = Vec::new();
    for (i, chunk) in body.chunks(7).enumerate() {
        for piece in chunk.chunks(1 + i % 5) {
            buf.extend_from_slice(piece);
            while let Some(f) = dec.decode(&mut buf).unwrap() {
                again.push(f);
            }
        }
    }
    assert_eq!(again, frames, "{name}: chunked decoding differs");
}

fn check_frame(name: &str, off: usize, frame: &Frame, captured: &[u8], stats: &mut Stats) {
    *stats.by_tag.entry(frame.tag.as_str()).or_default() += 1;
    *stats.by_num_segments.entry(frame.num_segments).or_default() += 1;
    if frame.tag == Tag::Message {
        let (h, msg) = parse_message_frame(frame).unwrap_or_else(|e| panic!("{name}: message at {off}: {e}"));
        assert_eq!((h.flags, h.reserved, h.data_pre_padding_len), (MSG_FLAG_COMPLETE_NOCRC, 0, 0));
        assert_eq!(msg.seq, h.seq);
        let rebuilt = message_frame(&msg, h.seq, h.ack_seq);
        assert_eq!(encode_frame_to_vec(&rebuilt), captured, "{name}: message at {off} rebuilt");
        *stats.by_msg_type.entry(msg.msg_type).or_default() += 1;
        match msg.msg_type {
            MSG_PING => check_typed::<MPing>(&msg),
            MSG_MON_GET_VERSION => check_typed::<MMonGetVersion>(&msg),
            MSG_MON_GET_VERSION_REPLY => check_typed::<MMonGetVersionReply>(&msg),
            _ => return,
        }
        stats.typed_messages += 1;
    } else {
        let c = Control::from_frame(frame).unwrap_or_else(|e| panic!("{name}: {} at {off}: {e}", frame.tag));
        let f = c.to_frame();
        assert_eq!(f.payload(), frame.payload(), "{name}: {} at {off} payload re-encode", frame.tag);
        assert_eq!(encode_frame_to_vec(&f), captured);
    }
}

#[test]
fn golden_pcapng_streams() {
    let mut stats = Stats::default();
    let mut total_dirs = 0;
    for path in CAPTURES {
        let file = std::fs::read(path).unwrap();
        let packets = pcapng_packets(&file);
        assert!(!packets.is_empty(), "{path}: no packets");
        let streams = tcp_streams(&packets);
        total_dirs += streams.len();
        let short = path.rsplit('/').next().unwrap();
        for s in &streams {
            if !s.data.starts_with(BANNER_PREFIX) {
                continue;
            }
            let (a, ap, b, bp) = s.key;
            let name = format!("{short} {a}:{ap}->{b}:{bp}");
            assert!(!s.gap, "{name}: sequence gap in capture");
            decode_stream(&name, s, &mut stats);
        }
    }
    println!("TCP directions: {total_dirs}; msgr2 stream directions: {}", stats.streams);
    println!("frames: {} ({} bytes incl. banners)", stats.frames, stats.bytes);
    println!("frames by tag: {:?}", stats.by_tag);
    println!("frames by num_segments: {:?}", stats.by_num_segments);
    println!("messages by type: {:?}", stats.by_msg_type);
    println!("typed messages re-encoded: {}", stats.typed_messages);
    for t in &stats.partial_tails {
        println!("partial tail: {t}");
    }
    assert!(stats.streams >= 4, "too few msgr2 streams");
    assert!(stats.frames >= 50, "too few frames");
    assert!(stats.by_num_segments.get(&4).copied().unwrap_or(0) >= 1, "no 4-segment frame");
    for tag in [
        Tag::Hello,
        Tag::AuthRequest,
        Tag::AuthReplyMore,
        Tag::AuthRequestMore,
        Tag::AuthDone,
        Tag::AuthSignature,
        Tag::ClientIdent,
        Tag::ServerIdent,
        Tag::Message,
    ] {
        assert!(stats.by_tag.get(tag.as_str()).copied().unwrap_or(0) >= 1, "no {tag} frame");
    }
    for t in [MSG_PING, MSG_MON_GET_VERSION, MSG_MON_GET_VERSION_REPLY] {
        assert!(stats.by_msg_type.contains_key(&t), "no message of type {t}");
    }
}

// ------------------------------------------------------------------ annotated dump

struct Block {
    header: String,
    notes: Vec<String>,
    bytes: Vec<u8>,
    complete: bool,
}

fn is_hex_line(l: &str) -> bool {
    l.starts_with("      ")
        && !l.starts_with("       ")
        && l.len() >= 12
        && l[6..10].chars().all(|c| c.is_ascii_hexdigit())
        && &l[10..12] == "  "
}

fn hex_line_bytes(l: &str) -> Vec<u8> {
    let field = &l[12..l.len().min(12 + 47)];
    field.split_whitespace().map(|t| u8::from_str_radix(t, 16).unwrap()).collect()
}

fn annotated_blocks(text: &str) -> Vec<Block> {
    let mut out: Vec<Block> = Vec::new();
    for l in text.lines() {
        if l.starts_with("  [") && (l.contains("] FRAME ") || l.contains("] BANNER ")) {
            out.push(Block { header: l.to_owned(), notes: Vec::new(), bytes: Vec::new(), complete: true });
            continue;
        }
        let Some(b) = out.last_mut() else { continue };
        if !l.starts_with("  ") {
            continue;
        }
        if is_hex_line(l) {
            b.bytes.extend(hex_line_bytes(l));
        } else if l.starts_with("      ... (") {
            b.complete = false;
        } else if l.starts_with("      ") && !l.starts_with("       ") {
            b.notes.push(l.trim().to_owned());
        }
    }
    out
}

/// `key=value` tokens of an annotation line.
fn kv(line: &str) -> HashMap<String, String> {
    line.split_whitespace().filter_map(|t| t.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned()))).collect()
}

fn num(v: &str) -> u64 {
    let v = v.split('(').next().unwrap();
    if let Some(h) = v.strip_prefix("0x") {
        u64::from_str_radix(h, 16).unwrap()
    } else {
        v.parse::<i64>().map(|x| x as u64).unwrap()
    }
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Checks a control frame's decoded fields against its annotation line.
fn check_control_note(c: &Control, note: &HashMap<String, String>) -> usize {
    let mut checked = 0;
    let mut eq = |k: &str, v: String| {
        if let Some(want) = note.get(k) {
            assert_eq!(&v, want, "field {k}");
            checked += 1;
        }
    };
    match c {
        Control::Hello(h) => {
            eq("entity_type", h.entity_type.to_string());
            eq("peer_addr", h.peer_addr.to_string());
        }
        Control::AuthRequest(a) => {
            eq("method", ["unknown", "none", "cephx"][a.method as usize].to_owned());
            eq(&format!("auth_payload({})", a.auth_payload.len()), hex_of(&a.auth_payload));
        }
        Control::AuthReplyMore(a) => eq(&format!("auth_payload({})", a.auth_payload.len()), hex_of(&a.auth_payload)),
        Control::AuthRequestMore(a) => eq(&format!("auth_payload({})", a.auth_payload.len()), hex_of(&a.auth_payload)),
        Control::AuthDone(d) => {
            eq("global_id", d.global_id.to_string());
            eq("con_mode", ["unknown", "crc", "secure"][d.con_mode as usize].to_owned());
        }
        Control::AuthSignature(s) => eq("sha256", hex_of(&s.sha256)),
        Control::ClientIdent(i) => {
            eq("gid", i.gid.to_string());
            eq("global_seq", i.global_seq.to_string());
            eq("features_supported", format!("{:#x}", i.supported_features));
            eq("features_required", format!("{:#x}", i.required_features));
            eq("flags", format!("{:#x}", i.flags));
            eq("client_cookie", format!("{:#x}", i.client_cookie));
            eq("target", i.target_addr.to_string());
        }
        Control::ServerIdent(i) => {
            eq("gid", i.gid.to_string());
            eq("global_seq", i.global_seq.to_string());
            eq("features_supported", format!("{:#x}", i.supported_features));
            eq("features_required", format!("{:#x}", i.required_features));
            eq("flags", format!("{:#x}", i.flags));
            eq("server_cookie", format!("{:#x}", i.server_cookie));
        }
        _ => {}
    }
    checked
}

#[test]
fn golden_annotated_dump() {
    let text = std::fs::read_to_string(ANNOTATED).unwrap();
    let blocks = annotated_blocks(&text);
    let (mut banners, mut frames, mut complete, mut fields) = (0, 0, 0, 0);
    for b in &blocks {
        let h = kv(&b.header);
        let wire_len: usize = b.header.rsplit('(').next().unwrap().split(' ').next().unwrap().parse().unwrap();
        if b.header.contains("] BANNER ") {
            banners += 1;
            assert!(b.complete);
            assert_eq!(b.bytes.len(), wire_len);
            let (banner, used) = Banner::decode(&b.bytes).unwrap().unwrap();
            assert_eq!(used, wire_len);
            assert_eq!(&banner.encode()[..], &b.bytes[..]);
            assert_eq!(banner.supported, num(&h["supported"]));
            assert_eq!(banner.required, num(&h["required"]));
            continue;
        }
        frames += 1;
        // Every dump, complete or not, starts with the preamble: check it against the annotation.
        let pre: [u8; PREAMBLE_LEN] = b.bytes[..PREAMBLE_LEN].try_into().unwrap();
        let p = msgr_core::proto::frame::Preamble::parse(&pre, &FrameLimits::default()).unwrap();
        assert_eq!(p.tag as u64, num(&h["tag"]), "{}", b.header);
        assert_eq!(u64::from(p.num_segments), num(&h["num_segments"]));
        assert_eq!(u64::from(u32::from_le_bytes(pre[28..].try_into().unwrap())), num(&h["preamble_crc"]));
        assert_eq!(p.crc_onwire_len(), wire_len);
        let segs = b.header.split("segs=[").nth(1).unwrap().split(']').next().unwrap();
        let pairs: Vec<(u64, u64)> = segs
            .split("), (")
            .map(|s| {
                let s = s.trim_matches(|c| c == '(' || c == ')');
                let (l, a) = s.split_once(", ").unwrap();
                (l.parse().unwrap(), a.parse().unwrap())
            })
            .collect();
        for (i, (l, a)) in pairs.iter().enumerate() {
            assert_eq!((u64::from(p.lens[i]), u64::from(p.aligns[i])), (*l, *a), "{}", b.header);
        }
        if !b.complete {
            continue;
        }
        complete += 1;
        assert_eq!(b.bytes.len(), wire_len, "{}", b.header);
        let mut buf = BytesMut::from(&b.bytes[..]);
        let f = FrameDecoder::new(FrameLimits::default()).decode(&mut buf).unwrap().unwrap();
        assert!(buf.is_empty());
        assert_eq!(encode_frame_to_vec(&f), b.bytes, "{}", b.header);
        if let Some(c0) = h.get("seg0_crc") {
            let at = PREAMBLE_LEN + f.payload().len();
            assert_eq!(u64::from(u32::from_le_bytes(b.bytes[at..at + 4].try_into().unwrap())), num(c0));
        }
        for note in &b.notes {
            if let Some(ep) = note.strip_prefix("epilogue: ") {
                let e = kv(ep);
                assert_eq!(u64::from(b.bytes[wire_len - 13]), num(&e["late_status"]));
                let crcs: Vec<u64> = ep
                    .split("crcs=[")
                    .nth(1)
                    .unwrap()
                    .split(']')
                    .next()
                    .unwrap()
                    .split(", ")
                    .map(|s| num(s.trim_matches('\'')))
                    .collect();
                for (i, c) in crcs.iter().enumerate() {
                    let at = wire_len - 12 + 4 * i;
                    assert_eq!(u64::from(u32::from_le_bytes(b.bytes[at..at + 4].try_into().unwrap())), *c);
                }
                fields += 1;
            }
        }
        if f.tag == Tag::Message {
            let (hdr, msg) = parse_message_frame(&f).unwrap();
            assert_eq!(encode_frame_to_vec(&message_frame(&msg, hdr.seq, hdr.ack_seq)), b.bytes);
            let note = b.notes.iter().find_map(|n| n.strip_prefix("ceph_msg_header2: ")).unwrap();
            let n = kv(note);
            for (k, v) in [
                ("seq", hdr.seq),
                ("tid", hdr.tid),
                ("type", u64::from(hdr.msg_type)),
                ("priority", u64::from(hdr.priority)),
                ("version", u64::from(hdr.version)),
                ("data_off", u64::from(hdr.data_off)),
                ("ack_seq", hdr.ack_seq),
                ("flags", u64::from(hdr.flags)),
                ("compat_version", u64::from(hdr.compat_version)),
            ] {
                assert_eq!(num(&n[k]), v, "header2 {k}");
                fields += 1;
            }
        } else {
            let c = Control::from_frame(&f).unwrap();
            assert_eq!(c.to_frame().payload(), f.payload());
            let note = kv(b.notes.first().map(String::as_str).unwrap_or(""));
            fields += check_control_note(&c, &note);
        }
    }
    println!(
        "annotated dump: {banners} banners, {frames} frames ({complete} complete, re-encoded), {fields} fields checked"
    );
    assert!(banners >= 4 && complete >= 20 && fields >= 50);
    // the blank/none address is printed as "-": sanity of Display used above
    assert_eq!(EntityAddr::default().to_string(), "-");
    // ControlFrame is in scope for from_frame/decode users
    let _ = msgr_core::proto::frames::Ack::decode(&[0; 8]).unwrap();
}

// ------------------------------------------------------------------ fuzz seed corpus

/// The committed seed corpus of the fuzz targets (`fuzz/corpus/`) is derived from the
/// captures: every msgr2 direction minus its banner for the frame decoder, and every
/// client→server direction (banner included) for the server handshake. This test
/// checks that the committed files are exactly those; with `MSGR_WRITE_FUZZ_SEEDS=1`
/// it (re)writes them instead.
#[test]
fn fuzz_seed_corpus_comes_from_the_captures() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus");
    let write = std::env::var("MSGR_WRITE_FUZZ_SEEDS").as_deref() == Ok("1");
    let mut seeds: Vec<(String, Vec<u8>)> = Vec::new();
    for path in CAPTURES {
        let short = path.rsplit('/').next().unwrap().trim_end_matches(".pcapng");
        let file = std::fs::read(path).unwrap();
        for s in tcp_streams(&pcapng_packets(&file)) {
            if !s.data.starts_with(BANNER_PREFIX) || s.data.len() < 26 {
                continue;
            }
            let (_, ap, _, bp) = s.key;
            // Frames follow the 10-byte banner prefix and its 16-byte payload.
            seeds.push((format!("frame_decoder/{short}-{ap}-{bp}"), s.data[26..].to_vec()));
            // The monitor listens on the lower, well-known port.
            if bp < ap {
                seeds.push((format!("server_handshake/{short}-{ap}-{bp}"), s.data.clone()));
            }
        }
    }
    assert!(seeds.len() >= 6, "too few seeds: {}", seeds.len());
    for (name, bytes) in &seeds {
        let p = format!("{root}/{name}");
        if write {
            std::fs::write(&p, bytes).unwrap();
        } else {
            let committed =
                std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e} (regenerate: MSGR_WRITE_FUZZ_SEEDS=1)"));
            assert!(&committed == bytes, "{p} differs from the capture (regenerate: MSGR_WRITE_FUZZ_SEEDS=1)");
        }
    }
}
