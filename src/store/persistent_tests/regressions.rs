//! Regressions: each test pins a bug the store once had and is named after it.

use super::*;

// ------------------------------------------------------------------------------------------------
// Regressions: each pins a bug the store once had (named by the test); they pass since its fix.

/// `initialise` once wrote the header and the zeroed area 0 and then flushed once. The two
/// writes were not ordered: a crash before the flush could keep the new header and lose the
/// zeroing, and a reused COW (LVM wipes only its first 4 KiB, i.e. chunk 0 for cs = 8) then
/// reopened with the previous store's records as this snapshot's exceptions. Now area 0 is
/// durable before the header names it.
#[test]
fn bug_initialise_crash_can_resurrect_a_stale_area_0() {
    for seed in 0..32 {
        // A COW that held a store before: wiped header chunk, area 0 still lists two exceptions.
        let mut img = store_image(8, 16, &[(5, 2), (6, 3)]);
        img[..4096].fill(0);
        let world = SimWorld::new();
        let dev = world.device_from("cow", img, 512);
        world.freeze_at_flush(1, CrashMode::Tear { seed });
        let (mut st, list) = open(dev, 8);
        assert!(list.is_empty(), "a new store");
        assert!(st.initialise().is_err(), "crash at its flush");
        let image = world.crash_images().unwrap().remove(0);
        let mut reopened = persistent(mem(image), 8);
        let loaded = valid_list(reopened.read_metadata());
        assert!(
            loaded.is_empty(),
            "seed {seed}: a snapshot that never committed anything loads {loaded:?}"
        );
    }
}

/// A read-only store refuses `prepare_exceptions` and does not write in `drop_snapshot`; it once
/// let `commit_merge` rewrite the area. Now it refuses that too, writing nothing.
#[test]
fn bug_commit_merge_writes_to_a_read_only_store() {
    let img = store_image(8, 16, &[(5, 2), (6, 3)]);
    let dev = mem(img.clone());
    let mut st = PersistentStore::new(dev.clone(), false, 0, geometry(BIG_ORIGIN), true);
    valid_list(st.read_metadata());
    assert_eq!(
        st.prepare_merge().unwrap(),
        Some(MergeRun {
            last_old: 6,
            last_new: 3,
            count: 2
        })
    );
    let result = st.commit_merge(2);
    assert!(dev.contents() == img, "the read-only COW was written");
    assert!(matches!(result, Err(StoreError::ReadOnly)), "{result:?}");
}
