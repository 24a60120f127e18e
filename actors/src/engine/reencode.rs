//! Pull side of exact re-compression: re-create the exact compressed stream of a layer from its
//! uncompressed bytes and the [`Encoding`] recorded at ingest (see [`super::recompress`] for
//! how that is identified).

use std::io::Write;

use super::goflate::GoDeflater;
use super::kpflate;
use super::pigz::PigzEncoder;
use super::recompress::{Encoding, GoEncoder, GoStdVariant, GzipMember};
use super::segmented::{SegmentKind, Segmented};
use super::zstd_frames::FramesEncoder;

enum ReState {
    None,
    Gzip {
        members: Vec<GzipMember>,
        trailing: Vec<u8>,
        /// Index of the member being written, its encoder and the raw bytes it still takes.
        idx: usize,
        enc: Option<MemberEnc>,
        left: u64,
        started: bool,
        /// Small members waiting to be re-encoded together.
        queue: Box<MemberQueue>,
    },
    Zstd(Box<zstd::stream::write::Encoder<'static, Vec<u8>>>),
    ZstdFrames(Box<FramesEncoder>),
}

/// Members smaller than this are re-encoded several at a time (larger ones stream, in
/// segments where they can).
const QUEUE_MEMBERS_BELOW: u64 = 8 << 20;
/// Queued plaintext per pool thread (at most 8) before the queue is re-encoded: room for two
/// of eStargz's 4 MiB chunks per thread.
const QUEUE_PER_THREAD: usize = 4 << 20;

/// Small gzip members whose plaintext is all in, re-encoded several at a time on the rayon
/// pool: members are independent streams, and layers of many (eStargz: one or more per file)
/// would otherwise be re-encoded one after another on the restore's own thread.
struct MemberQueue {
    /// Queued members: index and plaintext length (all of it, unless the plaintext ended
    /// early: then the restore's digest check fails the stream).
    queued: Vec<(usize, usize)>,
    raw: Vec<u8>,
    /// Plaintext that sets the queue off.
    batch: usize,
}

impl MemberQueue {
    fn new() -> MemberQueue {
        MemberQueue {
            queued: Vec::new(),
            raw: Vec::new(),
            batch: rayon::current_num_threads().clamp(1, 8) * QUEUE_PER_THREAD,
        }
    }

    /// Whether member `m` waits in the queue rather than streams.
    fn takes(m: &GzipMember) -> bool {
        m.raw_len < QUEUE_MEMBERS_BELOW
            && segment_kind(m).is_none()
            && !matches!(m.go, Some(GoEncoder::Pgzip { .. }))
    }

    /// Member `idx` is in (its plaintext the last `len` bytes queued).
    fn add(&mut self, members: &[GzipMember], idx: usize, len: usize, out: &mut Vec<u8>) {
        self.queued.push((idx, len));
        if self.raw.len() >= self.batch {
            self.drain(members, out);
        }
    }

    /// Re-encode the queued members, several at a time, and write them in order.
    fn drain(&mut self, members: &[GzipMember], out: &mut Vec<u8>) {
        use rayon::prelude::*;
        if self.queued.is_empty() {
            return;
        }
        let mut jobs = Vec::with_capacity(self.queued.len());
        let mut at = 0usize;
        for &(idx, len) in &self.queued {
            jobs.push((idx, at, len));
            at += len;
        }
        let raw = &self.raw;
        let encode = |&(idx, at, len): &(usize, usize, usize)| {
            let m = &members[idx];
            let mut o = Vec::with_capacity(m.header.len() + len / 2 + 16);
            o.extend_from_slice(&m.header);
            let mut e = MemberEnc::open(m);
            e.write(&raw[at..at + len], &mut o);
            e.finish(&mut o);
            o.extend_from_slice(&m.trailer);
            o
        };
        let written: Vec<Vec<u8>> = if jobs.len() == 1 {
            jobs.iter().map(encode).collect()
        } else {
            jobs.par_iter().map(encode).collect()
        };
        for w in written {
            out.extend_from_slice(&w);
        }
        self.raw.clear();
        self.queued.clear();
    }
}

/// The deflate encoder of one gzip member.
enum MemberEnc {
    /// Not an encoder: the member's plaintext goes to the [`MemberQueue`].
    Queued,
    Zlib(flate2::write::DeflateEncoder<Vec<u8>>),
    Pigz(Box<PigzEncoder>),
    Go(Box<GoDeflater>),
    /// Go 1.27's compress/flate (klauspost's encoder as one stream).
    Kp(Box<kpflate::KpDeflater>),
    Segmented(Box<Segmented>),
    Pgzip(Box<PgzipParallel>),
}

/// Re-encodes a pgzip member: its blocks are independent given the previous block's tail, so
/// they are encoded several at a time on the rayon pool.
struct PgzipParallel {
    version: kpflate::KpVersion,
    level: i32,
    block: usize,
    total: u64,
    /// Index of the next block to encode; the last block is `total / block` (possibly empty).
    next: u64,
    /// Plaintext from absolute offset `buf_base` (includes the next block's dictionary).
    buf: Vec<u8>,
    buf_base: u64,
}

impl PgzipParallel {
    fn new(version: kpflate::KpVersion, level: i32, block: usize, total: u64) -> PgzipParallel {
        PgzipParallel {
            version,
            level,
            block,
            total,
            next: 0,
            buf: Vec::new(),
            buf_base: 0,
        }
    }

    fn last_block(&self) -> u64 {
        self.total / self.block as u64
    }

    fn write(&mut self, raw: &[u8], out: &mut Vec<u8>) {
        self.buf.extend_from_slice(raw);
        let have = self.buf_base + self.buf.len() as u64;
        let ready = (have / self.block as u64).min(self.last_block()) - self.next;
        let threads = rayon::current_num_threads().max(1) as u64;
        if ready >= threads {
            self.encode(ready, out);
        }
    }

    fn encode(&mut self, count: u64, out: &mut Vec<u8>) {
        use rayon::prelude::*;
        let last = self.last_block();
        let b = self.block as u64;
        let bodies: Vec<Vec<u8>> = (self.next..self.next + count)
            .into_par_iter()
            .map(|i| {
                let start = i * b;
                let end = ((i + 1) * b).min(self.total);
                let dict_from = start.saturating_sub(kpflate::PGZIP_TAIL as u64);
                let at = |abs: u64| (abs - self.buf_base) as usize;
                let mut body = Vec::with_capacity(self.block / 2);
                if end > self.buf_base + self.buf.len() as u64 {
                    // The plaintext ended early (a corrupt restore): the digest check fails it.
                    tracing::error!(block = i, "pgzip block missing plaintext");
                    return body;
                }
                kpflate::pgzip_block_version(
                    self.version,
                    self.level,
                    &self.buf[at(dict_from)..at(start)],
                    &self.buf[at(start)..at(end)],
                    i == last,
                    &mut body,
                )
                .expect("level checked at ingest");
                body
            })
            .collect();
        for body in bodies {
            out.extend_from_slice(&body);
        }
        self.next += count;
        let keep_from = (self.next * b).saturating_sub(kpflate::PGZIP_TAIL as u64);
        if keep_from > self.buf_base {
            let drop = ((keep_from - self.buf_base) as usize).min(self.buf.len());
            self.buf.drain(..drop);
            self.buf_base += drop as u64;
        }
    }

    fn finish(mut self, out: &mut Vec<u8>) {
        let left = self.last_block() + 1 - self.next;
        self.encode(left, out);
    }
}

/// How a member with recorded block boundaries is re-encoded in segments (`None`: it has none,
/// or its encoder is not re-encoded that way).
fn segment_kind(m: &GzipMember) -> Option<SegmentKind> {
    if m.splits.is_empty() {
        return None;
    }
    match &m.go {
        Some(GoEncoder::Std {
            level,
            variant: GoStdVariant::Go1_8,
        }) => Some(SegmentKind::Go(*level)),
        Some(GoEncoder::Std { .. }) => None,
        Some(GoEncoder::Pgzip { .. } | GoEncoder::Kpgzip { .. }) => None,
        None if m.pigz_block.is_none() => Some(SegmentKind::Zlib(m.level as i32)),
        None => None,
    }
}

/// Where a resumed re-encoder starts in its layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resume {
    /// The compressed stream's byte its first output byte is.
    pub offset: u64,
    /// The uncompressed offset it is fed from.
    pub plain: u64,
}

impl MemberEnc {
    fn open(m: &GzipMember) -> MemberEnc {
        if let Some(GoEncoder::Pgzip {
            level,
            block,
            variant,
        }) = &m.go
        {
            return MemberEnc::Pgzip(Box::new(PgzipParallel::new(
                variant.kp_version(),
                *level,
                *block as usize,
                m.raw_len,
            )));
        }
        if let Some(kind) = segment_kind(m) {
            return MemberEnc::Segmented(Box::new(Segmented::new(kind, m.raw_len, &m.splits)));
        }
        if let Some(GoEncoder::Std {
            level,
            variant: GoStdVariant::Go1_27,
        }) = &m.go
        {
            return MemberEnc::Kp(Box::new(
                kpflate::KpDeflater::new(kpflate::KpVersion::Go1_27, *level)
                    .expect("level checked at ingest"),
            ));
        }
        if let Some(GoEncoder::Kpgzip { level, variant }) = &m.go {
            return MemberEnc::Kp(Box::new(
                kpflate::KpDeflater::new(variant.kp_version(), *level)
                    .expect("level checked at ingest"),
            ));
        }
        if let Some(GoEncoder::Std { level, .. }) = &m.go {
            return MemberEnc::Go(Box::new(
                GoDeflater::new(*level).expect("level checked at ingest"),
            ));
        }
        match m.pigz_block {
            Some(block) => MemberEnc::Pigz(Box::new(PigzEncoder::new(
                m.level,
                block as usize,
                m.raw_len,
            ))),
            None => MemberEnc::Zlib(flate2::write::DeflateEncoder::new(
                Vec::new(),
                flate2::Compression::new(m.level),
            )),
        }
    }

    fn write(&mut self, raw: &[u8], out: &mut Vec<u8>) {
        match self {
            MemberEnc::Queued => unreachable!("queued members are written by the queue"),
            MemberEnc::Zlib(e) => {
                e.write_all(raw).expect("writing to memory");
                out.append(e.get_mut());
            }
            MemberEnc::Pigz(p) => p.push(raw, out),
            MemberEnc::Go(g) => {
                g.write(raw);
                g.take_output(out);
            }
            MemberEnc::Kp(g) => {
                g.write(raw);
                g.take_output(out);
            }
            MemberEnc::Segmented(g) => g.write(raw, out),
            MemberEnc::Pgzip(p) => p.write(raw, out),
        }
    }

    fn finish(self, out: &mut Vec<u8>) {
        match self {
            MemberEnc::Queued => unreachable!("queued members are written by the queue"),
            MemberEnc::Zlib(e) => out.extend_from_slice(&e.finish().expect("finishing in memory")),
            MemberEnc::Pigz(p) => p.finish(out),
            MemberEnc::Go(mut g) => {
                g.close();
                g.take_output(out);
            }
            MemberEnc::Kp(mut g) => {
                g.close();
                g.take_output(out);
            }
            MemberEnc::Segmented(g) => g.finish(out),
            MemberEnc::Pgzip(p) => p.finish(out),
        }
    }
}

/// Re-creates the exact compressed stream from the uncompressed bytes pushed into it.
pub struct Reencoder {
    st: ReState,
}

impl Reencoder {
    pub fn new(e: &Encoding) -> Reencoder {
        let st = match e {
            Encoding::None | Encoding::ZstdStoredFrames { .. } => ReState::None,
            Encoding::Gzip { members, trailing } => ReState::Gzip {
                members: members.clone(),
                trailing: trailing.clone(),
                idx: 0,
                enc: None,
                left: 0,
                started: false,
                queue: Box::new(MemberQueue::new()),
            },
            Encoding::Zstd {
                level,
                checksum,
                content_size,
                raw_len,
            } => {
                let mut z =
                    zstd::stream::write::Encoder::new(Vec::new(), *level).expect("zstd encoder");
                z.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(*checksum))
                    .expect("zstd parameter");
                z.set_parameter(zstd::zstd_safe::CParameter::ContentSizeFlag(*content_size))
                    .expect("zstd parameter");
                if *content_size {
                    z.set_pledged_src_size(Some(*raw_len))
                        .expect("zstd pledged size");
                }
                ReState::Zstd(Box::new(z))
            }
            Encoding::ZstdFrames { encoder, parts } => {
                ReState::ZstdFrames(Box::new(FramesEncoder::new(*encoder, parts.clone())))
            }
        };
        Reencoder { st }
    }

    /// [`Reencoder::new`] for a re-encode that proves the recipe as pulls will use it
    /// (verify-before-discard, fsck): a long zstd frame planned in segments is re-encoded in
    /// them even when the process's segment threads are busy (a pull would then re-encode it
    /// whole, which is always exact; its segments are what must be proven).
    pub fn proving(e: &Encoding) -> Reencoder {
        match Reencoder::new(e) {
            Reencoder {
                st: ReState::ZstdFrames(f),
            } => Reencoder {
                st: ReState::ZstdFrames(Box::new(f.proving())),
            },
            r => r,
        }
    }

    /// A re-encoder of the stream from as close before compressed byte `at` as a block
    /// boundary recorded at ingest allows, to serve a range without re-encoding what comes
    /// before it. An uncompressed stream, or zstd frames stored as they are, resumes at `at`
    /// itself; zstd streams at the frame `at` falls in; gzip streams at the start of the member `at` falls in (members are
    /// independent: eStargz's per-file members, the TOC and the footer are each reached
    /// directly), or inside it at a recorded block boundary when its encoder is re-encoded in
    /// segments. `None` when there is none after the start at or before `at`.
    pub fn resume(e: &Encoding, at: u64) -> Option<(Reencoder, Resume)> {
        let (members, trailing) = match e {
            Encoding::None | Encoding::ZstdStoredFrames { .. } if at > 0 => {
                let r = Resume {
                    offset: at,
                    plain: at,
                };
                return Some((Reencoder { st: ReState::None }, r));
            }
            Encoding::Gzip { members, trailing } => (members, trailing),
            Encoding::ZstdFrames { encoder, parts } => {
                let (f, offset, plain) = FramesEncoder::resume(*encoder, parts, at)?;
                let st = ReState::ZstdFrames(Box::new(f));
                return Some((Reencoder { st }, Resume { offset, plain }));
            }
            _ => return None,
        };
        // Where each member starts, compressed and uncompressed, as far as the recorded deflate
        // lengths tell (recipes from before them: the first member only).
        let mut starts = vec![(0u64, 0u64)];
        for m in &members[..members.len().saturating_sub(1)] {
            let Some(n) = m.deflate_len else { break };
            let &(offset, plain) = starts.last().expect("one at least");
            starts.push((offset + (m.header.len() + 8) as u64 + n, plain + m.raw_len));
        }
        let i = starts.iter().rposition(|&(offset, _)| offset <= at)?;
        let (m, (m_offset, m_plain)) = (&members[i], starts[i]);
        let header = m_offset + m.header.len() as u64;
        let split = segment_kind(m).and_then(|kind| {
            let k = (m.splits.iter()).rposition(|&[_, bit]| header + bit.div_ceil(8) <= at)? + 1;
            Some((kind, k))
        });
        let (enc, idx, left, r) = match split {
            Some((kind, k)) => {
                // Inside the member, at the block boundary before `at`.
                let (seg, plain) = Segmented::resume(kind, m.raw_len, &m.splits, k);
                let r = Resume {
                    offset: header + m.splits[k - 1][1].div_ceil(8),
                    plain: m_plain + plain,
                };
                let enc = Some(MemberEnc::Segmented(Box::new(seg)));
                (enc, i, m.raw_len - plain, r)
            }
            // Nothing to skip.
            None if i == 0 => return None,
            // At the member's start: the one before counts as written, so the next push or
            // the finish opens this one.
            None => {
                let r = Resume {
                    offset: m_offset,
                    plain: m_plain,
                };
                (None, i - 1, 0, r)
            }
        };
        let st = ReState::Gzip {
            members: members.clone(),
            trailing: trailing.clone(),
            idx,
            enc,
            left,
            started: true,
            queue: Box::new(MemberQueue::new()),
        };
        Some((Reencoder { st }, r))
    }

    /// Add uncompressed bytes; compressed output is appended to `out`.
    /// Whether the stream is sent as it is stored (uncompressed, or zstd frames stored as they
    /// are): nothing to re-encode, so a restore's reader rather than its writer is the slower.
    pub fn copies(&self) -> bool {
        matches!(self.st, ReState::None)
    }

    pub fn push(&mut self, mut raw: &[u8], out: &mut Vec<u8>) {
        match &mut self.st {
            ReState::None => out.extend_from_slice(raw),
            ReState::Zstd(z) => {
                z.write_all(raw).expect("writing to memory");
                out.append(z.get_mut());
            }
            ReState::ZstdFrames(f) => f.push(raw, out),
            ReState::Gzip {
                members,
                idx,
                enc,
                left,
                started,
                queue,
                ..
            } => loop {
                if !*started || (enc.is_none() && *left == 0) {
                    // Open the next member (members of zero bytes open and close at once).
                    if *started {
                        *idx += 1;
                    }
                    *started = true;
                    let Some(m) = members.get(*idx) else {
                        // More input than the recipe describes: not ours to encode.
                        queue.drain(members, out);
                        out.extend_from_slice(raw);
                        return;
                    };
                    if MemberQueue::takes(m) {
                        *enc = Some(MemberEnc::Queued);
                    } else {
                        queue.drain(members, out);
                        out.extend_from_slice(&m.header);
                        *enc = Some(MemberEnc::open(m));
                    }
                    *left = m.raw_len;
                }
                let e = enc.as_mut().expect("open member");
                let take = (*left).min(raw.len() as u64) as usize;
                match e {
                    MemberEnc::Queued => queue.raw.extend_from_slice(&raw[..take]),
                    e => e.write(&raw[..take], out),
                }
                *left -= take as u64;
                raw = &raw[take..];
                if *left == 0 {
                    let e = enc.take().expect("open member");
                    close_member(members, *idx, e, 0, queue, out);
                    if raw.is_empty() && *idx + 1 >= members.len() {
                        return;
                    }
                } else {
                    return;
                }
            },
        }
    }

    /// End of the uncompressed stream.
    pub fn finish(mut self, out: &mut Vec<u8>) {
        match &mut self.st {
            ReState::None => {}
            ReState::Zstd(_) | ReState::ZstdFrames(_) => {
                match std::mem::replace(&mut self.st, ReState::None) {
                    ReState::Zstd(z) => {
                        out.extend_from_slice(&z.finish().expect("finishing in memory"));
                    }
                    ReState::ZstdFrames(f) => f.finish(out),
                    _ => unreachable!("matched above"),
                }
            }
            ReState::Gzip {
                members,
                trailing,
                idx,
                enc,
                left,
                started,
                queue,
            } => {
                // Close an open member and emit any remaining empty members.
                let mut next = if *started { *idx + 1 } else { 0 };
                if let Some(e) = enc.take() {
                    close_member(members, *idx, e, *left, queue, out);
                }
                while next < members.len() {
                    let m = &members[next];
                    let e = if MemberQueue::takes(m) {
                        MemberEnc::Queued
                    } else {
                        queue.drain(members, out);
                        out.extend_from_slice(&m.header);
                        MemberEnc::open(m)
                    };
                    close_member(members, next, e, m.raw_len, queue, out);
                    next += 1;
                }
                queue.drain(members, out);
                out.extend_from_slice(trailing);
            }
        }
    }
}

/// Member `idx`'s plaintext is all in (but `missing` bytes, when the plaintext ended early):
/// a queued member joins the queue, a streaming one is finished with its trailer.
fn close_member(
    members: &[GzipMember],
    idx: usize,
    enc: MemberEnc,
    missing: u64,
    queue: &mut MemberQueue,
    out: &mut Vec<u8>,
) {
    match enc {
        MemberEnc::Queued => {
            let len = (members[idx].raw_len - missing) as usize;
            queue.add(members, idx, len, out);
        }
        e => {
            e.finish(out);
            out.extend_from_slice(&members[idx].trailer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::goflate;
    use crate::engine::recompress::{Compression, LayerDecoder};

    /// Words drawn at random: compressible, with matches at every distance.
    fn text(n: usize, seed: u64) -> Vec<u8> {
        let words: [&[u8]; 8] = [
            b"usr ", b"lib ", b"share ", b"doc ", b"\n", b"0755 ", b"a", b"zz",
        ];
        let r = crate::engine::test_bytes(n, seed);
        let mut v = Vec::with_capacity(n + 8);
        for b in r {
            if v.len() >= n {
                break;
            }
            v.extend_from_slice(words[(b % 8) as usize]);
        }
        v.truncate(n);
        v
    }

    fn go_member(level: i32, raw: &[u8]) -> Vec<u8> {
        let mut out = goflate::gzip_header(level).to_vec();
        out.extend(goflate::deflate(level, raw).unwrap());
        let mut crc = flate2::Crc::new();
        crc.update(raw);
        out.extend(crc.sum().to_le_bytes());
        out.extend((raw.len() as u32).to_le_bytes());
        out
    }

    /// eStargz's footer: an empty member at NoCompression whose Extra field holds the TOC's
    /// offset (51 bytes).
    fn estargz_footer(toc_offset: u64) -> Vec<u8> {
        let sub = format!("{toc_offset:016x}STARGZ");
        let mut out = vec![0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 255];
        out.extend(((4 + sub.len()) as u16).to_le_bytes());
        out.extend(b"SG");
        out.extend((sub.len() as u16).to_le_bytes());
        out.extend(sub.as_bytes());
        out.extend(goflate::deflate(0, b"").unwrap());
        out.extend([0; 8]);
        assert_eq!(out.len(), 51);
        out
    }

    /// Members as eStargz lays them out (one per file payload, an empty one among them, a
    /// large one with block boundaries, the footer last); with where each starts.
    fn layered() -> (Vec<u8>, Vec<u8>, Vec<u64>) {
        let parts = [
            text(3_000, 1),
            text(200_000, 2),
            Vec::new(),
            text(5 << 20, 3),
            text(700, 4),
        ];
        let (mut gz, mut raw, mut starts) = (Vec::new(), Vec::new(), Vec::new());
        for p in &parts {
            starts.push(gz.len() as u64);
            gz.extend(go_member(9, p));
            raw.extend_from_slice(p);
        }
        starts.push(gz.len() as u64);
        let toc = starts[4];
        gz.extend(estargz_footer(toc));
        (gz, raw, starts)
    }

    fn ingest(gz: &[u8]) -> (Encoding, Vec<u8>) {
        let mut d = LayerDecoder::new(Compression::detect(gz));
        let mut raw = Vec::new();
        for part in gz.chunks(100_003) {
            d.feed(part, &mut |b| raw.extend_from_slice(b)).unwrap();
        }
        (d.finish().unwrap(), raw)
    }

    fn tail(enc: &Encoding, raw: &[u8], at: u64) -> Option<(Resume, Vec<u8>)> {
        let (mut r, resume) = Reencoder::resume(enc, at)?;
        let mut out = Vec::new();
        for part in raw[resume.plain as usize..].chunks(65_536) {
            r.push(part, &mut out);
        }
        r.finish(&mut out);
        Some((resume, out))
    }

    #[test]
    fn multi_member_streams_resume_at_the_member_a_range_starts_in() {
        let (gz, raw, starts) = layered();
        let (enc, got) = ingest(&gz);
        assert!(got == raw);
        let Encoding::Gzip { members, .. } = &enc else {
            panic!("{enc:?}")
        };
        assert_eq!(members.len(), 6);
        assert!(!members[3].splits.is_empty(), "no boundary recorded");
        assert!(Reencoder::resume(&enc, 0).is_none(), "nothing to skip");
        assert!(Reencoder::resume(&enc, starts[1] - 1).is_none());
        let last = gz.len() as u64 - 1;
        let mut probes: Vec<u64> = starts.iter().skip(1).flat_map(|&s| [s, s + 1]).collect();
        probes.extend([starts[4] - 1, last - 50, last]);
        for at in probes {
            let (resume, out) = tail(&enc, &raw, at).unwrap();
            let member = starts.iter().rposition(|&s| s <= at).unwrap();
            assert!(
                starts[member] <= resume.offset && resume.offset <= at,
                "{at}: {resume:?}, member {member} at {}",
                starts[member]
            );
            assert!(
                out == gz[resume.offset as usize..],
                "{at}: resumed at {resume:?}: {} bytes, want {}",
                out.len(),
                gz.len() as u64 - resume.offset
            );
        }
        // The footer alone, the way an eStargz reader asks for it first.
        let (resume, out) = tail(&enc, &raw, gz.len() as u64 - 51).unwrap();
        assert_eq!((resume.offset, resume.plain), (starts[5], raw.len() as u64));
        assert!(out == gz[gz.len() - 51..]);
        // Inside the large member, from a block boundary rather than its start.
        let (resume, _) = tail(&enc, &raw, starts[4] - 1).unwrap();
        assert!(resume.offset > starts[3], "{resume:?}");
    }

    /// Recipes written before deflate lengths were recorded resume only inside the first
    /// member, and still exactly.
    #[test]
    fn multi_member_recipes_without_deflate_lengths_resume_in_the_first_member_only() {
        let big = text(5 << 20, 5);
        let mut gz = go_member(6, &big);
        let second = gz.len() as u64;
        gz.extend(go_member(6, &text(100_000, 6)));
        let (mut enc, raw) = ingest(&gz);
        let Encoding::Gzip { members, .. } = &mut enc else {
            panic!("{enc:?}")
        };
        for m in members.iter_mut() {
            m.deflate_len = None;
        }
        let (resume, out) = tail(&enc, &raw, second + 10).unwrap();
        assert!(resume.offset < second, "{resume:?}");
        assert!(out == gz[resume.offset as usize..]);
        let json = serde_json::to_string(&enc).unwrap();
        assert!(!json.contains("deflate_len"), "{json}");
    }

    /// Many small members (several queue batches' worth, mixed encoders, empty ones among
    /// them) come out in order and exact, however the plaintext is pushed; a plaintext that
    /// ends early gives a short stream, not a panic.
    #[test]
    fn many_small_members_are_re_encoded_together_in_order() {
        use std::io::Write;
        let (mut gz, mut raw) = (Vec::new(), Vec::new());
        for i in 0..240u64 {
            let p = text((i as usize * 7919) % 120_000, i + 10);
            if i % 3 == 0 {
                let mut e = flate2::GzBuilder::new()
                    .mtime(0)
                    .write(Vec::new(), flate2::Compression::new(6));
                e.write_all(&p).unwrap();
                gz.extend(e.finish().unwrap());
            } else {
                gz.extend(go_member(if i % 3 == 1 { 1 } else { 5 }, &p));
            }
            raw.extend_from_slice(&p);
        }
        let (enc, got) = ingest(&gz);
        assert!(got == raw);
        let Encoding::Gzip { members, .. } = &enc else {
            panic!("{enc:?}")
        };
        assert_eq!(members.len(), 240);
        for step in [1_000, 65_536, 3 << 20] {
            let mut r = Reencoder::new(&enc);
            let mut out = Vec::new();
            for part in raw.chunks(step) {
                r.push(part, &mut out);
            }
            r.finish(&mut out);
            assert!(out == gz, "pushed {step} bytes at a time");
        }
        let mut r = Reencoder::new(&enc);
        let mut out = Vec::new();
        r.push(&raw[..raw.len() / 2], &mut out);
        r.finish(&mut out);
        assert!(out.len() < gz.len());
    }
}
