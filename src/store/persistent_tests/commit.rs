//! Group commit and ordering (format document 3.1-3.3): arrival order, groups, which batch
//! needs which flush.

use super::*;

// ------------------------------------------------------------------------------------------------
// Group commit and ordering (3.1-3.3).

/// Batches commit in the order they arrive, as the kernel's do: a batch prepared later never
/// waits for one prepared earlier that has not arrived (a slow copy holds up nobody else).
#[test]
fn batches_commit_in_arrival_order_without_waiting_for_earlier_allocations() {
    let world = SimWorld::new();
    let dev = world.device("cow", 64 * 4096);
    let st = Arc::new(format(dev.clone(), 8));
    let first = st.prepare_exceptions(2).unwrap();
    let second = st.prepare_exceptions(3).unwrap();
    assert_eq!(first.new_chunks, [2, 3]);
    assert_eq!(second.new_chunks, [4, 5, 6]);
    let flushes = world.flush_count();
    // The later batch commits alone, durably, while the earlier one is still being copied. (On
    // its own thread: a store that waited for `first` would never return.)
    let (tx, rx) = mpsc::channel();
    let committer = Arc::clone(&st);
    thread::spawn(move || tx.send(committer.commit_exceptions(second, &[10, 11, 12], true)));
    match rx.recv_timeout(Duration::from_secs(5)) {
        Ok(result) => result.unwrap(),
        Err(_) => panic!("the later batch waited for the earlier one"),
    }
    assert_eq!(
        world.flush_count() - flushes,
        2,
        "one data flush and one area write with its flush"
    );
    let durable = world.durable_images().remove(0);
    let (_, list) = open(mem(durable), 0);
    assert_eq!(list, [(10, 4), (11, 5), (12, 6)]);
    st.commit_exceptions(first, &[20, 21], true).unwrap();
    let durable = world.durable_images().remove(0);
    let (reloaded, list) = open(mem(durable), 0);
    assert_eq!(list, [(10, 4), (11, 5), (12, 6), (20, 2), (21, 3)]);
    assert_eq!(next_free(&reloaded), 7, "the highest recorded chunk + 1");
}

/// Batches queued while a writer works are written together by the next one, in one group.
#[test]
fn batches_queued_during_a_write_form_one_group() {
    let (rec, gate, st) = gated_store(64);
    let batches: Vec<Prepared> = (0..5).map(|_| st.prepare_exceptions(1).unwrap()).collect();
    gate.hold();
    thread::scope(|s| {
        let mut batches = batches.into_iter();
        let first = batches.next().unwrap();
        let writer = s.spawn(|| st.commit_exceptions(first, &[100], true));
        wait_until("the writer in its data flush", || gate.in_flush());
        let others: Vec<_> = batches
            .enumerate()
            .map(|(i, p)| {
                let st = &st;
                s.spawn(move || st.commit_exceptions(p, &[200 + i as u64], true))
            })
            .collect();
        // The writer's own batch stays queued until its data flush completes.
        wait_until("5 queued batches", || ready_batches(&st) == 5);
        gate.release();
        writer.join().unwrap().unwrap();
        for h in others {
            h.join().unwrap().unwrap();
        }
    });
    let area0 = 4096;
    assert_eq!(
        rec.take_ops(),
        [
            Op::Flush,                    // the first batch's data (and the others')
            write_op(area0, 4096, false), // its record
            Op::Flush,                    // durable; covers the other batches' data
            write_op(area0, 4096, false), // the four others, one group, no flush first
            Op::Flush,
        ]
    );
    let (_, list) = open(rec.clone(), 0);
    let mut olds: Vec<u64> = list.iter().map(|&(old, _)| old).collect();
    assert_eq!(olds[0], 100);
    olds.sort_unstable();
    assert_eq!(olds, [100, 200, 201, 202, 203]);
}

/// A recorder whose flushes wait while held.
type GatedFlush = Wrapped<Recorder, Gate>;

/// A cs = 8 store formatted on a gated recorder of `chunks` chunks, the log emptied.
fn gated_store(chunks: usize) -> (Arc<Recorder>, Arc<GatedFlush>, PersistentStore) {
    let rec = Recorder::new(vec![0; chunks * 4096]);
    let gate = Arc::new(Wrapped::around(rec.clone(), Gate::default()));
    let st = format(gate.clone(), 8);
    rec.take_ops();
    (rec, gate, st)
}

#[derive(Default)]
struct Gate {
    held: parking_lot::Mutex<bool>,
    released: parking_lot::Condvar,
    in_flush: AtomicBool,
}

impl Gate {
    fn hold(&self) {
        *self.held.lock() = true;
        self.in_flush.store(false, Ordering::SeqCst);
    }
    fn release(&self) {
        *self.held.lock() = false;
        self.released.notify_all();
    }
    fn in_flush(&self) -> bool {
        self.in_flush.load(Ordering::SeqCst)
    }
}

impl DeviceHooks<Recorder> for Gate {
    fn flush(&self, rec: &Recorder) -> std::io::Result<()> {
        let mut held = self.held.lock();
        self.in_flush.store(true, Ordering::SeqCst);
        while *held {
            self.released.wait(&mut held);
        }
        drop(held);
        rec.flush()
    }
}

/// Pipelining: a batch queued while the writer is still before its final flush is covered by
/// that flush, so its own area write goes without a flush first. The order each record sees is
/// unchanged: its data flushed, its area written, flushed.
#[test]
fn a_batch_queued_before_the_writers_final_flush_needs_no_data_flush() {
    let (rec, dev, st) = gated_store(64);
    let (a, b) = (
        st.prepare_exceptions(1).unwrap(),
        st.prepare_exceptions(2).unwrap(),
    );
    // Formatting flushed already: only the writer's own flush may count from here.
    dev.hold();
    thread::scope(|s| {
        let writer = s.spawn(|| st.commit_exceptions(a, &[10], true));
        wait_until("the writer in its data flush", || dev.in_flush());
        let second = s.spawn(|| st.commit_exceptions(b, &[20, 21], true));
        // Both: the writer's own batch stays queued until its data flush completes.
        wait_until("the second batch queued", || ready_batches(&st) == 2);
        dev.release();
        writer.join().unwrap().unwrap();
        second.join().unwrap().unwrap();
    });
    let area0 = 4096;
    assert_eq!(
        rec.take_ops(),
        [
            Op::Flush,                    // the first batch's data
            write_op(area0, 4096, false), // its record
            Op::Flush,                    // durable; covers the second batch's data too
            write_op(area0, 4096, false), // the second batch's records
            Op::Flush,
        ]
    );
    let (_, list) = open(rec.clone(), 0);
    assert_eq!(list, [(10, 2), (20, 3), (21, 4)]);
}

#[test]
fn concurrent_prepare_and_commit_record_every_batch_durably() {
    const THREADS: u64 = 8;
    const ROUNDS: u64 = 40;
    let world = SimWorld::new();
    let dev = world.device("cow", 1200 * 512);
    let st = format(dev.clone(), 1);
    let mut committed: Vec<(u64, u64)> = thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let st = &st;
                s.spawn(move || {
                    let mut mine = Vec::new();
                    for r in 0..ROUNDS {
                        let n = 1 + (t + r) % 3;
                        let olds: Vec<u64> = (0..n).map(|j| t * 10_000 + r * 10 + j).collect();
                        let p = st.prepare_exceptions(n as usize).unwrap();
                        mine.extend(olds.iter().copied().zip(p.new_chunks.iter().copied()));
                        st.commit_exceptions(p, &olds, true).unwrap();
                    }
                    mine
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    committed.sort_by_key(|&(_, new)| new);
    let total = committed.len() as u64;

    let image = world.durable_images().remove(0);
    let (st, mut list) = open(mem(image), 0);
    list.sort_by_key(|&(_, new)| new);
    assert_eq!(list, committed, "every committed record, durable");
    let news: Vec<u64> = list.iter().map(|&(_, new)| new).collect();
    let expected: Vec<u64> = (0..total).map(|k| kth_chunk(1, k)).collect();
    assert_eq!(
        news, expected,
        "a gap-free prefix of the allocation sequence"
    );
    assert_eq!(next_free(&st), kth_chunk(1, total));
}

/// `prepare_exceptions(0)` returns a batch whose `first_seq` is the next batch's too (batch ids
/// are first sequence numbers). An empty batch must never enter the queue, or it could take the
/// other batch's outcome, or its place, and leave that batch's committer waiting forever.
#[test]
fn empty_batch_shares_no_state_with_the_batch_that_has_its_id() {
    let (_rec, gate, st) = gated_store(16);
    let st = Arc::new(st);
    let a = st.prepare_exceptions(1).unwrap();
    let empty = st.prepare_exceptions(0).unwrap();
    let b = st.prepare_exceptions(1).unwrap();
    assert_eq!((a.first_seq, empty.first_seq, b.first_seq), (0, 1, 1));
    assert!(empty.new_chunks.is_empty());

    gate.hold();
    let (tx, rx) = mpsc::channel();
    let committer = Arc::clone(&st);
    thread::spawn(move || tx.send(committer.commit_exceptions(b, &[2], true)));
    wait_until("batch b in its writer's flush", || gate.in_flush());
    assert!(st.commit_exceptions(empty, &[], true).is_ok());
    assert_eq!(
        ready_batches(&st),
        1,
        "only b is queued: the empty batch never was"
    );
    gate.release();
    st.commit_exceptions(a, &[1], true).unwrap();
    match rx.recv_timeout(Duration::from_secs(5)) {
        Ok(result) => assert!(result.is_ok()),
        Err(_) => panic!("batch b was never committed: its committer is stuck"),
    }
    assert_eq!(open(st.cow.clone(), 0).1, [(2, 3), (1, 2)]);
}
