//! Racing control commands from several threads while the origin is written: every answer is
//! coherent, every COW holds a prefix of the origin writes.

use super::*;

// ----- racing control commands ----------------------------------------------------------------

const RACE_NAMES: [&str; 4] = ["a", "b", "c", "d"];
const RACE_BLOCKS: u64 = 1024;
const BLOCK: u64 = 4096;

/// One command a racing thread sent and how it went.
#[derive(Debug)]
struct Sent {
    command: String,
    /// `None` when the write succeeded, else the errno.
    errno: Option<i32>,
    /// A fresh COW made for an attach (must stay all zero when the attach failed).
    cow: Option<PathBuf>,
}

/// Block `k` of the origin as the writer thread leaves it.
fn new_block(k: u64) -> Vec<u8> {
    Rng(1000 + k).bytes(BLOCK)
}

/// The answer `control` shows is always a whole answer of some command.
fn assert_coherent_answer(answer: &str) {
    let first = answer.lines().next().unwrap_or_default();
    let ok = first.starts_with("ok snapshot ")
        || first.starts_with("ok commands:")
        || first.starts_with("ok no command yet");
    let error = first.starts_with("error: ") && answer.lines().count() == 1;
    assert!(ok || error, "incoherent answer {answer:?}");
}

fn race_command(s: &Scratch, rng: &mut Rng, thread: u64, i: u64) -> Sent {
    let name = RACE_NAMES[rng.below(RACE_NAMES.len() as u64) as usize];
    let mut cow = None;
    let command = match rng.below(20) {
        0..=7 => {
            let path = s.path(&format!("{name}-{thread}-{i}.cow"));
            sparse_file(&path, 6 * MIB);
            let c = format!("snapshot {name} {} P 8", path.display());
            cow = Some(path);
            c
        }
        8..=13 => format!("drop {name}"),
        14..=15 => format!("merge {name}"),
        16 => "help".to_string(),
        _ => rng_bad(rng).to_string(),
    };
    let (result, answer) = control_bytes(s, command.as_bytes());
    assert_coherent_answer(&answer);
    Sent {
        command,
        errno: result.err().map(|e| e.raw_os_error().unwrap()),
        cow,
    }
}

fn rng_bad(rng: &mut Rng) -> &'static str {
    [
        "frobnicate",
        "drop",
        "snapshot x rel.cow",
        "drop a b",
        "snapshot a /x N 0",
        "merge a b",
    ][rng.below(6) as usize]
}

/// Sets the flag when dropped.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Writes block after block of the origin, holding it open until told to stop (so every merge
/// is refused); returns how many blocks it wrote.
fn origin_writer(s: &Scratch, stop: &AtomicBool) -> u64 {
    let f = open_rw(&s.file("origin"));
    let mut k = 0;
    while k < RACE_BLOCKS && !stop.load(Ordering::Relaxed) {
        f.write_all_at(&new_block(k), k * BLOCK).unwrap();
        k += 1;
    }
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    k
}

/// A snapshot taken while blocks were written in order holds the first `k` blocks new and the
/// rest as they were, for some `k`.
fn assert_prefix_state(name: &str, data: &[u8], initial: &[u8], written: u64) {
    let is_new =
        |k: u64| data[(k * BLOCK) as usize..((k + 1) * BLOCK) as usize] == new_block(k)[..];
    let k = (0..written).take_while(|&k| is_new(k)).count() as u64;
    for j in k..RACE_BLOCKS {
        let range = (j * BLOCK) as usize..((j + 1) * BLOCK) as usize;
        assert!(
            data[range.clone()] == initial[range],
            "{name}: block {j} (prefix {k})"
        );
    }
    assert_eq!(
        &data[(RACE_BLOCKS * BLOCK) as usize..],
        &initial[(RACE_BLOCKS * BLOCK) as usize..]
    );
}

/// Several threads send snapshot, drop, merge and bad commands at once while another writes
/// the origin. Every write gets a coherent answer; the snapshots in the end are exactly those
/// the successful commands leave; a failed attach never touches its COW; each snapshot holds
/// the origin of one moment; every COW is a valid store afterwards.
#[test]
fn racing_control_commands_stay_coherent() {
    let mut s = Scratch::new("h-race");
    let origin = s.path("origin.img");
    let initial = write_random_image(&origin, 2 * RACE_BLOCKS * BLOCK, 5);
    s.mount_daemon(&origin, &[], &[]);
    let stop = AtomicBool::new(false);
    let (sent, written) = std::thread::scope(|scope| {
        // Stops the writer however this closure ends (a panicking thread must not hang it).
        let _stop = StopOnDrop(&stop);
        let writer = scope.spawn(|| origin_writer(&s, &stop));
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let s = &s;
                scope.spawn(move || {
                    let mut rng = Rng(77 + t);
                    (0..25)
                        .map(|i| race_command(s, &mut rng, t, i))
                        .collect::<Vec<Sent>>()
                })
            })
            .collect();
        let sent: Vec<Sent> = threads
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        stop.store(true, Ordering::Relaxed);
        (sent, writer.join().unwrap())
    });
    let expected = check_race_answers(&sent);
    let shown: BTreeSet<String> = listing(&s)
        .into_iter()
        .filter(|n| !["origin", "status", "control"].contains(&n.as_str()))
        .collect();
    assert_eq!(
        shown, expected,
        "the snapshots are what the successful commands say"
    );
    let in_status: BTreeSet<String> = status(&s)
        .into_iter()
        .map(|l| l.0)
        .filter(|n| n != "origin")
        .collect();
    assert_eq!(in_status, expected);
    for name in &expected {
        assert_prefix_state(
            name,
            &std::fs::read(s.file(name)).unwrap(),
            &initial,
            written,
        );
    }
    assert_eq!(s.unmount(), 0, "{}", s.log());
    check_race_cows(&sent, &origin);
    report("racing control commands", sent.len());
}

/// Checks each answer against its command; returns the names left attached.
fn check_race_answers(sent: &[Sent]) -> BTreeSet<String> {
    let mut balance: BTreeMap<String, i64> = BTreeMap::new();
    for c in sent {
        let words: Vec<&str> = c.command.split(' ').collect();
        match (words.as_slice(), c.errno) {
            (["snapshot", name, ..], None) if c.cow.is_some() => {
                *balance.entry(name.to_string()).or_default() += 1
            }
            (["drop", name], None) => *balance.entry(name.to_string()).or_default() -= 1,
            (["snapshot" | "drop", ..], Some(e)) => assert_eq!(e, libc::EINVAL, "{c:?}"),
            (["merge", ..], e) => {
                assert!(matches!(e, Some(libc::EBUSY) | Some(libc::EINVAL)), "{c:?}")
            }
            (["help"], e) => assert_eq!(e, None, "{c:?}"),
            (_, e) => assert_eq!(e, Some(libc::EINVAL), "{c:?}"),
        }
    }
    for (name, b) in &balance {
        assert!((0..=1).contains(b), "{name}: attaches minus drops = {b}");
    }
    balance
        .into_iter()
        .filter(|(_, b)| *b == 1)
        .map(|(n, _)| n)
        .collect()
}

/// After unmount: a COW whose attach failed is still all zero; every other one loads as a
/// valid store.
fn check_race_cows(sent: &[Sent], origin: &Path) {
    for c in sent {
        let Some(cow) = &c.cow else { continue };
        if c.errno.is_some() {
            let bytes = std::fs::read(cow).unwrap();
            assert!(
                bytes.iter().all(|&b| b == 0),
                "{c:?}: a refused COW was written"
            );
            continue;
        }
        let open = |p: &Path| Arc::new(FileDevice::open(p, OpenMode::ReadOnly).unwrap());
        let config = SnapshotConfig {
            name: "s".into(),
            cow: open(cow),
            kind: hostile_support::P,
            chunk_sectors: 0,
            features: Default::default(),
        };
        let ro = VolumeOptions::read_only(false);
        let volume =
            Volume::open(open(origin), vec![config], ro).unwrap_or_else(|e| panic!("{c:?}: {e}"));
        assert!(!volume.snapshot("s").unwrap().is_invalid(), "{c:?}");
    }
}
