//! The changed-chunk map of a snapshot: the origin chunks that may differ from it (its
//! exceptions), as sorted, coalesced runs of chunks.
//!
//! A snapshot's exceptions are exactly the origin chunks written (copied out) since it was
//! taken, plus those written through the snapshot's own file; every other chunk of the origin
//! still holds what the snapshot holds. While writes continue the set only grows: an exception
//! is in the table before the origin write that made it changes a byte of the origin (see
//! `volume/origin_io.rs`). During a merge it shrinks: the runs are the chunks not yet merged
//! back, where the origin device still holds data the merged view does not show.
//!
//! The same runs are made from the daemon's in-memory table (`changes NAME` in `control`,
//! paged by [`render_page`] and read back by [`parse_page`]) and from a COW read offline
//! (`snapfs inspect --changes`), so the two agree on the same COW.
//!
//! Runs are in chunks, each run whole chunks: a volume whose size is not a multiple of the
//! chunk size has a last chunk that ends past the volume's end (offline, the volume's size is
//! not known); [`ChangeMap::byte_ranges`] clips there when given the size.

/// Runs of origin chunks, sorted and coalesced: `(first chunk, chunk count)`, never touching or
/// overlapping.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChangeMap {
    pub chunk_bytes: u64,
    pub runs: Vec<(u64, u64)>,
}

/// Most runs one `changes` answer carries: about 1.5 MB of text. A COW with a million scattered
/// exceptions is read in 16 answers (see [`render_page`]).
pub const PAGE_RUNS: usize = 65536;

impl ChangeMap {
    /// From runs in any order (the table's, or single chunks read from a COW), possibly
    /// adjacent; overlapping runs are merged too.
    pub fn from_runs(chunk_bytes: u64, mut runs: Vec<(u64, u64)>) -> ChangeMap {
        runs.retain(|&(_, len)| len > 0);
        runs.sort_unstable();
        let mut out: Vec<(u64, u64)> = Vec::with_capacity(runs.len());
        for (start, len) in runs {
            match out.last_mut() {
                Some((s, l)) if *s + *l >= start => *l = (*l).max(start + len - *s),
                _ => out.push((start, len)),
            }
        }
        ChangeMap {
            chunk_bytes,
            runs: out,
        }
    }

    /// Chunks in all runs.
    pub fn chunks(&self) -> u64 {
        self.runs.iter().map(|&(_, len)| len).sum()
    }

    /// Bytes of all runs (whole chunks).
    pub fn total_bytes(&self) -> u64 {
        self.chunks() * self.chunk_bytes
    }

    /// The runs as byte ranges `(offset, length)`, whole chunks; with `clip`, cut at that many
    /// bytes (the volume's size): what lies past it is left out.
    pub fn byte_ranges(&self, clip: Option<u64>) -> Vec<(u64, u64)> {
        let end_max = clip.unwrap_or(u64::MAX);
        self.runs
            .iter()
            .map(|&(s, l)| (s * self.chunk_bytes, l * self.chunk_bytes))
            .filter(|&(o, _)| o < end_max)
            .map(|(o, l)| (o, l.min(end_max - o)))
            .collect()
    }

    /// The JSON of `snapfs changes --json` and `snapfs inspect --changes --json`, keys in
    /// this order: `{"snapshot": NAME, "chunk_bytes": N, "ranges": [{"offset": O, "length":
    /// L}, ...], "total_bytes": T}` (`extra` goes last: inspect's `"cow"`).
    pub fn to_json(&self, snapshot: Option<&str>, extra: Option<(&str, &str)>) -> String {
        let mut text = format!(
            "{{\"snapshot\": {}, \"chunk_bytes\": {}, \"ranges\": [",
            serde_json::Value::from(snapshot),
            self.chunk_bytes
        );
        for (i, (o, l)) in self.byte_ranges(None).iter().enumerate() {
            if i > 0 {
                text.push_str(", ");
            }
            text.push_str(&format!("{{\"offset\": {o}, \"length\": {l}}}"));
        }
        text.push_str(&format!("], \"total_bytes\": {}", self.total_bytes()));
        if let Some((key, value)) = extra {
            text.push_str(&format!(
                ", {}: {}",
                serde_json::Value::from(key),
                serde_json::Value::from(value)
            ));
        }
        text.push('}');
        text
    }
}

/// One answer of `changes NAME [FROM]`: the runs that end after chunk `from` (a run that began
/// before it is cut to start there), at most `max` of them. First line
/// `ok changes NAME chunk_bytes=B chunks=N next=C|end` (N the chunks of the whole map, C where
/// the next page starts), then one `FIRST COUNT` line per run, in chunks. A run that grew
/// across a page boundary between two pages is cut there, never lost: the reader coalesces.
pub fn render_page(name: &str, map: &ChangeMap, from: u64, max: usize) -> String {
    let first = map.runs.partition_point(|&(s, l)| s + l <= from);
    let page = &map.runs[first..map.runs.len().min(first + max.max(1))];
    let next = match map.runs.get(first + page.len()) {
        Some(&(s, _)) => s.to_string(),
        None => "end".to_string(),
    };
    let mut text = format!(
        "ok changes {name} chunk_bytes={} chunks={} next={next}",
        map.chunk_bytes,
        map.chunks()
    );
    for &(s, l) in page {
        let s2 = s.max(from);
        text.push_str(&format!("\n{s2} {}", s + l - s2));
    }
    text
}

/// One page read back: its runs, the chunk size, and where the next page starts.
#[derive(Debug, PartialEq, Eq)]
pub struct Page {
    pub chunk_bytes: u64,
    pub runs: Vec<(u64, u64)>,
    pub next: Option<u64>,
}

/// Parses an answer made by [`render_page`] for snapshot `name`.
pub fn parse_page(name: &str, text: &str) -> Result<Page, String> {
    let mut lines = text.lines();
    let head = lines.next().unwrap_or_default();
    let bad = || {
        format!(
            "unexpected answer to changes {name}: {:?}",
            head.escape_debug().to_string()
        )
    };
    let rest = head
        .strip_prefix(&format!("ok changes {name} "))
        .ok_or_else(bad)?;
    let mut chunk_bytes = None;
    let mut next = None;
    for field in rest.split(' ') {
        match field.split_once('=') {
            Some(("chunk_bytes", v)) => chunk_bytes = v.parse::<u64>().ok(),
            Some(("next", "end")) => next = Some(None),
            Some(("next", v)) => next = Some(Some(v.parse::<u64>().map_err(|_| bad())?)),
            _ => {}
        }
    }
    let chunk_bytes = chunk_bytes.filter(|&b| b > 0).ok_or_else(bad)?;
    let next = next.ok_or_else(bad)?;
    let mut runs = Vec::new();
    for line in lines {
        let parsed = line
            .split_once(' ')
            .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)));
        runs.push(
            parsed.ok_or_else(|| format!("bad run {line:?} in the answer to changes {name}"))?,
        );
    }
    Ok(Page {
        chunk_bytes,
        runs,
        next,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_sorted_and_coalesced() {
        let m = ChangeMap::from_runs(
            4096,
            vec![(10, 2), (0, 1), (12, 3), (1, 1), (20, 0), (14, 4)],
        );
        assert_eq!(m.runs, [(0, 2), (10, 8)]);
        assert_eq!((m.chunks(), m.total_bytes()), (10, 40960));
        assert_eq!(m.byte_ranges(None), [(0, 8192), (40960, 32768)]);
        assert_eq!(m.byte_ranges(Some(45000)), [(0, 8192), (40960, 4040)]);
        assert_eq!(m.byte_ranges(Some(8192)), [(0, 8192)]);
        let text = m.to_json(Some("a"), None);
        assert!(
            text.starts_with(
                "{\"snapshot\": \"a\", \"chunk_bytes\": 4096, \"ranges\": [{\"offset\": 0,"
            ),
            "{text}"
        );
        let j: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(j["ranges"][1]["offset"], 40960);
        assert_eq!(j["total_bytes"], 40960);
        assert_eq!(j["snapshot"], "a");
    }

    #[test]
    fn pages_cover_everything_once_even_when_runs_grow_between_pages() {
        let runs: Vec<(u64, u64)> = (0..1000).map(|i| (i * 3, 1 + i % 2)).collect();
        let map = ChangeMap::from_runs(512, runs.clone());
        let mut got = Vec::new();
        let mut from = 0;
        loop {
            let page = parse_page("s", &render_page("s", &map, from, 64)).unwrap();
            assert_eq!(page.chunk_bytes, 512);
            assert!(page.runs.len() <= 64);
            got.extend(page.runs);
            match page.next {
                Some(n) => from = n,
                None => break,
            }
        }
        assert_eq!(ChangeMap::from_runs(512, got), map);
        // A run that grew back across the page boundary is cut at it.
        let grown = ChangeMap::from_runs(512, vec![(0, 2), (5, 10)]);
        let page = parse_page("s", &render_page("s", &grown, 8, 10)).unwrap();
        assert_eq!((page.runs, page.next), (vec![(8, 7)], None));
        let empty = parse_page(
            "s",
            &render_page("s", &ChangeMap::from_runs(512, vec![]), 0, 9),
        );
        assert_eq!(empty.unwrap().runs, []);
    }

    #[test]
    fn other_answers_are_refused() {
        for bad in [
            "",
            "ok snapshot a attached",
            "ok changes t chunk_bytes=512 chunks=0 next=end",
            "ok changes s chunk_bytes=0 chunks=0 next=end",
            "ok changes s chunk_bytes=512 chunks=0",
            "ok changes s chunk_bytes=512 chunks=1 next=end\n1",
            "ok changes s chunk_bytes=512 chunks=1 next=end\n1 x",
        ] {
            assert!(parse_page("s", bad).is_err(), "{bad:?}");
        }
    }
}
